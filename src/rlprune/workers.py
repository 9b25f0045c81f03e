"""Where candidates are scored: in this process, in local worker processes, or on Ray.

A search's candidate evaluations are independent of each other: each builds a pruned
copy, re-estimates its BatchNorm statistics, scores the reward split and measures the
costs. A :class:`Workers` pool runs a batch of them at once and hands the answers back
**in the order they were asked**, whichever worker finished first, so a search's result
depends on its seed and on how many candidates it proposes together
(``Evaluator.parallel``), never on the pool.

* :class:`LocalWorkers` (``workers=N``): ``N`` processes on this machine, started once
  per search (``spawn``, as CUDA and OpenMP need), each holding one copy of the scorer
  and running ``threads`` torch threads. The scorer is sent through
  ``torch.multiprocessing``, so its tensors (the model, the data splits) are moved to
  shared memory once and mapped by every worker instead of being copied ``N`` times.
* :class:`RayWorkers` (``ray="auto"``, ``"local"`` or an address): the same work as
  Ray actors on a cluster, one GPU share each where the cluster has GPUs. Ray is an
  optional extra (``pip install rlprune[ray]``). The scorer travels with Ray's
  cloudpickle, so costs given as lambdas work there; a cost or model defined in a
  module of your own must be importable on the cluster's nodes (install it there, or
  give ``ray.init`` a ``runtime_env`` before the search).

Faults: a local worker that dies mid-evaluation (killed, out of memory) breaks the
process pool; the pool is started again and the candidates that had no answer are
scored again, up to ``retries`` times. On Ray, a dead actor is restarted by Ray and
its task retried there (``max_restarts``/``max_task_retries``). Either way the batch
completes with exactly one answer per candidate, in order.

A scorer is any picklable object with a ``score_job(job)`` method (the
:class:`~rlprune.evaluate.Evaluator` prepares one with ``for_workers()``); this module
knows nothing else about it.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import torch

__all__ = ["Workers", "LocalWorkers", "RayWorkers", "Scorer", "WorkerError",
           "make_workers", "ray_available", "check_ray", "ray_cluster_workers"]


class Scorer(Protocol):
    """What a pool runs: ``score_job(job)`` answers one job (any picklable values)."""

    def score_job(self, job: Any) -> Any:
        """The answer to ``job``."""


class WorkerError(OSError):
    """Workers could not start or finish a batch: they kept dying, the search does not
    pickle, Ray is missing or its cluster cannot be joined. An ``OSError``, like a path
    that cannot be written: the machine or the cluster could not do the work, and the
    command line reports it in one line."""


class Workers:
    """A pool that answers a batch of jobs in order (base class; see the module docs).

    ``n`` is the number of workers. :meth:`map` answers ``jobs`` in their order;
    :meth:`close` stops the workers (a pool is also a context manager).
    """

    n: int = 1
    kind: str = "local"
    #: Seconds :meth:`map` has waited for answers (the rest of a search is the main
    #: process's own work: the agent, planning, bookkeeping).
    waited_s: float = 0.0

    def map(self, jobs: Sequence[Any]) -> list[Any]:  # pragma: no cover - abstract
        """The answers to ``jobs``, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers."""

    def describe(self) -> dict[str, Any]:
        """What the pool is, for the run's report: kind, workers, threads, seconds the
        search waited for its answers."""
        return {"kind": self.kind, "workers": self.n, "waited_s": round(self.waited_s, 3)}

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_threads(n: int) -> int:
    """Torch threads per worker when none are given: this machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(n, 1))


# ---------------------------------------------------------------- local processes
_SCORER: Any = None  # the scorer of this worker process (set by _init)


def _init(scorer: Any, threads: int) -> None:
    global _SCORER
    torch.set_num_threads(threads)
    _SCORER = scorer


def _run(job: Any) -> Any:
    return _SCORER.score_job(job)


def _pid(wait: float) -> int:
    time.sleep(wait)  # long enough that every worker takes one of a round of these
    return os.getpid()


