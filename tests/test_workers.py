"""Parallel search: local worker processes and Ray give the answers of one process.

The answers of a search depend on its seed and on how many candidates it proposes
together (``parallel``), never on what scores them; a worker killed mid-evaluation has
its candidate scored again and the search's record has no gap and no duplicate.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rlprune import api, data
from rlprune.costs import Budget
from rlprune.workers import LocalWorkers, WorkerError, make_workers, ray_available
from worker_costs import FragileParams, killed_pid, params_count


def _record(res: api.PruneResult) -> list[tuple[Any, ...]]:
    """What a search evaluated, in order: policy, accuracy, costs, cache flag."""
    return [(c.index, tuple(round(p, 6) for p in c.policy), c.accuracy,
             tuple(sorted(c.costs.items())), bool(c.extra.get("cached")))
            for c in res.search.history]


def _prune(model: nn.Module, digits: data.Splits, budget: Any = "params<=0.3", **kw: Any
           ) -> api.PruneResult:
    kw.setdefault("method", "cpl")
    kw.setdefault("episodes", 16)
    with torch.inference_mode(False):
        prev = torch.get_num_threads()
        torch.set_num_threads(1)  # as each worker runs: the same floating-point sums
        try:
            return api.prune(model, digits, budget, progress=False, **kw)
        finally:
            torch.set_num_threads(prev)


def _complete(res: api.PruneResult) -> None:
    """No gap and no duplicate: indices 0..n-1, one scored candidate per new policy."""
    hist = res.search.history
    assert [c.index for c in hist] == list(range(len(hist)))
    scored = [tuple(round(p, 6) for p in c.policy) for c in hist if not c.extra.get("cached")]
    assert len(scored) == len(set(scored))


def test_local_workers_give_the_answers_of_one_process(trained_digits_cnn: nn.Module,
                                                       digits: data.Splits) -> None:
    one = _prune(trained_digits_cnn, digits, parallel=3)
    two = _prune(trained_digits_cnn, digits, parallel=3, workers=2)
    assert two.search.extra["parallel"]["kind"] == "local"
    assert two.search.extra["parallel"]["workers"] == 2
    assert _record(two) == _record(one)
    np.testing.assert_array_equal(two.policy, one.policy)
    # one candidate at a time on workers is the plain sequential search
    seq = _prune(trained_digits_cnn, digits)
    assert seq.search.extra["parallel"] == {"candidates": 1, "kind": "in-process",
                                            "workers": 1}
    assert _record(_prune(trained_digits_cnn, digits, parallel=1, workers=2)) == _record(seq)
    # random search in batches, on workers and in this process
    r1 = _prune(trained_digits_cnn, digits, method="random", parallel=4)
    r2 = _prune(trained_digits_cnn, digits, method="random", parallel=4, workers=2)
    assert _record(r1) == _record(r2)
    assert r2.search.extra["spent"] == r1.search.extra["spent"]


def test_a_killed_local_worker_has_its_candidate_scored_again(
        trained_digits_cnn: nn.Module, digits: data.Splits, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")
    fragile = FragileParams(marker, os.getpid())
    budget = Budget(custom={"size": (fragile, 0.3 * params_count(trained_digits_cnn))})
    calm = Budget(custom={"size": (params_count,
                                   0.3 * params_count(trained_digits_cnn))})
    res = _prune(trained_digits_cnn, digits, budget, parallel=2, workers=2, episodes=12)
    assert killed_pid(marker) is not None  # a worker really died mid-evaluation
    assert res.search.extra["parallel"]["restarts"] >= 1
    _complete(res)
    assert _record(res) == _record(_prune(trained_digits_cnn, digits, calm, parallel=2,
                                          episodes=12))


class _Dies:
    """A scorer whose every job kills its worker."""

    def score_job(self, job: Any) -> Any:
        os._exit(3)


def test_workers_that_keep_dying_end_in_one_clear_error() -> None:
    pool = LocalWorkers(_Dies(), 1, retries=1)
    with pytest.raises(WorkerError, match="kept dying"):
        pool.map([1, 2])
    pool.close()


def test_a_search_that_does_not_pickle_is_one_clear_error(trained_digits_cnn: nn.Module,
                                                          digits: data.Splits) -> None:
    budget = Budget(custom={"size": (lambda m: params_count(m), 1e9)})
    with pytest.raises(WorkerError, match="lambdas or closures"):
        _prune(trained_digits_cnn, digits, budget, workers=2)


@pytest.mark.parametrize("kw, match", [({"workers": 0}, "workers must be"),
                                       ({"parallel": 0}, "parallel must be"),
                                       ({"threads": -1}, "threads must be"),
                                       ({"ray": " "}, "ray must be")])
def test_bad_parallel_options_are_refused_before_anything_runs(
        trained_digits_cnn: nn.Module, digits: data.Splits, kw: dict[str, Any],
        match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _prune(trained_digits_cnn, digits, **kw)


def test_methods_that_do_not_batch_warn_and_score_here(trained_digits_cnn: nn.Module,
                                                       digits: data.Splits) -> None:
    with pytest.warns(UserWarning, match="one at a time"):
        res = _prune(trained_digits_cnn, digits, method="uniform", workers=2)
    assert res.search.extra["parallel"]["kind"] == "in-process"
    assert make_workers(object(), 1) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- Ray
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A two-node Ray cluster on this machine, one CPU per node, stopped afterwards."""
    if not ray_available():
        pytest.skip("Ray is not installed (pip install 'rlprune[ray]')")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    # a cluster of its own, without the token a `ray.init()` elsewhere may have left
    quiet = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    env = dict(os.environ)
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, capture_output=True, env=env, timeout=120)
        subprocess.run([ray_bin, "start", f"--address={address}", "--num-cpus=1",
                        "--disable-usage-stats"],
                       check=True, capture_output=True, env=env, timeout=120)
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env,
                       timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_ray_cluster_gives_the_answers_of_the_local_run(
        ray_cluster: str, trained_digits_cnn: nn.Module, digits: data.Splits,
        tmp_path: Path) -> None:
    import ray
    from ray import cloudpickle

    import worker_costs

    # the test's own cost module is not installed on the cluster: it travels by value
    cloudpickle.register_pickle_by_value(worker_costs)
    local = _prune(trained_digits_cnn, digits, parallel=2, episodes=40)
    remote = _prune(trained_digits_cnn, digits, parallel=2, episodes=40, ray=ray_cluster,
                    workers=0)
    assert len(ray.nodes()) == 2
    assert remote.search.extra["parallel"]["kind"] == "ray"
    assert remote.search.extra["parallel"]["workers"] == 2  # one per CPU of the cluster
    assert _record(remote) == _record(local)
    assert remote.search.evaluations >= 30

    # compare through the cluster: every method's candidates as in the local run
    methods = ["cpl", "random", "uniform"]
    kw = {"methods": methods, "episodes": 8, "parallel": 2, "progress": False}
    with torch.inference_mode(False):
        torch.set_num_threads(1)
        try:
            here = api.compare(trained_digits_cnn, digits, "params<=0.3", **kw)
            there = api.compare(trained_digits_cnn, digits, "params<=0.3", ray=ray_cluster,
                                workers=2, **kw)
        finally:
            torch.set_num_threads(2)
    assert [_record(r) for r in there] == [_record(r) for r in here]

    # an actor killed mid-evaluation: Ray restarts it and retries its candidate
    marker = str(tmp_path / "killed")
    fragile = FragileParams(marker, os.getpid())
    limit = 0.3 * params_count(trained_digits_cnn)
    res = _prune(trained_digits_cnn, digits, Budget(custom={"size": (fragile, limit)}),
                 parallel=2, episodes=12, ray=ray_cluster, workers=2)
    assert killed_pid(marker) is not None
    _complete(res)
    calm = _prune(trained_digits_cnn, digits,
                  Budget(custom={"size": (params_count, limit)}), parallel=2, episodes=12)
    assert _record(res) == _record(calm)


