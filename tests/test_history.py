"""The history of evaluated candidates: best feasible, cache, counts, jsonl."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune.history import Candidate, History, policy_key


def cand(
    index: int,
    reward: float,
    accuracy: float,
    feasible: bool = True,
    policy: list[float] | None = None,
    **extra: object,
) -> Candidate:
    return Candidate(
        index=index,
        episode=index,
        policy=policy if policy is not None else [0.1 * index, 0.5],
        reward=reward,
        accuracy=accuracy,
        costs={"params": 1000.0 - index},
        cost_ratios=[0.9 if feasible else 1.2],
        feasible=feasible,
        time=0.5 * index,
        extra=dict(extra),
    )


def test_empty_history() -> None:
    h = History()
    assert len(h) == 0
    assert h.best is None
    assert h.best_found_at is None
    assert h.evaluations == 0
    assert h.to_jsonl() == ""
    assert list(h) == []


def test_infeasible_is_never_best() -> None:
    h = History()
    h.add(cand(0, reward=0.99, accuracy=0.99, feasible=False))
    assert h.best is None
    h.add(cand(1, reward=0.5, accuracy=0.5))
    h.add(cand(2, reward=10.0, accuracy=1.0, feasible=False))
    assert h.best is not None and h.best.index == 1
    assert h.best_found_at == 2


def test_non_finite_reward_is_never_best() -> None:
    h = History()
    h.add(cand(0, reward=0.1, accuracy=0.1))
    h.add(cand(1, reward=float("nan"), accuracy=0.9))
    h.add(cand(2, reward=float("inf"), accuracy=0.9))
    assert h.best.index == 0


def test_rank_by_reward_then_accuracy() -> None:
    h = History(rank="reward")
    h.add(cand(0, reward=0.5, accuracy=0.9))
    h.add(cand(1, reward=0.7, accuracy=0.2))
    assert h.best.index == 1
    h.add(cand(2, reward=0.7, accuracy=0.3))  # same reward, better accuracy
    assert h.best.index == 2
    h.add(cand(3, reward=0.7, accuracy=0.3))  # an exact tie keeps the first one
    assert h.best.index == 2
    assert h.best_found_at == 3


def test_rank_by_accuracy() -> None:
    h = History(rank="accuracy")
    h.add(cand(0, reward=-1.0, accuracy=0.8))
    h.add(cand(1, reward=5.0, accuracy=0.6))
    assert h.best.index == 0
    h.add(cand(2, reward=-3.0, accuracy=0.8))  # tie on accuracy: higher reward wins
    assert h.best.index == 0
    h.add(cand(3, reward=0.0, accuracy=0.8))
    assert h.best.index == 3


def test_invalid_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        History(rank="loss")


def test_lookup_by_rounded_policy() -> None:
    h = History()
    first = h.add(cand(0, 0.5, 0.5, policy=[0.1, 0.25, 0.0]))
    assert h.lookup([0.1, 0.25, 0.0]) is first
    assert h.lookup((0.1 + 1e-9, 0.25 - 1e-9, 0.0)) is first  # float noise is ignored
    assert h.lookup([0.1, 0.25]) is None
    assert h.lookup([0.1, 0.2501, 0.0]) is None
    # a repeated policy keeps pointing at the first evaluation
    h.add(cand(1, 0.9, 0.9, policy=[0.1, 0.25, 0.0]))
    assert h.lookup([0.1, 0.25, 0.0]) is first
    assert policy_key([0.1234567891]) == (0.123457,)


def test_evaluations_exclude_cached() -> None:
    h = History()
    h.add(cand(0, 0.1, 0.1))
    h.add(cand(1, 0.2, 0.2, cached=True))
    h.add(cand(2, 0.3, 0.3, cached=False))
    h.add(cand(3, 0.4, 0.4, cached=True))
    assert len(h) == 4
    assert h.evaluations == 2


def test_jsonl_round_trip() -> None:
    h = History(rank="accuracy")
    h.add(cand(0, 0.5, 0.7, feasible=False, lambdas=[0.1, 2.0]))
    h.add(cand(1, -0.25, 0.8, policy=[0.0, 0.125, 1.0], cached=True))
    h.add(cand(2, 1.5, 0.6, nested={"a": [1, 2], "b": None}))
    h.candidates[2].cost_ratios = [math.inf]
    text = h.to_jsonl()
    assert text.count("\n") == 3
    back = History.from_jsonl(text + "\n", rank="accuracy")  # blank lines are skipped
    assert back.candidates == h.candidates
    assert back.best == h.best and back.best.index == 1
    assert back.evaluations == h.evaluations == 2
    assert back.lookup([0.0, 0.125, 1.0]) == h.candidates[1]
    assert back.rank == "accuracy"
    assert History.from_jsonl(text).best.index == 2  # re-ranked by reward


def test_candidate_dict_round_trip() -> None:
    c = cand(4, 0.3, 0.4, tag="x")
    d = c.to_dict()
    assert d["policy"] == c.policy and d["extra"] == {"tag": "x"}
    assert Candidate.from_dict(d) == c


candidate_fields = st.tuples(
    st.floats(-10, 10, allow_nan=False),
    st.floats(0, 1, allow_nan=False),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(candidate_fields, max_size=12), st.sampled_from(["reward", "accuracy"]))
def test_best_is_max_over_feasible(fields: list[tuple[float, float, bool]], rank: str) -> None:
    cands = [cand(i, r, a, f) for i, (r, a, f) in enumerate(fields)]
    h = History(cands, rank=rank)
    feasible = [c for c in cands if c.feasible]
    if not feasible:
        assert h.best is None
        return

    def key(c: Candidate) -> tuple[float, float]:
        return (c.reward, c.accuracy) if rank == "reward" else (c.accuracy, c.reward)

    best_key = max(key(c) for c in feasible)
    assert h.best is not None and h.best.feasible
    assert key(h.best) == best_key
    # the first candidate reaching the best key is the one kept
    assert h.best.index == min(c.index for c in feasible if key(c) == best_key)
