"""Search-time cost of one candidate evaluation, against one forward pass.

    python -m benchmarks.bench_env [--models lenet5,resnet20] [--repeats 5]

For each model and granularity it times, in the same process and side by side:
the forward pass of the *unpruned* model over the reward split (the yardstick),
``space.apply`` (copy + prune), measuring the budget's costs on the candidate, and
the candidate's own forward pass over the reward split. The per-candidate
overhead is (apply + costs) / unpruned forward. Models are untrained (timing does
not depend on the weights); inputs are random tensors shaped like the dataset's,
with as many samples as the default reward split (10% of the training set).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from rlprune import models, train
from rlprune.costs import Budget
from rlprune.space import PruningSpace

SHAPES = {"lenet5": ((1, 28, 28), 6000), "lenet300": ((1, 28, 28), 6000),
          "resnet20": ((3, 32, 32), 5000), "resnet56": ((3, 32, 32), 5000),
          "digits_cnn": ((1, 8, 8), 144)}


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench(name: str, granularity: str, repeats: int) -> dict[str, float]:
    shape, n = SHAPES[name]
    torch.manual_seed(0)
    model = models.create(name, 10, shape[0]).eval()
    x = torch.randn(n, *shape)
    y = torch.randint(0, 10, (n,))
    ex = x[:1]
    space = PruningSpace.from_model(model, ex, granularity=granularity)
    budget = Budget.parse("nonzero_params<=0.5,macs<=0.5" if granularity == "weight"
                          else "params<=0.5,macs<=0.5")
    bound = budget.bind(model, ex)
    rng = np.random.default_rng(0)
    policies = [rng.uniform(0, 0.8, len(space)) * space.max_policy() / max(space.max_policy())
                for _ in range(repeats)]
    fwd = _median_time(lambda: train.evaluate(model, x, y), repeats)
    it = iter(policies * 2)
    apply_t = _median_time(lambda: space.apply(model, next(it)), repeats)
    cands = [space.apply(model, p) for p in policies]
    ic = iter(cands * 2)
    cost_t = _median_time(lambda: bound.measure(next(ic)), repeats)
    ic2 = iter(cands * 2)
    cand_fwd = _median_time(lambda: train.evaluate(next(ic2), x, y), repeats)
    return {"forward_unpruned_s": fwd, "apply_s": apply_t, "costs_s": cost_t,
            "forward_candidate_s": cand_fwd, "overhead": (apply_t + cost_t) / fwd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | granularity | forward unpruned (reward split) | apply | costs | "
          "forward candidate | overhead (apply+costs)/forward |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for gran in ("channel", "weight"):
            r = bench(name, gran, args.repeats)
            print(f"| {name} | {gran} | {r['forward_unpruned_s'] * 1e3:.1f} ms | "
                  f"{r['apply_s'] * 1e3:.1f} ms | {r['costs_s'] * 1e3:.2f} ms | "
                  f"{r['forward_candidate_s'] * 1e3:.1f} ms | {r['overhead']:.3f} |")


if __name__ == "__main__":
    main()
