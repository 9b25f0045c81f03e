"""Tests of the ``purl`` method: DQN over discrete levels with the dense per-step reward.

A small CNN on the synthetic dataset keeps every search to a few seconds. The dense
rewards are recomputed here from first principles (prune the prefix, score it, apply
the published formula) and compared with what DQN received and stored.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlprune import data, models, train
from rlprune.agents.base import get_method
from rlprune.agents.purl import PuRL, PuRLConfig
from rlprune.costs import Budget
from rlprune.env import PruningEnv

BUDGET = "params<=0.5"
DENSE_SAMPLES = 16
EPISODES = 10


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, data.Splits]:
    splits = data.load("synthetic", seed=0)
    torch.manual_seed(0)
    model = models.create("digits_cnn", splits.num_classes, 1)
    train.fit(model, splits, epochs=8, progress=False, seed=0)
    return model.eval(), splits


def make_env(setup, budget: str = BUDGET, **kw) -> PruningEnv:
    model, splits = setup
    kw.setdefault("action", "discrete")
    kw.setdefault("reward", "dense")
    return PruningEnv(model, splits, budget, dense_samples=DENSE_SAMPLES, **kw)


@pytest.fixture(scope="module")
def run(setup):
    """One short seeded purl search with every per-episode record kept."""
    env = make_env(setup)
    records: list[dict] = []
    agent = PuRL(episodes=EPISODES, seed=0, progress=False,
                 callback=lambda a, info: records.append(info))
    result = agent.search(env)
    return env, agent, result, records


def expected_dense(setup, env: PruningEnv, policy: list[float], t: int) -> float:
    """The dense reward of step ``t``, recomputed without the env's reward code.

    Prefix ``policy[:t+1]`` pruned, the rest intact, BatchNorm statistics re-estimated
    on the env's first ``bn_samples`` training inputs; accuracy on the first
    ``DENSE_SAMPLES`` reward samples (the whole reward split at the last step, where the
    candidate is scored); sparsity = params-weighted mean ratio; targets from the
    budget (S* = 1 - 0.5) and the unpruned model's reward-split error (E*); beta = 5.
    """
    model, splits = setup
    T = len(policy)
    partial = np.zeros(T)
    partial[: t + 1] = policy[: t + 1]
    pruned = env.space.apply(model, partial)
    train.recalibrate_bn(pruned, splits.train.x[:256])
    if t < T - 1:
        acc = train.evaluate(pruned, splits.reward.x[:DENSE_SAMPLES],
                             splits.reward.y[:DENSE_SAMPLES])
    else:
        acc = train.evaluate(pruned, splits.reward.x, splits.reward.y)
    w = np.array([e.params for e in env.space.entries], dtype=np.float64)
    sparsity = float((w * partial).sum() / w.sum())
    s_star = 1.0 - 0.5
    e_star = 1.0 - train.evaluate(model, splits.reward.x, splits.reward.y)
    err = 1.0 - acc
    return -5.0 * (max((err - e_star) / (1.0 - e_star), 0.0) + max(1.0 - sparsity / s_star, 0.0))


def test_dense_reward_at_every_step_matches_recomputation(setup, run):
    env, agent, result, records = run
    assert len(records) == EPISODES
    all_rewards = []
    for rec in records:
        rewards = rec["step_rewards"]
        assert len(rewards) == env.T
        pol = rec["candidate"].policy
        for t, r in enumerate(rewards):
            assert r == pytest.approx(expected_dense(setup, env, pol, t), abs=1e-4), (t, pol)
        assert rec["return"] == pytest.approx(sum(rewards), abs=1e-5)
        all_rewards.extend(rewards)
    # the rewards carry information: not all zero, not all the same
    assert any(r != 0.0 for r in all_rewards)
    assert len({round(r, 6) for r in all_rewards}) > 1
    # ... and they are exactly what DQN stored, transition by transition
    buf = agent.model.replay_buffer
    stored = buf.rewards[: EPISODES * env.T, 0]
    np.testing.assert_allclose(stored, np.asarray(all_rewards, dtype=np.float32), atol=1e-6)


def test_short_search_result(setup, run):
    env, agent, result, records = run
    model, splits = setup
    assert result.method == "purl"
    assert len(result.history) == EPISODES
    assert result.extra["episodes"] == EPISODES
    assert result.extra["timesteps"] == EPISODES * env.T
    assert result.extra["interrupted"] is False
    # returned policy meets the budget, measured on the pruned model
    bound = Budget.parse(BUDGET).bind(model, splits.example_input(1))
    assert np.all(bound.ratios(env.space.apply(model, result.policy)) <= 1.0)
    # when the best was found: evaluation count and wall time
    assert result.best is not None and result.best.feasible
    assert result.best_found_at == result.history.best_found_at == result.best.index + 1
    assert result.extra["best_found_at_evaluation"] == result.best_found_at
    assert 1 <= result.best_found_at <= EPISODES
    assert 0.0 < result.extra["best_found_time_s"] <= result.wall_time
    assert result.extra["best_candidate_time_s"] == pytest.approx(result.best.time)
    # per-episode curves
    curves = result.extra["curves"]
    for key in ("return", "accuracy", "cost/params"):
        assert len(curves[key]) == EPISODES
    assert curves["cost/params"] == pytest.approx([c.cost_ratios[0] for c in result.history])
    assert curves["return"] == pytest.approx([r["return"] for r in records])
    # every action was one of the env's levels (per layer, clipped to the layer's max)
    for c in result.history:
        for t, p in enumerate(c.policy):
            assert any(math.isclose(p, min(lv, env.max_ratios[t]), abs_tol=1e-9)
                       for lv in env.levels)


def test_seeded_runs_are_identical(setup, run):
    env, _, result, _ = run
    again = PuRL(episodes=EPISODES, seed=0, progress=False).search(make_env(setup))
    assert [c.policy for c in again.history] == [c.policy for c in result.history]


def test_continuous_env_is_rejected(setup):
    env = make_env(setup, action="continuous", reward="terminal_accuracy")
    with pytest.raises(ValueError, match="discrete"):
        PuRL(episodes=2, progress=False).search(env)
    assert len(env.history) == 0


def test_interrupt_keeps_what_was_evaluated(setup):
    env = make_env(setup)
    def stop(_agent, info):
        if info["episode"] == 2:
            raise KeyboardInterrupt

    agent = PuRL(episodes=8, seed=1, progress=False, callback=stop)
    result = agent.search(env)
    assert result.extra["interrupted"] is True
    assert len(result.history) == 3
    assert result.extra["episodes"] == 3


def test_options_and_registry():
    assert isinstance(get_method("purl", episodes=3, progress=False), PuRL)
    agent = PuRL(episodes=3, gamma=0.9, hidden_sizes=(16,))
    assert agent.config.gamma == 0.9 and agent.config.hidden_sizes == (16,)
    with pytest.raises(ValueError, match="unknown purl option"):
        PuRL(episodes=3, not_an_option=1)
    with pytest.raises(ValueError, match="episodes"):
        PuRL(episodes=0)
    with pytest.raises(ValueError, match="exploration"):
        PuRLConfig(exploration_final_eps=0.5, exploration_initial_eps=0.1)


def test_tight_budgets_get_levels_around_the_uniform_policy(setup):
    from rlprune import api

    model, splits = setup
    ex = splits.example_input(1)

    def env_for(budget: str, **kw):
        bound = api.budget_for(budget, "weight").bind(model, ex)
        env = api.make_env(model, splits, bound, "purl",
                           granularity="weight", dense_samples=DENSE_SAMPLES, **kw)
        PuRL(episodes=2).configure(env)  # what search() does first
        return env

    loose = env_for("params<=0.5")
    assert np.allclose(loose.levels, np.linspace(0.0, loose.a_max, 10))  # default grid
    tight = env_for("nonzero_params<=0.08")
    r = tight.evaluator.uniform_ratio()
    lv = tight.levels
    assert tight.action_space.n == len(lv) == 10
    assert lv[0] == 0.0 and np.all(np.diff(lv) > 0) and lv[-1] <= tight.a_max
    # four finer and four coarser levels around the uniform ratio, which is one of them
    assert np.min(np.abs(lv - r)) < 1e-5
    assert (lv > r + 1e-5).sum() == 4 and (lv < r - 1e-5).sum() == 5
    # the default grid has at most two levels at or beyond r; this one has five
    assert (np.linspace(0.0, tight.a_max, 10) >= r - 1e-5).sum() <= 2
    given = env_for("nonzero_params<=0.08", levels=[0.0, 0.5])
    assert given.levels.tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        tight.set_levels([0.2, 1.0])
