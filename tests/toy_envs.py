"""Tiny constrained pruning MDPs with known optima, for testing search agents fast.

:class:`ToyPruneEnv` follows the contract of :class:`rlprune.env.PruningEnv` without
any network: one step per "layer", the action is a prune ratio in ``[0, a_max]``,
and at the last step the "model" is scored by plain functions of the policy.
Reward and costs arrive only at the terminal step; ``info["cost"]`` is a vector of
ratios ``value_i / limit_i`` on every step (zeros before the end); every finished
episode is appended to ``env.history`` with the history's tags in ``extra``.
Everything is deterministic, so seeded agents give identical runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from rlprune.history import Candidate, History

__all__ = [
    "ToyCost",
    "ToyPruneEnv",
    "accuracy_like",
    "half_budget_env",
    "kept",
    "step_cost_env",
    "two_constraint_env",
]


def kept(policy: np.ndarray) -> float:
    """Mean fraction kept over the layers: the toy's model "size"."""
    return float(np.mean(1.0 - np.asarray(policy, dtype=np.float64)))


def accuracy_like(policy: np.ndarray) -> float:
    """``k (2 - k)`` of the fraction kept ``k``: rises with size, with diminishing returns.

    Concave like a real accuracy curve, so that for each multiplier the Lagrangian has
    one best policy; a linear reward makes it bang-bang, and plain gradient ascent on
    ``nu`` then circles the optimum instead of settling (PID settles either way).
    """
    k = kept(policy)
    return k * (2.0 - k)


@dataclass
class ToyCost:
    """A named constraint: raw value ``fn(policy)`` and its ``limit`` (ratio = value/limit)."""

    name: str
    fn: Callable[[np.ndarray], float]
    limit: float


class ToyPruneEnv(gym.Env):
    """``T``-step pruning MDP scored by ``reward_fn`` and constrained by ``costs``.

    Observation (in [0, 1]): step index ``t / T``, previous action ``/ a_max``, and
    the fraction removed so far. ``interrupt_at=(episode, step)`` raises
    ``KeyboardInterrupt`` at that point, as a user pressing Ctrl-C inside an
    evaluation would.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        costs: Sequence[ToyCost],
        reward_fn: Callable[[np.ndarray], float] = accuracy_like,
        T: int = 3,
        a_max: float = 0.9,
        interrupt_at: tuple[int, int] | None = None,
    ):
        self.costs = list(costs)
        self.reward_fn = reward_fn
        self.a_max = float(a_max)
        self.space = [f"layer{i}" for i in range(T)]
        self.max_episode_steps = T
        self.num_constraints = len(self.costs)
        self.constraint_names = [c.name for c in self.costs]
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Box(0.0, self.a_max, shape=(1,), dtype=np.float32)
        self.history = History()
        self.interrupt_at = interrupt_at
        self.episodes_done = 0
        self._t = 0
        self._policy: list[float] = []

    def _obs(self) -> np.ndarray:
        prev = self._policy[-1] / self.a_max if self._policy else 0.0
        removed = float(np.sum(self._policy)) / len(self.space)
        return np.array([self._t / len(self.space), prev, removed], dtype=np.float32)

    def cost_ratios(self, policy: np.ndarray) -> np.ndarray:
        """Constraint values divided by their limits (<= 1 is feasible)."""
        return np.array([c.fn(policy) / c.limit for c in self.costs], dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._policy = []
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.interrupt_at == (self.episodes_done, self._t):
            raise KeyboardInterrupt
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, self.a_max))
        self._policy.append(a)
        self._t += 1
        if self._t < len(self.space):
            return self._obs(), 0.0, False, False, {"cost": np.zeros(self.num_constraints)}
        policy = np.asarray(self._policy)
        reward = float(self.reward_fn(policy))
        ratios = self.cost_ratios(policy)
        feasible = bool(np.all(ratios <= 1.0))
        self.history.add(
            Candidate(
                index=len(self.history),
                episode=self.episodes_done,
                policy=policy.tolist(),
                reward=reward,
                accuracy=reward,
                costs={c.name: float(c.fn(policy)) for c in self.costs},
                cost_ratios=ratios.tolist(),
                feasible=feasible,
                extra=copy.deepcopy(self.history.tags),
            )
        )
        self.episodes_done += 1
        info = {"cost": ratios, "accuracy": reward, "policy": policy, "feasible": feasible}
        return self._obs(), reward, True, False, info

    def project(self, policy: np.ndarray) -> np.ndarray:
        """Nearest-ish feasible policy: move every ratio towards ``a_max`` by bisection."""
        p = np.clip(np.asarray(policy, dtype=np.float64), 0.0, self.a_max)
        top = np.full_like(p, self.a_max)
        if np.all(self.cost_ratios(p) <= 1.0):
            return p
        if not np.all(self.cost_ratios(top) <= 1.0):
            raise ValueError("toy budget cannot be met even at a_max")
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if np.all(self.cost_ratios(p + mid * (top - p)) <= 1.0):
                hi = mid
            else:
                lo = mid
        return p + hi * (top - p)


def half_budget_env(**kwargs: Any) -> ToyPruneEnv:
    """One constraint: keep at most half (ratio = kept / 0.5); reward rises with size.

    The optimum keeps exactly half: episode cost ratio 1.0, reward 0.75 with the
    default :func:`accuracy_like` (0.5 with ``reward_fn=kept``), multiplier 0.5 in
    both cases (the reward's slope per unit of cost ratio at the optimum).
    """
    return ToyPruneEnv([ToyCost("params", kept, 0.5)], **kwargs)


def two_constraint_env(**kwargs: Any) -> ToyPruneEnv:
    """``params`` binds as in :func:`half_budget_env`; ``latency`` never binds.

    ``latency`` = ``0.25 * kept`` with limit 0.5, so its ratio is at most 0.5 and its
    multiplier must stay exactly 0 under projected ascent.
    """
    return ToyPruneEnv(
        [ToyCost("params", kept, 0.5), ToyCost("latency", lambda p: 0.25 * kept(p), 0.5)],
        **kwargs,
    )


def step_cost_env(**kwargs: Any) -> ToyPruneEnv:
    """A black-box staircase cost with zero gradient almost everywhere.

    Raw value = ``kept`` rounded *up* to a multiple of 0.2, limit 0.4: feasible iff
    ``kept <= 0.4``, so the best feasible reward is ``accuracy_like`` at 0.4, i.e. 0.64.
    """
    return ToyPruneEnv(
        [ToyCost("blackbox", lambda p: float(np.ceil(round(kept(p) * 5.0, 9)) / 5.0), 0.4)],
        **kwargs,
    )
