"""The product as a user runs it: ``rlprune prune`` / ``compare`` / ``demo``, config files,
clear errors, and resuming a run killed with ``kill -9``.

Every run uses ``digits_cnn`` pretrained 5 epochs on the bundled digits, cached once per
session in a temporary ``RLPRUNE_CACHE``. Runs go through ``rlprune.cli.main`` in-process
(fast) except where a separate process is the point: loading ``pruned.pt`` in a fresh
interpreter, killing a run, the real stderr of an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import rlprune
from rlprune import cli, data, pipeline, train
from rlprune.costs import Budget
from rlprune.evaluate import Evaluator

CLI = [sys.executable, "-m", "rlprune.cli"]
MODEL = ["--model", "digits_cnn", "--data", "digits", "--pretrain-epochs", "5"]
BUDGET = "params<=0.4"
PNG = b"\x89PNG\r\n\x1a\n"
# refine() may add up to two evaluations after the search (the chosen policy, scaled up)
MAX_AFTER_SEARCH = 2


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrain cache holding digits_cnn (5 epochs, seed 0) on digits."""
    cache = tmp_path_factory.mktemp("rlprune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLPRUNE_CACHE", str(cache))
        pipeline.pretrained("digits_cnn", data.load("digits"), 5, seed=0, progress=False)
    assert (cache / "digits_cnn_digits_e5_s0.pt").is_file()
    return cache


@pytest.fixture
def cache_env(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process runs use the session cache; user errors are not re-raised."""
    monkeypatch.setenv("RLPRUNE_CACHE", str(model_cache))
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    return model_cache


def sub_env(cache: Path) -> dict[str, str]:
    """Environment of a subprocess run: the cache, one intra-op thread (2 shared cores)."""
    env = dict(os.environ, RLPRUNE_CACHE=str(cache), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RLPRUNE_DEBUG", None)
    return env


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``rlprune.cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every line of a log.jsonl, parsed (a line that does not parse fails the test)."""
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]


def check_log(log: list[dict[str, Any]], episodes: int) -> None:
    """``episodes`` search candidates indexed 0..episodes-1, then at most the refine ones."""
    assert [c["index"] for c in log] == list(range(len(log)))
    search = [c for c in log if c["episode"] < episodes]
    assert len(search) == episodes
    assert [c["episode"] for c in search] == list(range(episodes))
    assert log[:episodes] == search
    assert len(log) - episodes <= MAX_AFTER_SEARCH
    assert all(c["episode"] == episodes for c in log[episodes:])


def check_costs_ok(report: dict[str, Any], limit: float = 0.4) -> None:
    assert report["feasible"] is True
    assert report["costs"], "report.json has no costs"
    assert all(c["ok"] is True for c in report["costs"].values()), report["costs"]
    params = report["costs"]["params"]
    assert params["ratio"] <= limit
    assert params["pruned"] <= params["limit"]
    assert params["pruned"] == pytest.approx(params["ratio"] * params["original"])


