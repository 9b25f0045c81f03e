"""Datasets as in-memory tensors with fixed splits: ``train``, ``reward`` and ``test``.

* ``train`` trains and fine-tunes models.
* ``reward`` is carved out of the training set (fixed by ``seed``): every search
  scores candidates on it, so no search ever sees ``test``.
* ``test`` is for final reporting only.

Readers take the standard formats a user already has: scikit-learn's bundled 8x8
digits (no download), the four MNIST idx ``.gz`` files, and the CIFAR-10/100
python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``). ``root``
defaults to ``$RLPRUNE_DATA``. Images are normalised per dataset; augmentation
(random crop with padding, horizontal flip) runs on tensors in batches, without
DataLoader worker processes.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Split",
    "Splits",
    "DataError",
    "load",
    "from_tensors",
    "list_datasets",
    "augment",
]


class DataError(ValueError):
    """A dataset file is missing or unreadable; the message says which and what was expected."""


@dataclass
class Split:
    """Inputs ``x`` (float, NCHW or NF) and labels ``y`` (int64) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches of ``batch_size`` (the last may be smaller), in
        order or, with ``shuffle``, in a random order drawn from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], self.y[idx]


@dataclass
class Splits:
    """A dataset split three ways, with what is needed to rebuild its preprocessing.

    ``train`` trains and fine-tunes, ``reward`` (held out from the training set) scores
    every candidate of a search, ``test`` is only used for the final report.
    ``num_classes`` and ``input_shape`` (one sample's, e.g. ``(1, 28, 28)``) describe the
    task and ``name`` the dataset; ``mean`` and ``std`` are the per-channel
    normalisation already applied to the inputs, ``augmentation`` the training-time
    augmentation and ``meta`` anything else a reader records.
    """

    train: Split
    reward: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augmentation: str | None = None  # "crop_flip", "crop" or None
    meta: dict[str, object] = field(default_factory=dict)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A batch of the first ``batch_size`` training inputs, for tracing a model."""
        return self.train.x[:batch_size].clone()

    def __repr__(self) -> str:
        return (
            f"Splits({self.name!r}, train={len(self.train)}, reward={len(self.reward)}, "
            f"test={len(self.test)}, classes={self.num_classes}, input={self.input_shape})"
        )


# ----------------------------------------------------------------------------- helpers
def _default_root(root: str | os.PathLike[str] | None) -> Path | None:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("RLPRUNE_DATA")
    return Path(env).expanduser() if env else None


def _carve(
    x: torch.Tensor, y: torch.Tensor, reward_fraction: float, seed: int
) -> tuple[Split, Split]:
    """Split (x, y) into train and reward parts, fixed by ``seed``."""
    if not 0.0 <= reward_fraction < 1.0:
        raise ValueError(f"reward_fraction must be in [0, 1), got {reward_fraction}")
    n = int(y.shape[0])
    n_reward = int(round(n * reward_fraction))
    if reward_fraction > 0 and n_reward == 0:
        n_reward = 1
    if n - n_reward < 1:
        raise ValueError(f"{n} training samples are too few for reward_fraction="
                         f"{reward_fraction}: it leaves no training data; give more samples "
                         "or a smaller reward_fraction")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    r_idx, t_idx = perm[:n_reward].sort().values, perm[n_reward:].sort().values
    return Split(x[t_idx], y[t_idx]), Split(x[r_idx], y[r_idx])


def _normalise(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    return (x - m) / s


def _build(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    reward_fraction: float,
    seed: int,
    augmentation: str | None,
) -> Splits:
    x_train = _normalise(x_train.float(), mean, std)
    x_test = _normalise(x_test.float(), mean, std)
    train, reward = _carve(x_train, y_train.long(), reward_fraction, seed)
    return Splits(
        train=train,
        reward=reward,
        test=Split(x_test, y_test.long()),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        name=name,
        mean=mean,
        std=std,
        augmentation=augmentation,
    )


# ----------------------------------------------------------------------------- readers
def _digits(root: Path | None, reward_fraction: float, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 1797 x 1 x 8 x 8
    y = torch.tensor(d.target, dtype=torch.int64)
    # fixed test split (seed 0, 20%) so that test never moves with the search seed
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(round(0.2 * len(y)))
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    mean, std = (float(x[tr].mean()),), (float(x[tr].std()),)
    return _build("digits", x[tr], y[tr], x[te], y[te], 10, mean, std, reward_fraction, seed,
                  None)


def _read_idx(path: Path, kind: str, look: str) -> np.ndarray:
    """Read one gzip'd idx file (magic 2049 labels, 2051 images)."""
    if not path.is_file():
        raise DataError(
            f"MNIST file not found: {path} (looked in {look}). Expected the four standard idx "
            "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
        )
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        magic = struct.unpack(">I", raw[:4])[0]
        if kind == "images":
            if magic != 2051:
                raise ValueError(f"magic number {magic}, expected 2051")
            n, rows, cols = struct.unpack(">III", raw[4:16])
            arr = np.frombuffer(raw, dtype=np.uint8, count=n * rows * cols, offset=16)
            return arr.reshape(n, 1, rows, cols)
        if magic != 2049:
            raise ValueError(f"magic number {magic}, expected 2049")
        (n,) = struct.unpack(">I", raw[4:8])
        return np.frombuffer(raw, dtype=np.uint8, count=n, offset=8)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as e:
        raise DataError(
            f"cannot read MNIST {kind} file {path}: {e}. Expected a gzip'd idx file "
            f"(idx3 for images, idx1 for labels), looked in {look}"
        ) from None


