"""Latency lookup tables: each layer timed once per width, a candidate's latency summed.

Measuring the latency of every candidate of a search is slow (a tenth of a second or
more per measurement) and noisy (repeated measurements differ by a few percent), which
keeps a search from repairing policies onto the budget's boundary and from caching.
NetAdapt (Yang et al., ECCV 2018) and MetaPruning (Liu et al., ICCV 2019) instead time
each layer once per width it can take and add the layers up: cheap, and the same
number every time. :class:`LatencyTable` does that for any latency cost (``latency_ms``,
``ort_latency_ms``, their batch/thread variants, a registered noisy cost that runs the
model on the example input), timing the layers with the cost's own measurement.

How a table is built (:meth:`LatencyTable.build`), for a channel-pruning space:

1. one forward pass records every call of a leaf module (a module without children:
   conv, norm, activation, pooling, linear...) and the input it got;
2. pruning one entry of the space at a time shows which calls it reshapes; the entries
   that reshape a call are its *key* (LeNet-5's ``conv2``: the ``conv1`` and ``conv2``
   groups; the ``ReLU`` after it: ``conv2`` alone). Calls no entry reshapes are left out;
3. the calls of one key are timed together, on their recorded inputs, at every point
   of a grid of its entries' widths: ``levels`` widths per entry, evenly spaced from the
   narrowest the space allows to the full width (every width when there are fewer), and
   fewer per entry when a key has more than two entries so that no key has more than
   ``levels**2`` points;
4. the *remainder* is what the keys do not account for: Python overhead, the fixed cost
   of each timing call, and functional code (``torch.flatten``, a residual ``+``),
   taken as constant. It is the median, over ``levels`` whole *anchor* models (every
   entry at its j-th grid width, from the narrowest to the unpruned model), of the
   measured latency minus the sum of the keys;
5. the grid and the anchors are measured in ``passes`` (3) whole passes and every
   point keeps its median, so that a spell of load on a shared machine spoils one pass
   rather than the table.

A candidate's predicted latency is the remainder plus, for every key, the multilinear
interpolation of its grid at the candidate's widths (exact on grid points), read from
the width of each entry's main layer. The table is only as good as the assumption
that layers add up; :func:`rlprune.prune` (``latency_table=True``) therefore uses it
during the search only and measures the returned model for real (:func:`settle`),
and ``benchmarks/latency_table.py`` reports the prediction error on random candidates.

Weight pruning is not supported: zeroed weights do not change a dense layer's latency.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune.costs import (
    BoundBudget,
    Budget,
    BudgetInfeasibleError,
    Constraint,
    Cost,
    ExampleInput,
    get_cost,
)
from rlprune.progress import progress_bar
from rlprune.projection import bisect_boundary, project
from rlprune.space import PruningSpace

__all__ = ["LatencyTable", "search_bound", "settle", "table_costs"]

_CONV = nn.modules.conv._ConvNd
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class _Call:
    """One call of a leaf module in a forward pass: its input and the shapes it saw."""

    name: str
    inputs: tuple[torch.Tensor, ...] | None  # None: not all positional tensors (not timed)
    shapes: tuple[tuple[int, ...], ...] = ()


@dataclass
class _Group:
    """The calls reshaped by the same entries, and their latency on a grid of widths."""

    key: tuple[int, ...]  # entry indices
    calls: list[int]  # indices into the recorded calls
    axes: list[np.ndarray]  # kept widths of each entry of key
    values: np.ndarray  # latency at each grid point, shape (len(a) for a in axes)


def _record(model: nn.Module, x1: ExampleInput) -> list[_Call]:
    """Every leaf-module call of one batch-1 forward pass of ``model`` (eval mode)."""
    calls: list[_Call] = []
    open_calls: dict[int, list[int]] = {}
    hooks = []

    def pre(name: str) -> Any:
        def hook(m: nn.Module, args: Any) -> None:
            ok = isinstance(args, tuple) and all(isinstance(a, torch.Tensor) for a in args)
            inputs = tuple(a.detach().clone() for a in args) if ok else None
            open_calls.setdefault(id(m), []).append(len(calls))
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            calls.append(_Call(name, inputs, shapes))
        return hook

    def post(m: nn.Module, args: Any, output: Any) -> None:
        i = open_calls[id(m)].pop()
        outs = output if isinstance(output, (tuple, list)) else (output,)
        calls[i].shapes += tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))

    for name, m in model.named_modules():
        if not m._modules:
            hooks.append(m.register_forward_pre_hook(pre(name)))
            hooks.append(m.register_forward_hook(post))
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():  # not inference mode: the recorded inputs are reused outside
            model(x1) if isinstance(x1, torch.Tensor) else model(*x1)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in was:
            m.training = flag
    return calls


class _Calls(nn.Module):
    """Runs some module calls one after another, each on its own recorded input."""

    def __init__(self, modules: list[nn.Module], arity: list[int]):
        super().__init__()
        self.calls = nn.ModuleList(modules)
        self.arity = arity

    def forward(self, *xs: torch.Tensor) -> tuple[Any, ...]:
        outs, i = [], 0
        for m, k in zip(self.calls, self.arity):
            outs.append(m(*xs[i:i + k]))
            i += k
        return tuple(outs)


def _width(m: nn.Module) -> int:
    """The output width of an entry's main layer (what the entry keeps)."""
    if isinstance(m, _CONV):
        return int(m.out_channels)
    if isinstance(m, nn.Linear):
        return int(m.out_features)
    if isinstance(m, _NORMS):
        return int(m.num_features)
    raise ValueError(f"cannot read a width from a {type(m).__name__}")


