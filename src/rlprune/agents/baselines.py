"""Non-RL baselines on the same environment: ``uniform``, ``random`` and ``global``.

* ``uniform``: one prune ratio for every layer, found by bisection so that the
  tightest constraint is just met.
* ``random``: ``episodes`` random policies, each projected onto the budget, scored
  on the reward split (``Evaluator.parallel`` at a time); the best one wins.
* ``global``: one importance ranking across all layers (global magnitude for
  weights; layer-normalised channel importance for channels, as Torch-Pruning's
  global pruning does), with the global threshold found by bisection so that the
  budget is just met.
* ``lamp``: the same with LAMP's layer-adaptive scores (Lee et al., ICLR 2021).

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

__all__ = ["Uniform", "RandomSearch", "GlobalThreshold", "LAMP", "bisect_feasible",
           "lamp_scores", "space_lamp_scores", "threshold_policy", "heuristic_policies",
           "random_draw"]


def bisect_feasible(
    make_policy: Callable[[float], np.ndarray],
    ratios_of: Callable[[np.ndarray], np.ndarray],
    iters: int = 20,
) -> np.ndarray:
    """Smallest level ``s`` in [0, 1] whose ``make_policy(s)`` is feasible (bisection).

    ``make_policy(0)`` is the least pruning and ``make_policy(1)`` the most; costs must
    not grow with ``s`` (wider is never cheaper). ``ratios_of(policy)`` are the policy's
    cost ratios (value / limit per constraint, ``<= 1`` holds); ``iters`` bisection steps
    are measured. Raises ``BudgetInfeasibleError`` when even ``make_policy(1)`` violates
    the budget.
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


def random_draw(rng: np.random.Generator, max_ratios: np.ndarray) -> np.ndarray:
    """One random allocation as ``random`` draws it, from the generator ``rng``: a global
    level ``g ~ U(0, 1)``, then per entry ``U(0, 2g)`` (clipped to 1) times its entry of
    ``max_ratios``, so draws cover light and heavy pruning."""
    caps = np.asarray(max_ratios, dtype=np.float64)
    g = rng.uniform(0.0, 1.0)
    return np.clip(rng.uniform(0.0, 2 * g, size=caps.shape[0]), 0.0, 1.0) * caps


@register_method("random")
class RandomSearch(Searcher):
    """Random policies projected onto the budget; the best on the reward split wins.

    Each policy draws a global level ``g ~ U(0, 1)`` and per-layer ratios
    ``U(0, 2g) * max_ratio`` (clipped), so the samples cover light and heavy pruning.
    """

    default_episodes = 50
    batches = True

    def _run(self, env: PruningEnv) -> None:
        ev = env.evaluator
        rng = np.random.default_rng(self.seed)
        batch = max(1, ev.parallel)
        for start in range(0, self.episodes, batch):
            policies = []
            for _ in range(min(batch, self.episodes - start)):
                policies.append(ev.project(random_draw(rng, env.max_ratios)))
            if len(policies) > 1 or ev.workers is not None:  # scored together
                ev.prefetch(policies, list(range(start, start + len(policies))))
            for ep, policy in enumerate(policies, start):
                cand = ev.evaluate(policy, episode=ep)
                self._episode_end(env, cand.reward)


def lamp_scores(scores: np.ndarray) -> np.ndarray:
    """LAMP scores of one entry's importances (Lee et al., ICLR 2021), in the input order.

    With the squared importances sorted ascending, ``w_u^2 / sum_{v >= u} w_v^2``: an
    element's share of what remains of its layer once every smaller one is gone. The
    largest element of every layer scores 1, so a global threshold never empties a
    layer, and layers are compared on a scale that does not depend on their size.
    """
    sq = np.square(np.asarray(scores, dtype=np.float64).ravel())
    order = np.argsort(sq, kind="stable")
    s = sq[order]
    tail = np.cumsum(s[::-1])[::-1]  # sum over v >= u in sorted order
    out = np.empty_like(s)
    out[order] = s / np.maximum(tail, 1e-300)
    return out


