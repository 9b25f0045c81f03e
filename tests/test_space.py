"""Pruning spaces: every model, both granularities, counted independently of rlprune.costs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from rlprune import costs, models
from rlprune.space import FEATURE_NAMES, KINDS, PruningSpace

# Models too large for the fast suite's full check (marked slow); each still gets one
# quick check below, itself slow for the three deepest VGGs that add no new structure.
HEAVY = {"vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "mobilenetv2"}
QUICK_SLOW = {"vgg13", "vgg16", "vgg19"}


def input_for(name: str, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    if name == "digits_cnn":
        return torch.randn(batch, 1, 8, 8)
    if name in ("lenet5", "lenet300"):
        return torch.randn(batch, 1, 28, 28)
    return torch.randn(batch, 3, 32, 32)


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, 10, input_for(name).shape[1])


# ------------------------------------------------------- independent counters
def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of Conv/Linear calls at batch 1, counted from the actual output tensors."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.weight.shape[2] * m.weight.shape[3]
            total += out.numel() * m.weight.shape[1] * k  # weight.shape[1] = in / groups
        else:
            total += out.numel() * m.weight.shape[1]

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return total


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return sd.keys() == snap.keys() and all(
        sd[k].shape == snap[k].shape and torch.equal(sd[k], snap[k]) for k in sd
    )


# ------------------------------------------------------- every registered model
def model_params() -> list:
    out = []
    for name in models.list_models():
        marks = [pytest.mark.slow] if name in HEAVY else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("granularity", ["channel", "weight"])
@pytest.mark.parametrize("name", model_params())
def test_registered_model_random_policy(name: str, granularity: str) -> None:
    model = make(name)
    x = input_for(name)
    ref_out = model.eval()(x)
    snap = snapshot(model)
    space = PruningSpace.from_model(model, x, granularity=granularity)
    assert len(space) > 0
    policy = np.random.default_rng(1).uniform(0.0, 0.95, len(space))
    pruned = space.apply(model, policy)
    assert same_state(model, snap), "apply modified the input model"
    assert torch.equal(model.eval()(x), ref_out)
    out = pruned.eval()(x)
    assert out.shape == ref_out.shape
    assert torch.isfinite(out).all()
    # costs of the pruned model agree with counts made here, without rlprune.costs
    assert costs.count_params(pruned) == numel(pruned)
    assert costs.count_macs(pruned, x) == hook_macs(pruned, x)
    if granularity == "channel":
        assert numel(pruned) < numel(model)
        assert hook_macs(pruned, x) < hook_macs(model, x)
    else:
        assert numel(pruned) == numel(model)
        removed = space.removed(policy)
        zeros = sum(int((p == 0).sum()) for p in pruned.parameters())
        zeros_before = sum(int((p == 0).sum()) for p in model.parameters())
        assert zeros - zeros_before == int(removed.sum())


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in QUICK_SLOW else []) for n in sorted(HEAVY)],
)
def test_heavy_models_quick_channel_check(name: str) -> None:
    """One fast check per heavy model: the most aggressive policy still runs."""
    model = make(name)
    x = input_for(name, batch=1)
    space = PruningSpace.from_model(model, x)
    pruned = space.apply(model, space.max_policy())
    assert pruned.eval()(x).shape == (1, 10)
    assert numel(pruned) < numel(model) / 10


def test_space_on_digits_cnn_features_and_entries() -> None:
    model = make("digits_cnn")
    x = input_for("digits_cnn")
    space = PruningSpace.from_model(model, x)
    assert [e.name for e in space.entries] == ["features.0", "features.3", "features.7"]
    assert [e.prunable for e in space.entries] == [16, 32, 64]
    assert [e.in_width for e in space.entries] == [1, 16, 32]
    e0 = space.entries[0]
    assert e0.kind == "conv" and e0.kernel == 3 and e0.stride == 1
    assert e0.params == 16 * 9 + 2 * 16  # conv weight + BN affine
    assert e0.macs == 64 * 16 * 9
    assert e0.max_ratio == pytest.approx(15 / 16)
    f = space.features()
    assert f.shape == (3, len(FEATURE_NAMES)) and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1
    assert np.allclose(f[:, 0], [0, 0.5, 1])
    assert np.allclose(f[:, 3], [0, 16 / 48, 1])  # out width min-max normalised
    assert np.all(f[:, 1] == KINDS.index("conv") / (len(KINDS) - 1))


def test_channel_widths_follow_policy_and_describe() -> None:
    model = make("digits_cnn")
    x = input_for("digits_cnn")
    space = PruningSpace.from_model(model, x)
    policy = [0.5, 0.25, 0.99]
    pruned = space.apply(model, policy)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 24, 1]
    assert pruned.fc.in_features == 1 and pruned.fc.out_features == 10
    rows = space.describe(model, policy)
    assert [(r["before"], r["after"]) for r in rows] == [(16, 8), (32, 24), (64, 1)]
    assert rows[0]["name"] == "features.0" and rows[0]["ratio"] == 0.5
    assert list(space.kept(policy)) == [8, 24, 1]


def test_weight_granularity_zero_fraction_and_magnitude_order() -> None:
    model = make("lenet5")
    x = input_for("lenet5")
    space = PruningSpace.from_model(model, x, granularity="weight")
    assert [e.name for e in space.entries] == ["conv1", "conv2", "fc1", "fc2"]
    assert space.entries[-1].prunable == 5000  # the classifier's weights are prunable
    policy = np.array([0.1, 0.5, 0.9, 0.3])
    pruned = space.apply(model, policy)
    assert not any(True for _ in pruned._forward_hooks.values())
    for e, r in zip(space.entries, policy):
        w = dict(pruned.named_parameters())[e.param_name]
        orig = dict(model.named_parameters())[e.param_name]
        assert w.shape == orig.shape
        zero = w == 0
        assert int(zero.sum()) == int(np.floor(r * w.numel()))
        # l1: every zeroed weight was no larger than every kept one
        assert orig[zero].abs().max() <= orig[~zero].abs().min()
    rows = space.describe(model, policy)
    for row, e in zip(rows, space.entries):
        w = dict(pruned.named_parameters())[e.param_name]
        assert row["after"] == int(torch.count_nonzero(w))
        assert row["before"] == e.prunable
    assert costs.count_nonzero(pruned) < costs.count_nonzero(model)


# ------------------------------------------------------------ user models
class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.b(F.relu(self.a(x))))
        return self.head(x.mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(F.relu(self.dw(F.relu(self.bn(self.expand(x))))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.c2 = nn.Conv2d(14, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.head = nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.c1(x))], 1)
        x = torch.cat([x, F.relu(self.c2(x))], 1)
        return self.head(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class ViewFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3)
        self.c2 = nn.Conv2d(6, 10, 3)
        self.fc1 = nn.Linear(10 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(F.relu(self.c1(x))))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                         nn.Linear(8, 4))


USER_MODELS = {
    "residual": (Residual, (2, 3, 8, 8)),
    "depthwise": (Depthwise, (2, 3, 8, 8)),
    "densecat": (DenseCat, (2, 3, 8, 8)),
    "viewflatten": (ViewFlatten, (2, 1, 8, 8)),
    "mlp": (mlp, (2, 1, 4, 4)),
}


@pytest.mark.parametrize("granularity", ["channel", "weight"])
@pytest.mark.parametrize("key", list(USER_MODELS))
def test_user_models_run_after_pruning(key: str, granularity: str) -> None:
    factory, shape = USER_MODELS[key]
    torch.manual_seed(0)
    model, x = factory(), torch.randn(*shape)
    snap = snapshot(model)
    space = PruningSpace.from_model(model, x, granularity=granularity)
    for policy in (space.max_policy(), np.random.default_rng(0).uniform(0, 0.9, len(space))):
        pruned = space.apply(model, policy)
        assert pruned.eval()(x).shape == (2, 4)
        assert costs.count_macs(pruned, x) == hook_macs(pruned, x)
        assert costs.count_params(pruned) == numel(pruned)
    assert same_state(model, snap)


def test_residual_channels_are_coupled() -> None:
    torch.manual_seed(0)
    model, x = Residual(), torch.randn(2, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    # stem and b feed the same addition: one group; a is its own group
    assert len(space) == 2
    group = next(e for e in space.entries if "stem" in e.modules)
    assert {"stem", "b", "a", "head"} <= set(group.modules)
    policy = np.where([e is group for e in space.entries], 0.5, 0.0)
    pruned = space.apply(model, policy)
    assert pruned.stem.out_channels == pruned.b.out_channels == 4
    assert pruned.a.in_channels == pruned.head.in_features == 4
    assert pruned.head.out_features == 4


def test_depthwise_coupled_with_expansion() -> None:
    torch.manual_seed(0)
    model, x = Depthwise(), torch.randn(2, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    group = next(e for e in space.entries if "dw" in e.modules)
    assert group.kind == "depthwise" and group.name == "expand"
    pruned = space.apply(model, [0.5 if e is group else 0.0 for e in space.entries])
    assert pruned.expand.out_channels == pruned.bn.num_features == 6
    assert pruned.dw.in_channels == pruned.dw.out_channels == pruned.dw.groups == 6
    assert pruned.project.in_channels == 6


def test_concat_groups_map_into_consumers() -> None:
    torch.manual_seed(0)
    model, x = DenseCat(), torch.randn(2, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    assert [e.name for e in space.entries] == ["stem", "c1", "c2"]
    pruned = space.apply(model, [0.5, 0.5, 0.5])
    widths = (pruned.stem.out_channels, pruned.c1.out_channels, pruned.c2.out_channels)
    assert widths == (4, 3, 3)
    assert pruned.c2.in_channels == 4 + 3
    assert pruned.bn.num_features == pruned.head.in_features == 4 + 3 + 3
    assert pruned.eval()(x).shape == (2, 4)


def test_view_flatten_linear_inputs_follow_conv_channels() -> None:
    torch.manual_seed(0)
    model, x = ViewFlatten(), torch.randn(2, 1, 8, 8)
    space = PruningSpace.from_model(model, x)
    assert [e.name for e in space.entries] == ["c1", "c2", "fc1"]
    pruned = space.apply(model, [0.0, 0.7, 0.0])
    assert pruned.c2.out_channels == 3
    assert pruned.fc1.in_features == 3 * 16
    # the kept inputs of fc1 are exactly the 16 positions of each kept channel
    kept = [c for c in range(10) if any(
        torch.equal(model.c2.weight[c], w) for w in pruned.c2.weight)]
    cols = torch.cat([torch.arange(c * 16, c * 16 + 16) for c in kept])
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[:, cols])


def test_grouped_conv_groups_are_pruned_evenly_and_model_runs() -> None:
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.c3 = nn.Conv2d(8, 12, 1)
            self.head = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.c3(F.relu(self.g(F.relu(self.c1(x))))))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    model, x = Grouped(), torch.randn(2, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    # c1's outputs are g's grouped inputs, g's outputs its grouped outputs: both are
    # pruned one channel position per group (unit 2), c3 channel by channel
    assert [(e.name, e.unit) for e in space.entries] == [("c1", 2), ("g", 2), ("c3", 1)]
    pruned = space.apply(model, space.max_policy())
    assert pruned.g.groups == 2 and pruned.g.in_channels == pruned.g.out_channels == 2
    assert pruned.eval()(x).shape == (2, 4)
    # an odd count is rounded so that both groups keep the same width
    pruned = space.apply(model, [0.3, 0.5, 0.0])
    assert (pruned.c1.out_channels, pruned.g.in_channels, pruned.g.out_channels) == (6, 6, 4)


def test_round_to_and_ignored_layers() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    space = PruningSpace.from_model(model, x, round_to=8)
    assert [e.min_keep for e in space.entries] == [8, 8, 8]
    kept = space.kept([0.3, 0.3, 0.3])
    assert all(k % 8 == 0 for k in kept)
    assert list(kept) == [16, 24, 48]
    pruned = space.apply(model, space.max_policy())
    assert [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 8]
    ignored = PruningSpace.from_model(model, x, ignored_layers=["features.3"])
    assert [e.name for e in ignored.entries] == ["features.0", "features.7"]
    by_module = PruningSpace.from_model(model, x, ignored_layers=[model.features[0]])
    assert [e.name for e in by_module.entries] == ["features.3", "features.7"]
    with pytest.raises(ValueError, match="not a module name"):
        PruningSpace.from_model(model, x, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="round_to"):
        PruningSpace.from_model(model, x, round_to=0)


# ------------------------------------------------------------ importance
def kept_rows(pruned: nn.Module) -> list[set[int]]:
    return [
        {int(v) for v in m.weight.detach().flatten(1).sum(1).mul(1e4).round()}
        for m in pruned.modules() if isinstance(m, nn.Conv2d)
    ]


def test_importance_criteria_differ_and_are_valid() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn", batch=16)
    torch.manual_seed(1)
    with torch.no_grad():  # distinct BN scales so that bn_scale has something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 2.0)
    data = (x, torch.randint(0, 10, (16,)))
    policy = [0.5, 0.5, 0.5]
    kept = {}
    for crit in ["l1", "l2", "random", "taylor", "bn_scale"]:
        space = PruningSpace.from_model(model, x, importance=crit, data=data)
        pruned = space.apply(model, policy)
        assert pruned.eval()(x).shape == (16, 10)
        assert [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 32]
        kept[crit] = kept_rows(pruned)
    for a, b in [("l1", "random"), ("l1", "taylor"), ("l1", "bn_scale"), ("taylor", "random"),
                 ("bn_scale", "random")]:
        assert kept[a] != kept[b], (a, b)
    # random is seeded
    again = PruningSpace.from_model(model, x, importance="random").apply(model, policy)
    assert kept_rows(again) == kept["random"]
    other = PruningSpace.from_model(model, x, importance="random", seed=5).apply(model, policy)
    assert kept_rows(other) != kept["random"]


def test_l1_and_l2_rank_channels_differently() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [3.0, 0, 0, 0]]))
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
    x = torch.randn(2, 4)
    l1 = PruningSpace.from_model(model, x, importance="l1").apply(model, [0.5])
    l2 = PruningSpace.from_model(model, x, importance="l2").apply(model, [0.5])
    assert torch.equal(l1[0].weight, torch.tensor([[1.0, 1, 1, 1]]))  # |w|: 4 > 3
    assert torch.equal(l2[0].weight, torch.tensor([[3.0, 0, 0, 0]]))  # w^2: 9 > 4


def test_weight_importance_random_and_taylor_differ_from_l1() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn", batch=8)
    data = (x, torch.randint(0, 10, (8,)))
    zeros = {}
    for crit in ["l1", "random", "taylor"]:
        space = PruningSpace.from_model(model, x, granularity="weight", importance=crit, data=data)
        pruned = space.apply(model, [0.5] * len(space))
        zeros[crit] = pruned.features[3].weight == 0
        assert int(zeros[crit].sum()) == pruned.features[3].weight.numel() // 2
    assert not torch.equal(zeros["l1"], zeros["random"])
    assert not torch.equal(zeros["l1"], zeros["taylor"])


def test_importance_errors() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    with pytest.raises(ValueError, match="taylor.*needs data"):
        PruningSpace.from_model(model, x, importance="taylor")
    with pytest.raises(ValueError, match="bn_scale.*channel"):
        PruningSpace.from_model(model, x, granularity="weight", importance="bn_scale")
    with pytest.raises(ValueError, match="bn_scale.*normalisation"):
        PruningSpace.from_model(mlp(), torch.randn(2, 1, 4, 4), importance="bn_scale")
    with pytest.raises(ValueError, match="unknown importance 'l3'"):
        PruningSpace.from_model(model, x, importance="l3")
    with pytest.raises(ValueError, match="unknown granularity 'filter'"):
        PruningSpace.from_model(model, x, granularity="filter")
    with pytest.raises(ValueError, match="data=\\(x, y\\)"):
        PruningSpace.from_model(model, x, importance="taylor", data=(x, torch.zeros(3)))


# ------------------------------------------------------------ bad inputs
def test_nothing_prunable() -> None:
    only_classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="nothing to prune.*classifier"):
        PruningSpace.from_model(only_classifier, x)
    # weight pruning of the classifier's weights is allowed
    assert len(PruningSpace.from_model(only_classifier, x, granularity="weight")) == 1
    no_layers = nn.Sequential(nn.Flatten(), nn.ReLU())
    for g in ["channel", "weight"]:
        with pytest.raises(ValueError, match="nothing to prune"):
            PruningSpace.from_model(no_layers, x, granularity=g)


def test_nan_weights_named() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'features.3.weight'.*NaN"):
        PruningSpace.from_model(model, x)
    model2 = make("digits_cnn")
    with torch.no_grad():
        model2.fc.bias[0] = float("inf")
    with pytest.raises(ValueError, match="'fc.bias'"):
        PruningSpace.from_model(model2, x, granularity="weight")


def test_policy_validation() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    space = PruningSpace.from_model(model, x)
    with pytest.raises(ValueError, match="3 entries"):
        space.apply(model, [0.1, 0.2])
    for bad in ([0.1, 1.0, 0.2], [0.1, -0.1, 0.2], [0.1, float("nan"), 0.2]):
        with pytest.raises(ValueError, match=r"policy\[1\].*outside \[0, 1\)"):
            space.apply(model, bad)
    with pytest.raises(ValueError, match="sequence of numbers"):
        space.apply(model, ["a", "b", "c"])
    with pytest.raises(ValueError, match="does not match this pruning space"):
        space.apply(make("lenet5"), [0.1, 0.1, 0.1])
    pruned = space.apply(model, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="does not match"):
        space.apply(pruned, [0.1, 0.1, 0.1])


def test_apply_keeps_training_mode_and_builds_quietly() -> None:
    model, x = make("resnet20"), input_for("resnet20")
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space = PruningSpace.from_model(model, x)
    assert model.training  # tracing did not switch the user's model to eval
    pruned = space.apply(model, [0.3] * len(space))
    assert pruned.training
    assert len(space) == 12 and repr(space).startswith("PruningSpace(")


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_pruned_copy_shares_no_tensor_with_the_input(granularity: str) -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    snap = snapshot(model)
    space = PruningSpace.from_model(model, x, granularity=granularity)
    for policy in (np.zeros(len(space)), np.full(len(space), 0.5)):
        pruned = space.apply(model, policy)
        with torch.no_grad():
            for t in list(pruned.parameters()) + list(pruned.buffers()):
                t.add_(1)
        assert same_state(model, snap)


def test_tied_weights_stay_tied_and_are_one_entry() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight
            self.head = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    model, x = Tied(), torch.randn(2, 6)
    space = PruningSpace.from_model(model, x, granularity="weight")
    assert [e.name for e in space.entries] == ["a", "head"]
    pruned = space.apply(model, [0.5, 0.0])
    assert pruned.a.weight is pruned.b.weight
    assert pruned.a.weight is not model.a.weight
    assert int((pruned.b.weight == 0).sum()) == 18


def test_global_scores_share_one_scale() -> None:
    model, x = make("digits_cnn"), input_for("digits_cnn")
    space = PruningSpace.from_model(model, x)
    scores = space.global_scores()
    assert [len(s) for s in scores] == [16, 32, 64]
    # the default ranks channel groups as Torch-Pruning does, mean-normalised per group
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    group = dg.get_pruning_group(model.features[0], tp.prune_conv_out_channels, list(range(16)))
    expected = tp.importance.GroupMagnitudeImportance(p=2)(group).double().numpy()
    assert np.allclose(scores[0], expected) and all(np.isclose(s.mean(), 1.0) for s in scores)
    l1 = PruningSpace.from_model(model, x, importance="l1").global_scores()
    expected = tp.importance.GroupMagnitudeImportance(p=1)(group).double().numpy()
    assert np.allclose(l1[0], expected) and not np.allclose(l1[0], scores[0])
    torch.manual_seed(3)
    with torch.no_grad():
        model.features[4].weight.uniform_(0.1, 2.0)
    bn = PruningSpace.from_model(model, x, importance="bn_scale").global_scores()
    assert np.allclose(bn[1], model.features[4].weight.detach().abs().numpy())
    weights = PruningSpace.from_model(model, x, granularity="weight",
                                      importance="l1").global_scores()
    assert np.allclose(weights[1], model.features[3].weight.detach().abs().flatten().numpy())
    scores[0][:] = -1  # a copy: the space's own scores are unchanged
    assert space.global_scores()[0].min() >= 0
