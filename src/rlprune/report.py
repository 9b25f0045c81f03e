"""Run reports and deployable exports: what a user keeps after a pruning run.

:func:`write_run` turns the result of one :func:`rlprune.prune` call into a folder::

    pruned.pt      the pruned model (rlprune checkpoint; ``rlprune.load`` reads it)
    pruned.onnx    the same model in ONNX, checked against PyTorch with onnxruntime
    policy.json    the per-layer prune ratios and widths / nonzero counts
    report.json    everything below, machine-readable (strict JSON: NaN is null)
    report.md      the same for people: summary, tables, links to the plots
    log.jsonl      one line per evaluated candidate, in evaluation order
    plots/         layers.png, search.png, candidates.png

:func:`write_compare` does the same for several methods run side by side
(``compare.md``, ``compare.json``, ``compare.png``) and :func:`format_compare_console`
prints that table in a terminal.

Every file is written atomically (a temp file in the same folder, then
``os.replace``), so an interrupted run never leaves a half-written report that looks
complete. This module sits to the right of the search and left of ``api``/``cli`` in
the architecture: it takes results duck-typed (see :class:`RunResult`) and never
imports :mod:`rlprune.api`. Plotting uses matplotlib's object API (no ``pyplot``),
so it neither needs a display nor changes the backend of the caller's session.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import functools
import io
import json
import logging
import math
import os
import platform
import re
import shlex
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from rlprune.history import Candidate, History
from rlprune.train import save_checkpoint

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "RunResult",
    "write_run",
    "export_onnx",
    "check_onnx",
    "append_log",
    "read_log",
    "write_log",
    "run_report",
    "report_markdown",
    "plot_layers",
    "plot_search",
    "plot_candidates",
    "compare_row",
    "compare_table",
    "format_compare_console",
    "write_compare",
    "plot_compare",
    "environment_info",
    "to_jsonable",
    "atomic_write_text",
    "REPORT_FORMAT",
]

#: Version tag of ``report.json`` / ``compare.json``; bump it when keys change meaning.
REPORT_FORMAT = "rlprune-report-1"
#: Largest ONNX-vs-PyTorch difference accepted as a pass: max abs difference of the
#: outputs, for outputs of magnitude up to 1; relative to the largest output beyond that
#: (float32 rounding grows with the logits, e.g. ~1e3 in an untrained deep ResNet).
ONNX_ATOL = 1e-4
#: Resolution of every plot.
DPI = 120

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]


class RunResult(Protocol):
    """What :func:`write_run` reads from a run: the fields of ``rlprune.api.PruneResult``.

    Declared as read-only properties so that any object with these attributes (the
    dataclass, a namespace rebuilt from a saved run) is accepted.
    """

    @property
    def model(self) -> nn.Module: ...
    @property
    def policy(self) -> Any: ...
    @property
    def costs(self) -> Mapping[str, Mapping[str, Any]]: ...
    @property
    def accuracy(self) -> Mapping[str, float]: ...
    @property
    def history(self) -> History: ...
    @property
    def search(self) -> Any: ...
    @property
    def method(self) -> str: ...
    @property
    def granularity(self) -> str: ...
    @property
    def budget(self) -> str: ...
    @property
    def layers(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def seed(self) -> int: ...
    @property
    def timings(self) -> Mapping[str, float]: ...


# ============================================================== JSON and atomic files
def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy/torch scalars and arrays become numbers and
    lists, paths strings, dataclasses dicts, and non-finite floats ``None`` (strict JSON
    has no NaN; a reader such as ``jq`` or a browser rejects it)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, torch.Size):
        return [int(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    return repr(obj)


def _dumps(obj: Any, indent: int | None = 2) -> str:
    # allow_nan=False proves the conversion left no NaN behind.
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


@functools.cache
def _umask_mode() -> int:
    """Mode a plain ``open()`` would give a new file (``mkstemp`` would give 0600, which
    hides reports from colleagues and web servers). Read once: setting the umask to
    read it is process-wide."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename,
    so readers see the old file or the new one, never a partial one."""
    p = Path(path)
    with _temp_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    p = Path(path)
    atomic_write_bytes(p, text.encode("utf-8"))
    return p


def _atomic_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, _dumps(obj) + "\n")


@contextlib.contextmanager
def _temp_path(final: Path) -> Iterator[Path]:
    """A temp file next to ``final`` for writers that need a path; renamed on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# ============================================================================ log.jsonl
def _candidate_dict(candidate: Candidate | Mapping[str, Any]) -> dict[str, Any]:
    return candidate.to_dict() if isinstance(candidate, Candidate) else dict(candidate)


