"""What a model costs, and the budget it must fit.

A *cost* is any function of a model that returns a float: parameters, MACs, measured
CPU latency, or a black-box callable the user supplies. Costs are neither assumed
differentiable nor noise-free; the search only ever evaluates them.

Built-in costs (``list_costs()``):

========================  =========================================================
``params``                number of parameter entries (shared parameters once)
``nonzero_params``        number of nonzero parameter entries (weight pruning)
``macs``                  multiply-accumulates of one forward pass at batch 1
``flops``                 ``2 * macs`` (one multiply plus one add per MAC)
``latency_ms``            CPU latency of one forward pass, in milliseconds (fastest
                          of 20 timed windows: :func:`measure_latency_ms`)
``ort_latency_ms``        the same for the model exported to ONNX, run by ONNX Runtime
``memory_mb``             weights plus peak activations of one input, in MiB
``disk_mb``               size of ``torch.save(model.state_dict())``, in MiB
========================  =========================================================

Both latencies are measured at batch 1 with one thread. Other settings are costs of
their own, named in a budget as ``latency_b8_ms`` (batch 8), ``latency_t4_ms``
(4 threads), ``ort_latency_b8_t2_ms`` and so on (:data:`LATENCY_VARIANTS`); each
is registered the first time it is named. In Python,
``register_cost(name, latency_cost(batch_size=..., num_threads=...), noisy=True)``
does the same, and ``ort_latency_cost`` is the ONNX Runtime counterpart.

Every cost is called as ``cost(model, example_input)``; user callables that take only
the model are wrapped so that they can be used the same way. Register your own with
:func:`register_cost` (usable as a decorator, timm-style)::

    @register_cost("conv_channels")
    def conv_channels(model: nn.Module) -> float: ...

A :class:`Budget` is an ordered list of constraints ``cost <= limit``. Limits of the
*size* costs (params, nonzero_params, macs, flops, memory_mb, disk_mb) that are ``<= 1``
are fractions of the original model's value, larger ones are absolute; a ``%`` suffix
always means a fraction of the original. ``Budget.bind(original, example_input)``
resolves the limits once and returns a :class:`BoundBudget` whose ``ratios(model)`` is
the cheap ``value / limit`` vector the environment and the agents use (``<= 1`` holds).

This module sits left of :mod:`rlprune.space` in the architecture and must not import it.
"""

from __future__ import annotations

import inspect
import io
import math
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune.noise import MeasurementTape, NoiseRule, Spread, fingerprint

__all__ = [
    "BUDGET_SYNTAX",
    "ExampleInput",
    "Cost",
    "CostFn",
    "Constraint",
    "Budget",
    "BoundBudget",
    "BudgetInfeasibleError",
    "register_cost",
    "get_cost",
    "list_costs",
    "count_params",
    "count_nonzero",
    "count_nonzero_params",
    "count_macs",
    "count_flops",
    "layer_macs",
    "measure_latency_ms",
    "measure_ort_latency_ms",
    "latency_windows",
    "latency_cost",
    "ort_latency_cost",
    "LatencyMeter",
    "LATENCY_VARIANTS",
    "estimate_memory_mb",
    "disk_size_mb",
]

#: An example input: one tensor, or a tuple of tensors passed as positional arguments.
ExampleInput = torch.Tensor | Sequence[torch.Tensor]
#: What :func:`register_cost` accepts: ``fn(model)`` or ``fn(model, example_input)``.
CostFn = Callable[..., float]

_MIB = float(2**20)
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
BUDGET_SYNTAX = (
    "NAME<=NUMBER or NAME<=NUMBER%, comma-separated, e.g. 'params<=0.3,flops<=50%,latency_ms<=2'"
)


class BudgetInfeasibleError(ValueError):
    """The budget cannot be met even by the most aggressive pruning the space allows.

    ``message`` names each failing cost, its smallest reachable value and its limit;
    ``failures`` maps each failing constraint's name to ``(smallest reachable value,
    limit)`` so that callers can report or relax it programmatically.
    """

    def __init__(self, message: str, failures: Mapping[str, tuple[float, float]] | None = None):
        super().__init__(message)
        self.failures: dict[str, tuple[float, float]] = dict(failures or {})


# ------------------------------------------------------------------------ helpers
def _first_sample(x: ExampleInput) -> ExampleInput:
    """Batch 1 of an example input: costs are defined per sample."""
    if isinstance(x, torch.Tensor):
        return x[:1]
    return tuple(t[:1] for t in x)


def _forward(model: nn.Module, x: ExampleInput) -> Any:
    if isinstance(x, torch.Tensor):
        return model(x)
    return model(*x)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    Costs must not change the model they measure; eval mode also keeps batch norm
    from failing on a batch of one.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a (possibly nested) module input or output."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors(o)


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(obj))


# ------------------------------------------------------------- size-type costs
def count_params(model: nn.Module) -> float:
    """Number of parameter entries of ``model``; a parameter shared by several modules
    counts once."""
    return float(sum(p.numel() for p in model.parameters()))