def one_error_line(rc: int, err: str) -> str:
    """The check of every user error: exit 2 and one ``rlprune: error:`` line, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rlprune: error:")
    return lines[0]


# ------------------------------------------------------------------ 1. rlprune prune
PRUNE_ARGS = ["prune", *MODEL, "--budget", BUDGET, "--method", "cpl", "--episodes", "30",
              "--finetune-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def prune_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The acceptance run: cpl, 30 episodes, 1 fine-tune epoch, ONNX and plots."""
    run = tmp_path_factory.mktemp("prune") / "run"
    argv = [*PRUNE_ARGS, "--out", str(run)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLPRUNE_CACHE", str(model_cache))
        mp.delenv("RLPRUNE_DEBUG", raising=False)
        rc, out, err = run_cli(argv)
    return {"dir": run, "rc": rc, "out": out, "err": err, "argv": argv}


def test_prune_exits_0_and_writes_every_file(prune_run: dict[str, Any]) -> None:
    assert prune_run["rc"] == 0, prune_run["err"]
    run: Path = prune_run["dir"]
    for name in ("pruned.pt", "pruned.onnx", "policy.json", "report.json", "report.md",
                 "log.jsonl", "config.yaml"):
        assert (run / name).is_file(), f"{name} missing from the run directory"
        assert (run / name).stat().st_size > 0, f"{name} is empty"
    for name in ("layers", "search", "candidates"):
        png = run / "plots" / f"{name}.png"
        assert png.is_file(), f"plots/{name}.png missing"
        assert png.read_bytes()[:8] == PNG
    assert "params" in prune_run["out"] and str(run) in prune_run["out"]
    # atomic writes go through hidden temporary files: none may be left behind
    assert not list(run.rglob(".*")), list(run.rglob(".*"))


def test_prune_log_and_report(prune_run: dict[str, Any]) -> None:
    run: Path = prune_run["dir"]
    log = read_log(run / "log.jsonl")
    check_log(log, 30)
    report = json.loads((run / "report.json").read_text())
    check_costs_ok(report)
    assert report["method"] == "cpl"
    assert report["budget"] == BUDGET
    assert report["search"]["candidates"] == len(log)
    assert report["onnx"]["ok"] is True
    # every logged candidate carries the measured params of its pruned model
    assert all(c["costs"]["params"] > 0 for c in log)
    assert any(c["feasible"] for c in log)
    policy = json.loads((run / "policy.json").read_text())["policy"]
    assert len(policy) == report["num_layers"]
    assert all(0.0 <= r < 1.0 for r in policy)
    md = (run / "report.md").read_text()
    assert BUDGET in md and "params" in md
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["episodes"] == 30 and cfg["budget"] == BUDGET and cfg["method"] == "cpl"
    assert cfg["finetune_epochs"] == 1 and cfg["pretrain_epochs"] == 5
    # the recorded command is this one, quoted so that a shell can run it again
    assert shlex.split(cfg["_command"]) == ["rlprune", *prune_run["argv"]]


def test_pruned_model_loads_the_same_in_a_fresh_process(
    prune_run: dict[str, Any], model_cache: Path, tmp_path: Path
) -> None:
    run: Path = prune_run["dir"]
    report = json.loads((run / "report.json").read_text())
    digits = data.load("digits")
    x = digits.test.x[:64].clone()
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, rlprune\n"
            "m = rlprune.load(sys.argv[1])\n"
            "x = torch.load(sys.argv[2])\n"
            "with torch.no_grad():\n"
            "    torch.save(m(x), sys.argv[3])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run / "pruned.pt"),
                           str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          env=sub_env(model_cache), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    y_fresh = torch.load(tmp_path / "y.pt")

    model = rlprune.load(run / "pruned.pt")
    assert not model.training
    with torch.no_grad():
        y_here = model(x)
    assert y_here.shape == (64, 10)
    assert torch.equal(y_fresh, y_here)
    # it is the pruned model of the report: its size and its test accuracy
    assert sum(p.numel() for p in model.parameters()) == report["costs"]["params"]["pruned"]
    with torch.no_grad():
        acc = (model(digits.test.x).argmax(1) == digits.test.y).float().mean().item()
    assert acc == pytest.approx(report["accuracy"]["pruned"], abs=1e-6)


def test_onnx_export_matches_the_torch_model(prune_run: dict[str, Any]) -> None:
    ort = pytest.importorskip("onnxruntime")
    run: Path = prune_run["dir"]
    model = rlprune.load(run / "pruned.pt")
    x = data.load("digits").test.x[:8]
    sess = ort.InferenceSession(str(run / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (y_onnx,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(torch.from_numpy(y_onnx), y, rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------- 2. config files
def write_config(path: Path, **extra: Any) -> Path:
    body = {"model": "digits_cnn", "data": "digits", "pretrain_epochs": 5, "budget": BUDGET,
            "method": "cpl", "episodes": 30, "finetune_epochs": 1, "quiet": True,
            "onnx": False, "plots": False, **extra}
    path.write_text(yaml.safe_dump(body))
    return path


def test_config_file_gives_the_same_run_as_flags(
    prune_run: dict[str, Any], cache_env: Path, tmp_path: Path
) -> None:
    run = tmp_path / "from-config"
    conf = write_config(tmp_path / "c.yaml", out=str(run))
    rc, _, err = run_cli(["prune", "--config", str(conf)])
    assert rc == 0, err
    log = read_log(run / "log.jsonl")
    check_log(log, 30)
    # same settings and seed as the flag-driven run: the same search, candidate by candidate
    flags_log = read_log(prune_run["dir"] / "log.jsonl")
    assert [c["policy"] for c in log[:30]] == [c["policy"] for c in flags_log[:30]]
    assert [c["reward"] for c in log[:30]] == [c["reward"] for c in flags_log[:30]]
    check_costs_ok(json.loads((run / "report.json").read_text()))
    # onnx: false and plots: false from the file were honoured
    assert not (run / "pruned.onnx").exists()
    assert not (run / "plots").exists()


def test_flag_overrides_config_value(cache_env: Path, tmp_path: Path) -> None:
    run = tmp_path / "override"
    conf = write_config(tmp_path / "c.yaml", out=str(tmp_path / "not-this-one"))
    rc, _, err = run_cli(["prune", "--config", str(conf), "--episodes", "10",
                          "--out", str(run)])
    assert rc == 0, err
    assert not (tmp_path / "not-this-one").exists()
    check_log(read_log(run / "log.jsonl"), 10)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["episodes"] == 10  # the flag
    assert saved["budget"] == BUDGET and saved["finetune_epochs"] == 1  # the file
    assert saved["out"] == str(run)


def test_a_runs_config_yaml_is_a_valid_config(
    prune_run: dict[str, Any], cache_env: Path, tmp_path: Path
) -> None:
    """config.yaml of a run (with its `_command`) can be given back to --config."""
    run = tmp_path / "again"
    rc, _, err = run_cli(["prune", "--config", str(prune_run["dir"] / "config.yaml"),
                          "--episodes", "5", "--no-onnx", "--no-plots", "--out", str(run)])
    assert rc == 0, err
    check_log(read_log(run / "log.jsonl"), 5)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["finetune_epochs"] == 1 and saved["method"] == "cpl"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("model: digits_cnn\ndata: digits\nbudget: params<=0.4\nbudjet: 0.3\n", ["budjet"]),
        ("model: digits_cnn\ndata: [digits\n  budget: x: y\n", ["not valid YAML"]),
        ("- model\n- digits_cnn\n", ["mapping"]),
        ("model: digits_cnn\ndata: digits\nbudget: params<=0.4\nepisodes: many\n",
         ["'episodes'", "many"]),
        ("model: digits_cnn\ndata: digits\nbudget: 0.3\n", ["'budget'", "a string", "0.3"]),
    ],
    ids=["unknown-key", "malformed-yaml", "not-a-mapping", "wrong-type", "budget-not-a-string"],
)
def test_bad_config_is_one_clear_error(
    cache_env: Path, tmp_path: Path, text: str, names: list[str]
) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    rc, _, err = run_cli(["prune", "--config", str(conf), "--out", str(tmp_path / "run")])
    line = one_error_line(rc, err)
    assert str(conf) in line
    for name in names:
        assert name in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- 3. clear errors
@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([*MODEL, "--budget", "params<=0.0001"], ["params", "cannot be met"]),
        (["--checkpoint", "{tmp}/missing.pt", "--data", "digits", "--budget", BUDGET],
         ["missing.pt"]),
        ([*MODEL, "--budget", "params<<0.4"], ["params<<0.4"]),
        ([*MODEL, "--budget", "params<=lots"], ["params<=lots"]),
        ([*MODEL, "--budget", "weights<=0.4"], ["weights"]),
        ([*MODEL, "--budget", BUDGET, "--method", "dqn9000"], ["dqn9000", "cpl"]),
        (["--model", "resnet9000", "--data", "digits", "--budget", BUDGET],
         ["resnet9000", "digits_cnn"]),
        ([*MODEL, "--budget", BUDGET, "--dense-samples", "0"], ["dense_samples", ">= 1"]),
    ],
    ids=["infeasible-budget", "missing-checkpoint", "malformed-budget", "budget-not-a-number",
         "unknown-cost", "unknown-method", "unknown-model", "zero-dense-samples"],
)
def test_bad_input_is_one_clear_error(
    cache_env: Path, tmp_path: Path, args: list[str], names: list[str]
) -> None:
    argv = ["prune", *(a.replace("{tmp}", str(tmp_path)) for a in args), "--episodes", "5",
            "--quiet", "--no-onnx", "--no-plots", "--out", str(tmp_path / "run")]
    rc, _, err = run_cli(argv)
    line = one_error_line(rc, err)
    for name in names:
        assert name in line
    # found before the search: no run directory was written (nothing to --resume)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "name", "epochs"),
    [
        (["prune", "--budget", BUDGET, "--method", "dqn9000"], "dqn9000", 6),
        (["prune", "--budget", BUDGET, "--reward", "happiness"], "happiness", 7),
        (["compare", "--budget", BUDGET, "--methods", "uniform,dqn9000"], "dqn9000", 8),
        (["compare", "--budget", "params<<0.4", "--methods", "uniform"], "params<<0.4", 9),
    ],
    ids=["prune-method", "prune-reward", "compare-method", "compare-budget"],
)
def test_bad_names_fail_before_pretraining(
    cache_env: Path, tmp_path: Path, argv: list[str], name: str, epochs: int
) -> None:
    """A typo must not cost a pretraining run first (these epochs are not in the cache)."""
    cached = cache_env / f"digits_cnn_digits_e{epochs}_s0.pt"
    assert not cached.exists()
    rc, _, err = run_cli([*argv, "--model", "digits_cnn", "--data", "digits",
                          "--pretrain-epochs", str(epochs), "--quiet",
                          "--out", str(tmp_path / "run")])
    assert name in one_error_line(rc, err)
    assert not cached.exists(), "the model was pretrained before the error"
    assert not (tmp_path / "run").exists()


