"""Non-RL baselines on the same environment: ``uniform``, ``random`` and ``global``.

* ``uniform``: one prune ratio for every layer, found by bisection so that the
  tightest constraint is just met.
* ``random``: ``episodes`` random policies, each projected onto the budget, scored
  on the reward split; the best one wins.
* ``global``: one importance ranking across all layers (global magnitude for
  weights; layer-normalised channel importance for channels, as Torch-Pruning's
  global pruning does), with the global threshold found by bisection so that the
  budget is just met.

Each evaluates its candidates through ``env.evaluate_policy`` so that the history,
the cache and the accounting are the same as for the RL agents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rlprune.agents.base import SearchResult, finish, register_method
from rlprune.costs import Budget, BudgetInfeasibleError
from rlprune.env import PruningEnv
from rlprune.space import bisect_boundary, uniform_policy

__all__ = ["Uniform", "RandomSearch", "GlobalThreshold", "bisect_feasible"]


def bisect_feasible(
    make_policy: Callable[[float], np.ndarray],
    ratios_of: Callable[[np.ndarray], np.ndarray],
    iters: int = 20,
) -> np.ndarray:
    """Smallest level ``s`` in [0, 1] whose ``make_policy(s)`` is feasible (bisection).

    ``make_policy(0)`` is the least pruning and ``make_policy(1)`` the most; costs must
    not grow with ``s`` (wider is never cheaper). Raises ``BudgetInfeasibleError`` when
    even ``make_policy(1)`` violates the budget.
    """
    if np.all(ratios_of(make_policy(0.0)) <= 1.0):
        return make_policy(0.0)
    hi_ratios = ratios_of(make_policy(1.0))
    if np.any(hi_ratios > 1.0):
        raise BudgetInfeasibleError(
            "budget cannot be met even at the most aggressive pruning allowed "
            f"(constraint value / limit = {np.round(hi_ratios, 4).tolist()})"
        )
    return make_policy(bisect_boundary(lambda s: bool(np.all(ratios_of(make_policy(s)) <= 1.0)),
                                       iters))


class _Base:
    name = "base"

    def __init__(self, episodes: int = 1, seed: int = 0, progress: bool = True, **_: Any):
        self.episodes = int(episodes)
        self.seed = seed
        self.progress = progress
        self.callback: Callable[[Any, dict[str, Any]], None] | None = None

    def _notify(self, env: PruningEnv, cand: Any) -> None:
        if self.callback is not None:
            self.callback(self, {"episode": cand.episode, "candidate": cand,
                                 "best": env.history.best})


@register_method("uniform")
class Uniform(_Base):
    """One ratio for every layer, the tightest constraint just met."""

    name = "uniform"

    def search(self, env: PruningEnv, budget: Budget | None = None) -> SearchResult:
        start = time.perf_counter()
        policy = np.minimum(
            uniform_policy(env.space, env.model, env.bound, env.example_input),
            env.max_ratios,
        )
        policy = env.project(policy)
        cand = env.evaluate_policy(policy, episode=0)
        self._notify(env, cand)
        return finish(self.name, env, start)


@register_method("random")
class RandomSearch(_Base):
    """Random policies projected onto the budget; the best on the reward split wins.

    Each policy draws a global level ``g ~ U(0, 1)`` and per-layer ratios
    ``U(0, 2g) * max_ratio`` (clipped), so the samples cover light and heavy pruning.
    """

    name = "random"

    def __init__(self, episodes: int = 50, seed: int = 0, progress: bool = True, **kw: Any):
        super().__init__(episodes, seed, progress, **kw)

    def search(self, env: PruningEnv, budget: Budget | None = None) -> SearchResult:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        bar = tqdm(range(self.episodes), desc="random", disable=not self.progress, leave=False)
        try:
            for ep in bar:
                g = rng.uniform(0.0, 1.0)
                raw = np.clip(rng.uniform(0.0, 2 * g, size=env.T), 0.0, 1.0) * env.max_ratios
                cand = env.evaluate_policy(env.project(raw), episode=ep)
                self._notify(env, cand)
                best = env.history.best
                if best is not None:
                    bar.set_postfix(best=f"{best.reward:.4f}")
        except KeyboardInterrupt:
            return finish(self.name, env, start, interrupted=True)
        return finish(self.name, env, start)


@register_method("global")
class GlobalThreshold(_Base):
    """One global importance threshold across layers, bisected onto the budget."""

    name = "global"

    def search(self, env: PruningEnv, budget: Budget | None = None) -> SearchResult:
        start = time.perf_counter()
        scores = [np.sort(np.asarray(s, dtype=np.float64).ravel())
                  for s in env.space.global_scores()]
        allv = np.sort(np.concatenate(scores))
        caps = env.max_ratios

        def policy_at(level: float) -> np.ndarray:
            # level in [0, 1] -> threshold at that quantile of all scores
            if level <= 0.0:
                return np.zeros(env.T)
            tau = allv[min(int(level * (len(allv) - 1)), len(allv) - 1)]
            ratios = np.array([np.searchsorted(s, tau, side="right") / len(s) for s in scores])
            return np.minimum(ratios, caps)

        def feasible_caps(level: float) -> np.ndarray:
            # beyond the cap of each layer the threshold has no effect: at level 1 every
            # layer sits at its cap, the most aggressive policy allowed.
            return policy_at(level) if level < 1.0 else caps.copy()

        policy = bisect_feasible(feasible_caps, env.cost_ratios)
        policy = env.project(policy)
        cand = env.evaluate_policy(policy, episode=0)
        self._notify(env, cand)
        return finish(self.name, env, start)
