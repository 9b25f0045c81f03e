"""How cheap are the per-candidate costs? ResNet-56, CIFAR-sized inputs, fixed seed.

Prints three timings and the acceptance checks of issue #3:

* params + MACs of a pruned ResNet-56 candidate, against one forward pass of ResNet-56
  at batch 256 (32x32): the ratio must be well under 1;
* the first (cold) MACs count of a new architecture, which runs one hooked batch-1
  forward pass to record the layers' output sizes;
* applying a random channel policy to ResNet-56 (deep copy + channel removal): must be
  under 0.5 s.

Run: ``.venv/bin/python -m benchmarks.bench_costs`` (``--threads N`` for the forward pass).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from rlprune import costs, models
from rlprune.space import PruningSpace


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn`` in seconds over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = models.create("resnet56", 10, 3).eval()
    x1 = torch.randn(1, 3, 32, 32)
    batch = torch.randn(256, 3, 32, 32)
    space = PruningSpace.from_model(model, x1)
    rng = np.random.default_rng(args.seed)
    policy = rng.uniform(0.0, 0.8, len(space))
    candidate = space.apply(model, policy)

    def forward() -> None:
        with torch.inference_mode():
            model(batch)

    def params_macs() -> None:
        costs.count_params(candidate)
        costs.count_macs(candidate, x1)

    def cold_macs() -> None:
        costs._MAC_TABLES.clear()
        costs.count_macs(candidate, x1)

    policies = [rng.uniform(0.0, 0.9, len(space)) for _ in range(args.repeats)]
    it = iter(policies)

    forward()  # warm-up
    params_macs()
    t_fwd, t_fwd_min = best_of(forward, args.repeats)
    t_cost, t_cost_min = best_of(params_macs, 50)
    t_cold, _ = best_of(cold_macs, args.repeats)
    t_apply, t_apply_min = best_of(lambda: space.apply(model, next(it)), args.repeats)
    costs.count_macs(candidate, x1)  # leave the cache warm

    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch "
          f"{torch.__version__}, {args.threads} thread(s) for the forward pass")
    print(f"resnet56: {len(space)} channel groups, params {costs.count_params(model):,.0f}, "
          f"MACs {costs.count_macs(model, x1):,.0f}")
    print(f"candidate: params {costs.count_params(candidate):,.0f}, "
          f"MACs {costs.count_macs(candidate, x1):,.0f}")
    print("| quantity | median | min |")
    print("|---|---|---|")
    print(f"| forward, resnet56, batch 256 | {t_fwd * 1e3:.1f} ms | {t_fwd_min * 1e3:.1f} ms |")
    print(f"| params + MACs of a candidate (cached) | {t_cost * 1e3:.3f} ms | "
          f"{t_cost_min * 1e3:.3f} ms |")
    print(f"| MACs of a new architecture (cold, hooked batch-1 pass) | {t_cold * 1e3:.2f} ms | |")
    print(f"| apply a random channel policy | {t_apply * 1e3:.1f} ms | "
          f"{t_apply_min * 1e3:.1f} ms |")
    ratio = t_cost / t_fwd
    print(f"ratio (params+MACs) / forward(batch 256) = {ratio:.5f}  "
          f"[{'OK' if ratio < 0.05 else 'FAIL'}: well under 1]")
    print(f"apply time {t_apply:.3f} s  [{'OK' if t_apply < 0.5 else 'FAIL'}: < 0.5 s]")
    return 0 if ratio < 0.05 and t_apply < 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
