"""PruningEnv contract, reward schemes, and cpl against uniform on the real environment."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn

from rlprune import api, train
from rlprune.agents import get_method
from rlprune.agents.base import refine
from rlprune.costs import Budget
from rlprune.env import PruningEnv
from rlprune.history import History
from rlprune.rewards import RewardContext, dense_reward, neg_error_log_flops


@pytest.fixture(scope="module")
def model(trained_digits_cnn):
    return copy.deepcopy(trained_digits_cnn).eval()


def _episode(env: PruningEnv, actions) -> tuple[list[float], dict]:
    env.reset(seed=0)
    rewards, info = [], {}
    for a in actions:
        _, r, term, trunc, info = env.step(a)
        rewards.append(r)
    assert term and not trunc
    return rewards, info


@pytest.mark.parametrize("action", ["continuous", "discrete"])
def test_check_env_passes(model, digits, action):
    env = PruningEnv(model, digits, "params<=0.5", action=action)
    check_env(env, skip_render_check=True)


def test_observation_and_cost_contract(model, digits):
    env = PruningEnv(model, digits, "params<=0.5,flops<=0.6")
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    obs2, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs, obs2)
    for t in range(env.T):
        obs, r, term, _, info = env.step(np.array([0.3], dtype=np.float32))
        assert env.observation_space.contains(obs)
        assert info["cost"].shape == (2,)
        if t < env.T - 1:
            assert not term and r == 0.0 and not info["cost"].any()
    assert term
    # terminal costs are measured on the pruned model: recompute independently
    pruned = env.space.apply(model, np.full(env.T, 0.3))
    b = Budget.parse("params<=0.5,flops<=0.6").bind(model, digits.example_input(1))
    np.testing.assert_allclose(info["cost"], b.ratios(pruned), rtol=1e-9)
    assert info["feasible"] == bool(np.all(info["cost"] <= 1.0))
    assert r == pytest.approx(info["accuracy"])  # terminal_accuracy scheme
    assert len(env.history) == 1 and env.history.candidates[0].accuracy == info["accuracy"]


class _Untouchable:
    """A split that raises as soon as anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was touched (.{name})")

    def __len__(self):
        raise AssertionError("the test split was touched (len)")


@pytest.mark.parametrize("method", ["cpl", "purl", "amc", "uniform", "random", "global"])
def test_test_split_is_never_scored(model, digits, method):
    poisoned = copy.copy(digits)
    poisoned.test = _Untouchable()
    bound = Budget.parse("params<=0.5").bind(model, digits.example_input(1))
    env = api.make_env(model, poisoned, bound, method)
    res = get_method(method, episodes=3, progress=False, refine=True).search(env)
    assert res.evaluations >= 1 and np.isfinite(res.history.candidates[0].accuracy)


def test_repeated_policy_is_cached_not_rescored(model, digits, monkeypatch):
    env = PruningEnv(model, digits, "params<=0.5")
    calls = []
    real = env.evaluator.accuracy
    monkeypatch.setattr(env.evaluator, "accuracy",
                        lambda m, dense=False: calls.append(1) or real(m))
    _episode(env, [np.array([0.25], np.float32)] * env.T)
    _episode(env, [np.array([0.25], np.float32)] * env.T)
    assert len(calls) == 1
    assert len(env.history) == 2 and env.history.evaluations == 1
    assert env.history.candidates[1].extra.get("cached") is True


def test_vectorised_envs_share_one_history(model, digits):
    hist = History()
    fns = [lambda: PruningEnv(model, digits, "params<=0.5", history=hist) for _ in range(2)]
    venv = gym.vector.SyncVectorEnv(fns)
    venv.reset(seed=0)
    T = venv.envs[0].unwrapped.T
    for _ in range(T):
        _, _, term, _, _ = venv.step(np.full((2, 1), 0.4, dtype=np.float32))
    assert term.all()
    assert len(hist) == 2


def test_reward_schemes():
    ctx = RewardContext(step=2, num_steps=3, terminal=True, accuracy=0.9, original_accuracy=0.95,
                        sparsity=0.4, target_sparsity=0.5, macs_ratio=0.5,
                        options={"original_flops": 1000.0})
    assert neg_error_log_flops(ctx) == pytest.approx(-0.1 * np.log(500.0))
    # E = 0.1, E* = 0.05 -> (0.05 / 0.95); S/S* = 0.8 -> 0.2; beta 5
    assert dense_reward(ctx) == pytest.approx(-5 * (0.05 / 0.95 + 0.2))
    ctx.accuracy, ctx.sparsity = 0.96, 0.6
    assert dense_reward(ctx) == 0.0


