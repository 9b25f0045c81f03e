"""What can be pruned: the ordered list of prunable layers and how to apply a policy.

A *policy* is one prune ratio in ``[0, 1)`` per entry of a :class:`PruningSpace`.

``granularity="channel"``
    One entry per independently prunable group of channels, found by Torch-Pruning's
    ``DependencyGraph``: channels coupled by residual additions, depthwise convs,
    concatenations or a flatten into a Linear are one group and are removed together.
    Applying a policy removes the lowest-importance channels of each group from a deep
    copy: the result has physically smaller Conv/Linear/BatchNorm layers and the same
    output shape. The outputs of the layers that produce the model's output (the
    classifier) are never pruned.

``granularity="weight"``
    One entry per Conv/Linear weight tensor (the classifier's included: zeroing weights
    changes no shape). Applying a policy zeroes the lowest-importance fraction of each
    tensor in a deep copy, a plain module without masks or hooks.

Importance (``l1``, ``l2``, ``random``, ``taylor``, ``bn_scale``) is computed once when
the space is built; ``apply`` only reads the stored ranking, so evaluating a candidate
costs one deep copy plus the slicing (about 0.1 s for ResNet-56 on a laptop core).

Channel removal does not rebuild the dependency graph per candidate: at build time every
group is flattened into a list of ``(layer, pruning function, layer indices, root
channel of each index)`` in the *original* coordinates. A candidate's removed root
channels are mapped to each layer's indices, indices from different groups that meet in
one layer (a concatenation) are merged, and each layer is sliced once with
Torch-Pruning's per-layer pruning functions.

Moving a policy onto a budget (:func:`rlprune.projection.project`) lives beside this
module, in :mod:`rlprune.projection`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from rlprune.costs import BudgetInfeasibleError, ExampleInput, layer_macs

__all__ = [
    "PruningSpace",
    "LayerEntry",
    "BudgetInfeasibleError",
    "GRANULARITIES",
    "IMPORTANCES",
    "KINDS",
    "FEATURE_NAMES",
]

GRANULARITIES = ("channel", "weight")
IMPORTANCES = ("l1", "l2", "random", "taylor", "bn_scale")
#: The default ranking: squared magnitude, Torch-Pruning's ``GroupMagnitudeImportance(p=2)``
#: for channel groups (the same order as ``l1`` for single weights).
DEFAULT_IMPORTANCE = "l2"
#: Layer kinds, in the order of their feature code.
KINDS = ("conv", "depthwise", "grouped", "linear")
#: Columns of :meth:`PruningSpace.features`.
FEATURE_NAMES = ("index", "kind", "in_width", "out_width", "kernel", "stride", "params", "macs")

_CONV = nn.modules.conv._ConvNd
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
          nn.modules.instancenorm._InstanceNorm)
_EPS = 1e-9


@dataclass(frozen=True)
class LayerEntry:
    """One prunable unit of a space and its static features.

    ``index`` is the entry's position in the space (the policy's order) and ``kind``
    its layer's type: ``"conv"``, ``"grouped"`` or ``"depthwise"`` (convolutions),
    ``"linear"``. ``name`` is the module name (for a channel group, its main layer: the
    first non-depthwise conv/linear whose outputs the group removes). ``in_width`` /
    ``out_width`` / ``kernel`` / ``stride`` describe that layer. ``params`` and ``macs``
    are those of the unpruned layers the entry shrinks: for a channel group, every
    layer whose *output* channels it removes (convs, linears and their norms; MACs of
    the convs/linears at batch 1); for a weight entry, the weight tensor and its layer.
    ``prunable`` is the number of channels (weights) a ratio applies to, ``min_keep``
    how many always stay, ``max_ratio = (prunable - min_keep) / prunable``.
    ``modules`` names every layer the entry touches, ``param_name`` the tensor of a
    weight entry.
    """

    index: int
    name: str
    kind: str
    in_width: int
    out_width: int
    kernel: int
    stride: int
    params: int
    macs: int
    prunable: int
    min_keep: int
    max_ratio: float
    modules: tuple[str, ...] = ()
    param_name: str | None = None


@dataclass
class _Op:
    """One layer of a channel group: ``handler(layer, idxs[drop[root]])`` removes channels."""

    target: str
    handler: Callable[..., Any]
    pruning_dim: int
    idxs: np.ndarray
    root: np.ndarray
    is_param: bool = False
    dim: str = "out"  # which side of the layer the indices address: "out" or "in"


@dataclass
class _WeightPlan:
    param_name: str
    order: torch.Tensor  # flat indices, least important first


@dataclass
class _Entry:
    """Internal per-entry state: the public entry plus what apply needs."""

    entry: LayerEntry
    order: np.ndarray  # channel (or weight) indices, least important first
    ops: list[_Op] = field(default_factory=list)
    weight: _WeightPlan | None = None
    global_scores: np.ndarray | None = None  # on a scale shared by all entries


# ------------------------------------------------------------------ small helpers
def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _CONV) and m.groups > 1:
        if m.groups == m.in_channels == m.out_channels:
            return "depthwise"
        return "grouped"
    return "conv"


def _geometry(m: nn.Module) -> tuple[int, int, int, int]:
    """(in width, out width, kernel, stride) of a conv or linear layer."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, 1, 1
    if not isinstance(m, _CONV):
        raise TypeError(f"expected a conv or linear layer, got {type(m).__name__}")
    return m.in_channels, m.out_channels, int(max(m.kernel_size)), int(max(m.stride))


