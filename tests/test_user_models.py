"""Models as users have them: their own definitions and weights, grouped convolutions
and transformers, pruned to a budget and counted here, independently of rlprune.costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import rlprune
from rlprune import cli, data, export, models, train
from rlprune.models import ModelDefinitionError, load_definition

DEFS = Path(__file__).with_name("user_model_defs.py")


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv2d/Linear multiply-accumulates of one sample, from the layers' real outputs
    (a Linear on tokens counts every token; attention's own matmuls are not counted, as
    in rlprune's ``macs``)."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        else:
            total += out.numel() * m.weight.shape[1]

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in hs:
        h.remove()
    return total


def trained(name: str, splits: data.Splits, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = models.create(name, 10, 1)
    train.fit(model, splits, epochs=epochs, progress=False)
    return model


# ------------------------------------------------------------- budgets, counted here
def test_resnext_meets_a_params_budget_by_pruning_its_grouped_convs(
        digits: data.Splits) -> None:
    model = trained("resnext11", digits, epochs=2)
    x = digits.example_input(1)
    res = rlprune.prune(model, digits, "params<=0.3", method="cpl", episodes=8, seed=0,
                        progress=False)
    pruned = res.model
    assert numel(pruned) <= 0.3 * numel(model)
    assert hook_macs(pruned, x) < hook_macs(model, x)
    grouped = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == 3 and all(m.groups == 4 for m in grouped)
    before = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert sum(m.weight.numel() for m in grouped) < 0.5 * sum(m.weight.numel() for m in before)
    assert res.costs["params"]["ok"] and res.costs["params"]["pruned"] == numel(pruned)
    assert [r["name"] for r in res.left_out] == ["fc"]
    assert pruned(x).shape == (1, 10)


def test_vit_meets_params_and_flops_budgets_and_exports_to_onnx(
        digits: data.Splits, tmp_path: Path) -> None:
    model = trained("vit_tiny", digits, epochs=2)
    x = digits.example_input(2)
    res = rlprune.prune(model, digits, "params<=0.5,flops<=0.5", method="cpl", episodes=8,
                        seed=0, progress=False)
    pruned = res.model
    assert numel(pruned) <= 0.5 * numel(model)
    assert hook_macs(pruned, x) <= 0.5 * hook_macs(model, x)
    assert res.costs["flops"]["pruned"] == 2 * hook_macs(pruned, x)
    for block in pruned.blocks:  # every attention still splits evenly into its heads
        attn = block.attn
        assert 1 <= attn.num_heads <= 4
        assert attn.qkv.out_features == 3 * attn.proj.in_features
        assert attn.proj.in_features % attn.num_heads == 0
    info = export.export_onnx(pruned, x, tmp_path / "vit.onnx")
    assert info["ok"], info
    assert (tmp_path / "vit.onnx").stat().st_size > 0


# ------------------------------------------------------------------- definitions
def test_load_definition_from_a_file_a_module_and_an_instance() -> None:
    net = load_definition(f"{DEFS}:GroupedNet")
    assert type(net).__name__ == "GroupedNet" and net.stem.out_channels == 32
    assert load_definition(f"{DEFS}:wide").stem.out_channels == 48
    inst = load_definition(f"{DEFS}:INSTANCE")
    assert inst.stem.out_channels == 8 and inst is not load_definition(f"{DEFS}:INSTANCE")
    digits_cnn = load_definition("rlprune.models:digits_cnn")
    assert numel(digits_cnn) == numel(models.create("digits_cnn", 10, 1))


@pytest.mark.parametrize(("spec", "fragments"), [
    ("nocolon", ["must be 'package.module:factory'"]),
    ("{defs}:", ["must be 'package.module:factory'"]),
    ("missing_dir/net.py:Net", ["not found"]),
    ("{defs}:Nope", ["has no 'Nope'", "GroupedNet", "wide"]),
    ("{defs}:needs_arguments", ["cannot be called without arguments", "width"]),
    ("{defs}:broken", ["broken() failed", "RuntimeError", "the factory's own bug"]),
    ("{defs}:not_a_model", ["returned a int, not a torch.nn.Module"]),
    ("no_such_package_xyz.mod:f", ["cannot import 'no_such_package_xyz.mod'"]),
])
def test_load_definition_errors_say_what_is_wrong(spec: str, fragments: list[str]) -> None:
    with pytest.raises(ModelDefinitionError) as err:
        load_definition(spec.format(defs=DEFS))
    assert isinstance(err.value, ValueError)
    for f in fragments:
        assert f in str(err.value)


# ------------------------------------------------------------------------- CLI
def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlprune: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained GroupedNet's state dict, as a user saves it."""
    splits = data.load("digits")
    torch.manual_seed(0)
    net = load_definition(f"{DEFS}:GroupedNet")
    train.fit(net, splits, epochs=10, lr=0.2, progress=False)
    path = tmp_path_factory.mktemp("defs") / "sd.pt"
    torch.save(net.state_dict(), path)
    return path


