"""Run reports: what a user reads and keeps after a pruning run or a comparison.

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

This module owns what a report *says* (:func:`run_report`, :func:`report_markdown`,
the comparison tables, :func:`environment_info`) and assembles the folder; the parts
live by their names: atomic writes and strict JSON in :mod:`rlprune.fileio`, the run
log in :mod:`rlprune.runlog`, ONNX in :mod:`rlprune.export`, figures in
:mod:`rlprune.plots`, number formats in :mod:`rlprune.display`. Every file is
written atomically, so an interrupted run never leaves a half-written report that
looks complete. This module sits to the right of the search and left of
``api``/``cli`` in the architecture: it takes results duck-typed (see
:class:`RunResult`) and never imports :mod:`rlprune.api`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from rlprune.display import as_float, constraint_names, fmt_acc, fmt_num, fmt_ratio
from rlprune.export import ExampleInput, as_tuple, export_onnx
from rlprune.fileio import atomic_write_json, atomic_write_text, to_jsonable
from rlprune.history import History
from rlprune.plots import plot_candidates, plot_compare, plot_layers, plot_search
from rlprune.runlog import write_log
from rlprune.train import save_checkpoint

__all__ = [
    "RunResult",
    "write_run",
    "run_report",
    "report_markdown",
    "compare_row",
    "compare_table",
    "format_compare_console",
    "write_compare",
    "environment_info",
    "REPORT_FORMAT",
]

#: Version tag of ``report.json`` / ``compare.json``; bump it when keys change meaning.
REPORT_FORMAT = "rlprune-report-1"


class RunResult(Protocol):
    """What :func:`write_run` reads from a run: the fields of ``rlprune.api.PruneResult``.

    Declared as read-only properties so that any object with these attributes (the
    dataclass, a namespace rebuilt from a saved run) is accepted.
    """

    @property
    def model(self) -> nn.Module:
        """The pruned model."""
    @property
    def policy(self) -> Any:
        """The per-entry prune ratios."""
    @property
    def costs(self) -> Mapping[str, Mapping[str, Any]]:
        """Per cost: original, pruned, ratio, limit, ok."""
    @property
    def accuracy(self) -> Mapping[str, float]:
        """Accuracies of the original and the pruned model (test and reward split)."""
    @property
    def history(self) -> History:
        """Every candidate the search evaluated."""
    @property
    def search(self) -> Any:
        """The search's own result (a ``SearchResult``)."""
    @property
    def method(self) -> str:
        """The method's id."""
    @property
    def granularity(self) -> str:
        """``"channel"`` or ``"weight"``."""
    @property
    def budget(self) -> str:
        """The budget's text."""
    @property
    def layers(self) -> Sequence[Mapping[str, Any]]:
        """Each entry before and after pruning."""
    @property
    def seed(self) -> int:
        """The run's seed."""
    @property
    def timings(self) -> Mapping[str, float]:
        """Seconds of setup, search, fine-tune and in total."""


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


# ============================================================================ summaries
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
        # a noisy budget: whether the noise rule moved the best candidate after the
        # search, and the wider margins of each settling after a failed final check
        "settled": extra.get("settled"),
        "resettled": [float(r["margin"]) for r in extra.get("resettled") or []],
        # final checks that failed on a noisy cost and passed when measured again
        "final_rechecked": int(extra.get("final_rechecked", 0)),
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
    """The content of ``report.json`` for ``result`` (JSON-ready: NaN is ``None``).

    Recorded alongside the result: ``data_name`` (the dataset), ``command`` (the
    command line, a string or its words), ``config`` (the run's settings),
    ``onnx_check`` (what :func:`~rlprune.export.export_onnx` returned), ``files``
    (the run's files by key) and, with ``include_versions``, the package versions
    (:func:`environment_info`). ``left_out`` lists the layers the pruning space left
    out and why (the result's ``left_out``, when it has one).
    """
    names = constraint_names(result.costs)
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
        # every layer the pruning space left out, and why (a result without the field,
        # such as one rebuilt from an older run, reports none)
        "left_out": [dict(r) for r in getattr(result, "left_out", None) or []],
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
    what = (f"{fmt_ratio(costs[size]['ratio'])} of {size}" if size
            else "an unmeasured size")
    if acc.get("original") is not None or acc.get("pruned") is not None:
        a, b, split = acc.get("original"), acc.get("pruned"), "test"
    else:
        a, b, split = acc.get("reward_original"), acc.get("reward_pruned"), "reward split"
    return (f"Pruned **{rep['model']}** with `{rep['method']}` ({rep['granularity']} pruning) "
            f"to **{what}**, {split} accuracy **{fmt_acc(a)} → {fmt_acc(b)}**.")


