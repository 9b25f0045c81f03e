"""Re-measure pruned models in fresh processes, as a user checking a budget later would.

    python -m benchmarks.remeasure BUNDLE_DIR     # one fresh measurement, JSON on stdout

A budget on a measured cost (latency) is only kept if the returned model passes the
*next* measurement too, in another process, not just the one that accepted it.
:func:`fresh_checks` saves every pruned model with the run's bound budget (its
absolute limits, never re-resolved) and the example input into a bundle, then starts
``times`` fresh Python processes one after another; each loads the bundle, measures
every constraint of every model once and prints the values. It returns, per model,
in how many of those processes every constraint held.
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


def fresh_checks(models: dict[str, nn.Module], bound: BoundBudget, granularity: str,
                 times: int = 20) -> dict[str, Any]:
    """Measure every model in ``times`` fresh processes: ``{"passed": {name: count},
    "worst": {name: {cost: largest value / limit}}, "times": times}``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    passed = dict.fromkeys(models, 0)
    worst: dict[str, dict[str, float]] = {m: {} for m in models}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        save_bundle(folder, models, bound, granularity)
        for _ in range(times):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.remeasure", str(folder)],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=True)
            values = json.loads(proc.stdout.strip().splitlines()[-1])
            for name, vals in values.items():
                passed[name] += int(all(vals[n] <= bound.limits[n] for n in bound.names))
                for n in bound.names:
                    r = vals[n] / bound.limits[n]
                    worst[name][n] = max(worst[name].get(n, 0.0), r)
    return {"passed": passed, "worst": worst, "times": times}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.remeasure BUNDLE_DIR", file=sys.stderr)
        return 2
    print(json.dumps(measure_bundle(Path(args[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