def append_log(path: str | os.PathLike[str], candidate: Candidate | Mapping[str, Any]) -> None:
    """Append one candidate as a JSON line to ``path`` and force it to disk.

    Meant for live logging during a search (e.g. from a method's callback): each line
    is complete once this returns, so a crash loses at most the candidate being
    evaluated. Non-finite numbers are written as ``null`` (see :func:`read_log`).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = _dumps(_candidate_dict(candidate), indent=None) + "\n"
    with open(p, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_log(path: str | os.PathLike[str], history: Iterable[Candidate]) -> Path:
    """Write every candidate of ``history`` as JSON lines, atomically."""
    text = "".join(_dumps(_candidate_dict(c), indent=None) + "\n" for c in history)
    return atomic_write_text(path, text)


_FLOAT_FIELDS = ("reward", "accuracy", "time")


def read_log(path: str | os.PathLike[str], rank: str = "reward") -> History:
    """Read a ``log.jsonl`` back into a :class:`History` (``null`` numbers become NaN).

    A truncated last line (a crash in the middle of :func:`append_log`) is skipped.
    """
    cands: list[Candidate] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
        for k in _FLOAT_FIELDS:
            if d.get(k) is None and k in d:
                d[k] = math.nan
        d["cost_ratios"] = [math.nan if v is None else v for v in d.get("cost_ratios", [])]
        d["costs"] = {k: math.nan if v is None else v for k, v in d.get("costs", {}).items()}
        cands.append(Candidate.from_dict(d))
    return History(cands, rank=rank)


# ============================================================================== versions
_PACKAGES = {
    "torch": "torch",
    "torch_pruning": "torch-pruning",
    "gymnasium": "gymnasium",
    "stable_baselines3": "stable-baselines3",
    "numpy": "numpy",
    "rlprune": "rlprune",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "matplotlib": "matplotlib",
}


def environment_info() -> dict[str, Any]:
    """Versions of Python and the packages that shape a result, plus the machine.

    Read from package metadata, so nothing heavy (SB3, gymnasium) is imported.
    """
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["torch"] = torch.__version__
    out["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return out


# ================================================================================= ONNX
def _as_tuple(example_input: ExampleInput) -> tuple[torch.Tensor, ...]:
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
    """Run the ONNX file with onnxruntime (CPU) and compare with PyTorch's outputs.

    Runs ``example_input`` and, with ``grow_batch``, a batch twice as large (for a
    dynamic batch axis). Returns ``{"max_abs_diff", "output_scale", "ok",
    "batch_sizes"}``: ``ok`` means ``max_abs_diff <= atol * max(1, output_scale)`` with
    ``output_scale`` the largest absolute PyTorch output, for every batch tried.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    model = model.eval()
    base = tuple(a.detach().cpu() for a in _as_tuple(example_input))
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
    args = tuple(a.detach().cpu() for a in _as_tuple(example_input))
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    errors: list[str] = []
    info: dict[str, Any] = {"ok": False, "path": dest.name}
    for exp in order:
        for dynamic in (True, False):
            try:
                with _temp_path(dest) as tmp, _quiet_exporter():
                    _export_to(m, args, tmp, exp, dynamic, opset)
                    res: dict[str, Any] = {}
                    if check:
                        res = check_onnx(tmp, m, args, atol=atol, grow_batch=dynamic)
                    import onnx

                    opset_used = next((o.version for o in onnx.load(str(tmp)).opset_import
                                       if o.domain in ("", "ai.onnx")), None)
            except Exception as e:  # any exporter failure is reported
                msg = _ANSI.sub("", str(e)).strip().splitlines()
                errors.append(f"{exp} ({'dynamic' if dynamic else 'static'} batch): "
                              f"{type(e).__name__}: {' '.join(msg[:3])[:400]}")
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


