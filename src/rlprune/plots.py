"""The figures of a run folder and of a comparison, as PNG files.

:func:`plot_layers` (per-layer width or weight density, before vs after),
:func:`plot_search` (reward, constraint values and Lagrange multipliers per evaluated
candidate), :func:`plot_candidates` (accuracy vs each constraint, one point per
candidate) and :func:`plot_compare` (test accuracy per method). Each takes plain data
(layer rows, a :class:`~rlprune.history.History`, a duck-typed run result, comparison
rows) and writes one PNG atomically.

Plotting uses matplotlib's object API (``Figure``, no ``pyplot``), so it needs no
display and never changes the backend or the figures of the caller's session. It is
its own module so that :mod:`rlprune.report` reads as what a report *says*, and the
figures can be redrawn from a saved run without writing a report.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlprune.display import as_float, constraint_names, fmt_num
from rlprune.fileio import atomic_write_bytes
from rlprune.history import Candidate, History

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rlprune.report import RunResult

__all__ = ["plot_layers", "plot_search", "plot_candidates", "plot_compare", "DPI"]

#: Resolution of every plot.
DPI = 120


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
    ``layers`` are the rows of ``PruningSpace.describe`` (a result's ``layers``); the PNG
    is written to ``path`` under ``title`` (default: none), and ``path`` is returned.
    """
    if not layers:
        raise ValueError("no layers to plot")
    n = len(layers)
    names = [str(r.get("name", i)) for i, r in enumerate(layers)]
    weight = layers[0].get("unit") == "nonzero weights" or "numel" in layers[0]
    before = np.array([as_float(r.get("before")) for r in layers])
    after = np.array([as_float(r.get("after")) for r in layers])
    if weight:
        numel = np.array([as_float(r.get("numel", r.get("before"))) for r in layers])
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
        if c.feasible and math.isfinite(as_float(v)):
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
    ``history`` holds the candidates; ``constraint_names`` label the constraint panels
    (default: c0, c1, ...). The PNG is written to ``path`` under ``title``, and ``path``
    is returned.
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
    reward = np.array([as_float(c.reward) for c in cands])
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
        y = np.array([as_float(c.cost_ratios[i]) if i < len(c.cost_ratios) else np.nan
                      for c in cands])
        ax.plot(x, y, marker=marker, ms=3, lw=0.8, label=name)
    ax.axhline(1.0, color="k", ls="--", lw=1.2, label="limit")
    ax.set_ylabel("value / limit (≤ 1 feasible)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    if has_nu:
        ax = axes[2]
        for i, name in enumerate(names):
            y = np.array([as_float((c.extra.get("multipliers") or [])[i])
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
    ``result`` is a run's result (its ``history``, ``costs`` and ``accuracy``); the PNG
    is written to ``path`` under ``title``, and ``path`` is returned.
    """
    cands = list(result.history)
    names = constraint_names(result.costs) or (list(cands[0].costs) if cands else [])
    if not names:
        raise ValueError("no constraints to plot")
    k = len(names)
    fig = _figure(max(8.0, 5.0 * k), 5.5)
    axes: list[Axes] = list(fig.subplots(1, k, squeeze=False, sharey=True)[0])
    acc = result.accuracy
    best = getattr(result.search, "best", None)
    for i, (ax, name) in enumerate(zip(axes, names)):
        xs = np.array([as_float(c.cost_ratios[i]) if i < len(c.cost_ratios) else np.nan
                       for c in cands])
        ys = np.array([as_float(c.accuracy) for c in cands])
        feas = np.array([c.feasible for c in cands], dtype=bool)
        if feas.any():
            ax.scatter(xs[feas], ys[feas], s=22, color="#2a9d8f", alpha=0.75,
                       label=f"feasible ({int(feas.sum())})")
        if (~feas).any():
            ax.scatter(xs[~feas], ys[~feas], s=22, marker="x", color="#e76f51", alpha=0.75,
                       label=f"infeasible ({int((~feas).sum())})")
        ax.axvline(1.0, color="k", ls="--", lw=1.2, label="budget (limit)")
        cost = result.costs.get(name, {})
        lim = as_float(cost.get("limit"))
        if math.isfinite(lim) and lim > 0 and math.isfinite(as_float(acc.get("reward_original"))):
            ax.scatter([as_float(cost.get("original")) / lim], [acc["reward_original"]], s=70,
                       marker="D", facecolor="none", edgecolor="#264653", lw=1.5,
                       label="unpruned")
        if best is not None and i < len(best.cost_ratios):
            bx, by, lab = best.cost_ratios[i], best.accuracy, "chosen"
        elif math.isfinite(lim) and lim > 0:
            bx = as_float(cost.get("pruned")) / lim
            by, lab = as_float(acc.get("reward_pruned_before_finetune")), "returned (projected)"
        else:
            bx = by = math.nan
        if math.isfinite(as_float(bx)) and math.isfinite(as_float(by)):
            ax.scatter([bx], [by], s=260, marker="*", color="#f4a261", edgecolor="k", zorder=5,
                       label=lab)
            ax.annotate(f"{lab}\nacc {100 * by:.1f}%, {bx:.2f}× limit", (bx, by),
                        xytext=(-12, -12), textcoords="offset points", ha="right", va="top",
                        fontsize=8, bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
        ax.set_xlabel(f"{name}: value / limit (≤ 1 feasible)")
        ax.set_title(f"{name} (limit {fmt_num(lim)})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_ylabel("accuracy on the reward split (fraction)")
    fig.suptitle(title or f"{result.method}: {len(cands)} candidates, accuracy vs cost")
    return _save_fig(fig, path)



def plot_compare(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                 original: Mapping[str, Any] | None = None,
                 title: str | None = None) -> Path:
    """Test accuracy per method, before (light) and after (dark) fine-tune, with the
    unpruned model's accuracy as a dashed line.

    ``rows`` are the rows of a comparison (``method``, ``test_acc_before_ft``,
    ``test_acc_after_ft``), ``original`` the unpruned model's accuracies (its
    ``"test"`` entry is drawn); the PNG is written to ``path`` under ``title``, and ``path`` is
    returned.
    """
    if not rows:
        raise ValueError("no rows to plot")
    n = len(rows)
    methods = [str(r.get("method", "?")) for r in rows]
    before = np.array([as_float(r.get("test_acc_before_ft")) for r in rows]) * 100
    after = np.array([as_float(r.get("test_acc_after_ft")) for r in rows]) * 100
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
    ref = as_float((original or {}).get("test"))
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
