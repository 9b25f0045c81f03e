"""Datasets with fixed splits: ``train``, ``reward`` and ``test``.

* ``train`` trains and fine-tunes models.
* ``reward`` is carved out of the training set by indices (fixed by ``seed``): every
  search scores candidates on it, so no search ever sees ``test``.
* ``test`` is for final reporting only.

Small data lives in memory as tensors (:class:`Split`): the standard readers
(scikit-learn's bundled 8x8 digits, the four MNIST idx ``.gz`` files, the CIFAR-10/100
python pickles) and user tensors (:func:`from_tensors`). Large data is streamed batch by
batch from a map-style ``torch.utils.data.Dataset`` (:class:`DatasetSplit`: the dataset
plus the indices of the split's samples), so memory does not grow with the dataset's
size: a user's ``Dataset`` or ``DataLoader`` (:func:`from_datasets`), a folder of images
with one subfolder per class (:func:`image_folder`, ``"folder:PATH"``) and ``.npz``
arrays, memory-mapped when stored uncompressed (:func:`load_npz`, ``"npz:PATH"``). The
last two are read in memory when they are small (:data:`IN_MEMORY_MAX_BYTES`), which
keeps scoring fast. Both kinds of split answer the same questions (``len``,
``batches``, ``head``, ``part``, ``take``, ``label_range``): code that scores, trains or
re-estimates BatchNorm goes through those and never reaches for the tensors.

``root`` defaults to ``$RLPRUNE_DATA``. Images are normalised per dataset; augmentation
(random crop with padding, horizontal flip) runs on tensors in batches, without
DataLoader worker processes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

__all__ = [
    "Split",
    "DatasetSplit",
    "AnySplit",
    "DataSource",
    "Splits",
    "DataError",
    "IN_MEMORY_MAX_BYTES",
    "load",
    "from_tensors",
    "from_datasets",
    "image_folder",
    "load_npz",
    "as_splits",
    "to_split",
    "list_datasets",
    "augment",
]

#: Image folders and ``.npz`` files whose inputs, as float32, take more bytes than this
#: are streamed from disk batch by batch; smaller ones are read into memory once
#: (``stream=`` forces either).
IN_MEMORY_MAX_BYTES = 512 << 20


class DataError(ValueError):
    """A dataset file is missing or unreadable; the message says which and what was expected."""


@dataclass
class Split:
    """Inputs ``x`` (float, NCHW or NF) and labels ``y`` (int64) of one split, in memory."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches of ``batch_size`` (the last may be smaller), in
        order (views of the tensors) or, with ``shuffle``, in a random order drawn from
        ``generator``."""
        n = len(self)
        if not shuffle:
            for i in range(0, n, batch_size):
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]
            return
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], self.y[idx]

    def head(self, n: int) -> Split:
        """The first ``n`` samples (all of them if there are fewer), as views."""
        return Split(self.x[:n], self.y[:n])

    def part(self, start: int, end: int) -> Split:
        """Samples ``start`` to ``end`` (exclusive), as views."""
        return Split(self.x[start:end], self.y[start:end])

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` inputs and labels as tensors (views: clone before changing)."""
        return self.x[:n], self.y[:n]

    def label_range(self) -> tuple[int, int] | None:
        """The smallest and largest label, or ``None`` for an empty split."""
        if len(self) == 0:
            return None
        return int(self.y.min()), int(self.y.max())


class _IndexBatches:
    """A DataLoader ``batch_sampler``: the indices of ``order`` in chunks of ``size``."""

    def __init__(self, order: torch.Tensor, size: int):
        self.order, self.size = order, size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.order), self.size):
            yield self.order[i : i + self.size].tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.size)


