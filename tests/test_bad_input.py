"""Bad input: every mistake a user can make ends in one clear line, and nothing is lost.

Issue #13, section 3. Each case is met the way a user meets it: the ``rlprune`` command
run in-process (``cli.main``), which must exit with code 2 and print exactly one
``rlprune: error:`` line naming the problem and what to do, no traceback, and leave the
run directory absent or byte for byte as it was; or, where the command line does not
apply (a custom cost function, user tensors, a user module), the Python API raising a
clear ``ValueError``/``TypeError``. Writes interrupted at any moment leave the previous
complete file or the new complete file.

``RLPRUNE_RECORD_ERRORS=FILE`` appends every command-line case and the line it printed
to ``FILE`` (test id, a tab, the line): the list of cases the documentation quotes.

Everything runs on the bundled digits and the session's trained ``digits_cnn``; the few
complete runs are 2-episode ``uniform`` searches without ONNX or plots, and the
hypothesis tests parse budget strings and call cost functions only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rlprune
from rlprune import cli, costs, data, fileio, models, pipeline, train
from rlprune.costs import Budget

BUDGET = "params<=0.5"
QUICK = ["--method", "uniform", "--episodes", "2", "--quiet", "--no-onnx", "--no-plots"]
HYPOTHESIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _user_errors_are_not_reraised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))  # never pretrain by accident


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``rlprune.cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def error_line(rc: int, err: str, *fragments: str) -> str:
    """Exit code 2 and exactly one ``rlprune: error:`` line holding every fragment."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("rlprune: error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    record = os.environ.get("RLPRUNE_RECORD_ERRORS")
    if record:  # the list of every case and its line, for the documentation
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"{case}\t{line}\n")
    return line


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` (or ``path`` itself) with its bytes; None if absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def prune_argv(checkpoint: Path | str, out: Path, budget: str = BUDGET, *extra: str) -> list[str]:
    return ["prune", "--checkpoint", str(checkpoint), "--data", "digits", f"--budget={budget}",
            *QUICK, "--out", str(out), *extra]


def refused(argv: list[str], out: Path, *fragments: str) -> str:
    """Run ``argv``; it must fail with one line and leave ``out`` as it was."""
    before = snapshot(out)
    rc, stdout, err = run_cli(argv)
    line = error_line(rc, err, *fragments)
    assert snapshot(out) == before, f"{out} changed"
    return line


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, trained_digits_cnn: nn.Module) -> Path:
    """A good checkpoint of the trained digits_cnn, as `rlprune pretrain` writes one."""
    path = tmp_path_factory.mktemp("ck") / "digits_cnn.pt"
    train.save_checkpoint(path, trained_digits_cnn, {"dataset": "digits"})
    return path


def save_module(path: Path, model: nn.Module) -> Path:
    """A bare ``torch.save(model)`` (no metadata, so no dataset check)."""
    torch.save(model, path)
    return path


# ------------------------------------------------------------------------- 1. budgets
NAMES = st.sampled_from(["params", "flops", "macs", "latency_ms", "PARAMS", " flops ",
                         "weights", "", "1x", "params params", "par-ams", "nonzero_params"])
OPS = st.sampled_from(["<=", "<", ">=", "=", "==", "=<", "<<", "", "≤", "<= =", " <= "])
LIMITS = st.sampled_from(["0.3", "50%", "2", "0", "-1", "nan", "inf", "-inf", "1e400",
                          "abc", "", "%", "50%%", "0x10", "1/2", "0.3 0.4", "%50", "1e-3"])
TERMS = st.builds(lambda n, o, v: f"{n}{o}{v}", NAMES, OPS, LIMITS)
BUDGET_TEXT = st.one_of(st.lists(TERMS, min_size=1, max_size=3).map(",".join),
                        st.lists(TERMS, min_size=1, max_size=2).map(", ,".join),
                        st.text(max_size=30))


@HYPOTHESIS
@given(text=BUDGET_TEXT)
def test_malformed_budget_strings_are_one_line_before_anything_is_read(
    tmp_path: Path, text: str
) -> None:
    """Any budget text either parses (and prints back to itself) or is one line naming
    the accepted syntax, found before the checkpoint or the data is even opened."""
    try:
        parsed = Budget.parse(text)
    except ValueError:
        pass
    else:
        assert Budget.parse(str(parsed)) == parsed
        return
    out = tmp_path / "run"
    line = refused(prune_argv(tmp_path / "no-such-checkpoint.pt", out, text), out)
    # the line shows the accepted syntax ("no budget: give --budget, e.g. ..." if empty)
    assert "NAME<=NUMBER" in line or "give --budget, e.g." in line
    assert "no-such-checkpoint" not in line  # the budget was checked first
    assert out.exists() is False


@pytest.mark.parametrize(
    ("budget", "extra", "fragments"),
    [
        ("params<=0.3,params<=0.5", [], ["'params' appears twice"]),
        ("params<=0.3,nonzero_params<=0.2", ["--granularity", "weight"],
         ["either params or nonzero_params"]),
        ("params<=0.3,flops>=0.5", [], ["malformed budget term 'flops>=0.5'", "NAME<=NUMBER"]),
    ],
    ids=["duplicate", "params-and-nonzero-under-weight", "lower-bound"],
)
def test_contradictory_budgets(tmp_path: Path, budget: str, extra: list[str],
                               fragments: list[str]) -> None:
    out = tmp_path / "run"
    refused(prune_argv(tmp_path / "missing.pt", out, budget, *extra), out, *fragments)


@pytest.mark.parametrize(
    ("budget", "fragments"),
    [
        ("params<=0.0001", ["cannot be met", "params", "at least"]),
        ("macs<=10", ["cannot be met", "macs", "at least"]),
        ("params<=0.9,flops<=0.00001", ["cannot be met", "flops", "at least"]),
    ],
    ids=["relative", "absolute", "one-of-two"],
)
def test_budgets_no_pruning_can_reach(tmp_path: Path, ckpt: Path, budget: str,
                                      fragments: list[str]) -> None:
    out = tmp_path / "run"
    refused(prune_argv(ckpt, out, budget), out, *fragments)
    assert not out.exists()


# -------------------------------------------------------------------- 2. cost functions
def _raises(model: nn.Module) -> float:
    raise RuntimeError("power meter\n  offline")  # a message over two lines still prints one


@pytest.mark.parametrize(
    ("fn", "fragments"),
    [
        (_raises, ["cost 'meter'", "RuntimeError", "power meter offline"]),
        (lambda m: float("nan"), ["cost 'meter'", "nan", "finite number >= 0"]),
        (lambda m: -3.0, ["cost 'meter'", "-3.0", "finite number >= 0"]),
        (lambda m: float("inf"), ["cost 'meter'", "inf", "finite number >= 0"]),
        (lambda m: "12", ["cost 'meter'", "'12'", "must return a number"]),
        (lambda m: None, ["cost 'meter'", "None", "must return a number"]),
        (lambda m: [1.0], ["cost 'meter'", "[1.0]", "must return a number"]),
    ],
    ids=["raises", "nan", "negative", "inf", "string", "none", "list"],
)
def test_a_bad_cost_function_is_one_line_naming_it(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch,
    fn: Callable[[nn.Module], Any], fragments: list[str]
) -> None:
    monkeypatch.setitem(costs._COSTS, "meter", costs.Cost("meter", fn))
    out = tmp_path / "run"
    refused(prune_argv(ckpt, out, "meter<=5"), out, *fragments)
    assert not out.exists()


def test_a_cost_that_fails_only_on_pruned_models_stops_before_the_search(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, trained_digits_cnn: nn.Module
) -> None:
    full = costs.count_params(trained_digits_cnn)

    def fussy(model: nn.Module) -> float:
        n = costs.count_params(model)
        return n if n == full else float("nan")

    monkeypatch.setitem(costs._COSTS, "fussy", costs.Cost("fussy", fussy))
    out = tmp_path / "run"
    refused(prune_argv(ckpt, out, f"fussy<={full}"), out, "cost 'fussy'", "nan")
    assert not out.exists()


BAD_COST_VALUES = st.one_of(
    st.floats().filter(lambda v: not (math.isfinite(v) and v >= 0)),
    st.integers(max_value=-1),
    st.integers(min_value=10**400, max_value=10**401),
    st.text(max_size=5), st.binary(max_size=5), st.booleans(), st.none(),
    st.complex_numbers(), st.lists(st.floats(0, 1), max_size=2),
    st.builds(lambda v: torch.tensor([v, v]), st.floats(0, 1)),
)
GOOD_COST_VALUES = st.one_of(
    st.floats(0, 1e12), st.integers(0, 10**12),
    st.builds(np.float32, st.floats(0, 1e6, width=32)),
    st.builds(lambda v: torch.tensor(v, dtype=torch.float64), st.floats(0, 1e6)),
)


@HYPOTHESIS
@given(value=BAD_COST_VALUES)
def test_any_bad_cost_value_is_a_value_error_naming_the_cost(
    trained_digits_cnn: nn.Module, value: Any
) -> None:
    budget = Budget(custom={"user_cost": (lambda m: value, 5.0)})
    with pytest.raises(ValueError, match="cost 'user_cost'") as info:
        budget.bind(trained_digits_cnn, torch.zeros(1, 1, 8, 8))
    assert "\n" not in str(info.value)


@HYPOTHESIS
@given(value=GOOD_COST_VALUES)
def test_any_finite_non_negative_cost_value_is_accepted(
    trained_digits_cnn: nn.Module, value: Any
) -> None:
    bound = Budget(custom={"user_cost": (lambda m: value, 5.0)}).bind(trained_digits_cnn)
    assert bound.original["user_cost"] == float(value)


def test_the_api_names_a_raising_cost(trained_digits_cnn: nn.Module,
                                      digits: data.Splits) -> None:
    def sensor(model: nn.Module) -> float:
        raise OSError("device unplugged")

    budget = Budget(params=0.5, custom={"sensor": (sensor, 3.0)})
    with pytest.raises(ValueError, match="cost 'sensor' failed: OSError: device unplugged"):
        rlprune.prune(trained_digits_cnn, digits, budget, method="uniform", progress=False)


# ------------------------------------------------------------------------ 3. checkpoints
class _Payload:
    """Unpickling this runs code: it creates the file named by ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def _write_bad_checkpoint(kind: str, tmp: Path, good: Path, model: nn.Module) -> Path:
    path = tmp / f"{kind}.pt"
    if kind == "truncated":
        raw = good.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "corrupt":
        raw = bytearray(good.read_bytes())
        rng = random.Random(0)
        for i in rng.sample(range(len(raw)), 200):
            raw[i] = rng.randrange(256)
        path.write_bytes(bytes(raw))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "json":
        path.write_text(json.dumps({"state_dict": {"w": [1, 2]}}))
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    elif kind == "state-dict":
        torch.save(model.state_dict(), path)
    elif kind == "unknown-arch":
        torch.save({"format": "rlprune-checkpoint-1", "meta": {},
                    "arch": {"name": "resnet9000"}, "state_dict": model.state_dict()}, path)
    elif kind == "no-arch":
        torch.save({"format": "rlprune-checkpoint-1", "meta": {},
                    "state_dict": model.state_dict()}, path)
    elif kind == "wrong-weights":
        other = models.create("digits_cnn", num_classes=4, in_channels=1)
        torch.save({"format": "rlprune-checkpoint-1", "meta": {},
                    "arch": models.arch_spec(model), "state_dict": other.state_dict()}, path)
    elif kind == "module-not-a-module":
        torch.save({"format": "rlprune-checkpoint-1", "meta": {}, "module": [1, 2]}, path)
    elif kind == "directory":
        path.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


CHECKPOINT_CASES = {
    # kind: what the one line must say
    "truncated": ["cannot read checkpoint"],
    "corrupt": ["cannot read checkpoint"],
    "empty": ["cannot read checkpoint"],
    "text": ["cannot read checkpoint"],
    "json": ["cannot read checkpoint"],
    "npy": ["cannot read checkpoint"],
    "tensor": ["not an rlprune checkpoint"],
    "list": ["not an rlprune checkpoint"],
    "plain-pickle": ["cannot read checkpoint"],
    "state-dict": ["plain state dict", "--model NAME"],
    "unknown-arch": ["resnet9000", "digits_cnn"],
    "no-arch": ["does not say which architecture", "--model NAME"],
    "wrong-weights": ["do not fit", "digits_cnn"],
    "module-not-a-module": ["not an nn.Module"],
    "directory": ["not a file"],
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_CASES))
def test_bad_checkpoints(tmp_path: Path, ckpt: Path, trained_digits_cnn: nn.Module,
                         kind: str) -> None:
    path = _write_bad_checkpoint(kind, tmp_path, ckpt, trained_digits_cnn)
    out = tmp_path / "run"
    line = refused(prune_argv(path, out), out, str(path), *CHECKPOINT_CASES[kind])
    assert not out.exists()
    # `rlprune eval` says the same
    rc, _, err = run_cli(["eval", str(path), "--data", "digits"])
    assert error_line(rc, err) == line


def test_a_state_dict_loads_safely_with_its_architecture(
    tmp_path: Path, trained_digits_cnn: nn.Module, digits: data.Splits
) -> None:
    """The safe path: ``--model NAME --checkpoint STATE_DICT`` reads the file with
    ``torch.load(weights_only=True)``, which runs no code."""
    sd = tmp_path / "sd.pt"
    torch.save(trained_digits_cnn.state_dict(), sd)
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["prune", "--model", "digits_cnn", "--checkpoint", str(sd),
                               "--data", "digits", "--budget", BUDGET, *QUICK,
                               "--out", str(out)])
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["feasible"] is True
    ref = train.evaluate(trained_digits_cnn, digits.test.x, digits.test.y)
    assert report["accuracy"]["original"] == pytest.approx(ref)

    # in Python: load_checkpoint(path, model=...) fills a copy of the model
    net = models.create("digits_cnn", num_classes=10, in_channels=1)
    before = copy.deepcopy(net.state_dict())
    loaded, meta = train.load_checkpoint(sd, model=net)
    assert meta == {}
    assert loaded is not net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(v, trained_digits_cnn.state_dict()[k])
               for k, v in loaded.state_dict().items())


def test_the_safe_path_runs_no_code(tmp_path: Path, ckpt: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    out = tmp_path / "run"
    refused(["prune", "--model", "digits_cnn", "--checkpoint", str(evil), "--data", "digits",
             "--budget", BUDGET, *QUICK, "--out", str(out)], out, str(evil), "weights_only")
    assert not marker.exists()
    net = models.create("digits_cnn", num_classes=10, in_channels=1)
    with pytest.raises(train.CheckpointError, match="weights_only"):
        train.load_checkpoint(evil, model=net)
    assert not marker.exists()
    # a full rlprune checkpoint stored by name + state dict loads the safe way too
    loaded, meta = train.load_checkpoint(ckpt, model=net)
    assert meta == {"dataset": "digits"}


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_a_model_with_non_finite_weights(tmp_path: Path, trained_digits_cnn: nn.Module,
                                         digits: data.Splits, bad: str) -> None:
    model = copy.deepcopy(trained_digits_cnn)
    name, param = next(iter(model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[3] = float(bad)
    path = tmp_path / "nan.pt"
    train.save_checkpoint(path, model, {"dataset": "digits"})
    out = tmp_path / "run"
    refused(prune_argv(path, out), out, repr(name), "NaN or inf")
    assert not out.exists()
    with pytest.raises(ValueError, match=f"'{name}' contains NaN or inf"):
        rlprune.prune(model, digits, BUDGET, method="uniform", progress=False)


# ------------------------------------------------------------------------------- 4. data
def test_data_of_the_wrong_shape_for_the_model(tmp_path: Path) -> None:
    """A model for 3-channel images (a bare pickled module: no dataset to check) on digits."""
    path = save_module(tmp_path / "rgb.pt", models.create("digits_cnn", 10, in_channels=3))
    out = tmp_path / "run"
    refused(prune_argv(path, out), out, "fails on an example input of shape (1, 1, 8, 8)",
            "RuntimeError", "--data")
    assert not out.exists()


def test_labels_out_of_the_models_range(tmp_path: Path) -> None:
    path = save_module(tmp_path / "four.pt", models.create("digits_cnn", 4, in_channels=1))
    out = tmp_path / "run"
    refused(prune_argv(path, out), out, "4 classes", "labels", "0..9")
    assert not out.exists()


@pytest.mark.parametrize(
    ("fraction", "fragments"),
    [
        ("0", ["reward split is empty", "--reward-fraction"]),
        ("0.99999", ["leaves no training data"]),
        ("1.5", ["reward_fraction must be in [0, 1)"]),
        ("-0.1", ["reward_fraction must be in [0, 1)"]),
    ],
    ids=["empty-reward-split", "empty-train-split", "above-one", "negative"],
)
def test_reward_splits_that_cannot_work(tmp_path: Path, ckpt: Path, fraction: str,
                                        fragments: list[str]) -> None:
    out = tmp_path / "run"
    refused(prune_argv(ckpt, out, BUDGET, "--reward-fraction", fraction), out, *fragments)
    assert not out.exists()


def test_corrupt_dataset_files(tmp_path: Path, ckpt: Path) -> None:
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / name).write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "run"
    argv = ["prune", "--checkpoint", str(ckpt), "--data", "mnist", "--data-dir",
            str(tmp_path / "data"), "--budget", BUDGET, *QUICK, "--out", str(out)]
    refused(argv, out, "cannot read MNIST images file", "train-images-idx3-ubyte.gz")


def _tensors(n_train: int = 40, n_test: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n_train, 1, 8, 8, generator=g), torch.arange(n_train) % 10,
            torch.randn(n_test, 1, 8, 8, generator=g), torch.arange(n_test) % 10]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("negative-label", "y_train holds labels below 0"),
        ("label-above-classes", "y_test holds label 12, but num_classes is 10"),
        ("one-sample", "1 training samples are too few for reward_fraction=0.1"),
        ("empty-train", "x_train is empty"),
        ("fractional-labels", "y_train must hold whole class indices"),
    ],
)
def test_user_tensors_that_cannot_work(change: str, fragment: str) -> None:
    x_tr, y_tr, x_te, y_te = _tensors()
    kwargs: dict[str, Any] = {}
    if change == "negative-label":
        y_tr[5] = -1
    elif change == "label-above-classes":
        y_te[2] = 12
        kwargs["num_classes"] = 10
    elif change == "one-sample":
        x_tr, y_tr = x_tr[:1], y_tr[:1]
    elif change == "empty-train":
        x_tr, y_tr = x_tr[:0], y_tr[:0]
    elif change == "fractional-labels":
        y_tr = y_tr.float() + 0.5
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        data.from_tensors(x_tr, y_tr, x_te, y_te, **kwargs)


def test_user_tensors_of_the_wrong_shape_and_range(trained_digits_cnn: nn.Module) -> None:
    x_tr, y_tr, x_te, y_te = _tensors()
    flat = data.from_tensors(x_tr.flatten(1), y_tr, x_te.flatten(1), y_te)
    with pytest.raises(ValueError, match=r"fails on an example input of shape \(1, 64\)"):
        rlprune.prune(trained_digits_cnn, flat, BUDGET, method="uniform", progress=False)
    wide = data.from_tensors(x_tr, y_tr + 5, x_te, y_te + 5)  # labels 5..14, 15 classes
    with pytest.raises(ValueError, match="outputs 10 classes"):
        rlprune.prune(trained_digits_cnn, wide, BUDGET, method="uniform", progress=False)
    # an empty test split is allowed: the report then has no test accuracy
    no_test = data.from_tensors(x_tr, y_tr, x_te[:0], y_te[:0])
    assert len(no_test.test) == 0 and no_test.num_classes == 10


class _Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise KeyError("forgot to set self.head")


class _NotAClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # a feature map, not (batch, classes) scores


def test_a_model_that_fails_on_the_example_input(digits: data.Splits) -> None:
    with pytest.raises(ValueError, match="fails on an example input .* KeyError"):
        rlprune.prune(_Broken(), digits, BUDGET, method="uniform", progress=False)
    with pytest.raises(ValueError, match=r"must return \(batch, classes\) scores"):
        rlprune.prune(_NotAClassifier(), digits, BUDGET, method="uniform", progress=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rlprune.prune("digits_cnn", digits, BUDGET, method="uniform", progress=False)


# ----------------------------------------------------------------------- 5. run directories
def test_out_is_an_existing_file(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "results.txt"
    out.write_text("my notes\n")
    refused(prune_argv(ckpt, out), out, str(out), "not a directory")
    assert out.read_text() == "my notes\n"


def test_out_under_a_file(tmp_path: Path, ckpt: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    refused(prune_argv(ckpt, out), out, str(tmp_path / "file"), "not a directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root can write anywhere: needs a non-root user")
def test_out_not_writable(tmp_path: Path, ckpt: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = parent / "run"
        refused(prune_argv(ckpt, out), out, str(parent), "not writable")
    finally:
        parent.chmod(0o755)


def test_compare_out_is_an_existing_file(tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "table.md"
    out.write_text("keep me\n")
    argv = ["compare", "--checkpoint", str(ckpt), "--data", "digits", "--budget", BUDGET,
            "--methods", "uniform,global", "--episodes", "2", "--quiet", "--no-onnx",
            "--no-plots", "--out", str(out)]
    refused(argv, out, str(out), "not a directory")


def _fake_run(run: Path, **changes: Any) -> None:
    """A run directory as `rlprune prune` leaves one, for a run with ``changes``."""
    cfg = pipeline.RunConfig(checkpoint="other.pt", data="digits", budget="flops<=0.5",
                             out=str(run))
    for k, v in changes.items():
        setattr(cfg, k, v)
    run.mkdir(parents=True)
    pipeline._save_config(run, cfg, "rlprune prune ...")
    (run / "log.jsonl").write_text('{"index": 0}\n')
    (run / "report.md").write_text("# the other run\n")


def test_out_is_an_existing_different_run(tmp_path: Path, ckpt: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    refused(prune_argv(ckpt, run), run, str(run), "already holds a different run",
            "--resume", "another --out")


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "run"
    rc, _, err = run_cli(prune_argv(ckpt, out))
    error_line(rc, err, "No space left on device")
    assert [p.name for p in out.rglob("*")] == []  # the folder at most, no file in it


# ----------------------------------------------------------- 6. interrupted writes
_STEPS = ["write", "fsync", "chmod", "replace"]


@pytest.mark.parametrize("step", _STEPS)
@pytest.mark.parametrize("signal_like", [KeyboardInterrupt, OSError])
def test_a_write_interrupted_at_any_step_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, signal_like: type[BaseException]
) -> None:
    target = tmp_path / "report.json"
    fileio.atomic_write_json(target, {"version": "old"})

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise signal_like("interrupted")

    if step == "write":
        real_open = open

        class HalfFile:
            def __init__(self, f: Any) -> None:
                self.f = f

            def __enter__(self) -> HalfFile:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.f.close()

            def write(self, data: bytes) -> int:
                self.f.write(data[: len(data) // 2])  # half of it reaches the temp file
                raise signal_like("interrupted")

        def half_open(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            f = real_open(path, mode, *a, **k)
            return HalfFile(f) if "w" in mode else f

        monkeypatch.setattr("builtins.open", half_open)
    else:
        monkeypatch.setattr(os, step, interrupt)
    with pytest.raises(signal_like):
        fileio.atomic_write_json(target, {"version": "new", "padding": "x" * 10000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": "old"}
    assert os.listdir(tmp_path) == ["report.json"]  # no temp file left


_WRITER = """
import importlib.util, sys, types
# fileio imports torch only for to_jsonable; a stub keeps this writer's start fast
sys.modules.setdefault("torch", types.ModuleType("torch"))
spec = importlib.util.spec_from_file_location("fileio", sys.argv[1])
fileio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fileio)
versions = [bytes([c]) * (1 << 20) for c in b"ab"]
i = 0
while True:
    fileio.atomic_write_bytes(sys.argv[2], versions[i % 2])
    i += 1
    if i == 1:
        print("ready", flush=True)
"""


def test_kill_9_at_any_moment_leaves_a_complete_file(tmp_path: Path) -> None:
    """A writer killed with SIGKILL at random moments: the file is always one of the two
    complete versions (a hidden temp file may remain; it is never the file itself)."""
    target = tmp_path / "pruned.pt"
    versions = {bytes([c]) * (1 << 20) for c in b"ab"}
    rng = random.Random(0)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, fileio.__file__, str(target)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        assert target.read_bytes() in versions
        leftovers = [p.name for p in tmp_path.iterdir() if p != target]
        assert all(n.startswith(".pruned.pt.") and n.endswith(".tmp") for n in leftovers)


def _complete(path: Path) -> None:
    """Fail unless ``path`` is a complete file of its kind."""
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".yaml":
        assert isinstance(yaml.safe_load(path.read_text()), dict)
    elif path.suffix == ".pt":
        train.load_checkpoint(path)
    elif path.name == "log.jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)
    elif path.suffix == ".md":
        assert path.read_text().endswith("\n")


def test_a_run_interrupted_at_every_write_leaves_complete_files_and_resumes(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt (Ctrl-C) a run at its k-th atomic write for every k: each file in the run
    directory is complete, no temp file is left, and ``--resume`` finishes the run."""
    ref = tmp_path / "ref"
    replaces: list[str] = []
    real_replace = os.replace

    def counting(src: Any, dst: Any) -> None:
        replaces.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    rc, _, err = run_cli(prune_argv(ckpt, ref))
    assert rc == 0, err
    monkeypatch.setattr(os, "replace", real_replace)
    assert {"config.yaml", "budget.json", "pruned.pt", "report.json"} <= set(replaces)

    for k in range(len(replaces)):
        run = tmp_path / f"run{k}"
        calls = [0]

        def interrupted(src: Any, dst: Any, k: int = k, calls: list[int] = calls) -> None:
            if calls[0] == k:
                raise KeyboardInterrupt
            calls[0] += 1
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", interrupted)
        rc, _, err = run_cli(prune_argv(ckpt, run))
        monkeypatch.setattr(os, "replace", real_replace)
        assert rc == 130 and err.strip() == "rlprune: interrupted", err
        files = [p for p in run.rglob("*") if p.is_file()] if run.exists() else []
        assert not [p for p in files if p.name.endswith(".tmp")]
        for p in files:
            _complete(p)
        if (run / "config.yaml").is_file():
            rc, _, err = run_cli(["prune", "--resume", str(run), "--quiet"])
            assert rc == 0, err
            assert json.loads((run / "report.json").read_text())["feasible"] is True