def _check_finite(model: nn.Module) -> None:
    with torch.no_grad():
        tensors: list[tuple[str, str, torch.Tensor]] = [
            ("parameter", n, t) for n, t in model.named_parameters()]
        tensors += [("buffer", n, t) for n, t in model.named_buffers()]
        for what, name, t in tensors:
            # NaN and inf propagate through a sum: a finite sum proves a finite tensor
            # in one cheap pass; only a non-finite sum (or an overflow) needs the full check.
            if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
                continue
            if not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{what} {name!r} contains NaN or inf values; rlprune cannot rank or "
                    "prune a model with non-finite weights (check the checkpoint or training)"
                )


def _resolve_ignored(
    model: nn.Module, ignored: Sequence[nn.Module | str] | None
) -> set[str]:
    """Names of user-ignored layers, given as modules of ``model`` or as names."""
    if not ignored:
        return set()
    by_id = {id(m): n for n, m in model.named_modules()}
    names = set(by_id.values())
    out: set[str] = set()
    for item in ignored:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"ignored layer {item!r} is not a module name of the model")
            out.add(item)
        elif isinstance(item, nn.Module) and id(item) in by_id:
            out.add(by_id[id(item)])
        else:
            raise ValueError(
                f"ignored_layers entry {item!r} is neither a module of the model nor a module name"
            )
    return out


