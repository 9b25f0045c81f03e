"""Run one benchmark: every method at the same budget on the same checkpoint, in one run.

    python -m benchmarks.run NAME [--episodes N] [--no-append] [--data-dir DIR]
    make bench NAME=mnist-lenet5-weight

NAME is a file ``configs/NAME.yaml`` (a plain ``rlprune compare`` config). The
runner pretrains the checkpoint if it is missing (with the command recorded in
``CHECKPOINTS``), runs the comparison, re-measures every constraint on each saved
pruned model *independently* (loaded back from disk, costs recomputed), prints the
table, and appends it to ``docs/RESULTS.md`` with the machine, the command and the
date, beside the literature reference.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from rlprune import api, costs, display, fileio, pipeline, report, train

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
    "cifar10-resnet20-channel": "AMC (He et al. 2018): ResNet-56 at 50% FLOPs, 92.8 -> 91.9 "
                                "top-1 (different depth, full training).",
    "cifar10-resnet20-weight": "Malik et al. (constrained RL): 10% of weights left on "
                               "VGG/ResNet-18 CIFAR-10 with comparable accuracy.",
    "cifar10-multi": "Two constraints at once (one measured); no published counterpart.",
}


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
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "pruned.pt"
        train.save_checkpoint(p, res.model, {})
        loaded, _ = train.load_checkpoint(p)
    bound = res.bound if res.bound is not None else (
        api.budget_for(budget, res.granularity).bind(original, ex))
    out = {}
    for name, v in bound.evaluate(loaded).items():
        out[name] = (float(v["value"]), float(v["limit"]), bool(v["ok"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="benchmark name (a file configs/NAME.yaml)")
    ap.add_argument("--episodes", type=int, default=None, help="override the search length")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default $RLPRUNE_DATA)")
    ap.add_argument("--no-append", action="store_true", help="do not write docs/RESULTS.md")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench-NAME)")
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
    values["out"] = args.out or str(ROOT / "runs" / f"bench-{args.name}")
    values.setdefault("quiet", True)
    cfg = pipeline.RunConfig(**values)
    if cfg.checkpoint:
        ensure_checkpoint(cfg.checkpoint, cfg.data_dir)
        cfg.checkpoint = str(ROOT / cfg.checkpoint)

    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    started = _dt.datetime.now(_dt.timezone.utc)
    results = pipeline.run_compare(cfg, command=command)
    original = results[0].original
    assert original is not None
    from rlprune import data

    splits = data.load(cfg.data or "", root=cfg.data_dir, reward_fraction=cfg.reward_fraction,
                       seed=cfg.seed)
    ex = splits.example_input(1)

    lines = [f"\n## {args.name}\n",
             f"- command: `{command}` (config `configs/{args.name}.yaml`)",
             f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- data: {splits.name}" + (" (CIFAR-10 JPEG-q75 copy)" if splits.name == "cifar10"
                                         else ""),
             f"- budget `{cfg.budget}`, granularity {cfg.granularity}, {cfg.episodes} "
             f"evaluations per searching method, fine-tune {cfg.finetune_epochs} epoch(s), "
             f"seed {cfg.seed}",
             f"- unpruned: test accuracy {results[0].accuracy['original']:.4f}, reward-split "
             f"accuracy {results[0].accuracy['reward_original']:.4f}",
             f"- reference: {REFERENCES.get(args.name, '-')}", ""]
    rows = [report.compare_row(r) for r in results]
    for r, res in zip(rows, results):
        r["remeasured"] = remeasure(res, original, ex, cfg.budget or "")
        if cfg.granularity == "channel":
            r["latency_ms"] = costs.measure_latency_ms(res.model, ex)
    # the budget's constraints only; costs reported alongside have no limit to meet
    names = display.constraint_names(rows[0]["costs"])
    head = (["method"] + [f"{n}: value / limit (ratio)" for n in names]
            + ["re-measured ok", "reward acc before FT", "test acc before FT",
               "test acc after FT", "evaluations", "best found at", "search s"])
    if cfg.granularity == "channel":
        head.append("latency ms (b=1)")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def f4(x: object) -> str:
        return "-" if x is None else f"{float(x):.4f}"  # type: ignore[arg-type]

    for r in rows:
        cells = [r["method"]]
        cells += [f"{r['costs'][n]['pruned']:.4g} / {r['costs'][n]['limit']:.4g} "
                  f"({r['costs'][n]['ratio']:.2%})" for n in names]
        cells.append("yes" if all(ok for _, _, ok in r["remeasured"].values()) else "NO")
        cells += [f4(r["reward_acc_before_ft"]), f4(r["test_acc_before_ft"]),
                  f4(r["test_acc_after_ft"]), str(r["evaluations"]),
                  str(r["best_found_at"] or "-"), f"{r['search_s']:.1f}"]
        if cfg.granularity == "channel":
            cells.append(f"{r['latency_ms']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
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
    bad = [r["method"] for r in rows if not all(ok for _, _, ok in r["remeasured"].values())]
    if bad:
        print(f"constraint violated after re-measuring: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


_RESULTS_HEADER = """# Results

Every table below was printed by the command shown above it, on the machine named
there; methods in one table ran side by side on the same checkpoint, budget, reward
split and fine-tune schedule. "value / limit" is what the pruned model measures
against the budget's limit; "re-measured ok" means every constraint held when the
saved model was loaded back and measured again independently. Accuracies are
fractions; "reward acc" is on the held-out reward split the search scores on,
"test acc" on the test split the search never sees. CIFAR-10 figures use the
JPEG-q75 copy of CIFAR-10 (official labels), not the original pixels.
"""


if __name__ == "__main__":
    sys.exit(main())