def test_a_run_on_the_whole_cluster_stores_how_many_candidates_it_proposed(
        ray_cluster: str, trained_digits_cnn: nn.Module, tmp_path: Path) -> None:
    from rlprune import pipeline, train

    ckpt = tmp_path / "model.pt"
    train.save_checkpoint(ckpt, trained_digits_cnn, {"dataset": "digits"})
    cfg = pipeline.RunConfig(checkpoint=str(ckpt), data="digits", budget="params<=0.3",
                             method="random", episodes=6, ray=ray_cluster, workers=0,
                             out=str(tmp_path / "run"), onnx=False, plots=False, quiet=True)
    res = pipeline.run_prune(cfg)
    # --workers 0: one actor per CPU of the two one-CPU nodes, and K stored with the run
    assert res.search.extra["parallel"]["workers"] == 2
    assert pipeline.load_config(tmp_path / "run" / "config.yaml")["parallel"] == 2


def test_no_ray_cluster_is_one_clear_error(trained_digits_cnn: nn.Module,
                                           digits: data.Splits) -> None:
    if not ray_available():
        pytest.skip("Ray is not installed")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(WorkerError, match="cannot join the Ray cluster"):
        _prune(trained_digits_cnn, digits, ray=f"127.0.0.1:{_free_port()}", workers=1)