def _taylor_scores(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    batch_size: int,
    max_batches: int,
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``sum over batches of |w * dL/dw|`` per element.

    Computed on a deep copy in eval mode (no running statistics change, deterministic).
    """
    if (
        not isinstance(data, (tuple, list))
        or len(data) != 2
        or not all(isinstance(t, torch.Tensor) for t in data)
        or len(data[0]) != len(data[1])
        or len(data[0]) == 0
    ):
        raise ValueError(
            "taylor importance needs data=(x, y): two tensors with the same, nonzero number "
            "of samples"
        )
    x, y = data
    net = copy.deepcopy(model).eval()
    loss_fn = loss_fn or nn.functional.cross_entropy
    acc = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for b in range(min(max_batches, math.ceil(len(x) / batch_size))):
        xb, yb = x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]
        net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn(net(xb), yb)
            loss.backward()
        for n, p in net.named_parameters():
            if p.grad is not None:
                acc[n] += (p.detach() * p.grad).abs()
    return acc


def _element_scores(
    name: str, param: torch.Tensor, criterion: str, taylor: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    """Per-element importance of one parameter tensor (``random`` is handled elsewhere)."""
    w = param.detach().float()
    if criterion == "l2":
        return w * w
    if criterion == "taylor":
        assert taylor is not None
        return taylor[name].float()
    return w.abs()


# ------------------------------------------------------------------ the space
class PruningSpace:
    """The ordered prunable entries of one model, with their ranking and features.

    Build with :meth:`from_model`; apply a policy (one ratio per entry) with
    :meth:`apply`. A space is tied to the architecture it was built from: ``apply``
    accepts that model (or any model with the same layer names and shapes) and never
    modifies it.

    The constructor is internal (its ``entries`` are built by :meth:`from_model`):
    ``granularity`` is ``"channel"`` or ``"weight"``, ``importance`` the ranking
    criterion, ``round_to`` the multiple kept channel counts are rounded to and
    ``signature`` the layer shapes that :meth:`apply` accepts.
    """

    def __init__(
        self, granularity: str, importance: str, round_to: int, entries: list[_Entry],
        signature: dict[str, tuple[int, ...]],
    ):
        self.granularity = granularity
        self.importance = importance
        self.round_to = round_to
        self._items = entries
        self._signature = signature
        self.entries: tuple[LayerEntry, ...] = tuple(e.entry for e in entries)
        self._prunable = np.array([e.prunable for e in self.entries], dtype=np.int64)
        self._min_keep = np.array([e.min_keep for e in self.entries], dtype=np.int64)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_input: ExampleInput,
        granularity: str = "channel",
        importance: str = DEFAULT_IMPORTANCE,
        round_to: int = 1,
        data: tuple[torch.Tensor, torch.Tensor] | None = None,
        ignored_layers: Sequence[nn.Module | str] | None = None,
        seed: int = 0,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 64,
        taylor_batches: int = 4,
    ) -> PruningSpace:
        """Analyse ``model`` (never modified) and rank its channels or weights once.

        ``example_input``: a batch (its first sample is used for tracing and MACs).
        ``importance``: ``l2`` (default) / ``l1`` (magnitude; for channel groups
        Torch-Pruning's ``GroupMagnitudeImportance`` with ``p`` = 2 / 1: each channel's
        ``|w|^p`` over every coupled layer, averaged over the layers and divided by the
        group's mean), ``random`` (seeded by ``seed``), ``taylor`` (``|w * dL/dw|``
        summed over up to ``taylor_batches`` batches of ``batch_size`` from ``data=(x, y)``
        with ``loss_fn``, cross-entropy by default), ``bn_scale`` (channel only: ``|gamma|``
        of the norm layers in the group; groups without a norm layer use ``l1``).
        ``round_to``: kept channel counts are rounded up to a multiple of it, and every
        group keeps at least ``max(1, round_to)`` channels. ``ignored_layers`` (modules or
        names): layers whose output channels must not be pruned (channel), or whose
        weights must not be pruned (weight).

        Raises ``ValueError`` for unknown options, non-finite weights, missing taylor
        data, ``bn_scale`` with weight granularity, and models with nothing to prune.
        """
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
            )
        if importance not in IMPORTANCES:
            raise ValueError(
                f"unknown importance {importance!r}; expected one of {', '.join(IMPORTANCES)}"
            )
        if importance == "bn_scale" and granularity == "weight":
            raise ValueError(
                "importance 'bn_scale' ranks channels by batch-norm scales and only applies to "
                "granularity='channel'; use l1, l2, random or taylor for weight pruning"
            )
        if importance == "taylor" and data is None:
            raise ValueError(
                "importance 'taylor' needs data=(x, y): a few batches of inputs and labels "
                "to compute |w * gradient|"
            )
        if not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"expected an nn.Module, got {type(model).__name__}")
        _check_finite(model)
        ignored = _resolve_ignored(model, ignored_layers)
        x1 = example_input[:1] if isinstance(example_input, torch.Tensor) else tuple(
            t[:1] for t in example_input
        )
        taylor = None
        if importance == "taylor":
            assert data is not None
            taylor = _taylor_scores(model, data, loss_fn, batch_size, taylor_batches)
        rng = np.random.default_rng(seed)
        macs = layer_macs(model, x1)
        if granularity == "weight":
            items = _weight_entries(model, macs, importance, taylor, rng, ignored)
        else:
            items = _channel_entries(model, x1, macs, importance, taylor, rng, ignored, round_to)
        signature = {
            n: tuple(m.weight.shape)
            for n, m in model.named_modules()
            if isinstance(m, (_CONV, nn.Linear, *_NORMS)) and getattr(m, "weight", None) is not None
        }
        space = cls(granularity, importance, round_to, items, signature)
        if granularity == "channel":
            space = space._validated(model, x1)
        return space

    def _validated(self, model: nn.Module, x1: ExampleInput) -> PruningSpace:
        """Apply the most aggressive policy once; drop groups that break the model.

        Torch-Pruning's graph covers the common layers, but exotic forward code can
        couple channels in ways it cannot see. Groups whose pruning alone makes the
        model fail or change its output shape are removed with a warning.
        """
        ref = _output_shapes(model, x1)
        if _runs(self.apply(model, self.max_policy()), x1, ref):
            return self
        keep: list[_Entry] = []
        for i, item in enumerate(self._items):
            policy = np.zeros(len(self))
            policy[i] = item.entry.max_ratio
            if _runs(self.apply(model, policy), x1, ref):
                keep.append(item)
            else:
                warnings.warn(
                    f"channel group at {item.entry.name!r} cannot be pruned safely (the pruned "
                    "model fails or changes its output); it is left out of the space",
                    stacklevel=3,
                )
        if not keep:
            raise ValueError(_nothing_prunable(model, "channel"))
        items = [_renumber(it, i) for i, it in enumerate(keep)]
        space = PruningSpace(self.granularity, self.importance, self.round_to, items,
                             self._signature)
        if not _runs(space.apply(model, space.max_policy()), x1, ref):
            raise ValueError(
                "the channel groups of this model cannot be pruned together safely; pass "
                "ignored_layers to exclude the layers involved"
            )
        return space

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LayerEntry]:
        return iter(self.entries)

    def __repr__(self) -> str:
        return (
            f"PruningSpace(granularity={self.granularity!r}, importance={self.importance!r}, "
            f"entries={len(self)})"
        )

    def global_scores(self) -> list[np.ndarray]:
        """Per entry, the importance of each channel (weight) on a scale shared by all entries.

        For weight entries, the element importance itself (``|w|`` for l1, as in global
        magnitude pruning). For channel groups under ``l1``/``l2``, Torch-Pruning's
        mean-normalised group importance (what its global pruning thresholds); under
        ``taylor``/``random``/``bn_scale``, the mean per-weight importance of the
        channel's output weights, averaged over the layers producing it (mean ``|gamma|``
        for ``bn_scale``, as in network slimming). Lower is pruned first; a single
        threshold over all entries gives the "global" baseline's policy.
        """
        out = []
        for item in self._items:
            assert item.global_scores is not None
            out.append(item.global_scores.copy())
        return out

    def max_policy(self) -> np.ndarray:
        """The most aggressive policy: every entry at its ``max_ratio``."""
        return np.array([e.max_ratio for e in self.entries], dtype=np.float64)

    def features(self) -> np.ndarray:
        """Static per-entry features, shape ``(len(space), 8)``, each column in ``[0, 1]``.

        Columns (:data:`FEATURE_NAMES`): index ``t / (T - 1)``, kind code
        ``KINDS.index(kind) / (len(KINDS) - 1)``, then in width, out width, kernel,
        stride, params and MACs, each min-max normalised over the entries (a constant
        column is 0), as in AMC's layer embedding.
        """
        t = len(self)
        raw = np.array(
            [[e.in_width, e.out_width, e.kernel, e.stride, e.params, e.macs]
             for e in self.entries],
            dtype=np.float64,
        ).reshape(t, 6)
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        norm = (raw - lo) / span
        index = np.arange(t, dtype=np.float64) / max(1, t - 1)
        kind = np.array([KINDS.index(e.kind) for e in self.entries], dtype=np.float64)
        kind /= len(KINDS) - 1
        return np.column_stack([index, kind, norm]).astype(np.float32)

    def check_policy(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """``policy`` as a float array, after checking its length and range.

        Raises ``ValueError`` naming the offending entry: one ratio in ``[0, 1)`` per entry.
        """
        try:
            p = np.asarray(policy, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"policy must be a sequence of numbers, got {policy!r}") from None
        if p.ndim != 1 or p.shape[0] != len(self):
            raise ValueError(
                f"policy has shape {p.shape} but the space has {len(self)} entries; give one "
                "prune ratio in [0, 1) per entry, in space.entries order"
            )
        bad = np.flatnonzero(~np.isfinite(p) | (p < 0) | (p >= 1))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"policy[{i}] = {p[i]!r} (entry {self.entries[i].name!r}) is outside [0, 1): "
                "a prune ratio is the fraction of the entry's channels or weights removed"
            )
        return p

    def removed(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """How many channels (weights) each entry loses under ``policy``.

        ``floor(ratio * prunable)``, capped so that ``min_keep`` stay; with
        ``round_to > 1`` the kept count is rounded up to a multiple of ``round_to``.
        """
        p = self.check_policy(policy)
        n = self._prunable
        k = np.minimum(np.floor(p * n + _EPS).astype(np.int64), n - self._min_keep)
        if self.granularity == "channel" and self.round_to > 1:
            kept = np.minimum(-(-(n - k) // self.round_to) * self.round_to, n)
            k = n - kept
        return k

    def kept(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """Channels (weights) each entry keeps under ``policy``."""
        return self._prunable - self.removed(policy)

    # ---------------------------------------------------------------- applying
    def _check_model(self, model: nn.Module) -> dict[str, nn.Module]:
        modules = dict(model.named_modules())
        for name, shape in self._signature.items():
            m = modules.get(name)
            w = getattr(m, "weight", None) if m is not None else None
            if w is None or tuple(w.shape) != shape:
                got = "missing" if w is None else tuple(w.shape)
                raise ValueError(
                    f"model does not match this pruning space: layer {name!r} should have "
                    f"weight shape {shape}, got {got}; build the space from this model"
                )
        return modules

    def apply(self, model: nn.Module, policy: Sequence[float] | np.ndarray) -> nn.Module:
        """A pruned deep copy of ``model``; ``model`` itself is never modified.

        Channel granularity removes ``removed(policy)[i]`` lowest-importance channels of
        each group from every coupled layer; weight granularity zeroes the
        lowest-importance weights of each tensor.
        """
        counts = self.removed(policy)
        self._check_model(model)
        new = _copy_sharing_tensors(model)
        if self.granularity == "weight":
            _unshare_tensors(new, model)
            params = dict(new.named_parameters(remove_duplicate=False))
            with torch.no_grad():
                for item, k in zip(self._items, counts):
                    if k <= 0:
                        continue
                    assert item.weight is not None
                    w = params[item.weight.param_name]
                    flat = w.detach().reshape(-1).clone()
                    flat[item.weight.order[:k]] = 0
                    w.copy_(flat.view_as(w))
            return new
        plan: dict[tuple[str, Any], tuple[_Op, list[np.ndarray]]] = {}
        for item, k in zip(self._items, counts):
            if k <= 0:
                continue
            drop = np.zeros(item.entry.prunable, dtype=bool)
            drop[item.order[:k]] = True
            for op in item.ops:
                idx = op.idxs[drop[op.root]]
                if idx.size == 0:
                    continue
                key = (op.target, getattr(op.handler, "__func__", op.handler))
                if key in plan:
                    plan[key][1].append(idx)
                else:
                    plan[key] = (op, [idx])
        modules = dict(new.named_modules())
        for (target, _), (op, chunks) in plan.items():
            idxs = np.unique(np.concatenate(chunks)).tolist()
            pruner = getattr(op.handler, "__self__", None)
            if pruner is not None and hasattr(pruner, "pruning_dim"):
                pruner.pruning_dim = op.pruning_dim
            if op.is_param:
                parent_name, _, attr = target.rpartition(".")
                parent = modules[parent_name]
                setattr(parent, attr, op.handler(getattr(parent, attr), idxs))
            else:
                op.handler(modules[target], idxs)
        _unshare_tensors(new, model)
        return new

    def describe(
        self, model: nn.Module, policy: Sequence[float] | np.ndarray
    ) -> list[dict[str, Any]]:
        """Per entry: name, kind, requested ratio, and width (channel) or nonzero weight
        count (weight) before and after applying ``policy`` to ``model`` (JSON-ready)."""
        p = self.check_policy(policy)
        counts = self.removed(p)
        out: list[dict[str, Any]] = []
        params = dict(model.named_parameters()) if self.granularity == "weight" else {}
        for item, r, k in zip(self._items, p, counts):
            e = item.entry
            row: dict[str, Any] = {"index": e.index, "name": e.name, "kind": e.kind,
                                   "ratio": float(r)}
            if self.granularity == "channel":
                row.update(unit="channels", before=int(e.prunable),
                           after=int(e.prunable - k), modules=list(e.modules))
            else:
                assert item.weight is not None
                flat = params[item.weight.param_name].detach().reshape(-1)
                before = int(torch.count_nonzero(flat))
                lost = int(torch.count_nonzero(flat[item.weight.order[:k]])) if k else 0
                row.update(unit="nonzero weights", before=before, after=before - lost,
                           numel=int(e.prunable), param=item.weight.param_name)
            out.append(row)
        return out


# ------------------------------------------------------------------ copying
def _copy_sharing_tensors(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree whose parameters and buffers are still shared.

    Pruning replaces most tensors with sliced new ones, so copying them first would be
    wasted work; :func:`_unshare_tensors` then copies whatever is still shared.
    """
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        memo[id(t)] = t
    return copy.deepcopy(model, memo)