def _mnist(root: Path | None, reward_fraction: float, seed: int) -> Splits:
    if root is None:
        raise DataError(
            "mnist needs a data directory: pass root=/ --data-dir DIR or set $RLPRUNE_DATA "
            "to a folder holding the four idx .gz files (or a mnist/ subfolder)"
        )
    base = root / "mnist" if (root / "mnist").is_dir() else root
    look = f"{root} and {root / 'mnist'}"
    x_tr = _read_idx(base / "train-images-idx3-ubyte.gz", "images", look)
    y_tr = _read_idx(base / "train-labels-idx1-ubyte.gz", "labels", look)
    x_te = _read_idx(base / "t10k-images-idx3-ubyte.gz", "images", look)
    y_te = _read_idx(base / "t10k-labels-idx1-ubyte.gz", "labels", look)
    for xs, ys, what in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if len(xs) != len(ys):
            raise DataError(f"MNIST {what} images ({len(xs)}) and labels ({len(ys)}) differ "
                            f"in count, in {base}")

    def to(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.copy())

    return _build("mnist", to(x_tr) / 255.0, to(y_tr), to(x_te) / 255.0, to(y_te), 10,
                  (0.1307,), (0.3081,), reward_fraction, seed, None)


_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _unpickle(path: Path, look: str) -> dict[str, object]:
    if not path.is_file():
        raise DataError(
            f"CIFAR file not found: {path} (looked in {look}). Expected the standard python "
            "pickle layout: cifar-10-batches-py/data_batch_1..5 + test_batch, or "
            "cifar-100-python/train + test"
        )
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many types on corrupt input
        raise DataError(
            f"cannot read CIFAR pickle {path}: {type(e).__name__}: {e}. Expected a python "
            "pickle of a dict with 'data' (N x 3072 uint8) and 'labels'/'fine_labels'"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR pickle {path} holds a {type(d).__name__}, expected a dict with "
                        "'data' (N x 3072 uint8) and 'labels'/'fine_labels'")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in d.items()}


