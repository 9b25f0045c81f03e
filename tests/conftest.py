"""Shared fixtures: the bundled digits data, a trained small CNN, and the real datasets.

Real MNIST / CIFAR-10 come from ``$RLPRUNE_DATA`` (a folder laid out by
``python3 ../shared/data/prepare.py DIR``). When ``$RLPRUNE_DATA`` is unset and this
checkout sits beside ``../shared/data/prepare.py``, the data is prepared once into a
cache folder under the system temp dir and reused by later sessions: MNIST (a copy,
instant) when a test asks for it, CIFAR-10 (decoded from JPEGs, 1-2 minutes) only
when a test asks for ``cifar_root``. Only the tests use ``../shared``; the product
never does. Tests that need real data skip with a clear reason when none is found.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune import data, models, train

# The test machines have 2 shared cores: intra-op threads oversubscribe them and make
# small-model training 10x slower under load. Override with RLPRUNE_TEST_THREADS=N.
torch.set_num_threads(int(os.environ.get("RLPRUNE_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARE = REPO_ROOT.parent / "shared" / "data" / "prepare.py"
CACHE_DIR = Path(tempfile.gettempdir()) / "rlprune-test-data"
SKIP_REASON = (
    "real data not found: set RLPRUNE_DATA to a folder prepared by "
    "`python3 ../shared/data/prepare.py DIR`"
)

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_DONE = ".cifar10-complete"  # marker written after a full CIFAR prepare in the cache


def has_mnist(root: Path) -> bool:
    """True if ``root/mnist`` holds the four idx files."""
    return all((root / "mnist" / f).is_file() for f in MNIST_FILES)


def has_cifar(root: Path) -> bool:
    """True if ``root/cifar-10-batches-py`` holds the five train batches and the test batch."""
    return all((root / "cifar-10-batches-py" / f).is_file() for f in CIFAR_FILES)


def _env_root() -> Path | None:
    env = os.environ.get("RLPRUNE_DATA")
    return Path(env).expanduser() if env else None


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Serialise preparation between pytest processes sharing the cache folder."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(CACHE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prepare_mnist_cache() -> Path | None:
    """Copy MNIST into the cache with prepare.py's own ``prepare_mnist`` (fast, checksummed)."""
    if not PREPARE.is_file():
        return None
    with _cache_lock():
        if not has_mnist(CACHE_DIR):
            spec = importlib.util.spec_from_file_location("_rlprune_prepare", PREPARE)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
                module.prepare_mnist(CACHE_DIR)
            except (Exception, SystemExit) as e:
                pytest.skip(f"{SKIP_REASON} (preparing MNIST into {CACHE_DIR} failed: {e})")
    return CACHE_DIR if has_mnist(CACHE_DIR) else None


def _prepare_cifar_cache() -> Path | None:
    """Run prepare.py into the cache (MNIST + CIFAR-10; 1-2 minutes the first time)."""
    if not PREPARE.is_file():
        return None
    with _cache_lock():
        if not (has_cifar(CACHE_DIR) and (CACHE_DIR / _CIFAR_DONE).is_file()):
            proc = subprocess.run(
                [sys.executable, str(PREPARE), str(CACHE_DIR)],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                pytest.skip(f"{SKIP_REASON} (prepare.py into {CACHE_DIR} failed: {tail})")
            (CACHE_DIR / _CIFAR_DONE).write_text("ok\n")
    return CACHE_DIR if has_cifar(CACHE_DIR) else None


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``$RLPRUNE_DATA`` if it holds MNIST or CIFAR-10 (else the prepared cache, else skip)."""
    env = _env_root()
    if env is not None:
        if has_mnist(env) or has_cifar(env):
            return env
        pytest.skip(f"{SKIP_REASON} (RLPRUNE_DATA={env} holds neither mnist/ nor "
                    "cifar-10-batches-py/)")
    root = _prepare_mnist_cache()
    if root is None:
        pytest.skip(SKIP_REASON)
    return root


def _data_root(present: Callable[[Path], bool], prepare: Callable[[], Path | None],
               missing: str) -> Path:
    """``$RLPRUNE_DATA`` if ``present(root)``, else the ``prepare()``d cache, else skip."""
    env = _env_root()
    if env is not None:
        if present(env):
            return env
        pytest.skip(f"{SKIP_REASON} (no {missing} in RLPRUNE_DATA={env})")
    root = prepare()
    if root is None:
        pytest.skip(SKIP_REASON)
    return root


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root holding ``mnist/`` with the four idx files, or skip."""
    return _data_root(has_mnist, _prepare_mnist_cache, "mnist/ idx files")


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """A data root holding ``cifar-10-batches-py/``, or skip (prepared lazily, slow once)."""
    return _data_root(has_cifar, _prepare_cifar_cache, "cifar-10-batches-py/")


@pytest.fixture(scope="session")
def digits() -> data.Splits:
    """sklearn's 8x8 digits as :class:`rlprune.data.Splits` (seed 0, 10% reward split).

    Shared by the whole session: do not modify its tensors in place.
    """
    return data.load("digits")


@pytest.fixture(scope="session")
def trained_digits_cnn(digits: data.Splits) -> nn.Module:
    """``digits_cnn`` trained 15 epochs on digits (lr 0.05, seed 0), in eval mode.

    Shared by the whole session: ``copy.deepcopy`` it before changing it.
    """
    torch.manual_seed(0)
    model = models.create("digits_cnn", num_classes=digits.num_classes, in_channels=1)
    train.fit(model, digits, epochs=15, lr=0.05, seed=0, progress=False)
    return model.eval()
