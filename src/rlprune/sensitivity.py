"""Per-layer sensitivity: what each entry of a pruning space costs in accuracy alone.

The classic sensitivity analysis of Han et al. (2015), used by NetAdapt and by
Distiller's sensitivity pruning: every entry of the space is pruned *alone* to a few
ratios, each copy is scored on a subsample of the reward split (BatchNorm
re-estimated, as a candidate is) and measured against the budget. That gives, per
entry, two curves over its prune ratio: the accuracy it loses and the share of the
budget's required cut it delivers.

:func:`allocate` turns the curves into one allocation for the budget: the policy that
minimises the sum of the entries' accuracy losses for what they save (a Lagrangian
relaxation: for a price ``lam`` each entry picks, on its own curves, the ratio
minimising ``loss - lam * saving``; ``lam`` is bisected until the measured budget is just
met). Entries interact (pruning a layer's outputs also shrinks the next layer's inputs,
and losses do not add exactly), which is why the result is a *starting point*: ``cpl``
scores it beside the uniform, global and LAMP allocations and starts its policy at
the best of them (``CPLConfig.sensitivity``).

What it spends: ``len(levels) * T + 1`` models built and scored on ``samples`` reward
samples each (counted in the evaluator's ``spent``), no candidate evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlprune.costs import BudgetInfeasibleError
from rlprune.evaluate import Evaluator
from rlprune.projection import bisect_boundary

__all__ = ["LEVELS", "Sensitivity", "allocate", "measure"]

#: The prune ratios probed per entry, as fractions of the entry's largest ratio.
LEVELS = (0.5, 0.75, 0.875, 0.9375, 1.0)


@dataclass
class Sensitivity:
    """Per-entry curves of a sensitivity analysis (rows: entries, columns: levels).

    ``ratios[i, j]`` is the prune ratio entry ``i`` was probed at, ``drops[i, j]`` the
    reward-split accuracy it lost there against the unpruned model (scored the same
    way, on the same ``samples``), and ``cost_ratios[i, j]`` the budget's cost ratios
    (value / limit per constraint) of that probe; ``original_ratios`` are those of the
    unpruned model.
    """

    names: list[str]
    ratios: np.ndarray
    drops: np.ndarray
    cost_ratios: np.ndarray
    original_ratios: np.ndarray
    samples: int

    def savings(self) -> np.ndarray:
        """Per probe, the share of the budget's required cut it delivers, summed over
        the constraints the unpruned model violates (0 for a constraint it meets)."""
        r0 = self.original_ratios
        need = np.maximum(r0 - 1.0, 0.0)
        share = np.where(need > 0, (r0 - self.cost_ratios) / np.where(need > 0, need, 1.0),
                         0.0)
        return np.maximum(share, 0.0).sum(axis=-1)

    def summary(self) -> list[dict[str, Any]]:
        """One plain dict per entry (for reports and ``SearchResult.extra``)."""
        sav = self.savings()
        return [{"entry": n, "ratios": [round(float(r), 4) for r in self.ratios[i]],
                 "accuracy_drop": [round(float(d), 4) for d in self.drops[i]],
                 "saving": [round(float(s), 4) for s in sav[i]]}
                for i, n in enumerate(self.names)]


def measure(evaluator: Evaluator, levels: Sequence[float] = LEVELS,
            samples: int | None = 250, caps: np.ndarray | None = None) -> Sensitivity:
    """Probe every entry of ``evaluator``'s space alone at ``levels`` of its largest ratio.

    ``caps`` are the largest ratios (default: the space's); ``samples`` the first reward
    samples each probe is scored on (``None``: all the evaluator scores). The unpruned
    model is probed the same way, so a drop compares like with like.
    """
    lv = np.asarray([float(x) for x in levels], dtype=np.float64)
    if lv.size == 0 or np.any(lv <= 0.0) or np.any(lv > 1.0):
        raise ValueError(f"levels are fractions of an entry's largest ratio in (0, 1], "
                         f"got {list(levels)!r}")
    if samples is not None and int(samples) < 1:
        raise ValueError(f"samples must be >= 1 or None, got {samples!r}")
    T = evaluator.T
    cap = np.asarray(evaluator.caps if caps is None else caps, dtype=np.float64)
    base_acc, base_ratios = evaluator.probe(np.zeros(T), samples)
    ratios = cap[:, None] * lv[None, :]
    drops = np.zeros((T, lv.size))
    cost = np.zeros((T, lv.size, base_ratios.size))
    for i in range(T):
        for j in range(lv.size):
            pol = np.zeros(T)
            pol[i] = ratios[i, j]
            acc, r = evaluator.probe(pol, samples)
            drops[i, j] = base_acc - acc
            cost[i, j] = r
    n = evaluator.scoring_samples
    n = n if samples is None else min(int(samples), n)
    return Sensitivity(names=[e.name for e in evaluator.space.entries], ratios=ratios,
                       drops=drops, cost_ratios=cost, original_ratios=base_ratios,
                       samples=n)


def _curve(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``y`` (0 at ratio 0) interpolated onto ``grid``, made non-decreasing: a probe
    that scored above the unpruned model, or above a stronger probe, is noise."""
    vals = np.interp(grid, np.concatenate([[0.0], x]), np.concatenate([[0.0], y]))
    return np.maximum.accumulate(np.maximum(vals, 0.0))


def allocate(evaluator: Evaluator, sens: Sensitivity, caps: np.ndarray | None = None,
             points: int = 41) -> np.ndarray:
    """The allocation ``sens`` suggests for ``evaluator``'s budget, just meeting it.

    Per entry, losses and savings are interpolated onto ``points`` ratios in [0, cap];
    for a price ``lam`` every entry picks the ratio minimising ``loss - lam * saving``
    (ties to the smaller ratio), and ``lam`` is bisected (on ``lam = s / (1 - s)``, ``s``
    in [0, 1]) until the measured budget is just met. Where the price moves an entry by a
    whole grid step, the allocations just under and just over it are blended onto the
    budget's boundary, so the result spends the budget as the other heuristics' do. Raises ``BudgetInfeasibleError`` when even the
    largest ratios miss the budget.
    """
    cap = np.asarray(evaluator.caps if caps is None else caps, dtype=np.float64)
    T = len(cap)
    grids = [np.linspace(0.0, c, points) for c in cap]
    sav = sens.savings()
    loss = [_curve(sens.ratios[i], sens.drops[i], grids[i]) for i in range(T)]
    gain = [_curve(sens.ratios[i], sav[i], grids[i]) for i in range(T)]
    # a price that makes every saving worth more than any loss prunes to the caps
    scale = max(float(max(np.max(x) for x in loss)), 1e-6) / max(
        min((float(g[g > 0].min()) for g in gain if np.any(g > 0)), default=1.0), 1e-9)

    def policy_at(s: float) -> np.ndarray:
        if s >= 1.0:
            return cap.copy()
        lam = scale * s / (1.0 - s)
        return np.array([g[int(np.argmin(l_ - lam * s_))] for g, l_, s_ in
                         zip(grids, loss, gain)])

    def fits(policy: np.ndarray) -> bool:
        return bool(np.all(evaluator.cost_ratios(policy) <= 1.0))

    if fits(policy_at(0.0)):
        return evaluator.project(policy_at(0.0))
    worst = evaluator.cost_ratios(cap)
    if np.any(worst > 1.0):
        raise BudgetInfeasibleError(
            "budget cannot be met even at the most aggressive pruning allowed "
            f"(constraint value / limit = {np.round(worst, 4).tolist()})")
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if fits(policy_at(mid)):
            hi = mid
        else:
            lo = mid
    # the price moves entries in steps of the grid: between the last price that missed
    # the budget and the first that met it, blend the two allocations onto the boundary
    p_lo, p_hi = policy_at(lo), policy_at(hi)
    t = bisect_boundary(lambda a: fits(p_lo + a * (p_hi - p_lo)), 20)
    return evaluator.project(p_lo + t * (p_hi - p_lo))
