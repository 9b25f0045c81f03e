"""ONNX export and its check against PyTorch: the deployable file of a pruned model.

:func:`export_onnx` writes ``model`` to ONNX (atomically, through
:func:`rlprune.fileio.atomic_path`) and :func:`check_onnx` runs the file with
onnxruntime on the CPU and compares its outputs with PyTorch's, so a run folder never
holds an ONNX file that silently computes something else. The batch axis is made
dynamic when the exporter manages it (proved by running a batch of two); the
``torch.export``-based exporter is tried first and the TorchScript one second.

It is its own module because exporting is independent of reporting: it needs only a
model and one example batch, and a failure is *returned* (``{"ok": False, "error":
...}``) rather than raised by default, since a user model that cannot be exported
should not lose the rest of a run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune.fileio import atomic_path

__all__ = ["export_onnx", "check_onnx", "ONNX_ATOL", "ExampleInput", "as_tuple"]

#: Largest ONNX-vs-PyTorch difference accepted as a pass: max abs difference of the
#: outputs, for outputs of magnitude up to 1; relative to the largest output beyond that
#: (float32 rounding grows with the logits, e.g. ~1e3 in an untrained deep ResNet).
ONNX_ATOL = 1e-4

#: One batch a model accepts: a tensor, or a tuple of tensors for several inputs.
ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]


def as_tuple(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
    """``example_input`` as a tuple of tensors (the positional arguments of ``forward``)."""
    return (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)


def _flat_outputs(out: Any) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, Mapping):
        return [a for v in out.values() for a in _flat_outputs(v)]
    if isinstance(out, list | tuple):
        return [a for v in out for a in _flat_outputs(v)]
    return []


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _grown_batch(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example with a second, perturbed copy appended along the batch axis (to check
    that a dynamic batch axis really works and samples do not leak into each other)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for a in args:
        if not a.dim():
            out.append(a)
        elif a.is_floating_point():
            out.append(torch.cat([a, a + 0.1 * torch.randn(a.shape, generator=g, dtype=a.dtype)]))
        else:
            out.append(torch.cat([a, a]))
    return tuple(out)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision-missing notes, deprecation warnings)."""
    loggers = [logging.getLogger(n) for n in (
        "torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export",
        "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()  # torch.export prints whole graphs when it gives up
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_to(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, exporter: str,
               dynamic: bool, opset: int | None) -> None:
    n_in = len(args)
    in_names = ["input"] if n_in == 1 else [f"input_{i}" for i in range(n_in)]
    if exporter == "dynamo":
        dyn = None
        if dynamic:
            batch = torch.export.Dim("batch")
            dyn = tuple({0: batch} if a.dim() else None for a in args)
        torch.onnx.export(model, args, str(path), dynamo=True, external_data=False,
                          input_names=in_names, dynamic_shapes=dyn, opset_version=opset,
                          verbose=False)
    else:
        axes = {name: {0: "batch"} for name, a in zip(in_names, args) if a.dim()} if dynamic \
            else None
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=in_names,
                          dynamic_axes=axes, opset_version=opset)


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: ExampleInput,
    atol: float = ONNX_ATOL,
    grow_batch: bool = False,
) -> dict[str, Any]:
    """Run the ONNX file at ``path`` with onnxruntime (CPU) and compare with ``model``'s
    outputs in PyTorch.

    Runs ``example_input`` and, with ``grow_batch``, a batch twice as large (for a
    dynamic batch axis). Returns ``{"max_abs_diff", "output_scale", "ok",
    "batch_sizes"}``: ``ok`` means ``max_abs_diff <= atol * max(1, output_scale)`` with
    ``output_scale`` the largest absolute PyTorch output, for every batch tried.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    model = model.eval()
    base = tuple(a.detach().cpu() for a in as_tuple(example_input))
    batches = [base, _grown_batch(base)] if grow_batch else [base]
    worst = 0.0
    scale = 0.0
    sizes = []
    for args in batches:
        with torch.inference_mode():
            ref = _flat_outputs(model(*args))
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
        sizes.append(int(args[0].shape[0]) if args[0].dim() else 1)
        if len(got) != len(ref):
            raise ValueError(f"ONNX model has {len(got)} outputs, PyTorch {len(ref)}")
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise ValueError(f"ONNX output shape {g.shape} != PyTorch {r.shape}")
            if r.size:
                worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - g))))
                scale = max(scale, float(np.max(np.abs(r))))
    ok = math.isfinite(worst) and worst <= atol * max(1.0, scale)
    return {"max_abs_diff": worst, "output_scale": scale, "ok": bool(ok), "batch_sizes": sizes}


def export_onnx(
    model: nn.Module,
    example_input: ExampleInput,
    path: str | os.PathLike[str],
    *,
    exporter: str = "auto",
    opset: int | None = None,
    check: bool = True,
    atol: float = ONNX_ATOL,
    strict: bool = False,
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (atomically) and check it with onnxruntime.

    ``example_input`` is one batch the model accepts (a tensor or a tuple of them);
    ``opset`` the ONNX opset (``None``: the exporter's default); ``check`` compares the
    ONNX outputs with PyTorch's within ``atol`` (:func:`check_onnx`).

    The batch axis is made dynamic when the exporter manages it (checked by running a
    batch of 2); otherwise the export is static at the example's batch size. With
    ``exporter="auto"`` the ``torch.export``-based exporter is tried first and the
    TorchScript one second. Failures are *returned* as ``{"ok": False, "error": ...}``
    (a user model may not be exportable, which should not lose the rest of a run)
    unless ``strict``, which raises. On success the dict holds ``exporter``,
    ``dynamic_batch``, ``opset``, ``max_abs_diff``, ``atol`` and ``ok``.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    dest = Path(path)
    m = copy.deepcopy(model).cpu().eval()
    args = tuple(a.detach().cpu() for a in as_tuple(example_input))
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    info: dict[str, Any] = {"ok": False, "path": dest.name}
    for exp in order:
        for dynamic in (True, False):
            try:
                with atomic_path(dest) as tmp, _quiet_exporter():
                    _export_to(m, args, tmp, exp, dynamic, opset)
                    res: dict[str, Any] = {}
                    if check:
                        res = check_onnx(tmp, m, args, atol=atol, grow_batch=dynamic)
                    import onnx

                    opset_used = next((o.version for o in onnx.load(str(tmp)).opset_import
                                       if o.domain in ("", "ai.onnx")), None)
            except Exception as e:  # any exporter failure is reported
                lines = _ANSI.sub("", str(e)).strip().splitlines()
                errors.append(f"{exp} ({'dynamic' if dynamic else 'static'} batch): "
                              f"{type(e).__name__}: {' '.join(lines[:3])[:400]}")
                continue
            info.update(exporter=exp, dynamic_batch=dynamic, opset=opset_used, atol=atol,
                        checked=check, **res)
            if not check:
                info["ok"] = True
            if errors:
                info["fallback_errors"] = errors
            if not info["ok"]:
                msg = (f"ONNX export of {type(model).__name__} differs from PyTorch by "
                       f"{info.get('max_abs_diff'):.3g} > {atol:g} x max(1, "
                       f"{info.get('output_scale', 0.0):.3g}) (largest output)")
                info["error"] = msg
                if strict:
                    raise RuntimeError(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return info
    info["error"] = "; ".join(errors)
    if strict:
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed: {info['error']}")
    warnings.warn(f"ONNX export failed: {info['error']}", RuntimeWarning, stacklevel=2)
    return info
