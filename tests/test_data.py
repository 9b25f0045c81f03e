"""Datasets: fixed splits, readers of the standard formats, errors, augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune import data
from rlprune.data import DataError


def row_set(x: torch.Tensor) -> set[bytes]:
    """Each row (one image) as bytes, to compare splits by content."""
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def sorted_rows(x: torch.Tensor) -> np.ndarray:
    a = x.reshape(len(x), -1).numpy()
    return a[np.lexsort(a.T[::-1])]


# --------------------------------------------------------------------------- digits
def test_digits_split_sizes(digits: data.Splits) -> None:
    assert len(digits.train) + len(digits.reward) == 1438
    assert len(digits.test) == 359
    assert len(digits.reward) == round(0.1 * 1438)
    assert digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.train.x.shape == (len(digits.train), 1, 8, 8)
    assert digits.train.x.dtype == torch.float32
    assert digits.train.y.dtype == torch.int64
    assert set(digits.test.y.tolist()) == set(range(10))
    # normalised with the training statistics
    full = torch.cat([digits.train.x, digits.reward.x])
    assert float(full.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(full.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_train_and_reward_are_disjoint_and_partition(digits: data.Splits) -> None:
    train_rows, reward_rows = row_set(digits.train.x), row_set(digits.reward.x)
    assert len(train_rows) == len(digits.train)  # digits has no duplicate images
    assert not train_rows & reward_rows
    assert not (train_rows | reward_rows) & row_set(digits.test.x)
    # together they are exactly the full training split
    whole = data.load("digits", reward_fraction=0.0)
    assert len(whole.reward) == 0
    assert np.array_equal(
        sorted_rows(torch.cat([digits.train.x, digits.reward.x])), sorted_rows(whole.train.x)
    )


def test_reward_split_fixed_by_seed_and_test_never_moves(digits: data.Splits) -> None:
    same = data.load("digits", seed=0)
    other = data.load("digits", seed=1)
    assert torch.equal(same.reward.x, digits.reward.x)
    assert torch.equal(same.reward.y, digits.reward.y)
    assert torch.equal(same.train.x, digits.train.x)
    assert row_set(other.reward.x) != row_set(digits.reward.x)
    assert len(other.reward) == len(digits.reward)
    for s in (same, other):
        assert torch.equal(s.test.x, digits.test.x)
        assert torch.equal(s.test.y, digits.test.y)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_reward_fraction_validated(fraction: float) -> None:
    with pytest.raises(ValueError, match="reward_fraction"):
        data.load("digits", reward_fraction=fraction)


def test_reward_fraction_sizes() -> None:
    s = data.load("digits", reward_fraction=0.25)
    assert len(s.reward) == round(0.25 * 1438)
    assert len(s.train) == 1438 - round(0.25 * 1438)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        data.load("nope")
    for name in data.list_datasets():
        assert name in str(info.value)


def test_example_input(digits: data.Splits) -> None:
    ex = digits.example_input(3)
    assert ex.shape == (3, 1, 8, 8)
    assert torch.equal(ex, digits.train.x[:3])
    ex.zero_()  # a copy: the dataset is untouched
    assert not torch.equal(ex, digits.train.x[:3])


def test_batches_cover_split_once(digits: data.Splits) -> None:
    g = torch.Generator().manual_seed(0)
    ys = [yb for _, yb in digits.reward.batches(50, shuffle=True, generator=g)]
    assert [len(y) for y in ys][:-1] == [50] * (len(ys) - 1)
    assert sorted(torch.cat(ys).tolist()) == sorted(digits.reward.y.tolist())


# ------------------------------------------------------------------------ synthetic
def test_synthetic_shapes() -> None:
    s = data.load("synthetic", shape=(3, 6, 5), num_classes=5, n_train=100, n_test=20,
                  reward_fraction=0.2)
    assert s.input_shape == (3, 6, 5)
    assert s.num_classes == 5
    assert s.train.x.shape == (80, 3, 6, 5)
    assert s.reward.x.shape == (20, 3, 6, 5)
    assert s.test.x.shape == (20, 3, 6, 5)
    assert int(s.train.y.max()) < 5 and int(s.train.y.min()) >= 0
    again = data.load("synthetic", shape=(3, 6, 5), num_classes=5, n_train=100, n_test=20,
                      reward_fraction=0.2)
    assert torch.equal(again.train.x, s.train.x)


# --------------------------------------------------------------------- from_tensors
def test_from_tensors_builds_splits() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    y = np.arange(50) % 3
    s = data.from_tensors(x, y, x[:10], y[:10], reward_fraction=0.2, seed=0)
    assert len(s.train) == 40 and len(s.reward) == 10 and len(s.test) == 10
    assert s.num_classes == 3
    assert s.input_shape == (4,)
    assert s.train.y.dtype == torch.int64
    assert s.train.x.dtype == torch.float32
    assert not row_set(s.train.x) & row_set(s.reward.x)
    assert data.from_tensors(x, y, x[:10], y[:10], num_classes=7).num_classes == 7


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rows", "rows"),
        ("nan", "NaN"),
        ("inf", "NaN or inf"),
        ("y2d", "1-D"),
        ("shape", "differ in shape"),
    ],
)
def test_from_tensors_validation(change: str, message: str) -> None:
    x_tr, y_tr = torch.randn(20, 1, 4, 4), torch.arange(20) % 2
    x_te, y_te = torch.randn(6, 1, 4, 4), torch.arange(6) % 2
    if change == "rows":
        y_tr = y_tr[:-1]
    elif change == "nan":
        x_tr[3, 0, 1, 1] = float("nan")
    elif change == "inf":
        x_te[0, 0, 0, 0] = float("inf")
    elif change == "y2d":
        y_tr = y_tr.view(20, 1)
    elif change == "shape":
        x_te = torch.randn(6, 1, 5, 5)
    with pytest.raises(ValueError, match=message):
        data.from_tensors(x_tr, y_tr, x_te, y_te)


def test_as_splits(digits: data.Splits) -> None:
    assert data.as_splits(digits) is digits
    by_name = data.as_splits("digits", reward_fraction=0.2, seed=3)
    assert by_name.name == "digits"
    assert len(by_name.reward) == round(0.2 * 1438)
    x, y = torch.randn(30, 2), torch.arange(30) % 2
    for tup in ((x, y, x, y), [x, y, x, y]):
        s = data.as_splits(tup, reward_fraction=0.1)
        assert len(s.train) + len(s.reward) == 30
        assert len(s.test) == 30
    with pytest.raises(TypeError, match="Splits"):
        data.as_splits(42)
    with pytest.raises(TypeError):
        data.as_splits((x, y))


# ------------------------------------------------------------------------- augment
def find_window(out: torch.Tensor, padded: torch.Tensor, h: int, w: int) -> tuple[bool, bool]:
    """Whether ``out`` is an (unflipped, flipped) h x w window of ``padded``."""
    plain = flipped = False
    for dy in range(padded.shape[-2] - h + 1):
        for dx in range(padded.shape[-1] - w + 1):
            win = padded[:, dy : dy + h, dx : dx + w]
            plain |= torch.equal(out, win)
            flipped |= torch.equal(out, win.flip(-1))
    return plain, flipped


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(2, 6),
    pad=st.integers(0, 3),
    kind=st.sampled_from(["crop", "crop_flip"]),
    seed=st.integers(0, 2**16),
)
def test_augment_outputs_are_windows_of_padded_input(
    n: int, c: int, h: int, w: int, pad: int, kind: str, seed: int
) -> None:
    # distinct positive values so that a window identifies its offset
    x = torch.randperm(n * c * h * w, generator=torch.Generator().manual_seed(seed)).float() + 1
    x = x.view(n, c, h, w)
    out = data.augment(x, kind, torch.Generator().manual_seed(seed), pad=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for i in range(n):
        plain, flipped = find_window(out[i], padded[i], h, w)
        if kind == "crop":
            assert plain
        else:
            assert plain or flipped


def test_augment_varies_offsets_and_flips() -> None:
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8) + 1
    out = data.augment(x, "crop_flip", torch.Generator().manual_seed(0), pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    kinds = [find_window(out[i], padded[i], 8, 8) for i in range(64)]
    assert all(p or f for p, f in kinds)
    assert any(f and not p for p, f in kinds)  # some are flipped
    assert any(p and not f for p, f in kinds)  # some are not
    assert not torch.equal(out, x)


def test_augment_deterministic_for_seeded_generator() -> None:
    x = torch.randn(16, 3, 8, 8)
    a = data.augment(x, "crop_flip", torch.Generator().manual_seed(7))
    b = data.augment(x, "crop_flip", torch.Generator().manual_seed(7))
    c = data.augment(x, "crop_flip", torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_none_and_flat_inputs_unchanged() -> None:
    x = torch.randn(4, 3, 8, 8)
    assert data.augment(x, None) is x
    flat = torch.randn(4, 10)
    assert data.augment(flat, "crop_flip") is flat


# --------------------------------------------------------------- fake MNIST files
def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, side: int = 28
                     ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "y_test": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {
        "train-images-idx3-ubyte.gz": idx_images(arrays["x_train"]),
        "train-labels-idx1-ubyte.gz": idx_labels(arrays["y_train"]),
        "t10k-images-idx3-ubyte.gz": idx_images(arrays["x_test"]),
        "t10k-labels-idx1-ubyte.gz": idx_labels(arrays["y_test"]),
    }
    for name, raw in blobs.items():
        (folder / name).write_bytes(gzip.compress(raw))
    return arrays


@pytest.mark.parametrize("subfolder", [True, False])
def test_fake_mnist_loads(tmp_path: Path, subfolder: bool) -> None:
    arrays = write_fake_mnist(tmp_path / "mnist" if subfolder else tmp_path)
    s = data.load("mnist", root=tmp_path, reward_fraction=0.25, seed=0)
    assert s.name == "mnist"
    assert s.num_classes == 10
    assert s.input_shape == (1, 28, 28)
    assert len(s.train) == 15 and len(s.reward) == 5 and len(s.test) == 10
    assert s.test.x.shape == (10, 1, 28, 28)
    assert s.test.y.tolist() == arrays["y_test"].tolist()
    assert sorted(torch.cat([s.train.y, s.reward.y]).tolist()) == sorted(
        arrays["y_train"].tolist()
    )
    expected = (torch.from_numpy(arrays["x_test"]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(s.test.x[:, 0], expected, atol=1e-6)


def test_fake_mnist_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("RLPRUNE_DATA", str(tmp_path))
    assert len(data.load("mnist").test) == 10


def test_mnist_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLPRUNE_DATA", raising=False)
    with pytest.raises(DataError, match="RLPRUNE_DATA"):
        data.load("mnist")


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a gzip file at all" * 10)


def _corrupt_deflate(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0xFF  # inside the deflate stream: zlib reports "invalid ..." data
    path.write_bytes(bytes(raw))


def _short_payload(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # header promises more than is there


def _not_gzipped(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))


def _empty_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b""))


def _swap_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[:4] = struct.pack(">I", 2049)  # a labels magic in an images file
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize(
    ("fname", "damage"),
    [
        ("train-images-idx3-ubyte.gz", _truncate),
        ("train-labels-idx1-ubyte.gz", _garbage),
        ("t10k-images-idx3-ubyte.gz", _corrupt_deflate),
        ("t10k-images-idx3-ubyte.gz", _short_payload),
        ("train-images-idx3-ubyte.gz", _not_gzipped),
        ("t10k-labels-idx1-ubyte.gz", _empty_gzip),
        ("train-images-idx3-ubyte.gz", _swap_magic),
    ],
)
def test_corrupt_mnist_file_is_data_error(tmp_path: Path, fname: str, damage) -> None:
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / fname
    damage(path)
    with pytest.raises(DataError) as info:
        data.load("mnist", root=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "idx" in message and "gzip" in message
    assert "\n" not in message


def test_missing_mnist_file_is_data_error(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.unlink()
    with pytest.raises(DataError) as info:
        data.load("mnist", root=tmp_path)
    message = str(info.value)
    assert "not found" in message
    assert path.name in message and str(tmp_path) in message
    assert "idx" in message


def test_mnist_count_mismatch_is_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    write_fake_mnist(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_labels(np.zeros(9, np.uint8)))
    )
    with pytest.raises(DataError, match="differ in count"):
        data.load("mnist", root=tmp_path)


# --------------------------------------------------------------- fake CIFAR files
def cifar_batch(n: int, seed: int, label_key: str, str_keys: bool) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {"data": pixels, label_key: labels, "batch_label": f"batch {seed}"}
    if not str_keys:  # the official files were pickled by Python 2: bytes keys
        d = {k.encode(): v for k, v in d.items()}
    return d, pixels


def write_fake_cifar10(root: Path, str_keys: bool, n: int = 4, n_test: int = 6
                       ) -> dict[str, object]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels: list[int] = []
    for i in range(1, 6):
        d, _ = cifar_batch(n, i, "labels", str_keys)
        train_labels += d["labels" if str_keys else b"labels"]
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d, protocol=2))
    d, pixels = cifar_batch(n_test, 99, "labels", str_keys)
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    return {"train_labels": train_labels,
            "test_labels": d["labels" if str_keys else b"labels"],
            "test_pixels": pixels, "folder": folder}


@pytest.mark.parametrize("str_keys", [False, True])
def test_fake_cifar10_loads(tmp_path: Path, str_keys: bool) -> None:
    fake = write_fake_cifar10(tmp_path, str_keys)
    s = data.load("cifar10", root=tmp_path, reward_fraction=0.25)
    assert s.name == "cifar10"
    assert s.num_classes == 10
    assert s.input_shape == (3, 32, 32)
    assert s.augmentation == "crop_flip"
    assert len(s.train) + len(s.reward) == 20 and len(s.reward) == 5
    assert s.test.x.shape == (6, 3, 32, 32)
    assert s.test.y.tolist() == fake["test_labels"]
    assert sorted(torch.cat([s.train.y, s.reward.y]).tolist()) == sorted(fake["train_labels"])
    # rows are channel-major (R plane, G plane, B plane), normalised per channel
    raw = torch.from_numpy(fake["test_pixels"]).float().view(6, 3, 32, 32) / 255
    mean = torch.tensor(s.mean).view(1, 3, 1, 1)
    std = torch.tensor(s.std).view(1, 3, 1, 1)
    assert torch.allclose(s.test.x, (raw - mean) / std, atol=1e-5)
    # pointing at the batches folder itself works too
    assert len(data.load("cifar10", root=fake["folder"]).test) == 6


def test_fake_cifar100_loads(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    d_train, _ = cifar_batch(8, 1, "fine_labels", str_keys=False)
    d_test, _ = cifar_batch(3, 2, "fine_labels", str_keys=True)
    (folder / "train").write_bytes(pickle.dumps(d_train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(d_test, protocol=2))
    s = data.load("cifar100", root=tmp_path, reward_fraction=0.25)
    assert s.num_classes == 100
    assert len(s.train) == 6 and len(s.reward) == 2
    assert s.test.y.tolist() == d_test["fine_labels"]


def _pickle_garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not a pickle" * 20)


def _pickle_truncated(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


def _pickle_list(path: Path) -> None:
    path.write_bytes(pickle.dumps([1, 2, 3]))


def _pickle_no_labels(path: Path) -> None:
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    d.pop(b"labels")
    path.write_bytes(pickle.dumps(d, protocol=2))


def _pickle_bad_rows(path: Path) -> None:
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    d[b"data"] = d[b"data"][:, :1000]
    path.write_bytes(pickle.dumps(d, protocol=2))


def _pickle_label_count(path: Path) -> None:
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    d[b"labels"] = d[b"labels"][:-1]
    path.write_bytes(pickle.dumps(d, protocol=2))


@pytest.mark.parametrize(
    ("fname", "damage", "expected"),
    [
        ("data_batch_2", _pickle_garbage, "pickle of a dict with 'data' (N x 3072 uint8)"),
        ("test_batch", _pickle_truncated, "pickle of a dict with 'data' (N x 3072 uint8)"),
        ("data_batch_5", _pickle_list, "expected a dict with 'data' (N x 3072 uint8)"),
        ("data_batch_1", _pickle_no_labels, "keys 'data' (N x 3072 uint8) and 'labels'"),
        ("test_batch", _pickle_bad_rows, "keys 'data' (N x 3072 uint8) and 'labels'"),
        ("data_batch_3", _pickle_label_count, "3 labels"),
    ],
)
def test_corrupt_cifar_file_is_data_error(
    tmp_path: Path, fname: str, damage, expected: str
) -> None:
    fake = write_fake_cifar10(tmp_path, str_keys=False)
    path = fake["folder"] / fname
    damage(path)
    with pytest.raises(DataError) as info:
        data.load("cifar10", root=tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_missing_cifar_file_is_data_error(tmp_path: Path) -> None:
    fake = write_fake_cifar10(tmp_path, str_keys=True)
    path = fake["folder"] / "data_batch_4"
    path.unlink()
    with pytest.raises(DataError) as info:
        data.load("cifar10", root=tmp_path)
    message = str(info.value)
    assert "not found" in message and str(path) in message
    assert "cifar-10-batches-py" in message and "pickle" in message


def test_cifar_empty_folder_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_batch_1"):
        data.load("cifar10", root=tmp_path)


# ---------------------------------------------------------------------- real data
@pytest.mark.data
def test_real_mnist(mnist_root: Path) -> None:
    s = data.load("mnist", root=mnist_root)
    assert len(s.train) + len(s.reward) == 60000
    assert len(s.reward) == 6000
    assert len(s.test) == 10000
    assert s.num_classes == 10
    assert s.input_shape == (1, 28, 28)
    assert set(s.test.y.tolist()) == set(range(10))
    assert float(torch.cat([s.train.x, s.reward.x]).mean()) == pytest.approx(0.0, abs=0.01)


@pytest.mark.data
def test_real_cifar10(cifar_root: Path) -> None:
    s = data.load("cifar10", root=cifar_root)
    assert len(s.train) + len(s.reward) == 50000
    assert len(s.test) == 10000
    assert s.num_classes == 10
    assert s.input_shape == (3, 32, 32)
    assert torch.bincount(s.test.y).tolist() == [1000] * 10
    means = torch.cat([s.train.x, s.reward.x]).mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=0.05)
