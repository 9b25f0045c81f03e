"""Candidates per second of a search in one process, on local workers and on Ray.

    python -m benchmarks.parallel [--data-dir DIR] [--method cpl] [--episodes 64]
                                  [--parallel 8] [--budget flops<=0.3] [--no-ray]

LeNet-5 on MNIST (the committed checkpoint), channel pruning. The same search (same
seed, ``--parallel`` candidates proposed together, so the same candidates in every
row: the table says whether they were) runs

* in this process with torch's default threads, then with one thread;
* on ``--workers 2`` local processes, one thread each;
* on a local Ray instance with two one-CPU actors (unless ``--no-ray``).

Each row gives the search's wall seconds (the pool is started before the search and
stopped after it: that is the ``start s`` column), candidates scored per second of
search, and the ratio to the one-process rows. A search also spends time in the
main process that workers cannot share: the agent itself, and working out the
repair of each candidate (the ``boundary`` repair bisects on measured costs), which
workers do for the candidates they score. ``main process s`` is the search's time
that was not spent waiting for the workers' answers.

The memory lines show what sharing the data costs: the private memory (``Private_*``
of ``/proc/PID/smaps_rollup``) of an idle worker (Python and torch alone) and of each
search worker after scoring, against the size of the reward and training splits'
tensors, and each worker's share of shared pages (``Pss``). A worker that copied the
data would hold it privately.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from rlprune import api, data, train
from rlprune.costs import Budget
from rlprune.workers import LocalWorkers, ray_available

CHECKPOINT = Path(__file__).parent / "checkpoints" / "lenet5_mnist.pt"


def _record(res: Any) -> list[tuple[Any, ...]]:
    return [(tuple(round(p, 6) for p in c.policy), c.accuracy) for c in res.search.history]


class _Empty:
    """A scorer that holds nothing: what a worker process costs by itself."""

    def score_job(self, job: Any) -> Any:
        return job


def _smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("RLPRUNE_DATA"))
    p.add_argument("--method", default="cpl")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--budget", default="flops<=0.3")
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args(argv)

    splits = data.load("mnist", root=args.data_dir, seed=0, progress=False)
    model, _ = train.load_checkpoint(CHECKPOINT)
    default_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []

    def run(label: str, main_threads: int, **kw: Any) -> None:
        torch.set_num_threads(main_threads)
        t0 = time.perf_counter()
        res = api.prune(model, splits, args.budget, method=args.method,
                        episodes=args.episodes, parallel=args.parallel, seed=0,
                        progress=False, **kw)
        total = time.perf_counter() - t0
        torch.set_num_threads(default_threads)
        search = res.search.wall_time
        n = res.search.evaluations
        waited = res.search.extra["parallel"].get("waited_s")
        rows.append({"label": label, "search": search, "start": total - search, "n": n,
                     "rate": n / search, "record": _record(res),
                     "own": None if waited is None else search - waited})
        print(f"  {label}: {n} candidates in {search:.1f} s", flush=True)

    print(f"LeNet-5 / MNIST, {args.method}, {args.budget}, {args.episodes} episodes, "
          f"parallel={args.parallel}, {os.cpu_count()} cores", flush=True)
    run(f"1 process, {default_threads} threads", default_threads)
    run("1 process, 1 thread", 1)
    run("--workers 2, 1 thread each", 1, workers=2, threads=1)
    if not args.no_ray and ray_available():
        run("Ray local, 2 actors, 1 thread each", 1, ray="local", workers=2, threads=1)

    base = rows[0]
    one = rows[1]
    print()
    print("| run | candidates | search s | start s | candidates/s | vs 1 process "
          f"({default_threads} threads) | vs 1 thread | same candidates | main process s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['n']} | {r['search']:.1f} | {r['start']:.1f} | "
              f"{r['rate']:.2f} | {r['rate'] / base['rate']:.2f}x | "
              f"{r['rate'] / one['rate']:.2f}x | "
              f"{'yes' if r['record'] == base['record'] else 'NO'} | "
              f"{'-' if r['own'] is None else format(r['own'], '.1f')} |")

    # memory: the data each worker maps, against what it holds privately
    env = api.make_env(model, splits, Budget.coerce(args.budget).bind(
        model, splits.example_input(1)), args.method)
    ev = env.evaluator
    tensors = [t for s in (splits.train, splits.reward) for t in (s.x, s.y)]
    data_bytes = sum(t.numel() * t.element_size() for t in tensors)
    empty = LocalWorkers(_Empty(), 1, threads=1)
    try:
        m = _smaps(empty.pids()[0])
        print(f"\nan idle worker (Python and torch): private "
              f"{_mb(m.get('Private_Clean', 0) + m.get('Private_Dirty', 0))}")
    finally:
        empty.close()
    pool = LocalWorkers(ev.for_workers(), 2, threads=1)
    try:
        pids = pool.pids()
        pool.map([(ev.uniform_policy(), 0, None, "none")] * 2)  # every worker has scored
        print(f"train + reward tensors: {_mb(data_bytes)}")
        for pid in pids:
            m = _smaps(pid)
            private = m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
            print(f"worker {pid}: private {_mb(private)}, Pss {_mb(m.get('Pss', 0))}, "
                  f"Rss {_mb(m.get('Rss', 0))}")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