def _noise_lines(costs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per noisy cost: what was measured, its upper bound, the margin and the limit."""
    out = []
    for n, c in costs.items():
        noise = c.get("noise")
        if not noise:
            continue
        m = noise["measured"]
        line = (f"- `{n}` is noisy: {m['n']:.0f} measurements of the pruned model, median "
                f"{fmt_num(m['median'])} (sd {fmt_num(m['sd'])}, {fmt_num(m['low'])} to "
                f"{fmt_num(m['high'])}); upper bound {fmt_num(m['bound'])} (mean + "
                f"{noise['z']:g} sd x sqrt(1 + 1/n), at least the largest), accepted at "
                f"most {fmt_num(noise['accept_at'])}: the "
                f"limit {fmt_num(c.get('limit'))} less a {100 * noise['margin']:g}% margin")
        o = noise.get("original")
        if o:
            line += (f"; the original's median {fmt_num(o['median'])} over {o['n']:.0f} "
                     f"measurements (sd {fmt_num(o['sd'])}) resolved the limit")
        r = noise.get("reference")
        if r and o:
            line += (f"; checked beside the original, which measured median "
                     f"{fmt_num(r['median'])} this time, so the pruned model's values are "
                     f"scaled by {fmt_num(o['median'])} / {fmt_num(r['median'])}: the ratio "
                     "to the original is what is checked")
        out.append(line + ".")
    return out + [""] if out else []


def _returned_how(s: Mapping[str, Any]) -> str:
    """How the returned policy relates to the search's best candidate, in words."""
    again = s.get("resettled") or []
    after = (f"; settled again after fine-tuning at a "
             f"{' then '.join(f'{100 * as_float(m):g}%' for m in again)} margin, because the "
             "final check failed" if again else "")
    n = int(s.get("final_rechecked") or 0)
    if n:
        after += (f"; {n} final check{'s' if n > 1 else ''} failed on a noisy cost and "
                  "passed when measured again")
    if s.get("settled"):
        return ("the best candidate, moved toward heavier pruning until the noise rule "
                "accepted it (during the search it passed on one measurement)" + after)
    if again:
        return "the best candidate" + after
    return ("projected onto the budget" if s.get("projected") else "the best candidate") + after


def report_markdown(rep: Mapping[str, Any], layers: Sequence[Mapping[str, Any]] = (),
                    plots: Mapping[str, str] | None = None) -> str:
    """``report.md``: the report for people, built from :func:`run_report`'s dict ``rep``.

    ``layers`` (the result's per-entry rows) add the per-layer table and ``plots``
    (``{key: relative path}``) embed the plots.
    """
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
        rows.append([n, fmt_num(c.get("original")), fmt_num(c.get("pruned")),
                     fmt_ratio(c.get("ratio")),
                     "(reported only)" if c.get("reported_only") else fmt_num(c.get("limit")),
                     ok])
    out += [_md_table(["cost", "original", "pruned", "pruned / original", "limit", "ok"], rows,
                      ["l", "r", "r", "r", "r", "c"]), ""]
    # how measured costs were measured (a latency's runtime, batch size, threads, table)
    out += [f"- `{n}`: {c['settings']}." for n, c in rep["costs"].items() if c.get("settings")]
    out += [""] if any(c.get("settings") for c in rep["costs"].values()) else []
    out += _noise_lines(rep["costs"])

    acc = rep["accuracy"]
    out += ["## Accuracy", "",
            _md_table(["split", "original", "pruned, before fine-tune", "pruned, after fine-tune"],
                      [["test", fmt_acc(acc.get("original")),
                        fmt_acc(acc.get("pruned_before_finetune")), fmt_acc(acc.get("pruned"))],
                       ["reward (search)", fmt_acc(acc.get("reward_original")),
                        fmt_acc(acc.get("reward_pruned_before_finetune")),
                        fmt_acc(acc.get("reward_pruned"))]]),
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
        ("search wall time", f"{as_float(s.get('wall_time_s')):.1f} s"),
        ("interrupted", "yes" if s.get("interrupted") else "no"),
        ("returned policy", _returned_how(s)),
    ]
    if best:
        limits = {n: c.get("limit") for n, c in (rep.get("constraints") or {}).items()}
        where = [f"{n} {as_float(v) / as_float(limits[n]):.3f} x its limit"
                 for n, v in (best.get("costs") or {}).items() if limits.get(n)]
        items.append(("best candidate",
                      f"#{best['index'] + 1}: reward {as_float(best['reward']):.4g},"
                      f" reward-split accuracy {fmt_acc(best['accuracy'])}"
                      + (f" ({', '.join(where)}, as measured during the search)"
                         if where else "")))
    if s.get("multipliers"):
        items.append(("final multipliers",
                      ", ".join(f"{as_float(v):.3g}" for v in s["multipliers"])))
    for k in ("setup_s", "search_s", "finetune_s", "total_s"):
        if k in t:
            items.append((k.replace("_s", " time"), f"{as_float(t[k]):.1f} s"))
    out += [f"- {k}: {v}" for k, v in items] + [""]

    onnx_info = rep.get("onnx")
    if onnx_info:
        out += ["## Exports", ""]
        out += ["- `pruned.pt`: `rlprune.load(\"pruned.pt\")` returns the ready model."]
        if onnx_info.get("ok"):
            out += [f"- `pruned.onnx`: {onnx_info.get('exporter')} exporter, opset "
                    f"{onnx_info.get('opset')}, "
                    f"{'dynamic' if onnx_info.get('dynamic_batch') else 'static'} batch; "
                    "onnxruntime vs PyTorch max |diff| = "
                    f"{as_float(onnx_info.get('max_abs_diff')):.2g}"
                    f" (tolerance {onnx_info.get('atol')} × max(1, largest |output| = "
                    f"{as_float(onnx_info.get('output_scale')):.3g}))."]
        else:
            out += [f"- ONNX export **failed**: {onnx_info.get('error')}"]
        out += [""]

    if layers:
        unit = layers[0].get("unit", "width")
        out += ["## Layers", ""]
        rows = []
        for r in layers:
            b, a = as_float(r.get("before")), as_float(r.get("after"))
            kept = a / b if b else math.nan
            kind = str(r.get("kind", ""))
            if "heads_before" in r:  # whole attention heads
                kind += f", heads {r['heads_before']} → {r.get('heads_after')}"
            elif r.get("groups"):  # the same channels removed from every group
                kind += f", even over {r['groups']} groups"
            rows.append([r.get("index", ""), f"`{r.get('name', '')}`", kind,
                         f"{as_float(r.get('ratio')):.3f}", fmt_num(b), fmt_num(a),
                         fmt_ratio(kept)])
        out += [_md_table(["#", "layer", "kind", "prune ratio", f"{unit} before",
                           f"{unit} after", "kept"], rows,
                          ["r", "l", "l", "r", "r", "r", "r"]), ""]

    left_out = rep.get("left_out") or []
    if left_out:
        out += ["## Layers left out", "",
                "Layers (or parameters) that no pruning entry shrinks, and why.", "",
                _md_table(["layer", "type", "reason"],
                          [[f"`{r.get('name', '')}`", r.get("type", ""), r.get("reason", "")]
                           for r in left_out], ["l", "l", "l"]), ""]

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
    """Write the run folder ``out_dir`` for ``result`` (see the module docstring); return
    the paths.

    ``data_name``, ``command`` and ``config`` are recorded in the report (as
    :func:`run_report` does, with the package versions when ``versions``); ``plots`` and
    ``onnx`` choose whether the PNG plots and ``pruned.onnx`` are written; ``meta`` is
    added to the checkpoint's metadata.

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
        jobs: list[tuple[str, Callable[[Path], Path]]] = [
            ("layers", lambda p: plot_layers(result.layers, p,
                                             title=f"{_model_name(result)}: per-layer "
                                             + ("weight density" if result.granularity
                                                == "weight" else "width")
                                             + " before vs after (labels: % kept)")),
            ("search", lambda p: plot_search(result.history, p, constraint_names(result.costs),
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
        [list(a.shape) for a in as_tuple(example_input)],
        **dict(meta or {}),
    })
    save_checkpoint(out / "pruned.pt", model, ckpt_meta)
    paths["model"] = out / "pruned.pt"

    # policy and log
    paths["policy"] = atomic_write_json(out / "policy.json", {
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
    paths["report_json"] = atomic_write_json(out / "report.json", rep)
    paths["report_md"] = atomic_write_text(out / "report.md",
                                           report_markdown(rep, result.layers, plot_rel))
    return paths


# ============================================================================= compare
def compare_row(result: RunResult) -> dict[str, Any]:
    """One row of a comparison table from a run result (the keys :func:`compare_table`
    reads). ``evaluations`` counts candidates scored; ``candidates`` also counts the
    repeats a search proposed, answered from its cache."""
    acc = result.accuracy
    return {
        "method": result.method,
        "costs": {n: {k: c.get(k) for k in ("pruned", "ratio", "limit", "ok", "reported_only",
                                            "noise")
                      if k in c} for n, c in result.costs.items()},
        "reward_acc_before_ft": acc.get("reward_pruned_before_finetune", math.nan),
        "test_acc_before_ft": acc.get("pruned_before_finetune", math.nan),
        "test_acc_after_ft": acc.get("pruned", math.nan),
        "reward_acc_after_ft": acc.get("reward_pruned", math.nan),
        "evaluations": getattr(result.search, "evaluations", None),
        "candidates": len(result.history),
        "best_found_at": getattr(result.search, "best_found_at", None),
        "search_s": result.timings.get("search_s", getattr(result.search, "wall_time", None)),
        "time_to_best_s": getattr(getattr(result.search, "best", None), "time", None),
        "feasible": all(bool(c.get("ok", True)) for c in result.costs.values()),
        # a noisy budget: the noise rule moved the best candidate after the search, and
        # how many times a failed final check settled it again
        "settled": bool((getattr(result.search, "extra", None) or {}).get("settled")),
        "resettled": len((getattr(result.search, "extra", None) or {}).get("resettled")
                         or []),
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
    return f"{fmt_num(c.get('pruned'))} ({fmt_ratio(c.get('ratio'))}){mark}"


def _compare_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = _compare_columns(rows)
    header = ["method", *names, "reward acc (before FT)", "test acc (before FT)",
              "test acc (after FT)", "evaluations", "best found at", "time to best",
              "search time"]
    body = []
    for r in rows:
        costs = r.get("costs", {})
        s = as_float(r.get("search_s"))
        tb = as_float(r.get("time_to_best_s"))
        body.append([str(r.get("method", "?")), *[_cost_cell(costs.get(n)) for n in names],
                     fmt_acc(r.get("reward_acc_before_ft")), fmt_acc(r.get("test_acc_before_ft")),
                     fmt_acc(r.get("test_acc_after_ft")),
                     fmt_num(r.get("evaluations")), fmt_num(r.get("best_found_at")),
                     "–" if not math.isfinite(tb) else f"{tb:.1f} s",
                     "–" if not math.isfinite(s) else f"{s:.1f} s"])
    return header, body


def _header_line(original: Mapping[str, Any] | None, budget: str | None) -> str:
    parts = []
    if budget:
        parts.append(f"budget {budget}")
    if original:
        if "test" in original:
            parts.append(f"unpruned test accuracy {fmt_acc(original['test'])}")
        if "reward" in original:
            parts.append(f"unpruned reward-split accuracy {fmt_acc(original['reward'])}")
    return "; ".join(parts)


def compare_table(rows: Sequence[Mapping[str, Any]], *,
                  original: Mapping[str, Any] | None = None, budget: str | None = None) -> str:
    """Markdown table of methods side by side: each cost (value, % of original, ✓/✗),
    accuracies before/after fine-tune, evaluations, best-found-at and search time.
    ``rows`` are :func:`compare_row`'s, one per method.

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
    """The comparison as a fixed-width text table for a terminal.

    ``rows``, ``original`` and ``budget`` are as for :func:`compare_table`.
    """
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
    (keys ``md``, ``json``, ``plot``).

    The files go to ``out_dir``; ``rows``, ``original`` and ``budget`` are as for
    :func:`compare_table`; ``data_name``, ``model_name`` and ``command`` are recorded,
    with the package versions when ``versions``; ``plots`` writes ``compare.png``.
    """
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
    paths["json"] = atomic_write_json(out / "compare.json", doc)
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
