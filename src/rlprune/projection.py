"""Moving a pruning policy onto a budget, measured on the pruned model itself.

:func:`project` turns any policy into the nearest feasible one for a bound budget
(every ratio moved toward the most aggressive pruning allowed, by bisection), and
:func:`uniform_policy` finds the single ratio for every entry that just meets it.
Both measure the costs of pruned copies (cached by the channels or weights a policy
removes) and raise :class:`~rlprune.costs.BudgetInfeasibleError` naming the
smallest reachable value of each failing cost when even the most aggressive policy
does not fit. :func:`bisect_boundary` is the one bisection every search uses.

Budgets must be bound (:class:`~rlprune.costs.BoundBudget`): a run resolves its
limits once and never re-measures the original model here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import nn

from rlprune.costs import BoundBudget, BudgetInfeasibleError
from rlprune.space import PruningSpace

__all__ = ["project", "uniform_policy", "bisect_boundary"]


def _bound(budget: BoundBudget) -> BoundBudget:
    """``budget`` itself; anything else is an error (limits are resolved once, by the caller)."""
    if not isinstance(budget, BoundBudget):
        raise TypeError(
            "expected a BoundBudget, whose limits are resolved once per run: use "
            f"Budget.parse(...).bind(model, example_input), got {type(budget).__name__}"
        )
    return budget


class _CostProbe:
    """Measures policies on pruned copies, caching by the removal counts they produce."""

    def __init__(self, space: PruningSpace, model: nn.Module, bound: BoundBudget):
        self.space, self.model, self.bound = space, model, bound
        self._cache: dict[bytes, dict[str, float]] = {}

    def values(self, policy: np.ndarray, fresh: bool = False) -> dict[str, float]:
        key = self.space.removed(policy).tobytes()
        if fresh or key not in self._cache:
            self._cache[key] = self.bound.measure(self.space.apply(self.model, policy))
        return self._cache[key]

    def ok(self, policy: np.ndarray, fresh: bool = False) -> bool:
        return self.bound.ok_of(self.values(policy, fresh))


def _infeasible(space: PruningSpace, bound: BoundBudget, values: dict[str, float]) -> str:
    parts = []
    for name in bound.names:
        v, lim, orig = values[name], bound.limits[name], bound.original[name]
        if v <= lim:
            continue
        frac = f"{v / orig:.4g} of the original ({orig:.6g})" if orig else f"{v:.6g}"
        parts.append(
            f"{name} reaches at least {v:.6g} = {frac} at the most aggressive pruning "
            f"allowed, limit {lim:.6g}"
            + (f" ({lim / orig:.4g} of the original)" if orig else "")
        )
    msg = "budget cannot be met: " + "; ".join(parts)
    size_costs = {"params", "macs", "flops", "memory_mb", "disk_mb"}
    if space.granularity == "weight" and any(
        n in size_costs and values[n] > bound.limits[n] for n in bound.names
    ):
        msg += (
            ". Weight pruning zeroes weights without removing them, so only nonzero_params "
            "(or a custom cost) shrinks; use granularity='channel' to reduce the others"
        )
    return msg


def _failures(bound: BoundBudget, values: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {n: (values[n], bound.limits[n]) for n in bound.names if values[n] > bound.limits[n]}


def project(
    space: PruningSpace,
    model: nn.Module,
    policy: Sequence[float] | np.ndarray,
    budget: BoundBudget,
    iterations: int = 16,
) -> np.ndarray:
    """The nearest feasible policy, measured on the pruned model itself.

    A feasible ``policy`` is returned unchanged. Otherwise the policy (clipped to each
    entry's ``max_ratio``) is moved toward ``space.max_policy()``, ``p + t (max - p)``,
    and the smallest ``t`` that meets every constraint is found by bisection; the
    feasible end is returned. Costs are monotone in ``t`` for size costs, and for noisy
    costs (latency) the answer is measured once more and pushed further toward ``max``
    if it fails. ``budget`` is bound: its limits are absolute and never re-measured.
    ``space`` is the pruning space of ``model``; ``iterations`` bisection steps are
    measured.

    Raises :class:`BudgetInfeasibleError` naming each failing cost, its smallest
    reachable value and its limit if even ``max_policy()`` does not fit.
    """
    bound = _bound(budget)
    p = space.check_policy(policy)
    ev = _CostProbe(space, model, bound)
    if ev.ok(p):
        return p
    pmax = space.max_policy()
    vmax = ev.values(pmax)
    if not bound.ok_of(vmax):
        raise BudgetInfeasibleError(_infeasible(space, bound, vmax), _failures(bound, vmax))
    base = np.minimum(p, pmax)

    def at(t: float) -> np.ndarray:
        return np.minimum(base + t * (pmax - base), pmax)

    return _confirm(ev, at, bisect_boundary(lambda t: ev.ok(at(t)), iterations), bound)


def bisect_boundary(ok: Callable[[float], bool], iterations: int = 16) -> float:
    """The smallest ``t`` in [0, 1] with ``ok(t)``, by bisection (``ok(1)`` assumed true).

    ``ok`` must be monotone: once true, true for every larger ``t``. The returned value
    is always on the true side (within ``2**-iterations`` of the boundary).
    """
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _confirm(
    ev: _CostProbe, at: Callable[[float], np.ndarray], t: float, bound: BoundBudget
) -> np.ndarray:
    """Re-measure a noisy answer; step toward the most aggressive end until it holds."""
    if not bound.noisy:
        return at(t)
    for _ in range(8):
        if ev.ok(at(t), fresh=True):
            return at(t)
        t = t + 0.5 * (1.0 - t)
    if ev.ok(at(1.0), fresh=True):
        return at(1.0)
    values = ev.values(at(1.0))
    raise BudgetInfeasibleError(
        "budget cannot be met reliably: a noisy cost fails even at the most aggressive "
        "pruning allowed when measured again; " + _infeasible(ev.space, bound, values),
        _failures(bound, values),
    )


def uniform_policy(
    space: PruningSpace,
    model: nn.Module,
    budget: BoundBudget,
    iterations: int = 20,
) -> np.ndarray:
    """One ratio ``r`` for every entry (capped at each ``max_ratio``) that just meets the budget.

    ``space`` is the pruning space of ``model`` and ``budget`` the bound budget.

    Bisection on ``r`` finds the smallest feasible ratio to within ``max_r / 2**iterations``;
    the feasible end is returned, so the tightest constraint is just met. Returns all
    zeros when the unpruned model already fits; raises :class:`BudgetInfeasibleError`
    when even the most aggressive policy does not.
    """
    bound = _bound(budget)
    pmax = space.max_policy()
    ev = _CostProbe(space, model, bound)

    def at(t: float) -> np.ndarray:
        return np.minimum(t * float(pmax.max()), pmax)

    if ev.ok(at(0.0)):
        return at(0.0)
    vmax = ev.values(pmax)
    if not bound.ok_of(vmax):
        raise BudgetInfeasibleError(_infeasible(space, bound, vmax), _failures(bound, vmax))
    return _confirm(ev, at, bisect_boundary(lambda t: ev.ok(at(t)), iterations), bound)
