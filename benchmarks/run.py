"""Run one benchmark: every method at the same budget on the same checkpoint, in one run.

    python -m benchmarks.run NAME [--episodes N] [--no-append] [--data-dir DIR]
    make bench NAME=mnist-lenet5-weight

NAME is a file ``configs/NAME.yaml`` (a plain ``rlprune compare`` config). The
runner pretrains the checkpoint if it is missing (with the command recorded in
``CHECKPOINTS``), runs the comparison, then the peers a user would pick instead
(:mod:`benchmarks.peers`: Torch-Pruning for channel budgets, ``torch.nn.utils.prune``
global magnitude and LAMP for weight budgets) in the same process, on the same
checkpoint, bound budget, reward split and fine-tune. It re-measures every constraint
on each pruned model *independently* (saved, loaded back, costs recomputed), counts
what each search spent (evaluations, reward-split samples scored, wall seconds), prints
the table, draws the best-so-far accuracy against that spend
(``docs/plots/NAME-search.png``) and appends the table to ``docs/RESULTS.md`` with the
machine, the command and the date, beside the literature reference. ``--no-append``
writes neither: the plot goes to the run directory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import peers
from benchmarks import remeasure as fresh_mod
from rlprune import api, costs, display, fileio, pipeline, plots, report
from rlprune.agents.base import method_class
from rlprune.evaluate import EvalOptions
from rlprune.rewards import DENSE_SCHEMES

ROOT = Path(__file__).resolve().parent.parent

#: How each committed checkpoint was made (run from the repository root).
CHECKPOINTS = {
    "benchmarks/checkpoints/lenet5_mnist.pt":
        "rlprune pretrain --model lenet5 --data mnist --epochs 2 "
        "--out benchmarks/checkpoints/lenet5_mnist.pt",
    "benchmarks/checkpoints/lenet300_mnist.pt":
        "rlprune pretrain --model lenet300 --data mnist --epochs 10 "
        "--out benchmarks/checkpoints/lenet300_mnist.pt",
    "benchmarks/checkpoints/resnet20_cifar10.pt":
        "rlprune pretrain --model resnet20 --data cifar10 --epochs 15 "
        "--out benchmarks/checkpoints/resnet20_cifar10.pt",
}

REFERENCES = {
    "mnist-lenet300-weight": "Han et al. 2015: LeNet-300-100 at 8% of weights, 1.59% error "
                             "(unpruned 1.64%).",
    "mnist-lenet5-weight": "Han et al. 2015: LeNet-5 at 8% of weights, 0.77% error "
                           "(unpruned 0.80%).",
    "mnist-lenet5-channel": "No direct published figure for LeNet-5 at 30% FLOPs (channel).",
    "mnist-lenet5-channel-params": "No direct published figure for LeNet-5 at 10% of the "
                                   "parameters (channel).",
    "cifar10-resnet20-channel": "AMC (He et al. 2018): ResNet-56 at 50% FLOPs, 92.8 -> 91.9 "
                                "top-1 (different depth, full training).",
    "cifar10-resnet20-weight": "Malik et al. (constrained RL): 10% of weights left on "
                               "VGG/ResNet-18 CIFAR-10 with comparable accuracy.",
    "cifar10-multi": "Two constraints at once (one measured); no published counterpart.",
    "mnist-lenet5-latency": "A measured latency budget alone (PyTorch, batch 8); no published "
                            "counterpart.",
    "mnist-lenet5-ort-latency": "A measured latency budget alone (ONNX Runtime, batch 1); no "
                                "published counterpart.",
    "cifar10-multi-table": "cifar10-multi with a latency lookup table in the search; no "
                           "published counterpart.",
}


def settled_note(results: list[api.PruneResult], bound: costs.BoundBudget) -> str:
    """Which results the noise rule moved after the search, from where, and which a
    failed final check settled again (with what margins): a model far inside a
    latency limit is explained by this line, not by its search."""
    moved = []
    for r in results:
        extra = r.search.extra
        again = [float(x["margin"]) for x in extra.get("resettled") or []]
        if not (extra.get("settled") or again):
            continue
        best = r.history.best
        at = ", ".join(f"{n} {best.costs[n] / bound.limits[n]:.3f} x" for n in bound.noisy_names
                       if best is not None and n in best.costs)
        moved.append(f"`{r.method}`"
                     + (f" (its best candidate at {at} the limit, one measurement)" if at
                        else "")
                     + (", settled again after fine-tuning at a "
                        + " then ".join(f"{100 * m:g}%" for m in again) + " margin"
                        if again else ""))
    return "; ".join(moved) if moved else "none"


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def ensure_checkpoint(path: str, data_dir: str | None) -> None:
    """Pretrain a missing benchmark checkpoint with its recorded command."""
    if (ROOT / path).is_file():
        return
    cmd = CHECKPOINTS.get(path)
    if cmd is None:
        raise SystemExit(f"checkpoint {path} is missing and no command is known to make it")
    args = shlex.split(cmd)[1:]
    if data_dir:
        args += ["--data-dir", data_dir]
    print(f"pretraining missing checkpoint: {cmd}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "rlprune.cli", *args], cwd=ROOT, check=True)


def remeasure(res: api.PruneResult, original: torch.nn.Module, ex: torch.Tensor,
              budget: str) -> dict[str, tuple[float, float, bool]]:
    """Save the pruned model, load it back, and recompute every constraint from scratch
    against the limits the run bound at its start (``res.bound``)."""
    bound = res.bound if res.bound is not None else (
        api.budget_for(budget, res.granularity).bind(original, ex))
    return peers.remeasure(res.model, bound)


def search_spend(res: api.PruneResult, cfg: pipeline.RunConfig, n_reward: int
                 ) -> tuple[int, bool]:
    """Reward-split samples one rlprune method's search scored: ``(count, exact)``.

    Exact when the search reports the evaluator's counter
    (``res.search.extra["spent"]["reward_samples"]``). Otherwise estimated from the
    history: every evaluation (cache hits excluded) scores the ``reward_samples`` first
    samples of the reward split (all of it when unset); a dense-reward method (purl)
    also scores, at each of the ``T - 1`` non-terminal steps of every episode, the
    partly pruned model on the first ``dense_samples`` of those (the env's default
    1000 when unset). The estimate leaves out an episode the agent cut short.
    """
    spent = res.search.extra.get("spent")
    if isinstance(spent, dict) and spent.get("reward_samples") is not None:
        return int(spent["reward_samples"]), True
    if isinstance(spent, (int, float)):
        return int(spent), True
    n = n_reward if cfg.reward_samples is None else min(cfg.reward_samples, n_reward)
    total = int(res.search.evaluations) * n
    opts = method_class(res.method).env_options
    reward = cfg.reward or opts.get("reward", "terminal_accuracy")
    if reward in DENSE_SCHEMES:
        dense = cfg.dense_samples or opts.get("dense_samples", EvalOptions.dense_samples)
        n_dense = n if dense is None else min(int(dense), n)
        episodes = int(res.search.extra.get("episodes", res.search.evaluations))
        total += episodes * max(len(res.layers) - 1, 0) * n_dense
    return total, False


def _best_so_far(cands: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evaluation count, seconds, best feasible accuracy so far) after each candidate
    actually scored (cache hits add no evaluation)."""
    xs, ts, ys = [], [], []
    best, n = -math.inf, 0
    for c in cands:
        if c.extra.get("cached"):
            continue
        n += 1
        if c.feasible and math.isfinite(float(c.accuracy)):
            best = max(best, float(c.accuracy))
        xs.append(n)
        ts.append(max(float(c.time), 1e-3))
        ys.append(best if math.isfinite(best) else np.nan)
    return np.asarray(xs, float), np.asarray(ts, float), np.asarray(ys, float)