class LocalWorkers(Workers):
    """``n`` worker processes on this machine, each with ``threads`` torch threads.

    ``scorer`` is sent once to every worker (its tensors through shared memory).
    ``retries`` is how many times a batch may restart the pool after a worker died.
    """

    kind = "local"

    def __init__(self, scorer: Scorer, n: int, threads: int | None = None,
                 retries: int = 3):
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.n = int(n)
        self.threads = int(threads) if threads is not None else default_threads(self.n)
        self.retries = int(retries)
        self._scorer = scorer
        self._ctx = torch.multiprocessing.get_context("spawn")
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0
        try:  # start every worker now: its start-up is not a search's time
            self.pids()
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            # the scorer is pickled as each worker starts: a lambda cost, an open file...
            self.close()
            raise WorkerError(
                f"the search cannot be sent to worker processes: {e}. Costs and models "
                "given as lambdas or closures do not pickle; define them at module level, "
                "or run with workers=1") from None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.n, mp_context=self._ctx, initializer=_init,
                                             initargs=(self._scorer, self.threads))
        return self._pool

    def pids(self) -> list[int]:
        """The worker processes' ids (starting them if need be)."""
        pool = self._executor()
        pids: set[int] = set()
        for _ in range(3):
            pids |= {f.result() for f in [pool.submit(_pid, 0.2) for _ in range(self.n)]}
            if len(pids) >= self.n:
                break
        return sorted(pids)

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        """The answers to ``jobs`` in order; a dead worker's jobs are scored again."""
        t0 = time.perf_counter()
        try:
            return self._map(jobs)
        finally:
            self.waited_s += time.perf_counter() - t0

    def _map(self, jobs: Sequence[Any]) -> list[Any]:
        answers: dict[int, Any] = {}
        todo = list(range(len(jobs)))
        attempt = 0
        while todo:
            pool = self._executor()
            futures: list[tuple[int, Future[Any]]] = []
            try:
                futures = [(i, pool.submit(_run, jobs[i])) for i in todo]
            except BrokenProcessPool:
                pass  # a worker died between batches: restart below
            failed: list[int] = [i for i in todo if i not in dict(futures)]
            for i, fut in futures:
                try:
                    answers[i] = fut.result()
                except BrokenProcessPool:
                    failed.append(i)
            todo = sorted(failed)
            if todo:
                attempt += 1
                self._restart()
                if attempt > self.retries:
                    raise WorkerError(
                        f"worker processes kept dying ({attempt} restarts) while scoring "
                        f"{len(todo)} candidate(s): out of memory? Run with fewer workers")
        return [answers[i] for i in range(len(jobs))]

    def _restart(self) -> None:
        self.restarts += 1
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        """Stop the worker processes (waiting for them to exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        """Kind, workers, threads per worker, pool restarts and seconds waited."""
        return {"kind": self.kind, "workers": self.n, "threads": self.threads,
                "restarts": self.restarts, "waited_s": round(self.waited_s, 3)}


# ---------------------------------------------------------------------------- Ray
def ray_available() -> bool:
    """Whether Ray is installed (``pip install rlprune[ray]``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WorkerError("Ray is not installed: pip install 'rlprune[ray]' (or run with "
                          "local workers, --workers N)") from None
    return ray


def check_ray(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when Ray is not installed or nothing listens at a
    ``host:port`` ``address`` (``ray.init`` keeps retrying an unreachable cluster for a
    long time); ``timeout`` is the seconds a connection may take. A run checks this
    before it loads anything."""
    _ray()
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise WorkerError(f"--ray {address!r} is not auto, local or host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise WorkerError(f"cannot join the Ray cluster at {address!r}: {e.strerror or e}. "
                          "Start one with `ray start --head`, or use --ray local") from None


class _Actor:
    """One Ray actor: a scorer unpickled once, its torch threads set."""

    def __init__(self, blob: bytes, threads: int):
        torch.set_num_threads(threads)
        self.scorer = pickle.loads(blob)

    def score_job(self, job: Any) -> Any:
        return self.scorer.score_job(job)

    def pid(self) -> int:
        return os.getpid()


def _join(address: str) -> bool:
    """Join (or, for ``"local"``, start) the Ray cluster at ``address`` unless this
    process already has; whether this call started a Ray instance of its own."""
    ray = _ray()
    if ray.is_initialized():
        return False
    check_ray(address)
    try:
        if address == "local":
            ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
            return True
        ray.init(address=address, configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WorkerError(f"cannot join the Ray cluster at {address!r}: {first}. Start "
                          "one with `ray start --head`, or use --ray local") from None
    return False


def ray_cluster_workers(address: str, threads: int = 1) -> int:
    """How many actors ``--workers 0`` means on the Ray cluster at ``address`` (joined
    if need be): one per GPU if it has GPUs, else one per ``threads`` CPUs."""
    _join(address)
    res = _ray().cluster_resources()
    gpus = float(res.get("GPU", 0.0))
    cpus = float(res.get("CPU", 1.0))
    return int(gpus) if gpus >= 1 else max(1, int(cpus // max(threads, 1)))


class RayWorkers(Workers):
    """``n`` Ray actors on the cluster at ``address``, each holding ``scorer`` (see the
    module docstring).

    ``address``: ``"auto"`` joins the cluster this machine belongs to (``ray start``),
    ``"local"`` starts a Ray instance in this process, anything else is a cluster
    address (``host:port`` or ``ray://host:port``). ``n`` defaults to the cluster's GPUs
    if it has any, else its CPUs; each actor asks for ``threads`` CPUs and, on a cluster
    with GPUs, an equal share of them. ``retries`` is Ray's ``max_task_retries``.
    """

    kind = "ray"

    def __init__(self, scorer: Scorer, address: str = "auto", n: int | None = None,
                 threads: int = 1, retries: int = 3):
        ray = _ray()
        self._ray = ray
        self.retries = int(retries)
        self._own = _join(address)
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if n is None:
            n = ray_cluster_workers(address, threads)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.n = int(n)
        self.threads = int(threads)
        self.gpus_per_worker = gpus / self.n if gpus > 0 else 0.0
        try:  # Ray's cloudpickle: lambdas and closures travel by value
            blob = ray.put(ray.cloudpickle.dumps(scorer))
        except Exception as e:
            raise WorkerError(f"the search cannot be sent to Ray workers: {e}") from None
        self._blob = blob  # kept alive: Ray rebuilds a restarted actor from it
        actor_cls = ray.remote(num_cpus=self.threads, num_gpus=self.gpus_per_worker,
                               max_restarts=-1, max_task_retries=retries)(_Actor)
        self._actors = [actor_cls.remote(blob, self.threads) for _ in range(self.n)]
        self.pids()  # wait for every actor: its start-up is not a search's time

    def pids(self) -> list[int]:
        """The actors' process ids."""
        return list(self._ray.get([a.pid.remote() for a in self._actors]))

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        """The answers to ``jobs`` in order (job ``i`` runs on actor ``i mod n``)."""
        t0 = time.perf_counter()
        refs = [self._actors[i % self.n].score_job.remote(job) for i, job in enumerate(jobs)]
        try:
            return list(self._ray.get(refs))
        except self._ray.exceptions.RayError as e:
            raise WorkerError(f"Ray could not finish the batch: {e}") from None
        finally:
            self.waited_s += time.perf_counter() - t0

    @property
    def has_gpus(self) -> bool:
        """Whether the cluster has GPUs (then :meth:`call` runs its task on one)."""
        return bool(self._ray.cluster_resources().get("GPU", 0.0) >= 1)

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` as one Ray task on the cluster, on one GPU when it has GPUs
        (the actors are released first, so their GPUs are free), retried like the
        actors' tasks if its process dies. ``fn`` must be importable on the nodes."""
        self.release()
        task = self._ray.remote(num_cpus=self.threads, num_gpus=1 if self.has_gpus else 0,
                                max_retries=self.retries)(fn)
        try:
            return self._ray.get(task.remote(*args))
        except self._ray.exceptions.RayError as e:
            raise WorkerError(f"Ray could not run {getattr(fn, '__name__', fn)}: {e}") from None

    def release(self) -> None:
        """Stop the actors (their CPUs and GPUs are free again); Ray stays joined."""
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []

    def close(self) -> None:
        """Stop the actors, and the Ray instance if this pool started it (``local``)."""
        self.release()
        if self._own:
            self._ray.shutdown()

    def describe(self) -> dict[str, Any]:
        """Kind, actors, CPUs and GPU share per actor, and seconds waited."""
        return {"kind": self.kind, "workers": self.n, "threads": self.threads,
                "gpus_per_worker": self.gpus_per_worker, "waited_s": round(self.waited_s, 3)}


def make_workers(scorer: Scorer, workers: int = 1, ray: str | None = None,
                 threads: int | None = None) -> Workers | None:
    """The pool a run asked for, holding ``scorer`` (a copy per worker): ``None`` (score
    in this process) for one local worker,
    :class:`LocalWorkers` for ``workers > 1``, :class:`RayWorkers` when ``ray`` is an
    address (``workers`` then counts actors; ``0`` takes the cluster's GPUs or CPUs).
    ``threads`` are torch threads per worker (default: local cores shared out; 1 on Ray).
    """
    if ray:
        return RayWorkers(scorer, ray, n=workers if workers > 0 else None,
                          threads=threads if threads is not None else 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 without Ray, got {workers}")
    if workers == 1:
        return None
    return LocalWorkers(scorer, workers, threads)
