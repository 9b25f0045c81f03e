"""Re-measure pruned models in fresh processes, as a user checking a budget later would.

    python -m benchmarks.remeasure BUNDLE_DIR     # one fresh measurement, JSON on stdout
    python -m benchmarks.remeasure --models A.pt,B.pt --budget "ort_latency_ms<=0.0359" \
        [--input-shape 1,1,28,28] [--times 20]    # every value, fresh process by process

A budget on a measured cost (latency) is only kept if the returned model passes the
*next* measurement too, in another process, not just the one that accepted it.
:func:`fresh_checks` saves every pruned model with the run's bound budget (its
absolute limits, never re-resolved) and the example input into a bundle, then starts
``times`` fresh Python processes one after another; each loads the bundle, measures
every constraint of every model once and prints the values. It returns, per model,
in how many of those processes every constraint held; given the unpruned model as well,
it also says in which processes the machine itself ran slower than at the run's start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune import api, train
from rlprune.costs import BoundBudget

ROOT = Path(__file__).resolve().parent.parent


def save_bundle(folder: Path, models: dict[str, nn.Module], bound: BoundBudget,
                granularity: str) -> None:
    """Write ``models`` (by row name), ``bound`` and its example input to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (name, model) in enumerate(models.items()):
        train.save_checkpoint(folder / f"m{i}.pt", model, {})
        names[f"m{i}.pt"] = name
    torch.save(bound.example_input, folder / "example_input.pt")
    (folder / "bundle.json").write_text(json.dumps(
        {"models": names, "bound": bound.to_dict(), "granularity": granularity}))


def measure_bundle(folder: Path) -> dict[str, dict[str, float]]:
    """Load the bundle in ``folder`` and measure every constraint of every model once."""
    spec = json.loads((folder / "bundle.json").read_text())
    ex = torch.load(folder / "example_input.pt", weights_only=True)
    budget = api.budget_for(spec["bound"]["budget"], spec["granularity"])
    bound = BoundBudget.from_dict(budget, spec["bound"], ex)
    out = {}
    for fname, name in spec["models"].items():
        model, _ = train.load_checkpoint(folder / fname)
        out[name] = bound.measure(model.eval())
    return out


def fresh_values(models: dict[str, nn.Module], bound: BoundBudget, granularity: str,
                 times: int = 20) -> list[dict[str, dict[str, float]]]:
    """Every model's costs measured once in each of ``times`` fresh processes, in order:
    one ``{model: {cost: value}}`` per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    out = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        save_bundle(folder, models, bound, granularity)
        for _ in range(times):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.remeasure", str(folder)],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=True)
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


#: The probe's name in a bundle: the unpruned model, measured in every fresh process.
ORIGINAL = "(original)"
#: A fresh process ran at the run's speed when the unpruned model measured at most this
#: much above its value at the run's start (every noisy cost).
SPEED_TOLERANCE = 0.10


def fresh_checks(models: dict[str, nn.Module], bound: BoundBudget, granularity: str,
                 times: int = 20, original: nn.Module | None = None) -> dict[str, Any]:
    """Measure every model in ``times`` fresh processes: ``{"passed": {name: count},
    "worst": {name: {cost: largest value / limit}}, "times": times}``.

    With ``original`` (the unpruned model) each process measures it too, as a probe of
    the machine's speed at that moment: ``"slowdown"`` lists, per process, the largest
    ratio of its noisy costs to their values at the run's start (``bound.original``),
    ``"normal"`` counts the processes within :data:`SPEED_TOLERANCE` of them and
    ``"passed_normal"`` how many of those each model held in. A process whose unpruned
    model runs 30% slower than at the start measures the machine, not the pruned model.
    ``"passed_paired"`` counts, per model, the processes where every limit held with each
    relative limit on a noisy cost checked as rlprune checks it (a paired check:
    :attr:`~rlprune.costs.BoundBudget.paired_names`): the model's value scaled by the
    unpruned model's value at the run's start over its value in that process.
    """
    probe = {ORIGINAL: original} if original is not None else {}
    passed = dict.fromkeys(models, 0)
    passed_normal = dict.fromkeys(models, 0)
    worst: dict[str, dict[str, float]] = {m: {} for m in models}
    passed_paired = dict.fromkeys(models, 0)
    relative = [c.name for c in bound.budget if c.cost.noisy and c.relative]
    slowdown: list[float] = []
    for values in fresh_values({**models, **probe}, bound, granularity, times):
        normal = True
        scale = dict.fromkeys(bound.names, 1.0)
        if probe:
            orig = values.pop(ORIGINAL)
            slow = max((orig[n] / bound.original[n] for n in bound.noisy_names), default=1.0)
            slowdown.append(slow)
            normal = slow <= 1.0 + SPEED_TOLERANCE
            scale.update({n: bound.original[n] / orig[n] for n in relative if orig[n] > 0})
        for name, vals in values.items():
            held = all(vals[n] <= bound.limits[n] for n in bound.names)
            passed[name] += int(held)
            passed_normal[name] += int(held and normal)
            passed_paired[name] += int(all(vals[n] * scale[n] <= bound.limits[n]
                                           for n in bound.names))
            for n in bound.names:
                r = vals[n] / bound.limits[n]
                worst[name][n] = max(worst[name].get(n, 0.0), r)
    out: dict[str, Any] = {"passed": passed, "worst": worst, "times": times}
    if probe:
        out.update(slowdown=slowdown, passed_normal=passed_normal, passed_paired=passed_paired,
                   normal=sum(s <= 1.0 + SPEED_TOLERANCE for s in slowdown))
    return out


def check_saved(paths: list[str], budget: str, input_shape: str, times: int) -> int:
    """Measure saved models (``pruned.pt`` of run directories) in ``times`` fresh
    processes against the absolute ``budget`` and print every value, then the count of
    processes where every limit held, per model."""
    shape = tuple(int(v) for v in input_shape.split(","))
    ex = torch.zeros(shape)
    b = api.budget_for(budget, "channel")
    limits = {c.name: float(c.resolve(1.0)) for c in b}
    bound = BoundBudget.from_dict(b, {"budget": budget, "original": limits,
                                      "limits": limits}, ex)
    models = {p: train.load_checkpoint(p)[0].eval() for p in paths}
    runs = fresh_values(models, bound, "channel", times)
    for name in models:
        vals = [r[name] for r in runs]
        held = sum(all(v[n] <= bound.limits[n] for n in bound.names) for v in vals)
        print(json.dumps({"model": name, "held": f"{held}/{times}", "values": {
            n: [round(v[n], 5) for v in vals] for n in bound.names}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="re-measure pruned models in fresh processes")
    ap.add_argument("bundle", nargs="?", help="a bundle folder: measure it once (internal)")
    ap.add_argument("--models", help="comma-separated saved models (pruned.pt files)")
    ap.add_argument("--budget", help="absolute limits, e.g. ort_latency_ms<=0.0359")
    ap.add_argument("--input-shape", default="1,1,28,28", help="example input shape")
    ap.add_argument("--times", type=int, default=20, help="fresh processes")
    args = ap.parse_args(argv)
    if args.models:
        if not args.budget:
            ap.error("--models needs --budget")
        return check_saved(args.models.split(","), args.budget, args.input_shape, args.times)
    if not args.bundle:
        ap.error("give a bundle folder or --models")
    print(json.dumps(measure_bundle(Path(args.bundle))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