def _first(x: ExampleInput) -> ExampleInput:
    return x[:1] if isinstance(x, torch.Tensor) else tuple(t[:1] for t in x)


def _policy(space: PruningSpace, kept: Mapping[int, int]) -> np.ndarray:
    """The policy under which entry ``i`` keeps ``kept[i]`` channels (others: all)."""
    p = np.zeros(len(space))
    for i, k in kept.items():
        n = space.entries[i].prunable
        p[i] = (n - k) / n
    return p


def _choose(values: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the sorted ``values``, evenly spaced, both ends included."""
    if len(values) <= n:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, n)).astype(int))
    return values[idx]


def _interp(axes: Sequence[np.ndarray], values: np.ndarray, point: Sequence[float]) -> float:
    """Multilinear interpolation of ``values`` (a grid over ``axes``) at ``point``."""
    lo, frac = [], []
    for a, x in zip(axes, point):
        if len(a) == 1:
            lo.append(0)
            frac.append(0.0)
            continue
        x = min(max(float(x), float(a[0])), float(a[-1]))
        i = int(min(max(np.searchsorted(a, x, side="right") - 1, 0), len(a) - 2))
        lo.append(i)
        frac.append((x - float(a[i])) / float(a[i + 1] - a[i]))
    total = 0.0
    for corner in itertools.product((0, 1), repeat=len(lo)):
        w = math.prod(f if c else 1.0 - f for f, c in zip(frac, corner))
        if w > 0.0:
            total += w * float(values[tuple(i + c for i, c in zip(lo, corner))])
    return total


class LatencyTable:
    """Per-layer latencies of one model's channel-pruning space, at a grid of widths.

    Build with :meth:`build` (module docstring). A table is a latency cost itself:
    ``table(model)`` (or ``table(model, example_input)``, the input ignored) predicts a
    pruned model's latency from its layers' widths; :meth:`predict_kept` does the same
    from the entries' kept widths. ``cost`` names the cost the table stands for,
    ``modules`` holds each entry's main layer (whose output width the entry keeps) and
    ``full`` the measured latency of the unpruned model (an anchor). ``measurements``
    counts the timings the build took and ``build_s`` its seconds. The constructor is
    internal (its ``groups`` come from :meth:`build`): ``remainder`` is the latency no
    timed call accounts for.
    """

    def __init__(self, cost: str, modules: Sequence[str], groups: Sequence[_Group],
                 remainder: float, full: float, measurements: int, build_s: float):
        self.cost = cost
        self.modules = list(modules)
        self.groups = list(groups)
        self.remainder = float(remainder)
        self.full = float(full)
        self.measurements = int(measurements)
        self.build_s = float(build_s)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        space: PruningSpace,
        model: nn.Module,
        example_input: ExampleInput,
        cost: Cost | str = "latency_ms",
        levels: int = 8,
        passes: int = 3,
        progress: bool = False,
    ) -> LatencyTable:
        """Time the layers of ``model`` at ``levels`` widths per entry of ``space``.

        ``space`` is a channel-pruning space of ``model`` (never modified);
        ``example_input`` a batch the model accepts (its first sample is recorded; the
        cost repeats it to its own batch size); ``cost`` the latency cost (or its name)
        whose measurement times the layers. The grid and the ``levels`` anchor models
        are measured ``passes`` times, one whole pass after another, and each point
        keeps its median. ``progress`` shows a bar. Raises ``ValueError`` for weight
        spaces, ``levels < 2``, ``passes < 1`` and models whose entries' widths cannot be
        read back.
        """
        if space.granularity != "channel":
            raise ValueError("a latency table needs granularity='channel': zeroing weights "
                             "does not change a dense layer's latency")
        if levels < 2 or passes < 1:
            raise ValueError(f"levels must be >= 2 and passes >= 1, got {levels}, {passes}")
        c = get_cost(cost) if isinstance(cost, str) else cost
        t0 = time.perf_counter()
        x1 = _first(example_input)
        n = len(space)
        zeros = np.zeros(n)
        base = space.apply(model, zeros)
        modules = [e.name for e in space.entries]
        ref = _record(base, x1)
        # which entries reshape which calls
        deps: list[set[int]] = [set() for _ in ref]
        for i, cap in enumerate(space.max_policy()):
            p = zeros.copy()
            p[i] = cap
            calls = _record(space.apply(model, p), x1)
            if [c_.name for c_ in calls] != [c_.name for c_ in ref]:
                raise ValueError("the model's forward pass calls other modules once pruned; "
                                 "a latency table needs the same calls at every width")
            for j, (a, b) in enumerate(zip(ref, calls)):
                if a.shapes != b.shapes:
                    deps[j].add(i)
        by_key: dict[tuple[int, ...], list[int]] = {}
        for j, d in enumerate(deps):
            if d and ref[j].inputs is not None:
                by_key.setdefault(tuple(sorted(d)), []).append(j)
        widths = [_choose(cls._reachable(space, i), levels) for i in range(n)]
        plans = []
        for key, calls_ in by_key.items():
            per_axis = levels if len(key) <= 2 else max(2, int(levels ** (2.0 / len(key))))
            plans.append((key, calls_, [_choose(widths[i], per_axis) for i in key]))
        # anchors: whole models with every entry at its j-th width, j = 0 .. levels - 1
        anchors = [{i: int(w[round(j * (len(w) - 1) / (levels - 1))])
                    for i, w in enumerate(widths)} for j in range(levels)]
        per_pass = sum(math.prod(len(a) for a in axes) for _, _, axes in plans) + len(anchors)
        bar = progress_bar(total=passes * per_pass, desc=f"latency table ({c.name})",
                           unit="timing", disable=not progress)
        runs: list[list[np.ndarray]] = []
        real = np.zeros((passes, len(anchors)))
        try:
            for r in range(passes):  # whole passes, so that a busy spell spoils one only
                run = []
                for key, calls_, axes in plans:
                    values = np.zeros(tuple(len(a) for a in axes))
                    for idx in itertools.product(*(range(len(a)) for a in axes)):
                        kept = {e: int(axes[k][i]) for k, (e, i) in enumerate(zip(key, idx))}
                        values[idx] = cls._time(space, model, x1, c, calls_, kept, modules)
                        bar.update(1)
                    run.append(values)
                runs.append(run)
                for ai, kept in enumerate(anchors):
                    real[r, ai] = c(space.apply(model, _policy(space, kept)), x1)
                    bar.update(1)
        finally:
            bar.close()
        groups = [_Group(key, calls_, axes, np.median([run[g] for run in runs], axis=0))
                  for g, (key, calls_, axes) in enumerate(plans)]
        measured = np.median(real, axis=0)
        table = cls(c.name, modules, groups, 0.0, float(measured[-1]), passes * per_pass, 0.0)
        table.remainder = float(np.median([m - table._keys([kept[i] for i in range(n)])
                                           for m, kept in zip(measured, anchors)]))
        table.build_s = time.perf_counter() - t0
        return table

    @staticmethod
    def _reachable(space: PruningSpace, i: int) -> np.ndarray:
        """Every width entry ``i`` can keep, ascending."""
        e = space.entries[i]
        p = np.zeros(len(space))
        out = set()
        for removed in range(int(e.prunable)):
            p[i] = min(removed / e.prunable, e.max_ratio)
            out.add(int(space.kept(p)[i]))
        return np.array(sorted(out), dtype=np.int64)

    @staticmethod
    def _time(space: PruningSpace, model: nn.Module, x1: ExampleInput, cost: Cost,
              calls: list[int], kept: Mapping[int, int], modules: list[str]) -> float:
        """The cost of ``calls`` in ``model`` pruned to the ``kept`` widths."""
        pruned = space.apply(model, _policy(space, kept))
        named = dict(pruned.named_modules())
        for i, k in kept.items():
            got = _width(named[modules[i]])
            if got != k:
                raise ValueError(f"entry {i} ({modules[i]!r}) should keep {k} channels, its "
                                 f"layer has {got}: this space's widths cannot be read back")
        rec = _record(pruned, x1)
        mods: list[nn.Module] = []
        arity: list[int] = []
        inputs: list[torch.Tensor] = []
        for j in calls:
            call_inputs = rec[j].inputs
            assert call_inputs is not None
            mods.append(named[rec[j].name])
            arity.append(len(call_inputs))
            inputs.extend(call_inputs)
        return float(cost(_Calls(mods, arity), tuple(inputs)))

    # ---------------------------------------------------------------- predicting
    def widths(self, model: nn.Module) -> np.ndarray:
        """The width each entry keeps in ``model`` (a model pruned from this table's
        space), read from the entries' main layers."""
        named = dict(model.named_modules())
        missing = [m for m in self.modules if m not in named]
        if missing:
            raise ValueError(f"the model has no layer {missing[0]!r}: a latency table "
                             "predicts models pruned from the space it was built for")
        return np.array([_width(named[m]) for m in self.modules], dtype=np.int64)

    def _keys(self, kept: Sequence[int] | np.ndarray) -> float:
        """The sum of every key's interpolated latency at the ``kept`` widths."""
        k = np.asarray(kept, dtype=np.float64)
        return sum(_interp(g.axes, g.values, [k[i] for i in g.key]) for g in self.groups)

    def predict_kept(self, kept: Sequence[int] | np.ndarray) -> float:
        """Predicted latency when each entry keeps ``kept[i]`` channels."""
        return max(self.remainder + self._keys(kept), 0.0)

    def predict(self, model: nn.Module) -> float:
        """Predicted latency of ``model``, a model pruned from this table's space."""
        return self.predict_kept(self.widths(model))

    def __call__(self, model: nn.Module, example_input: ExampleInput | None = None) -> float:
        """:meth:`predict` as a cost function (``example_input`` is not needed)."""
        return self.predict(model)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts: cost, timings, build seconds, keys, remainder, full latency."""
        return {"cost": self.cost, "measurements": self.measurements,
                "build_s": self.build_s, "keys": [list(g.key) for g in self.groups],
                "remainder": self.remainder, "full": self.full}


def table_costs(bound: BoundBudget) -> list[str]:
    """The constraints of ``bound`` a latency table can stand for: the noisy costs that
    run the model on the example input (``latency_ms``, ``ort_latency_ms``, variants)."""
    return [c.name for c in bound.budget if c.cost.noisy and c.cost.takes_input]


def search_bound(
    bound: BoundBudget,
    space: PruningSpace,
    model: nn.Module,
    tables: Mapping[str, LatencyTable] | None = None,
    levels: int = 8,
    progress: bool = False,
) -> tuple[BoundBudget, dict[str, LatencyTable]]:
    """``bound`` with every latency cost replaced by a lookup table, for the search.

    The limits and original values stay those of ``bound`` (measured once, for real;
    a table measures the whole model again for its remainder);
    each latency constraint (:func:`table_costs`) is predicted by a
    :class:`LatencyTable` of ``model`` over ``space``, noise-free, so the returned
    bound is not ``noisy``. ``tables`` are reused by cost name (e.g. one build shared by
    every method of a comparison); missing ones are built with ``levels`` widths per
    entry (``progress`` shows a bar). Returns the search bound and the tables by cost
    name. Raises ``ValueError`` if the budget has no latency cost.
    """
    names = table_costs(bound)
    if not names:
        raise ValueError(f"a latency table needs a latency constraint in the budget (e.g. "
                         f"latency_ms or ort_latency_ms), got {str(bound.budget)!r}")
    if bound.example_input is None:
        raise ValueError("the bound budget has no example input to time the layers on")
    built: dict[str, LatencyTable] = {}
    items = []
    for c in bound.budget:
        if c.name not in names:
            items.append(c)
            continue
        table = (tables or {}).get(c.name)
        if table is None:
            table = LatencyTable.build(space, model, bound.example_input, c.cost, levels,
                                       progress=progress)
        built[c.name] = table
        cost = Cost(c.name, table, relative=c.cost.relative, noisy=False, takes_input=True,
                    unit=c.cost.unit)
        items.append(Constraint(c.name, cost, c.value, c.percent))
    return BoundBudget(Budget(items), bound.original, bound.example_input, rule=bound.rule,
                       original_spread=bound.original_spread), built


def settle(
    space: PruningSpace,
    model: nn.Module,
    policy: Sequence[float] | np.ndarray,
    bound: BoundBudget,
    margin: float | None = None,
    rechecks: int = 1,
    refine: int = 3,
) -> np.ndarray:
    """``policy`` made to meet ``bound`` under its noise rule, measured for real.

    The policy is projected with real measurements (:func:`~rlprune.projection.project`;
    unchanged if it fits) and then moved toward the most aggressive policy of ``space``
    in small steps until the pruned ``model`` is accepted by the bound's
    :class:`~rlprune.noise.NoiseRule` (``rule.repeats`` fresh measurements whose upper
    bound keeps ``margin``, the rule's unless given, below every noisy limit): one
    measurement right at the limit would pass or fail the final check by chance. Used
    after a search whose noisy costs were measured once per candidate, or predicted by
    a lookup table. A step is checked up to ``1 + 2 * rechecks`` times and taken when
    most of those checks accept it (decided as soon as the majority is known; with
    ``rechecks=1``, two checks that agree or a third to break a tie): a burst of load on the
    machine during one check would otherwise push the policy toward more pruning for
    good, while a step that truly misses fails every check. A majority, not any one
    check, because settling returns the least pruned step that held: taking a step on
    one lucky check of two returns a model that the final check, minutes later, fails
    more often than not (on ``cifar10-multi``: a step that measured 1.001 x the limit,
    then 0.944 x on its recheck, was taken). The steps grow (2%, 5%,
    10%, 20%, 40%, 70% of the way to the most aggressive policy), so the first that
    holds can prune far more than needed; ``refine`` bisection steps between it and
    the last that failed, each checked the same way, return the least pruned one
    that held (without them, a ResNet-20 whose best candidate measured 0.97 x its
    latency limit came back from two settlings at 0.63 x, with 3% of its parameters).
    Raises
    :class:`~rlprune.costs.BudgetInfeasibleError` if even the most aggressive policy
    fails.
    """
    if rechecks < 0:
        raise ValueError(f"rechecks must be >= 0, got {rechecks!r}")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine!r}")
    p = project(space, model, policy, bound)
    pmax = space.max_policy()
    base = np.minimum(p, pmax)
    m = bound.rule.margin if margin is None else margin

    def at(t: float) -> np.ndarray:
        return np.minimum(base + t * (pmax - base), pmax)

    def holds(t: float) -> bool:
        pruned = space.apply(model, at(t))
        need = rechecks + 1  # a majority of 1 + 2 * rechecks checks
        passed = failed_checks = 0
        while passed < need and failed_checks < need:
            if bound.accepts(pruned, m):
                passed += 1
            else:
                failed_checks += 1
        return passed >= need

    failed: float | None = None  # the last step that did not hold
    held: float | None = None  # the first that did
    for t in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0):
        if holds(t):
            held = t
            break
        failed = t
    if held is not None:
        if failed is not None and refine:  # narrow the jump from the last failure
            lo, span = failed, held - failed
            held = lo + span * bisect_boundary(lambda u: holds(lo + u * span), refine)
        return at(held)
    runs = bound.repeated(space.apply(model, pmax))
    noisy = bound.noisy_names
    failing = {n: (max(v), bound.limits[n]) for n, v in runs.items()
               if not (bound.rule.accepts(v, bound.limits[n], m) if n in noisy
                       else v[0] <= bound.limits[n])}
    raise BudgetInfeasibleError(
        f"budget cannot be met reliably: even the most aggressive pruning allowed does not "
        f"keep a {m:.0%} margin over {bound.rule.repeats} measurements (measured: "
        + ", ".join(f"{n} median {bound.rule.spread(runs[n]).median:.4g}, upper bound "
                    f"{bound.rule.spread(runs[n]).bound:.4g}, limit {bound.limits[n]:.4g}"
                    for n in noisy) + "); loosen the limit or measure on a quieter machine",
        failing)
