"""Tests of the ``amc`` method: the action wall, the decaying noise, the reward rewrite.

The wall is checked as a property over random agent actions and random budgets on a
small CNN: an episode never ends over a reachable budget, safe actions pass
unchanged, and a walled action is (within the bisection's tolerance) the smallest
safe one. Feasibility is measured here independently, with a budget bound to the
model and the space's ``apply``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlprune import data, models, train
from rlprune.agents.amc import AMC, ActionWall, TruncatedNormalDecayNoise
from rlprune.agents.base import get_method
from rlprune.costs import Budget
from rlprune.env import PruningEnv
from rlprune.history import policy_key


@pytest.fixture(scope="module")
def setup():
    """A briefly trained small CNN on synthetic 8x8 data, and its channel space."""
    splits = data.load("synthetic", seed=0)
    torch.manual_seed(0)
    model = models.create("digits_cnn", splits.num_classes, 1)
    train.fit(model, splits, epochs=8, progress=False, seed=0)
    model.eval()
    env = PruningEnv(model, splits, "params<=0.5")
    return model, splits, env.space


def make_env(setup, budget: str, **kw) -> PruningEnv:
    model, splits, space = setup
    return PruningEnv(model, splits, budget, space=space, **kw)


def measured_ok(setup, budget: str, policy: np.ndarray) -> bool:
    model, splits, space = setup
    bound = Budget.parse(budget).bind(model, splits.example_input(1))
    return bool(np.all(bound.ratios(space.apply(model, np.asarray(policy))) <= 1.0))


budgets = st.one_of(
    st.floats(0.05, 0.9).map(lambda p: f"params<={p:.4f}"),
    st.floats(0.05, 0.9).map(lambda f: f"flops<={f:.4f}"),
    st.tuples(st.floats(0.05, 0.9), st.floats(0.05, 0.9)).map(
        lambda pf: f"params<={pf[0]:.4f},flops<={pf[1]:.4f}"),
)


# preserve ratios; "keep everything" and out-of-range values are drawn often on purpose
actions_st = st.one_of(st.floats(0.2, 1.0), st.just(1.0), st.floats(-0.5, 1.5))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budget=budgets, actions=st.lists(actions_st, min_size=3, max_size=3))
def test_wall_keeps_every_episode_in_budget(setup, budget, actions):
    env = make_env(setup, budget)
    wall = ActionWall(env)
    assert env.T == 3
    bounds = np.minimum(env.max_ratios, 0.8)
    np.testing.assert_allclose(wall.bounds, bounds)
    reachable = measured_ok(setup, budget, bounds)
    wall.reset()
    executed = np.zeros(env.T)
    for t, a in enumerate(actions):
        a = float(np.float32(a))  # what the agent's float32 action carries
        agent_r = min(1.0 - float(np.clip(a, 0.2, 1.0)), bounds[t])
        rest = bounds.copy()
        rest[:t] = executed[:t]
        rest[t] = agent_r
        safe = measured_ok(setup, budget, rest)
        _, _, terminated, _, info = wall.step(np.array([a], dtype=np.float32))
        r = info["prune_ratio"]
        assert info["agent_ratio"] == pytest.approx(agent_r)
        assert info["executed_action"] == pytest.approx(1.0 - r)
        assert agent_r - 1e-12 <= r <= bounds[t] + 1e-12
        event("safe" if safe else "walled" if reachable else "unreachable")
        if safe:
            assert r == agent_r and not info["walled"]
        elif reachable:
            assert r > agent_r and info["walled"]
            # still safe with the rest at the bound, and (to the bisection's
            # tolerance) nothing smaller would be
            rest[t] = r
            assert measured_ok(setup, budget, rest)
            smaller = r - (bounds[t] - agent_r) / 2**wall.bisect_iters - 1e-9
            if smaller >= agent_r:
                rest[t] = smaller
                assert not measured_ok(setup, budget, rest)
        else:
            assert r == bounds[t]  # unreachable budget: prune as hard as allowed
        executed[t] = r
        assert terminated == (t == env.T - 1)
    np.testing.assert_allclose(env.history.candidates[-1].policy, executed)
    if reachable:
        assert np.all(info["cost"] <= 1.0) and info["feasible"]
        assert measured_ok(setup, budget, executed)


def test_wall_is_a_no_op_when_the_budget_is_loose(setup):
    env = make_env(setup, "params<=0.99")
    wall = ActionWall(env)
    wall.reset()
    for a in (1.0, 0.95, 0.97):
        _, _, _, _, info = wall.step(np.array([a]))
        assert info["prune_ratio"] == pytest.approx(1.0 - a) and not info["walled"]
    assert wall.measurements <= 3


def test_wall_rejects_discrete_env(setup):
    env = make_env(setup, "params<=0.5", action="discrete")
    with pytest.raises(ValueError, match="continuous"):
        ActionWall(env)
    with pytest.raises(ValueError, match="continuous"):
        AMC(episodes=2, progress=False).search(env)


def test_noise_sigma_decays_per_episode():
    noise = TruncatedNormalDecayNoise(sigma=0.5, decay=0.95, warmup_episodes=0, seed=0)
    for e in range(30):
        assert noise.sigma == pytest.approx(0.5 * 0.95**e)
        noise.reset()
    # with a warm-up, no noise until it is over, then the decay starts from 0.5
    noise = TruncatedNormalDecayNoise(warmup_episodes=3, seed=0)
    sigmas = []
    for _ in range(6):
        sigmas.append(noise.sigma)
        if noise.sigma == 0.0:
            assert np.all(noise() == 0.0)
        noise.reset()
    assert sigmas == pytest.approx([0, 0, 0, 0.5, 0.475, 0.45125])


def test_noise_samples_are_scaled_and_truncated():
    noise = TruncatedNormalDecayNoise(sigma=0.5, decay=0.95, low=0.2, high=1.0, seed=1)
    for _ in range(20):
        noise.reset()
    s = noise.sigma  # ~0.18 in preserve units; 2 / 0.8 = 2.5x in SB3's [-1, 1] units
    draws = np.array([noise()[0] for _ in range(20000)])
    assert draws.dtype == np.float32
    assert abs(draws.mean()) < 0.02
    assert draws.std() == pytest.approx(2.5 * s, rel=0.03)
    wide = TruncatedNormalDecayNoise(sigma=5.0, low=0.2, high=1.0, seed=2)
    big = np.array([wide()[0] for _ in range(2000)])
    assert np.all(np.abs(big) <= 2.0)  # truncated at the action range's width


@pytest.fixture(scope="module")
def amc_run(setup):
    """A short seeded amc search on a two-constraint budget."""
    budget = "params<=0.4,flops<=0.5"
    env = make_env(setup, budget)
    records: list[dict] = []
    agent = AMC(episodes=12, seed=0, progress=False, min_preserve=0.2,
                callback=lambda a, info: records.append(info))
    result = agent.search(env)
    return budget, env, agent, result, records


def test_short_search_is_feasible(setup, amc_run):
    budget, env, agent, result, records = amc_run
    assert result.method == "amc"
    assert len(result.history) == 12 and len(records) == 12
    assert result.extra["episodes"] == 12 and result.extra["timesteps"] == 12 * env.T
    assert result.evaluations == len({policy_key(c.policy) for c in result.history})
    assert result.extra["warmup_episodes"] == 3  # min(100, 12 // 4)
    assert result.extra["interrupted"] is False
    # the wall: every episode ended inside the budget
    assert all(c.feasible for c in result.history)
    assert measured_ok(setup, budget, result.policy)
    assert result.best is not None
    assert result.extra["best_found_at_evaluation"] == result.history.best_found_at
    assert 0.0 < result.extra["best_found_time_s"] <= result.wall_time
    # AMC's action range: every layer keeps at least 20% of its channels
    assert np.all(np.array([c.policy for c in result.history]) <= 0.8 + 1e-12)
    # AMC's two learning rates survived SB3's per-update learning-rate schedule
    assert agent.model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert agent.model.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_noise_schedule_inside_search(amc_run):
    _, _, agent, result, _ = amc_run
    sig = result.extra["curves"]["sigma"]
    warm = result.extra["warmup_episodes"]
    expected = [0.0] * warm + [0.5 * 0.95 ** (e - warm) for e in range(warm, 12)]
    assert sig == pytest.approx(expected)


def test_replay_buffer_holds_final_reward_minus_baseline(amc_run):
    _, env, agent, result, records = amc_run
    T = env.T
    buf = agent.model.replay_buffer
    assert buf.buffer_size == 12 * T and buf.full and buf.pos == 0  # every transition kept
    baseline = None
    for e, (rec, cand) in enumerate(zip(records, result.history)):
        final = rec["final_reward"]
        assert final == pytest.approx(cand.reward, abs=1e-6)  # terminal accuracy
        b = final if baseline is None else baseline
        assert rec["baseline"] == pytest.approx(b)
        assert rec["advantage"] == pytest.approx(final - b)
        baseline = final if baseline is None else 0.95 * baseline + 0.05 * final
        rows = slice(e * T, (e + 1) * T)
        np.testing.assert_allclose(buf.rewards[rows, 0], final - b, atol=1e-6)
        # the stored actions are the walled actions actually executed (scaled to [-1, 1])
        preserve = 1.0 - np.asarray(cand.policy)
        np.testing.assert_allclose(buf.actions[rows, 0, 0], 2 * (preserve - 0.2) / 0.8 - 1,
                                   atol=1e-5)
    assert result.extra["baseline"] == pytest.approx(baseline)
    # not a trivial case: the advantages differ between episodes
    assert len({round(r["advantage"], 6) for r in records}) > 1


def test_interrupt_keeps_what_was_evaluated(setup):
    env = make_env(setup, "params<=0.5")
    def stop(_agent, info):
        if info["episode"] == 1:
            raise KeyboardInterrupt

    agent = AMC(episodes=8, seed=1, progress=False, callback=stop)
    result = agent.search(env)
    assert result.extra["interrupted"] is True
    assert len(result.history) == 2
    assert measured_ok(setup, "params<=0.5", result.policy)


def test_options_and_registry(setup):
    assert isinstance(get_method("amc", episodes=3, progress=False), AMC)
    assert AMC(episodes=800).warmup_episodes() == 100
    assert AMC(episodes=40).warmup_episodes() == 10
    assert AMC(episodes=40, warmup_episodes=0).warmup_episodes() == 0
    with pytest.raises(ValueError, match="unknown amc option"):
        AMC(episodes=3, nope=1)
    env = make_env(setup, "flops<=0.5")
    with pytest.raises(ValueError, match="neg_error_log_flops"):
        AMC(episodes=2, reward="neg_error_log_flops", progress=False).search(env)
    agent = AMC(episodes=2, progress=False)
    model = agent.build(env)
    assert model.gamma == 1.0 and model.tau == 0.01 and model.batch_size == 64
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert model.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_prune_lowers_the_preserve_floor_for_budgets_it_cannot_reach():
    """At 10% of the weights the published floor (keep >= 20% of every layer) leaves
    AMC one walled policy; rlprune.prune lowers it so the search has room."""
    from rlprune import api, models

    torch.manual_seed(0)
    model = models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 10, (96,))
    seen = []
    res = api.prune(model, (x, y, x, y), "params<=0.1", method="amc", granularity="weight",
                    episodes=12, progress=False, refine=False,
                    callback=lambda agent, info: seen.append(agent.min_preserve))
    assert res.feasible
    assert seen and 0.03 < seen[0] < 0.06  # half of the ~10% uniform keep ratio
    assert res.search.evaluations > 1  # distinct policies, not one walled policy
    wide = api.prune(model, (x, y, x, y), "params<=0.6", method="amc", granularity="weight",
                     episodes=2, progress=False,
                     callback=lambda agent, info: seen.append(agent.min_preserve))
    assert wide.feasible and seen[-1] == 0.2  # the published floor where it suffices
    published = api.prune(model, (x, y, x, y), "params<=0.1", method="amc",
                          granularity="weight", episodes=2, progress=False,
                          method_kwargs={"min_preserve": 0.2},
                          callback=lambda agent, info: seen.append(agent.min_preserve))
    assert published.feasible and seen[-1] == 0.2  # the paper's floor when asked for
