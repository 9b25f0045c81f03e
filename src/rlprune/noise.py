"""Noisy costs: when a repeatedly measured value is accepted against its limit.

A measured cost such as latency differs from one measurement to the next (other
processes, caches, frequency scaling). A budget that accepts a model on the one
measurement that happened to pass fails on the next one. rlprune therefore accepts a
noisy cost only on a stated upper bound of its repeated measurements:

* a model is measured ``repeats`` times (:class:`NoiseRule`);
* the bound is a one-sided prediction bound for *one more* measurement,
  ``mean + z * sd * sqrt(1 + 1/n)`` (``z = 2`` is about 97.7% under a normal
  distribution), never below the largest value measured;
* the cost is accepted when ``bound * (1 + margin) <= limit``: the relative
  ``margin`` (3% by default, the user's to set) covers what repeats in one process
  cannot see, such as a fresh process or a busier machine.

Relative limits on a noisy cost (``latency_ms<=50%``) are resolved once, from the
median of ``original_repeats`` measurements of the original model, and stored with
the run. A check of such a cost is *paired* (``paired``, on by default): each of the
candidate's measurements follows one of the original's, and the candidate's values
are scaled by the original's median at bind time over its median in this check. What
is checked is then the ratio the user asked for, measured side by side, and a host
that runs a few percent slower than when the limit was resolved (other load, heat)
moves both models alike instead of failing a model that did not change.
:class:`Spread` is what a report shows of a set of measurements.

Measurements made during a search are also recorded (:class:`MeasurementTape`) so
that a resumed run replays them instead of measuring again: a resumed search then
takes the same decisions as the interrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class NoiseRule:
    """How a noisy cost is measured and accepted (module docstring).

    ``repeats`` measurements of a candidate per check (>= 2); ``z`` the number of
    standard deviations in the prediction bound (>= 0); ``margin`` the relative
    margin the bound must keep below the limit (>= 0); ``original_repeats`` the
    measurements of the original model when a relative limit is resolved (>= 1);
    ``paired`` whether a check of a relative limit times the original beside the
    candidate (module docstring).
    """

    repeats: int = 5
    z: float = 2.0
    margin: float = 0.03
    original_repeats: int = 21
    paired: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.repeats, int) and self.repeats >= 2):
            raise ValueError(f"noise repeats must be an integer >= 2, got {self.repeats!r}")
        if not (isinstance(self.original_repeats, int) and self.original_repeats >= 1):
            raise ValueError(f"noise original_repeats must be an integer >= 1, got "
                             f"{self.original_repeats!r}")
        for name in ("z", "margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and 0 <= v):
                raise ValueError(f"noise {name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.paired, bool):
            raise ValueError(f"noise paired must be true or false, got {self.paired!r}")
        if self.margin >= 1:
            raise ValueError(f"noise margin is a fraction of the limit (0.03 = 3%), got "
                             f"{self.margin!r}")

    def spread(self, values: Sequence[float]) -> Spread:
        """The :class:`Spread` of ``values`` (one candidate's repeated measurements)
        with this rule's upper bound."""
        return Spread.of(values, self.z)

    def accepts(self, values: Sequence[float], limit: float,
                margin: float | None = None) -> bool:
        """Whether measurements ``values`` meet ``limit``: ``bound * (1 + margin) <=
        limit``, with this rule's margin unless ``margin`` is given."""
        m = self.margin if margin is None else margin
        return self.spread(values).bound * (1.0 + m) <= limit

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON-ready numbers (stored with a run's bound budget)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any] | None) -> NoiseRule:
        """The rule of :meth:`to_dict`; the defaults for a run stored without one."""
        return cls(**dict(stored)) if stored else cls()


@dataclass(frozen=True)
class Spread:
    """A summary of repeated measurements of one cost: what reports show.

    ``n`` measurements with their ``median``, ``mean``, standard deviation ``sd``
    (0 for one value), ``low``/``high`` (smallest and largest) and ``bound``, the
    upper prediction bound of :class:`NoiseRule` (module docstring).
    """

    n: int
    median: float
    mean: float
    sd: float
    low: float
    high: float
    bound: float

    @classmethod
    def of(cls, values: Sequence[float], z: float = 2.0) -> Spread:
        """Summarise ``values`` (at least one) with a bound ``z`` deviations up."""
        a = np.asarray(list(values), dtype=np.float64)
        if a.size == 0:
            raise ValueError("no measurements to summarise")
        n = int(a.size)
        sd = float(a.std(ddof=1)) if n > 1 else 0.0
        mean = float(a.mean())
        bound = max(float(a.max()), mean + z * sd * math.sqrt(1.0 + 1.0 / n))
        return cls(n=n, median=float(np.median(a)), mean=mean, sd=sd, low=float(a.min()),
                   high=float(a.max()), bound=bound)

    @property
    def relative_sd(self) -> float:
        """``sd / mean`` (0 when the mean is 0): the spread as a fraction."""
        return self.sd / self.mean if self.mean else 0.0

    def to_dict(self) -> dict[str, float]:
        """JSON-ready numbers."""
        return {k: float(v) for k, v in asdict(self).items()}


def fingerprint(model: nn.Module) -> str:
    """A short digest of what a cost can depend on in ``model``: every parameter's
    and buffer's shape and count of nonzeros (channel and weight pruning both change
    it). Two prunings of one model with the same digest measure alike."""
    h = hashlib.sha1()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            h.update(repr((tuple(t.shape), int(torch.count_nonzero(t)))).encode())
    return h.hexdigest()[:16]


@dataclass
class MeasurementTape:
    """The noisy measurements a run made, in order, to be replayed on resume.

    Every measurement of a noisy budget during a run is appended (``record``) with the
    model's :func:`fingerprint`; a resumed run loads the tape and takes its values
    back in the same order (``take``) as long as the fingerprints agree, and measures
    for real from the first disagreement on. ``path`` (optional) is a JSON-lines file
    each record is appended to as it is made; records made before a path is attached
    are written when it is (:meth:`attach`). ``records`` holds every record of the run,
    ``replay`` the records still to be replayed, ``replayed`` how many were,
    ``diverged`` whether replay stopped at a fingerprint that disagreed, and ``mark``
    how many records the search had made when it ended (:meth:`forget_after_mark`).
    """

    path: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    replay: list[dict[str, Any]] = field(default_factory=list)
    replayed: int = 0
    diverged: bool = False
    mark: int | None = None

    @classmethod
    def load(cls, path: str | Path) -> MeasurementTape:
        """A tape that replays the records of ``path`` (a torn last line is dropped)
        and appends new ones to it; an absent file replays nothing."""
        p = Path(path)
        replay: list[dict[str, Any]] = []
        if p.is_file():
            for line in p.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                if not (isinstance(rec, dict) and "fp" in rec and "values" in rec):
                    break
                replay.append(rec)
        tape = cls(replay=replay)
        tape.records = list(replay)
        tape.path = p
        # rewrite without a torn tail, so that new records follow whole lines
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_lines(p, replay)
        return tape

    def attach(self, path: str | Path) -> None:
        """Write every record so far to ``path`` and append the next ones to it."""
        self.path = Path(path)
        _write_lines(self.path, self.records)

    def take(self, fp: str) -> dict[str, float] | None:
        """The next replayed values if their fingerprint is ``fp``; else ``None`` (and
        replay stops for good: the run has gone another way)."""
        if self.diverged or not self.replay:
            return None
        rec = self.replay[0]
        if rec["fp"] != fp:
            self.diverged, self.replay = True, []
            return None
        self.replay.pop(0)
        self.replayed += 1
        return {str(k): float(v) for k, v in rec["values"].items()}

    def record(self, fp: str, values: Mapping[str, float]) -> None:
        """Append one measurement of the model with fingerprint ``fp``: ``values`` by
        cost name."""
        rec = {"fp": fp, "values": {k: float(v) for k, v in values.items()}}
        self.records.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


    def forget_after_mark(self) -> None:
        """Drop the records made after ``mark`` (in memory and in the file), so that
        a resumed run replays the search and measures what came after it afresh: a
        final check that failed on a burst of timing noise is not replayed."""
        if self.mark is None:
            return
        self.records = self.records[: self.mark]
        self.replay = []
        if self.path is not None:
            _write_lines(self.path, self.records)


def _write_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    from rlprune.fileio import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(dict(r)) + "\n" for r in records).encode())
