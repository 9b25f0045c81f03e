"""``purl``: PuRL-style pruning with DQN and a dense, per-step reward.

Gupta et al., "Learning to Prune Deep Neural Networks via Reinforcement Learning"
(PuRL, arXiv 2007.04756) give the agent a reward after *every* pruning step instead
of only at the end of the episode, and report a search that converges in far fewer
episodes than episode-end-reward methods. Here that is:

* the shared :class:`~rlprune.env.PruningEnv` with ``action="discrete"`` (one index
  into per-layer sparsity levels ``0, ..., a_max``) and ``reward="dense"`` (after
  pruning layer ``t`` the partially pruned model is scored on a subset of the reward
  split and :func:`~rlprune.env.dense_reward` combines its error and the sparsity
  reached with their targets). :func:`rlprune.api.make_env` configures the env so;
* Stable-Baselines3's ``DQN`` over that env, with settings sized for a *short*
  search (hundreds of steps, not millions): a (64, 64) MLP Q-network, learning from
  the first few episodes on, epsilon-greedy exploration annealed over half of the
  run, a hard target update every couple of episodes (:class:`PuRLConfig`). These
  are our choices: PuRL's full text, and so its exact hyperparameters, were not
  available to us.

PuRL's headline is the length of the search, so the result records when the best
policy was found: ``extra["best_found_at_evaluation"]`` (1-based candidate count)
and ``extra["best_found_time_s"]`` (seconds since the search started), next to the
per-episode curves in ``extra["curves"]``.

:class:`EpisodeRecorder` (per-episode curves, progress bar, time-to-best, the user's
callback) is shared with the other Stable-Baselines3 method, ``amc``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from rlprune.agents.base import SearchResult, finish, make_config, register_method

if TYPE_CHECKING:
    from rlprune.costs import Budget
    from rlprune.env import PruningEnv

__all__ = ["PuRL", "PuRLConfig", "EpisodeRecorder"]

#: ``cb(agent, info)`` called after every episode.
EpisodeCallback = Callable[[Any, dict[str, Any]], None]


@dataclass
class PuRLConfig:
    """DQN settings for a short pruning search (every field can be overridden by keyword).

    Step counts that depend on the episode length ``T`` are given in episodes and
    converted to steps when the env is known.
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layers of the Q-network (and its target)."""
    learning_rate: float = 1e-3
    gamma: float = 0.99
    """Discount over the ``T`` steps of an episode: the dense reward makes short-horizon
    credit assignment meaningful, so the usual 0.99 is kept."""
    batch_size: int = 32
    buffer_size: int | None = None
    """Replay capacity in transitions; ``None`` keeps every transition of the search."""
    learning_starts_episodes: int | None = None
    """Episodes of uniformly random actions before the first update; ``None`` means
    ``min(5, max(1, episodes // 10))``: a few episodes, fewer for a very short search."""
    exploration_fraction: float = 0.5
    """Share of the run over which epsilon anneals from initial to final."""
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    target_update_episodes: int = 2
    """Hard target-network update every this many episodes (``* T`` steps)."""
    train_freq: int = 1
    """One gradient update every ``train_freq`` steps (PuRL learns from every step)."""
    gradient_steps: int = 1
    max_grad_norm: float = 10.0
    device: str = "cpu"
    """Torch device of the networks; tiny MLPs run fastest on the CPU."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.exploration_final_eps <= self.exploration_initial_eps <= 1.0:
            raise ValueError(
                "need 0 <= exploration_final_eps <= exploration_initial_eps <= 1, got "
                f"{self.exploration_final_eps} and {self.exploration_initial_eps}"
            )
        if not 0.0 < self.exploration_fraction <= 1.0:
            raise ValueError(f"exploration_fraction must be in (0, 1], got "
                             f"{self.exploration_fraction}")
        for name in ("batch_size", "target_update_episodes", "train_freq", "gradient_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


class EpisodeRecorder(BaseCallback):
    """Per-episode bookkeeping of a Stable-Baselines3 search over a ``PruningEnv``.

    SB3 calls :meth:`_on_step` after every env step (before the transition is stored).
    At the end of each episode this records the curves (episode return, terminal
    accuracy, every constraint's cost ratio), notes when the env's best feasible
    candidate changed (time-to-best is PuRL's headline), advances the progress bar
    and calls the agent's ``callback(agent, info)`` with ``episode``, ``candidate``
    (``env.history.candidates[-1]``), ``best``, ``return``, ``step_rewards`` (the
    rewards the learner received, in order) and whatever :meth:`episode_info` adds.
    """

    def __init__(self, agent: Any, env: PruningEnv, total_episodes: int, start_time: float,
                 desc: str):
        super().__init__(verbose=0)
        self.agent = agent
        self.penv = env
        self.start_time = start_time
        self.names = list(env.constraint_names)
        self.curves: dict[str, list[float]] = {"episode": [], "return": [], "accuracy": [],
                                               "feasible": []}
        for n in self.names:
            self.curves[f"cost/{n}"] = []
        self.episodes = 0
        self.step_rewards: list[float] = []
        self.best_time: float | None = None
        self.best_episode: int | None = None
        self._best_seen: Any = env.history.best
        self.bar = tqdm(total=total_episodes, desc=desc, unit="ep", disable=not agent.progress,
                        dynamic_ncols=True, leave=False)

    def _on_step(self) -> bool:
        self.step_rewards.append(float(np.asarray(self.locals["rewards"]).reshape(-1)[0]))
        if bool(np.asarray(self.locals["dones"]).reshape(-1)[0]):
            self._end_episode(self.locals["infos"][0])
        return True

    def episode_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """Method-specific entries for the curves and the user callback (override)."""
        return {}

    def _end_episode(self, info: dict[str, Any]) -> None:
        hist = self.penv.history
        cand = hist.candidates[-1]
        best = hist.best
        if best is not None and best is not self._best_seen:
            self._best_seen = best
            self.best_time = time.perf_counter() - self.start_time
            self.best_episode = self.episodes
        ret = float(sum(self.step_rewards))
        self.curves["episode"].append(float(self.episodes))
        self.curves["return"].append(ret)
        self.curves["accuracy"].append(float(cand.accuracy))
        self.curves["feasible"].append(float(cand.feasible))
        for n, r in zip(self.names, cand.cost_ratios):
            self.curves[f"cost/{n}"].append(float(r))
        extra = self.episode_info(info)
        for k, v in extra.items():
            if isinstance(v, (int, float, np.floating, np.integer)):
                self.curves.setdefault(k, []).append(float(v))
        record = {"episode": self.episodes, "candidate": cand, "best": best, "return": ret,
                  "step_rewards": list(self.step_rewards), **extra}
        self.episodes += 1
        self.step_rewards = []
        self.bar.update(1)
        if not self.bar.disable:
            best_s = "-" if best is None else f"{best.reward:.4f}/{best.accuracy:.4f}"
            self.bar.set_postfix_str(
                f"best(reward/acc)={best_s} "
                f"cost=[{', '.join(f'{r:.3f}' for r in cand.cost_ratios)}]",
                refresh=False,
            )
        cb = getattr(self.agent, "callback", None)
        if cb is not None:
            cb(self.agent, record)

    def learn(self, model: Any, total_timesteps: int) -> bool:
        """Run ``model.learn`` with this recorder; ``True`` if Ctrl-C ended it early
        (what was evaluated so far is kept)."""
        try:
            model.learn(total_timesteps=total_timesteps, callback=self)
        except KeyboardInterrupt:
            return True
        finally:
            self.bar.close()
        return False

    def result_extra(self) -> dict[str, Any]:
        """The entries every SB3 method puts in ``SearchResult.extra``."""
        best = self.penv.history.best
        return {
            "curves": {k: list(v) for k, v in self.curves.items()},
            "constraint_names": list(self.names),
            "episodes": self.episodes,
            "best_found_at_evaluation": self.penv.history.best_found_at,
            "best_found_episode": self.best_episode,
            "best_found_time_s": self.best_time,
            "best_candidate_time_s": None if best is None else float(best.time),
        }


@register_method("purl")
class PuRL:
    """DQN with dense per-step rewards over discrete sparsity levels (method id ``purl``).

    ``PuRL(episodes=100).search(env)`` runs ``episodes`` complete episodes (each one a
    candidate evaluation) on an env built with ``action="discrete", reward="dense"``
    and returns the best feasible policy the env evaluated, projected onto the budget
    by :func:`~rlprune.agents.base.finish`. Keyword ``overrides`` are fields of
    :class:`PuRLConfig`. ``callback(agent, info)`` is called after every episode.
    A ``KeyboardInterrupt`` ends the search early and keeps what was evaluated
    (``extra["interrupted"] = True``).
    """

    name = "purl"

    def __init__(self, episodes: int = 200, seed: int = 0, progress: bool = True,
                 config: PuRLConfig | None = None, **overrides: Any):
        if int(episodes) < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes!r}")
        self.config: PuRLConfig = make_config(PuRLConfig, config, overrides, "purl")
        self.episodes = int(episodes)
        self.seed = int(seed)
        self.progress = progress
        self.callback: EpisodeCallback | None = None
        self.model: DQN | None = None

    def _learning_starts_episodes(self) -> int:
        n = self.config.learning_starts_episodes
        return min(5, max(1, self.episodes // 10)) if n is None else max(0, int(n))

    def build(self, env: PruningEnv) -> DQN:
        """The SB3 ``DQN`` for ``env`` (checks that the env has discrete actions)."""
        if getattr(env, "levels", None) is None:
            raise ValueError(
                "purl needs an env with discrete actions: build it with "
                "PruningEnv(..., action='discrete', reward='dense') or "
                "rlprune.api.make_env(..., method='purl'), which does so"
            )
        cfg = self.config
        T = int(env.T)
        total = self.episodes * T
        return DQN(
            "MlpPolicy", env,
            learning_rate=cfg.learning_rate,
            buffer_size=max(total, 1) if cfg.buffer_size is None else int(cfg.buffer_size),
            learning_starts=self._learning_starts_episodes() * T,
            batch_size=cfg.batch_size,
            gamma=cfg.gamma,
            train_freq=cfg.train_freq,
            gradient_steps=cfg.gradient_steps,
            target_update_interval=max(1, cfg.target_update_episodes * T),
            exploration_fraction=cfg.exploration_fraction,
            exploration_initial_eps=cfg.exploration_initial_eps,
            exploration_final_eps=cfg.exploration_final_eps,
            max_grad_norm=cfg.max_grad_norm,
            policy_kwargs={"net_arch": list(cfg.hidden_sizes)},
            seed=self.seed,
            device=cfg.device,
            verbose=0,
        )

    def search(self, env: PruningEnv, budget: Budget | None = None) -> SearchResult:
        """Train DQN for ``episodes`` episodes on ``env``; return the best feasible policy.

        ``budget`` is accepted for the common interface and ignored: the constraints
        live in the env.
        """
        start_time = time.perf_counter()
        self.model = self.build(env)
        recorder = EpisodeRecorder(self, env, self.episodes, start_time, desc=self.name)
        interrupted = recorder.learn(self.model, self.episodes * int(env.T))
        return finish(
            self.name, env, start_time,
            **recorder.result_extra(),
            interrupted=interrupted,
            timesteps=int(self.model.num_timesteps),
            learning_starts_episodes=self._learning_starts_episodes(),
            levels=[float(v) for v in env.levels] if env.levels is not None else None,
            config=asdict(self.config),
        )