def _unshare_tensors(new: nn.Module, original: nn.Module) -> None:
    """Replace every tensor ``new`` still shares with ``original`` by a copy.

    Tensors shared between modules stay shared among themselves (one copy each), as
    with ``copy.deepcopy``.
    """
    originals = {id(t) for t in list(original.parameters()) + list(original.buffers())}
    copies: dict[int, Any] = {}
    for m in new.modules():
        for store in (m._parameters, m._buffers):
            for key, t in store.items():
                if t is None or id(t) not in originals:
                    continue
                if id(t) not in copies:
                    copies[id(t)] = copy.deepcopy(t)
                store[key] = copies[id(t)]


# --------------------------------------------------------------- entry builders
def _nothing_prunable(model: nn.Module, granularity: str) -> str:
    what = (
        "no Conv/Linear layer whose output channels can be removed without changing the "
        "model's output (the classifier's outputs are never pruned)"
        if granularity == "channel"
        else "no Conv/Linear weight tensor with more than one entry"
    )
    return f"nothing to prune in {type(model).__name__} at granularity {granularity!r}: {what}"


def _renumber(item: _Entry, index: int) -> _Entry:
    e = item.entry
    entry = LayerEntry(**{**e.__dict__, "index": index})
    return _Entry(entry, item.order, item.ops, item.weight, item.global_scores)


