"""What every search method shares: one base class, one callback type, one result.

A method subclasses :class:`Searcher` (as Stable-Baselines3's algorithms subclass
one base) and writes two things: :meth:`Searcher._run`, its search loop, which calls
:meth:`Searcher._episode_end` after every episode, and optionally
:meth:`Searcher.configure`, its budget-aware defaults. The base owns the rest:

* the episode budget, the seed and the progress bar;
* the per-episode curves, when the best candidate was first found, and the calls of
  every :class:`Callback`;
* Ctrl-C: a ``KeyboardInterrupt`` ends the search and keeps what was evaluated
  (``extra["interrupted"] = True``);
* the result: the best feasible candidate of the env's history, projected onto the
  budget so that whatever a method did, the returned policy meets every hard
  constraint, then (``refine=True``) :func:`refine`, which spends budget it left unused.

The env records every evaluated candidate through its
:class:`~rlprune.evaluate.Evaluator` (``env.evaluator``); an env without one (a test
double) provides ``history``, ``project`` and ``cost_ratios`` itself.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from rlprune.history import Candidate, History
from rlprune.progress import progress_bar
from rlprune.projection import bisect_boundary

if TYPE_CHECKING:
    from rlprune.env import PruningEnv

__all__ = ["SearchResult", "Searcher", "Callback", "register_method", "get_method",
           "method_class", "list_methods", "check_methods", "make_config", "refine",
           "preserve_global_rng"]


@dataclass
class SearchResult:
    """The outcome of one search.

    ``method`` is the method's id. ``policy`` is the returned per-layer prune ratios
    (feasible: projected if the best candidate was not); ``best`` is the best feasible
    candidate the search evaluated (``None`` if it found none and the policy comes from
    projection alone). ``history`` holds every candidate evaluated, ``evaluations``
    counts those actually scored (cache hits excluded), ``wall_time`` is the search's
    seconds and ``best_found_at`` the 1-based evaluation at which the best candidate
    was first seen. ``extra`` carries method-specific results (curves, the method's
    config, what the evaluations cost under ``"spent"``).
    """

    method: str
    policy: np.ndarray
    best: Candidate | None
    history: History
    evaluations: int
    wall_time: float
    best_found_at: int | None
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """The one callback type of every method; override the hooks you need.

    ``on_episode(searcher, info)`` runs after every episode (and once more after
    :func:`refine` adds a candidate, with ``info["refine"] = True``). ``info`` always
    has ``episode`` (0-based), ``candidate`` (the episode's
    :class:`~rlprune.history.Candidate`), ``best`` (the best feasible one so far) and
    ``return``; methods add their own entries (cpl: ``multipliers``, ``costs``,
    ``timesteps``; amc: ``sigma``, ``baseline``; the SB3 methods: ``step_rewards``).
    A plain function ``f(searcher, info)`` may be given wherever a callback is
    accepted: it is used as ``on_episode``.
    """

    def on_search_start(self, searcher: Searcher, env: Any) -> None:
        """Before the first episode of ``searcher`` on ``env``."""

    def on_episode(self, searcher: Searcher, info: dict[str, Any]) -> None:
        """After every episode of ``searcher``; ``info`` as in the class docstring."""

    def on_search_end(self, searcher: Searcher, result: SearchResult) -> None:
        """After ``searcher`` has built its ``result``."""


EpisodeFn = Callable[[Any, dict[str, Any]], None]


class _FunctionCallback(Callback):
    def __init__(self, fn: EpisodeFn):
        self.fn = fn

    def on_episode(self, searcher: Searcher, info: dict[str, Any]) -> None:
        self.fn(searcher, info)


def _callbacks(callback: Callback | EpisodeFn | Sequence[Callback | EpisodeFn] | None
               ) -> list[Callback]:
    if callback is None:
        return []
    items = list(callback) if isinstance(callback, (list, tuple)) else [callback]
    out: list[Callback] = []
    for c in items:
        if isinstance(c, Callback):
            out.append(c)
        elif callable(c):
            out.append(_FunctionCallback(c))
        else:
            raise TypeError(f"a callback must be a Callback or a function (searcher, info), "
                            f"got {type(c).__name__}")
    return out


@contextlib.contextmanager
def preserve_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random state on exit.

    Stable-Baselines3 seeds the global generators when a model is built; wrapping it in
    this keeps the promise that a search does not change the caller's random state.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _evaluator(env: Any) -> Any:
    """The object that scores, records and projects for ``env``."""
    return getattr(getattr(env, "unwrapped", env), "evaluator", env)


class Searcher(ABC):
    """Base of every search method (see the module docstring).

    ``episodes`` is the search length (one episode = one candidate evaluation; ``None``
    takes the method's ``default_episodes``), ``seed`` makes the search reproducible
    without touching global random state, ``progress`` shows a bar, ``callback`` is a
    :class:`Callback`, a function ``f(searcher, info)`` or a list of them, and
    ``refine`` lets :func:`refine` spend budget the chosen policy left unused.
    """

    #: The method id (``rlprune.prune(method=...)``).
    name: ClassVar[str] = ""
    #: How the method wants the shared env built (e.g. purl: discrete, dense reward).
    env_options: ClassVar[dict[str, Any]] = {}
    #: Episodes when none are given.
    default_episodes: ClassVar[int] = 100
    #: Whether the method's effort is a number of candidate evaluations (a search).
    searching: ClassVar[bool] = True
    #: Whether the method proposes candidates in batches (``Evaluator.parallel`` at a
    #: time, scored together on the evaluator's workers). ``amc`` and ``purl`` do not:
    #: their learners update after every episode, so each candidate depends on the score
    #: of the one before (docs/METHODS.md, "Parallel search").
    batches: ClassVar[bool] = False

    def __init__(self, episodes: int | None = None, seed: int = 0, progress: bool = True,
                 callback: Callback | EpisodeFn | Sequence[Callback | EpisodeFn] | None = None,
                 refine: bool = False):
        episodes = self.default_episodes if episodes is None else episodes
        if int(episodes) < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes!r}")
        self.episodes = int(episodes)
        self.seed = int(seed)
        self.progress = progress
        self.callbacks = _callbacks(callback)
        self.refine = bool(refine)
        self.episode = 0
        self.curves: dict[str, list[float]] = {}
        self._start = 0.0
        self._bar: Any = None
        self._best_seen: Candidate | None = None
        self._best_time: float | None = None
        self._best_episode: int | None = None

    # ------------------------------------------------------------ method hooks
    def configure(self, env: Any) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Set defaults that depend on the env's budget (override; called by search)."""

    @abstractmethod
    def _run(self, env: Any) -> None:
        """The search loop; call :meth:`_episode_end` after every episode."""

    def _result_extra(self, env: Any) -> dict[str, Any]:
        """Method-specific entries of ``SearchResult.extra`` (override)."""
        return {}

    def _total_episodes(self, env: Any) -> int:
        """Episodes this search will run (the progress bar's total)."""
        return self.episodes

    # -------------------------------------------------------------- the search
    def search(self, env: PruningEnv | Any) -> SearchResult:
        """Run the method on ``env``; return the best feasible policy it evaluated."""
        self._start = time.perf_counter()
        self.configure(env)
        names = list(getattr(env, "constraint_names", []))
        self.curves = {"episode": [], "return": [], "accuracy": [], "feasible": []}
        for n in names:
            self.curves[f"cost/{n}"] = []
        history = _evaluator(env).history
        self._best_seen, self._best_time, self._best_episode = history.best, None, None
        for cb in self.callbacks:
            cb.on_search_start(self, env)
        self._bar = progress_bar(total=self._total_episodes(env), initial=0, desc=self.name,
                                 unit="ep", disable=not self.progress)
        interrupted = False
        try:
            self._run(env)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._bar.close()
        result = self._finish(env, names, interrupted)
        for cb in self.callbacks:
            cb.on_search_end(self, result)
        return result

    def _episode_end(self, env: Any, ret: float, postfix: str = "",
                     curves: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
        """Record one finished episode: curves, best-so-far, progress bar, callbacks.

        ``ret`` is the episode's return; ``curves`` are method-specific values recorded
        per episode (``extra["curves"]`` of the result); ``extra`` entries go to the
        callbacks' ``info`` with the curves' values; ``postfix`` ends the bar's text.
        """
        history = _evaluator(env).history
        cand = history.candidates[-1] if len(history) else None
        best = history.best
        if best is not None and best is not self._best_seen:
            self._best_seen = best
            self._best_time = time.perf_counter() - self._start
            self._best_episode = self.episode
        self.curves["episode"].append(float(self.episode))
        self.curves["return"].append(float(ret))
        self.curves["accuracy"].append(float("nan") if cand is None else float(cand.accuracy))
        self.curves["feasible"].append(float(cand is not None and cand.feasible))
        for n, r in zip(getattr(env, "constraint_names", []),
                        [] if cand is None else cand.cost_ratios):
            self.curves[f"cost/{n}"].append(float(r))
        for k, v in (curves or {}).items():
            self.curves.setdefault(k, []).append(float(v))
        info = {"episode": self.episode, "candidate": cand, "best": best, "return": float(ret),
                **(curves or {}), **extra}
        self.episode += 1
        bar = self._bar
        if bar is not None:
            if not bar.disable:
                best_s = "-" if best is None else f"{best.reward:.4f}"
                costs = "" if cand is None else ", ".join(f"{r:.3f}" for r in cand.cost_ratios)
                bar.set_postfix_str(f"best={best_s} cost=[{costs}]{postfix}", refresh=False)
            bar.update(1)
        for cb in self.callbacks:
            cb.on_episode(self, info)
        return info

    def _finish(self, env: Any, names: list[str], interrupted: bool) -> SearchResult:
        ev = _evaluator(env)
        hist: History = ev.history
        if hist.best is not None:
            start = np.asarray(hist.best.policy, dtype=np.float64)
        elif len(hist):
            start = np.asarray(max(hist, key=lambda c: c.reward).policy, dtype=np.float64)
        else:
            start = np.zeros(len(env.space), dtype=np.float64)
        policy = np.asarray(ev.project(start), dtype=np.float64)
        if self.refine:
            n0 = len(hist)
            policy = refine(ev, policy, episode=self.episode)
            if len(hist) > n0:
                info = {"episode": self.episode, "candidate": hist.candidates[-1],
                        "best": hist.best, "return": float("nan"), "refine": True}
                for cb in self.callbacks:
                    cb.on_episode(self, info)
        best = hist.best
        extra: dict[str, Any] = {
            "curves": {k: list(v) for k, v in self.curves.items()},
            "constraint_names": names,
            "episodes": self.episode,
            "interrupted": interrupted,
            "best_found_at_evaluation": hist.best_found_at,
            "best_found_episode": self._best_episode,
            "best_found_time_s": self._best_time,
            "best_candidate_time_s": None if best is None else float(best.time),
        }
        spent = getattr(ev, "spent", None)
        if spent is not None:  # what the evaluations cost: models built, samples scored
            extra["spent"] = dict(spent)
        config = getattr(self, "config", None)
        if is_dataclass(config) and not isinstance(config, type):  # an instance, not a class
            extra["config"] = asdict(config)
        extra.update(self._result_extra(env))
        return SearchResult(method=self.name, policy=policy, best=best, history=hist,
                            evaluations=hist.evaluations,
                            wall_time=time.perf_counter() - self._start,
                            best_found_at=hist.best_found_at, extra=extra)


def refine(evaluator: Any, policy: np.ndarray, iterations: int = 12,
           episode: int = 0) -> np.ndarray:
    """Spend budget the chosen policy left unused, if that scores better.

    Searches often end on a policy that is comfortably inside the budget. This scales
    every prune ratio down by one factor ``s`` in [0, 1], bisected to the smallest ``s``
    that is still feasible (measured), scores that policy on the reward split, and
    returns it when it ranks above the original choice. At most two evaluations are
    added to the history (the original is scored too if the search never did).
    Skipped for budgets with noisy costs (latency), whose boundary is not reliable.
    ``evaluator`` scores and records the candidates (an env's
    :class:`~rlprune.evaluate.Evaluator`), ``iterations`` bisection steps are measured
    and ``episode`` is recorded on the candidates it adds.
    """
    p = np.asarray(policy, dtype=np.float64)
    if evaluator.bound.noisy or not p.any():
        return p

    def ok(s: float) -> bool:
        return bool(np.all(evaluator.cost_ratios(p * s) <= 1.0))

    hi = 0.0 if ok(0.0) else bisect_boundary(ok, iterations)
    if hi > 0.995:
        return p
    history = evaluator.history
    base = history.lookup(p) or evaluator.evaluate(p, episode=episode)
    cand = evaluator.evaluate(p * hi, episode=episode)
    cand.extra["refined_from"] = base.index
    if cand.feasible and history.key(cand) > history.key(base):
        return np.asarray(cand.policy, dtype=np.float64)
    return p


# ------------------------------------------------------------------ registry
_METHODS: dict[str, type[Searcher]] = {}


def register_method(name: str) -> Callable[[type[Searcher]], type[Searcher]]:
    """Class decorator registering a :class:`Searcher` subclass under ``name``."""

    def deco(cls: type[Searcher]) -> type[Searcher]:
        cls.name = name
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


def method_class(name: str) -> type[Searcher]:
    """The class registered as ``name``; unknown names list the known ones."""
    check_methods([name])
    return _METHODS[name]


def get_method(name: str, **kwargs: Any) -> Searcher:
    """Instantiate a registered method with keyword arguments.

    ``name`` is a registered method id (``cpl``, ``purl``, ...) and ``kwargs`` go to its
    constructor. Every method rejects options it does not know with a ``ValueError`` naming them
    and the accepted ones (the RL methods' config fields are accepted as keywords).
    """
    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = sorted(n for n in params if n != "self")
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"unknown {name} option(s) {', '.join(unknown)}; accepted: "
                             f"{', '.join(known)}")
    return cls(**kwargs)


def make_config(cls: type[Any], config: Any, overrides: dict[str, Any], method: str) -> Any:
    """A method's config dataclass: ``config`` (or the defaults) with keyword overrides.

    ``cls`` is the config dataclass, ``config`` an instance of it or ``None``,
    ``overrides`` field values to replace and ``method`` the method's id, for errors.
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
