"""Latency lookup tables: how well they predict measured latency, and what they save a search.

For each model (LeNet-5 on MNIST, ``benchmarks/checkpoints/lenet5_mnist.pt``; the
bundled digits CNN, pretrained and cached) and each latency cost (``latency_ms``:
PyTorch; ``ort_latency_ms``: ONNX Runtime; both at batch 1, one thread):

1. build the table (:class:`rlprune.latency_table.LatencyTable`, 8 widths per entry)
   and time the build;
2. draw 50 random channel-pruning policies (each entry's ratio uniform in
   ``[0, max_ratio]``, fixed seed), measure each pruned model for real (three passes
   over the 50, median of the three; each measurement is the cost's own, the fastest
   of 20 windows) and
   predict it with the table; print the median and worst absolute error in % of the
   measured value, the mean signed error, the noise floor (how far the first two
   passes' measurements of the same model differ) and the drift (how much slower the
   unpruned model ran during the table's build than during the passes);
3. a short search, ``rlprune.prune(..., method="random", episodes=20)`` at a latency
   budget, with and without ``latency_table=True``, both bound to the same original
   latency (median of 5 measurements); print the search's seconds, the whole call's
   seconds (table build and the final real check included) and the returned model's
   measured latency against the limit.

Run: ``.venv/bin/python -m benchmarks.latency_table --data-dir /tmp/rldata``
(``--models lenet5`` or ``digits_cnn``, ``--costs latency_ms`` or ``ort_latency_ms`` for a
part). Latency numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np
import torch
from torch import nn

import rlprune
from rlprune import data, pipeline
from rlprune.agents.base import Callback
from rlprune.costs import BoundBudget, Budget, BudgetInfeasibleError, get_cost
from rlprune.latency_table import LatencyTable
from rlprune.space import PruningSpace
from rlprune.train import load_checkpoint

#: The search budget per (model, cost): a limit the most pruned candidate meets with a
#: margin on this machine (at batch 1 the digits CNN's PyTorch latency is mostly
#: per-call overhead: its most pruned candidate still takes ~70%, too close to a limit).
SEARCH_BUDGETS: dict[tuple[str, str], str | None] = {
    ("lenet5", "latency_ms"): "latency_ms<=85%",
    ("lenet5", "ort_latency_ms"): "ort_latency_ms<=50%",
    ("digits_cnn", "latency_ms"): None,
    ("digits_cnn", "ort_latency_ms"): "ort_latency_ms<=85%",
}


def load_model(name: str, data_dir: str) -> tuple[nn.Module, data.Splits]:
    """The trained model ``name`` and its data."""
    if name == "lenet5":
        model, _ = load_checkpoint("benchmarks/checkpoints/lenet5_mnist.pt")
        return model, data.load("mnist", root=data_dir)
    splits = data.load("digits")
    model, _ = pipeline.pretrained("digits_cnn", splits, 15, 0, progress=False)
    return model, splits


def prediction_error(table: LatencyTable, space: PruningSpace, model: nn.Module,
                     x: torch.Tensor, cost: str, n: int, seed: int) -> dict[str, float]:
    """Errors of the table on ``n`` random candidates, in % of the measured latency.

    Each candidate is measured in three passes over all of them (spread in time, as
    load on a shared machine changes); its latency is the median of the three. The
    *noise floor* is how far two passes' measurements of the same model differ; the
    *drift* how much slower the unpruned model ran while the table was built
    (``table.full``) than during these passes: a change of load on the machine that
    shifts every prediction by about as much.
    """
    meter = get_cost(cost)
    rng = np.random.default_rng(seed)
    cands = [space.apply(model, rng.uniform(0.0, space.max_policy())) for _ in range(n)]
    passes = np.array([[meter(c, x) for c in [model, *cands]] for _ in range(3)])
    full_now, passes = float(np.median(passes[:, 0])), passes[:, 1:]
    real = np.median(passes, axis=0)
    pred = np.array([table.predict(c) for c in cands])
    errs = 100.0 * (pred - real) / real
    noise = 100.0 * np.abs(passes[0] - passes[1]) / real
    a = np.abs(errs)
    return {"median_abs": float(np.median(a)), "worst_abs": float(a.max()),
            "mean_signed": float(np.mean(errs)), "min_ms": float(real.min()),
            "max_ms": float(real.max()), "noise_median": float(np.median(noise)),
            "noise_worst": float(noise.max()),
            "drift": 100.0 * (table.full - full_now) / full_now}


class Seen(Callback):
    """Keeps the search's seconds, also when the final check then raises."""

    search_s = float("nan")

    def on_search_end(self, searcher: Any, result: Any) -> None:
        self.search_s = float(result.wall_time)