def test_infeasible_budget_names_the_smallest_reachable_value(
    cache_env: Path, tmp_path: Path
) -> None:
    rc, _, err = run_cli(["prune", *MODEL, "--budget", "params<=0.0001", "--quiet",
                          "--no-onnx", "--no-plots"])
    line = one_error_line(rc, err)
    # "... params reaches at least N ..." with N the smallest reachable parameter count
    words = line.replace(",", " ").split()
    assert "least" in words
    smallest = float(words[words.index("least") + 1])
    assert 2.4058 < smallest < 24058  # above the limit asked, below the unpruned model


@pytest.mark.parametrize("case", ["missing-checkpoint", "unknown-config-key"])
def test_error_in_a_real_process_has_no_traceback(
    model_cache: Path, tmp_path: Path, case: str
) -> None:
    if case == "missing-checkpoint":
        args = ["prune", "--checkpoint", str(tmp_path / "nope.pt"), "--data", "digits",
                "--budget", BUDGET]
        name = "nope.pt"
    else:
        conf = write_config(tmp_path / "c.yaml", epsiodes=3)
        args = ["prune", "--config", str(conf)]
        name = "epsiodes"
    proc = subprocess.run([*CLI, *args], env=sub_env(model_cache), capture_output=True,
                          text=True, timeout=120)
    line = one_error_line(proc.returncode, proc.stderr)
    assert name in line
    assert proc.stdout == ""