def count_nonzero(model: nn.Module) -> float:
    """Number of nonzero parameter entries of ``model``: what weight (unstructured)
    pruning reduces."""
    with torch.no_grad():
        return float(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


count_nonzero_params = count_nonzero


def disk_size_mb(model: nn.Module) -> float:
    """Size in MiB of ``torch.save(model.state_dict())`` written to memory.

    Weight pruning leaves this unchanged (zeros are stored densely); channel pruning
    shrinks it.
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / _MIB


# ------------------------------------------------------------------------- MACs
# MACs are computed analytically: a hooked forward pass at batch 1 records, once per
# model *structure*, how many output positions each Conv/Linear call produces (the
# spatial size, which channel pruning never changes). Afterwards the MACs of any model
# with the same structure - every candidate of a pruning search - follow from the
# modules' current channel counts without running the model.

_MacRecord = tuple[str, str, int]  # (module name, "conv" | "convT" | "linear", positions)
_MAC_TABLES: OrderedDict[tuple[Any, ...], list[_MacRecord]] = OrderedDict()
_MAC_TABLES_MAX = 64


def _structure_key(model: nn.Module, x: ExampleInput) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A key that changes whenever output spatial sizes could change, and a name map.

    It holds the model's class, the per-sample input shape, and every module's name and
    class, with conv geometry (kernel, stride, padding, dilation) and the ``extra_repr``
    of parameter-free leaf modules (pooling sizes, flatten dims, ...). Channel counts
    are deliberately left out: they are what pruning changes and what the analytic
    formula reads from the modules.
    """
    shapes = (
        (tuple(x.shape[1:]), x.dtype)
        if isinstance(x, torch.Tensor)
        else tuple((tuple(t.shape[1:]), t.dtype) for t in x)
    )
    parts: list[Any] = [type(model).__module__, type(model).__qualname__, shapes]
    names: dict[str, Any] = {}
    for name, m in model.named_modules():
        names[name] = m
        if isinstance(m, nn.modules.conv._ConvNd):
            parts.append((name, type(m).__name__, m.kernel_size, m.stride, m.padding,
                          m.dilation, getattr(m, "output_padding", None)))
        elif isinstance(m, nn.Linear):
            parts.append((name, "Linear"))
        elif not m._modules and not m._parameters:
            parts.append((name, type(m).__name__, m.extra_repr()))
        else:
            parts.append((name, type(m).__name__))
    return tuple(parts), names


def _build_mac_table(model: nn.Module, x: ExampleInput) -> list[_MacRecord]:
    """Run one hooked batch-1 forward pass and record each Conv/Linear call's positions."""
    records: list[_MacRecord] = []
    hooks = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, inputs: Any, output: Any) -> None:
            out = next(_tensors(output))
            if isinstance(m, nn.Linear):
                inp = next(_tensors(inputs))
                records.append((name, "linear", inp.numel() // max(1, m.in_features)))
            elif isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
                inp = next(_tensors(inputs))
                records.append((name, "convT", inp.numel() // max(1, m.in_channels)))
            else:
                records.append((name, "conv", out.numel() // max(1, out.shape[1])))

        return hook

    seen: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and id(m) not in seen:
            seen.add(id(m))
            hooks.append(m.register_forward_hook(make_hook(name)))
    try:
        with _eval_mode(model), torch.no_grad():
            _forward(model, _first_sample(x))
    finally:
        for h in hooks:
            h.remove()
    return records


def _mac_table(model: nn.Module, x: ExampleInput) -> tuple[list[_MacRecord], dict[str, Any]]:
    key, names = _structure_key(model, x)
    table = _MAC_TABLES.get(key)
    if table is None:
        table = _build_mac_table(model, x)
        _MAC_TABLES[key] = table
        if len(_MAC_TABLES) > _MAC_TABLES_MAX:
            _MAC_TABLES.popitem(last=False)
    else:
        _MAC_TABLES.move_to_end(key)
    return table, names


def _record_macs(m: nn.Module, kind: str, positions: int) -> int:
    if isinstance(m, nn.Linear):
        return positions * m.in_features * m.out_features
    if not isinstance(m, nn.modules.conv._ConvNd):  # the table records Linear and conv only
        raise TypeError(f"no MAC count for a {type(m).__name__} ({kind} record)")
    k = math.prod(m.kernel_size)
    if kind == "convT":
        return positions * m.in_channels * (m.out_channels // m.groups) * k
    return positions * m.out_channels * (m.in_channels // m.groups) * k


def layer_macs(model: nn.Module, example_input: ExampleInput) -> dict[str, int]:
    """MACs of each Conv/Linear module of ``model`` (by module name) for one sample.

    ``example_input`` is a batch the model accepts; its first sample is used. A module
    called several times in one forward pass gets the sum of its calls.
    Modules the forward pass never reaches cost nothing and are absent.
    """
    table, names = _mac_table(model, example_input)
    out: dict[str, int] = {}
    for name, kind, positions in table:
        out[name] = out.get(name, 0) + _record_macs(names[name], kind, positions)
    return out


def count_macs(model: nn.Module, example_input: ExampleInput) -> float:
    """Multiply-accumulates of one forward pass at batch 1 (the first sample of the input).

    Counted for every ``Conv{1,2,3}d`` (grouped and depthwise convs count
    ``in_channels / groups`` inputs per output), transposed conv and ``Linear`` call:
    ``positions x out_channels x in_channels/groups x kernel`` for convs and
    ``rows x in_features x out_features`` for Linear. Batch norm, activations,
    pooling, bias additions and element-wise ops are *not* counted: they are linear in
    the activation size rather than in the weights, and batch norm folds into the
    preceding conv at deployment. This is the convention of AMC and of most pruning
    papers' "FLOPs" tables.

    The output positions of each layer are recorded once per model structure by a
    hooked batch-1 forward pass and cached, so computing the MACs of a channel-pruned
    candidate reads the layers' widths without running the model. ``example_input`` is
    a batch ``model`` accepts (a tensor or a sequence of tensors).
    """
    table, names = _mac_table(model, example_input)
    return float(sum(_record_macs(names[n], kind, pos) for n, kind, pos in table))


def count_flops(model: nn.Module, example_input: ExampleInput) -> float:
    """Floating-point operations of one forward pass at batch 1: ``2 * count_macs``.

    One MAC is one multiply and one add. (Some papers call MACs "FLOPs"; rlprune keeps
    the two apart, and a relative budget such as ``flops<=50%`` means the same either way.)
    ``model`` and ``example_input`` are as for :func:`count_macs`.
    """
    return 2.0 * count_macs(model, example_input)


# ------------------------------------------------------------------ memory, latency
def estimate_memory_mb(model: nn.Module, example_input: ExampleInput) -> float:
    """Weights plus peak activation memory of one input, in MiB (2**20 bytes).

    ``weights`` = bytes of every parameter and buffer. ``peak activations`` = the
    largest, over every leaf-module call in one batch-1 forward pass (in eval mode), of
    the bytes of that call's input tensors plus its output tensors - the two buffers
    that must be live at once while the layer runs - and at least the model's own input
    plus output. Skip connections that keep more tensors alive are not counted: this
    is a lower bound on the peak that scales like the real one under pruning, and it
    is deterministic. The input is the first sample of ``example_input``.
    """
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    weights += sum(t.numel() * t.element_size() for t in model.buffers())
    peak = 0
    hooks = []

    def hook(m: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal peak
        peak = max(peak, _nbytes(inputs) + _nbytes(output))

    for m in model.modules():
        if not m._modules:
            hooks.append(m.register_forward_hook(hook))
    x = _first_sample(example_input)
    try:
        with _eval_mode(model), torch.no_grad():
            out = _forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    peak = max(peak, _nbytes(x) + _nbytes(out))
    return (weights + peak) / _MIB


def measure_latency_ms(
    model: nn.Module,
    example_input: ExampleInput,
    batch_size: int = 1,
    num_threads: int = 1,
    repeats: int = 20,
    min_repeat_s: float = 0.01,
    statistic: str = "min",
) -> float:
    """CPU wall time of one forward pass, in milliseconds.

    The first sample of ``example_input`` is repeated to ``batch_size``; the model runs
    in eval mode under ``torch.inference_mode`` with ``num_threads`` intra-op threads
    (fixed so that measurements are comparable). After two warm-up calls, each of
    ``repeats`` windows times enough calls to last about ``min_repeat_s``, and the
    per-call time of the fastest window (``statistic="min"``) or the median window
    (``"median"``) is returned. Other processes only ever add time, in bursts that last
    from milliseconds to minutes, so the fastest window is the most repeatable
    estimate of what the model itself costs (docs/RESULTS.md, "Which latency
    statistic"); the median is what the model sees under the machine's load of the
    moment. The value is still noisy: budgets re-check it.
    """
    _check_timing(batch_size, num_threads, repeats, statistic)
    times = _torch_windows(model, example_input, batch_size, num_threads, repeats,
                           min_repeat_s)
    return _STATISTICS[statistic](times) * 1e3


def _torch_windows(model: nn.Module, example_input: ExampleInput, batch_size: int,
                   num_threads: int, repeats: int, min_repeat_s: float) -> list[float]:
    """Seconds per call in each of ``repeats`` windows (:func:`measure_latency_ms`)."""
    from torch.utils import benchmark

    x1 = _first_sample(example_input)
    if isinstance(x1, torch.Tensor):
        args: tuple[torch.Tensor, ...] = (x1.expand(batch_size, *x1.shape[1:]).contiguous(),)
    else:
        args = tuple(t.expand(batch_size, *t.shape[1:]).contiguous() for t in x1)
    with _eval_mode(model), torch.inference_mode():
        timer = benchmark.Timer(
            stmt="model(*args)", globals={"model": model, "args": args}, num_threads=num_threads
        )
        once = timer.timeit(2).mean  # warm-up, and a first estimate of one call
        number = max(1, int(min_repeat_s / max(once, 1e-7)))
        return [timer.timeit(number).mean for _ in range(repeats)]


#: How the windows of one latency measurement are summarised (``statistic``).
_STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": lambda t: float(np.min(t)),
    "median": lambda t: float(np.median(t)),
}


def _check_timing(batch_size: int, num_threads: int, repeats: int, statistic: str) -> None:
    """One clear error for impossible latency settings."""
    if batch_size < 1 or num_threads < 1 or repeats < 1:
        raise ValueError(
            f"batch_size, num_threads and repeats must be >= 1, got {batch_size}, "
            f"{num_threads}, {repeats}"
        )
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(_STATISTICS)}, "
                         f"got {statistic!r}")


_ORT_SESSIONS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_ORT_SESSIONS_MAX = 16


def _batch_of(example_input: ExampleInput, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The first sample of ``example_input`` repeated ``batch_size`` times, per input."""
    x1 = _first_sample(example_input)
    xs = (x1,) if isinstance(x1, torch.Tensor) else tuple(x1)
    # a fresh tensor: exporting may update an input in place (ReLU(inplace=True)), which an
    # inference-mode tensor given by the caller would refuse
    return tuple(t.detach().expand(batch_size, *t.shape[1:]).clone(
        memory_format=torch.contiguous_format) for t in xs)


def _ort_session(model: nn.Module, args: tuple[torch.Tensor, ...], num_threads: int) -> Any:
    """An ONNX Runtime CPU session of ``model`` exported at the shapes of ``args``.

    Sessions are cached by model structure, tensor shapes and thread count: a latency
    does not depend on the weights' values, so every candidate of one shape (and every
    re-measurement of the same model) reuses one export.
    """
    import onnxruntime as ort

    key = (_structure_key(model, args)[0],
           tuple((k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()),
           tuple((tuple(a.shape), a.dtype) for a in args), num_threads)
    sess = _ORT_SESSIONS.get(key)
    if sess is not None:
        _ORT_SESSIONS.move_to_end(key)
        return sess
    names = [f"input_{i}" for i in range(len(args))]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _eval_mode(model), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, buf,  # type: ignore[arg-type]  # BytesIO works
                              dynamo=False, input_names=names)
    except Exception as e:
        raise ValueError(f"ort_latency_ms: cannot export {type(model).__name__} to ONNX: "
                         f"{type(e).__name__}: {e}") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    _ORT_SESSIONS[key] = sess
    if len(_ORT_SESSIONS) > _ORT_SESSIONS_MAX:
        _ORT_SESSIONS.popitem(last=False)
    return sess


def measure_ort_latency_ms(
    model: nn.Module,
    example_input: ExampleInput,
    batch_size: int = 1,
    num_threads: int = 1,
    repeats: int = 20,
    min_repeat_s: float = 0.01,
    statistic: str = "min",
) -> float:
    """Latency of one forward pass of ``model`` exported to ONNX and run by ONNX
    Runtime on the CPU, in milliseconds: what a deployment with ONNX Runtime will see.

    The first sample of ``example_input`` is repeated to ``batch_size`` and the model is
    exported (TorchScript exporter, static shapes, in memory) once per model structure
    and shape; the session runs with ``num_threads`` intra-op threads and one inter-op
    thread. After two warm-up runs, each of ``repeats`` windows times enough runs to
    last about ``min_repeat_s``, and the per-run time of the fastest (``statistic=
    "min"``) or the median window is returned, as in :func:`measure_latency_ms`. The
    value is noisy: budgets re-check it. A model the exporter cannot handle is a
    ``ValueError`` naming it.
    """
    _check_timing(batch_size, num_threads, repeats, statistic)
    times = _ort_windows(model, example_input, batch_size, num_threads, repeats, min_repeat_s)
    return _STATISTICS[statistic](times) * 1e3


def _ort_windows(model: nn.Module, example_input: ExampleInput, batch_size: int,
                 num_threads: int, repeats: int, min_repeat_s: float) -> list[float]:
    """Seconds per run in each of ``repeats`` windows (:func:`measure_ort_latency_ms`)."""
    args = _batch_of(example_input, batch_size)
    sess = _ort_session(model, args, num_threads)
    by_name = {f"input_{i}": a.numpy() for i, a in enumerate(args)}
    feeds = {i.name: by_name[i.name] for i in sess.get_inputs()}

    def per_run(number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, feeds)
        return (time.perf_counter() - t0) / number

    once = per_run(2)  # warm-up, and a first estimate of one run
    number = max(1, int(min_repeat_s / max(once, 1e-7)))
    return [per_run(number) for _ in range(repeats)]


_RUNTIMES = {"torch": measure_latency_ms, "onnxruntime": measure_ort_latency_ms}
_WINDOWS = {"torch": _torch_windows, "onnxruntime": _ort_windows}


def latency_windows(model: nn.Module, example_input: ExampleInput, runtime: str = "torch",
                    batch_size: int = 1, num_threads: int = 1, repeats: int = 20,
                    min_repeat_s: float = 0.01) -> list[float]:
    """Every window a latency measurement times, in order: milliseconds per call.

    What :func:`measure_latency_ms` (``runtime="torch"``) or
    :func:`measure_ort_latency_ms` (``"onnxruntime"``) summarise into one number, for
    studying the noise of a machine (``benchmarks/latency_statistic.py``). ``model``,
    ``example_input``, ``batch_size``, ``num_threads``, ``repeats`` (the number of
    windows) and ``min_repeat_s`` (each window's least duration) are as there.
    """
    if runtime not in _WINDOWS:
        raise ValueError(f"runtime must be one of {', '.join(_WINDOWS)}, got {runtime!r}")
    _check_timing(batch_size, num_threads, repeats, "min")
    return [t * 1e3 for t in _WINDOWS[runtime](model, example_input, batch_size, num_threads,
                                                repeats, min_repeat_s)]


@dataclass(frozen=True)
class LatencyMeter:
    """A latency cost function with fixed settings: ``meter(model, example_input) -> ms``.

    ``runtime`` is ``"torch"`` (:func:`measure_latency_ms`) or ``"onnxruntime"``
    (:func:`measure_ort_latency_ms`); ``batch_size``, ``num_threads``, ``repeats``,
    ``min_repeat_s`` and ``statistic`` are passed to it. Being a plain frozen
    dataclass, a meter pickles, compares by its settings, and tells reports how it
    measures (:meth:`describe`).
    Build one with :func:`latency_cost` or :func:`ort_latency_cost`.
    """

    runtime: str = "torch"
    batch_size: int = 1
    num_threads: int = 1
    repeats: int = 20
    min_repeat_s: float = 0.01
    statistic: str = "min"

    def __post_init__(self) -> None:
        if self.runtime not in _RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(_RUNTIMES)}, "
                             f"got {self.runtime!r}")
        _check_timing(self.batch_size, self.num_threads, self.repeats, self.statistic)

    def __call__(self, model: nn.Module, example_input: ExampleInput) -> float:
        """Latency of ``model`` in ms, run on the first sample of ``example_input``
        repeated to ``batch_size``."""
        return _RUNTIMES[self.runtime](
            model, example_input, batch_size=self.batch_size, num_threads=self.num_threads,
            repeats=self.repeats, min_repeat_s=self.min_repeat_s, statistic=self.statistic,
        )

    def describe(self) -> str:
        """The settings in words, e.g. ``"PyTorch CPU, batch 1, 1 thread, fastest of 20
        windows"``."""
        where = "PyTorch CPU" if self.runtime == "torch" else "ONNX Runtime CPU"
        threads = f"{self.num_threads} thread{'s' if self.num_threads > 1 else ''}"
        stat = "fastest" if self.statistic == "min" else "median"
        return f"{where}, batch {self.batch_size}, {threads}, {stat} of {self.repeats} windows"


def latency_cost(
    batch_size: int = 1, num_threads: int = 1, repeats: int = 20, min_repeat_s: float = 0.01,
    statistic: str = "min",
) -> LatencyMeter:
    """A PyTorch CPU latency cost with fixed settings, e.g. to register ``latency_b32_ms``.

    ``register_cost("latency_b32_ms", latency_cost(batch_size=32), noisy=True)``.
    ``batch_size``, ``num_threads``, ``repeats``, ``min_repeat_s`` and ``statistic``
    are those of :func:`measure_latency_ms`. (Budget strings may name ``latency_b32_ms``
    directly: :data:`LATENCY_VARIANTS`.)
    """
    return LatencyMeter("torch", batch_size, num_threads, repeats, min_repeat_s, statistic)


def ort_latency_cost(
    batch_size: int = 1, num_threads: int = 1, repeats: int = 20, min_repeat_s: float = 0.01,
    statistic: str = "min",
) -> LatencyMeter:
    """An ONNX Runtime CPU latency cost with fixed settings (see :func:`latency_cost`).

    ``batch_size``, ``num_threads``, ``repeats``, ``min_repeat_s`` and ``statistic`` are
    those of :func:`measure_ort_latency_ms`.
    """
    return LatencyMeter("onnxruntime", batch_size, num_threads, repeats, min_repeat_s,
                        statistic)


#: Latency costs at other settings that budgets may name without registering them:
#: ``latency_b<batch>_t<threads>_ms`` and ``ort_latency_b<batch>_t<threads>_ms``, either
#: part optional (``latency_b8_ms``: batch 8, one thread).
LATENCY_VARIANTS = "latency_b<N>_t<N>_ms, ort_latency_b<N>_t<N>_ms (either part optional)"
_LATENCY_VARIANT_RE = re.compile(r"^(ort_)?latency(?:_b([1-9][0-9]*))?(?:_t([1-9][0-9]*))?_ms$")


# ---------------------------------------------------------------------- registry
def _takes_input(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a second positional argument (the example input)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    n = 0
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            n += 1
    return n >= 2


@dataclass(frozen=True)
class Cost:
    """A named cost function with what the budget machinery needs to know about it.

    ``name`` is how budgets write it, ``fn`` the function measuring it and ``unit`` its
    unit in reports (e.g. ``"MACs"``, ``"ms"``).
    ``relative``: limits ``<= 1`` mean a fraction of the original model's value (size
    costs); otherwise a bare limit is absolute. ``noisy``: repeated measurements differ
    (latency), so feasibility is re-checked. ``takes_input``: ``fn(model, example_input)``
    rather than ``fn(model)``.
    """

    name: str
    fn: CostFn
    relative: bool = False
    noisy: bool = False
    takes_input: bool = False
    unit: str = ""

    @property
    def settings(self) -> str:
        """How the cost is measured, in words, for reports: a latency cost's runtime,
        batch size and threads (:meth:`LatencyMeter.describe`); ``""`` for other costs."""
        return self.fn.describe() if isinstance(self.fn, LatencyMeter) else ""

    def __call__(self, model: nn.Module, example_input: ExampleInput | None = None) -> float:
        """Evaluate the cost; the value must be a finite real number >= 0.

        A user's cost function that raises, or returns anything else (NaN, inf, a
        negative number, a string, ``None``...), is a ``ValueError`` naming the cost;
        an exception in one of rlprune's own costs is a bug and propagates as it is.
        """
        if self.takes_input and example_input is None:
            raise ValueError(f"cost {self.name!r} needs an example input")
        try:
            value = self.fn(model, example_input) if self.takes_input else self.fn(model)
        except Exception as e:
            if str(getattr(self.fn, "__module__", "")).startswith("rlprune."):
                raise
            raise ValueError(f"cost {self.name!r} failed: {type(e).__name__}: {e}") from e
        shown = " ".join(repr(value).split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        try:
            if isinstance(value, (str, bytes, bytearray, bool, np.bool_)):
                raise TypeError
            v = float(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise ValueError(
                f"cost {self.name!r} returned {shown}; a cost must return a number "
                "(a finite number >= 0)"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(
                f"cost {self.name!r} returned {v!r}; a cost function must return a finite "
                "number >= 0"
            )
        return v


_COSTS: dict[str, Cost] = {}


def _make_cost(
    name: str,
    fn: CostFn,
    relative: bool,
    noisy: bool,
    unit: str,
    takes_input: bool | None,
) -> Cost:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"cost name {name!r} must be lower-case letters, digits and '_' (starting with "
            "a letter or '_') so that it can be written in a budget string"
        )
    if not callable(fn):
        raise ValueError(f"cost {name!r}: {fn!r} is not callable")
    ti = _takes_input(fn) if takes_input is None else bool(takes_input)
    return Cost(name, fn, relative=relative, noisy=noisy, takes_input=ti, unit=unit)


def register_cost(
    name: str,
    fn: CostFn | None = None,
    *,
    relative: bool = False,
    noisy: bool = False,
    unit: str = "",
    takes_input: bool | None = None,
    overwrite: bool = False,
) -> Any:
    """Register ``fn`` as the cost ``name``; without ``fn``, return a decorator.

    ``fn`` is ``fn(model) -> float`` or ``fn(model, example_input) -> float`` (detected
    from its signature unless ``takes_input`` says). ``relative=True`` lets budgets state
    its limit as a fraction of the original model's value when ``<= 1`` (like params);
    ``noisy=True`` marks measured costs that must be re-checked; ``unit`` labels its
    values in reports. Re-registering a name raises ``ValueError`` unless
    ``overwrite=True``.
    """

    def deco(f: CostFn) -> CostFn:
        cost = _make_cost(name, f, relative, noisy, unit, takes_input)
        if cost.name in _COSTS and not overwrite:
            raise ValueError(f"cost {name!r} is already registered (pass overwrite=True)")
        _COSTS[cost.name] = cost
        return f

    if fn is None:
        return deco
    deco(fn)
    return fn


def list_costs() -> list[str]:
    """Names of the registered costs, in registration order (built-ins first)."""
    return list(_COSTS)


def _latency_variant(name: str) -> Cost | None:
    """The cost ``name`` if it is registered or a latency variant (:data:`LATENCY_VARIANTS`,
    registered here on first use); ``None`` otherwise."""
    if name in _COSTS:
        return _COSTS[name]
    m = _LATENCY_VARIANT_RE.match(name)
    if m is None:
        return None
    meter = LatencyMeter("onnxruntime" if m.group(1) else "torch", int(m.group(2) or 1),
                         int(m.group(3) or 1))
    register_cost(name, meter, noisy=True, unit="ms", takes_input=True)
    return _COSTS[name]


def get_cost(name: str) -> Cost:
    """The registered cost ``name``; unknown names raise ``ValueError`` listing the known ones.

    Latency variants (:data:`LATENCY_VARIANTS`, e.g. ``latency_b8_t2_ms``) are registered
    on first use.
    """
    key = str(name).strip().lower()
    cost = _latency_variant(key)
    if cost is None:
        raise ValueError(f"unknown cost {name!r}; known costs: {', '.join(list_costs())}; "
                         f"latency at other settings: {LATENCY_VARIANTS}")
    return cost


register_cost("params", count_params, relative=True, unit="params")
register_cost("nonzero_params", count_nonzero, relative=True, unit="params")
register_cost("macs", count_macs, relative=True, unit="MACs")
register_cost("flops", count_flops, relative=True, unit="FLOPs")
register_cost("latency_ms", latency_cost(), noisy=True, unit="ms", takes_input=True)
register_cost("ort_latency_ms", ort_latency_cost(), noisy=True, unit="ms", takes_input=True)
register_cost("memory_mb", estimate_memory_mb, relative=True, unit="MiB")
register_cost("disk_mb", disk_size_mb, relative=True, unit="MiB")


# ------------------------------------------------------------------------ budget
def _fmt_number(v: float) -> str:
    """Shortest text that parses back to the same float (``2.0`` -> ``2``)."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def _parse_limit(name: str, raw: float | int | str, term: str) -> tuple[float, bool]:
    """``(number as written, percent?)`` of one limit; rejects non-positive and non-finite."""
    hint = f"accepted syntax: {BUDGET_SYNTAX}"
    percent = False
    if isinstance(raw, bool):
        raise ValueError(f"budget limit for {name!r} must be a number, got {raw!r}; {hint}")
    if isinstance(raw, str):
        text = raw.strip()
        if text.endswith("%"):
            percent, text = True, text[:-1].strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"bad limit {raw!r} in budget term {term!r}: not a number; {hint}"
            ) from None
    elif isinstance(raw, (int, float, np.integer, np.floating)):
        value = float(raw)
    else:
        raise ValueError(f"budget limit for {name!r} must be a number, got {raw!r}; {hint}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"bad limit {raw!r} in budget term {term!r}: limits must be positive and finite; "
            f"{hint}"
        )
    return value, percent


@dataclass(frozen=True)
class Constraint:
    """One hard constraint ``cost(model) <= limit``.

    ``name`` is the cost's name and ``cost`` the registered :class:`Cost`; ``value`` is
    the number as written and ``percent`` whether it had a ``%``; the limit is
    *relative* (a fraction of the original model's cost) when written with ``%``, or
    when the cost is a size cost (``Cost.relative``) and ``value <= 1``.
    """

    name: str
    cost: Cost
    value: float
    percent: bool = False

    @property
    def relative(self) -> bool:
        """Whether the limit is a fraction of the original model's value."""
        return self.percent or (self.cost.relative and self.value <= 1.0)

    @property
    def fraction(self) -> float | None:
        """The limit as a fraction of the original (``None`` for absolute limits)."""
        if self.percent:
            return self.value / 100.0
        return self.value if self.relative else None

    def resolve(self, original_value: float) -> float:
        """The absolute limit, given ``original_value``, the original model's value of
        this cost."""
        frac = self.fraction
        return self.value if frac is None else frac * original_value

    def __str__(self) -> str:
        return f"{self.name}<={_fmt_number(self.value)}{'%' if self.percent else ''}"


def _safe_ratio(a: float, b: float) -> float:
    if b == 0:
        return 0.0 if a <= 0 else math.inf
    return a / b


class Budget:
    """Several hard constraints at once; each holds iff ``value <= limit`` (no tolerance).

    Build with keywords (``limits``), one per registered cost, and ``custom`` for
    unregistered callables, ``{name: (fn, limit)}`` or ``{name: (fn, limit, options)}``
    where ``options`` may set ``noisy`` (a measured cost, accepted on repeated
    measurements: :mod:`rlprune.noise`), ``unit`` and ``relative`` as
    :func:`register_cost` does; ``constraints`` prepends ready :class:`Constraint`
    objects::

        Budget(params=0.3, flops="50%", latency_ms=2.0,
               custom={"conv_channels": (fn, 300),
                       "energy_mj": (meter, "80%", {"noisy": True, "unit": "mJ"})})
        Budget.parse("params<=0.3,flops<=50%,latency_ms<=2")

    For ``params``, ``nonzero_params``, ``macs``, ``flops``, ``memory_mb`` and
    ``disk_mb`` (costs registered with ``relative=True``) a limit ``<= 1`` is a
    fraction of the original model's value and a limit ``> 1`` an absolute value;
    ``latency_ms`` and custom costs are absolute; ``NN%`` is always a fraction of
    the original. Limits must be positive. Constraints keep the order given, which is
    the order of :meth:`BoundBudget.ratios`.
    """

    def __init__(
        self,
        constraints: Sequence[Constraint] = (),
        *,
        custom: Mapping[str, tuple[CostFn, float | str]
                        | tuple[CostFn, float | str, Mapping[str, Any]]] | None = None,
        **limits: float | str,
    ):
        items: list[Constraint] = list(constraints)
        for name, raw in limits.items():
            cost = get_cost(name)
            value, percent = _parse_limit(name, raw, f"{name}={raw!r}")
            items.append(Constraint(cost.name, cost, value, percent))
        for name, spec in (custom or {}).items():
            if not (isinstance(spec, tuple) and len(spec) in (2, 3)):
                raise ValueError(
                    f"custom constraint {name!r} must be a (callable, limit) pair or a "
                    f"(callable, limit, options) triple, got {spec!r}"
                )
            fn, raw = spec[0], spec[1]
            given: Any = spec[2] if len(spec) == 3 else {}
            if not isinstance(given, Mapping):
                raise ValueError(f"custom constraint {name!r}: options must be a mapping "
                                 f"such as {{'noisy': True}}, got {given!r}")
            opts: dict[str, Any] = dict(given)
            unknown = sorted(set(opts) - {"noisy", "unit", "relative"})
            if unknown:
                raise ValueError(f"custom constraint {name!r}: unknown option(s) "
                                 f"{', '.join(map(repr, unknown))}; allowed: 'noisy', 'unit', "
                                 "'relative'")
            if str(name).lower() in _COSTS:
                raise ValueError(
                    f"custom cost name {name!r} shadows the registered cost of that name; "
                    "pick another name"
                )
            cost = _make_cost(str(name), fn, bool(opts.get("relative", False)),
                              bool(opts.get("noisy", False)), str(opts.get("unit", "")), None)
            value, percent = _parse_limit(name, raw, f"{name}={raw!r}")
            items.append(Constraint(cost.name, cost, value, percent))
        if not items:
            raise ValueError(f"a budget needs at least one constraint; {BUDGET_SYNTAX}")
        seen: set[str] = set()
        for c in items:
            if c.name in seen:
                raise ValueError(
                    f"cost {c.name!r} appears twice in the budget; give each cost once: "
                    f"{BUDGET_SYNTAX}"
                )
            seen.add(c.name)
        self._constraints: tuple[Constraint, ...] = tuple(items)

    # -------------------------------------------------------------- construction
    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``"params<=0.3,flops<=50%,latency_ms<=2"`` (names of registered costs).

        ``text`` holds comma-separated terms ``NAME<=NUMBER`` or ``NAME<=NUMBER%``.
        Raises ``ValueError`` naming the bad term and the accepted syntax for empty
        strings, operators other than ``<=``, non-numbers, non-positive limits,
        unknown names and duplicates.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty budget {text!r}; expected {BUDGET_SYNTAX}")
        term_re = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*<=\s*(\S.*?)\s*$")
        items: list[Constraint] = []
        seen: set[str] = set()
        for term in text.split(","):
            m = term_re.match(term)
            if m is None:
                raise ValueError(
                    f"malformed budget term {term.strip()!r} in {text!r}: expected {BUDGET_SYNTAX}"
                )
            name = m.group(1).lower()
            if _latency_variant(name) is None:
                raise ValueError(
                    f"unknown cost {m.group(1)!r} in budget term {term.strip()!r}; known costs: "
                    f"{', '.join(list_costs())}; latency at other settings: {LATENCY_VARIANTS}; "
                    f"syntax: {BUDGET_SYNTAX}"
                )
            if name in seen:
                raise ValueError(
                    f"cost {name!r} appears twice in budget {text!r}; give each cost once: "
                    f"{BUDGET_SYNTAX}"
                )
            seen.add(name)
            value, percent = _parse_limit(name, m.group(2), term.strip())
            items.append(Constraint(name, _COSTS[name], value, percent))
        return cls(items)

    @classmethod
    def coerce(cls, budget: Budget | str | Mapping[str, float | str]) -> Budget:
        """A :class:`Budget` from a budget, a budget string or a ``{name: limit}`` mapping."""
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, str):
            return cls.parse(budget)
        if isinstance(budget, Mapping):
            # every key names a registered cost, as the keywords of Budget(...) do; a key
            # such as "custom" is refused as an unknown cost rather than taken as an option
            items: list[Constraint] = []
            for k, v in budget.items():
                cost = get_cost(str(k))
                value, percent = _parse_limit(str(k), v, f"{k}={v!r}")
                items.append(Constraint(cost.name, cost, value, percent))
            return cls(items)
        raise ValueError(f"cannot make a budget from {budget!r}; {BUDGET_SYNTAX}")

    # ----------------------------------------------------------------- queries
    @property
    def constraints(self) -> tuple[Constraint, ...]:
        """The constraints, in the order given."""
        return self._constraints

    @property
    def names(self) -> list[str]:
        """Constraint names in order."""
        return [c.name for c in self._constraints]

    def __len__(self) -> int:
        return len(self._constraints)

    def __iter__(self) -> Iterator[Constraint]:
        return iter(self._constraints)

    def __str__(self) -> str:
        return ",".join(str(c) for c in self._constraints)

    def __repr__(self) -> str:
        return f"Budget.parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Budget):
            return NotImplemented
        return [(c.name, c.value, c.percent, c.cost.fn) for c in self] == [
            (c.name, c.value, c.percent, c.cost.fn) for c in other
        ]

    def __hash__(self) -> int:
        return hash(str(self))

    def measure(
        self, model: nn.Module, example_input: ExampleInput | None = None
    ) -> dict[str, float]:
        """Each constraint's cost of ``model``, by name; ``example_input`` is what costs
        that take an input (MACs, latency) run the model on."""
        return {c.name: c.cost(model, example_input) for c in self._constraints}

    def bind(self, original: nn.Module, example_input: ExampleInput | None = None,
             rule: NoiseRule | None = None) -> BoundBudget:
        """Measure ``original`` once and resolve every limit: the object searches use.

        A run binds its budget once, at its start; the :class:`BoundBudget` is then used
        unchanged by the search, projection and the final check, so a relative limit on
        a noisy cost (latency) cannot move between them. A noisy cost of the original
        is measured ``rule.original_repeats`` times and its median used
        (:class:`~rlprune.noise.NoiseRule`, the defaults if ``rule`` is ``None``).
        ``example_input`` is a batch the model accepts, kept for measuring candidates
        later; ``original`` is kept too, as the reference a paired check times beside a
        candidate (:attr:`BoundBudget.paired_names`).
        """
        rule = rule or NoiseRule()
        values: dict[str, float] = {}
        spreads: dict[str, Spread] = {}
        for c in self._constraints:
            if c.cost.noisy:
                runs = [c.cost(original, example_input) for _ in range(rule.original_repeats)]
                spreads[c.name] = sp = rule.spread(runs)
                values[c.name] = sp.median
                if sp.n > 1 and sp.relative_sd > BUSY_RELATIVE_SD:
                    warnings.warn(
                        f"{c.name} of the original model varied by {sp.relative_sd:.1%} "
                        f"(standard deviation over {sp.n} measurements): the machine is "
                        "busy, and a limit resolved now, and the checks against it, "
                        "depend on its load; time latency budgets on an idle machine",
                        stacklevel=2)
            else:
                values[c.name] = c.cost(original, example_input)
        return BoundBudget(self, values, example_input, rule=rule, original_spread=spreads,
                           reference=original)


#: :meth:`Budget.bind` warns when a noisy cost of the original varies by more than this
#: share of its mean (an idle machine: about 1% for ``latency_ms``; docs/RESULTS.md).
BUSY_RELATIVE_SD = 0.05


class BoundBudget:
    """A budget whose limits are resolved against one original model.

    ``original`` holds the original model's cost values and ``limits`` the absolute
    limits, both by name; ``limit_vector`` is the limits in constraint order. Measuring
    a candidate costs only the candidate's own cost evaluations. :meth:`to_dict` is
    what a run stores; :meth:`from_dict` restores it without measuring the original
    again. ``budget`` is the :class:`Budget` bound and ``example_input`` the batch
    candidates are measured on. ``rule`` says how noisy costs are accepted
    (:class:`~rlprune.noise.NoiseRule`; defaults if ``None``) and ``original_spread``
    holds, per noisy cost, the spread of the measurements that resolved its limit.
    ``reference`` is the original model itself, timed beside a candidate when a
    relative limit on a noisy cost is checked (:attr:`paired_names`); without it such
    a limit is checked in absolute terms, against the value resolved at bind time.
    ``tape`` (set by a run) records the noisy measurements for replay on resume.
    """

    def __init__(
        self,
        budget: Budget,
        original: Mapping[str, float],
        example_input: ExampleInput | None = None,
        rule: NoiseRule | None = None,
        original_spread: Mapping[str, Spread] | None = None,
        reference: nn.Module | None = None,
    ):
        self.budget = budget
        self.reference = reference
        self.example_input = example_input
        self.rule = rule or NoiseRule()
        self.original_spread: dict[str, Spread] = dict(original_spread or {})
        self.tape: MeasurementTape | None = None
        self.original: dict[str, float] = {c.name: float(original[c.name]) for c in budget}
        self.limits: dict[str, float] = {c.name: c.resolve(self.original[c.name]) for c in budget}
        self.limit_vector = np.array([self.limits[c.name] for c in budget], dtype=np.float64)

    @classmethod
    def from_dict(cls, budget: Budget, stored: Mapping[str, Any],
                  example_input: ExampleInput | None = None,
                  reference: nn.Module | None = None) -> BoundBudget:
        """The bound budget of :meth:`to_dict` for ``budget`` (which must be the one
        stored), without measuring anything; ``example_input`` and ``reference`` (the
        original model, for paired checks) as in the constructor."""
        if stored.get("budget") != str(budget):
            raise ValueError(f"the stored bound budget is {stored.get('budget')!r}, not "
                             f"{str(budget)!r}")
        spreads = {str(k): Spread(**{**v, "n": int(v["n"])})
                   for k, v in (stored.get("original_spread") or {}).items()}
        return cls(budget, stored["original"], example_input,
                   rule=NoiseRule.from_dict(stored.get("noise")), original_spread=spreads,
                   reference=reference)

    @property
    def names(self) -> list[str]:
        """Constraint names in order."""
        return self.budget.names

    @property
    def noisy(self) -> bool:
        """Whether any constraint is measured with noise (its feasibility must be re-checked)."""
        return any(c.cost.noisy for c in self.budget)

    @property
    def noisy_names(self) -> list[str]:
        """Names of the noisy constraints, in order."""
        return [c.name for c in self.budget if c.cost.noisy]

    def __len__(self) -> int:
        return len(self.budget)

    def __str__(self) -> str:
        return str(self.budget)

    @property
    def paired_names(self) -> list[str]:
        """Noisy constraints whose checks time the original beside the candidate: those
        with a relative limit (``latency_ms<=50%``), when the rule says ``paired`` and
        a ``reference`` is held. Their repeated values are scaled to the original's
        value at bind time (:meth:`repeated`)."""
        if self.reference is None or not self.rule.paired:
            return []
        return [c.name for c in self.budget if c.cost.noisy and c.relative]

    def measure(self, model: nn.Module, taped: bool = True,
                names: Sequence[str] | None = None) -> dict[str, float]:
        """Each constraint's cost of ``model`` (of ``names`` only, if given), by name,
        measured once.

        With a ``tape`` and noisy costs, the measurement is taken back from the
        tape when a resumed run replays it, and recorded otherwise; ``taped=False``
        measures without the tape (a candidate's own scoring: the candidate log keeps
        its values and a resumed run does not score logged candidates again).
        """
        wanted = list(self.names if names is None else names)

        def fresh() -> dict[str, float]:
            if names is None:
                return self.budget.measure(model, self.example_input)
            return {c.name: c.cost(model, self.example_input)
                    for c in self.budget if c.name in wanted}

        tape = self.tape if (self.noisy and taped) else None
        if tape is None:
            return fresh()
        fp = fingerprint(model)
        values = tape.take(fp)
        if values is None or set(values) != set(wanted):
            values = fresh()
            tape.record(fp, values)
        return values

    def _paired_runs(self, model: nn.Module
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """:meth:`repeated`'s values, and the reference's raw measurements of each paired
        cost (empty when nothing is paired)."""
        paired = self.paired_names
        runs: list[dict[str, float]] = []
        refs: list[dict[str, float]] = []
        for _ in range(self.rule.repeats if self.noisy else 1):
            if paired and self.reference is not None:  # the original first, then the candidate
                refs.append(self.measure(self.reference, names=paired))
            runs.append(self.measure(model))
        noisy = set(self.noisy_names)
        out = {n: [r[n] for r in runs] if n in noisy else [runs[0][n]] for n in self.names}
        ref = {n: [r[n] for r in refs] for n in paired}
        for n, vals in ref.items():
            now = float(np.median(vals))
            if now > 0 and math.isfinite(now):
                scale = self.original[n] / now
                out[n] = [v * scale for v in out[n]]
        return out, ref

    def repeated(self, model: nn.Module) -> dict[str, list[float]]:
        """Every constraint's values of ``model``: noisy costs measured
        ``rule.repeats`` times, the others once. A paired cost (:attr:`paired_names`)
        has each measurement preceded by one of the original, and its values scaled by
        the original's value at bind time over the median of those: the candidate's
        cost as a share of the original's, timed side by side, in the bound's units."""
        return self._paired_runs(model)[0]

    def accepts_values(self, values: Mapping[str, Sequence[float]],
                       margin: float | None = None) -> bool:
        """Whether repeated values (:meth:`repeated`) meet every constraint: noisy ones
        under the rule (:meth:`~rlprune.noise.NoiseRule.accepts`, with ``margin`` if
        given), the others as ``value <= limit``."""
        noisy = set(self.noisy_names)
        return all(self.rule.accepts(values[n], self.limits[n], margin) if n in noisy
                   else values[n][0] <= self.limits[n] for n in self.names)

    def accepts(self, model: nn.Module, margin: float | None = None) -> bool:
        """Whether ``model`` meets the budget under the noise rule, measured afresh;
        ``margin`` overrides the rule's margin."""
        return self.accepts_values(self.repeated(model), margin)

    def to_dict(self) -> dict[str, Any]:
        """``{"budget": text, "original": {name: value}, "limits": {name: value},
        "noise": rule, "original_spread": {name: spread}}``."""
        return {"budget": str(self.budget), "original": dict(self.original),
                "limits": dict(self.limits), "noise": self.rule.to_dict(),
                "original_spread": {n: s.to_dict() for n, s in self.original_spread.items()}}

    def ratios_of(self, values: Mapping[str, float]) -> np.ndarray:
        """``value_i / limit_i`` in constraint order from already measured values."""
        return np.array(
            [_safe_ratio(values[n], lim) for n, lim in zip(self.names, self.limit_vector)],
            dtype=np.float64,
        )

    def ratios(self, model: nn.Module) -> np.ndarray:
        """``value_i / limit_i`` of ``model`` in constraint order; ``<= 1`` is feasible."""
        return self.ratios_of(self.measure(model))

    def ok_of(self, values: Mapping[str, float]) -> bool:
        """Whether every constraint holds (``value <= limit``) for measured values."""
        return all(values[n] <= lim for n, lim in zip(self.names, self.limit_vector))

    def feasible(self, model: nn.Module) -> bool:
        """Whether ``model`` meets every constraint (one measurement each)."""
        return self.ok_of(self.measure(model))

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """Per constraint of ``model``: value, original, limit, ratio (value / original),
        usage (value / limit) and ok. A noisy cost is measured ``rule.repeats`` times:
        its value is the median, ``ok`` follows the rule and ``noise`` holds the spread,
        the bound, the margin and the spread of the original's measurements; a paired
        cost's value is scaled as :meth:`repeated` says and ``noise["reference"]`` holds
        the spread of the original's measurements taken beside it."""
        runs, refs = self._paired_runs(model)
        noisy = set(self.noisy_names)
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            o, lim = self.original[name], self.limits[name]
            if name in noisy:
                spread = self.rule.spread(runs[name])
                v, ok = spread.median, self.rule.accepts(runs[name], lim)
            else:
                v = runs[name][0]
                ok = v <= lim
            out[name] = {
                "value": v,
                "original": o,
                "limit": lim,
                "ratio": _safe_ratio(v, o),
                "usage": _safe_ratio(v, lim),
                "ok": bool(ok),
            }
            if name in noisy:
                out[name]["noise"] = {
                    "measured": spread.to_dict(), "margin": self.rule.margin,
                    "z": self.rule.z, "accept_at": lim / (1.0 + self.rule.margin),
                    "original": (self.original_spread[name].to_dict()
                                 if name in self.original_spread else None),
                    "reference": (self.rule.spread(refs[name]).to_dict()
                                  if name in refs else None)}
        return out
