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

    Channels that fall in equal groups (a grouped convolution's groups, a GroupNorm's
    groups, an ``nn.MultiheadAttention``'s heads) are removed one position per group, the
    same position in each, so every group keeps the same width; a fused ``qkv``
    projection split by ``torch.unbind`` (timm's attention) loses whole heads, and its
    module's ``num_heads`` follows. Groups whose channels pass through a reshape are
    checked numerically once (pruned must equal original with the removed channels read
    as zeros), so a mapping the graph gets wrong (a channel shuffle) is left out with a
    warning. :attr:`PruningSpace.left_out` lists every layer no entry prunes and why.

``granularity="weight"``
    One entry per Conv/Linear weight tensor and ``nn.MultiheadAttention`` projection
    matrix (the classifier's included: zeroing weights changes no shape). Applying a
    policy zeroes the lowest-importance fraction of each tensor in a deep copy, a plain
    module without masks or hooks.

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
import dataclasses
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
    "LeftOut",
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
#: The attribute that says how many heads an attention module (timm's layout) has.
_HEADS_ATTR = "num_heads"


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

    ``unit`` is how many channels are removed together and ``unit_kind`` what they
    are: ``"channel"`` (one at a time); ``"grouped"`` (the channels fall in ``unit``
    equal groups, of a grouped convolution, a GroupNorm or the heads of an
    ``nn.MultiheadAttention``, and one channel position is removed from every group at
    once, so the groups stay equal); ``"head"`` (whole attention heads of a fused
    ``qkv`` projection: ``unit`` channels, a head's query, key and value slices). Kept
    counts are multiples of ``unit``.
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
    unit: int = 1
    unit_kind: str = "channel"


@dataclass(frozen=True)
class LeftOut:
    """A layer (or parameter) that no entry of a space prunes, and why.

    ``name`` is the module (or parameter) name, ``type`` its class name and ``reason``
    one sentence saying why it is left out: the classifier, a user's
    ``ignored_layers``, a layer type Torch-Pruning has no pruning function for, a
    grouping that cannot be kept valid, or a pruning that breaks the model's forward
    pass.
    """

    name: str
    type: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """``{"name", "type", "reason"}`` (JSON-ready)."""
        return {"name": self.name, "type": self.type, "reason": self.reason}


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
    heads: tuple[str, int] | None = None  # (attention module, its num_heads) for head entries
    verify: bool = False  # check against zeroed inputs: the channels pass through a reshape


# ------------------------------------------------------------------ small helpers
def _kind(m: nn.Module) -> str:
    if isinstance(m, (nn.Linear, nn.MultiheadAttention)):
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
    ``signature`` the layer shapes that :meth:`apply` accepts. ``left_out`` lists the
    layers no entry prunes, with the reason (:attr:`left_out`).
    """

    def __init__(
        self, granularity: str, importance: str, round_to: int, entries: list[_Entry],
        signature: dict[str, tuple[int, ...]], left_out: Sequence[LeftOut] = (),
    ):
        self.granularity = granularity
        self.importance = importance
        self.round_to = round_to
        self._items = entries
        self._signature = signature
        self.entries: tuple[LayerEntry, ...] = tuple(e.entry for e in entries)
        #: Every layer (or parameter) no entry prunes, and why: the classifier, ignored
        #: layers, layer types without a pruning function, groupings that cannot stay
        #: valid, groups whose pruning breaks the model.
        self.left_out: tuple[LeftOut, ...] = tuple(left_out)
        self._prunable = np.array([e.prunable for e in self.entries], dtype=np.int64)
        self._min_keep = np.array([e.min_keep for e in self.entries], dtype=np.int64)
        # kept counts are multiples of this: the entry's unit and, for channels, round_to
        self._multiple = np.array(
            [math.lcm(e.unit, round_to) if granularity == "channel" else 1
             for e in self.entries], dtype=np.int64)

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
        reasons: dict[str, str] = {}
        if granularity == "weight":
            items = _weight_entries(model, macs, importance, taylor, rng, ignored, reasons)
        else:
            items = _channel_entries(model, x1, macs, importance, taylor, rng, ignored,
                                     round_to, reasons)
        signature = {
            n: tuple(m.weight.shape)
            for n, m in model.named_modules()
            if isinstance(m, (_CONV, nn.Linear, *_NORMS)) and getattr(m, "weight", None) is not None
        }
        space = cls(granularity, importance, round_to, items, signature)
        if granularity == "channel":
            space = space._validated(model, x1, reasons)
        space.left_out = tuple(_left_out(model, space._items, granularity, reasons))
        return space

    def _validated(self, model: nn.Module, x1: ExampleInput,
                   reasons: dict[str, str]) -> PruningSpace:
        """Drop the groups whose pruning breaks the model, with a warning for each.

        Torch-Pruning's graph covers the common layers, but exotic forward code can
        couple channels in ways it cannot see. A group is removed when pruning it alone
        makes the model fail or change its output shape (checked only if the most
        aggressive policy fails), or, for a group whose channels pass through a reshape
        (where the graph's index mapping can be wrong, as for a channel shuffle), when
        the pruned model computes something else than the original with the removed
        channels' contributions zeroed. The layers of a removed group get that reason in
        ``reasons``.
        """
        ref = _output_shapes(model, x1)
        all_run = _runs(self.apply(model, self.max_policy()), x1, ref)
        keep: list[_Entry] = []
        for i, item in enumerate(self._items):
            why = None
            if not all_run:
                policy = np.zeros(len(self))
                policy[i] = item.entry.max_ratio
                if not _runs(self.apply(model, policy), x1, ref):
                    why = ("makes the model fail or change its output shape (its forward code "
                           "couples channels in a way the dependency graph cannot see)")
            if why is None and item.verify and not self._same_as_zeroed(model, x1, i):
                why = ("changes what the remaining channels compute (they pass through a "
                       "reshape, such as a channel shuffle, that the dependency graph maps "
                       "wrongly)")
            if why is None:
                keep.append(item)
                continue
            warnings.warn(
                f"channel group at {item.entry.name!r} cannot be pruned safely (the pruned "
                "model fails or changes its output); it is left out of the space",
                stacklevel=3,
            )
            for op in item.ops:
                if op.dim == "out" and not op.is_param:
                    reasons.setdefault(op.target, f"removing channels of the group at "
                                                  f"{item.entry.name!r} {why}")
        if len(keep) == len(self._items):
            return self
        if not keep:
            raise ValueError(_nothing_prunable(model, "channel", reasons))
        items = [_renumber(it, i) for i, it in enumerate(keep)]
        space = PruningSpace(self.granularity, self.importance, self.round_to, items,
                             self._signature)
        if not _runs(space.apply(model, space.max_policy()), x1, ref):
            raise ValueError(
                "the channel groups of this model cannot be pruned together safely; pass "
                "ignored_layers to exclude the layers involved"
            )
        return space

    def _same_as_zeroed(self, model: nn.Module, x1: ExampleInput, i: int) -> bool:
        """Whether removing half of entry ``i``'s units gives the output of the original
        model whose consumers of those channels read zeros instead (what removing them
        means), up to float rounding. ``True`` when a consumer is of a type this check
        cannot zero (nothing is claimed then)."""
        item = self._items[i]
        policy = np.zeros(len(self))
        policy[i] = min(0.5, item.entry.max_ratio)
        k = int(self.removed(policy)[i])
        if k == 0:
            policy[i] = item.entry.max_ratio
            k = int(self.removed(policy)[i])
        drop = np.zeros(item.entry.prunable, dtype=bool)
        drop[item.order[:k]] = True
        zeroed = copy.deepcopy(model)
        modules = dict(zeroed.named_modules())
        with torch.no_grad():
            for op in item.ops:
                if op.dim == "in" and not op.is_param:
                    if not _zero_inputs(modules[op.target], op.idxs[drop[op.root]]):
                        return True
        try:
            got = _outputs(self.apply(model, policy), x1)
        except Exception:  # any failure means this pruning breaks the model
            return False
        want = _outputs(zeroed, x1)
        if len(got) != len(want):
            return False
        for a, b in zip(got, want):
            scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale):
                return False
        return True

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

        ``floor(ratio * prunable)``, capped so that ``min_keep`` stay; the kept count is
        then rounded up to a multiple of the entry's ``unit`` (whole heads, the same
        channel positions in every group) and of ``round_to``.
        """
        p = self.check_policy(policy)
        n = self._prunable
        k = np.minimum(np.floor(p * n + _EPS).astype(np.int64), n - self._min_keep)
        m = self._multiple
        if bool((m > 1).any()):
            kept = np.minimum(-(-(n - k) // m) * m, n)
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
        for item, k in zip(self._items, counts):
            if item.heads is not None and k > 0:
                # whole heads left the fused qkv projection: the attention module reshapes
                # by its num_heads attribute, which must say how many remain
                owner, heads = item.heads
                setattr(modules[owner], _HEADS_ATTR, heads - int(k) // item.entry.unit)
        _unshare_tensors(new, model)
        return new

    def describe(
        self, model: nn.Module, policy: Sequence[float] | np.ndarray
    ) -> list[dict[str, Any]]:
        """Per entry: name, kind, requested ratio, and width (channel) or nonzero weight
        count (weight) before and after applying ``policy`` to ``model`` (JSON-ready);
        ``heads_before``/``heads_after`` for attention-head entries and ``groups`` for
        entries pruned evenly across channel groups."""
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
                if e.unit_kind == "head":
                    row.update(heads_before=int(e.prunable // e.unit),
                               heads_after=int((e.prunable - k) // e.unit))
                elif e.unit_kind == "grouped":
                    row.update(groups=int(e.unit))
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
def _nothing_prunable(model: nn.Module, granularity: str,
                      reasons: dict[str, str] | None = None) -> str:
    what = (
        "no Conv/Linear layer whose output channels can be removed without changing the "
        "model's output (the classifier's outputs are never pruned)"
        if granularity == "channel"
        else "no Conv/Linear weight tensor with more than one entry"
    )
    why = ""
    if reasons:
        shown = list(reasons.items())[:3]
        why = "; left out: " + "; ".join(f"{n!r} ({r})" for n, r in shown)
        if len(reasons) > 3:
            why += f"; and {len(reasons) - 3} more"
    return (f"nothing to prune in {type(model).__name__} at granularity {granularity!r}: "
            f"{what}{why}")


def _renumber(item: _Entry, index: int) -> _Entry:
    return dataclasses.replace(item, entry=dataclasses.replace(item.entry, index=index))


def _outputs(model: nn.Module, x1: ExampleInput) -> list[torch.Tensor]:
    """The output tensors of ``model`` on ``x1`` in eval mode (training flags restored)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x1) if isinstance(x1, torch.Tensor) else model(*x1)
    finally:
        for m, f in flags:
            m.training = f
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, torch.Tensor)]


def _output_shapes(model: nn.Module, x1: ExampleInput) -> list[tuple[int, ...]]:
    return [tuple(o.shape) for o in _outputs(model, x1)]


def _zero_inputs(m: nn.Module, idxs: np.ndarray) -> bool:
    """Zero the weights through which Conv/Linear layer ``m`` reads input channels
    ``idxs`` (in place); ``False`` for a layer type this cannot be done for."""
    if idxs.size == 0:
        return True
    if isinstance(m, nn.Linear):
        m.weight[:, torch.as_tensor(idxs)] = 0
        return True
    if not isinstance(m, _CONV):
        return False
    if m.transposed:  # weight (in, out / groups, ...): every input owns one slice
        m.weight[torch.as_tensor(idxs)] = 0
        return True
    per_group_in = m.in_channels // m.groups
    per_group_out = m.out_channels // m.groups
    for i in idxs.tolist():
        g = i // per_group_in
        m.weight[g * per_group_out:(g + 1) * per_group_out, i % per_group_in] = 0
    return True


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
    reasons: dict[str, str],
) -> list[_Entry]:
    """One entry per Conv/Linear weight tensor (and ``nn.MultiheadAttention`` projection).

    Layers that are skipped get a sentence in ``reasons``.
    """
    items: list[_Entry] = []
    seen: set[int] = set()
    attention = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}

    def add(name: str, m: nn.Module, pname: str, w: torch.Tensor) -> None:
        if id(w) in seen:
            return  # a weight tied to an earlier layer's is one tensor, one entry
        seen.add(id(w))
        if importance == "random":
            score = torch.from_numpy(rng.random(w.numel()))
        else:
            score = _element_scores(pname, w, importance, taylor).reshape(-1)
        order = torch.argsort(score, stable=True)
        n = w.numel()
        if isinstance(m, nn.MultiheadAttention):  # a query/key/value projection matrix
            cin, cout, kernel, stride = int(w.shape[1]), int(w.shape[0]), 1, 1
        else:
            cin, cout, kernel, stride = _geometry(m)
        entry = LayerEntry(
            index=len(items), name=name, kind=_kind(m), in_width=cin, out_width=cout,
            kernel=kernel, stride=stride, params=n, macs=int(macs.get(name, 0)), prunable=n,
            min_keep=1, max_ratio=(n - 1) / n, modules=(name,), param_name=pname,
        )
        items.append(_Entry(entry, order.numpy(), weight=_WeightPlan(pname, order),
                            global_scores=score.float().numpy()))

    for name, m in model.named_modules():
        if id(m) in seen:
            continue
        if isinstance(m, nn.MultiheadAttention):
            seen.add(id(m))
            if name in ignored:
                reasons.setdefault(name, "listed in ignored_layers")
                continue
            for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                w = getattr(m, attr, None)
                if isinstance(w, torch.Tensor) and w.numel() >= 2:
                    add(name, m, f"{name}.{attr}" if name else attr, w)
            continue
        if not isinstance(m, (_CONV, nn.Linear)):
            continue
        seen.add(id(m))
        if name in ignored:
            reasons.setdefault(name, "listed in ignored_layers")
            continue
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.numel() < 2:
            reasons.setdefault(name, "has a single weight")
            continue
        # an attention's output projection is run by its owner, not called as a module
        if name not in macs and name.rpartition(".")[0] not in attention:
            reasons.setdefault(name, "is not called in the model's forward pass")
            continue
        add(name, m, f"{name}.weight" if name else "weight", w)
    if not items:
        raise ValueError(_nothing_prunable(model, "weight", reasons))
    return items


#: Layers whose channels Torch-Pruning removes; anything else with parameters is a layer
#: type the dependency graph cannot prune.
_PRUNABLE_TYPES = (_CONV, nn.Linear, *_NORMS, nn.MultiheadAttention, nn.PReLU, nn.Embedding,
                   nn.LSTM)


def _left_out(model: nn.Module, items: list[_Entry], granularity: str,
              reasons: dict[str, str]) -> list[LeftOut]:
    """Every layer (or loose parameter) of ``model`` that no entry prunes, with the reason.

    Channel granularity: layers whose output channels no entry removes (a layer inside
    one whose outputs are removed, such as an attention's output projection, counts as
    pruned). Weight granularity: layers with a weight matrix that no entry zeroes
    (biases and normalisation scales are never weight-pruned, and are not listed).
    """
    covered: set[str] = set()
    for item in items:
        if granularity == "weight":
            covered.add(item.entry.name)
        else:
            covered.update(op.target for op in item.ops if op.dim == "out")

    def inside_covered(name: str) -> bool:
        return any(name == c or name.startswith(c + ".") for c in covered)

    def default(m: nn.Module) -> str:
        if isinstance(m, _PRUNABLE_TYPES):
            return ("no prunable channel group removes its outputs"
                    if granularity == "channel" else "is not a Conv/Linear/attention weight")
        return (f"rlprune has no pruning function for the layer type {type(m).__name__}, so its "
                "channels are not removed (the layers around it are pruned only where that "
                "leaves its inputs and outputs unchanged)")

    out: list[LeftOut] = []
    for name, m in model.named_modules():
        own = [(pn, p) for pn, p in m._parameters.items() if p is not None]
        if not own or inside_covered(name):
            continue
        if any((f"{name}.{pn}" if name else pn) in covered for pn, _ in own) and not any(
                True for _ in m.children()):
            continue  # a custom layer whose parameter the group slices
        if granularity == "weight" and not any(p.dim() >= 2 for _, p in own):
            continue
        is_layer = isinstance(m, nn.MultiheadAttention) or not any(True for _ in m.children())
        if is_layer:
            out.append(LeftOut(name, type(m).__name__, reasons.get(name, default(m))))
            continue
        for pn, p in own:  # loose parameters of a container (class token, position embedding)
            full = f"{name}.{pn}" if name else pn
            if full in covered or (granularity == "weight" and p.dim() < 2):
                continue
            out.append(LeftOut(full, "Parameter", reasons.get(
                full, "a parameter of a container module that no channel group reaches"
                if granularity == "channel" else "a parameter outside Conv/Linear layers")))
    return out


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
    reasons: dict[str, str],
) -> list[_Entry]:
    """One entry per channel group of Torch-Pruning's dependency graph that can be pruned.

    Groups whose layers split their channels into equal groups (grouped convolutions,
    GroupNorm, ``nn.MultiheadAttention`` heads) are pruned in units of one channel
    position per group; a fused ``qkv`` projection split by ``torch.unbind`` is pruned
    by whole heads. A group that cannot be pruned is skipped and ``reasons`` gets one
    sentence for each layer whose outputs it would have removed.
    """
    # Tracing runs one forward pass with temporary hooks and switches modules to eval
    # mode; the modules' own training flags are restored afterwards, so the user's
    # model is left as it was. The graph only reads the model.
    work = model
    name_of = {m: n for n, m in work.named_modules()}
    order_of = {n: i for i, n in enumerate(name_of.values())}
    flags = [(m, m.training) for m in work.modules()]
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # class tokens and position embeddings: Torch-Pruning prunes their last
            # dimension (the embedding), which is right for them, and says so at length
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=x1, verbose=False)
    finally:
        for m, flag in flags:
            m.training = flag
    outputs = _output_producers(dg)
    user_ignored = {m for m, n in name_of.items() if n in ignored}
    for m in outputs:
        reasons.setdefault(name_of[m], "produces the model's output, whose width must not "
                                       "change (the classifier's outputs are never pruned)")
    for m in user_ignored:
        reasons.setdefault(name_of[m], "listed in ignored_layers")
    protected = outputs | user_ignored
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
        unbinds: list[Any] = []
        reshaped = mixing = False
        why: str | None = None
        for it in group.items:
            dep = it.dep
            target = dep.target.module
            handler = dep.handler
            is_out = getattr(handler, "__name__", "") == "prune_out_channels"
            if isinstance(target, nn.Parameter):
                pname = dg._param_to_name.get(target)
                if pname is None:
                    why = ("its channels are coupled with a parameter the dependency graph "
                           "cannot name")
                    break
                ops.append(_Op(pname, handler, dep.target.pruning_dim,
                               np.asarray(it.idxs, dtype=np.int64),
                               np.asarray(it.root_idxs, dtype=np.int64), is_param=True))
                continue
            if target not in name_of:
                # torch-pruning's placeholder ops (add, cat, reshape, ...); an unbind
                # splits a fused attention projection into query, key and value
                if dep.target.type == tp.ops.OPTYPE.UNBIND and dep.target not in unbinds:
                    unbinds.append(dep.target)
                reshaped |= dep.target.type in _RESHAPES
                continue
            mixing |= is_out and isinstance(target, _MIXING)
            if target in protected and is_out:
                what = ("produces the model's output" if target in outputs
                        else "is listed in ignored_layers")
                why = f"its channels are coupled with those of {name_of[target]!r}, which {what}"
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
        if why is None and not producers:
            continue
        root = group.items[0].dep.target.module
        plan = why if why is not None else _removal_plan(
            dg, ops, unbinds, root, name_of.get(root, ""), modules, round_to)
        if isinstance(plan, str):
            _record_reason(group, name_of, protected, reasons, plan)
            continue
        units, heads, min_keep = plan
        n = int(dg.get_out_channels(root))
        producers.sort(key=lambda m: order_of[name_of[m]])
        main = next((m for m in producers if _kind(m) != "depthwise"), producers[0])
        scores, has_norm, shared = _group_scores(ops, n, importance, taylor, rng, modules,
                                                 score_cache)
        any_norm |= has_norm
        if importance in _TP_MAGNITUDE:
            group_imp = _tp_group_importance(group, importance, n)
            if group_imp is not None:
                scores = shared = group_imp
        # a unit (one channel position in every group, or a whole head) is ranked by the
        # mean score of its channels, as Torch-Pruning's pruners average over groups
        unit_order = np.argsort(scores[units].mean(axis=1), kind="stable")
        order = units[unit_order].reshape(-1)
        unit_shared = np.empty(n, dtype=np.float64)
        unit_shared[units] = shared[units].mean(axis=1, keepdims=True)
        cin, cout, kernel, stride = _geometry(main)
        kind = "depthwise" if any(_kind(m) == "depthwise" for m in producers) else _kind(main)
        unit = int(units.shape[1])
        entry = LayerEntry(
            index=0, name=name_of[main], kind=kind, in_width=cin, out_width=cout,
            kernel=kernel, stride=stride,
            params=int(sum(p.numel() for m in out_layers
                           for p in m.parameters(recurse=isinstance(m, nn.MultiheadAttention)))),
            macs=int(sum(macs.get(name_of[m], 0) for m in producers)),
            prunable=n, min_keep=min_keep, max_ratio=(n - min_keep) / n,
            modules=tuple(touched), unit=unit,
            unit_kind="head" if heads else "grouped" if unit > 1 else "channel",
        )
        items.append((order_of[name_of[main]],
                      _Entry(entry, order, ops, global_scores=unit_shared, heads=heads,
                             verify=reshaped and not mixing)))
    if importance == "bn_scale" and items and not any_norm:
        raise ValueError(
            "importance 'bn_scale' needs normalisation layers (BatchNorm/GroupNorm/LayerNorm) "
            "after the prunable layers, and this model has none; use l1, l2, random or taylor"
        )
    if not items:
        raise ValueError(_nothing_prunable(model, "channel", reasons))
    items.sort(key=lambda t: t[0])
    return [_renumber(it, i) for i, (_, it) in enumerate(items)]


#: Placeholder ops whose index mapping :meth:`PruningSpace._validated` checks numerically.
_RESHAPES = (tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND,
             tp.ops.OPTYPE.SLICE)
#: Layers that mix channels (normalise over them, attend across them): removing a channel
#: changes what the others compute, so a group with one cannot be checked against zeros.
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)


def _record_reason(group: Any, name_of: dict[nn.Module, str], protected: set[nn.Module],
                   reasons: dict[str, str], why: str) -> None:
    """Give ``why`` to every layer whose outputs the skipped ``group`` would remove."""
    for it in group.items:
        target = it.dep.target.module
        if isinstance(target, nn.Parameter):
            continue
        if (target in name_of and target not in protected
                and getattr(it.dep.handler, "__name__", "") == "prune_out_channels"):
            reasons.setdefault(name_of[target], why)


def _removal_plan(
    dg: tp.DependencyGraph, ops: list[_Op], unbinds: list[Any], root: Any, root_name: str,
    modules: dict[str, nn.Module], round_to: int,
) -> tuple[np.ndarray, tuple[str, int] | None, int] | str:
    """How a group rooted at ``root`` is pruned: ``(units, heads, min_keep)``, or the
    reason it cannot be.

    ``units`` (:func:`_head_units` or :func:`_group_units`) are the sets of root channels
    removed together, ``heads`` the attention module and head count of a whole-head
    group, ``min_keep`` the channels that always stay (one unit, rounded to
    ``round_to``).
    """
    n = int(dg.get_out_channels(root))
    heads: tuple[str, int] | None = None
    if unbinds:
        units, heads, why = _head_units(unbinds, root, root_name, modules, n)
    else:
        units, why = _group_units(dg, ops, modules, n)
    if units is None:
        return why or "its channels cannot be split into equal groups"
    why = _misaligned(dg, ops, modules, units, n)
    if why is not None:
        return why
    min_keep = min(n, math.lcm(units.shape[1], round_to))
    if n - min_keep <= 0:
        what = ("whole heads" if heads else "one channel per group" if units.shape[1] > 1
                else "at least one channel")
        return (f"its {n} channel(s) must all stay ({what}"
                + (f", rounded to round_to={round_to}" if round_to > 1 else "") + ")")
    return units, heads, min_keep


def _layer_groups(dg: tp.DependencyGraph, m: nn.Module, dim: str) -> int:
    """Into how many equal groups ``m`` splits its channels on side ``dim``.

    Torch-Pruning's own answer (a grouped conv's ``groups``, a GroupNorm's
    ``num_groups``), the heads of an ``nn.MultiheadAttention``, and 1 for a depthwise
    conv (whose inputs and outputs are one group of channels, removed together).
    """
    if isinstance(m, nn.MultiheadAttention):
        return int(m.num_heads)
    if tp.ops.module2type(m) == tp.ops.OPTYPE.DEPTHWISE_CONV:
        return 1
    pruner = dg.get_pruner_of_module(m)
    if pruner is None:
        return 1
    g = pruner.get_out_channel_groups(m) if dim == "out" else pruner.get_in_channel_groups(m)
    return max(1, int(g or 1))


def _group_units(dg: tp.DependencyGraph, ops: list[_Op], modules: dict[str, nn.Module],
                 n: int) -> tuple[np.ndarray | None, str | None]:
    """The removal units of a group of ``n`` root channels: ``(units, None)`` or
    ``(None, reason)``.

    ``units[p]`` holds the root channels removed together: one channel (no grouped
    layer), or channel ``p`` of each of the ``L`` equal blocks when the group's layers
    split their channels into groups (``L``: the least common multiple of their group
    counts), so that every group keeps the same width.
    """
    count = 1
    grouped: list[str] = []
    for op in ops:
        if op.is_param:
            continue
        g = _layer_groups(dg, modules[op.target], op.dim)
        if g > 1:
            count = math.lcm(count, g)
            grouped.append(op.target)
    if count == 1:
        return np.arange(n, dtype=np.int64)[:, None], None
    if n % count:
        return None, (f"its {n} channels do not split into {count} equal groups, which "
                      f"{', '.join(repr(t) for t in dict.fromkeys(grouped))} need")
    width = n // count
    units = np.arange(width, dtype=np.int64)[:, None] + width * np.arange(count)[None, :]
    return units, None


def _head_units(
    unbinds: list[Any], root: Any, root_name: str, modules: dict[str, nn.Module], n: int
) -> tuple[np.ndarray | None, tuple[str, int] | None, str | None]:
    """Whole-head units of a fused attention projection: ``(units, (owner, heads), None)``
    or ``(None, None, reason)``.

    The projection's ``n`` outputs are ``chunks`` blocks (query, key, value: the outputs
    of the ``torch.unbind``), each ``heads`` heads of equal width; the head count is the
    ``num_heads`` attribute of the module that owns the projection (timm's convention),
    which :meth:`PruningSpace.apply` lowers as heads are removed.
    """
    if len(unbinds) != 1 or not isinstance(root, nn.Linear):
        return None, None, ("its outputs are split by torch.unbind in a way rlprune does not "
                            "recognise as a fused query/key/value projection")
    chunks = len(unbinds[0].outputs)
    owner = root_name.rpartition(".")[0]
    heads = getattr(modules.get(owner), _HEADS_ATTR, None)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        return None, None, (f"it is an attention projection split into heads, but its module "
                            f"{owner!r} has no integer num_heads attribute that says how "
                            "many heads it has")
    if chunks < 1 or n % (chunks * heads):
        return None, None, (f"its {n} outputs do not split into {chunks} blocks of "
                            f"{heads} equal heads")
    block = n // chunks
    width = block // heads
    units = np.array([[c * block + h * width + d for c in range(chunks) for d in range(width)]
                      for h in range(heads)], dtype=np.int64)
    return units, (owner, heads), None


def _misaligned(dg: tp.DependencyGraph, ops: list[_Op], modules: dict[str, nn.Module],
                units: np.ndarray, n: int) -> str | None:
    """Why removing ``units`` would leave a grouped layer's groups unequal (or ``None``).

    Each unit, mapped to a grouped layer's own channel indices, must remove the same
    positions from every one of that layer's groups (Torch-Pruning's grouped-conv
    pruning functions slice on that assumption).
    """
    unit_of = np.full(n, -1, dtype=np.int64)
    unit_of[units.reshape(-1)] = np.repeat(np.arange(len(units)), units.shape[1])
    for op in ops:
        if op.is_param:
            continue
        m = modules[op.target]
        g = _layer_groups(dg, m, op.dim)
        if g == 1:
            continue
        width = int(dg.get_out_channels(m) if op.dim == "out" else dg.get_in_channels(m))
        if width % g:
            return f"{op.target!r} has {width} channels in {g} groups of unequal width"
        size = width // g
        of = unit_of[op.root]
        for u in range(len(units)):
            sel = np.unique(op.idxs[of == u])
            if sel.size and sel.size != g * np.unique(sel % size).size:
                return (f"its channels reach the {g} groups of {op.target!r} unevenly (a "
                        "concatenation or reshape before it): no removal keeps the groups "
                        "equal")
    return None


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
        if (isinstance(m, _CONV) and m.groups > 1 and op.idxs.size
                and int(op.idxs.max()) >= per.size):
            # a grouped conv's weight holds in_channels / groups inputs per filter: every
            # group reads its own inputs through the same slice positions
            per = np.tile(per, m.groups)
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