# ============================================================================ summaries
def _nan(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _fmt_acc(v: Any) -> str:
    f = _nan(v)
    return "–" if not math.isfinite(f) else f"{100 * f:.2f}%"


def _fmt_num(v: Any) -> str:
    f = _nan(v)
    if not math.isfinite(f):
        return "–"
    if f == int(f) and abs(f) < 1e15:
        return f"{int(f):,}"
    return f"{f:.4g}"


def _fmt_ratio(v: Any) -> str:
    f = _nan(v)
    return "–" if not math.isfinite(f) else f"{100 * f:.1f}%"


def _constraint_names(result: RunResult) -> list[str]:
    """Names of the budget's constraints (cost rows not marked ``reported_only``)."""
    return [n for n, c in result.costs.items() if not c.get("reported_only")]


def _model_name(result: RunResult) -> str:
    from rlprune.models import arch_spec

    model = getattr(result, "original", None) or result.model
    spec = arch_spec(model)
    return str(spec.get("name")) if spec and spec.get("name") else type(model).__name__


def _search_summary(result: RunResult) -> dict[str, Any]:
    search = result.search
    hist = result.history
    extra = dict(getattr(search, "extra", {}) or {})
    cands = list(hist)
    episodes = extra.get("episodes")
    if episodes is None:
        episodes = len({c.episode for c in cands})
    best = getattr(search, "best", None)
    return {
        "episodes": episodes,
        "evaluations": getattr(search, "evaluations", hist.evaluations),
        "candidates": len(cands),
        "cached": sum(1 for c in cands if c.extra.get("cached")),
        "feasible_candidates": sum(1 for c in cands if c.feasible),
        "wall_time_s": getattr(search, "wall_time", None),
        "best_found_at": getattr(search, "best_found_at", hist.best_found_at),
        "interrupted": bool(extra.get("interrupted", False)),
        "timesteps": extra.get("timesteps"),
        "multipliers": extra.get("multipliers"),
        "best": None if best is None else {
            "index": best.index, "episode": best.episode, "reward": best.reward,
            "accuracy": best.accuracy, "costs": best.costs, "cost_ratios": best.cost_ratios,
        },
        "projected": best is None or not np.allclose(
            np.asarray(best.policy, dtype=float), np.asarray(result.policy, dtype=float)),
    }


def run_report(
    result: RunResult,
    *,
    data_name: str | None = None,
    command: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    onnx_check: Mapping[str, Any] | None = None,
    include_versions: bool = True,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The content of ``report.json`` for ``result`` (JSON-ready: NaN is ``None``)."""
    names = _constraint_names(result)
    cmd = shlex.join(command) if command is not None and not isinstance(command, str) \
        else command
    rep: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_name(result),
        "method": result.method,
        "granularity": result.granularity,
        "budget": result.budget,
        "constraints": {n: {"limit": result.costs[n].get("limit"),
                            "original": result.costs[n].get("original")} for n in names},
        "feasible": all(bool(c.get("ok", True)) for c in result.costs.values()),
        "costs": {n: dict(c) for n, c in result.costs.items()},
        "accuracy": dict(result.accuracy),
        "search": _search_summary(result),
        "seed": result.seed,
        "timings": dict(result.timings),
        "data": data_name,
        "command": cmd,
        "config": dict(config) if config is not None else None,
        "onnx": dict(onnx_check) if onnx_check is not None else None,
        "num_layers": len(result.layers),
        "files": dict(files or {}),
    }
    if include_versions:
        rep["versions"] = environment_info()
    return to_jsonable(rep)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
              align: Sequence[str] | None = None) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    al = list(align) if align else ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---:" if a == "c" else "---" for a in al]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _summary_line(rep: Mapping[str, Any]) -> str:
    costs = rep["costs"]
    acc = rep["accuracy"]
    prefer = ["nonzero_params", "params"] if rep.get("granularity") == "weight" else ["params"]
    size = next((k for k in prefer if k in costs), next(iter(costs), None))
    what = (f"{_fmt_ratio(costs[size]['ratio'])} of {size}" if size
            else "an unmeasured size")
    if acc.get("original") is not None or acc.get("pruned") is not None:
        a, b, split = acc.get("original"), acc.get("pruned"), "test"
    else:
        a, b, split = acc.get("reward_original"), acc.get("reward_pruned"), "reward split"
    return (f"Pruned **{rep['model']}** with `{rep['method']}` ({rep['granularity']} pruning) "
            f"to **{what}**, {split} accuracy **{_fmt_acc(a)} → {_fmt_acc(b)}**.")


def report_markdown(rep: Mapping[str, Any], layers: Sequence[Mapping[str, Any]] = (),
                    plots: Mapping[str, str] | None = None) -> str:
    """``report.md``: the report for people, built from :func:`run_report`'s dict."""
    out = [f"# rlprune: {rep['model']}, {rep['method']} at {rep['budget']}", "",
           _summary_line(rep), ""]
    verdict = "all constraints met" if rep.get("feasible") else "**BUDGET VIOLATED**"
    out += [f"Budget `{rep['budget']}` ({verdict}); data `{rep.get('data') or '?'}`; "
            f"seed {rep.get('seed')}.", ""]
    if rep.get("command"):
        out += ["```", str(rep["command"]), "```", ""]

    out += ["## Costs", ""]
    rows = []
    for n, c in rep["costs"].items():
        ok = "–" if c.get("reported_only") else ("✓" if c.get("ok") else "✗")
        rows.append([n, _fmt_num(c.get("original")), _fmt_num(c.get("pruned")),
                     _fmt_ratio(c.get("ratio")),
                     "(reported only)" if c.get("reported_only") else _fmt_num(c.get("limit")),
                     ok])
    out += [_md_table(["cost", "original", "pruned", "pruned / original", "limit", "ok"], rows,
                      ["l", "r", "r", "r", "r", "c"]), ""]

    acc = rep["accuracy"]
    out += ["## Accuracy", "",
            _md_table(["split", "original", "pruned, before fine-tune", "pruned, after fine-tune"],
                      [["test", _fmt_acc(acc.get("original")),
                        _fmt_acc(acc.get("pruned_before_finetune")), _fmt_acc(acc.get("pruned"))],
                       ["reward (search)", _fmt_acc(acc.get("reward_original")),
                        _fmt_acc(acc.get("reward_pruned_before_finetune")),
                        _fmt_acc(acc.get("reward_pruned"))]]),
            "", "The search only ever sees the reward split; the test split is for this "
            "report only.", ""]

    s = rep["search"]
    t = rep.get("timings") or {}
    best = s.get("best")
    out += ["## Search", ""]
    items = [
        ("episodes", s.get("episodes")), ("candidates evaluated", s.get("evaluations")),
        ("candidates (incl. cache hits)", s.get("candidates")),
        ("feasible candidates", s.get("feasible_candidates")),
        ("best found at evaluation", s.get("best_found_at") or "– (none feasible)"),
        ("search wall time", f"{_nan(s.get('wall_time_s')):.1f} s"),
        ("interrupted", "yes" if s.get("interrupted") else "no"),
        ("returned policy", "projected onto the budget" if s.get("projected")
         else "the best candidate"),
    ]
    if best:
        items.append(("best candidate", f"#{best['index'] + 1}: reward {_nan(best['reward']):.4g},"
                      f" reward-split accuracy {_fmt_acc(best['accuracy'])}"))
    if s.get("multipliers"):
        items.append(("final multipliers", ", ".join(f"{_nan(v):.3g}" for v in s["multipliers"])))
    for k in ("setup_s", "search_s", "finetune_s", "total_s"):
        if k in t:
            items.append((k.replace("_s", " time"), f"{_nan(t[k]):.1f} s"))
    out += [f"- {k}: {v}" for k, v in items] + [""]

    onnx_info = rep.get("onnx")
    if onnx_info:
        out += ["## Exports", ""]
        out += ["- `pruned.pt`: `rlprune.load(\"pruned.pt\")` returns the ready model."]
        if onnx_info.get("ok"):
            out += [f"- `pruned.onnx`: {onnx_info.get('exporter')} exporter, opset "
                    f"{onnx_info.get('opset')}, "
                    f"{'dynamic' if onnx_info.get('dynamic_batch') else 'static'} batch; "
                    f"onnxruntime vs PyTorch max |diff| = {_nan(onnx_info.get('max_abs_diff')):.2g}"
                    f" (tolerance {onnx_info.get('atol')} × max(1, largest |output| = "
                    f"{_nan(onnx_info.get('output_scale')):.3g}))."]
        else:
            out += [f"- ONNX export **failed**: {onnx_info.get('error')}"]
        out += [""]

    if layers:
        unit = layers[0].get("unit", "width")
        out += ["## Layers", ""]
        rows = []
        for r in layers:
            b, a = _nan(r.get("before")), _nan(r.get("after"))
            kept = a / b if b else math.nan
            rows.append([r.get("index", ""), f"`{r.get('name', '')}`", r.get("kind", ""),
                         f"{_nan(r.get('ratio')):.3f}", _fmt_num(b), _fmt_num(a),
                         _fmt_ratio(kept)])
        out += [_md_table(["#", "layer", "kind", "prune ratio", f"{unit} before",
                           f"{unit} after", "kept"], rows,
                          ["r", "l", "l", "r", "r", "r", "r"]), ""]

    if plots:
        out += ["## Plots", ""]
        titles = {"layers": "Per-layer widths", "search": "Search curves",
                  "candidates": "Candidates: accuracy vs cost"}
        for k, rel in plots.items():
            out += [f"### {titles.get(k, k)}", "", f"![{k}]({rel})", ""]

    v = rep.get("versions")
    if v:
        pk = ", ".join(f"{k} {val}" for k, val in v.items() if k != "machine" and val)
        out += ["## Environment", "", pk + "."]
        mach = v.get("machine") or {}
        if mach:
            out += ["", f"Machine: {mach.get('platform')}, {mach.get('cpu_count')} CPUs, "
                    f"{mach.get('torch_threads')} torch threads"
                    + (f", GPU {mach['cuda']}" if mach.get("cuda") else "") + "."]
        out += [""]
    return "\n".join(out).rstrip() + "\n"


# ================================================================================ plots
def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save_fig(fig: Figure, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p


def plot_layers(layers: Sequence[Mapping[str, Any]], path: str | os.PathLike[str],
                title: str | None = None) -> Path:
    """Per-layer width (channel pruning) or weight density (weight pruning), before vs after.

    A grouped bar chart, one group per prunable layer in network order, so that where
    the pruning went (early vs late, wide vs narrow layers) is visible at a glance.
    """
    if not layers:
        raise ValueError("no layers to plot")
    n = len(layers)
    names = [str(r.get("name", i)) for i, r in enumerate(layers)]
    weight = layers[0].get("unit") == "nonzero weights" or "numel" in layers[0]
    before = np.array([_nan(r.get("before")) for r in layers])
    after = np.array([_nan(r.get("after")) for r in layers])
    if weight:
        numel = np.array([_nan(r.get("numel", r.get("before"))) for r in layers])
        before, after = 100 * before / numel, 100 * after / numel
        ylabel = "nonzero weights (% of the tensor)"
    else:
        ylabel = "output channels (count)"
    fig = _figure(min(30.0, max(9.0, 0.45 * n + 3)), 5.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    w = 0.4
    ax.bar(x - w / 2, before, w, label="original", color="#9db4d0", edgecolor="#4c72b0")
    bars = ax.bar(x + w / 2, after, w, label="pruned", color="#dd8452", edgecolor="#8c4a1c")
    if n <= 40:
        for rect, b, a in zip(bars, before, after):
            kept = a / b if b else math.nan
            if math.isfinite(kept):
                ax.annotate(f"{100 * kept:.0f}%", (rect.get_x() + rect.get_width() / 2, a),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45 if n <= 20 else 70, ha="right", fontsize=8)
    ax.set_xlabel("prunable layer (network order)")
    ax.set_ylabel(ylabel)
    if weight:
        ax.set_ylim(0, 110)
    ax.set_title(title or ("Weight density per layer" if weight else "Width per layer")
                 + " (labels: % kept)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    return _save_fig(fig, path)


def _best_so_far(cands: Sequence[Candidate], rank: str) -> np.ndarray:
    out = np.full(len(cands), np.nan)
    best = -math.inf
    for i, c in enumerate(cands):
        v = c.accuracy if rank == "accuracy" else c.reward
        if c.feasible and math.isfinite(_nan(v)):
            best = max(best, float(v))
        if math.isfinite(best):
            out[i] = best
    return out


def _rolling(y: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(y), np.nan)
    for i in range(len(y)):
        win = y[max(0, i - k + 1): i + 1]
        win = win[np.isfinite(win)]
        if len(win):
            out[i] = win.mean()
    return out


def plot_search(history: History, path: str | os.PathLike[str],
                constraint_names: Sequence[str] | None = None,
                title: str | None = None) -> Path:
    """Search curves over evaluated candidates (x = evaluation number).

    Panels, sharing x: the reward of every candidate with the best feasible so far;
    each constraint's value / limit with the limit at 1.0; and each Lagrange
    multiplier when candidates carry ``extra["multipliers"]`` (constrained methods).
    """
    cands = list(history)
    if not cands:
        raise ValueError("the history is empty: nothing to plot")
    m = max(len(c.cost_ratios) for c in cands)
    names = list(constraint_names or list(cands[0].costs)[:m])
    names += [f"constraint {i}" for i in range(len(names), m)]
    has_nu = any(c.extra.get("multipliers") for c in cands)
    n_panels = 2 + int(has_nu)
    fig = _figure(10.0, 2.9 * n_panels + 0.6)
    axes: list[Axes] = list(fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0])
    x = np.array([c.index + 1 for c in cands])
    feas = np.array([c.feasible for c in cands])
    reward = np.array([_nan(c.reward) for c in cands])
    marker = "o" if len(cands) <= 300 else "."

    ax = axes[0]
    ax.plot(x, reward, color="#bbbbbb", lw=0.8, zorder=1)
    if feas.any():
        ax.scatter(x[feas], reward[feas], s=16, marker=marker, color="#2a9d8f",
                   label=f"feasible ({int(feas.sum())})", zorder=2)
    if (~feas).any():
        ax.scatter(x[~feas], reward[~feas], s=16, marker="x", color="#e76f51",
                   label=f"infeasible ({int((~feas).sum())})", zorder=2)
    if len(cands) >= 20:
        ax.plot(x, _rolling(reward, max(5, len(cands) // 20)), color="#264653", lw=1.2,
                label="moving mean")
    bsf = _best_so_far(cands, history.rank)
    if np.isfinite(bsf).any():
        ax.step(x, bsf, where="post", color="#f4a261", lw=2,
                label=f"best feasible so far ({history.rank})")
    best = history.best
    if best is not None:
        ax.scatter([best.index + 1], [best.reward], s=220, marker="*", color="#f4a261",
                   edgecolor="k", zorder=5, label=f"chosen (#{best.index + 1})")
    ax.set_ylabel("reward")
    ax.set_title(title or f"Search: {len(cands)} candidates")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for i, name in enumerate(names):
        y = np.array([_nan(c.cost_ratios[i]) if i < len(c.cost_ratios) else np.nan
                      for c in cands])
        ax.plot(x, y, marker=marker, ms=3, lw=0.8, label=name)
    ax.axhline(1.0, color="k", ls="--", lw=1.2, label="limit")
    ax.set_ylabel("value / limit (≤ 1 feasible)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    if has_nu:
        ax = axes[2]
        for i, name in enumerate(names):
            y = np.array([_nan((c.extra.get("multipliers") or [])[i])
                          if i < len(c.extra.get("multipliers") or []) else np.nan
                          for c in cands])
            ax.step(x, y, where="post", label=f"ν {name}")
        ax.set_ylim(bottom=0.0)  # multipliers are projected onto ν >= 0
        ax.set_ylabel("Lagrange multiplier ν")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(cands) < 10:
        axes[-1].set_xlim(0.5, float(x.max()) + 0.5)
    axes[-1].set_xlabel("candidate (evaluation number)")
    return _save_fig(fig, path)


def plot_candidates(result: RunResult, path: str | os.PathLike[str],
                    title: str | None = None) -> Path:
    """Reward-split accuracy vs each constraint's value / limit, one point per candidate.

    Feasible and infeasible candidates are coloured differently, the budget is the
    vertical line at 1.0, the unpruned model is a diamond and the chosen (best
    feasible) candidate a labelled star: the trade-off the search explored in one view.
    """
    cands = list(result.history)
    names = _constraint_names(result) or (list(cands[0].costs) if cands else [])
    if not names:
        raise ValueError("no constraints to plot")
    k = len(names)
    fig = _figure(max(8.0, 5.0 * k), 5.5)
    axes: list[Axes] = list(fig.subplots(1, k, squeeze=False, sharey=True)[0])
    acc = result.accuracy
    best = getattr(result.search, "best", None)
    for i, (ax, name) in enumerate(zip(axes, names)):
        xs = np.array([_nan(c.cost_ratios[i]) if i < len(c.cost_ratios) else np.nan
                       for c in cands])
        ys = np.array([_nan(c.accuracy) for c in cands])
        feas = np.array([c.feasible for c in cands], dtype=bool)
        if feas.any():
            ax.scatter(xs[feas], ys[feas], s=22, color="#2a9d8f", alpha=0.75,
                       label=f"feasible ({int(feas.sum())})")
        if (~feas).any():
            ax.scatter(xs[~feas], ys[~feas], s=22, marker="x", color="#e76f51", alpha=0.75,
                       label=f"infeasible ({int((~feas).sum())})")
        ax.axvline(1.0, color="k", ls="--", lw=1.2, label="budget (limit)")
        cost = result.costs.get(name, {})
        lim = _nan(cost.get("limit"))
        if math.isfinite(lim) and lim > 0 and math.isfinite(_nan(acc.get("reward_original"))):
            ax.scatter([_nan(cost.get("original")) / lim], [acc["reward_original"]], s=70,
                       marker="D", facecolor="none", edgecolor="#264653", lw=1.5,
                       label="unpruned")
        if best is not None and i < len(best.cost_ratios):
            bx, by, lab = best.cost_ratios[i], best.accuracy, "chosen"
        elif math.isfinite(lim) and lim > 0:
            bx = _nan(cost.get("pruned")) / lim
            by, lab = _nan(acc.get("reward_pruned_before_finetune")), "returned (projected)"
        else:
            bx = by = math.nan
        if math.isfinite(_nan(bx)) and math.isfinite(_nan(by)):
            ax.scatter([bx], [by], s=260, marker="*", color="#f4a261", edgecolor="k", zorder=5,
                       label=lab)
            ax.annotate(f"{lab}\nacc {100 * by:.1f}%, {bx:.2f}× limit", (bx, by),
                        xytext=(-12, -12), textcoords="offset points", ha="right", va="top",
                        fontsize=8, bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
        ax.set_xlabel(f"{name}: value / limit (≤ 1 feasible)")
        ax.set_title(f"{name} (limit {_fmt_num(lim)})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("accuracy on the reward split (fraction)")
    fig.suptitle(title or f"{result.method}: {len(cands)} candidates, accuracy vs cost")
    return _save_fig(fig, path)


# ============================================================================ write_run
def write_run(
    out_dir: str | os.PathLike[str],
    result: RunResult,
    *,
    data_name: str | None = None,
    command: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    example_input: ExampleInput | None = None,
    versions: bool = True,
    plots: bool = True,
    onnx: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the run folder for ``result`` (see the module docstring); return the paths.

    ``example_input`` (one batch the model accepts; default ``result.example_input`` if
    the result has one) is needed for the ONNX export; without it the export is skipped
    and the report says why. An export or plot that fails is recorded in
    ``report.json`` (``onnx.error``, ``plot_errors``) rather than losing the run. Keys
    of the returned dict: ``model``, ``onnx``, ``policy``, ``log``, ``plot_layers``,
    ``plot_search``, ``plot_candidates``, ``report_json``, ``report_md`` (those written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if example_input is None:
        example_input = getattr(result, "example_input", None)
    model = result.model

    # plots
    plot_rel: dict[str, str] = {}
    plot_errors: dict[str, str] = {}
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        jobs = [
            ("layers", lambda p: plot_layers(result.layers, p,
                                             title=f"{_model_name(result)}: per-layer "
                                             + ("weight density" if result.granularity
                                                == "weight" else "width")
                                             + " before vs after (labels: % kept)")),
            ("search", lambda p: plot_search(result.history, p, _constraint_names(result),
                                             title=f"{result.method} search on "
                                             f"{_model_name(result)}, budget {result.budget}")),
            ("candidates", lambda p: plot_candidates(result, p)),
        ]
        for key, fn in jobs:
            rel = f"plots/{key}.png"
            try:
                paths[f"plot_{key}"] = fn(out / rel)
                plot_rel[key] = rel
            except Exception as e:  # a plot must not lose the run
                plot_errors[key] = f"{type(e).__name__}: {e}"
                warnings.warn(f"plot {key} failed: {e}", RuntimeWarning, stacklevel=2)

    # exports
    onnx_info: dict[str, Any] | None = None
    if onnx:
        if example_input is None:
            onnx_info = {"ok": False, "error": "no example input given: ONNX export skipped"}
        else:
            onnx_info = export_onnx(model, example_input, out / "pruned.onnx")
            if (out / "pruned.onnx").exists() and "exporter" in onnx_info:
                paths["onnx"] = out / "pruned.onnx"
    ckpt_meta = to_jsonable({
        "source": "rlprune.report.write_run", "method": result.method,
        "granularity": result.granularity, "budget": result.budget,
        "policy": result.policy, "costs": result.costs, "accuracy": result.accuracy,
        "data": data_name, "seed": result.seed,
        "example_input_shape": None if example_input is None else
        [list(a.shape) for a in _as_tuple(example_input)],
        **dict(meta or {}),
    })
    save_checkpoint(out / "pruned.pt", model, ckpt_meta)
    os.chmod(out / "pruned.pt", _umask_mode())  # train's atomic writer leaves 0600
    paths["model"] = out / "pruned.pt"

    # policy and log
    paths["policy"] = _atomic_json(out / "policy.json", {
        "method": result.method, "granularity": result.granularity, "budget": result.budget,
        "policy": result.policy, "layers": list(result.layers),
    })
    paths["log"] = write_log(out / "log.jsonl", result.history)

    files = {k: p.relative_to(out).as_posix() for k, p in paths.items()}
    files.update(report_json="report.json", report_md="report.md")
    rep = run_report(result, data_name=data_name, command=command, config=config,
                     onnx_check=onnx_info, include_versions=versions, files=files)
    if plot_errors:
        rep["plot_errors"] = plot_errors
    paths["report_json"] = _atomic_json(out / "report.json", rep)
    paths["report_md"] = atomic_write_text(out / "report.md",
                                           report_markdown(rep, result.layers, plot_rel))
    return paths


# ============================================================================= compare
def compare_row(result: RunResult) -> dict[str, Any]:
    """One row of a comparison table from a run result (the keys :func:`compare_table`
    reads)."""
    acc = result.accuracy
    return {
        "method": result.method,
        "costs": {n: {k: c.get(k) for k in ("pruned", "ratio", "limit", "ok", "reported_only")
                      if k in c} for n, c in result.costs.items()},
        "reward_acc_before_ft": acc.get("reward_pruned_before_finetune", math.nan),
        "test_acc_before_ft": acc.get("pruned_before_finetune", math.nan),
        "test_acc_after_ft": acc.get("pruned", math.nan),
        "reward_acc_after_ft": acc.get("reward_pruned", math.nan),
        "evaluations": getattr(result.search, "evaluations", None),
        "best_found_at": getattr(result.search, "best_found_at", None),
        "search_s": result.timings.get("search_s", getattr(result.search, "wall_time", None)),
        "time_to_best_s": getattr(getattr(result.search, "best", None), "time", None),
        "feasible": all(bool(c.get("ok", True)) for c in result.costs.values()),
    }


def _compare_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for n in r.get("costs", {}):
            if n not in names:
                names.append(n)
    return names


def _cost_cell(c: Mapping[str, Any] | None) -> str:
    if not c:
        return "–"
    mark = "" if c.get("reported_only") or "ok" not in c else (" ✓" if c["ok"] else " ✗")
    return f"{_fmt_num(c.get('pruned'))} ({_fmt_ratio(c.get('ratio'))}){mark}"


def _compare_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = _compare_columns(rows)
    header = ["method", *names, "reward acc (before FT)", "test acc (before FT)",
              "test acc (after FT)", "evaluations", "best found at", "time to best",
              "search time"]
    body = []
    for r in rows:
        costs = r.get("costs", {})
        s = _nan(r.get("search_s"))
        tb = _nan(r.get("time_to_best_s"))
        body.append([str(r.get("method", "?")), *[_cost_cell(costs.get(n)) for n in names],
                     _fmt_acc(r.get("reward_acc_before_ft")), _fmt_acc(r.get("test_acc_before_ft")),
                     _fmt_acc(r.get("test_acc_after_ft")),
                     _fmt_num(r.get("evaluations")), _fmt_num(r.get("best_found_at")),
                     "–" if not math.isfinite(tb) else f"{tb:.1f} s",
                     "–" if not math.isfinite(s) else f"{s:.1f} s"])
    return header, body


def _header_line(original: Mapping[str, Any] | None, budget: str | None) -> str:
    parts = []
    if budget:
        parts.append(f"budget {budget}")
    if original:
        if "test" in original:
            parts.append(f"unpruned test accuracy {_fmt_acc(original['test'])}")
        if "reward" in original:
            parts.append(f"unpruned reward-split accuracy {_fmt_acc(original['reward'])}")
    return "; ".join(parts)


def compare_table(rows: Sequence[Mapping[str, Any]], *,
                  original: Mapping[str, Any] | None = None, budget: str | None = None) -> str:
    """Markdown table of methods side by side: each cost (value, % of original, ✓/✗),
    accuracies before/after fine-tune, evaluations, best-found-at and search time.

    ``original`` may hold the unpruned ``test`` and ``reward`` accuracies, shown above
    the table with the ``budget``.
    """
    header, body = _compare_cells(rows)
    out = []
    line = _header_line(original, budget)
    if line:
        out += [line[0].upper() + line[1:] + ".", ""]
    out.append(_md_table(header, body))
    return "\n".join(out) + "\n"


def format_compare_console(rows: Sequence[Mapping[str, Any]], *,
                           original: Mapping[str, Any] | None = None,
                           budget: str | None = None) -> str:
    """The comparison as a fixed-width text table for a terminal."""
    header, body = _compare_cells(rows)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = []
    line = _header_line(original, budget)
    if line:
        lines.append(line)
    lines += [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in body]
    return "\n".join(lines) + "\n"


def plot_compare(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                 original: Mapping[str, Any] | None = None,
                 title: str | None = None) -> Path:
    """Test accuracy per method, before (light) and after (dark) fine-tune, with the
    unpruned model's accuracy as a dashed line."""
    if not rows:
        raise ValueError("no rows to plot")
    n = len(rows)
    methods = [str(r.get("method", "?")) for r in rows]
    before = np.array([_nan(r.get("test_acc_before_ft")) for r in rows]) * 100
    after = np.array([_nan(r.get("test_acc_after_ft")) for r in rows]) * 100
    fig = _figure(max(8.0, 1.3 * n + 3), 5.0)
    ax = fig.add_subplot()
    x = np.arange(n)
    w = 0.38
    bars_b = ax.bar(x - w / 2, np.nan_to_num(before), w, color="#9db4d0",
                    label="before fine-tune")
    bars_a = ax.bar(x + w / 2, np.nan_to_num(after), w, color="#4c72b0", label="after fine-tune")
    for bars, vals, weight in ((bars_b, before, "normal"), (bars_a, after, "bold")):
        for rect, v in zip(bars, vals):
            ax.annotate("n/a" if not math.isfinite(v) else f"{v:.1f}",
                        (rect.get_x() + rect.get_width() / 2, 0 if not math.isfinite(v) else v),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8, fontweight=weight)
    ref = _nan((original or {}).get("test"))
    if math.isfinite(ref):
        ax.axhline(100 * ref, color="#e76f51", ls="--", lw=1.5,
                   label=f"unpruned ({100 * ref:.1f}%)")
    ax.set_xticks(x)
    ax.set_xticklabels(methods)
    ax.set_xlabel("method")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title or "Test accuracy per method")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3)  # below the axes: never covers a bar
    return _save_fig(fig, path)


def write_compare(
    out_dir: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    original: Mapping[str, Any] | None = None,
    budget: str | None = None,
    data_name: str | None = None,
    model_name: str | None = None,
    command: str | Sequence[str] | None = None,
    versions: bool = True,
    plots: bool = True,
) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` atomically; return paths
    (keys ``md``, ``json``, ``plot``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = shlex.join(command) if command is not None and not isinstance(command, str) \
        else command
    title_bits = [b for b in (model_name, data_name, budget) if b]
    paths: dict[str, Path] = {}
    if plots:
        paths["plot"] = plot_compare(rows, out / "compare.png", original=original,
                                     title="Test accuracy per method"
                                     + (f" ({', '.join(title_bits)})" if title_bits else ""))
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name, "data": data_name, "budget": budget, "command": cmd,
        "original": dict(original or {}), "rows": [dict(r) for r in rows],
    }
    if versions:
        doc["versions"] = environment_info()
    paths["json"] = _atomic_json(out / "compare.json", doc)
    md = ["# rlprune comparison" + (f": {', '.join(title_bits)}" if title_bits else ""), ""]
    if cmd:
        md += ["```", cmd, "```", ""]
    md += [compare_table(rows, original=original, budget=budget)]
    md += ["Costs: value (% of the unpruned model), ✓ = constraint met. Accuracies before "
           "fine-tune on the reward split are what each search optimised.", ""]
    if plots:
        md += ["![compare](compare.png)", ""]
    paths["md"] = atomic_write_text(out / "compare.md", "\n".join(md))
    return paths