def _output_shapes(model: nn.Module, x1: ExampleInput) -> list[tuple[int, ...]]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x1) if isinstance(x1, torch.Tensor) else model(*x1)
    finally:
        for m, f in flags:
            m.training = f
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]


def _runs(model: nn.Module, x1: ExampleInput, ref: list[tuple[int, ...]]) -> bool:
    try:
        return _output_shapes(model, x1) == ref
    except Exception:  # any failure means this pruning breaks the model
        return False


def _weight_entries(
    model: nn.Module,
    macs: dict[str, int],
    importance: str,
    taylor: dict[str, torch.Tensor] | None,
    rng: np.random.Generator,
    ignored: set[str],
) -> list[_Entry]:
    items: list[_Entry] = []
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not isinstance(m, (_CONV, nn.Linear)) or id(m) in seen or name in ignored:
            continue
        seen.add(id(m))
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.numel() < 2 or name not in macs:
            continue
        if id(w) in seen:
            continue  # a weight tied to an earlier layer's is one tensor, one entry
        seen.add(id(w))
        pname = f"{name}.weight" if name else "weight"
        if importance == "random":
            score = torch.from_numpy(rng.random(w.numel()))
        else:
            score = _element_scores(pname, w, importance, taylor).reshape(-1)
        order = torch.argsort(score, stable=True)
        n = w.numel()
        cin, cout, kernel, stride = _geometry(m)
        entry = LayerEntry(
            index=len(items), name=name, kind=_kind(m), in_width=cin, out_width=cout,
            kernel=kernel, stride=stride, params=n, macs=int(macs.get(name, 0)), prunable=n,
            min_keep=1, max_ratio=(n - 1) / n, modules=(name,), param_name=pname,
        )
        items.append(_Entry(entry, order.numpy(), weight=_WeightPlan(pname, order),
                            global_scores=score.float().numpy()))
    if not items:
        raise ValueError(_nothing_prunable(model, "weight"))
    return items


