"""Cost functions and budgets: values checked against hand-computed numbers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from rlprune import costs, models
from rlprune.costs import BoundBudget, Budget, Constraint
from rlprune.noise import NoiseRule


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 5))


X10 = torch.randn(3, 10)


# ---------------------------------------------------------------- registry
def test_builtin_costs_registered() -> None:
    names = costs.list_costs()
    for n in ["params", "nonzero_params", "macs", "flops", "latency_ms", "memory_mb", "disk_mb"]:
        assert n in names
    assert costs.get_cost("PARAMS").name == "params"


def test_unknown_cost_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known costs: .*params.*macs"):
        costs.get_cost("foo")


def test_register_cost_and_duplicate() -> None:
    name = "test_width_sum"

    @costs.register_cost(name)
    def width_sum(model: nn.Module) -> float:
        return float(sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear)))

    try:
        c = costs.get_cost(name)
        assert not c.takes_input and not c.relative
        assert c(linear_model()) == 5.0
        with pytest.raises(ValueError, match="already registered"):
            costs.register_cost(name, width_sum)
        costs.register_cost(name, lambda m, x: 7.0, overwrite=True)
        assert costs.get_cost(name).takes_input
        assert costs.get_cost(name)(linear_model(), X10) == 7.0
        b = Budget.parse(f"{name}<=3")
        assert b.measure(linear_model(), X10) == {name: 7.0}
    finally:
        costs._COSTS.pop(name, None)


@pytest.mark.parametrize("bad", ["Bad-Name", "1abc", "", "a b"])
def test_register_cost_rejects_unparseable_names(bad: str) -> None:
    with pytest.raises(ValueError, match="cost name"):
        costs.register_cost(bad, lambda m: 0.0)


def test_cost_must_return_a_number() -> None:
    c = costs.Cost("weird", lambda m: "abc")
    with pytest.raises(ValueError, match="must return a number"):
        c(linear_model())
    with pytest.raises(ValueError, match="needs an example input"):
        costs.get_cost("macs")(linear_model())


# ------------------------------------------------------------ cost values
def test_linear_hand_values() -> None:
    m = linear_model()
    assert costs.count_params(m) == 55
    assert costs.get_cost("params")(m) == 55
    assert costs.count_macs(m, X10) == 50
    assert costs.count_flops(m, X10) == 100
    assert costs.get_cost("flops")(m, X10) == 100
    with torch.no_grad():
        m[0].weight[0, :4] = 0
        m[0].bias[1] = 0
    assert costs.count_nonzero(m) == 50
    assert costs.count_params(m) == 55


def test_conv_and_depthwise_macs() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    x = torch.randn(2, 3, 6, 6)
    assert costs.count_macs(conv, x) == 6 * 6 * 8 * 3 * 9
    dw = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(8))
    x8 = torch.randn(1, 8, 6, 6)
    assert costs.count_macs(dw, x8) == 3 * 3 * 8 * 1 * 9  # BN is not counted
    grouped = nn.Sequential(nn.Conv2d(8, 4, 1, groups=2))
    assert costs.count_macs(grouped, x8) == 36 * 4 * 4


def test_reused_module_counted_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    assert costs.count_macs(Twice(), torch.randn(1, 4)) == 32
    assert costs.layer_macs(Twice(), torch.randn(1, 4)) == {"fc": 32}


def test_macs_cache_follows_channel_changes() -> None:
    """The cached spatial table must give exact MACs when only widths change."""
    x = torch.randn(1, 3, 8, 8)
    a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))
    b = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2))
    assert costs.count_macs(a, x) == 64 * 8 * 27 + 9 * 4 * 8 * 9
    assert costs.count_macs(b, x) == 64 * 5 * 27 + 9 * 4 * 5 * 9
    # a different pooling changes the key, not a stale spatial size
    c = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(3, 8, 3, padding=1))
    d = nn.Sequential(nn.MaxPool2d(4), nn.Conv2d(3, 8, 3, padding=1))
    assert costs.count_macs(c, x) == 16 * 8 * 27
    assert costs.count_macs(d, x) == 4 * 8 * 27


def test_macs_of_registered_model_matches_known_value() -> None:
    # LeNet-5 (Caffe): conv1 24*24*20*25, conv2 8*8*50*500, fc1 800*500, fc2 500*10
    m = models.create("lenet5", 10, 1)
    expected = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 20 * 25 + 800 * 500 + 500 * 10
    assert costs.count_macs(m, torch.randn(4, 1, 28, 28)) == expected
    assert costs.count_params(m) == 431080


def test_disk_mb_matches_torch_save() -> None:
    m = linear_model()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert costs.disk_size_mb(m) == pytest.approx(len(buf.getvalue()) / 2**20)
    assert costs.disk_size_mb(m) > 55 * 4 / 2**20


def test_memory_mb_hand_value() -> None:
    m = linear_model()
    weights = 55 * 4
    peak = (10 + 5) * 4  # input and output of the only layer, batch 1, float32
    assert costs.estimate_memory_mb(m, X10) == pytest.approx((weights + peak) / 2**20)
    wide = nn.Sequential(nn.Linear(10, 100), nn.Linear(100, 5))
    w_bytes = (10 * 100 + 100 + 100 * 5 + 5) * 4
    # the first layer holds 10 inputs + 100 outputs, more than the second (100 + 5)
    assert costs.estimate_memory_mb(wide, X10) == pytest.approx((w_bytes + 110 * 4) / 2**20)


def test_costs_leave_training_flags_alone() -> None:
    m = models.create("digits_cnn", 10, 1)
    m.train()
    m.features[1].eval()
    x = torch.randn(2, 1, 8, 8)
    costs.count_macs(m, x)
    costs.estimate_memory_mb(m, x)
    costs.measure_latency_ms(m, x, repeats=1, min_repeat_s=0.0)
    assert m.training and not m.features[1].training and m.features[4].training


def test_latency_positive_and_configurable() -> None:
    m = linear_model()
    t1 = costs.measure_latency_ms(m, X10, repeats=3, min_repeat_s=0.001)
    assert 0 < t1 < 100
    fn = costs.latency_cost(batch_size=4, num_threads=1, repeats=2, min_repeat_s=0.001)
    assert 0 < fn(m, X10) < 100
    with pytest.raises(ValueError, match="batch_size"):
        costs.measure_latency_ms(m, X10, batch_size=0)
    assert costs.get_cost("latency_ms").noisy


# ------------------------------------------------------------------ budgets
def test_budget_keywords_and_relative_rule() -> None:
    b = Budget(params=0.3, flops="50%", macs=20, latency_ms=2.0)
    assert b.names == ["params", "flops", "macs", "latency_ms"]
    rel = {c.name: c.relative for c in b}
    assert rel == {"params": True, "flops": True, "macs": False, "latency_ms": False}
    limits = b.bind(linear_model(), X10).limits
    assert limits["params"] == pytest.approx(0.3 * 55)
    assert limits["flops"] == pytest.approx(50.0)
    assert limits["macs"] == 20
    assert limits["latency_ms"] == 2.0


def test_budget_percent_on_absolute_cost_is_relative() -> None:
    b = Budget.parse("latency_ms<=50%")
    assert b.constraints[0].relative
    assert b.constraints[0].fraction == 0.5


def test_budget_custom_constraint() -> None:
    def width(model: nn.Module) -> float:
        return float(sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear)))

    b = Budget(params=0.9, custom={"width": (width, 3)})
    assert b.names == ["params", "width"]
    bound = b.bind(linear_model(), X10)
    assert bound.limits == {"params": pytest.approx(49.5), "width": 3.0}
    assert np.allclose(bound.ratios(linear_model()), [55 / 49.5, 5 / 3])
    assert not bound.feasible(linear_model())
    with pytest.raises(ValueError, match="shadows"):
        Budget(custom={"params": (width, 3)})
    with pytest.raises(ValueError, match="pair"):
        Budget(custom={"width": width})  # type: ignore[dict-item]


def test_parse_and_str_round_trip() -> None:
    text = "params<=0.3,flops<=50%,latency_ms<=2"
    b = Budget.parse(text)
    assert str(b) == text
    assert Budget.parse(str(b)) == b
    assert repr(b) == f"Budget.parse({text!r})"
    b2 = Budget.parse("  macs <= 1e6 , nonzero_params<=12.5% ")
    assert str(b2) == "macs<=1000000,nonzero_params<=12.5%"
    assert Budget.parse(str(b2)) == b2
    assert Budget(params=0.25, disk_mb="10%") == Budget.parse("params<=0.25,disk_mb<=10%")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("params<0.3", "malformed budget term 'params<0.3'"),
        ("params<=abc", "bad limit 'abc'"),
        ("", "empty budget"),
        ("   ", "empty budget"),
        ("foo<=0.3", "unknown cost 'foo'"),
        ("params<=0", "must be positive"),
        ("params<=-1", "must be positive"),
        ("params<=0.3,params<=0.2", "appears twice"),
        ("params<=0.3,", "malformed budget term ''"),
        ("params=0.3", "malformed"),
        ("params<=nan", "must be positive and finite"),
        ("params<=inf", "must be positive and finite"),
        ("params<=%", "bad limit"),
        ("<=0.3", "malformed"),
    ],
)
def test_malformed_budget_strings(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        Budget.parse(text)
    # every message shows the accepted syntax
    assert "NAME<=NUMBER" in str(info.value)


def test_budget_keyword_errors() -> None:
    with pytest.raises(ValueError, match="unknown cost 'foo'"):
        Budget(foo=0.3)
    with pytest.raises(ValueError, match="positive"):
        Budget(params=0)
    with pytest.raises(ValueError, match="at least one constraint"):
        Budget()
    with pytest.raises(ValueError, match="must be a number"):
        Budget(params=True)


def test_budget_coerce() -> None:
    assert Budget.coerce("params<=0.5") == Budget(params=0.5)
    assert Budget.coerce({"params": 0.5}) == Budget(params=0.5)
    b = Budget(params=0.5)
    assert Budget.coerce(b) is b
    with pytest.raises(ValueError):
        Budget.coerce(3)  # type: ignore[arg-type]


def test_evaluate_and_bound_budget() -> None:
    orig = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 5))
    small = nn.Sequential(nn.Linear(10, 2), nn.ReLU(), nn.Linear(2, 5))
    b = Budget.parse("params<=0.5,macs<=50%")
    p_orig, p_small = 10 * 8 + 8 + 8 * 5 + 5, 10 * 2 + 2 + 2 * 5 + 5
    m_orig, m_small = 80 + 40, 20 + 10
    ev = b.bind(orig, X10).evaluate(small)
    assert ev["params"]["value"] == p_small
    assert ev["params"]["original"] == p_orig
    assert ev["params"]["limit"] == pytest.approx(0.5 * p_orig)
    assert ev["params"]["ratio"] == pytest.approx(p_small / p_orig)
    assert ev["params"]["ok"] is True
    assert ev["macs"]["value"] == m_small and ev["macs"]["ok"] is True
    bound = b.bind(orig, X10)
    assert bound.evaluate(orig)["params"]["ok"] is False
    assert bound.to_dict() == {"budget": "params<=0.5,macs<=50%",
                               "original": {"params": p_orig, "macs": m_orig},
                               "limits": {"params": 0.5 * p_orig, "macs": 0.5 * m_orig},
                               "noise": NoiseRule().to_dict(), "original_spread": {}}
    restored = BoundBudget(b, bound.to_dict()["original"])  # no re-measurement
    assert restored.limits == bound.limits
    assert BoundBudget.from_dict(b, bound.to_dict()).limits == bound.limits
    assert isinstance(bound, BoundBudget)
    assert np.allclose(bound.ratios(small), [p_small / (0.5 * p_orig), m_small / (0.5 * m_orig)])
    assert np.allclose(bound.ratios(orig), [2.0, 2.0])
    assert bound.feasible(small) and not bound.feasible(orig)
    assert b.measure(small, X10) == {"params": p_small, "macs": m_small}


def test_constraint_holds_iff_value_le_limit() -> None:
    m = linear_model()
    exact = Budget(params=55.0 + 1e-9).bind(m, X10)  # > 1: absolute
    assert exact.feasible(m)
    below = Budget(params=54.999).bind(m, X10)
    assert not below.feasible(m)
    same = Budget(params=1.0).bind(m, X10)  # fraction 1.0 of itself
    assert same.feasible(m) and same.ratios(m)[0] == 1.0


def test_constraint_dataclass() -> None:
    c = Constraint("params", costs.get_cost("params"), 0.25)
    assert c.relative and c.fraction == 0.25 and c.resolve(400) == 100
    a = Constraint("params", costs.get_cost("params"), 1000)
    assert not a.relative and a.resolve(400) == 1000 and str(a) == "params<=1000"
    assert math.isclose(Constraint("latency_ms", costs.get_cost("latency_ms"), 0.5).resolve(9), 0.5)