class DatasetSplit:
    """One split streamed from a map-style ``torch.utils.data.Dataset``, batch by batch.

    ``dataset`` (anything with ``__len__`` and ``__getitem__`` returning ``(input,
    label)`` pairs) holds the samples and ``indices`` (default: all of them, in order)
    says which belong to this split, in the order they are read: a split never holds
    inputs, only 8 bytes per sample of index. ``labels`` (one class index per sample of
    the *dataset*, optional) lets errors be found before any sample is read; without it a
    ``targets`` attribute of the dataset (torchvision's convention) is used when present.
    ``num_classes`` (if known) bounds the labels, which are checked batch by batch, as
    are non-finite inputs: a bad sample is a :class:`DataError` naming the split
    (``role``: ``"train"``, ``"reward"``, ``"test"``).

    Batches are read by a ``torch.utils.data.DataLoader`` with ``num_workers`` worker
    processes, ``collate_fn`` (default: PyTorch's) and ``pin_memory``, whose batch
    sampler is this split's indices; a dataset with a ``read_batch(indices) -> (x, y)``
    method (rlprune's own array dataset) is read through it instead, in this process.
    Inputs become float32 and labels int64.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        indices: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        num_classes: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        role: str = "",
    ):
        _check_map_style(dataset, role)
        n = len(dataset)  # type: ignore[arg-type]
        self.dataset = dataset
        self.indices = (torch.arange(n) if indices is None
                        else torch.as_tensor(np.asarray(indices), dtype=torch.int64))
        if len(self.indices) and (int(self.indices.min()) < 0 or int(self.indices.max()) >= n):
            raise IndexError(f"indices of the {role or 'data'} split run outside the dataset's "
                             f"{n} samples")
        self.labels = _as_labels(labels if labels is not None else _dataset_labels(dataset), n)
        self.num_classes = num_classes
        self.num_workers = int(num_workers)
        self.collate_fn = collate_fn
        self.pin_memory = bool(pin_memory)
        self.role = role
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return (f"DatasetSplit({type(self.dataset).__name__}, {len(self)} samples"
                + (f", role={self.role!r}" if self.role else "") + ")")

    def _with(self, indices: torch.Tensor) -> DatasetSplit:
        out = DatasetSplit.__new__(DatasetSplit)
        out.__dict__.update(self.__dict__)
        out.indices = indices
        return out

    def head(self, n: int) -> DatasetSplit:
        """The first ``n`` samples (all of them if there are fewer), nothing read yet."""
        return self._with(self.indices[:n])

    def part(self, start: int, end: int) -> DatasetSplit:
        """Samples ``start`` to ``end`` (exclusive), nothing read yet."""
        return self._with(self.indices[start:end])

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` inputs and labels, read into tensors (a bounded amount: the
        BatchNorm samples, an example input)."""
        xs, ys = [], []
        for x, y in self.head(n).batches(max(min(n, 256), 1)):
            xs.append(x)
            ys.append(y)
        if not xs:
            return torch.empty((0, *self.input_shape)), torch.empty(0, dtype=torch.int64)
        return torch.cat(xs), torch.cat(ys)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input (read from the dataset's first sample once)."""
        if self._shape is None:
            if len(self.dataset) == 0:  # type: ignore[arg-type]
                raise DataError(f"the {self.role or 'data'} dataset is empty")
            first = self.indices[:1] if len(self) else torch.zeros(1, dtype=torch.int64)
            x, _ = next(self._with(first).batches(1))
            self._shape = tuple(x.shape[1:])
        return self._shape

    def label_range(self) -> tuple[int, int] | None:
        """The smallest and largest label if the labels are known without reading the
        samples (``labels`` or the dataset's ``targets``), else ``None``; ``None`` too
        for an empty split."""
        if self.labels is None or len(self) == 0:
            return None
        y = self.labels[self.indices]
        return int(y.min()), int(y.max())

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches of ``batch_size`` (the last may be smaller), read
        from the dataset as they are needed: in index order or, with ``shuffle``, in a
        random order drawn from ``generator``."""
        order = (self.indices[torch.randperm(len(self), generator=generator)] if shuffle
                 else self.indices)
        read = getattr(self.dataset, "read_batch", None)
        done = 0
        if callable(read):
            for i in range(0, len(order), batch_size):
                x, y = read(order[i : i + batch_size].numpy())
                yield self._checked(x, y, done)
                done += len(y)
            return
        loader = DataLoader(self.dataset, batch_sampler=_IndexBatches(order, batch_size),
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            collate_fn=self.collate_fn,
                            # a generator of its own: a DataLoader otherwise draws its
                            # workers' seeds from (and so moves) the global RNG
                            generator=torch.Generator().manual_seed(0))
        for batch in loader:
            if not isinstance(batch, list | tuple) or len(batch) != 2:
                raise DataError(
                    f"the {self.role or 'data'} Dataset's items must be (input, label) pairs; "
                    f"a batch of them came out as {_describe(batch)}")
            x, y = self._checked(batch[0], batch[1], done)
            done += len(y)
            yield x, y

    def _checked(self, x: Any, y: Any, done: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch as float32 inputs and int64 labels, or a DataError naming the sample."""
        what = f"the {self.role} split" if self.role else "the data"
        try:
            xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"a batch of {what} is not tensors (input, label): {e}") from None
        if yt.dim() != 1 or len(yt) != len(xt):
            raise DataError(f"labels of {what} must be one class index per sample; a batch of "
                            f"{len(xt)} inputs came with labels of shape {tuple(yt.shape)}")
        if yt.is_floating_point():
            whole = torch.isfinite(yt) & (yt == yt.round())
            if not bool(whole.all()):
                bad = yt[~whole][0].item()
                raise DataError(f"labels of {what} must be whole class indices 0, 1, ..., "
                                f"got {bad}")
        elif yt.dtype == torch.bool or yt.is_complex():
            raise DataError(f"labels of {what} must be class indices, got {yt.dtype}")
        yt = yt.long()
        if len(yt):
            lo, hi = int(yt.min()), int(yt.max())
            k = self.num_classes
            if lo < 0 or (k is not None and hi >= k):
                bad_i = int(((yt < 0) | (yt >= (k if k is not None else hi + 1))).nonzero()[0])
                limit = f"0..{k - 1}" if k is not None else "0 or more"
                raise DataError(f"label {int(yt[bad_i])} of sample {done + bad_i} of {what} is "
                                f"out of range: class indices run {limit}")
        xt = xt if xt.is_floating_point() and xt.dtype == torch.float32 else xt.float()
        if not bool(torch.isfinite(xt).all()):
            raise DataError(f"inputs of {what} hold NaN or inf (in samples {done}.."
                            f"{done + len(yt) - 1} of the split)")
        return xt, yt


#: Either kind of split: in memory (:class:`Split`) or streamed (:class:`DatasetSplit`).
AnySplit = Split | DatasetSplit


@dataclass
class Splits:
    """A dataset split three ways, with what is needed to rebuild its preprocessing.

    ``train`` trains and fine-tunes, ``reward`` (held out from the training set) scores
    every candidate of a search, ``test`` is only used for the final report; each is a
    :class:`Split` (in memory) or a :class:`DatasetSplit` (streamed).
    ``num_classes`` and ``input_shape`` (one sample's, e.g. ``(1, 28, 28)``) describe the
    task and ``name`` the dataset; ``mean`` and ``std`` are the per-channel
    normalisation already applied to the inputs, ``augmentation`` the training-time
    augmentation and ``meta`` anything else a reader records.
    """

    train: Split | DatasetSplit
    reward: Split | DatasetSplit
    test: Split | DatasetSplit
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augmentation: str | None = None  # "crop_flip", "crop" or None
    meta: dict[str, object] = field(default_factory=dict)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A batch of the first ``batch_size`` training inputs, for tracing a model."""
        return self.train.take(batch_size)[0].clone()

    @property
    def streamed(self) -> bool:
        """Whether any split is read from a dataset batch by batch (not held in memory)."""
        return any(isinstance(s, DatasetSplit) for s in (self.train, self.reward, self.test))

    def __repr__(self) -> str:
        return (
            f"Splits({self.name!r}, train={len(self.train)}, reward={len(self.reward)}, "
            f"test={len(self.test)}, classes={self.num_classes}, input={self.input_shape}"
            + (", streamed" if self.streamed else "") + ")"
        )


# ----------------------------------------------------------------------------- helpers
def _default_root(root: str | os.PathLike[str] | None) -> Path | None:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("RLPRUNE_DATA")
    return Path(env).expanduser() if env else None


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _check_map_style(dataset: object, role: str) -> None:
    what = f"the {role} data" if role else "the data"
    if isinstance(dataset, IterableDataset):
        raise DataError(f"{what} is an IterableDataset, which cannot be split or read by "
                        "index: give a map-style Dataset (with __len__ and __getitem__)")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(f"{what} is a {type(dataset).__name__}, not a map-style Dataset "
                        "(with __len__ and __getitem__)")


def _dataset_labels(dataset: object) -> Any:
    """The labels a dataset states without reading its samples: a ``targets`` attribute
    (torchvision's convention), seen through ``Subset``s; ``None`` when there is none."""
    if isinstance(dataset, Subset):
        parent = _dataset_labels(dataset.dataset)
        if parent is None:
            return None
        try:
            return np.asarray(parent)[np.asarray(dataset.indices, dtype=np.int64)]
        except (TypeError, ValueError, IndexError):
            return None
    return getattr(dataset, "targets", None)


def _as_labels(labels: Any, n: int) -> torch.Tensor | None:
    """Stated labels as an int64 tensor of ``n`` entries, or ``None`` if they do not fit."""
    if labels is None:
        return None
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 1 or len(arr) != n or arr.dtype.kind not in "iuf":
        return None
    if arr.dtype.kind == "f":
        if not bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))):
            return None
    return torch.as_tensor(arr.astype(np.int64))


