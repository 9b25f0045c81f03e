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
from rlprune import cli, data, models, train


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
