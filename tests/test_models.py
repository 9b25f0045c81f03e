"""The model registry: shapes, literature parameter counts, names and specs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rlprune import models

# name -> (input shape (C, H, W), literature parameter count, relative tolerance)
LITERATURE: dict[str, tuple[tuple[int, int, int], int, float]] = {
    "resnet20": ((3, 32, 32), 270_000, 0.02),
    "resnet32": ((3, 32, 32), 460_000, 0.02),
    "resnet56": ((3, 32, 32), 850_000, 0.02),
    "resnet18": ((3, 32, 32), 11_170_000, 0.01),
    "vgg11": ((3, 32, 32), 9_230_000, 0.01),
    "vgg13": ((3, 32, 32), 9_410_000, 0.01),
    "vgg16": ((3, 32, 32), 14_720_000, 0.01),
    "vgg19": ((3, 32, 32), 20_040_000, 0.01),
    "mobilenetv2": ((3, 32, 32), 2_240_000, 0.01),
    "lenet5": ((1, 28, 28), 431_080, 0.0),  # Caffe LeNet-5 of Han et al. 2015, exact
    "lenet300": ((1, 28, 28), 266_610, 0.0),  # 784-300-100-10, exact
    "digits_cnn": ((1, 8, 8), 24_058, 0.05),  # "about 24k" in its docstring
    "resnext11": ((3, 32, 32), 380_000, 0.02),  # "0.38M" in its docstring
    "vit_tiny": ((3, 32, 32), 140_000, 0.02),  # "0.14M" in its docstring
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_is_covered() -> None:
    assert set(LITERATURE) <= set(models.list_models())
    assert models.list_models() == sorted(models.list_models())


@pytest.mark.parametrize("name", sorted(LITERATURE))
def test_forward_shape_and_literature_param_count(name: str) -> None:
    shape, expected, tol = LITERATURE[name]
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=shape[0]).eval()
    count = n_params(model)
    if tol == 0.0:
        assert count == expected
    else:
        assert count == pytest.approx(expected, rel=tol)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(LITERATURE))
def test_num_classes_and_in_channels_are_honoured(name: str) -> None:
    shape, _, _ = LITERATURE[name]
    in_ch = 2 if shape[0] == 3 else 3  # anything but the default
    model = models.create(name, num_classes=7, in_channels=in_ch).eval()
    # ResNets and MobileNetV2 end in a global pool: a 16x16 input keeps this test cheap
    hw = (16, 16) if name.startswith(("resnet", "mobilenet")) else shape[1:]
    with torch.no_grad():
        out = model(torch.randn(2, in_ch, *hw))
    assert out.shape == (2, 7)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == in_ch
    else:  # lenet300 flattens the image
        assert first.in_features == in_ch * shape[1] * shape[2]
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7
    # the wrong number of channels is rejected by the first layer
    with pytest.raises(RuntimeError), torch.no_grad():
        model(torch.randn(2, in_ch + 1, *hw))


def test_lenet5_also_accepts_32x32() -> None:
    model = models.create("lenet5", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_lenet300_input_size() -> None:
    model = models.create("lenet300", num_classes=10, in_channels=3, input_size=32)
    assert n_params(model) == 3 * 32 * 32 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.arch_spec(model)["input_size"] == 32


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ValueError, match="nosuchnet") as info:
        models.create("nosuchnet")
    message = str(info.value)
    for name in models.list_models():
        assert name in message


def test_names_are_case_insensitive() -> None:
    model = models.create("ResNet20")
    assert models.arch_spec(model)["name"] == "resnet20"


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": 0}])
def test_invalid_sizes_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        models.create("digits_cnn", **kwargs)


def test_register_adds_and_duplicate_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # work on a copy of the registry so that nothing leaks into other tests
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @models.register("tiny_test_net")
    def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4, num_classes))

    assert "tiny_test_net" in models.list_models()
    net = models.create("tiny_test_net", num_classes=3, in_channels=1)
    assert net(torch.randn(5, 1, 2, 2)).shape == (5, 3)
    assert models.arch_spec(net) == {"name": "tiny_test_net", "num_classes": 3, "in_channels": 1}

    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_test_net")(tiny)
    with pytest.raises(ValueError, match="already registered"):
        models.register("RESNET20")(tiny)  # names are case-insensitive


@pytest.mark.parametrize("name", ["resnet20", "lenet300", "digits_cnn", "mobilenetv2"])
def test_arch_spec_round_trip(name: str) -> None:
    model = models.create(name, num_classes=5, in_channels=1)
    spec = models.arch_spec(model)
    assert spec is not None
    assert spec["name"] == name
    assert spec["num_classes"] == 5
    assert spec["in_channels"] == 1
    rebuilt = models.create(**spec)
    assert models.arch_spec(rebuilt) == spec
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    # the spec survives a deepcopy and is returned as a copy
    assert models.arch_spec(copy.deepcopy(model)) == spec
    spec["num_classes"] = 99
    assert models.arch_spec(model)["num_classes"] == 5


def test_arch_spec_of_user_model_is_none() -> None:
    assert models.arch_spec(nn.Linear(3, 2)) is None