def test_cli_prunes_a_model_definition_with_its_weights(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = cli.main(["prune", "--model-def", f"{DEFS}:GroupedNet", "--weights", str(weights),
                   "--data", "digits", "--budget", "params<=0.5", "--method", "cpl",
                   "--episodes", "6", "--finetune-epochs", "1", "--out", str(out),
                   "--quiet", "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["feasible"] and rep["costs"]["params"]["ratio"] <= 0.5
    assert rep["accuracy"]["original"] > 0.8  # the weights were loaded, not fresh ones
    assert [r["name"] for r in rep["left_out"]] == ["fc"]
    assert "## Layers left out" in (out / "report.md").read_text()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model_def"] == f"{DEFS}:GroupedNet" and cfg["weights"] == str(weights)
    pruned = rlprune.load(out / "pruned.pt")
    assert numel(pruned) <= 0.5 * numel(load_definition(f"{DEFS}:GroupedNet"))
    assert pruned.grouped.groups == 4 and pruned.gn.num_channels % 4 == 0
    assert rep["onnx"]["ok"]


def test_cli_prunes_a_model_definition_on_an_image_folder(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole user path at once: a folder of PNGs (one subfolder per class), the
    user's architecture and its state dict, pruned from the command line."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits-png"
    per_class = {c: 0 for c in range(10)}
    for img, label in zip(digits.images, digits.target):
        if per_class[int(label)] >= 30:
            continue
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(
            folder / f"{per_class[int(label)]:03d}.png")
        per_class[int(label)] += 1
    assert sum(per_class.values()) == 300
    out = tmp_path / "run"
    rc = cli.main(["prune", "--model-def", f"{DEFS}:GroupedNet", "--weights", str(weights),
                   "--data", f"folder:{root}?channels=1&test_fraction=0.2",
                   "--budget", "params<=0.5", "--method", "cpl", "--episodes", "4",
                   "--out", str(out), "--quiet", "--no-plots", "--no-onnx"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["feasible"] and rep["costs"]["params"]["ratio"] <= 0.5
    assert rep["data"].startswith("digits-png")
    pruned = rlprune.load(out / "pruned.pt")
    assert numel(pruned) <= 0.5 * numel(load_definition(f"{DEFS}:GroupedNet"))
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(("args", "fragments"), [
    (["--model-def", "{defs}:Nope", "--weights", "{w}"], ["has no 'Nope'"]),
    (["--model-def", "{defs}:GroupedNet"], ["--weights FILE"]),
    (["--weights", "{w}"], ["--model-def"]),
    (["--model-def", "{defs}:GroupedNet", "--weights", "{missing}"], ["no such file"]),
    (["--model-def", "{defs}:wide", "--weights", "{w}"],
     ["do not fit GroupedNet", "of another shape", "'stem.weight'"]),
    (["--model-def", "{defs}:GroupedNet", "--model", "digits_cnn", "--weights", "{w}"],
     ["not both"]),
])
def test_cli_model_definition_errors_are_one_line(
        args: list[str], fragments: list[str], weights: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(defs=DEFS, w=weights, missing=tmp_path / "nope.pt") for a in args]
    rc = cli.main(["prune", *argv, "--data", "digits", "--budget", "params<=0.5",
                   "--method", "uniform", "--quiet", "--no-plots", "--no-onnx"])
    assert rc == 2
    line = one_line_error(capsys)
    for f in fragments:
        assert f in line, line


def test_registry_model_with_weights_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    path = tmp_path / "digits_cnn.pt"
    torch.save(models.create("digits_cnn", 10, 1).state_dict(), path)
    rc = cli.main(["prune", "--model", "digits_cnn", "--weights", str(path), "--data",
                   "digits", "--budget", "params<=0.5", "--method", "uniform", "--quiet",
                   "--no-plots", "--no-onnx", "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    assert np.isfinite(json.loads((tmp_path / "run" / "report.json").read_text())
                       ["costs"]["params"]["ratio"])
