"""Tests of ``rlprune.runlog``: the ``log.jsonl`` that live logging and resume rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlprune import runlog
from rlprune.history import Candidate


def _strict_json(text: str) -> Any:
    """``json.loads`` that rejects NaN/Infinity, as strict parsers (jq, browsers) do."""

    def bad(c: str) -> Any:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def _candidates() -> tuple[Candidate, Candidate]:
    a = Candidate(index=0, episode=0, policy=[0.1, np.float64(0.2)], reward=0.5,
                  accuracy=0.5, costs={"params": 10.0}, cost_ratios=[0.9], feasible=True)
    b = Candidate(index=1, episode=1, policy=[0.3, 0.4], reward=math.nan, accuracy=math.nan,
                  costs={"params": math.inf}, cost_ratios=[math.inf], feasible=False,
                  extra={"multipliers": [np.float32(1.5)]})
    return a, b


def test_append_log_and_read_back(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "log.jsonl"
    a, b = _candidates()
    runlog.append_log(log, a)
    runlog.append_log(log, b.to_dict())
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    first, second = (_strict_json(line) for line in lines)
    assert first["policy"] == [0.1, 0.2] and second["reward"] is None
    assert second["extra"]["multipliers"] == [1.5]
    with open(log, "a") as f:  # a crash in the middle of the next append
        f.write('{"index": 2, "epis')
    hist = runlog.read_log(log)
    assert len(hist) == 2 and hist.best is not None and hist.best.index == 0
    assert math.isnan(hist.candidates[1].reward) and math.isnan(hist.candidates[1].costs["params"])


def test_write_log_matches_append_log(tmp_path: Path) -> None:
    a, b = _candidates()
    for c in (a, b):
        runlog.append_log(tmp_path / "appended.jsonl", c)
    path = runlog.write_log(tmp_path / "written.jsonl", [a, b])
    assert path.read_text() == (tmp_path / "appended.jsonl").read_text()
    hist = runlog.read_log(path, rank="accuracy")
    assert hist.rank == "accuracy"
    assert [c.index for c in hist] == [0, 1]
    assert math.isnan(hist.candidates[1].cost_ratios[0])
