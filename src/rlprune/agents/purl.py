"""``purl``: PuRL-style pruning with DQN and a dense, per-step reward.

Gupta et al., "Learning to Prune Deep Neural Networks via Reinforcement Learning"
(PuRL, arXiv 2007.04756) give the agent a reward after *every* pruning step instead
of only at the end of the episode, and report a search that converges in far fewer
episodes than episode-end-reward methods. Here that is:

* the shared :class:`~rlprune.env.PruningEnv` with ``action="discrete"`` (one index
  into per-layer sparsity levels ``0, ..., a_max``) and ``reward="dense"`` (after
  pruning layer ``t`` the partially pruned model is scored on a subset of the reward
  split and :func:`~rlprune.rewards.dense_reward` combines its error and the sparsity
  reached with their targets): :attr:`PuRL.env_options`, which ``rlprune.prune``
  builds the env with; tight budgets get levels around the uniform keep ratio;
* Stable-Baselines3's ``DQN`` over that env, with settings sized for a *short*
  search (hundreds of steps, not millions): a (64, 64) MLP Q-network, learning from
  the first few episodes on, epsilon-greedy exploration annealed over half of the
  run, a hard target update every couple of episodes (:class:`PuRLConfig`). These
  are our choices: PuRL's full text, and so its exact hyperparameters, were not
  available to us.

PuRL's headline is the length of the search, so the result records when the best
policy was found: ``extra["best_found_at_evaluation"]`` (1-based candidate count)
and ``extra["best_found_time_s"]`` (seconds since the search started), next to the
per-episode curves in ``extra["curves"]`` (all kept by the searcher base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3 import DQN

from rlprune.agents.base import Searcher, make_config, preserve_global_rng, register_method
from rlprune.agents.sb3 import EpisodeHook

if TYPE_CHECKING:
    from rlprune.env import PruningEnv

__all__ = ["PuRL", "PuRLConfig", "budget_levels"]


@dataclass
class PuRLConfig:
    """DQN settings for a short pruning search (every field can be overridden by keyword).

    Step counts that depend on the episode length ``T`` are given in episodes and
    converted to steps when the env is known. ``learning_rate`` is Adam's,
    ``batch_size`` the replay minibatch, ``gradient_steps`` the updates per training
    call and ``max_grad_norm`` the gradient clipping; epsilon-greedy exploration
    anneals from ``exploration_initial_eps`` to ``exploration_final_eps``.
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


def budget_levels(env: PruningEnv, n: int = 10, tight: float = 0.25) -> np.ndarray | None:
    """Discrete prune ratios for a tight budget, or ``None`` when the default grid fits.

    With ``k`` the keep ratio of the one-ratio-for-all policy that just meets the
    budget, a budget is tight when ``k < tight``: the default grid, evenly spaced prune
    ratios ``0, a_max/9, ..., a_max``, then has at most two levels at or beyond the
    uniform policy (for 8% of the weights, keep 12% or 1%), so per-layer choices are
    all-or-nothing. Here the levels are no pruning plus ``n - 1`` keep ratios spaced
    geometrically from ``k / 4`` to ``4 k`` (each clipped to what the layers allow).
    ``env`` is the discrete-action env whose evaluator measures the uniform policy.
    """
    k = 1.0 - env.evaluator.uniform_ratio()
    if k >= tight:
        return None
    keeps = np.clip(k * 2.0 ** np.linspace(-2.0, 2.0, n - 1), 1.0 - env.a_max, 1.0)
    return np.unique(np.round(np.concatenate([[0.0], 1.0 - keeps]), 6))


@register_method("purl")
class PuRL(Searcher):
    """DQN with dense per-step rewards over discrete sparsity levels (method id ``purl``).

    ``PuRL(episodes=100).search(env)`` runs ``episodes`` complete episodes (each one a
    candidate evaluation) on an env built with ``action="discrete", reward="dense"``
    (:attr:`env_options`; ``rlprune.prune`` builds it so) and returns the best
    feasible policy the env evaluated. ``config`` is a ready :class:`PuRLConfig`
    (default: its defaults) and keyword ``overrides`` are fields of it; ``seed``,
    ``progress``, ``callback`` and ``refine`` are
    :class:`~rlprune.agents.base.Searcher`'s.
    An env left with its default level grid gets :func:`budget_levels` when the budget
    is tight (:meth:`configure`).
    """

    #: How purl wants the shared env built: discrete levels and the dense reward.
    env_options = {"action": "discrete", "reward": "dense"}
    default_episodes = 200

    def __init__(self, episodes: int | None = None, seed: int = 0, progress: bool = True,
                 callback: Any = None, refine: bool = False,
                 config: PuRLConfig | None = None, **overrides: Any):
        super().__init__(episodes, seed, progress, callback, refine)
        self.config: PuRLConfig = make_config(PuRLConfig, config, overrides, "purl")
        self.model: DQN | None = None

    def _learning_starts_episodes(self) -> int:
        n = self.config.learning_starts_episodes
        return min(5, max(1, self.episodes // 10)) if n is None else max(0, int(n))

    def configure(self, env: PruningEnv) -> None:
        """Tight budgets get levels spaced around the uniform keep ratio (see
        :func:`budget_levels`), unless the env was given its own levels."""
        if getattr(env, "levels", None) is None:
            raise ValueError(
                "purl needs an env with discrete actions: build it with "
                "PruningEnv(..., action='discrete', reward='dense') or "
                "rlprune.api.make_env(..., method='purl'), which does so"
            )
        if getattr(env, "default_levels", False) and hasattr(env, "evaluator"):
            levels = budget_levels(env)
            if levels is not None:
                env.set_levels(levels)

    def build(self, env: PruningEnv) -> DQN:
        """The SB3 ``DQN`` for ``env``."""
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

    def _run(self, env: PruningEnv) -> None:
        """Train DQN for ``episodes`` episodes on ``env``."""
        with preserve_global_rng():
            self.model = self.build(env)
            self.model.learn(total_timesteps=self.episodes * int(env.T),
                             callback=EpisodeHook(self, env))

    def _result_extra(self, env: PruningEnv) -> dict[str, Any]:
        return {
            "timesteps": 0 if self.model is None else int(self.model.num_timesteps),
            "learning_starts_episodes": self._learning_starts_episodes(),
            "levels": [float(v) for v in env.levels] if env.levels is not None else None,
        }