def _cifar(name: str, root: Path | None, reward_fraction: float, seed: int) -> Splits:
    if root is None:
        raise DataError(
            f"{name} needs a data directory: pass root= / --data-dir DIR or set $RLPRUNE_DATA "
            "to the folder holding cifar-10-batches-py/ (or cifar-100-python/)"
        )
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    base = root / sub if (root / sub).is_dir() else root
    look = f"{root} and {root / sub}"
    label_key = "labels" if name == "cifar10" else "fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]

    def read(fname: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(base / fname, look)
        try:
            data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d[label_key], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(
                f"CIFAR pickle {base / fname} is malformed ({type(e).__name__}: {e}); expected "
                f"keys 'data' (N x 3072 uint8) and '{label_key}'"
            ) from None
        if len(data) != len(labels):
            raise DataError(f"CIFAR pickle {base / fname}: {len(data)} images, "
                            f"{len(labels)} labels")
        return data, labels

    parts = [read(f) for f in files]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = read("test_batch" if name == "cifar10" else "test")
    mean, std = _CIFAR_STATS[name]
    return _build(name, torch.from_numpy(x_tr) / 255.0, torch.from_numpy(y_tr),
                  torch.from_numpy(x_te) / 255.0, torch.from_numpy(y_te),
                  10 if name == "cifar10" else 100, mean, std, reward_fraction, seed,
                  "crop_flip")


def _synthetic(
    reward_fraction: float,
    seed: int,
    shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 4,
    n_train: int = 256,
    n_test: int = 64,
) -> Splits:
    """Random but learnable data: each class has its own mean pattern plus noise."""
    g = torch.Generator().manual_seed(seed + 12345)
    centers = torch.randn(num_classes, *shape, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = centers[y] + 0.5 * torch.randn(n, *shape, generator=g)
        return x, y

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    c = shape[0] if len(shape) == 3 else 1
    return _build("synthetic", x_tr, y_tr, x_te, y_te, num_classes, (0.0,) * c, (1.0,) * c,
                  reward_fraction, seed, None)


_DATASETS = ("digits", "mnist", "cifar10", "cifar100", "synthetic")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load`."""
    return list(_DATASETS)


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    reward_fraction: float = 0.1,
    seed: int = 0,
    **kwargs: Any,
) -> Splits:
    """Load a dataset by name into in-memory train / reward / test splits.

    ``name`` is ``digits``, ``mnist``, ``cifar10``, ``cifar100`` or ``synthetic``;
    ``root`` (default ``$RLPRUNE_DATA``) is the folder holding the standard files.
    ``reward_fraction`` of the training set, drawn with ``seed``, is held out as the
    reward split. ``kwargs`` go to ``synthetic``, which accepts ``shape``,
    ``num_classes``, ``n_train``, ``n_test``.
    Missing or corrupt files raise :class:`DataError` naming the file and format.
    """
    key = str(name).lower().replace("-", "")
    r = _default_root(root)
    if key == "digits":
        return _digits(r, reward_fraction, seed)
    if key == "mnist":
        return _mnist(r, reward_fraction, seed)
    if key in ("cifar10", "cifar100"):
        return _cifar(key, r, reward_fraction, seed)
    if key == "synthetic":
        return _synthetic(reward_fraction, seed, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}")


def from_tensors(
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    x_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    reward_fraction: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
    name: str = "tensors",
) -> Splits:
    """Wrap user tensors (already normalised as the model expects) as :class:`Splits`.

    ``x_train``/``y_train`` and ``x_test``/``y_test`` are inputs and integer class labels
    (tensors or arrays); ``reward_fraction`` of the training rows, drawn with ``seed``,
    are held out as the reward split. ``num_classes`` defaults to the largest label + 1,
    ``name`` labels the data in reports. Mismatched lengths or shapes and non-finite
    inputs are a ``ValueError``.
    """
    xs = [torch.as_tensor(a).float() for a in (x_train, x_test)]
    raw = [torch.as_tensor(a) for a in (y_train, y_test)]
    for y, what in zip(raw, ("train", "test")):
        if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
            bad = y[~(torch.isfinite(y) & (y == y.round()))].flatten()[0].item()
            raise ValueError(f"y_{what} must hold whole class indices 0, 1, ..., got {bad}")
    ys = [y.long() for y in raw]
    if xs[0].shape[0] == 0:
        raise ValueError("x_train is empty: rlprune needs training samples (the reward split "
                         "that scores candidates is carved from them)")
    for x, y, what in ((xs[0], ys[0], "train"), (xs[1], ys[1], "test")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x_{what} has {x.shape[0]} rows but y_{what} has {y.shape[0]}")
        if y.dim() != 1:
            raise ValueError(
                f"y_{what} must be a 1-D tensor of class indices, got {tuple(y.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"x_{what} contains NaN or inf")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise ValueError(f"train inputs {tuple(xs[0].shape[1:])} and test inputs "
                         f"{tuple(xs[1].shape[1:])} differ in shape")
    for y, what in zip(ys, ("train", "test")):
        if len(y) and int(y.min()) < 0:
            raise ValueError(f"y_{what} holds labels below 0 (min {int(y.min())}); class "
                             "indices run 0..num_classes-1")
        if len(y) and num_classes and int(y.max()) >= num_classes:
            raise ValueError(f"y_{what} holds label {int(y.max())}, but num_classes is "
                             f"{num_classes}: class indices run 0..{num_classes - 1}")
    k = num_classes or max(int(y.max()) for y in ys if len(y)) + 1
    train, reward = _carve(xs[0], ys[0], reward_fraction, seed)
    return Splits(train=train, reward=reward, test=Split(xs[1], ys[1]), num_classes=k,
                  input_shape=tuple(xs[0].shape[1:]), name=name)


def as_splits(data: object, reward_fraction: float = 0.1, seed: int = 0) -> Splits:
    """A :class:`Splits` from a ``Splits``, a dataset name or ``(x_tr, y_tr, x_te, y_te)``."""
    if isinstance(data, Splits):
        return data
    if isinstance(data, str):
        return load(data, reward_fraction=reward_fraction, seed=seed)
    if isinstance(data, tuple | list) and len(data) == 4:
        x_tr, y_tr, x_te, y_te = data
        return from_tensors(x_tr, y_tr, x_te, y_te, reward_fraction=reward_fraction, seed=seed)
    raise TypeError(
        "data must be a rlprune.data.Splits, a dataset name, or a tuple "
        f"(x_train, y_train, x_test, y_test); got {type(data).__name__}"
    )


def augment(x: torch.Tensor, kind: str | None, generator: torch.Generator | None = None,
            pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding (and horizontal flip for ``crop_flip``) of a batch.

    ``x`` is an NCHW batch (other shapes are returned unchanged), ``kind`` is ``"crop"``,
    ``"crop_flip"`` or ``None`` (no augmentation), ``pad`` the zero padding before the
    crop, and ``generator`` draws the offsets and flips.
    """
    if kind is None or x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    idx_n = torch.arange(n).view(n, 1, 1, 1)
    # gather an h x w window per sample from the channels-last padded batch: (n, h, w, c)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows, cols].squeeze(1)
    out = out.permute(0, 3, 1, 2).contiguous()
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out