def search(model: nn.Module, splits: data.Splits, budget: str, bound: BoundBudget,
           table: bool, seed: int) -> dict[str, Any]:
    """One short random search; seconds and the returned model's measured cost.

    rlprune's final check raises when the returned model fails its last measurement
    (a noisy cost landing right at its limit); that is reported, not hidden.
    """
    t0 = time.perf_counter()
    seen = Seen()
    try:
        res = rlprune.prune(model, splits, budget, method="random", episodes=20, seed=seed,
                            progress=False, bound=bound, latency_table=table, callback=seen)
    except RuntimeError as e:  # the final check
        return {"error": "final check failed: " + str(e).split("(")[1].split(")")[0],
                "total_s": time.perf_counter() - t0, "search_s": seen.search_s}
    except BudgetInfeasibleError as e:  # a noisy measurement during the search
        return {"error": "search stopped: " + str(e).split(": ", 1)[1].split(" at the")[0],
                "total_s": time.perf_counter() - t0, "search_s": seen.search_s}
    total = time.perf_counter() - t0
    name = bound.names[0]
    info = res.search.extra.get("latency_table", {})
    return {"search_s": res.search.wall_time, "total_s": total,
            "build_s": info.get("tables", {}).get(name, {}).get("build_s", 0.0),
            "value": res.costs[name]["pruned"], "limit": res.costs[name]["limit"],
            "moved": info.get("moved_by_real_check", False),
            "acc": res.accuracy.get("reward_pruned_before_finetune", float("nan"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/tmp/rldata")
    ap.add_argument("--models", default="lenet5,digits_cnn")
    ap.add_argument("--costs", default="latency_ms,ort_latency_ms")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"latency at batch 1, 1 thread; {args.candidates} random candidates, "
          f"{args.levels} widths per entry, seed {args.seed}")
    rows, searches = [], []
    for mname in args.models.split(","):
        model, splits = load_model(mname, args.data_dir)
        x = splits.example_input(1)
        space = PruningSpace.from_model(model, x)
        for cost in args.costs.split(","):
            table = LatencyTable.build(space, model, x, cost, levels=args.levels)
            err = prediction_error(table, space, model, x, cost, args.candidates, args.seed)
            rows.append((mname, cost, table, err))
            print(f"{mname} {cost}: table {table.measurements} timings in "
                  f"{table.build_s:.1f} s; error median {err['median_abs']:.1f}%, worst "
                  f"{err['worst_abs']:.1f}%, mean signed {err['mean_signed']:+.1f}%; noise "
                  f"floor median {err['noise_median']:.1f}%, worst {err['noise_worst']:.1f}%; "
                  f"drift {err['drift']:+.1f}%", flush=True)
            budget = SEARCH_BUDGETS.get((mname, cost))
            if budget is None:
                continue
            meter = get_cost(cost)
            original = float(np.median([meter(model, x) for _ in range(5)]))
            bound = BoundBudget(Budget.parse(budget), {cost: original}, x)
            for use in (False, True):
                s = search(model, splits, budget, bound, use, args.seed)
                searches.append((mname, budget, use, s))
                print(f"  {budget} {'with' if use else 'without'} table: search "
                      f"{s['search_s']:.1f} s, call {s['total_s']:.1f} s"
                      + (f"; {s['error']}" if "error" in s else ""), flush=True)
    print()
    print("| model | cost | table timings | build s | measured ms (range) | median abs error "
          "| worst abs error | mean signed error | noise floor: median / worst | drift |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for mname, cost, table, err in rows:
        print(f"| {mname} | {cost} | {table.measurements} | {table.build_s:.1f} | "
              f"{err['min_ms']:.3f}-{err['max_ms']:.3f} | {err['median_abs']:.1f}% | "
              f"{err['worst_abs']:.1f}% | {err['mean_signed']:+.1f}% | "
              f"{err['noise_median']:.1f}% / {err['noise_worst']:.1f}% | {err['drift']:+.1f}% |")
    if searches:
        print()
        print("| model | budget | table | search s | table build s | whole call s | "
              "returned model: measured / limit (ms) | moved by real check | "
              "reward acc before FT |")
        print("|---|---|---|---:|---:|---:|---|---|---:|")
        for mname, budget, use, s in searches:
            if "error" in s:
                print(f"| {mname} | `{budget}` | {'yes' if use else 'no'} | "
                      f"{s['search_s']:.1f} | - | {s['total_s']:.1f} | {s['error']} | - | - |")
                continue
            print(f"| {mname} | `{budget}` | {'yes' if use else 'no'} | {s['search_s']:.1f} | "
                  f"{s['build_s']:.1f} | {s['total_s']:.1f} | {s['value']:.4f} / "
                  f"{s['limit']:.4f} | {'yes' if s['moved'] else 'no'} | {s['acc']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
