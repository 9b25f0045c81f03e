"""Grouped convolutions, GroupNorm, attention heads and the layers a space leaves out.

Every pruning here is checked against what removing channels *means*: the pruned model
must compute what the original computes when the removed channels' consumers read
zeros instead (exactly, up to float rounding), and grouped layers must stay valid
(equal groups, the same channel positions kept in each).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlprune import models
from rlprune.space import PruningSpace


def kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of ``original``'s rows (dim 0) that survive in ``pruned``, in order."""
    out = []
    for row in pruned:
        hits = [i for i, r in enumerate(original) if torch.equal(r, row)]
        assert len(hits) == 1, "a pruned row is not a unique row of the original"
        out.append(hits[0])
    return out


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------ grouped convs
class GroupedChain(nn.Module):
    """c1 -> grouped conv (2 groups) -> c3: no norm, so zeroing is exactly removing."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c3(F.relu(self.g(F.relu(self.c1(x))))))
        return self.head(x.mean((2, 3)))


def test_grouped_conv_inputs_pruned_evenly_equal_zeroed_inputs() -> None:
    torch.manual_seed(0)
    model, x = GroupedChain(), torch.randn(3, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    assert [(e.name, e.unit, e.unit_kind) for e in space.entries] == [
        ("c1", 2, "grouped"), ("g", 2, "grouped"), ("c3", 1, "channel")]
    pruned = space.apply(model, [0.5, 0.0, 0.0])
    assert (pruned.g.in_channels, pruned.g.groups, pruned.g.weight.shape[1]) == (4, 2, 2)
    kept = kept_rows(model.c1.weight, pruned.c1.weight)
    # the same positions in both groups of 4 inputs
    assert sorted(k % 4 for k in kept if k < 4) == sorted(k % 4 for k in kept if k >= 4)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for c in set(range(8)) - set(kept):  # c1's removed channel feeds g through zeros
            zeroed.c1.weight[c] = 0
            zeroed.c1.bias[c] = 0
    assert torch.allclose(run(pruned, x), run(zeroed, x), atol=1e-5)
    assert not torch.allclose(run(pruned, x), run(model, x), atol=1e-3)


def test_grouped_conv_outputs_pruned_evenly_equal_zeroed_filters() -> None:
    torch.manual_seed(0)
    model, x = GroupedChain(), torch.randn(3, 3, 8, 8)
    space = PruningSpace.from_model(model, x)
    pruned = space.apply(model, [0.0, 0.5, 0.0])
    assert (pruned.g.out_channels, pruned.g.groups, pruned.c3.in_channels) == (6, 2, 6)
    kept = kept_rows(model.g.weight, pruned.g.weight)
    assert sum(k < 6 for k in kept) == sum(k >= 6 for k in kept) == 3
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for c in set(range(12)) - set(kept):
            zeroed.g.weight[c] = 0
            zeroed.g.bias[c] = 0
    assert torch.allclose(run(pruned, x), run(zeroed, x), atol=1e-5)


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(F.relu(self.gn(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_groupnorm_is_pruned_in_multiples_that_keep_its_groups() -> None:
    torch.manual_seed(0)
    model, x = GroupNormNet(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.gn.weight.copy_(torch.arange(16.0) + 1)  # tells channels apart
    space = PruningSpace.from_model(model, x)
    entry = space.entries[0]
    assert (entry.name, entry.unit, entry.min_keep) == ("stem", 4, 4)
    assert "gn" not in {lo.name for lo in space.left_out}
    for ratio in (0.1, 0.3, 0.5, 0.7, entry.max_ratio):
        pruned = space.apply(model, [ratio, 0.0])
        n = pruned.gn.num_channels
        assert n % 4 == 0 and pruned.gn.num_groups == 4 and n == pruned.stem.out_channels
        kept = (pruned.gn.weight.detach() - 1).long().tolist()
        positions = [sorted(k % 4 for k in kept if k // 4 == g) for g in range(4)]
        assert all(p == positions[0] for p in positions), positions
        assert run(pruned, x).shape == (2, 4)
    assert space.apply(model, [0.3, 0.0]).gn.num_channels == 12  # 16 - floor(4.8) -> 12


def test_resnext_grouped_convs_carry_the_params_and_are_pruned() -> None:
    torch.manual_seed(0)
    model, x = models.create("resnext11", 10, 1), torch.randn(2, 1, 8, 8)
    total = sum(p.numel() for p in model.parameters())
    grouped = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, nn.Conv2d) and m.groups > 1)
    assert grouped / total > 0.5
    space = PruningSpace.from_model(model, x)
    assert [e.name for e in space.entries if e.kind == "grouped"] == [
        "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"]
    assert not [lo for lo in space.left_out if lo.type == "Conv2d"]
    pruned = space.apply(model, np.full(len(space), 0.5))
    for block in pruned.layers:
        assert block.conv2.groups == 4
        assert block.conv2.in_channels % 4 == 0 and block.conv2.out_channels % 4 == 0
    grouped_after = sum(m.weight.numel() for m in pruned.modules()
                        if isinstance(m, nn.Conv2d) and m.groups > 1)
    assert grouped_after == pytest.approx(grouped / 4, rel=0.05)
    assert run(pruned, x).shape == (2, 10)


# ---------------------------------------------------------------------- attention
def test_vit_heads_are_removed_whole_and_equal_zeroed_heads() -> None:
    torch.manual_seed(0)
    model = models.create("vit_tiny", 10, 1, dim=32, depth=2, num_heads=4)
    x = torch.randn(3, 1, 8, 8)
    space = PruningSpace.from_model(model, x)
    heads = [e for e in space.entries if e.unit_kind == "head"]
    assert [e.name for e in heads] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert all(e.unit == 3 * 8 and e.min_keep == 24 for e in heads)
    policy = np.array([0.5 if e.name == "blocks.0.attn.qkv" else 0.0 for e in space.entries])
    pruned = space.apply(model, policy)
    attn, orig = pruned.blocks[0].attn, model.blocks[0].attn
    assert attn.num_heads == 2 and orig.num_heads == 4  # the input model is untouched
    assert attn.qkv.out_features == 48 and attn.proj.in_features == 16
    kept = kept_rows(orig.qkv.weight, attn.qkv.weight)
    gone = sorted({(r % 32) // 8 for r in set(range(96)) - set(kept)})
    assert len(gone) == 2
    # every removed row belongs to a removed head, in all of query, key and value
    assert sorted(set(range(96)) - set(kept)) == sorted(
        c * 32 + h * 8 + d for c in range(3) for h in gone for d in range(8))
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for h in gone:  # a head whose output projection reads zeros adds nothing
            zeroed.blocks[0].attn.proj.weight[:, h * 8:(h + 1) * 8] = 0
    assert torch.allclose(run(pruned, x), run(zeroed, x), atol=1e-5)
    rows = space.describe(model, policy)
    assert (rows[1]["heads_before"], rows[1]["heads_after"]) == (4, 2)


class QKVHeadsFirst(nn.Module):
    """Attention whose fused projection is laid out head by head ([H][3][d]), not
    query/key/value first: the dependency graph maps unbind's chunks wrongly."""

    def __init__(self, dim: int = 16, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, self.num_heads, 3, -1).permute(3, 0, 2, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Tokens(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = attn
        self.fc = nn.Linear(16, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(F.relu(self.fc(x)).mean(1))


def test_attention_that_cannot_be_pruned_safely_keeps_its_warning_and_reason() -> None:
    torch.manual_seed(0)
    model, x = Tokens(QKVHeadsFirst()), torch.randn(2, 5, 4)
    with pytest.warns(UserWarning, match="'attn.qkv' cannot be pruned safely"):
        space = PruningSpace.from_model(model, x)
    assert "attn.qkv" not in [e.name for e in space.entries]
    reasons = {lo.name: lo.reason for lo in space.left_out}
    assert "changes what the remaining channels compute" in reasons["attn.qkv"]
    assert "produces the model's output" in reasons["head"]
    assert run(space.apply(model, space.max_policy()), x).shape == (2, 3)


def test_attention_without_num_heads_is_left_out_with_its_reason() -> None:
    class NoHeadCount(QKVHeadsFirst):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, 2, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    torch.manual_seed(0)
    attn = NoHeadCount()
    del attn.num_heads
    model, x = Tokens(attn), torch.randn(2, 5, 4)
    space = PruningSpace.from_model(model, x)
    assert [e.name for e in space.entries] == ["embed", "fc"]
    reasons = {lo.name: lo.reason for lo in space.left_out}
    assert "no integer num_heads attribute" in reasons["attn.qkv"]


class MHANet(nn.Module):
    def __init__(self, encoder: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.encoder = encoder
        if encoder:
            self.block = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        else:
            self.norm = nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.encoder:
            x = self.block(x)
        else:
            h = self.norm(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.head(x.mean(1))


@pytest.mark.parametrize("encoder", [False, True], ids=["mha", "encoder_layer"])
def test_multihead_attention_width_is_pruned_evenly_per_head(encoder: bool) -> None:
    torch.manual_seed(0)
    model, x = MHANet(encoder), torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        space = PruningSpace.from_model(model, x)
    entry = space.entries[0]
    assert (entry.name, entry.unit, entry.unit_kind) == ("embed", 4, "grouped")
    mha_name = "block.self_attn" if encoder else "attn"
    assert mha_name in entry.modules
    for ratio in (0.3, 0.5, entry.max_ratio):
        pruned = space.apply(model, np.where(np.arange(len(space)) == 0, ratio, 0.0))
        mha = dict(pruned.named_modules())[mha_name]
        assert isinstance(mha, nn.MultiheadAttention)
        assert mha.embed_dim % 4 == 0 and mha.num_heads == 4
        assert mha.embed_dim == pruned.embed.out_features == pruned.head.in_features
        assert mha.in_proj_weight.shape == (3 * mha.embed_dim, mha.embed_dim)
        assert run(pruned, x).shape == (2, 3)
    # the same positions of every head stay: the kept embedding channels show it
    pruned = space.apply(model, np.where(np.arange(len(space)) == 0, 0.5, 0.0))
    kept = kept_rows(model.embed.weight, pruned.embed.weight)
    per_head = [sorted(k % 4 for k in kept if k // 4 == h) for h in range(4)]
    assert all(p == per_head[0] for p in per_head)


def test_weight_granularity_prunes_attention_projections() -> None:
    torch.manual_seed(0)
    model, x = MHANet(), torch.randn(2, 5, 4)
    space = PruningSpace.from_model(model, x, granularity="weight")
    params = [e.param_name for e in space.entries]
    assert "attn.in_proj_weight" in params and "attn.out_proj.weight" in params
    pruned = space.apply(model, np.full(len(space), 0.5))
    w = pruned.attn.in_proj_weight
    assert int((w == 0).sum()) == w.numel() // 2
    assert run(pruned, x).shape == (2, 3)
    assert space.left_out == ()


# ------------------------------------------------------------------- left out
class ShuffleUnit(nn.Module):
    """ShuffleNet's unit: grouped 1x1 convs around a channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.g1 = nn.Conv2d(16, 16, 1, groups=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.g2 = nn.Conv2d(16, 16, 1, groups=4)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.g1(x)))
        b, c, h, w = y.shape
        y = y.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(F.relu(x + self.g2(y)).mean((2, 3)))


def test_channel_shuffle_group_is_left_out_with_a_warning_the_rest_pruned() -> None:
    torch.manual_seed(0)
    model, x = ShuffleUnit(), torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="'g1' cannot be pruned safely"):
        space = PruningSpace.from_model(model, x)
    assert [(e.name, e.unit) for e in space.entries] == [("stem", 4)]
    reasons = {lo.name: lo.reason for lo in space.left_out}
    assert set(reasons) == {"g1", "bn1", "head"}
    assert "channel shuffle" in reasons["g1"]
    pruned = space.apply(model, [0.5])
    assert pruned.g2.out_channels == pruned.g1.in_channels == 8
    assert run(pruned, x).shape == (2, 4)


def test_left_out_names_ignored_layers_and_unknown_layer_types() -> None:
    class Gate(nn.Module):  # a layer type without a pruning function
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 4)
            self.gate = Gate()
            self.c = nn.Linear(4, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.gate(F.relu(self.b(F.relu(self.a(x)))))
            return self.head(F.relu(self.c(x)))

    torch.manual_seed(0)
    model, x = Net(), torch.randn(2, 4)
    # b's outputs feed the gate's matrix, which the graph does not resize: unsafe
    with pytest.warns(UserWarning, match="'b' cannot be pruned safely"):
        space = PruningSpace.from_model(model, x, ignored_layers=["a"])
    assert [e.name for e in space.entries] == ["c"]
    reasons = {lo.name: (lo.type, lo.reason) for lo in space.left_out}
    assert set(reasons) == {"a", "b", "gate", "head"}
    assert reasons["a"] == ("Linear", "listed in ignored_layers")
    assert reasons["head"][0] == "Linear" and "model's output" in reasons["head"][1]
    assert "makes the model fail" in reasons["b"][1]
    assert reasons["gate"][0] == "Gate" and "no pruning function" in reasons["gate"][1]
    assert [lo.as_dict()["name"] for lo in space.left_out] == ["a", "b", "gate", "head"]
    with pytest.warns(UserWarning), pytest.raises(
            ValueError, match="nothing to prune.*'a' \\(listed in ignored_layers\\)"):
        PruningSpace.from_model(model, x, ignored_layers=["a", "c"])