# ------------------------------------------------------------------ 4. resume after kill -9
def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_resume_after_kill_9_completes_without_repeating_evaluations(
    cache_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    episodes = 150
    run = tmp_path / "run"
    log_path = run / "log.jsonl"
    argv = ["prune", *MODEL, "--budget", BUDGET, "--method", "cpl", "--episodes",
            str(episodes), "--no-onnx", "--no-plots", "--quiet"]
    proc = subprocess.Popen([*CLI, *argv, "--out", str(run)], env=sub_env(cache_env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while count_lines(log_path) < 20:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed: "
                            f"{proc.stderr.read().decode() if proc.stderr else ''}")
            assert time.monotonic() < deadline, "the run never logged 20 candidates"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = log_path.read_bytes()
    whole = before[: before.rfind(b"\n") + 1]  # a torn last line may follow
    pre = [json.loads(line) for line in whole.decode().splitlines()]
    k = len(pre)
    assert 20 <= k < episodes, f"killed after {k} candidates: not in the middle of the search"
    assert not (run / "report.json").exists()

    # count the candidates scored from here on
    scored: list[int] = []
    original_accuracy = Evaluator.accuracy

    def counting_accuracy(self: Evaluator, model: Any, dense: bool = False) -> float:
        scored.append(1)
        return original_accuracy(self, model, dense)

    monkeypatch.setattr(Evaluator, "accuracy", counting_accuracy)
    rc, out, err = run_cli(["prune", "--resume", str(run), "--quiet"])
    assert rc == 0, err
    assert "params" in out

    after = log_path.read_bytes()
    assert after.startswith(whole), "lines logged before the kill were changed"
    log = read_log(log_path)
    check_log(log, episodes)
    # the first k lines are the pre-kill ones, byte for byte (their `time` fields too):
    # they were replayed from the log, not evaluated again
    assert log[:k] == pre
    fresh = [c for c in log[k:] if not c["extra"].get("cached")]
    assert len(scored) == len(fresh) <= episodes - k + MAX_AFTER_SEARCH

    report = json.loads((run / "report.json").read_text())
    check_costs_ok(report)
    assert report["search"]["candidates"] == len(log)

    # nothing was lost either: the same search as a run that was never interrupted
    monkeypatch.setattr(Evaluator, "accuracy", original_accuracy)
    ref = tmp_path / "uninterrupted"
    rc, _, err = run_cli([*argv, "--out", str(ref)])
    assert rc == 0, err
    ref_log = read_log(ref / "log.jsonl")
    strip = [{k2: v for k2, v in c.items() if k2 != "time"} for c in log]
    assert strip == [{k2: v for k2, v in c.items() if k2 != "time"} for c in ref_log]


def test_resume_of_a_directory_without_a_run_is_a_clear_error(
    cache_env: Path, tmp_path: Path
) -> None:
    rc, _, err = run_cli(["prune", "--resume", str(tmp_path / "nothing-here"), "--quiet"])
    line = one_error_line(rc, err)
    assert "nothing-here" in line and "config.yaml" in line


def write_run_config(run: Path, **extra: Any) -> pipeline.RunConfig:
    """A run directory's config.yaml as `rlprune prune --out` writes it (no run needed)."""
    cfg = pipeline.RunConfig(model="digits_cnn", data="digits", budget=BUDGET, method="cpl",
                             episodes=30, pretrain_epochs=5, finetune_epochs=1, out=str(run),
                             **extra)
    run.mkdir(parents=True, exist_ok=True)
    body = dataclasses.asdict(cfg)
    body["_command"] = "rlprune prune --episodes 30"
    (run / "config.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return cfg


@pytest.fixture
def resumed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[pipeline.RunConfig, bool]]:
    """pipeline.run_prune replaced by a recorder of (config, resume): no search is run."""
    calls: list[tuple[pipeline.RunConfig, bool]] = []

    class Result:
        def summary(self) -> str:
            return "params: (not run)"

    def fake_run_prune(cfg: pipeline.RunConfig, resume: bool = False,
                       command: str = "") -> Result:
        calls.append((cfg, resume))
        return Result()

    monkeypatch.setattr(pipeline, "run_prune", fake_run_prune)
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    return calls


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--budget", "params<=0.5"], ["--budget params<=0.5", f"budget: {BUDGET}"]),
        (["--method", "uniform"], ["--method uniform", "method: cpl"]),
        (["--episodes", "7"], ["--episodes 7", "episodes: 30"]),
        (["--finetune-lr", "0.5"], ["--finetune-lr 0.5", "finetune_lr: 0.01"]),
        (["--no-onnx"], ["--no-onnx", "onnx: true"]),
        (["--reward", "dense"], ["--reward dense", "reward: null"]),
        (["--out", "{tmp}/elsewhere"], ["--out {tmp}/elsewhere", "{run}"]),
        (["--config", "{conf}"], ["budget: params<=0.5 in --config {conf}",
                                  f"budget: {BUDGET}"]),
    ],
    ids=["budget", "method", "episodes", "finetune-lr", "no-onnx", "reward", "out", "config"],
)
def test_resume_refuses_a_conflicting_setting(
    resumed: list[Any], tmp_path: Path, args: list[str], names: list[str]
) -> None:
    run = tmp_path / "run"
    write_run_config(run)
    conf = tmp_path / "other.yaml"
    conf.write_text(yaml.safe_dump({"budget": "params<=0.5", "episodes": 30}))

    def fill(s: str) -> str:
        return s.replace("{tmp}", str(tmp_path)).replace("{conf}", str(conf)).replace(
            "{run}", str(run))

    rc, _, err = run_cli(["prune", "--resume", str(run), *map(fill, args), "--quiet"])
    line = one_error_line(rc, err)
    assert "resumed" in line
    for name in names:
        assert fill(name) in line
    assert resumed == []  # refused before anything ran


