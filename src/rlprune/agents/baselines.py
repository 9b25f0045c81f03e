"""Non-RL baselines on the same environment: ``uniform``, ``random`` and ``global``.

* ``uniform``: one prune ratio for every layer, found by bisection so that the
  tightest constraint is just met.
* ``random``: ``episodes`` random policies, each projected onto the budget, scored
  on the reward split; the best one wins.
* ``global``: one importance ranking across all layers (global magnitude for
  weights; layer-normalised channel importance for channels, as Torch-Pruning's
  global pruning does), with the global threshold found by bisection so that the
  budget is just met.

Each scores its candidates with the env's evaluator (``env.evaluator``), so that the
history, the cache and the accounting are the same as for the RL agents.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlprune.agents.base import Searcher, register_method
from rlprune.costs import BudgetInfeasibleError
from rlprune.env import PruningEnv
from rlprune.projection import bisect_boundary

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


@register_method("uniform")
class Uniform(Searcher):
    """One ratio for every layer, the tightest constraint just met."""

    default_episodes = 1
    searching = False

    def _run(self, env: PruningEnv) -> None:
        ev = env.evaluator
        policy = ev.project(np.minimum(ev.uniform_policy(), env.max_ratios))
        ev.evaluate(policy, episode=0)
        self._episode_end(env, float("nan"))


@register_method("random")
class RandomSearch(Searcher):
    """Random policies projected onto the budget; the best on the reward split wins.

    Each policy draws a global level ``g ~ U(0, 1)`` and per-layer ratios
    ``U(0, 2g) * max_ratio`` (clipped), so the samples cover light and heavy pruning.
    """

    default_episodes = 50

    def _run(self, env: PruningEnv) -> None:
        ev = env.evaluator
        rng = np.random.default_rng(self.seed)
        for ep in range(self.episodes):
            g = rng.uniform(0.0, 1.0)
            raw = np.clip(rng.uniform(0.0, 2 * g, size=env.T), 0.0, 1.0) * env.max_ratios
            cand = ev.evaluate(ev.project(raw), episode=ep)
            self._episode_end(env, cand.reward)


@register_method("global")
class GlobalThreshold(Searcher):
    """One global importance threshold across layers, bisected onto the budget."""

    default_episodes = 1
    searching = False

    def _run(self, env: PruningEnv) -> None:
        ev = env.evaluator
        scores = [np.sort(np.asarray(s, dtype=np.float64).ravel())
                  for s in ev.space.global_scores()]
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

        policy = ev.project(bisect_feasible(feasible_caps, ev.cost_ratios))
        cand = ev.evaluate(policy, episode=0)
        self._episode_end(env, cand.reward)
