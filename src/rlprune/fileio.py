"""Atomic file writes and strict JSON: how every rlprune output reaches the disk.

Every file the library writes (checkpoints, ``report.json``, plots, ONNX exports,
``config.yaml`` of a run) goes through the one writer here: a temp file in the same
folder, ``fsync``, then ``os.replace``. Readers therefore see the old file or the new
one, never a half-written file that looks complete, and an interrupted run leaves no
temp file behind. The final file gets the mode a plain ``open()`` would give it (the
umask's), not ``mkstemp``'s 0600, so reports stay readable by colleagues and web
servers.

JSON is written strictly: :func:`to_jsonable` turns numpy/torch values, paths and
dataclasses into plain types and non-finite floats into ``null``, because strict
readers (``jq``, browsers) reject ``NaN``. :func:`dumps` proves no NaN is left.

This module imports nothing from :mod:`rlprune`, so any module may use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "to_jsonable",
    "dumps",
]


# ======================================================================== JSON
def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy/torch scalars and arrays become numbers and
    lists, paths strings, dataclasses dicts, and non-finite floats ``None`` (strict JSON
    has no NaN; a reader such as ``jq`` or a browser rejects it)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, torch.Size):
        return [int(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    return repr(obj)


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` after :func:`to_jsonable` (NaN and ±inf are ``null``).

    ``indent`` is passed to :func:`json.dumps` (``None``: one line).
    """
    # allow_nan=False proves the conversion left no NaN behind.
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


# ================================================================ atomic files
@functools.cache
def _umask_mode() -> int:
    """Mode a plain ``open()`` would give a new file (``mkstemp`` would give 0600, which
    hides reports from colleagues and web servers). Read once: setting the umask to
    read it is process-wide."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp file next to ``final`` for writers that need a path (an exporter, a
    library that writes by name); renamed onto ``final`` when the block succeeds and
    removed when it raises. Parent folders are created."""
    dest = Path(final)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename,
    so readers see the old file or the new one, never a partial one."""
    p = Path(path)
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (see :func:`dumps`) to ``path`` atomically."""
    return atomic_write_text(path, dumps(obj) + "\n")
