"""The ``rlprune`` command: pretrain, eval, models, and clear errors for bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rlprune
from rlprune import cli, data, models, pipeline, train


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers for input ``x``."""
    total = [0]

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += out[0].numel() * k
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rlprune pretrain`` of digits_cnn on digits for 3 epochs."""
    out = tmp_path_factory.mktemp("cli") / "ck.pt"
    rc = cli.main(["pretrain", "--model", "digits_cnn", "--data", "digits", "--epochs", "3",
                   "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_pretrain_writes_loadable_checkpoint(checkpoint: Path, digits: data.Splits) -> None:
    model, meta = train.load_checkpoint(checkpoint)
    assert models.arch_spec(model)["name"] == "digits_cnn"
    assert meta["dataset"] == "digits"
    assert meta["epochs"] == 3
    assert meta["num_classes"] == 10
    assert meta["input_shape"] == [1, 8, 8]
    assert 0.5 < meta["test_accuracy"] <= 1.0  # 3 epochs already learn digits
    acc = train.evaluate(model, digits.test.x, digits.test.y)
    assert meta["test_accuracy"] == pytest.approx(acc)
    assert len(meta["curves"]["loss"]) == 3


def test_pretrain_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "one.pt"
    rc = cli.main(["pretrain", "--model", "digits_cnn", "--data", "digits", "--epochs", "1",
                   "--out", str(out), "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "test accuracy" in captured.out
    assert str(out) in captured.out
    assert captured.err == ""  # --quiet: no progress bar
    assert out.is_file()


def test_eval_prints_accuracy_params_and_macs(
    checkpoint: Path, digits: data.Splits, capsys: pytest.CaptureFixture[str]
) -> None:
    model, meta = train.load_checkpoint(checkpoint)
    rc = cli.main(["eval", str(checkpoint)])
    assert rc == 0
    out = capsys.readouterr().out
    acc = re.search(r"test accuracy ([0-9.]+)", out)
    assert acc is not None
    assert float(acc.group(1)) == pytest.approx(meta["test_accuracy"], abs=1e-4)
    params = re.search(r"params ([0-9,]+)", out)
    assert params is not None
    assert int(params.group(1).replace(",", "")) == sum(p.numel() for p in model.parameters())
    macs = re.search(r"MACs ([0-9,]+)", out)
    assert macs is not None
    assert int(macs.group(1).replace(",", "")) == conv_linear_macs(model, digits.test.x[:1])


def test_models_lists_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().out.split() == models.list_models()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "pretrain" in capsys.readouterr().out


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rlprune: error:")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pt"
    rc = cli.main(["pretrain", "--model", "nosuchnet", "--data", "digits", "--epochs", "1",
                   "--out", str(out), "--quiet"])
    assert rc == 2
    assert_one_line_error(capsys, "nosuchnet", "resnet20")
    assert not out.exists()


def test_unknown_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["pretrain", "--model", "digits_cnn", "--data", "nosuchdata", "--out",
                   str(tmp_path / "x.pt"), "--quiet"])
    assert rc == 2
    assert_one_line_error(capsys, "nosuchdata", "digits")


def test_mnist_without_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RLPRUNE_DATA", raising=False)
    rc = cli.main(["pretrain", "--model", "lenet5", "--data", "mnist", "--out",
                   str(tmp_path / "x.pt"), "--quiet"])
    assert rc == 2
    assert_one_line_error(capsys, "mnist", "RLPRUNE_DATA")


def test_mnist_with_missing_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_dir"
    rc = cli.main(["pretrain", "--model", "lenet5", "--data", "mnist", "--data-dir",
                   str(missing), "--out", str(tmp_path / "x.pt"), "--quiet"])
    assert rc == 2
    assert_one_line_error(capsys, str(missing), "train-images-idx3-ubyte.gz")


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pt"
    assert cli.main(["eval", str(missing)]) == 2
    assert_one_line_error(capsys, str(missing), "not found")


def test_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["eval", str(bad)]) == 2
    assert_one_line_error(capsys, str(bad))


def test_negative_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pt"
    rc = cli.main(["pretrain", "--model", "digits_cnn", "--data", "digits", "--epochs", "-1",
                   "--out", str(out), "--quiet"])
    assert rc == 2
    assert_one_line_error(capsys, "epochs", "-1")
    assert not out.exists()


def test_version_subprocess() -> None:
    proc = subprocess.run([sys.executable, "-m", "rlprune.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rlprune {rlprune.__version__}"


@pytest.mark.parametrize("command", ["pretrain", "eval", "models", "demo", "prune", "compare"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: rlprune {command}")


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TypeError from rlprune's own code is a bug, not a user error: it is not hidden."""

    def broken() -> list[str]:
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(models, "list_models", broken)
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(["models"])


def test_pretrain_command_and_cached_pretrained_are_one_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rlprune pretrain` and pipeline.pretrained build and train the same model."""
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lenet300.pt"
    rc = cli.main(["pretrain", "--model", "lenet300", "--data", "digits", "--epochs", "1",
                   "--seed", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    a, meta_a = train.load_checkpoint(out)
    b, meta_b = pipeline.pretrained("lenet300", data.load("digits", seed=2), 1, seed=2,
                                    progress=False)
    assert models.arch_spec(a) == models.arch_spec(b) == {
        "name": "lenet300", "num_classes": 10, "in_channels": 1, "input_size": 8}
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    meta_a.pop("train_seconds")
    meta_b.pop("train_seconds")
    assert meta_a == meta_b


def test_pretrain_leaves_the_global_rng_alone(digits: data.Splits) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    model, meta = pipeline.pretrain("digits_cnn", digits, 0, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    # the initial weights are those of the seed, as with torch.manual_seed before create
    torch.manual_seed(7)
    ref = models.create("digits_cnn", num_classes=10, in_channels=1)
    sa, sr = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sa[k], sr[k]) for k in sr)
    assert meta["epochs"] == 0 and meta["seed"] == 7
