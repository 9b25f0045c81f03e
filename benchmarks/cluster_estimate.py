"""An estimate on paper: a ResNet-50 / ImageNet search on 1, 8 and 64 GPUs.

    python -m benchmarks.cluster_estimate [--images-per-second 2500]
                                          [--reward-samples 10000] [--episodes 32]

What is measured here, on this machine's CPU:

* a ResNet-50 (torchvision's layout, 1000 classes, 224x224 input, defined below):
  the layers rlprune prunes (``T``, channel pruning), the seconds to build one pruned
  copy (``space.apply``) and the MACs of one image;
* ``cpl``'s own seconds per episode in the main process (the agent, planning, the
  warm start, bookkeeping: what workers cannot take over), from a search of
  ``--episodes`` episodes of ResNet-56 (55 convolutions, like ResNet-50's 53) on the
  bundled digits with two local workers: the search's seconds minus those it
  waited for the workers.

What is assumed: ``--images-per-second``, ResNet-50 inference throughput of one GPU
(a figure to replace with your own measurement; none was available to us), and the
scoring set: ``--reward-samples`` images scored per candidate, plus 256 for BatchNorm
re-estimation (rlprune's default). One candidate on one GPU then costs its forward
passes plus its build plus the ``boundary`` repair's bisection (14 builds, costs only).

The search lengths are the papers': ``cpl`` 40,000 timesteps (the authors'), that is
``ceil(40000 / T)`` episodes, proposed ``K`` at a time on ``K`` GPUs; AMC 800
episodes, one at a time at any ``K`` (its learner updates after every episode).
The fine-tune after the search is not included.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune import api, data, models
from rlprune.costs import count_macs
from rlprune.space import PruningSpace

REPAIR_BUILDS = 14  # Evaluator.to_boundary's bisection steps


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1 reduce, 3x3 (stride here), 1x1 expand."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 for 224x224 ImageNet images (3-4-6-3 bottlenecks)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, 2 if (b == 0 and i > 0) else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def _median_seconds(fn: Any, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fmt(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images-per-second", type=float, default=2500.0,
                   help="ResNet-50 inference images/s of one GPU (an assumption)")
    p.add_argument("--reward-samples", type=int, default=10_000)
    p.add_argument("--bn-samples", type=int, default=256)
    p.add_argument("--episodes", type=int, default=32)
    args = p.parse_args(argv)

    # ResNet-50: what rlprune prunes, and what building a candidate costs
    torch.manual_seed(0)
    r50 = resnet50().eval()
    ex = torch.randn(1, 3, 224, 224)
    space = PruningSpace.from_model(r50, ex, granularity="channel")
    policy = 0.5 * np.asarray(space.max_policy())
    build = _median_seconds(lambda: space.apply(r50, policy))
    macs = count_macs(r50, ex)
    t_layers = len(space)
    print(f"ResNet-50: {t_layers} prunable layer groups, {macs / 1e9:.2f} GMACs per image, "
          f"one pruned copy built in {build * 1000:.0f} ms (median of 5, this CPU)")

    # cpl's own time per episode in the main process, on a network as deep
    splits = data.load("digits", seed=0, progress=False)
    r56 = models.create("resnet56", num_classes=10, in_channels=1)
    res = api.prune(r56, splits, "flops<=0.5", method="cpl", episodes=args.episodes,
                    parallel=8, workers=2, threads=1, progress=False)
    par = res.search.extra["parallel"]
    own = res.search.wall_time - par["waited_s"]
    r56_layers = len(res.policy)
    per_episode = own / res.search.evaluations * t_layers / r56_layers
    print(f"cpl main process: {own:.1f} s of a {res.search.wall_time:.1f} s search of "
          f"{res.search.evaluations} candidates on ResNet-56 ({r56_layers} layer groups): "
          f"{per_episode * 1000:.0f} ms per episode scaled to {t_layers} groups")

    images = args.reward_samples + args.bn_samples
    forward = images / args.images_per_second
    per_candidate = forward + build * (1 + REPAIR_BUILDS)
    print(f"one candidate on one GPU: {images:,} images at {args.images_per_second:,.0f}/s "
          f"(assumed) = {forward:.2f} s, + {1 + REPAIR_BUILDS} builds = "
          f"{per_candidate:.2f} s")
    cpl_eps = math.ceil(40_000 / t_layers)
    print()
    print("| search | candidates | 1 GPU | 8 GPUs | 64 GPUs |")
    print("|---|---|---|---|---|")
    cells = []
    for k in (1, 8, 64):
        rounds = math.ceil(cpl_eps / k)
        cells.append(_fmt(rounds * per_candidate + cpl_eps * per_episode))
    print(f"| cpl, 40k timesteps, `--parallel K` | {cpl_eps} | {' | '.join(cells)} |")
    amc = 800 * (forward + build) + 800 * per_episode
    print(f"| amc, 800 episodes (one at a time) | 800 | {_fmt(amc)} | {_fmt(amc)} | "
          f"{_fmt(amc)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