def _carve_indices(n: int, reward_fraction: float, seed: int) -> tuple[torch.Tensor, int]:
    """A permutation of ``range(n)`` fixed by ``seed`` and how many of its first entries
    are the reward split's; the rest are the training split's."""
    if not 0.0 <= reward_fraction < 1.0:
        raise ValueError(f"reward_fraction must be in [0, 1), got {reward_fraction}")
    n_reward = int(round(n * reward_fraction))
    if reward_fraction > 0 and n_reward == 0:
        n_reward = 1
    if n - n_reward < 1:
        raise ValueError(f"{n} training samples are too few for reward_fraction="
                         f"{reward_fraction}: it leaves no training data; give more samples "
                         "or a smaller reward_fraction")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g), n_reward


def _carve(
    x: torch.Tensor, y: torch.Tensor, reward_fraction: float, seed: int
) -> tuple[Split, Split]:
    """Split (x, y) into train and reward parts, fixed by ``seed`` (rows in their order)."""
    perm, n_reward = _carve_indices(int(y.shape[0]), reward_fraction, seed)
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
#: Prefixes of the data specs that name files: ``folder:PATH`` and ``npz:PATH``.
_FILE_KINDS = ("folder", "npz")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load` (and the ``folder:PATH`` / ``npz:PATH`` specs)."""
    return list(_DATASETS)


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    reward_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> Splits:
    """Load a dataset by name or spec into train / reward / test splits.

    ``name`` is ``digits``, ``mnist``, ``cifar10``, ``cifar100`` or ``synthetic``
    (read into memory), ``folder:PATH`` (an image folder, :func:`image_folder`) or
    ``npz:PATH`` (arrays, :func:`load_npz`); a spec may end in options written as a
    query, ``folder:PATH?size=32&test_fraction=0.2``, which are the keyword arguments
    of those functions. ``root`` (default ``$RLPRUNE_DATA``) is the folder holding the
    standard files, and where a relative ``PATH`` is also looked for.
    ``reward_fraction`` of the training set, drawn with ``seed``, is held out as the
    reward split. ``progress`` shows bars while a large folder is read. ``kwargs`` go to
    ``synthetic`` (``shape``, ``num_classes``, ``n_train``, ``n_test``) or to the
    folder and npz readers (over the spec's options).
    Missing or corrupt files raise :class:`DataError` naming the file and format.
    """
    kind, _, rest = str(name).partition(":")
    r = _default_root(root)
    if rest and kind.lower() in _FILE_KINDS:
        path, options = _parse_spec(str(name), kind.lower(), rest)
        options.update(kwargs)
        if kind.lower() == "folder":
            return image_folder(path, reward_fraction=reward_fraction, seed=seed, root=r,
                                progress=progress, **options)
        return load_npz(path, reward_fraction=reward_fraction, seed=seed, root=r,
                        progress=progress, **options)
    key = str(name).lower().replace("-", "")
    if key == "digits":
        return _digits(r, reward_fraction, seed)
    if key == "mnist":
        return _mnist(r, reward_fraction, seed)
    if key in ("cifar10", "cifar100"):
        return _cifar(key, r, reward_fraction, seed)
    if key == "synthetic":
        return _synthetic(reward_fraction, seed, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}, "
                     "or folder:PATH (one subfolder of images per class), npz:PATH")


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


#: What :func:`as_splits` (and so ``rlprune.prune``, ``compare`` and ``train.fit``)
#: accept as data: a :class:`Splits`, a dataset name or spec, tensors ``(x_train,
#: y_train, x_test, y_test)``, a ``torch.utils.data.Dataset`` or ``DataLoader`` (the
#: training set), a pair ``(train, test)`` of them, or a mapping with ``train`` and
#: optionally ``reward`` and ``test``.
DataSource = (Splits | str | tuple[Any, ...] | list[Any] | Mapping[str, Any] | Dataset[Any]
              | DataLoader[Any])


def _source(obj: object, role: str) -> tuple[Dataset[Any], dict[str, Any]]:
    """The map-style dataset behind ``obj`` and the DataLoader options to read it with."""
    if isinstance(obj, DataLoader):
        from torch.utils.data import default_collate, default_convert

        opts: dict[str, Any] = {"num_workers": obj.num_workers, "pin_memory": obj.pin_memory}
        if obj.collate_fn not in (default_collate, default_convert):
            opts["collate_fn"] = obj.collate_fn
        _check_map_style(obj.dataset, role)
        return obj.dataset, opts
    if isinstance(obj, Split | DatasetSplit | Splits | torch.Tensor | np.ndarray | str):
        what = f"the {role} data" if role else "the data"
        raise TypeError(f"{what} must be a torch Dataset or DataLoader, got a "
                        f"{type(obj).__name__}")
    _check_map_style(obj, role)
    return obj, {}  # type: ignore[return-value]


def from_datasets(
    train: Dataset[Any] | DataLoader[Any],
    test: Dataset[Any] | DataLoader[Any] | None = None,
    reward: Dataset[Any] | DataLoader[Any] | None = None,
    reward_fraction: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
    name: str = "dataset",
    progress: bool = True,
) -> Splits:
    """Streamed :class:`Splits` over map-style ``torch.utils.data`` datasets.

    ``train``, ``test`` and ``reward`` are each a ``Dataset`` (items ``(input, label)``,
    inputs already transformed as the model expects) or a ``DataLoader``, of which the
    dataset, ``num_workers``, ``pin_memory`` and a custom ``collate_fn`` are used (rlprune
    picks the samples and batch sizes itself). Nothing is read into memory: each split is
    a :class:`DatasetSplit`, the dataset plus the indices of its samples.

    Unless ``reward`` is given, ``reward_fraction`` of ``train``'s samples, drawn with
    ``seed`` as for tensors, are held out as the reward split. The training and reward
    indices are kept in that random order, so that any prefix of a split (racing's first
    quarter, ``reward_samples``, the BatchNorm samples) is a uniform sample of it even
    when the dataset is sorted by class. ``test`` (optional) is read in its own order.

    ``num_classes`` defaults to ``len(train.classes)`` or the largest label in the
    datasets' ``targets`` plus one; a dataset with neither is read once to find its
    labels (with a bar when ``progress``). Labels out of range are a :class:`DataError`,
    before anything is read when they are known, otherwise on the batch holding one.
    ``name`` labels the data in reports.
    """
    tr_ds, tr_opts = _source(train, "train")
    n = len(tr_ds)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("the training dataset is empty: rlprune needs training samples (the "
                        "reward split that scores candidates is carved from them)")
    labels = _as_labels(_dataset_labels(tr_ds), n)
    if reward is None:
        perm, n_reward = _carve_indices(n, reward_fraction, seed)
        tr = DatasetSplit(tr_ds, perm[n_reward:], labels, role="train", **tr_opts)
        rw = DatasetSplit(tr_ds, perm[:n_reward], labels, role="reward", **tr_opts)
    else:
        rw_ds, rw_opts = _source(reward, "reward")
        g = torch.Generator().manual_seed(seed)
        tr = DatasetSplit(tr_ds, torch.randperm(n, generator=g), labels, role="train",
                          **tr_opts)
        rw = DatasetSplit(rw_ds, torch.randperm(len(rw_ds), generator=g),  # type: ignore[arg-type]
                          role="reward", **rw_opts)
    te: Split | DatasetSplit
    if test is not None:
        te_ds, te_opts = _source(test, "test")
        te = DatasetSplit(te_ds, role="test", **te_opts)
    shape = tr.input_shape
    if test is None or len(te) == 0:
        te = Split(torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64))
    elif isinstance(te, DatasetSplit) and te.input_shape != shape:
        raise DataError(f"train inputs {shape} and test inputs {te.input_shape} differ in shape")
    splits = [s for s in (tr, rw, te) if isinstance(s, DatasetSplit)]
    known = [s.label_range() for s in splits]
    if num_classes is None:
        classes = getattr(tr_ds, "classes", None)
        if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes):
            num_classes = len(classes)
        elif all(r is not None or len(s) == 0 for r, s in zip(known, splits)):
            num_classes = max(r[1] for r in known if r is not None) + 1
        else:
            num_classes = _scan_labels(splits, progress)
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    for s, r in zip(splits, known):
        s.num_classes = num_classes
        if r is not None and (r[0] < 0 or r[1] >= num_classes):
            bad = r[0] if r[0] < 0 else r[1]
            raise DataError(f"the {s.role} split holds label {bad}, out of range: class "
                            f"indices run 0..{num_classes - 1} ({num_classes} classes)")
    return Splits(train=tr, reward=rw, test=te, num_classes=num_classes, input_shape=shape,
                  name=name, meta={"streamed": True})


def _scan_labels(splits: list[DatasetSplit], progress: bool) -> int:
    """The number of classes of datasets that do not state their labels: one pass."""
    from rlprune.progress import progress_bar

    hi = -1
    total = sum(len(s) for s in splits)
    with progress_bar(total=total, desc="reading labels", unit="sample",
                      disable=not progress or total < 10_000) as bar:
        for s in splits:
            for _, y in s.batches(1024):
                if len(y):
                    hi = max(hi, int(y.max()))
                bar.update(len(y))
    return hi + 1


def to_split(data: object) -> Split | DatasetSplit:
    """One split from a :class:`Split`, a :class:`DatasetSplit`, a map-style ``Dataset`` or
    a ``DataLoader`` (its dataset and workers, read in order).

    ``data`` is what a caller scores, trains or re-estimates BatchNorm on.
    """
    if isinstance(data, Split | DatasetSplit):
        return data
    ds, opts = _source(data, "")
    return DatasetSplit(ds, **opts)


def as_splits(data: object, reward_fraction: float = 0.1, seed: int = 0) -> Splits:
    """A :class:`Splits` from any :data:`DataSource`.

    ``data`` is a ``Splits`` (returned as is), a dataset name or spec (:func:`load`), a
    tuple ``(x_train, y_train, x_test, y_test)`` (:func:`from_tensors`), a ``Dataset`` or
    ``DataLoader`` of training samples, a pair ``(train, test)`` of them or a mapping
    ``{"train": ..., "reward": ..., "test": ...}`` (:func:`from_datasets`).
    ``reward_fraction`` of the training samples, drawn with ``seed``, are held out as the
    reward split.
    """
    if isinstance(data, Splits):
        return data
    if isinstance(data, str):
        return load(data, reward_fraction=reward_fraction, seed=seed)
    if isinstance(data, tuple | list) and len(data) == 4:
        x_tr, y_tr, x_te, y_te = data
        return from_tensors(x_tr, y_tr, x_te, y_te, reward_fraction=reward_fraction, seed=seed)
    if isinstance(data, tuple | list) and len(data) == 2:
        return from_datasets(data[0], test=data[1], reward_fraction=reward_fraction, seed=seed)
    if isinstance(data, Mapping):
        unknown = sorted(set(map(str, data)) - {"train", "reward", "test"})
        if unknown or "train" not in data:
            raise TypeError("a mapping of datasets needs 'train' and may have 'reward' and "
                            f"'test'; got keys {', '.join(map(str, data)) or 'none'}")
        return from_datasets(data["train"], test=data.get("test"), reward=data.get("reward"),
                             reward_fraction=reward_fraction, seed=seed)
    if isinstance(data, Dataset | DataLoader) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")
            and not isinstance(data, torch.Tensor | np.ndarray | tuple | list)):
        return from_datasets(data, reward_fraction=reward_fraction, seed=seed)  # type: ignore[arg-type]
    raise TypeError(
        "data must be a rlprune.data.Splits, a dataset name or spec (folder:PATH, npz:PATH), "
        "a tuple (x_train, y_train, x_test, y_test), a torch Dataset or DataLoader, a pair "
        f"(train, test) of them or a dict of them; got {type(data).__name__}"
    )


# ------------------------------------------------------------------- specs and paths
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace("/", ",").split(",") if v.strip())


def _stream_flag(text: str) -> bool | None:
    value = text.strip().lower()
    if value in ("auto", ""):
        return None
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"stream must be yes, no or auto, got {text!r}")


_SPEC_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "folder": {"size": int, "crop": int, "channels": int, "mean": _floats, "std": _floats,
               "test_fraction": float, "stream": _stream_flag, "workers": int},
    "npz": {"mean": _floats, "std": _floats, "classes": int, "stream": _stream_flag},
}


def _parse_spec(spec: str, kind: str, rest: str) -> tuple[str, dict[str, Any]]:
    """``PATH`` and its options from ``kind:PATH?key=value&key=value``."""
    path, _, query = rest.partition("?")
    known = _SPEC_OPTIONS[kind]
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = key.strip().replace("-", "_")
        if key not in known:
            raise DataError(f"unknown option {key!r} in {spec!r}; {kind}: takes "
                            f"{', '.join(known)} (e.g. {kind}:PATH?{next(iter(known))}=...)")
        try:
            options["num_classes" if key == "classes" else key] = known[key](value)
        except ValueError as e:
            raise DataError(f"bad value {value!r} for {key} in {spec!r}: {e}") from None
    if not path:
        raise DataError(f"{spec!r} names no path: write {kind}:PATH")
    return path, options


def _resolve(path: str | os.PathLike[str], root: Path | None) -> tuple[Path, str]:
    """``path`` as given, or under ``root`` when it is relative and only found there; and
    where it was looked for (for error messages)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute() or root is None:
        return p, str(p)
    alt = root / p
    return (alt if alt.exists() else p), f"{p} and {alt}"


def _fingerprint(*parts: object) -> str:
    """A short stable hash of ``parts``: which data (and preprocessing) a name stands for."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _check_stats(mean: Sequence[float] | None, std: Sequence[float] | None,
                 channels: int, what: str) -> None:
    for label, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, channels):
            raise DataError(f"{label} has {len(v)} values but {what} has {channels} channels: "
                            f"give 1 or {channels}")
        if v is not None and not all(math.isfinite(t) for t in v):
            raise DataError(f"{label} must be finite numbers, got {tuple(v)}")
    if std is not None and any(t <= 0 for t in std):
        raise DataError(f"std must be > 0, got {tuple(std)}")


def _per_channel(v: Sequence[float] | None, channels: int, default: float) -> tuple[float, ...]:
    if v is None:
        return (default,) * channels
    return tuple(float(t) for t in v) * (channels if len(v) == 1 else 1)


# ----------------------------------------------------------------------- image folders
#: File name endings read as images (case-insensitive).
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif",
                             ".tiff", ".ppm", ".pgm", ".pbm"})
#: Image modes read as one channel (grey); any other is read as RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Subfolders of an image folder that hold the test split, in order of preference.
_TEST_FOLDERS = ("test", "val")


@dataclass(frozen=True)
class _ImageSpec:
    """How every image of a folder becomes an input: PIL ``mode`` (``L`` or ``RGB``),
    resize of the shorter side to ``size``, centre crop to ``crop`` (default ``size``),
    then ``(pixel / 255 - mean) / std`` per channel."""

    mode: str
    size: int | None
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pixels(self, path: str) -> np.ndarray:
        """The image at ``path`` as uint8 ``(channels, height, width)``."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                img = im.convert(self.mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        if self.size is not None:
            w, h = img.size
            s = self.size / min(w, h)
            img = img.resize((max(1, round(w * s)), max(1, round(h * s))),
                             Image.Resampling.BILINEAR)
        side = self.crop if self.crop is not None else self.size
        if side is not None:
            w, h = img.size
            if w < side or h < side:
                raise DataError(f"image {path} is {w}x{h}, smaller than the {side}x{side} crop: "
                                "give a smaller crop or size= to resize first")
            left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
            img = img.crop((left, top, left + side, top + side))
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 ``pixels`` (one image or a batch) scaled and normalised, float32."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)
        shape = (-1, 1, 1) if x.dim() == 3 else (1, -1, 1, 1)
        m = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        s = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x - m) / s


class _ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    """The images of a folder as a map-style Dataset: each item is read when asked for.

    ``files`` are image paths, ``labels`` their class indices and ``spec`` how each is
    turned into an input. Picklable (paths only), so DataLoader workers can read it.
    """

    def __init__(self, files: list[str], labels: np.ndarray, spec: _ImageSpec):
        self.files, self.labels, self.spec = files, labels, spec

    @property
    def targets(self) -> np.ndarray:
        """The class index of every image (torchvision's name for it)."""
        return self.labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.spec.tensor(self.spec.pixels(self.files[i])), int(self.labels[i])


def _subfolders(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in skip)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _list_classes(folder: Path, skip: tuple[str, ...], what: str
                  ) -> tuple[list[str], list[list[Path]]]:
    """Class names and the image files of each, or a DataError saying what is wrong."""
    classes = _subfolders(folder, skip)
    if not classes:
        loose = sum(1 for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        raise DataError(
            f"{what} {folder} has no class subfolders"
            + (f" ({loose} images lie directly in it)" if loose else "")
            + f": an image folder holds one subfolder of images per class ({folder}/CLASS/"
            "IMAGE.png), the layout torchvision's ImageFolder reads")
    files = [_images_in(d) for d in classes]
    for d, fs in zip(classes, files):
        if not fs:
            raise DataError(f"class folder {d} holds no images (expected files ending in "
                            f"{', '.join(sorted(_IMAGE_SUFFIXES))})")
    return [d.name for d in classes], files


def _probe(files: list[Path], progress: bool) -> tuple[set[str], dict[tuple[int, int], Path]]:
    """Every image's header read (not its pixels): the modes and sizes seen, and a
    DataError naming the first file that is not an image."""
    from PIL import Image

    from rlprune.progress import progress_bar

    modes: set[str] = set()
    sizes: dict[tuple[int, int], Path] = {}
    with progress_bar(files, desc="checking images", unit="img",
                      disable=not progress or len(files) < 2000) as bar:
        for f in bar:
            try:
                with Image.open(f) as im:
                    modes.add(im.mode)
                    sizes.setdefault(im.size, f)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise DataError(f"cannot read image {f}: {type(e).__name__}: {e}") from None
    return modes, sizes


def _read_images(files: list[str], spec: _ImageSpec, progress: bool, desc: str) -> np.ndarray:
    """Every image of ``files`` as one uint8 array ``(n, channels, height, width)``."""
    from rlprune.progress import progress_bar

    out: np.ndarray | None = None
    with progress_bar(total=len(files), desc=desc, unit="img",
                      disable=not progress or len(files) < 2000) as bar:
        for i, f in enumerate(files):
            px = spec.pixels(f)
            if out is None:
                out = np.empty((len(files), *px.shape), dtype=np.uint8)
            if px.shape != out.shape[1:]:
                raise DataError(f"image {f} is {px.shape[2]}x{px.shape[1]} after resizing, "
                                f"others are {out.shape[3]}x{out.shape[2]}: give crop=N so "
                                "that every image has the same size")
            out[i] = px
            bar.update(1)
    return out if out is not None else np.empty((0, 1, 1, 1), dtype=np.uint8)


def image_folder(
    path: str | os.PathLike[str],
    size: int | None = None,
    crop: int | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    test_fraction: float = 0.2,
    reward_fraction: float = 0.1,
    seed: int = 0,
    stream: bool | None = None,
    workers: int = 0,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Splits:
    """Splits of a folder of images with one subfolder per class (``PATH/CLASS/IMG.png``,
    the layout torchvision's ``ImageFolder`` reads), read with Pillow.

    Classes are the subfolders' names in sorted order (class index 0, 1, ...); images
    are found in them recursively. The test split is ``PATH/test/`` (or ``PATH/val/``),
    laid out the same way, when there is one, the training images then being the other
    class folders of ``PATH`` (or ``PATH/train/`` if it exists); otherwise
    ``test_fraction`` of the images, drawn with a fixed seed (0, so the test split never
    moves with ``seed``), are held out as the test split. ``reward_fraction`` of the
    training images, drawn with ``seed``, are the reward split.

    Each image is converted to ``channels`` (1: grey, 3: RGB; default 1 when every image
    is grey, else 3), its shorter side resized to ``size`` and centre-cropped to ``crop``
    x ``crop`` (default ``size`` x ``size``; without either every image must have the
    same size), scaled to [0, 1] and normalised per channel with ``mean`` and ``std``
    (default: the training images' own statistics, as for the bundled datasets; give the
    ones your model was trained with).

    Every image's header is read first, so a file that is not an image is reported
    before any work. Folders whose inputs take at most :data:`IN_MEMORY_MAX_BYTES` as
    float32 are then read into memory, once (in a fixed shuffled order, so that any
    prefix of a split is a sample of every class); larger ones are streamed, each image
    decoded when a batch needs it by a DataLoader with ``workers`` worker processes.
    ``stream`` forces either. ``path`` may be relative to ``root``; ``progress`` shows
    bars on large folders. Problems (no folder, no class subfolders, an unreadable
    image...) raise :class:`DataError`.
    """
    p, looked = _resolve(path, _default_root(root))
    if not p.is_dir():
        raise DataError(f"image folder not found: {looked}" if not p.exists() else
                        f"{p} is a file, not an image folder (one subfolder per class)")
    for label, v in (("size", size), ("crop", crop)):
        if v is not None and v < 1:
            raise DataError(f"{label} must be >= 1, got {v}")
    if size is not None and crop is not None and crop > size:
        raise DataError(f"crop ({crop}) must be at most size ({size})")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if workers < 0:
        raise DataError(f"workers must be >= 0, got {workers}")

    train_root = p / "train" if (p / "train").is_dir() else p
    test_root = next((p / t for t in _TEST_FOLDERS if (p / t).is_dir()), None)
    skip = _TEST_FOLDERS + ("train",) if train_root == p else ()
    classes, per_class = _list_classes(train_root, skip, "image folder")
    train_files = [str(f) for fs in per_class for f in fs]
    train_labels = np.concatenate([np.full(len(fs), i, np.int64)
                                   for i, fs in enumerate(per_class)])
    if test_root is not None:
        t_classes, t_files = _list_classes(test_root, (), "test folder")
        unknown = sorted(set(t_classes) - set(classes))
        if unknown:
            raise DataError(f"test folder {test_root} has classes the training images do not: "
                            f"{', '.join(unknown)} (training classes: {', '.join(classes)})")
        test_files = [str(f) for fs in t_files for f in fs]
        test_labels = np.concatenate([np.full(len(fs), classes.index(c), np.int64)
                                      for c, fs in zip(t_classes, t_files)])
        order = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(0))
    else:
        n = len(train_files)
        n_test = int(round(n * test_fraction))
        if test_fraction > 0 and n_test == 0:
            n_test = 1
        if n - n_test < 1:
            raise DataError(f"{n} images are too few for test_fraction={test_fraction}: it "
                            "leaves no training images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        te_idx = perm[:n_test].sort().values.numpy()
        test_files = [train_files[i] for i in te_idx]
        test_labels = train_labels[te_idx]
        order = perm[n_test:]
    # a fixed shuffled order: prefixes of the splits hold every class
    train_files = [train_files[i] for i in order.tolist()]
    train_labels = train_labels[order.numpy()]

    modes, sizes = _probe([Path(f) for f in train_files + test_files], progress)
    if channels is None:
        channels = 1 if modes <= _GREY_MODES else 3
    if size is None and crop is None and len(sizes) > 1:
        (a, fa), (b, fb) = list(sizes.items())[:2]
        raise DataError(f"images differ in size ({fa} is {a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}): "
                        "give size=N to resize and centre-crop every image to N x N (folder:"
                        "PATH?size=N)")
    if size is None and crop is not None:
        small = next(((s, f) for s, f in sizes.items() if min(s) < crop), None)
        if small is not None:
            raise DataError(f"image {small[1]} is {small[0][0]}x{small[0][1]}, smaller than the "
                            f"{crop}x{crop} crop: give size= to resize first")
    side = crop if crop is not None else size
    hw = (side, side) if side is not None else tuple(reversed(next(iter(sizes))))
    _check_stats(mean, std, channels, "the image folder")
    mode = "L" if channels == 1 else "RGB"
    n_total = len(train_files) + len(test_files)
    if stream is None:
        stream = n_total * channels * hw[0] * hw[1] * 4 > IN_MEMORY_MAX_BYTES

    options = {"size": size, "crop": crop, "channels": channels, "mean": mean, "std": std,
               "test_fraction": None if test_root is not None else test_fraction}
    listing = [(str(Path(f).relative_to(p)), os.path.getsize(f))
               for f in sorted(train_files + test_files)]
    name = f"{p.resolve().name}-{_fingerprint(classes, listing, options)}"
    meta: dict[str, object] = {"source": "folder", "path": str(p.resolve()),
                               "classes": classes, "streamed": stream,
                               "test": str(test_root) if test_root is not None else
                               f"{test_fraction:g} of the images"}
    raw = _ImageSpec(mode, size, crop, (0.0,) * channels, (1.0,) * channels)
    if not stream:
        x_tr = _read_images(train_files, raw, progress, "reading images")
        x_te = _read_images(test_files, raw, progress, "reading test images")
        xt = torch.from_numpy(x_tr).float().div_(255.0)
        m = _per_channel(mean, channels, 0.0) if mean is not None else tuple(
            float(v) for v in xt.mean(dim=(0, 2, 3)))
        s = _per_channel(std, channels, 1.0) if std is not None else tuple(
            float(v) if v > 0 else 1.0 for v in xt.std(dim=(0, 2, 3)))
        te = (torch.from_numpy(x_te).float().div_(255.0) if len(test_files)
              else torch.empty((0, channels, *hw)))
        splits = _build(name, xt, torch.from_numpy(train_labels), te,
                        torch.from_numpy(test_labels), len(classes), m, s, reward_fraction,
                        seed, None)
        splits.meta = meta
        return splits
    if mean is None or std is None:  # statistics of up to 1000 training images
        sample = _read_images(train_files[:1000], raw, progress, "image statistics")
        xs = torch.from_numpy(sample).float().div_(255.0)
        mean = mean if mean is not None else tuple(float(v) for v in xs.mean(dim=(0, 2, 3)))
        std = std if std is not None else tuple(
            float(v) if v > 0 else 1.0 for v in xs.std(dim=(0, 2, 3)))
    spec = _ImageSpec(mode, size, crop, _per_channel(mean, channels, 0.0),
                      _per_channel(std, channels, 1.0))
    train_ds = _ImageFiles(train_files, train_labels, spec)
    test_ds = _ImageFiles(test_files, test_labels, spec) if test_files else None
    splits = from_datasets(
        DataLoader(train_ds, num_workers=workers), test=None if test_ds is None else
        DataLoader(test_ds, num_workers=workers), reward_fraction=reward_fraction, seed=seed,
        num_classes=len(classes), name=name, progress=progress)
    splits.mean, splits.std, splits.meta = spec.mean, spec.std, meta
    return splits


# ------------------------------------------------------------------------------- npz
#: The arrays an ``.npz`` for rlprune holds.
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class _FileArray:
    """An array stored uncompressed in a file (an ``.npz`` member written by ``np.savez``),
    read a batch of rows at a time with positioned reads (one per run of consecutive
    rows). Not a memory map: mapping in scattered rows pulls their neighbouring pages in
    too (the kernel's fault-around, 64 KiB a fault), and those count as the process's
    memory, up to the file's size. Pickles as its location (``path``, ``offset``,
    ``shape``, ``dtype``, ``fortran``)."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    fortran: bool

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def read(self, index: np.ndarray | slice) -> np.ndarray:
        """The rows at ``index`` (a slice or row numbers; sorted ones read fastest),
        copied out of the file."""
        dtype = np.dtype(self.dtype)
        if isinstance(index, slice) or self.fortran or self.size == 0:
            if self.size == 0:
                return np.empty(self.shape, dtype=dtype)[index]
            mm = np.memmap(self.path, dtype=dtype, mode="r", offset=self.offset,
                           shape=self.shape, order="F" if self.fortran else "C")
            try:
                return np.array(mm[index])
            finally:
                del mm
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        out = np.empty((len(rows), *self.shape[1:]), dtype=dtype)
        raw = out.reshape(len(rows), -1).view(np.uint8)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        ends = np.concatenate([cuts, [len(rows)]]).tolist()
        with open(self.path, "rb", buffering=0) as f:
            for a, b in zip(starts, ends):
                f.seek(self.offset + int(rows[a]) * row_bytes)
                want = (b - a) * row_bytes
                got = f.readinto(raw[a:b].reshape(-1).data)
                if got != want:
                    raise DataError(f"{self.path} is truncated: rows {int(rows[a])}.."
                                    f"{int(rows[b - 1])} lie past its end")
        return out


def _npz_members(path: Path) -> dict[str, _FileArray | np.ndarray]:
    """The four arrays of an ``.npz``: stored members as :class:`_FileArray`, compressed
    ones (``np.savez_compressed``) read into memory."""
    how = ("expected a file written by np.savez(path, x_train=..., y_train=..., x_test=..., "
           "y_test=...)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read {path} as .npz ({type(e).__name__}: {e}); {how}") from None
    out: dict[str, _FileArray | np.ndarray] = {}
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in _NPZ_KEYS if k not in members]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}: it holds "
                            f"{', '.join(sorted(members)) or 'no arrays'}; {how}")
        for key in _NPZ_KEYS:
            info = zf.getinfo(members[key])
            try:
                if info.compress_type == zipfile.ZIP_STORED:
                    with open(path, "rb") as f:
                        f.seek(info.header_offset)
                        head = f.read(30)
                        n_name, n_extra = struct.unpack("<HH", head[26:30])
                        f.seek(info.header_offset + 30 + n_name + n_extra)
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape, fortran, dtype = read(f)
                        if dtype.hasobject:
                            raise ValueError("it holds Python objects")
                        out[key] = _FileArray(str(path), f.tell(), tuple(shape), dtype.str,
                                              bool(fortran))
                else:
                    with zf.open(info) as member:
                        out[key] = np.lib.format.read_array(member, allow_pickle=False)
            except (ValueError, OSError, struct.error, zlib.error, EOFError) as e:
                raise DataError(f"cannot read {key} from {path} ({type(e).__name__}: {e}); "
                                f"{how}") from None
    return out


def _array_rows(a: _FileArray | np.ndarray) -> np.ndarray:
    return a.read(slice(None)) if isinstance(a, _FileArray) else a


def _npz_labels(y: _FileArray | np.ndarray, key: str, path: Path,
                num_classes: int | None) -> np.ndarray:
    arr = _array_rows(y)
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not bool(whole.all()):
            raise DataError(f"{key} in {path} must hold whole class indices, got "
                            f"{arr[~whole][0]}")
    elif arr.dtype.kind not in "iu":
        raise DataError(f"{key} in {path} must hold integer class indices, got dtype {arr.dtype}")
    labels = arr.astype(np.int64)
    if len(labels) and int(labels.min()) < 0:
        raise DataError(f"{key} in {path} holds label {int(labels.min())}, out of range: class "
                        "indices run 0..num_classes-1")
    if len(labels) and num_classes is not None and int(labels.max()) >= num_classes:
        raise DataError(f"{key} in {path} holds label {int(labels.max())}, out of range: "
                        f"classes={num_classes}, so class indices run 0..{num_classes - 1}")
    return labels


class _ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """Rows of an array (in memory or a :class:`_FileArray`) with their labels, scaled
    by ``scale`` and normalised with ``mean``/``std`` per channel as they are read, a
    batch at a time (``read_batch``, which :class:`DatasetSplit` uses)."""

    def __init__(self, x: _FileArray | np.ndarray, y: np.ndarray, scale: float,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        self.x, self.labels, self.scale, self.mean, self.std = x, y, scale, mean, std

    @property
    def targets(self) -> np.ndarray:
        """The label of every row."""
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def read_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the rows at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        rows = (self.x.read(idx[order]) if isinstance(self.x, _FileArray)
                else np.asarray(self.x[idx[order]]))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        x = torch.from_numpy(np.ascontiguousarray(rows[back])).float()
        if self.scale != 1.0:
            x.mul_(self.scale)
        if self.mean:
            x = _normalise(x, self.mean, self.std)
        return x, torch.from_numpy(self.labels[idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.read_batch(np.array([i]))
        return x[0], int(y[0])


def load_npz(
    path: str | os.PathLike[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    reward_fraction: float = 0.1,
    seed: int = 0,
    stream: bool | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Splits:
    """Splits of an ``.npz`` holding ``x_train``, ``y_train``, ``x_test`` and ``y_test``.

    Inputs are ``(n, ...)`` arrays (``(n, C, H, W)`` for images, ``(n, features)`` for
    vectors), labels 1-D integer class indices. uint8 inputs are scaled to [0, 1]; then,
    when ``mean`` and ``std`` are given (one value, or one per channel: the second axis),
    ``(x - mean) / std``. ``num_classes`` defaults to the largest label plus one.
    ``reward_fraction`` of the training rows, drawn with ``seed``, are the reward split.

    Arrays saved with ``np.savez`` (stored, not compressed) whose inputs take more than
    :data:`IN_MEMORY_MAX_BYTES` as float32 are streamed: memory-mapped a batch at a
    time, never read whole (the labels are, 8 bytes a sample); smaller ones, and
    compressed ones (``np.savez_compressed``, which cannot be mapped), are read into
    memory as :func:`from_tensors` does. ``stream`` forces the choice (``True`` on a
    compressed file is an error). ``path`` may be relative to ``root``; ``progress`` is
    accepted for symmetry with :func:`image_folder` (reading shows no bar). Missing keys,
    wrong shapes and labels out of range raise :class:`DataError`.
    """
    del progress  # nothing here is slow enough for a bar
    p, looked = _resolve(path, _default_root(root))
    if not p.is_file():
        raise DataError(f".npz file not found: {looked}" if not p.exists() else
                        f"{p} is a folder, not an .npz file")
    arrays = _npz_members(p)
    x_tr, y_tr, x_te, y_te = (arrays[k] for k in _NPZ_KEYS)
    for x, y, what in ((x_tr, y_tr, "train"), (x_te, y_te, "test")):
        if len(x.shape) < 2:
            raise DataError(f"x_{what} in {p} has shape {tuple(x.shape)}: expected (samples, "
                            "...), e.g. (n, C, H, W) images or (n, features)")
        if len(y.shape) != 1:
            raise DataError(f"y_{what} in {p} has shape {tuple(y.shape)}: expected one class "
                            "index per sample, shape (samples,)")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x_{what} in {p} has {x.shape[0]} rows but y_{what} has "
                            f"{y.shape[0]}")
        if np.dtype(x.dtype).kind not in "biuf":
            raise DataError(f"x_{what} in {p} has dtype {np.dtype(x.dtype)}: expected numbers")
    if tuple(x_tr.shape[1:]) != tuple(x_te.shape[1:]):
        raise DataError(f"x_train in {p} has samples of shape {tuple(x_tr.shape[1:])} but "
                        f"x_test {tuple(x_te.shape[1:])}: they must be the same")
    if x_tr.shape[0] == 0:
        raise DataError(f"x_train in {p} is empty: rlprune needs training samples")
    if num_classes is not None and num_classes < 1:
        raise DataError(f"classes must be >= 1, got {num_classes}")
    labels_tr = _npz_labels(y_tr, "y_train", p, num_classes)
    labels_te = _npz_labels(y_te, "y_test", p, num_classes)
    k = num_classes or int(max(labels_tr.max(), labels_te.max(initial=0))) + 1
    channels = int(x_tr.shape[1])
    _check_stats(mean, std, channels, f"x_train in {p} (second axis)")
    scale = 1.0 / 255.0 if np.dtype(x_tr.dtype) == np.uint8 else 1.0
    m = tuple(float(v) for v in mean) if mean is not None else ()
    s = tuple(float(v) for v in std) if std is not None else ()
    if bool(m) != bool(s):
        m = m or (0.0,) * len(s)
        s = s or (1.0,) * len(m)
    compressed = [k_ for k_, a in arrays.items() if not isinstance(a, _FileArray)]
    if stream and compressed:
        raise DataError(f"{p} is compressed (np.savez_compressed) and cannot be streamed from "
                        "the file: save it with np.savez, or leave stream=auto to read it "
                        "into memory")
    if stream is None:
        n_in = int(np.prod(x_tr.shape)) + int(np.prod(x_te.shape))
        stream = not compressed and n_in * 4 > IN_MEMORY_MAX_BYTES
    header = {key: (tuple(a.shape), np.dtype(a.dtype).str) for key, a in arrays.items()}
    name = f"{p.stem}-{_fingerprint(p.stat().st_size, header, m, s, num_classes)}"
    meta: dict[str, object] = {"source": "npz", "path": str(p.resolve()), "streamed": stream}
    if not stream:
        xs = []
        for a in (x_tr, x_te):
            t = torch.from_numpy(np.ascontiguousarray(_array_rows(a))).float()
            if scale != 1.0:
                t.mul_(scale)
            xs.append(_normalise(t, m, s) if m else t)
        splits = from_tensors(xs[0], labels_tr, xs[1], labels_te, reward_fraction, seed,
                              num_classes=k, name=name)
    else:
        train_ds = _ArrayDataset(x_tr, labels_tr, scale, m, s)
        test_ds = _ArrayDataset(x_te, labels_te, scale, m, s) if len(labels_te) else None
        splits = from_datasets(train_ds, test=test_ds, reward_fraction=reward_fraction,
                               seed=seed, num_classes=k, name=name)
    splits.mean, splits.std, splits.meta = m, s, meta
    return splits



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