def _output_producers(dg: tp.DependencyGraph) -> set[nn.Module]:
    """Conv/Linear layers whose output channels are the model's output channels.

    Walks back from every graph node without consumers (the outputs) through
    channel-preserving nodes (norms, activations, pooling, reshapes, additions,
    concatenations) and stops at the first Conv/Linear on each path.
    """
    producers: set[nn.Module] = set()
    stack = [n for n in dg.module2node.values() if not n.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, (_CONV, nn.Linear)):
            producers.add(node.module)
            continue
        stack.extend(node.inputs)
    return producers


def _channel_entries(
    model: nn.Module,
    x1: ExampleInput,
    macs: dict[str, int],
    importance: str,
    taylor: dict[str, torch.Tensor] | None,
    rng: np.random.Generator,
    ignored: set[str],
    round_to: int,
) -> list[_Entry]:
    # Tracing runs one forward pass with temporary hooks and switches modules to eval
    # mode; the modules' own training flags are restored afterwards, so the user's
    # model is left as it was. The graph only reads the model.
    work = model
    name_of = {m: n for n, m in work.named_modules()}
    order_of = {n: i for i, n in enumerate(name_of.values())}
    flags = [(m, m.training) for m in work.modules()]
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=x1, verbose=False)
    finally:
        for m, flag in flags:
            m.training = flag
    protected = _output_producers(dg)
    protected |= {m for m, n in name_of.items() if n in ignored}
    bad_convs = {m for m in name_of if _kind(m) == "grouped"}
    modules = dict(work.named_modules())
    score_cache: dict[tuple[str, int], np.ndarray] = {}
    groups = dg.get_all_groups(ignored_layers=list(protected), root_module_types=[_CONV, nn.Linear])

    items: list[tuple[int, _Entry]] = []
    any_norm = False
    for group in groups:
        ops: list[_Op] = []
        producers: list[nn.Module] = []
        out_layers: list[nn.Module] = []
        touched: list[str] = []
        usable = True
        for it in group.items:
            dep = it.dep
            target = dep.target.module
            handler = dep.handler
            is_out = getattr(handler, "__name__", "") == "prune_out_channels"
            if isinstance(target, nn.Parameter):
                pname = dg._param_to_name.get(target)
                if pname is None:
                    usable = False
                    break
                ops.append(_Op(pname, handler, dep.target.pruning_dim,
                               np.asarray(it.idxs, dtype=np.int64),
                               np.asarray(it.root_idxs, dtype=np.int64), is_param=True))
                continue
            if target not in name_of:
                continue  # torch-pruning's placeholder ops (add, cat, reshape, ...)
            if target in bad_convs or target in protected and is_out:
                usable = False
                break
            name = name_of[target]
            ops.append(_Op(name, handler, dep.target.pruning_dim,
                           np.asarray(it.idxs, dtype=np.int64),
                           np.asarray(it.root_idxs, dtype=np.int64),
                           dim="out" if is_out else "in"))
            if name not in touched:
                touched.append(name)
            if is_out:
                if target not in out_layers:
                    out_layers.append(target)
                if isinstance(target, (_CONV, nn.Linear)) and target not in producers:
                    producers.append(target)
        if not usable or not producers:
            continue
        root = group.items[0].dep.target.module
        n = int(dg.get_out_channels(root))
        min_keep = min(n, max(1, round_to))
        if n - min_keep <= 0:
            continue
        producers.sort(key=lambda m: order_of[name_of[m]])
        main = next((m for m in producers if _kind(m) != "depthwise"), producers[0])
        scores, has_norm, shared = _group_scores(ops, n, importance, taylor, rng, modules,
                                                 score_cache)
        any_norm |= has_norm
        if importance in _TP_MAGNITUDE:
            group_imp = _tp_group_importance(group, importance, n)
            if group_imp is not None:
                scores = shared = group_imp
        cin, cout, kernel, stride = _geometry(main)
        kind = "depthwise" if any(_kind(m) == "depthwise" for m in producers) else _kind(main)
        entry = LayerEntry(
            index=0, name=name_of[main], kind=kind, in_width=cin, out_width=cout,
            kernel=kernel, stride=stride,
            params=int(sum(p.numel() for m in out_layers for p in m.parameters(recurse=False))),
            macs=int(sum(macs.get(name_of[m], 0) for m in producers)),
            prunable=n, min_keep=min_keep, max_ratio=(n - min_keep) / n,
            modules=tuple(touched),
        )
        order = np.argsort(scores, kind="stable")
        items.append((order_of[name_of[main]], _Entry(entry, order, ops, global_scores=shared)))
    if importance == "bn_scale" and items and not any_norm:
        raise ValueError(
            "importance 'bn_scale' needs normalisation layers (BatchNorm/GroupNorm/LayerNorm) "
            "after the prunable layers, and this model has none; use l1, l2, random or taylor"
        )
    if not items:
        raise ValueError(_nothing_prunable(model, "channel"))
    items.sort(key=lambda t: t[0])
    return [_renumber(it, i) for i, (_, it) in enumerate(items)]


