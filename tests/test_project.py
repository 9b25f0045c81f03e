"""Budget projection: property tests that every returned policy is feasible when
measured independently, and that infeasible budgets fail loudly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from rlprune import costs, models
from rlprune.costs import Budget, BudgetInfeasibleError
from rlprune.projection import project, uniform_policy
from rlprune.space import PruningSpace

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def conv_channel_step(model: nn.Module) -> float:
    """A non-differentiable cost: conv output channels, in steps of 16."""
    return float(sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) // 16)


def hidden_step(model: nn.Module) -> float:
    """The MLP's analogue: hidden Linear widths in steps of 8."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return float(sum(m.out_features for m in lin[:-1]) // 8)


@functools.cache
def setup(name: str) -> tuple[nn.Module, torch.Tensor, PruningSpace]:
    torch.manual_seed(0)
    if name == "digits_cnn":
        model: nn.Module = models.create("digits_cnn", 10, 1)
        x = torch.randn(2, 1, 8, 8)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16),
                              nn.ReLU(), nn.Linear(16, 4))
        x = torch.randn(2, 1, 4, 4)
    return model, x, PruningSpace.from_model(model, x)


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs counted here from the output tensors, independently of rlprune.costs."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.weight[0].numel()

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in hs:
        h.remove()
    return total


def independent(name: str, model: nn.Module, x: torch.Tensor) -> float:
    if name == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if name == "flops":
        return 2.0 * hook_macs(model, x)
    if name == "step":
        return conv_channel_step(model) if any(
            isinstance(m, nn.Conv2d) for m in model.modules()) else hidden_step(model)
    raise AssertionError(name)


BUDGETS = [
    {"params": 0.3},
    {"flops": 0.5},
    {"params": 0.1, "flops": 0.4},
    {"step": 4.0},
    {"params": 0.5, "step": 3.0},
    {"params": 0.01},  # infeasible for both models
]


def make_budget(spec: dict[str, float], model_name: str) -> Budget:
    step = conv_channel_step if model_name == "digits_cnn" else hidden_step
    kw = {k: v for k, v in spec.items() if k != "step"}
    custom = {"step": (step, spec["step"])} if "step" in spec else None
    return Budget(custom=custom, **kw)


def feasible_independently(
    spec: dict[str, float], model: nn.Module, pruned: nn.Module, x: torch.Tensor
) -> bool:
    ok = True
    for name, limit in spec.items():
        value = independent(name, pruned, x)
        absolute = limit if name == "step" else limit * independent(name, model, x)
        ok &= value <= absolute
    return ok


policies = st.lists(st.floats(0.0, 0.99, allow_nan=False), min_size=3, max_size=3)


@pytest.mark.parametrize("model_name", ["digits_cnn", "mlp"])
@SETTINGS
@given(policy=policies, spec=st.sampled_from(BUDGETS))
def test_project_is_feasible_or_raises(
    model_name: str, policy: list[float], spec: dict[str, float]
) -> None:
    model, x, space = setup(model_name)
    p = np.array(policy[: len(space)])
    budget = make_budget(spec, model_name)
    try:
        q = project(space, model, p, budget.bind(model, x))
    except BudgetInfeasibleError as err:
        # only when even the most aggressive pruning fails, measured here
        assert not feasible_independently(spec, model, space.apply(model, space.max_policy()), x)
        assert "budget cannot be met" in str(err) and "limit" in str(err)
        return
    pruned = space.apply(model, q)
    assert feasible_independently(spec, model, pruned, x)
    assert q.shape == p.shape
    if feasible_independently(spec, model, space.apply(model, p), x):
        assert np.array_equal(q, p)  # feasible policies come back unchanged
    else:
        # q lies on the segment from p (clipped) to the most aggressive policy
        base, top = np.minimum(p, space.max_policy()), space.max_policy()
        assert np.all(q >= base - 1e-12) and np.all(q <= top + 1e-12)