def test_resume_accepts_agreeing_settings_and_quiet(resumed: list[Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    stored = write_run_config(run)
    rc, out, err = run_cli(["prune", "--resume", str(run), "--budget", BUDGET, "--method",
                            "cpl", "--episodes", "30", "--finetune-lr", "0.01", "--onnx",
                            "--out", str(run), "--config", str(run / "config.yaml"),
                            "--quiet"])
    assert rc == 0, err
    assert "params" in out
    ((cfg, resume),) = resumed
    assert resume is True
    assert cfg == dataclasses.replace(stored, quiet=True)


@pytest.mark.parametrize(
    ("text", "names"),
    [("episodes: many\n", ["'episodes'", "many", "integer"]),
     ("budjet: 0.3\n", ["budjet"])],
    ids=["wrong-type", "unknown-key"],
)
def test_resume_of_a_bad_stored_config_is_one_clear_error(
    resumed: list[Any], tmp_path: Path, text: str, names: list[str]
) -> None:
    run = tmp_path / "run"
    write_run_config(run)
    with open(run / "config.yaml", "a") as f:
        f.write(text)
    rc, _, err = run_cli(["prune", "--resume", str(run)])
    line = one_error_line(rc, err)
    assert str(run / "config.yaml") in line
    for name in names:
        assert name in line
    assert resumed == []


def test_prune_pretrains_lenet300_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """lenet300 takes its input side from the data (8x8 digits, not MNIST's 28x28)."""
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    rc, out, err = run_cli(["prune", "--model", "lenet300", "--data", "digits", "--budget",
                            "params<=0.3", "--episodes", "2", "--pretrain-epochs", "1",
                            "--quiet"])
    assert rc == 0, err
    assert "params" in out
    model, meta = train.load_checkpoint(tmp_path / "cache" / "lenet300_digits_e1_s0.pt")
    assert meta["input_shape"] == [1, 8, 8]
    assert model.net[1].in_features == 64


# ------------------------------------------------------------------------- 5. compare
def test_compare_four_methods(cache_env: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "cmp"
    methods = ["uniform", "random", "global", "cpl"]
    rc, out, err = run_cli(["compare", *MODEL, "--budget", BUDGET, "--methods",
                            ",".join(methods), "--episodes", "10", "--quiet", "--no-onnx",
                            "--out", str(out_dir)])
    assert rc == 0, err
    # the console table: a header, then one row per method, in order
    table = [line.split()[0] for line in out.splitlines() if line.split()]
    assert [m for m in table if m in methods] == methods

    doc = json.loads((out_dir / "compare.json").read_text())
    rows = doc["rows"]
    assert [r["method"] for r in rows] == methods
    for r in rows:
        assert r["feasible"] is True, r
        assert all(c["ok"] is True for c in r["costs"].values()), r
        assert r["costs"]["params"]["ratio"] <= 0.4
    evals = {r["method"]: (r["candidates"], r["evaluations"]) for r in rows}
    for m in ("random", "cpl"):  # the searching methods get the same effort
        proposed, scored = evals[m]
        assert 10 <= proposed <= 10 + MAX_AFTER_SEARCH, evals
        assert 1 <= scored <= proposed, evals  # repeats are answered from the cache

    md = (out_dir / "compare.md").read_text()
    md_rows = [line for line in md.splitlines() if line.startswith("| ")]
    for m in methods:
        assert sum(line.startswith(f"| {m} |") for line in md_rows) == 1, md

    best_dirs = sorted(out_dir.glob("best-*"))
    assert len(best_dirs) == 1, best_dirs
    best = best_dirs[0]
    method = best.name.removeprefix("best-")
    assert method in methods
    # chosen on the reward split (the test split is for reporting only)
    top = max(r["reward_acc_after_ft"] for r in rows)
    assert next(r for r in rows if r["method"] == method)["reward_acc_after_ft"] == top
    report = json.loads((best / "report.json").read_text())
    assert report["method"] == method
    check_costs_ok(report)
    assert (best / "pruned.pt").is_file()
    assert sum(p.numel() for p in rlprune.load(best / "pruned.pt").parameters()) == \
        report["costs"]["params"]["pruned"]


# ---------------------------------------------------------------------------- 6. demo
@pytest.mark.slow
def test_demo(tmp_path: Path) -> None:
    out_dir = tmp_path / "demo"
    proc = subprocess.run([*CLI, "demo", "--out", str(out_dir), "--quiet"],
                          env=sub_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    md = (out_dir / "compare.md").read_text()
    rows = json.loads((out_dir / "compare.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"cpl", "purl", "amc", "uniform", "random", "global",
                                           "lamp"}
    assert all(r["feasible"] for r in rows)
    for r in rows:
        assert f"| {r['method']} |" in md
    assert len(list(out_dir.glob("best-*/report.json"))) == 1


def test_dense_samples_reaches_the_env(digits: Any, trained_digits_cnn: Any) -> None:
    from rlprune import api

    cfg = pipeline.RunConfig(model="digits_cnn", data="digits", budget=BUDGET,
                             method="purl", dense_samples=17, reward_samples=40)
    bound = Budget.parse(BUDGET).bind(trained_digits_cnn, digits.example_input(1))
    env = api.make_env(trained_digits_cnn, digits, bound, method="purl",
                       **pipeline._env_kwargs(cfg))
    assert env.dense and len(env.evaluator._dense) == 17 and len(env.evaluator._reward) == 40
