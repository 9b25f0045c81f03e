"""Which latency statistic repeats best between processes: the median or the fastest window.

    python -m benchmarks.latency_statistic MODEL.pt [--runtime torch|onnxruntime]
        [--input-shape 1,3,32,32] [--processes 20] [--windows 100]

A latency budget is only kept if the returned model also passes its next measurement,
in another process. This starts ``--processes`` fresh Python processes one after
another; each loads the saved model and times ``--windows`` windows of about 10 ms of
back-to-back calls (one thread), exactly as :func:`rlprune.costs.measure_latency_ms`
(or ``measure_ort_latency_ms``) does, and prints every window's time per call. Every
statistic a measurement could report (the median of the first 7 windows, the fastest
of the first 20, ...) is then computed per process from the same windows, and the
table shows how far each one strays between processes: its median and worst value
over the processes, divided by the reference (the median over processes of the
fastest of all windows), and how many processes exceed the reference by 3%, 6% and
10%. One stream of windows per process serves every statistic, so the comparison is
made on the same moments of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: (label, statistic of one process's windows).
STATISTICS: list[tuple[str, Callable[[np.ndarray], float]]] = [
    ("median of 7 windows (before)", lambda a: float(np.median(a[:7]))),
    ("fastest of 7", lambda a: float(a[:7].min())),
    ("median of 20", lambda a: float(np.median(a[:20]))),
    ("fastest of 20 (now)", lambda a: float(a[:20].min())),
    ("fastest of 50", lambda a: float(a[:50].min())),
    ("fastest of 100", lambda a: float(a.min())),
]


def windows(path: str, runtime: str, shape: tuple[int, ...], n: int) -> list[float]:
    """``n`` windows of about 10 ms each, one thread: ms per call in each, in order."""
    import torch

    from rlprune import costs, train

    torch.set_num_threads(1)
    model, _ = train.load_checkpoint(path)
    return costs.latency_windows(model.eval(), torch.zeros(shape), runtime, repeats=n)


def table(streams: Sequence[Sequence[float]]) -> list[str]:
    """The markdown table of every statistic's spread over processes (module docstring)."""
    a = np.asarray(streams, dtype=np.float64)
    ref = float(np.median(a.min(axis=1)))
    lines = [f"reference (median over {len(a)} processes of the fastest of {a.shape[1]} "
             f"windows): {ref:.4g} ms", "",
             "| statistic | median / ref | worst / ref | > 1.03 | > 1.06 | > 1.10 |",
             "|---|---|---|---|---|---|"]
    for label, f in STATISTICS:
        v = np.array([f(row) for row in a]) / ref
        lines.append(f"| {label} | {np.median(v):.3f} | {v.max():.3f} | "
                     f"{int((v > 1.03).sum())} | {int((v > 1.06).sum())} | "
                     f"{int((v > 1.10).sum())} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved model (pruned.pt of a run, or a checkpoint)")
    ap.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch")
    ap.add_argument("--input-shape", default="1,3,32,32", help="example input shape")
    ap.add_argument("--processes", type=int, default=20, help="fresh processes")
    ap.add_argument("--windows", type=int, default=100, help="windows per process (>= 100)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    if args.one:
        print(json.dumps(windows(args.model, args.runtime, shape, args.windows)))
        return 0
    if args.windows < 100:
        ap.error("--windows must be at least 100 (the statistics use up to 100)")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    streams = []
    for _ in range(args.processes):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.latency_statistic", args.model, "--one",
             "--runtime", args.runtime, "--input-shape", args.input_shape,
             "--windows", str(args.windows)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        streams.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("\n".join(table(streams)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
