"""``amc``: AMC's DDPG search with the action wall (He et al., ECCV 2018).

AMC ("AutoML for Model Compression") prunes layer by layer with a DDPG agent whose
action is the *preserve* ratio of the current layer, and guarantees the budget with
an **action wall**: before an action is executed it is capped so that, even if every
later layer were pruned as hard as allowed, the budget would still be met. Every
episode therefore ends inside the budget and the reward can be plain accuracy.

On the shared :class:`~rlprune.env.PruningEnv` (continuous actions) this module adds:

* :class:`ActionWall`, a ``gymnasium.Wrapper`` that turns the agent's preserve ratio
  ``p in [0.2, 1]`` into a prune ratio ``1 - p`` (clipped to the layer's bound, the
  env's ``max_ratios[t]`` and at most ``1 - 0.2``) and raises it to the smallest
  ratio that keeps "chosen prefix + this ratio + every later layer at its bound"
  feasible, *measured* with ``env.cost_ratios`` on the pruned model, so it works for
  every constraint of the budget (params, FLOPs, latency, a black-box cost), as long
  as a cost does not grow when a layer gets narrower;
* :class:`TruncatedNormalDecayNoise`, AMC's exploration: truncated-normal noise with
  ``sigma = 0.5 * 0.95 ** e``, ``e`` the episode counted from the end of the warm-up
  (as in AMC's code: during the warm-up the actions are uniformly random anyway);
* a callback that, once an episode is over, rewrites the rewards of its ``T``
  transitions in the replay buffer to *the episode's final reward minus a moving
  baseline* (exponential average of past final rewards, ``alpha = 0.95``), and their
  stored actions to the walled actions actually executed, so that the critic learns
  about what happened;
* Stable-Baselines3's ``DDPG`` with AMC's settings where SB3 allows them: actor and
  critic MLPs (300, 300), ``tau = 0.01``, learning rates 1e-4 (actor) and 1e-3
  (critic), batch 64, no discount (``gamma = 1``: an episode is a fixed ``T`` steps
  and only its final outcome matters), one training phase of ``T`` gradient steps
  after every episode, uniformly random actions for the warm-up episodes.

AMC ran 100 warm-up episodes out of 800. The default here is 800 episodes with
``min(100, episodes // 4)`` warm-up episodes, so that a short search (the compare
command gives every method the same, much smaller, number of episodes) still spends
three quarters of its episodes learning. The reward scheme (``terminal_accuracy``, or
AMC's ``neg_error_log_flops``) is chosen on the env (``reward=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3 import DDPG
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.utils import update_learning_rate

from rlprune.agents.base import Searcher, make_config, preserve_global_rng, register_method
from rlprune.agents.sb3 import EpisodeHook
from rlprune.projection import bisect_boundary

if TYPE_CHECKING:
    from rlprune.env import PruningEnv

__all__ = ["AMC", "AMCConfig", "ActionWall", "TruncatedNormalDecayNoise"]


# --------------------------------------------------------------------------------------
# The action wall
# --------------------------------------------------------------------------------------


class ActionWall(gym.Wrapper):
    """AMC's action wall around a pruning env; the agent acts in preserve ratios.

    Action space: ``Box(min_preserve, 1)``, the fraction of the current layer to keep.
    At layer ``t`` the agent's prune ratio ``r = min(1 - p, bounds[t])`` (``bounds`` =
    the env's ``max_ratios`` capped at ``1 - min_preserve``) is executed unchanged if
    the policy ``(executed prefix, r, bounds[t+1:])`` meets the budget (one
    measurement); otherwise the smallest feasible ratio in ``[r, bounds[t]]`` is found
    by bisection (``bisect_iters`` measurements; the feasible end is executed, so the
    answer is a measured-feasible ratio, never a predicted one). If even ``bounds[t]``
    fails, the budget cannot be reached from here and ``bounds[t]`` is executed.

    If the policy with every layer at its bound meets the budget, every episode ends
    within it: the invariant "prefix + rest at bound is feasible" holds at every step.

    ``info`` gains ``agent_ratio`` (the agent's prune ratio), ``prune_ratio`` (the one
    executed), ``executed_action`` (the executed preserve ratio, in the agent's action
    units) and ``walled`` (whether the wall raised the ratio). Measurements are cached
    by the channels (weights) each layer removes, except for noisy costs (latency).
    ``enabled=False`` keeps the unit conversion and drops the wall (for ablations).
    """

    def __init__(self, env: gym.Env, min_preserve: float = 0.2, bisect_iters: int = 10,
                 enabled: bool = True):
        super().__init__(env)
        base: Any = env.unwrapped  # duck-typed: a PruningEnv or an env with its contract
        self._measurer = getattr(base, "evaluator", base)
        if not callable(getattr(self._measurer, "cost_ratios", None)):
            raise TypeError("ActionWall needs a PruningEnv (or an env with cost_ratios(policy))")
        if getattr(base, "levels", None) is not None or not isinstance(base.action_space,
                                                                       spaces.Box):
            raise ValueError("ActionWall needs an env with continuous actions "
                             "(PruningEnv(..., action='continuous'))")
        if not 0.0 <= min_preserve < 1.0:
            raise ValueError(f"min_preserve must be in [0, 1), got {min_preserve}")
        T = getattr(base, "T", None)
        self.T = int(T) if T is not None else len(base.space)
        caps = getattr(base, "max_ratios", None)
        if caps is None:
            caps = np.full(self.T, float(np.max(base.action_space.high)))
        self.bounds = np.minimum(np.asarray(caps, dtype=np.float64), 1.0 - min_preserve)
        self.min_preserve = float(min_preserve)
        self.bisect_iters = int(bisect_iters)
        self.enabled = bool(enabled)
        self.action_space = spaces.Box(self.min_preserve, 1.0, (1,), np.float32)
        self.measurements = 0
        bound = getattr(self._measurer, "bound", None)
        self._use_cache = not bool(getattr(bound, "noisy", False))
        space = getattr(base, "space", None)
        self._removed = getattr(space, "removed", None)
        self._cache: dict[bytes, bool] = {}
        self._t = 0
        self._prefix = np.zeros(self.T, dtype=np.float64)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Start an episode: forget the executed prefix and reset the wrapped env.

        ``kwargs`` (``seed``, ``options``) go to the wrapped env's ``reset``.
        """
        self._t = 0
        self._prefix = np.zeros(self.T, dtype=np.float64)
        return self.env.reset(**kwargs)

    def feasible(self, policy: np.ndarray) -> bool:
        """Whether ``policy`` meets every constraint, measured on the pruned model."""
        key = None
        if self._use_cache:
            key = (np.asarray(self._removed(policy)).tobytes() if self._removed is not None
                   else np.round(policy, 9).tobytes())
            if key in self._cache:
                return self._cache[key]
        self.measurements += 1
        ok = bool(np.all(np.asarray(self._measurer.cost_ratios(policy)) <= 1.0))
        if key is not None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = ok
        return ok

    def wall_ratio(self, t: int, ratio: float) -> float:
        """The prune ratio executed at layer ``t`` when the agent asks for ``ratio``."""
        policy = self._prefix.copy()
        policy[t + 1:] = self.bounds[t + 1:]
        hi = float(self.bounds[t])

        def ok(r: float) -> bool:
            policy[t] = r
            return self.feasible(policy)

        if ok(ratio):
            return ratio
        if ratio >= hi or not ok(hi):
            return max(ratio, hi)
        span = hi - ratio
        return ratio + span * bisect_boundary(lambda u: ok(ratio + u * span), self.bisect_iters)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Execute the preserve ratio ``action`` at the current layer, walled (class
        docstring); returns the wrapped env's step with the wall's entries in ``info``."""
        t = self._t
        if t >= self.T:
            raise RuntimeError("step() called after the episode ended; call reset()")
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        preserve = float(np.clip(a, self.min_preserve, 1.0)) if np.isfinite(a) else 1.0
        agent_r = float(min(1.0 - preserve, self.bounds[t]))
        r = self.wall_ratio(t, agent_r) if self.enabled else agent_r
        self._prefix[t] = r
        self._t += 1
        # float64 so that the env executes exactly the ratio that was measured
        obs, reward, terminated, truncated, info = self.env.step(np.array([r], np.float64))
        info = dict(info)
        info.update(agent_ratio=agent_r, prune_ratio=r, executed_action=1.0 - r,
                    walled=bool(r > agent_r))
        return obs, reward, terminated, truncated, info


# --------------------------------------------------------------------------------------
# Exploration noise
# --------------------------------------------------------------------------------------


class TruncatedNormalDecayNoise(ActionNoise):
    """AMC's exploration noise: truncated normal, ``sigma`` decayed after every episode.

    ``sigma`` (in the agent's action units, preserve ratio) is 0 during the
    ``warmup_episodes`` (SB3 then acts uniformly at random) and
    ``sigma0 * decay ** (e - warmup_episodes)`` in episode ``e`` afterwards; SB3 calls
    :meth:`reset` at the end of every episode. A draw is ``N(0, sigma)`` truncated to
    ``+-(high - low)`` (by resampling: a larger step would only pin the action to an
    edge), returned in SB3's normalised ``[-1, 1]`` units; SB3 adds it to the policy's
    action and clips to the action range. AMC truncates the normal to the action range
    around the action itself; SB3's noise does not see the action, hence this form.
    ``size`` is the action's dimension and ``seed`` seeds the noise's own generator.
    """

    def __init__(self, sigma: float = 0.5, decay: float = 0.95, warmup_episodes: int = 0,
                 low: float = 0.2, high: float = 1.0, size: int = 1, seed: int | None = None):
        super().__init__()
        if sigma < 0 or not 0 < decay <= 1 or high <= low:
            raise ValueError(f"need sigma >= 0, 0 < decay <= 1, high > low; got sigma={sigma}, "
                             f"decay={decay}, low={low}, high={high}")
        self.sigma0 = float(sigma)
        self.decay = float(decay)
        self.warmup_episodes = int(warmup_episodes)
        self.width = float(high - low)
        self.size = int(size)
        self.episode = 0
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        """The standard deviation in force for the current episode (action units)."""
        e = self.episode - self.warmup_episodes
        return 0.0 if e < 0 else self.sigma0 * self.decay ** e

    def __call__(self) -> np.ndarray:
        s = self.sigma
        if s <= 0.0:
            return np.zeros(self.size, dtype=np.float32)
        z = self.rng.normal(0.0, s, self.size)
        for _ in range(100):
            bad = np.abs(z) > self.width
            if not bad.any():
                break
            z[bad] = self.rng.normal(0.0, s, int(bad.sum()))
        z = np.clip(z, -self.width, self.width)
        return (z * (2.0 / self.width)).astype(np.float32)

    def reset(self) -> None:
        """End an episode: the next draws use the next episode's ``sigma``."""
        self.episode += 1

    def __repr__(self) -> str:
        return (f"TruncatedNormalDecayNoise(sigma={self.sigma:.4g}, episode={self.episode}, "
                f"warmup={self.warmup_episodes})")


# --------------------------------------------------------------------------------------
# Reward shaping in the replay buffer
# --------------------------------------------------------------------------------------


class _AMCHook(EpisodeHook):
    """Episode bookkeeping plus AMC's reward rewrite of each finished episode.

    SB3 calls ``_on_step`` before it stores the transition, so the rewrite waits for
    ``_on_rollout_end``: with ``train_freq=(1, "episode")`` a rollout is exactly one
    episode, every transition of it is stored by then, and no gradient step has used it.
    """

    def __init__(self, searcher: AMC, env: PruningEnv, noise: TruncatedNormalDecayNoise,
                 baseline_alpha: float):
        super().__init__(searcher, env)
        self.noise = noise
        self.alpha = float(baseline_alpha)
        self.baseline: float | None = None
        self.executed: list[float] = []
        self.walled = 0
        self._pending: tuple[list[float], float] | None = None
        #: The last rewrite: buffer ``indices`` and the ``reward`` written (for tests).
        self.last_rewrite: dict[str, Any] | None = None

    def _on_training_start(self) -> None:
        # SB3 resets the noise once when ``learn`` starts, which is not an episode end
        self.noise.episode = 0

    def _on_step(self) -> bool:
        info = self.locals["infos"][0]
        self.executed.append(float(info["executed_action"]))
        self.walled += int(bool(info.get("walled", False)))
        return super()._on_step()

    def episode_info(self, info: dict[str, Any]) -> dict[str, float]:
        final = self.step_rewards[-1]
        base = final if self.baseline is None else self.baseline
        advantage = final - base
        self.baseline = final if self.baseline is None else (
            self.alpha * self.baseline + (1.0 - self.alpha) * final)
        self._pending = (self.executed, advantage)
        out = {"final_reward": final, "baseline": base, "advantage": advantage,
               "sigma": self.noise.sigma, "walled_steps": self.walled}
        self.executed, self.walled = [], 0
        return out

    def _on_rollout_end(self) -> None:
        if self._pending is None:
            return
        executed, advantage = self._pending
        self._pending = None
        buf = self.replay_buffer()
        n = len(executed)
        idx = (buf.pos - n + np.arange(n)) % buf.buffer_size
        buf.rewards[idx, 0] = advantage
        acts = self.model.policy.scale_action(np.asarray(executed, np.float32).reshape(n, 1))
        buf.actions[idx, 0, :] = acts
        self.last_rewrite = {"indices": idx.copy(), "reward": float(advantage)}


class _DDPG(DDPG):
    """SB3 DDPG with separate actor and critic learning rates (AMC: 1e-4 and 1e-3).

    SB3 drives both optimisers from one schedule; this keeps each at its own rate.
    """

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3

    def _update_learning_rate(self, optimizers: Any) -> None:
        update_learning_rate(self.actor.optimizer, self.actor_lr)
        update_learning_rate(self.critic.optimizer, self.critic_lr)
        self.logger.record("train/actor_lr", self.actor_lr)
        self.logger.record("train/critic_lr", self.critic_lr)


# --------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------


@dataclass
class AMCConfig:
    """DDPG and wall settings; AMC's defaults where Stable-Baselines3 allows them.

    ``hidden_sizes`` are the hidden layers of the actor and the critic, ``actor_lr`` and
    ``critic_lr`` their learning rates, ``tau`` the soft target-update rate and
    ``batch_size`` the replay minibatch. ``noise_sigma`` and ``noise_decay`` set the
    exploration noise (:class:`TruncatedNormalDecayNoise`); ``bisect_iters`` the
    measurements the wall may spend per step; ``device`` the torch device of the
    networks.
    """

    warmup_episodes: int | None = None
    """Episodes of uniformly random actions before learning; ``None`` means
    ``min(100, episodes // 4)`` (AMC: 100 of 800)."""
    min_preserve: float | None = None
    """Lowest preserve ratio the agent can ask for. AMC's action range is [0.2, 1], but
    0.2 cannot reach a budget tighter than keeping 20% of every layer (every episode
    would hit the same walled policy), so ``None`` (default) means
    ``min(0.2, (1 - r) / 2)`` with ``r`` the one prune ratio for every layer that just
    meets the budget: every layer may go to half the uniform keep ratio. Set 0.2 for
    the published setting."""
    hidden_sizes: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    gamma: float = 1.0
    """No discount, as in AMC: each transition carries the episode's final reward."""
    buffer_size: int | None = None
    """Replay capacity in transitions; ``None`` keeps every transition of the search."""
    noise_sigma: float = 0.5
    noise_decay: float = 0.95
    baseline_alpha: float = 0.95
    """Moving baseline ``b <- alpha * b + (1 - alpha) * R`` of past final rewards."""
    wall: bool = True
    """The action wall; ``False`` only for ablations (episodes may end over budget)."""
    bisect_iters: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.min_preserve is not None and not 0.0 <= self.min_preserve < 1.0:
            raise ValueError(f"min_preserve must be in [0, 1), got {self.min_preserve}")
        if not 0.0 <= self.baseline_alpha < 1.0:
            raise ValueError(f"baseline_alpha must be in [0, 1), got {self.baseline_alpha}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@register_method("amc")
class AMC(Searcher):
    """DDPG over preserve ratios with the action wall (method id ``amc``).

    ``AMC(episodes=800).search(env)`` runs ``episodes`` complete episodes (each one a
    candidate evaluation) on a continuous-action env and returns the best feasible
    policy the env evaluated. ``reward`` only documents the scheme the env must use
    (``terminal_accuracy`` or ``neg_error_log_flops``): the env's ``reward`` decides,
    and a mismatch is an error. ``config`` is a ready :class:`AMCConfig` (default: its
    defaults) and keyword ``overrides`` are fields of it; ``seed``, ``progress``,
    ``callback`` and ``refine`` are :class:`~rlprune.agents.base.Searcher`'s.
    """

    default_episodes = 800

    def __init__(self, episodes: int | None = None, seed: int = 0, progress: bool = True,
                 callback: Any = None, refine: bool = False, reward: str | None = None,
                 config: AMCConfig | None = None, **overrides: Any):
        super().__init__(episodes, seed, progress, callback, refine)
        self.config: AMCConfig = make_config(AMCConfig, config, overrides, "amc")
        self.reward = reward
        self.min_preserve = 0.2 if self.config.min_preserve is None else self.config.min_preserve
        self.model: _DDPG | None = None
        self.wall: ActionWall | None = None
        self.noise: TruncatedNormalDecayNoise | None = None
        self.recorder: _AMCHook | None = None

    def warmup_episodes(self) -> int:
        """Random-action episodes before learning (see :class:`AMCConfig`)."""
        w = self.config.warmup_episodes
        return min(100, self.episodes // 4) if w is None else max(0, int(w))

    def configure(self, env: PruningEnv) -> None:
        """Check the env; resolve the preserve floor (``min_preserve=None``, see
        :class:`AMCConfig`) from the budget."""
        if getattr(env, "levels", None) is not None:
            raise ValueError("amc needs an env with continuous actions: build it with "
                             "PruningEnv(..., action='continuous') (the default)")
        name = getattr(env, "reward_name", None)
        if self.reward is not None and name is not None and self.reward != name:
            raise ValueError(
                f"amc was asked for reward {self.reward!r} but the env uses {name!r}; the env "
                f"decides: build it with reward={self.reward!r} (env_kwargs in rlprune.prune)"
            )
        floor = self.config.min_preserve
        if floor is None:
            ev = getattr(env, "evaluator", None)
            floor = 0.2 if ev is None else min(0.2, (1.0 - ev.uniform_ratio()) / 2.0)
        self.min_preserve = float(floor)

    def build(self, env: PruningEnv) -> _DDPG:
        """The wall-wrapped env, the noise and the SB3 ``DDPG`` model for ``env``."""
        cfg = self.config
        T = int(env.T)
        warm = self.warmup_episodes()
        self.wall = ActionWall(env, self.min_preserve, cfg.bisect_iters, enabled=cfg.wall)
        self.noise = TruncatedNormalDecayNoise(cfg.noise_sigma, cfg.noise_decay, warm,
                                               self.min_preserve, 1.0, seed=self.seed)
        buffer = max(self.episodes * T, T) if cfg.buffer_size is None else int(cfg.buffer_size)
        if buffer < T:
            raise ValueError(f"buffer_size must hold at least one episode ({T}), got {buffer}")
        hs = list(cfg.hidden_sizes)
        model = _DDPG(
            "MlpPolicy", self.wall,
            learning_rate=cfg.critic_lr,
            buffer_size=buffer,
            learning_starts=warm * T,
            batch_size=cfg.batch_size,
            tau=cfg.tau,
            gamma=cfg.gamma,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=self.noise,
            policy_kwargs={"net_arch": {"pi": hs, "qf": hs}},
            seed=self.seed,
            device=cfg.device,
            verbose=0,
        )
        model.actor_lr, model.critic_lr = float(cfg.actor_lr), float(cfg.critic_lr)
        update_learning_rate(model.actor.optimizer, model.actor_lr)
        return model

    def _run(self, env: PruningEnv) -> None:
        """Train DDPG behind the action wall for ``episodes`` episodes on ``env``."""
        with preserve_global_rng():
            self.model = self.build(env)
            assert self.noise is not None
            self.recorder = _AMCHook(self, env, self.noise, self.config.baseline_alpha)
            self.model.learn(total_timesteps=self.episodes * int(env.T), callback=self.recorder)

    def _result_extra(self, env: PruningEnv) -> dict[str, Any]:
        return {
            "timesteps": 0 if self.model is None else int(self.model.num_timesteps),
            "warmup_episodes": self.warmup_episodes(),
            "min_preserve": self.min_preserve,
            "wall_measurements": 0 if self.wall is None else self.wall.measurements,
            "reward_scheme": getattr(env, "reward_name", None),
            "baseline": None if self.recorder is None else self.recorder.baseline,
        }
