"""Peak memory of pruning with a streamed reward split, at two dataset sizes.

    python -m benchmarks.data_memory [--sizes 50000,200000] [--episodes 8] [--no-contrast]
                                     [--plain-malloc]

For each size N a synthetic image dataset (10 classes, 3x8x8 uint8 images: a pattern
per class plus noise) is written to numpy memmaps in a temporary folder, with twice N
training samples, so that ``reward_fraction=0.5`` holds out a reward split of N samples,
and a test set of 10,000. A fresh Python process then prunes ``digits_cnn`` on it,
reading the data through a plain ``torch.utils.data.Dataset`` over the memmaps (the
streamed path, :func:`rlprune.data.from_datasets`): a short pretraining (300 SGD
steps), a ``cpl`` search of ``--episodes`` candidates (each BatchNorm-recalibrated and
scored on the reward split, racing on), one epoch of fine-tuning and the final
evaluation. The process reports its peak resident memory, which includes Python,
torch and the model: ``VmHWM`` of ``/proc/self/status`` on Linux, ``ru_maxrss``
elsewhere. (On Linux ``ru_maxrss`` is not the process's own: it keeps the peak of the
process it was forked from across ``exec``, so it would report this script's peak
while it wrote the data. The data is written by a process of its own for the same
reason.)

With ``--contrast`` (default) the same runs are repeated with the arrays read into
memory as tensors (:func:`rlprune.data.from_tensors`), whose peak must grow with N:
that the streamed figures do not is then not an artefact of the measurement.

The runs set ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc): every allocation of 128 KiB
or more, a batch of inputs or activations, is then its own memory map, returned to
the system when freed. By default glibc raises that threshold as blocks are freed and
serves later large blocks from its heap, which it keeps; the peak then also measures
how the heap happened to fragment, which moves it by about 5% between runs of the
same size. ``--plain-malloc`` measures with glibc's defaults (what a user's process
shows).

The streamed peaks must differ by less than 10% (exit status 1 otherwise). The
Dataset reads rows with positioned reads rather than through a memory map: a map of
the file would keep resident, and counted, every page it has touched, plus 64 KiB of
neighbours per scattered row (the kernel's fault-around).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE = (3, 8, 8)
CLASSES = 10
TEST_SAMPLES = 10_000
REWARD_FRACTION = 0.5
MEAN, STD = 0.5, 0.25
CHUNK = 50_000
#: glibc's mmap threshold for the measured runs (unless --plain-malloc), in bytes.
STEADY_MMAP_THRESHOLD = "131072"


# --------------------------------------------------------------------------- the data
def write_data(folder: Path, n: int, seed: int) -> None:
    """``{folder}/x.npy`` (n x 3 x 8 x 8 uint8) and ``{folder}/y.npy`` (n int64), written
    in chunks through memmaps so that the writer's memory stays small too."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).integers(40, 216, (CLASSES, *SHAPE))
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.uint8, shape=(n, *SHAPE))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.int64, shape=(n,))
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        labels = rng.integers(0, CLASSES, m)
        noise = rng.normal(0.0, 100.0, (m, *SHAPE))
        x[start : start + m] = np.clip(centers[labels] + noise, 0, 255).astype(np.uint8)
        y[start : start + m] = labels
    x.flush()
    y.flush()
    del x, y


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype[Any]]:
    """Where an ``.npy`` file's data starts, its shape and dtype (C order)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        assert not fortran
        return f.tell(), tuple(shape), dtype


class MemmapPairs(Dataset[tuple[torch.Tensor, int]]):
    """``(image, label)`` pairs of the two ``.npy`` memmap files in ``folder``.

    This is the Dataset a user would write over arrays on disk, with one care taken:
    rows are fetched with positioned reads (``__getitems__``, a batch at a time), not
    through a memory map. Mapping in scattered rows pulls 64 KiB around each one into
    the process (the kernel's fault-around), which counts as resident memory, up to the
    file's size; a read copies only the row.
    """

    def __init__(self, folder: Path):
        self.files = [str(folder / "x.npy"), str(folder / "y.npy")]
        self.layouts = [npy_layout(Path(f)) for f in self.files]
        self.n = int(self.layouts[1][1][0])

    def __len__(self) -> int:
        return self.n

    def _read(self, which: int, rows: np.ndarray) -> np.ndarray:
        offset, shape, dtype = self.layouts[which]
        out = np.empty((len(rows), *shape[1:]), dtype=dtype)
        row_bytes = out[0].nbytes if len(rows) else 0
        raw = out.reshape(len(rows), -1).view(np.uint8)
        with open(self.files[which], "rb", buffering=0) as f:
            for i, r in enumerate(rows.tolist()):
                f.seek(offset + r * row_bytes)
                f.readinto(raw[i].data)
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        xs = self._read(0, idx[order])[back]
        ys = self._read(1, idx[order])[back]
        x = (torch.from_numpy(xs).float() / 255.0 - MEAN) / STD
        return list(zip(x.unbind(0), ys.tolist()))


# ------------------------------------------------------------------------- the child
def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def child(folder: Path, mode: str, episodes: int, finetune_epochs: int) -> dict[str, Any]:
    """Prune on the data in ``folder`` (``mode``: ``dataset`` or ``tensors``); the peak
    memory and what was done."""
    import rlprune
    from rlprune import data, models, train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if mode == "dataset":
        splits = data.from_datasets(MemmapPairs(folder / "train"),
                                    test=MemmapPairs(folder / "test"),
                                    reward_fraction=REWARD_FRACTION, seed=0,
                                    num_classes=CLASSES, name="memmap", progress=False)
    else:
        def tensors(sub: str) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.from_numpy(np.load(folder / sub / "x.npy")).float()
            return (x / 255.0 - MEAN) / STD, torch.from_numpy(np.load(folder / sub / "y.npy"))

        splits = data.from_tensors(*tensors("train"), *tensors("test"),
                                   reward_fraction=REWARD_FRACTION, seed=0, name="tensors")
    torch.manual_seed(0)
    model = models.create("digits_cnn", num_classes=CLASSES, in_channels=SHAPE[0])
    train.fit(model, splits, epochs=1, max_steps=300, lr=0.05, seed=0, progress=False)
    res = rlprune.prune(model, splits, "params<=0.5", method="cpl", episodes=episodes,
                        finetune_epochs=finetune_epochs, seed=0, progress=False)
    return {"mode": mode, "streamed": splits.streamed, "reward": len(splits.reward),
            "train": len(splits.train), "peak_rss_mb": peak_rss_bytes() / 2**20,
            "seconds": time.perf_counter() - t0, "candidates": res.search.evaluations,
            "test_acc": res.accuracy.get("pruned", float("nan")), "ok": res.feasible}


def run_child(folder: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`child` in a fresh Python process (its own peak memory)."""
    cmd = [sys.executable, "-m", "benchmarks.data_memory", "--child", str(folder),
           "--mode", mode, "--episodes", str(args.episodes),
           "--finetune-epochs", str(args.finetune_epochs)]
    env = dict(os.environ)
    if not args.plain_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = STEADY_MMAP_THRESHOLD
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one measured run); the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50000,200000",
                    help="reward-split sizes, comma-separated (default 50000,200000)")
    ap.add_argument("--episodes", type=int, default=8, help="cpl candidates per run")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=True,
                    help="also run with the data in memory as tensors")
    ap.add_argument("--plain-malloc", action="store_true",
                    help="measure with glibc's default allocator settings (noisier)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="dataset", help=argparse.SUPPRESS)
    ap.add_argument("--write", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write:
        folder, n, seed = args.write
        write_data(Path(folder), int(n), int(seed))
        return 0
    if args.child:
        print(json.dumps(child(Path(args.child), args.mode, args.episodes,
                               args.finetune_epochs)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print("allocator: " + ("glibc defaults" if args.plain_malloc else
                           f"MALLOC_MMAP_THRESHOLD_={STEADY_MMAP_THRESHOLD}"), file=sys.stderr)
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="rlprune-memory-") as tmp:
            folder = Path(tmp)
            for sub, count, seed in (("train", int(round(n / REWARD_FRACTION)), 0),
                                     ("test", TEST_SAMPLES, 1)):
                (folder / sub).mkdir()
                subprocess.run([sys.executable, "-m", "benchmarks.data_memory", "--write",
                                str(folder / sub), str(count), str(seed)], check=True)
            for mode in ("dataset", "tensors") if args.contrast else ("dataset",):
                row = run_child(folder, mode, args)
                rows.append(row)
                print(f"  {mode:8s} reward split {row['reward']:>7,}: peak RSS "
                      f"{row['peak_rss_mb']:7.1f} MB, {row['seconds']:6.1f} s",
                      file=sys.stderr, flush=True)

    print("\n| data | reward samples | train samples | peak RSS (MB) | wall (s) | "
          "candidates | test acc after fine-tune | budget met |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        src = "Dataset over memmaps (streamed)" if r["streamed"] else "tensors in memory"
        print(f"| {src} | {r['reward']:,} | {r['train']:,} | {r['peak_rss_mb']:.1f} | "
              f"{r['seconds']:.1f} | {r['candidates']} | {r['test_acc']:.4f} | {r['ok']} |")
    streamed = [r["peak_rss_mb"] for r in rows if r["streamed"]]
    spread = max(streamed) / min(streamed) - 1.0
    verdict = "ok" if spread < 0.10 else "FAILED"
    print(f"\nstreamed peak RSS: {', '.join(f'{v:.1f}' for v in streamed)} MB; the largest is "
          f"{100 * spread:.1f}% above the smallest (must be < 10%): {verdict}")
    return 0 if spread < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