def test_a_run_on_workers_resumes_on_other_workers_with_the_same_answers(
        trained_digits_cnn: nn.Module, digits: data.Splits, tmp_path: Path) -> None:
    import json

    from rlprune import cli, pipeline, train

    ckpt = tmp_path / "model.pt"
    train.save_checkpoint(ckpt, trained_digits_cnn, {"dataset": "digits"})

    def config(out: Path) -> pipeline.RunConfig:
        return pipeline.RunConfig(checkpoint=str(ckpt), data="digits", budget="params<=0.3",
                                  method="cpl", episodes=16, workers=2, out=str(out),
                                  onnx=False, plots=False, quiet=True)

    def log(run: Path) -> list[dict[str, Any]]:
        lines = (run / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]

    pipeline.run_prune(config(tmp_path / "whole"))
    stored = pipeline.load_config(tmp_path / "whole" / "config.yaml")
    assert stored["parallel"] == 2  # K is stored with the run

    # the same run, cut after 6 candidates and resumed in one process
    part = tmp_path / "part"
    pipeline.run_prune(config(part))
    lines = (part / "log.jsonl").read_text().splitlines(keepends=True)
    (part / "log.jsonl").write_text("".join(lines[:6]))
    (part / "report.json").unlink()
    with torch.inference_mode(False):
        rc = cli.main(["prune", "--resume", str(part), "--workers", "1", "--quiet"])
    assert rc == 0
    assert log(part) == log(tmp_path / "whole")
    assert json.loads((part / "report.json").read_text())["search"]["candidates"] == len(
        log(part))


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], ["workers must be >= 1"]),
    (["--parallel", "0"], ["parallel must be >= 1"]),
    (["--ray", "127.0.0.1:{port}"], ["cannot join the Ray cluster", "ray start --head"]),
    (["--ray", "nowhere"], ["not auto, local or host:port"]),
])
def test_bad_parallel_flags_are_one_line_before_anything_loads(
        tmp_path: Path, args: list[str], words: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import io

    from rlprune import cli, pipeline

    if "--ray" in args and not ray_available():
        pytest.skip("Ray is not installed")

    def never(*a: Any, **k: Any) -> Any:
        raise AssertionError("data or model loaded before the flags were checked")

    monkeypatch.setattr(pipeline, "_load_inputs", never)
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    argv = ["prune", "--data", "digits", "--model", "digits_cnn", "--budget", "params<=0.3",
            *[a.replace("{port}", str(_free_port())) for a in args],
            "--out", str(tmp_path / "run"), "--quiet"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    assert rc == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "run").exists()
