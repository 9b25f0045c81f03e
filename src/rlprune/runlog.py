"""The run log ``log.jsonl``: one JSON line per evaluated candidate, in evaluation order.

It is its own module because resuming depends on it: a long search appends each
candidate with :func:`append_log` as soon as it is evaluated (each line is on disk
when the call returns, so a crash loses at most the candidate in flight), and
``--resume`` rebuilds the :class:`~rlprune.history.History` with :func:`read_log`,
which tolerates the truncated last line such a crash leaves. :func:`write_log`
writes a whole history at once (atomically) for a finished run.

Lines are strict JSON (non-finite numbers are ``null``, see :mod:`rlprune.fileio`);
:func:`read_log` turns those ``null`` numbers back into NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlprune.fileio import atomic_write_text, dumps
from rlprune.history import Candidate, History

__all__ = ["append_log", "read_log", "write_log"]


def _candidate_dict(candidate: Candidate | Mapping[str, Any]) -> dict[str, Any]:
    return candidate.to_dict() if isinstance(candidate, Candidate) else dict(candidate)


def append_log(path: str | os.PathLike[str], candidate: Candidate | Mapping[str, Any]) -> None:
    """Append one candidate as a JSON line to ``path`` and force it to disk.

    Meant for live logging during a search (e.g. from a method's callback): each line
    is complete once this returns, so a crash loses at most the candidate being
    evaluated. Non-finite numbers are written as ``null`` (see :func:`read_log`).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = dumps(_candidate_dict(candidate), indent=None) + "\n"
    with open(p, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_log(path: str | os.PathLike[str], history: Iterable[Candidate]) -> Path:
    """Write every candidate of ``history`` as JSON lines to ``path``, atomically.

    Returns the path written.
    """
    text = "".join(dumps(_candidate_dict(c), indent=None) + "\n" for c in history)
    return atomic_write_text(path, text)


_FLOAT_FIELDS = ("reward", "accuracy", "time")


def read_log(path: str | os.PathLike[str], rank: str = "reward") -> History:
    """Read a ``log.jsonl`` back into a :class:`History` (``null`` numbers become NaN).

    ``path`` is the log file; ``rank`` is the history's ranking (``"reward"`` or
    ``"accuracy"``, see :class:`~rlprune.history.History`). A truncated last line (a
    crash in the middle of :func:`append_log`) is skipped.
    """
    cands: list[Candidate] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
        for k in _FLOAT_FIELDS:
            if d.get(k) is None and k in d:
                d[k] = math.nan
        d["cost_ratios"] = [math.nan if v is None else v for v in d.get("cost_ratios", [])]
        d["costs"] = {k: math.nan if v is None else v for k, v in d.get("costs", {}).items()}
        cands.append(Candidate.from_dict(d))
    return History(cands, rank=rank)
