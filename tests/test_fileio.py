"""Tests of ``rlprune.fileio``: the one atomic writer and strict JSON conversion."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprune import fileio


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# ----------------------------------------------------------------------- atomic files
def test_atomic_write_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    fileio.atomic_write_bytes(target, b"hello")
    fileio.atomic_write_bytes(target, b"bye")
    assert target.read_bytes() == b"bye"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_writes_create_parents_and_use_the_umask_mode(tmp_path: Path) -> None:
    """mkstemp creates 0600; the final file gets the mode a plain open() would give."""
    paths = [fileio.atomic_write_bytes(tmp_path / "a" / "b.bin", b"x"),
             fileio.atomic_write_text(tmp_path / "c" / "d.txt", "é\n"),
             fileio.atomic_write_json(tmp_path / "e.json", {"v": float("nan")})]
    for p in paths:
        assert p.is_file() and p.stat().st_mode & 0o777 == _umask_mode(), p
    assert paths[1].read_text(encoding="utf-8") == "é\n"
    assert json.loads(paths[2].read_text()) == {"v": None}


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    fileio.atomic_write_text(target, "old")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_path_removes_the_temp_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="exporter"):
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("exporter failed")
    assert list(tmp_path.iterdir()) == []
    with fileio.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".m.onnx.")
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# ------------------------------------------------------------------------------- JSON
def test_to_jsonable_converts_everything() -> None:
    obj = {"a": np.float32(0.5), "b": np.int64(3), "c": np.array([1.0, np.nan]),
           "d": torch.tensor([2.0, float("inf")]), "e": Path("x/y"), "f": (np.bool_(True),),
           1: float("-inf")}
    out = fileio.to_jsonable(obj)
    assert out == {"a": 0.5, "b": 3, "c": [1.0, None], "d": [2.0, None], "e": "x/y",
                   "f": [True], "1": None}
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN/Infinity left


def test_dumps_is_strict() -> None:
    text = fileio.dumps({"x": [np.float64("nan"), 1]}, indent=None)
    assert text == '{"x": [null, 1]}'
    assert "\n" in fileio.dumps({"x": 1})  # indented by default