def plot_search_spend(results: list[api.PruneResult], peer_rows: list[dict[str, Any]],
                      path: str | os.PathLike[str], title: str = "") -> Path:
    """Best-so-far reward-split accuracy (feasible candidates only) against candidate
    evaluations (left) and wall seconds (right), one line per searching method; the
    baselines that do not search and the peers are single points at their spend, with
    a dotted horizontal marker at their accuracy."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(13.0, 5.4), dpi=plots.DPI, layout="constrained")
    ax_n, ax_t = fig.subplots(1, 2, sharey=True)
    colors = [f"C{i}" for i in range(10)]
    k = 0
    points = []  # (label, evaluations, seconds, accuracy, marker, unit)
    for res in results:
        cands = list(res.history)
        if method_class(res.method).searching and cands:
            x, t, y = _best_so_far(cands)
            label = f"{res.method} ({len(x)} evals" + (
                ", none feasible)" if not np.isfinite(y).any() else ")")
            for ax, xs in ((ax_n, x), (ax_t, t)):
                ax.step(xs, y, where="post", color=colors[k % 10], lw=1.8, label=label)
            k += 1
        else:
            best = res.search.best
            points.append((res.method, max(res.search.evaluations, 1),
                           max(float(res.search.wall_time), 1e-3),
                           best.accuracy if best is not None else math.nan, "s", "evals"))
    for r in peer_rows:
        cand = r.get("candidate")
        points.append((r["method"], max(int(r["models_measured"]), 1),
                       max(float(r["search_s"]), 1e-3),
                       float(cand.accuracy) if cand is not None else math.nan, "D", "measured"))
    placed: dict[tuple[int, float], int] = {}
    for label, n, sec, acc, marker, unit in points:
        color = colors[k % 10]
        k += 1
        if not math.isfinite(acc):
            continue
        # points at the same spend and nearly the same accuracy are dodged sideways
        j = placed.get((n, round(acc, 2)), 0)
        placed[(n, round(acc, 2))] = j + 1
        for ax, x in ((ax_n, n * 1.06 ** j), (ax_t, sec)):
            ax.axhline(acc, color=color, ls=":", lw=1.0)
            ax.scatter([x], [acc], s=70, marker=marker, color=color, edgecolor="k", zorder=5,
                       label=f"{label} ({n} {unit})")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (ax_n, ax_t):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    ax_n.set_xlabel("candidate evaluations (peers: pruned models measured, 1 scored)")
    ax_t.set_xlabel("wall seconds of the search")
    ax_n.set_ylabel("best feasible reward-split accuracy so far (before fine-tune)")
    handles, labels = ax_n.get_legend_handles_labels()
    handles.append(Line2D([], [], color="k", ls=":", lw=1.0))
    labels.append("single-shot result (level)")
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(title or "Search: best feasible accuracy vs what it cost")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plots.DPI)
    out = Path(path)
    fileio.atomic_write_bytes(out, buf.getvalue())
    return out


def _num(v: float) -> str:
    """A cost value in full where it is large (counts: 34,390 / 34,486.8), else 4 digits."""
    v = float(v)
    if not math.isfinite(v) or abs(v) < 1000:
        return f"{v:.4g}"
    return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def _rlprune_row(res: api.PruneResult, cfg: pipeline.RunConfig, original: torch.nn.Module,
                 ex: torch.Tensor, n_reward: int) -> dict[str, Any]:
    row = report.compare_row(res)
    row["remeasured"] = remeasure(res, original, ex, cfg.budget or "")
    row["reward_samples"], row["spend_exact"] = search_spend(res, cfg, n_reward)
    row["model"] = res.model
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="benchmark name (a file configs/NAME.yaml)")
    ap.add_argument("--episodes", type=int, default=None, help="override the search length")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default $RLPRUNE_DATA)")
    ap.add_argument("--no-append", action="store_true",
                    help="do not write docs/RESULTS.md (the search plot goes to the run "
                         "directory instead of docs/plots/)")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-NAME)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated methods to run instead of the config's (peers run "
                         "regardless)")
    ap.add_argument("--seed", type=int, default=None,
                    help="override the config's seed (searches and the reward split)")
    args = ap.parse_args(argv)

    cfg_path = ROOT / "configs" / f"{args.name}.yaml"
    if not cfg_path.is_file():
        names = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
        raise SystemExit(f"unknown benchmark {args.name!r}; known: {', '.join(names)}")
    if args.name.startswith("gpu-") and not torch.cuda.is_available():
        raise SystemExit(f"{args.name} is a GPU-scale benchmark and this machine has no GPU")
    values = pipeline.load_config(cfg_path)
    if args.episodes is not None:
        values["episodes"] = args.episodes
    if args.data_dir:
        values["data_dir"] = args.data_dir
    suffix = "" if args.seed is None else f"-seed{args.seed}"
    if args.methods:  # a partial re-run keeps the full run's plot
        suffix += "-" + "-".join(m.strip() for m in args.methods.split(",") if m.strip())
    if args.seed is not None:
        values["seed"] = args.seed
    if args.methods:
        values["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    values["out"] = args.out or str(ROOT / "runs" / f"bench-{args.name}{suffix}")
    values.setdefault("quiet", True)
    cfg = pipeline.RunConfig(**values)
    if cfg.checkpoint:
        ensure_checkpoint(cfg.checkpoint, cfg.data_dir)
        cfg.checkpoint = str(ROOT / cfg.checkpoint)

    shown = list(argv if argv is not None else sys.argv[1:])
    for i, arg in enumerate(shown):  # where the data lives is the reader's, not ours
        if arg.startswith("--data-dir="):
            shown[i] = "--data-dir=DIR"
        elif arg == "--data-dir" and i + 1 < len(shown):
            shown[i + 1] = "DIR"
    command = "python -m benchmarks.run " + " ".join(shown)
    started = _dt.datetime.now(_dt.timezone.utc)
    results = pipeline.run_compare(cfg, command=command)
    original = results[0].original
    bound = results[0].bound
    assert original is not None and bound is not None
    from rlprune import data

    splits = data.load(cfg.data or "", root=cfg.data_dir, reward_fraction=cfg.reward_fraction,
                       seed=cfg.seed)
    ex = splits.example_input(1)

    # the peers: same checkpoint, bound budget, reward split, scoring and fine-tune
    print(f"peers ({cfg.granularity}):", file=sys.stderr)
    setup = peers.PeerSetup(original=original, splits=splits, bound=bound,
                            granularity=cfg.granularity, example_input=ex,
                            reward_samples=cfg.reward_samples,
                            finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr,
                            seed=cfg.seed, importance=cfg.importance)
    peer_rows, peer_errors = peers.run_peers(setup)
    for r in peer_rows:  # rlprune has a `lamp` baseline too: a table names each row once
        if r["method"] in cfg.methods:
            r["method"] = f"{r['method']} (peer)"

    n_reward = len(splits.reward)
    rows = [_rlprune_row(r, cfg, original, ex, n_reward) for r in results] + peer_rows
    if cfg.granularity == "channel":
        for r in rows:
            r["latency_ms"] = costs.measure_latency_ms(r["model"], ex)
    fresh = None
    if bound.noisy:  # a measured budget must hold on the next measurements, elsewhere
        print(f"re-measuring {len(rows)} models in {FRESH_TIMES} fresh processes",
              file=sys.stderr)
        fresh = fresh_mod.fresh_checks({r["method"]: r["model"] for r in rows}, bound,
                                       cfg.granularity, times=FRESH_TIMES, original=original)

    if args.no_append:
        plot_path = Path(cfg.out or ".") / "search-spend.png"
    else:
        plot_path = ROOT / "docs" / "plots" / f"{args.name}{suffix}-search.png"
    plot_search_spend(results, peer_rows, plot_path,
                      title=f"{args.name}: budget {cfg.budget} ({cfg.granularity}), "
                            f"{cfg.episodes} evaluations per searching method")
    n_scored = n_reward if cfg.reward_samples is None else min(cfg.reward_samples, n_reward)

    lines = [f"\n## {args.name}\n",
             f"- command: `{command}` (config `configs/{args.name}.yaml`)",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- data: {splits.name}" + (" (CIFAR-10 JPEG-q75 copy)" if splits.name == "cifar10"
                                         else ""),
             f"- budget `{cfg.budget}`, granularity {cfg.granularity}, {cfg.episodes} "
             f"evaluations per searching method, fine-tune {cfg.finetune_epochs} epoch(s), "
             f"seed {cfg.seed}; every candidate scored on {n_scored} reward-split samples",
             f"- unpruned: test accuracy {results[0].accuracy['original']:.4f}, reward-split "
             f"accuracy {results[0].accuracy['reward_original']:.4f}",
             f"- reference: {REFERENCES.get(args.name, '-')}"]
    if cfg.granularity in PEER_NOTE:
        lines.append(f"- peers: {PEER_NOTE[cfg.granularity]}")
    if bound.noisy:
        rule = bound.rule
        lines.append(
            f"- noisy constraints ({', '.join(bound.noisy_names)}): accepted on "
            f"{rule.repeats} measurements when the upper bound (mean + {rule.z:g} sd x "
            f"sqrt(1 + 1/n), at least the largest) x (1 + margin {rule.margin:.0%}) <= "
            "limit; the cell shows the median, the limit and, after \"bound\", the upper "
            "bound; relative limits were resolved from the median of "
            f"{rule.original_repeats} measurements of the original ("
            + ", ".join(f"{n}: {_num(bound.original[n])}, sd "
                        f"{_num(bound.original_spread[n].sd)}"
                        for n in bound.noisy_names if n in bound.original_spread)
            + f"); \"fresh\": of {FRESH_TIMES} fresh processes measuring the saved model "
            "once each, how many found every constraint within its limit (worst value / "
            "limit in brackets), then the same count over the processes that ran at the "
            f"run's speed (the unpruned model, measured in each, within "
            f"{fresh_mod.SPEED_TOLERANCE:.0%} of its value at the start), then, after "
            "\"paired\", the count with each relative limit checked against the unpruned "
            "model timed in the same process, as rlprune's own checks are"
            + (f"; the unpruned model measured {min(fresh['slowdown']):.2f}-"
               f"{max(fresh['slowdown']):.2f} x its value at the start, "
               f"{fresh['normal']} of {FRESH_TIMES} processes within "
               f"{fresh_mod.SPEED_TOLERANCE:.0%}" if fresh else ""))
        lines.append("- moved after the search by the noise rule (rlprune's methods; the "
                     "peers are reported where they land): " + settled_note(results, bound))
    lines += [f"- search curves: ![best feasible accuracy vs spend](plots/{plot_path.name})"
              if not args.no_append else f"- search curves: {plot_path}", ""]
    # the budget's constraints only; costs reported alongside have no limit to meet
    names = display.constraint_names(rows[0]["costs"])
    head = (["method"] + [f"{n}: value / limit (ratio)" for n in names]
            + ["re-measured ok"] + (["fresh"] if fresh else [])
            + ["reward acc before FT", "test acc before FT",
               "test acc after FT", "evaluations", "reward forward passes", "best found at",
               "search s"])
    if cfg.granularity == "channel":
        head.append("latency ms (b=1)")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def f4(x: object) -> str:
        return "-" if x is None else f"{float(x):.4f}"  # type: ignore[arg-type]

    for r in rows:
        cells = [r["method"]]
        cells += [f"{_num(r['costs'][n]['pruned'])} / {_num(r['costs'][n]['limit'])} "
                  f"({r['costs'][n]['ratio']:.2%})"
                  + (f"; bound {_num(r['costs'][n]['noise']['measured']['bound'])}"
                     if r["costs"][n].get("noise") else "") for n in names]
        cells.append("yes" if all(ok for _, _, ok in r["remeasured"].values()) else "NO")
        if fresh:
            worst = max(fresh["worst"][r["method"]].values())
            cells.append(f"{fresh['passed'][r['method']]}/{fresh['times']} ({worst:.3f}); "
                         f"{fresh['passed_normal'][r['method']]}/{fresh['normal']}; "
                         f"paired {fresh['passed_paired'][r['method']]}/{fresh['times']}")
        evals = (f"{r['models_measured']} ({r['scored']} scored)" if r.get("peer")
                 else str(r["evaluations"]))
        passes = f"{r['reward_samples']:,}" + ("" if r.get("spend_exact", True) else " (est.)")
        cells += [f4(r["reward_acc_before_ft"]), f4(r["test_acc_before_ft"]),
                  f4(r["test_acc_after_ft"]), evals, passes,
                  str(r["best_found_at"] or "-"), f"{r['search_s']:.1f}"]
        if cfg.granularity == "channel":
            cells.append(f"{r['latency_ms']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for err in peer_errors:
        lines.append(f"- peer not run: {err}")
    lines.append(SPEND_NOTE)
    orig_lat = costs.measure_latency_ms(original, ex)
    lines.append(f"\nUnpruned CPU latency at batch 1: {orig_lat:.3f} ms.\n")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        res_path = ROOT / "docs" / "RESULTS.md"
        res_path.parent.mkdir(parents=True, exist_ok=True)
        prev = res_path.read_text() if res_path.is_file() else _RESULTS_HEADER
        fileio.atomic_write_bytes(res_path, (prev.rstrip("\n") + "\n" + text).encode())
        print(f"appended to {res_path}", file=sys.stderr)
    else:
        print(f"search plot: {plot_path}", file=sys.stderr)
    bad = [r["method"] for r in rows if not all(ok for _, _, ok in r["remeasured"].values())]
    if fresh:
        bad += [m for m, k in fresh["passed"].items() if k < fresh["times"] and m not in bad]
    if bad:
        print(f"constraint violated after re-measuring: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


#: Fresh processes that re-measure every model of a budget with a noisy constraint.
FRESH_TIMES = 20

#: How the peers of each granularity were run (printed above the table).
PEER_NOTE = {
    "channel": "`tp-uniform` / `tp-global`: Torch-Pruning "
               f"{getattr(peers.tp, '__version__', '?')} `MetaPruner` with "
               "`GroupMagnitudeImportance(p=2)`, `global_pruning=False` / `True`, the output "
               "layer in `ignored_layers`, `pruning_ratio` bisected onto the budget (measured "
               "on each pruned model).",
    "weight": "`torch-global-magnitude`: `torch.nn.utils.prune.global_unstructured` "
              "(`L1Unstructured`) over every Conv/Linear weight; `lamp`: the same with "
              "LAMP scores (Lee et al., ICLR 2021) as `importance_scores`; the number of "
              "weights removed is bisected onto the budget, pruning made permanent.",
}

SPEND_NOTE = ("\n\"evaluations\": candidates scored on the reward split (searching methods, "
              "cache hits excluded); for a peer, pruned models measured during its "
              "bisection, with how many were scored. \"reward forward passes\": reward-split "
              "samples scored during the search (\"est.\": estimated from the history, see "
              "`benchmarks/run.py` `search_spend`). \"search s\": wall seconds of the search "
              "(for a peer: bisection and scoring), fine-tune excluded. Peers are scored, "
              "fine-tuned and re-measured exactly as rlprune's methods.")


_RESULTS_HEADER = """# Results

Every table below was printed by the command shown above it, on the machine named
there; methods in one table ran side by side on the same checkpoint, budget, reward
split and fine-tune schedule. "value / limit" is what the pruned model measures
against the budget's limit; "re-measured ok" means every constraint held when the
saved model was loaded back and measured again independently (a noisy cost under the
noise rule, measured once more if that check fails, as rlprune's final check does).
Accuracies are
fractions; "reward acc" is on the held-out reward split the search scores on,
"test acc" on the test split the search never sees. CIFAR-10 figures use the
JPEG-q75 copy of CIFAR-10 (official labels), not the original pixels.
"""


if __name__ == "__main__":
    sys.exit(main())
