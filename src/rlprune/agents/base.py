"""What every search method shares: the result type and the method registry.

A method is a class with ``search(env, budget) -> SearchResult``. The environment
records every evaluated candidate in ``env.history``; :func:`finish` turns that
history into a :class:`SearchResult` whose policy is made feasible by projection,
so that whatever an agent did, the returned policy meets every hard constraint.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rlprune.history import Candidate, History

if TYPE_CHECKING:
    from rlprune.costs import Budget
    from rlprune.env import PruningEnv

__all__ = ["SearchResult", "Searcher", "register_method", "get_method", "list_methods", "finish",
           "check_methods", "make_config"]


@dataclass
class SearchResult:
    """The outcome of one search.

    ``policy`` is the returned per-layer prune ratios (feasible: projected if the best
    candidate was not); ``best`` is the best feasible candidate the search evaluated
    (``None`` if it found none and the policy comes from projection alone).
    """

    method: str
    policy: np.ndarray
    best: Candidate | None
    history: History
    evaluations: int
    wall_time: float
    best_found_at: int | None
    extra: dict[str, Any] = field(default_factory=dict)


class Searcher(Protocol):
    """The common interface of every method."""

    name: str

    def search(self, env: PruningEnv, budget: Budget) -> SearchResult: ...


_METHODS: dict[str, Callable[..., Searcher]] = {}


def register_method(name: str) -> Callable[[Callable[..., Searcher]], Callable[..., Searcher]]:
    """Decorator registering a method class (or factory) under ``name``."""

    def deco(cls: Callable[..., Searcher]) -> Callable[..., Searcher]:
        _METHODS[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Registered method names."""
    import rlprune.agents  # noqa: F401  (importing the package registers every method)

    return sorted(_METHODS)


def check_methods(methods: Sequence[str]) -> None:
    """Raise ``ValueError`` naming unknown methods (or an empty list) and the known ones."""
    known = list_methods()
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, bad))}; known methods: "
                         f"{', '.join(known)}")
    if not methods:
        raise ValueError(f"no method given; known methods: {', '.join(known)}")


def make_config(cls: type[Any], config: Any, overrides: dict[str, Any], method: str) -> Any:
    """A method's config dataclass: ``config`` (or the defaults) with keyword overrides.

    Unknown option names are an error listing the accepted ones.
    """
    base = copy.deepcopy(config) if config is not None else cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown {method} option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
        )
    return replace(base, **overrides) if overrides else base


def get_method(name: str, **kwargs: Any) -> Searcher:
    """Instantiate a registered method; unknown names list the known ones."""
    import rlprune.agents  # noqa: F401

    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name](**kwargs)


def finish(method: str, env: PruningEnv, start_time: float, **extra: Any) -> SearchResult:
    """Build the result from ``env.history``: best feasible policy, projected to be safe.

    If no feasible candidate was seen, the best-reward candidate (or all-zero policy)
    is projected onto the budget; ``project`` raises a clear error if the budget
    cannot be met at all.
    """
    hist = env.history
    if hist.best is not None:
        start = np.asarray(hist.best.policy, dtype=np.float64)
    elif len(hist):
        start = np.asarray(max(hist, key=lambda c: c.reward).policy, dtype=np.float64)
    else:
        start = np.zeros(len(env.space), dtype=np.float64)
    policy = env.project(start)
    return SearchResult(
        method=method,
        policy=policy,
        best=hist.best,
        history=hist,
        evaluations=hist.evaluations,
        wall_time=time.perf_counter() - start_time,
        best_found_at=hist.best_found_at,
        extra=dict(extra),
    )