def space_lamp_scores(env: PruningEnv) -> list[np.ndarray]:
    """LAMP scores of every entry of ``env``'s space. LAMP squares magnitudes, so the
    space's scores are taken as magnitudes: under ``l2`` importance they are already
    squared (``w^2``, or a channel's summed ``|w|^2``), and their square root is used."""
    space = env.evaluator.space
    scores = space.global_scores()
    if space.importance == "l2":
        scores = [np.sqrt(np.maximum(x, 0.0)) for x in scores]
    return [lamp_scores(x) for x in scores]


def threshold_policy(env: PruningEnv, scores: list[np.ndarray]) -> np.ndarray:
    """One global threshold over per-entry ``scores`` (lower pruned first), bisected so
    the budget is just met: per entry, the fraction of its scores under the threshold.

    ``env`` supplies the entries' caps and measures the candidates' costs.
    """
    ev = env.evaluator
    sorted_scores = [np.sort(np.asarray(x, dtype=np.float64).ravel()) for x in scores]
    allv = np.sort(np.concatenate(sorted_scores))
    caps = env.max_ratios

    def policy_at(level: float) -> np.ndarray:
        # level in [0, 1] -> threshold at that quantile of all scores; beyond the cap of
        # each entry the threshold has no effect, so level 1 is the most aggressive policy
        if level <= 0.0:
            return np.zeros(env.T)
        if level >= 1.0:
            return caps.copy()
        tau = allv[min(int(level * (len(allv) - 1)), len(allv) - 1)]
        ratios = np.array([np.searchsorted(x, tau, side="right") / len(x)
                           for x in sorted_scores])
        return np.minimum(ratios, caps)

    return ev.project(bisect_feasible(policy_at, ev.cost_ratios))


def global_scores(env: PruningEnv) -> list[np.ndarray]:
    """The scores the ``global`` threshold ranks: each element's magnitude for weights
    (global magnitude pruning); for channels, each channel's importance divided by the
    mean of its group's, as Torch-Pruning's global pruning does (its default ``mean``
    normaliser). Raw channel importances are not comparable across layers of different
    fan-in: a threshold over them removes whole wide layers first."""
    scores = env.evaluator.space.global_scores()
    if env.evaluator.space.granularity == "weight":
        return scores
    return [x / max(float(np.mean(x)), 1e-12) for x in scores]


def heuristic_policies(env: PruningEnv) -> dict[str, np.ndarray]:
    """The allocations of the one-shot heuristics for ``env``'s budget, each just
    meeting it: ``uniform``, ``global`` (one importance threshold) and ``lamp``."""
    ev = env.evaluator
    return {
        "uniform": ev.project(np.minimum(ev.uniform_policy(), env.max_ratios)),
        "global": threshold_policy(env, global_scores(env)),
        "lamp": threshold_policy(env, space_lamp_scores(env)),
    }


@register_method("global")
class GlobalThreshold(Searcher):
    """One global importance threshold across layers, bisected onto the budget (see
    :func:`global_scores` for what is ranked)."""

    default_episodes = 1
    searching = False

    def _run(self, env: PruningEnv) -> None:
        cand = env.evaluator.evaluate(threshold_policy(env, global_scores(env)), episode=0)
        self._episode_end(env, cand.reward)


@register_method("lamp")
class LAMP(Searcher):
    """LAMP (Lee et al., ICLR 2021): one threshold over layer-adaptive magnitude scores,
    bisected onto the budget (for channels, over the channels' importances)."""

    default_episodes = 1
    searching = False

    def _run(self, env: PruningEnv) -> None:
        scores = space_lamp_scores(env)
        cand = env.evaluator.evaluate(threshold_policy(env, scores), episode=0)
        self._episode_end(env, cand.reward)
