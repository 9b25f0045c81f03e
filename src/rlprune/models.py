"""Model registry: the networks the benchmarks and the papers use, defined here.

torchvision is not importable on every machine (there is no CPU build for every
torch), so the project defines its own CIFAR-style networks. Any user
``nn.Module`` works with the rest of rlprune without registration; the registry
only exists so that checkpoints, configs and the CLI can name an architecture.

Usage::

    from rlprune import models
    net = models.create("resnet20", num_classes=10, in_channels=3)
    models.list_models()

Register your own with the decorator::

    @models.register("mynet")
    def mynet(num_classes: int = 10, in_channels: int = 3) -> nn.Module: ...
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

__all__ = ["create", "list_models", "register", "arch_spec", "load_definition",
           "ModelDefinitionError"]

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}

#: Attribute set on every model built by :func:`create`; checkpoints store it so that
#: the architecture can be rebuilt by name.
ARCH_ATTR = "_rlprune_arch"


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that adds a factory ``f(num_classes, in_channels, **kw) -> nn.Module``.

    ``name`` is the architecture's name in the registry (case-insensitive), as
    :func:`create`, checkpoints and the ``--model`` flag use it; a name already taken is
    a ``ValueError``.
    """

    def deco(fn: ModelFactory) -> ModelFactory:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    ``name`` is a registered architecture (:func:`list_models`), ``num_classes`` the
    size of its output and ``in_channels`` of its input; ``kwargs`` go to the factory.
    Raises ``ValueError`` naming the known models when ``name`` is unknown.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    model = _REGISTRY[key](num_classes=num_classes, in_channels=in_channels, **kwargs)
    setattr(
        model,
        ARCH_ATTR,
        {"name": key, "num_classes": num_classes, "in_channels": in_channels, **kwargs},
    )
    return model


def arch_spec(model: nn.Module) -> dict[str, Any] | None:
    """The registry spec a model was built from (``None`` for user models)."""
    spec = getattr(model, ARCH_ATTR, None)
    return dict(spec) if spec is not None else None


class ModelDefinitionError(ValueError):
    """A ``--model-def`` that cannot be turned into a model; the message says why."""