#: Magnitude importances that channel groups take from Torch-Pruning (the norm's ``p``).
_TP_MAGNITUDE = {"l1": 1, "l2": 2}


def _tp_group_importance(group: Any, importance: str, n: int) -> np.ndarray | None:
    """Torch-Pruning's ``GroupMagnitudeImportance`` of a group's ``n`` root channels.

    Per coupled layer, the channel's slice's ``|w|^p`` summed (``p`` = 1 for ``l1``, 2
    for ``l2``, over conv/linear/norm weights, input and output slices alike), averaged
    over the group's layers and divided by the group's mean: the ranking Torch-Pruning's
    own pruners use, and, being mean-normalised, comparable across groups as its global
    pruning compares them. Ranking channels this way instead of by our per-layer-rescaled
    sums kept 3 accuracy points on ResNet-20 (docs/METHODS.md). ``None`` when the
    library returns nothing usable for this group (our own scores are used then).
    """
    imp = tp.importance.GroupMagnitudeImportance(p=_TP_MAGNITUDE[importance])
    with torch.no_grad():
        out = imp(group)
    if out is None or out.numel() != n:
        return None
    vals = out.detach().double().cpu().numpy()
    return vals if np.all(np.isfinite(vals)) else None


def _group_scores(
    ops: list[_Op],
    n: int,
    importance: str,
    taylor: dict[str, torch.Tensor] | None,
    rng: np.random.Generator,
    modules: dict[str, nn.Module],
    cache: dict[tuple[str, int], np.ndarray],
) -> tuple[np.ndarray, bool, np.ndarray]:
    """Importance of each root channel of a group, aggregated over its coupled layers.

    Ranking score: each layer's per-channel score (the norm of the weight slice that the
    channel owns, or the summed Taylor score) is summed per root channel, rescaled to
    mean 1 and added up, so that a wide layer does not drown the others. ``cache`` keeps
    each layer's per-channel vector so that shared layers are reduced once.

    Shared-scale score (for global thresholds across groups): the channel's mean
    per-weight score over the layers that *produce* it (its output weights), averaged
    over those layers; for ``bn_scale``, its mean ``|gamma|``.

    Returns the ranking scores, whether a norm layer was found, and the shared-scale
    scores.
    """
    if importance == "random":
        r = rng.random(n)
        return r, False, r
    crit = "l1" if importance == "bn_scale" else importance
    total = np.zeros(n, dtype=np.float64)
    norm_total = np.zeros(n, dtype=np.float64)
    shared = np.zeros(n, dtype=np.float64)
    shared_n = np.zeros(n, dtype=np.float64)
    norm_shared = np.zeros(n, dtype=np.float64)
    norm_n = np.zeros(n, dtype=np.float64)
    has_norm = False
    for op in ops:
        if op.is_param:
            continue
        m = modules[op.target]
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor):
            continue
        is_norm = isinstance(m, _NORMS)
        if isinstance(m, _CONV):
            dim = 0 if op.dim == "out" else 1
            if m.transposed:
                dim = 1 - dim
            if _kind(m) == "depthwise":
                dim = 0
        elif isinstance(m, nn.Linear):
            dim = 0 if op.dim == "out" else 1
        elif is_norm and w.dim() == 1:
            dim = 0
        else:
            continue
        key = (op.target, dim)
        if key not in cache:
            s = _element_scores(f"{op.target}.weight", w, crit, taylor)
            others = [d for d in range(s.dim()) if d != dim]
            cache[key] = (s.sum(dim=others) if others else s).double().numpy()
        per = cache[key]
        agg = np.zeros(n, dtype=np.float64)
        np.add.at(agg, op.root, per[op.idxs])
        if op.dim == "out":
            # per-weight mean of the channel's output slice, on the layer's own scale
            slice_size = w.numel() / w.shape[dim]
            np.add.at(norm_shared if is_norm else shared, op.root, per[op.idxs] / slice_size)
            np.add.at(norm_n if is_norm else shared_n, op.root, 1.0)
        mean = agg.mean()
        if mean > 0:
            agg /= mean
        total += agg
        if is_norm:
            has_norm = True
            norm_total += agg
    if importance == "bn_scale" and has_norm:
        return norm_total, True, norm_shared / np.maximum(norm_n, 1.0)
    return total, has_norm, shared / np.maximum(shared_n, 1.0)