def test_bn_recalibration_restores_accuracy(model, digits):
    space_env = PruningEnv(model, digits, "params<=0.5", bn_samples=0)
    policy = np.full(space_env.T, 0.5)
    raw = space_env.space.apply(model, policy)
    acc_raw = train.evaluate(raw, digits.reward.x, digits.reward.y)
    fixed = copy.deepcopy(raw)
    assert train.recalibrate_bn(fixed, digits.train.x[:256])
    acc_fixed = train.evaluate(fixed, digits.reward.x, digits.reward.y)
    assert acc_fixed > acc_raw + 0.1
    # the statistics really changed, and the env applies the same step when asked
    env = PruningEnv(model, digits, "params<=0.5", bn_samples=256)
    built = env.evaluator.build(policy)
    for a, b in zip(built.modules(), fixed.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)


def test_refine_spends_unused_budget(model, digits):
    env = PruningEnv(model, digits, "params<=0.5")
    loose = np.full(env.T, 0.8) * env.max_ratios / env.max_ratios.max()
    assert np.all(env.evaluator.cost_ratios(loose) <= 1)
    out = refine(env.evaluator, loose)
    r_out = env.evaluator.cost_ratios(out)
    assert np.all(r_out <= 1.0)
    best = env.history.key(env.history.lookup(out))
    assert best >= env.history.key(env.history.lookup(loose))
    if not np.allclose(out, loose):
        assert r_out.max() > env.evaluator.cost_ratios(loose).max()  # toward the boundary


def test_step_function_cost_is_met_by_cpl(model, digits):
    """A black-box cost with no gradient anywhere: conv channels counted in steps of 16."""

    def conv_channel_steps(m: nn.Module) -> float:
        n = sum(c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d))
        return float(np.ceil(n / 16.0) * 16)

    budget = Budget(custom={"conv_steps": (conv_channel_steps, 64)})
    res = api.prune(model, digits, budget, method="cpl", episodes=60, progress=False)
    assert res.feasible
    assert conv_channel_steps(res.model) <= 64
    assert res.search.best is not None  # a feasible candidate was found by the search


def test_interrupt_returns_best_so_far(model, digits, monkeypatch):
    bound = Budget.parse("params<=0.5").bind(model, digits.example_input(1))
    env = api.make_env(model, digits, bound, "cpl")
    real = env.evaluator.evaluate
    count = {"n": 0}

    def flaky(policy, episode=0):
        count["n"] += 1
        if count["n"] == 12:
            raise KeyboardInterrupt
        return real(policy, episode)

    monkeypatch.setattr(env.evaluator, "evaluate", flaky)
    res = get_method("cpl", episodes=100, progress=False).search(env)
    assert res.extra.get("interrupted") is True
    assert len(res.history) == 11  # the 12th evaluation never happened
    assert res.evaluations == len({tuple(c.policy) for c in res.history})
    assert np.all(env.evaluator.cost_ratios(res.policy) <= 1.0)


def test_cpl_beats_uniform_at_weight_budget(model, digits):
    """Issue acceptance: digits_cnn, params<=0.2, weight granularity, a few hundred episodes."""
    uni = api.prune(model, digits, "params<=0.2", method="uniform", granularity="weight",
                    progress=False)
    cpl = api.prune(model, digits, "params<=0.2", method="cpl", granularity="weight",
                    episodes=200, progress=False)
    for res in (uni, cpl):
        assert res.feasible
    b = Budget.parse("nonzero_params<=0.2").bind(model, digits.example_input(1))
    assert all(v["ok"] for v in b.evaluate(cpl.model).values())
    acc = {r.method: train.evaluate(r.model, digits.reward.x, digits.reward.y)
           for r in (uni, cpl)}
    assert acc["cpl"] >= acc["uniform"]


def test_digits_end_to_end_keeps_accuracy(model, digits):
    """Issue acceptance: params<=0.3 with 3 fine-tune epochs stays within 5 points."""
    res = api.prune(model, digits, "params<=0.3", method="uniform", finetune_epochs=3,
                    finetune_lr=0.02, progress=False)
    assert res.feasible
    params = sum(p.numel() for p in res.model.parameters())
    assert params <= 0.3 * sum(p.numel() for p in model.parameters())
    acc = train.evaluate(res.model, digits.test.x, digits.test.y)
    assert acc == pytest.approx(res.accuracy["pruned"])
    assert acc >= res.accuracy["original"] - 0.05