def _import_file(path: Path, spec: str) -> ModuleType:
    """Import the Python file ``path`` as a module named after its stem.

    The module is registered in ``sys.modules`` under that name, so that the classes it
    defines can be pickled (``pruned.pt``); loading such a pickle later needs the file's
    folder on ``PYTHONPATH``.
    """
    if not path.is_file():
        raise ModelDefinitionError(f"--model-def {spec}: file {path} not found")
    name = path.stem
    if not name.isidentifier():
        raise ModelDefinitionError(f"--model-def {spec}: {path.name} is not a valid Python "
                                   "module name; rename the file (letters, digits, _)")
    resolved = path.resolve()
    known = sys.modules.get(name)
    if known is not None:
        known_file = getattr(known, "__file__", None)
        if known_file and Path(known_file).resolve() == resolved:
            return known
        raise ModelDefinitionError(
            f"--model-def {spec}: the file name {path.name} clashes with the module {name!r} "
            "that is already imported; rename the file")
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelDefinitionError(f"--model-def {spec}: cannot import {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ModelDefinitionError(
            f"--model-def {spec}: importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(module_name: str, spec: str) -> ModuleType:
    """Import ``module_name`` as ``python -m`` would: installed packages, then the
    current folder (added to ``sys.path`` only when the module is found there)."""
    cwd = os.getcwd()
    for attempt in (1, 2):
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            top = module_name.split(".")[0]
            if attempt == 1 and e.name == top and cwd not in sys.path and "" not in sys.path:
                sys.path.insert(0, cwd)  # not found installed: try the current folder
                continue
            if attempt == 2:
                sys.path.remove(cwd)
            raise ModelDefinitionError(
                f"--model-def {spec}: cannot import {module_name!r} (neither installed nor in "
                f"the current folder): {e}") from e
        except Exception as e:
            raise ModelDefinitionError(f"--model-def {spec}: importing {module_name!r} "
                                       f"failed: {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")  # pragma: no cover


def load_definition(spec: str) -> nn.Module:
    """Build a user's model from ``spec``: ``"package.module:factory"`` or
    ``"path/to/file.py:Name"`` (``rlprune prune --model-def``).

    The module (found like ``python -m`` finds it: installed packages, then the current
    folder) or the file is imported, and ``Name`` is called without arguments: a class
    (``MyNet``) or a function returning an ``nn.Module``; a module-level ``nn.Module``
    instance is used as it is. The model comes back with fresh weights: load trained
    ones with :func:`rlprune.train.load_checkpoint` (``--weights``). Importing runs the
    file's code, as any import does.

    Raises :class:`ModelDefinitionError` (a ``ValueError``) with one line that names
    the problem: a malformed ``spec``, a missing file or module, an import that fails,
    a missing name (listing what the module defines), a factory that needs arguments or
    fails, or one that does not return an ``nn.Module``.
    """
    text = str(spec)
    path_part, sep, attr = text.rpartition(":")
    if not sep or not path_part or not attr or not attr.isidentifier():
        raise ModelDefinitionError(
            f"--model-def {text!r} must be 'package.module:factory' or 'path/to/file.py:Name' "
            "(a class or function that builds the model without arguments)")
    if path_part.endswith(".py") or os.sep in path_part or "/" in path_part:
        module = _import_file(Path(path_part).expanduser(), text)
    else:
        module = _import_module(path_part, text)
    if not hasattr(module, attr):
        defined = sorted(n for n, v in vars(module).items() if not n.startswith("_")
                         and (isinstance(v, type) and issubclass(v, nn.Module)
                              or inspect.isfunction(v) and v.__module__ == module.__name__))
        raise ModelDefinitionError(
            f"--model-def {text}: {path_part} has no {attr!r}; it defines "
            + (", ".join(defined) if defined else "no nn.Module class or function"))
    factory = getattr(module, attr)
    if isinstance(factory, nn.Module):
        return copy.deepcopy(factory)
    if not callable(factory):
        raise ModelDefinitionError(f"--model-def {text}: {attr} is a "
                                   f"{type(factory).__name__}, not a class or function")
    try:
        inspect.signature(factory).bind()
    except TypeError as e:
        raise ModelDefinitionError(
            f"--model-def {text}: {attr} cannot be called without arguments ({e}); give a "
            "function that builds the model with every argument fixed") from e
    except ValueError:
        pass  # no signature to inspect (a builtin): just call it
    try:
        model = factory()
    except Exception as e:
        raise ModelDefinitionError(f"--model-def {text}: {attr}() failed: "
                                   f"{type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelDefinitionError(f"--model-def {text}: {attr}() returned a "
                                   f"{type(model).__name__}, not a torch.nn.Module")
    return model


# --------------------------------------------------------------------------- VGG
_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with batch norm and a single ``Linear(512, classes)`` head."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg_factory(name: str) -> ModelFactory:
    def f(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return VGG(_VGG_CFG[name], num_classes, in_channels)

    f.__doc__ = f"CIFAR {name.upper()} with batch norm."
    return f


for _name in _VGG_CFG:
    register(_name)(_vgg_factory(_name))


# ------------------------------------------------------------------ CIFAR ResNet
class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; 1x1 conv + BN shortcut when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-{6n+2} for 32x32 inputs (He et al. 2016, section 4.2): 16/32/64 channels."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


for _depth in (20, 32, 56):
    def _f(num_classes: int = 10, in_channels: int = 3, _d: int = _depth) -> nn.Module:
        return CifarResNet(_d, num_classes, in_channels)

    _f.__doc__ = f"CIFAR ResNet-{_depth}."
    register(f"resnet{_depth}")(_f)


class ResNet18(nn.Module):
    """ResNet-18 adapted to 32x32 inputs: 3x3 stem, no max-pool, 64-512 channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (11.2M parameters)."""
    return ResNet18(num_classes, in_channels)


# ------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs: stride-1 stem and first stages (2.2M parameters)."""

    # (expansion, out channels, repeats, stride); strides adapted to CIFAR.
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        cin = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                   nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR MobileNetV2 with depthwise convolutions."""
    return MobileNetV2(num_classes, in_channels)


# ------------------------------------------------------------------------- LeNets
class LeNet5(nn.Module):
    """LeNet-5 as in Caffe and Han et al. 2015: conv 20, conv 50, fc 500 (431k parameters).

    An adaptive pool before the classifier makes it accept 28x28 (MNIST, where it is
    the identity) as well as 32x32 inputs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.squeeze = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = torch.flatten(self.squeeze(x), 1)
        return self.fc2(self.relu(self.fc1(x)))


@register("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Caffe LeNet-5 (20-50-500), the network of Han et al. 2015."""
    return LeNet5(num_classes, in_channels)


class LeNet300(nn.Module):
    """LeNet-300-100: an MLP 784-300-100-classes (266k parameters for MNIST)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * input_size * input_size, 300), nn.ReLU(inplace=True),
            nn.Linear(300, 100), nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("lenet300")
def lenet300(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-300-100 MLP; ``input_size`` is the side of the square input image."""
    return LeNet300(num_classes, in_channels, input_size)


class DigitsCNN(nn.Module):
    """A small CNN for sklearn's 8x8 digits: 16-32-64 channels, about 24k parameters."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register("digits_cnn")
def digits_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Small CNN for 8x8 inputs, the default of the demo and most tests."""
    return DigitsCNN(num_classes, in_channels)


# ------------------------------------------------------------------------ ResNeXt
class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 conv, grouped 3x3 conv (``cardinality`` groups), 1x1 conv,
    each followed by batch norm, with a residual (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, width: int, cout: int, cardinality: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNeXt11(nn.Module):
    """A small ResNeXt: a 3x3 stem and three bottleneck blocks of cardinality 4.

    Widths 64/128/256 (strides 1, 2, 2), so the grouped 3x3 convolutions hold over half
    of the 0.38M parameters: the structure of ResNeXt and RegNet, small enough for a
    CPU. A global pool before the classifier makes it accept any input size.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, cardinality: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        blocks, cin = [], 32
        for i, width in enumerate((64, 128, 256)):
            blocks.append(ResNeXtBlock(cin, width, width, cardinality, 1 if i == 0 else 2))
            cin = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("resnext11")
def resnext11(num_classes: int = 10, in_channels: int = 3, cardinality: int = 4) -> nn.Module:
    """Small ResNeXt with grouped 3x3 convolutions (``cardinality`` groups, default 4)."""
    return ResNeXt11(num_classes, in_channels, cardinality)


# ---------------------------------------------------------------- vision transformer
class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (timm's layout).

    The forward pass reshapes by ``num_heads`` and infers the head width, so whole heads
    can be pruned: rlprune removes a head's query, key and value slices from ``qkv`` and
    its inputs to ``proj``, and lowers ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """A small ViT for CPU: a convolutional tokenizer pooled to a ``grid`` x ``grid``
    token map, a class token, learned position embeddings, ``depth`` pre-norm blocks.

    The tokenizer (3x3 conv, batch norm, ReLU, adaptive max pool; as in the Compact
    Convolutional Transformers of Hassani et al. 2021, which train from scratch on small
    data sets) lets one model accept 8x8 digits, 28x28 MNIST and 32x32 CIFAR images,
    each pooled to the same ``grid``; the classifier reads the class token. SGD trains
    it to 92-96% test accuracy on digits in 30 epochs (a linear patch embedding with an
    average pool instead: 79-85%), and to 95% on MNIST in 2 epochs.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dim: int = 64,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: int = 2, grid: int = 4):
        super().__init__()
        self.patch = nn.Sequential(nn.Conv2d(in_channels, dim, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveMaxPool2d(grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, dim * mlp_ratio)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.patch(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register("vit_tiny")
def vit_tiny(num_classes: int = 10, in_channels: int = 3, dim: int = 64, depth: int = 4,
             num_heads: int = 4, mlp_ratio: int = 2, grid: int = 4) -> nn.Module:
    """Small vision transformer (0.14M parameters): ``dim``-wide tokens on a ``grid`` x
    ``grid`` map, ``depth`` blocks of ``num_heads`` heads and MLPs ``mlp_ratio`` x wider."""
    return VisionTransformer(num_classes, in_channels, dim, depth, num_heads, mlp_ratio, grid)


def _init(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) init of every Conv2d, BatchNorm2d weight 1 and bias 0.

    Linear layers (and conv biases) keep PyTorch's default initialisation.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