@pytest.mark.parametrize("model_name", ["digits_cnn", "mlp"])
@pytest.mark.parametrize("spec", BUDGETS[:5], ids=lambda s: ",".join(s))
def test_uniform_policy_meets_budget_tightly(model_name: str, spec: dict[str, float]) -> None:
    model, x, space = setup(model_name)
    budget = make_budget(spec, model_name)
    q = uniform_policy(space, model, budget.bind(model, x))
    r = float(q.max())
    assert np.allclose(q, np.minimum(r, space.max_policy()))  # one ratio for every layer
    assert feasible_independently(spec, model, space.apply(model, q), x)
    assert r > 0  # every budget here needs pruning
    # nearly tight: a slightly smaller uniform ratio misses the budget
    looser = np.minimum(r - 1e-3, space.max_policy())
    assert not feasible_independently(spec, model, space.apply(model, looser), x)


def test_project_moves_minimally() -> None:
    model, x, space = setup("digits_cnn")
    p = np.array([0.1, 0.2, 0.0])
    q = project(space, model, p, Budget.parse("params<=0.3").bind(model, x))
    top = space.max_policy()
    t = float((q[0] - p[0]) / (top[0] - p[0]))
    assert 0 < t < 1
    assert np.allclose(q, p + t * (top - p))
    back = p + (t - 2e-4) * (top - p)  # a little less pruning breaks the budget
    assert not feasible_independently({"params": 0.3}, model, space.apply(model, back), x)


def test_infeasible_budget_message() -> None:
    model, x, space = setup("digits_cnn")
    with pytest.raises(BudgetInfeasibleError) as info:
        bound = Budget.parse("params<=0.001,flops<=0.9").bind(model, x)
        project(space, model, np.zeros(len(space)), bound)
    msg = str(info.value)
    assert "params reaches at least" in msg and "limit" in msg
    assert "flops" not in msg  # only the failing constraint is named
    value, limit = info.value.failures["params"]
    assert value == costs.count_params(space.apply(model, space.max_policy()))
    assert limit == pytest.approx(0.001 * costs.count_params(model))
    assert isinstance(info.value, ValueError)
    with pytest.raises(BudgetInfeasibleError):
        uniform_policy(space, model, Budget.parse("params<=0.001").bind(model, x))


def test_weight_granularity_params_budget_hint() -> None:
    model, x, _ = setup("digits_cnn")
    space = PruningSpace.from_model(model, x, granularity="weight")
    with pytest.raises(BudgetInfeasibleError, match="nonzero_params"):
        project(space, model, np.zeros(len(space)), Budget.parse("params<=0.5").bind(model, x))
    bound = Budget.parse("nonzero_params<=0.2").bind(model, x)
    q = project(space, model, np.zeros(len(space)), bound)
    pruned = space.apply(model, q)
    assert sum(int(torch.count_nonzero(p)) for p in pruned.parameters()) <= 0.2 * sum(
        p.numel() for p in model.parameters()
    )


def test_noisy_cost_is_checked_again() -> None:
    """A noisy cost: project's last measurement is the confirming one, within the limit."""
    model, x, space = setup("digits_cnn")
    rng = np.random.default_rng(0)
    calls: list[float] = []

    def jittery_params(m: nn.Module) -> float:
        v = costs.count_params(m) * (1 + rng.uniform(-0.02, 0.02))
        calls.append(v)
        return v

    costs.register_cost("test_jittery_params", jittery_params, noisy=True, overwrite=True)
    try:
        bound = Budget.parse("test_jittery_params<=8000").bind(model, x)
        q = project(space, model, np.zeros(len(space)), bound)
        assert calls[-1] <= 8000
        assert costs.count_params(space.apply(model, q)) <= 8000 * 1.03
        assert bound.noisy
    finally:
        costs._COSTS.pop("test_jittery_params", None)


def test_bound_budget_is_reused_and_policy_validated() -> None:
    model, x, space = setup("mlp")
    bound = Budget.parse("params<=0.4").bind(model, x)
    q1 = project(space, model, [0.0, 0.0], bound)
    q2 = project(space, model, [0.0, 0.0], Budget.parse("params<=0.4").bind(model, x))
    assert np.array_equal(q1, q2)
    with pytest.raises(ValueError, match="2 entries"):
        project(space, model, [0.1], bound)


def test_projection_needs_a_bound_budget() -> None:
    """Limits are resolved once per run: an unbound budget is refused, not re-bound."""
    model, x, space = setup("mlp")
    with pytest.raises(TypeError, match="BoundBudget"):
        project(space, model, [0.0, 0.0], Budget.parse("params<=0.4"))
    with pytest.raises(TypeError, match="BoundBudget"):
        uniform_policy(space, model, "params<=0.4")
