"""The record of every evaluated candidate: what a search saw, in order.

The environment appends one :class:`Candidate` per evaluated pruning policy, so
every agent, RL or not, produces the same history. The best feasible candidate is
tracked as candidates arrive; a cache keyed by the (rounded) policy lets a resumed
search skip candidates that were already evaluated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Candidate", "History"]


@dataclass
class Candidate:
    """One evaluated pruning policy.

    ``index`` is the candidate's 0-based position in its history and ``episode`` the
    search episode that produced it; ``policy`` holds one prune ratio per entry of the
    space. ``reward`` is the candidate's terminal reward and ``accuracy`` its accuracy
    on the reward split (never the test split); ``feasible`` is whether every
    constraint holds and ``time`` the seconds since the search started when it was
    evaluated. ``cost_ratios[i]`` is constraint ``i``'s measured value divided by its limit
    (``<= 1`` means the constraint holds); ``costs`` holds the raw values by name.
    ``extra`` carries agent-specific tags such as the Lagrange multipliers.
    """

    index: int
    episode: int
    policy: list[float]
    reward: float
    accuracy: float
    costs: dict[str, float]
    cost_ratios: list[float]
    feasible: bool
    time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The candidate as a plain dict of its fields (what a log line holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """The candidate whose fields are the entries of ``d`` (:meth:`to_dict`'s inverse)."""
        return cls(**d)


def policy_key(policy: Iterable[float], decimals: int = 6) -> tuple[float, ...]:
    """Hashable key of a policy, rounded so float noise does not defeat the cache."""
    return tuple(round(float(p), decimals) for p in policy)


class History:
    """Ordered candidates plus the best feasible one.

    ``rank="reward"`` (default) ranks by reward, ties by accuracy; ``rank="accuracy"``
    ranks by reward-split accuracy (used with dense per-step rewards, whose episode
    return is not comparable across candidates).
    """

    def __init__(self, candidates: Sequence[Candidate] = (), rank: str = "reward"):
        if rank not in ("reward", "accuracy"):
            raise ValueError(f"rank must be 'reward' or 'accuracy', got {rank!r}")
        self.rank = rank
        self.candidates: list[Candidate] = []
        self.best: Candidate | None = None
        self._by_key: dict[tuple[float, ...], Candidate] = {}
        self.tags: dict[str, Any] = {}
        for c in candidates:
            self.add(c)

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.candidates)

    def lookup(self, policy: Iterable[float]) -> Candidate | None:
        """A previously evaluated candidate with the same policy, if any."""
        return self._by_key.get(policy_key(policy))

    def add(self, cand: Candidate) -> Candidate:
        """Append the candidate ``cand``, update the best feasible one, return ``cand``."""
        self.candidates.append(cand)
        self._by_key.setdefault(policy_key(cand.policy), cand)
        if cand.feasible and math.isfinite(cand.reward) and (
            self.best is None or self.key(cand) > self.key(self.best)
        ):
            self.best = cand
        return cand

    def key(self, c: Candidate) -> tuple[float, float]:
        """The ranking key of the candidate ``c`` (higher is better)."""
        return (c.reward, c.accuracy) if self.rank == "reward" else (c.accuracy, c.reward)

    @property
    def evaluations(self) -> int:
        """Candidates actually scored (cache hits of repeated policies excluded)."""
        return sum(1 for c in self.candidates if not c.extra.get("cached"))

    @property
    def best_found_at(self) -> int | None:
        """1-based evaluation count at which the best feasible candidate was first seen."""
        return None if self.best is None else self.best.index + 1

    def to_jsonl(self) -> str:
        """Every candidate as one JSON line, in order (see :mod:`rlprune.runlog` for logs)."""
        return "".join(json.dumps(c.to_dict()) + "\n" for c in self.candidates)

    @classmethod
    def from_jsonl(cls, text: str, rank: str = "reward") -> History:
        """The history of the JSON lines in ``text`` (:meth:`to_jsonl`), ranked by ``rank``."""
        return cls([Candidate.from_dict(json.loads(line)) for line in text.splitlines() if line],
                   rank=rank)
