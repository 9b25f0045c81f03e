"""Tests of ``rlprune.agents.cpl`` (PPO-Lagrangian): the maths, then whole searches.

The pure functions are checked against hand-computed numbers and an independent
PPO loss; the searches run on the toy constrained MDPs of ``toy_envs`` whose
optimum (cost ratio 1.0, multiplier 0.5) is known in closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlprune import data, models
from rlprune.agents.base import SearchResult, get_method, list_methods
from rlprune.agents.cpl import (
    CPL,
    CPLConfig,
    CPLPaper,
    PIDLagrangian,
    compute_gae,
    ppo_lagrangian_policy_loss,
    update_multipliers,
)
from toy_envs import half_budget_env, kept, step_cost_env, two_constraint_env

EPISODES_PER_ROLLOUT = 43  # 128 steps rounded up to whole episodes of T = 3


def policies(env) -> list[list[float]]:
    return [c.policy for c in env.history]


# ----------------------------------------------------------------------------- GAE


def test_gae_matches_hand_computation_with_a_done_in_the_middle():
    # gamma 0.9, lambda 0.8 (gamma * lambda = 0.72); the episode ends at step 1.
    rewards = [1.0, 0.0, 2.0, 1.0]
    values = [0.5, 0.4, 0.3, 0.2]
    dones = [0, 1, 0, 0]
    adv, ret = compute_gae(rewards, values, dones, last_value=0.6, gamma=0.9, lam=0.8)
    # t=3: 1 + 0.9*0.6 - 0.2 = 1.34
    # t=2: (2 + 0.9*0.2 - 0.3) + 0.72*1.34 = 1.88 + 0.9648 = 2.8448
    # t=1: terminal, no bootstrap: 0 - 0.4 = -0.4
    # t=0: (1 + 0.9*0.4 - 0.5) + 0.72*(-0.4) = 0.86 - 0.288 = 0.572
    np.testing.assert_allclose(adv, [0.572, -0.4, 2.8448, 1.34], atol=1e-12)
    np.testing.assert_allclose(ret, [1.072, 0.0, 3.1448, 1.54], atol=1e-12)


def test_gae_terminal_last_step_ignores_last_value_and_lambda_one_is_monte_carlo():
    adv, ret = compute_gae([0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0, 0, 1], 99.0, 0.5, 1.0)
    # lambda = 1: returns are the discounted sums 0.75, 1.5, 3 (last_value unused)
    np.testing.assert_allclose(ret, [0.75, 1.5, 3.0])
    np.testing.assert_allclose(adv, [-0.25, 0.5, 2.0])


def test_gae_on_columns_equals_gae_per_column():
    rng = np.random.default_rng(0)
    costs, values = rng.random((7, 2)), rng.random((7, 2))
    dones = np.array([0, 0, 1, 0, 0, 1, 0])
    last = np.array([0.3, 0.7])
    adv, ret = compute_gae(costs, values, dones, last, 0.99, 1.0)
    for i in range(2):
        a_i, r_i = compute_gae(costs[:, i], values[:, i], dones, last[i], 0.99, 1.0)
        np.testing.assert_allclose(adv[:, i], a_i)
        np.testing.assert_allclose(ret[:, i], r_i)


# ----------------------------------------------------------------------------- multipliers


def test_multiplier_rises_above_the_limit_and_is_projected_to_exactly_zero_below():
    limits = np.array([1.0])
    nu = np.array([0.0])
    history = []
    for cost in [1.5, 1.5, 1.2]:  # violated: nu must grow in proportion to the violation
        nu = update_multipliers(nu, np.array([cost]), limits, lr=0.1)
        history.append(float(nu[0]))
    np.testing.assert_allclose(history, [0.05, 0.10, 0.12])
    for _ in range(3):  # slack of 0.8 per step: 0.12 -> 0.04 -> 0 (not -0.04)
        nu = update_multipliers(nu, np.array([0.2]), limits, lr=0.1)
        assert nu[0] >= 0.0
    assert nu[0] == 0.0


def test_multipliers_are_independent_per_constraint():
    nu = update_multipliers(np.array([0.2, 0.2]), np.array([2.0, 0.0]), np.array([1.0, 1.0]), 0.1)
    np.testing.assert_allclose(nu, [0.3, 0.1])


def test_pid_with_integral_only_is_projected_gradient_ascent():
    rng = np.random.default_rng(1)
    limits = np.array([1.0, 0.8])
    pid = PIDLagrangian(2, kp=0.0, ki=0.05, kd=0.0, nu_init=0.2)
    nu = np.array([0.2, 0.2])
    for _ in range(50):
        costs = rng.uniform(0.0, 2.0, size=2)
        nu = update_multipliers(nu, costs, limits, lr=0.05)
        np.testing.assert_allclose(pid.update(costs, limits), nu, atol=1e-12)


def test_pid_proportional_and_derivative_terms_react_at_once():
    pid = PIDLagrangian(1, kp=1.0, ki=0.0, kd=2.0)
    np.testing.assert_allclose(pid.update(np.array([1.3]), np.array([1.0])), [0.3])
    # cost rose by 0.2: P = 0.5, D = 2 * 0.2
    np.testing.assert_allclose(pid.update(np.array([1.5]), np.array([1.0])), [0.9])
    # below the limit and falling (ki = 0): nu drops straight to 0
    np.testing.assert_allclose(pid.update(np.array([0.7]), np.array([1.0])), [0.0])


# ----------------------------------------------------------------------------- policy loss


def _batch(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(n, generator=g)
    new = old + 0.4 * torch.randn(n, generator=g)  # many ratios outside [0.8, 1.2]
    return new, old, torch.randn(n, generator=g), torch.randn(2, n, generator=g)


def test_loss_with_zero_multipliers_is_the_plain_ppo_clipped_loss():
    new, old, adv_r, adv_c = _batch()
    loss = ppo_lagrangian_policy_loss(new, old, adv_r, adv_c, [0.0, 0.0], clip=0.2)
    # independent reference: PPO (Schulman et al. 2017) eq. 7, written out with numpy
    ratio = np.exp(new.numpy().astype(np.float64) - old.numpy())
    a = adv_r.numpy().astype(np.float64)
    expected = -np.mean(np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_with_multipliers_penalises_costly_actions():
    new, old, adv_r, adv_c = _batch()
    nus = [0.7, 0.3]
    loss = ppo_lagrangian_policy_loss(new, old, adv_r, adv_c, nus, clip=0.2)
    plain = ppo_lagrangian_policy_loss(new, old, adv_r, adv_c, [0.0, 0.0], clip=0.2)
    ratio = torch.exp(new - old)
    penalty = sum(nu * (ratio * adv_c[i]).mean() for i, nu in enumerate(nus))
    assert loss.item() == pytest.approx(((plain + penalty) / 2.0).item(), rel=1e-5)

    # the direction: with no reward signal, minimising the loss must make the action
    # with a positive cost advantage less likely and the one with a negative one more
    n = 4
    new = torch.zeros(n, requires_grad=True)
    adv_c = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    for nu, sign in [(0.0, 0.0), (1.0, 1.0)]:
        new.grad = None
        ppo_lagrangian_policy_loss(new, torch.zeros(n), torch.zeros(n), adv_c, [nu], 0.2).backward()
        assert np.sign(new.grad[0].item()) == sign
        assert np.sign(new.grad[1].item()) == -sign
    # a list of per-constraint tensors is accepted too
    listed = ppo_lagrangian_policy_loss(new, torch.zeros(n), torch.zeros(n), [adv_c[0]], [1.0], 0.2)
    assert listed.item() == pytest.approx(0.0)


# ----------------------------------------------------------------------------- API


def test_registered_and_config_overrides_are_checked():
    assert "cpl" in list_methods()
    agent = get_method("cpl", episodes=5, progress=False, clip_coef=0.1)
    assert isinstance(agent, CPL) and agent.config.clip_coef == 0.1
    assert CPLConfig().lagrangian == "gradient" and CPLConfig().nu_init == 0.0
    with pytest.raises(ValueError, match="bogus"):
        CPL(bogus=1)
    with pytest.raises(ValueError, match="adam"):
        CPLConfig(lagrangian="adam")
    with pytest.raises(ValueError, match="cost_limits has 3 values"):
        CPL(episodes=3, progress=False, cost_limits=(1.0, 1.0, 1.0)).search(two_constraint_env())


def test_total_timesteps_sets_the_episode_budget():
    env = half_budget_env()
    result = CPL(episodes=1000, progress=False, total_timesteps=30).search(env)
    assert result.evaluations == 10 and result.extra["timesteps"] == 30


def test_same_seed_same_policies_other_seed_other_policies():
    runs = []
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1]
    for seed in (3, 3, 4):
        env = half_budget_env()
        CPL(episodes=60, seed=seed, progress=False).search(env)
        runs.append(policies(env))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # the agent draws only from its own generators: global RNG state is left alone
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_hooks_curves_and_history_tags_agree():
    seen: list[dict] = []
    env = half_budget_env()
    agent = CPL(
        episodes=100,
        progress=True,  # exercise the bar (pytest captures it)
        min_updates=0,  # the authors' rollouts: 43 + 43 + 14 episodes
        callback=lambda a, info: seen.append(info),
    )
    result = agent.search(env)
    curves = result.extra["curves"]
    assert [i["episode"] for i in seen] == list(range(100))
    assert set(curves) == {
        "episode",
        "return",
        "accuracy",
        "feasible",
        "cost/params",
        "multiplier/params",
    }
    assert all(len(v) == 100 for v in curves.values())
    for info, cand, r, c, nu in zip(
        seen, env.history, curves["return"], curves["cost/params"], curves["multiplier/params"]
    ):
        assert info["return"] == pytest.approx(cand.reward) and r == pytest.approx(cand.reward)
        assert info["costs"] == pytest.approx(cand.cost_ratios)
        assert [c] == pytest.approx(cand.cost_ratios)
        assert info["multipliers"] == cand.extra["multipliers"] == [nu]
        assert info["candidate"] is cand
    # the multipliers changed only at rollout boundaries
    nus = curves["multiplier/params"]
    assert len(set(nus[:EPISODES_PER_ROLLOUT])) == 1
    assert len(set(nus[EPISODES_PER_ROLLOUT:2 * EPISODES_PER_ROLLOUT])) == 1
    assert nus[EPISODES_PER_ROLLOUT] != nus[0]
    assert result.extra["interrupted"] is False


# ----------------------------------------------------------------------------- searches


def test_converges_to_the_cost_limit_on_the_toy_cmdp():
    env = half_budget_env()
    result = CPL(episodes=2000, seed=0, progress=False).search(env)
    assert isinstance(result, SearchResult) and result.method == "cpl"
    costs = result.extra["curves"]["cost/params"]
    assert 0.85 <= np.mean(costs[-200:]) <= 1.05  # the expected cost sits at the limit
    # it had to learn: chasing reward first took the cost well over the limit
    assert max(np.mean(costs[i : i + 100]) for i in range(0, 1000, 100)) > 1.2
    assert 0.35 <= result.extra["multipliers"][0] <= 0.65  # the true multiplier is 0.5
    assert np.all(env.cost_ratios(result.policy) <= 1.0)
    assert result.best is not None and result.best.reward >= 0.74  # optimum: 0.75


def test_pid_multipliers_settle_on_a_linear_toy():
    # reward linear in the cost: the Lagrangian is bang-bang and plain ascent circles;
    # the PID controller's proportional term damps it onto the limit
    env = half_budget_env(reward_fn=kept)
    result = CPL(episodes=2000, seed=0, progress=False, lagrangian="pid").search(env)
    costs = result.extra["curves"]["cost/params"]
    assert 0.9 <= np.mean(costs[-200:]) <= 1.05
    assert 0.3 <= result.extra["multipliers"][0] <= 0.7
    assert result.best is not None and result.best.reward >= 0.49  # optimum: 0.5


def test_black_box_step_cost_finds_a_feasible_policy():
    env = step_cost_env()
    result = CPL(episodes=1300, seed=0, progress=False).search(env)
    assert result.best is not None and result.best.feasible
    assert result.best.reward >= 0.6  # optimum 0.64 (keep 40%); keeping all scores 1.0
    assert np.all(env.cost_ratios(result.policy) <= 1.0)
    assert max(result.extra["curves"]["multiplier/blackbox"]) > 0.0


def test_two_constraints_carry_one_entry_each():
    env = two_constraint_env()
    agent = CPL(episodes=200, seed=0, progress=False)
    result = agent.search(env)
    assert agent.nu.shape == (2,) and len(agent.critics.costs) == 2
    assert result.extra["constraint_names"] == ["params", "latency"]
    assert len(result.extra["multipliers"]) == 2
    for cand in env.history:
        assert len(cand.cost_ratios) == 2 and len(cand.extra["multipliers"]) == 2
    curves = result.extra["curves"]
    assert {"cost/params", "cost/latency", "multiplier/params", "multiplier/latency"} <= set(curves)
    # latency never exceeds half its limit: projected ascent keeps its nu at exactly 0,
    # while params starts over its limit and its nu rises
    assert max(curves["cost/latency"]) <= 0.5
    assert all(v == 0.0 for v in curves["multiplier/latency"]) and agent.nu[1] == 0.0
    assert max(curves["multiplier/params"]) > 0.0
    # per-constraint thresholds: a loose params limit leaves both multipliers at 0
    loose = CPL(episodes=90, progress=False, cost_limits=(2.5, 1.0))
    loose_result = loose.search(two_constraint_env())
    assert loose_result.extra["multipliers"] == [0.0, 0.0]


# ----------------------------------------------------------------------------- resume


def _params(agent: CPL) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*agent.policy.parameters(), *agent.critics.parameters()]]


def test_keyboard_interrupt_keeps_what_was_evaluated():
    env = half_budget_env(interrupt_at=(10, 1))  # Ctrl-C inside the 11th episode
    agent = CPL(episodes=200, seed=0, progress=True)
    result = agent.search(env)
    assert isinstance(result, SearchResult)
    assert result.extra["interrupted"] is True
    assert result.evaluations == 10 and len(result.history) == 10
    assert len(result.extra["curves"]["return"]) == 10
    assert np.all(env.cost_ratios(result.policy) <= 1.0)


def test_init_action_starts_the_policy_mean_there():
    for target in (0.2, 0.75):
        env = half_budget_env()
        agent = CPL(episodes=1, seed=0, progress=False, init_action=target)
        agent._setup(env)
        obs = torch.as_tensor(np.stack([env.reset(seed=0)[0], np.ones(3, dtype=np.float32)]))
        with torch.no_grad():
            mean = agent.policy(obs).mean.numpy()
        low, high = env.action_space.low[0], env.action_space.high[0]
        squashed = low + (np.tanh(mean) + 1.0) * 0.5 * (high - low)
        assert np.allclose(squashed, target, atol=0.02)


def test_prune_starts_mid_range_unless_init_action_is_given(monkeypatch):
    import rlprune.agents.cpl as cpl_mod
    from rlprune import api, models

    seen = []
    real = cpl_mod.CPL._start_mean_at

    def spy(self, action):
        seen.append(action)
        return real(self, action)

    monkeypatch.setattr(cpl_mod.CPL, "_start_mean_at", spy)
    torch.manual_seed(0)
    model = models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    for kwargs in ({}, {"init_action": 0.8}):
        res = api.prune(model, (x, y, x, y), "params<=0.2", method="cpl",
                        granularity="weight", episodes=2, progress=False,
                        method_kwargs=kwargs)
        assert res.feasible
    assert seen == [0.8]


# ----------------------------------------------------------------------------- warm start


def test_warm_start_scores_the_heuristics_first_and_starts_at_the_best(trained_digits_cnn,
                                                                      digits):
    from rlprune import api
    from rlprune.agents.baselines import heuristic_policies
    from rlprune.costs import Budget

    bound = Budget.parse("params<=0.3").bind(trained_digits_cnn, digits.example_input(1))
    env = api.make_env(trained_digits_cnn, digits, bound, "cpl")
    assert env.repair == "boundary"  # cpl's env: every candidate spends the budget
    heur = heuristic_policies(env)
    agent = CPL(episodes=8, seed=0, progress=False)
    result = agent.search(env)
    first = result.history.candidates[:3]
    assert [c.extra.get("warm_start") for c in first] == ["uniform", "global", "lamp"]
    for c in first:
        np.testing.assert_allclose(c.policy, heur[c.extra["warm_start"]])
    best = max(first, key=result.history.key)
    # right after the warm start (before any PPO update moves it), the policy's mean
    # proposes the best heuristic's allocation
    obs = torch.as_tensor(env.observations(best.policy), dtype=torch.float32)
    low, high = env.action_space.low[0], env.action_space.high[0]
    means = []

    def record(searcher, info):  # after each episode; the first update comes after the 4th
        with torch.no_grad():
            u = searcher.policy.mean(obs).squeeze(-1)
        means.append((low + (torch.tanh(u) + 1) / 2 * (high - low)).numpy())

    fresh_env = api.make_env(trained_digits_cnn, digits, bound, "cpl")
    CPL(episodes=8, seed=0, progress=False, callback=record).search(fresh_env)
    assert np.allclose(means[3], np.minimum(best.policy, high), atol=0.05)
    assert not np.allclose(means[2], np.minimum(best.policy, high), atol=0.05)
    assert result.best is not None
    assert result.history.key(result.best) >= result.history.key(best)
    # the paper's start: no heuristic is scored
    env2 = api.make_env(trained_digits_cnn, digits, bound, "cpl", repair="none")
    CPL(episodes=4, seed=0, progress=False, warm_start=False).search(env2)
    assert not any("warm_start" in c.extra for c in env2.history)


def test_warm_random_adds_random_boundary_allocations_to_the_warm_start(trained_digits_cnn,
                                                                       digits):
    """``warm_random=2`` scores two random allocations, on the budget's boundary, after the
    heuristics; the policy then starts at the best of all five, and a seed repeats them."""
    from rlprune import api
    from rlprune.costs import Budget

    bound = Budget.parse("params<=0.3").bind(trained_digits_cnn, digits.example_input(1))

    def run(**kw):
        env = api.make_env(trained_digits_cnn, digits, bound, "cpl")
        means = []
        best_seen = []

        def record(searcher, info):
            best_seen.append(info["best"])
            obs = torch.as_tensor(env.observations(info["best"].policy), dtype=torch.float32)
            with torch.no_grad():
                u = searcher.policy.mean(obs).squeeze(-1)
            low, high = env.action_space.low[0], env.action_space.high[0]
            means.append((low + (torch.tanh(u) + 1) / 2 * (high - low)).numpy())

        res = CPL(episodes=9, seed=0, progress=False, callback=record, **kw).search(env)
        return res, means, best_seen, env

    result, means, best_seen, env = run(warm_random=2)
    first = result.history.candidates[:5]
    assert [c.extra.get("warm_start") for c in first] == ["uniform", "global", "lamp",
                                                          "random0", "random1"]
    for c in first[3:]:
        assert c.feasible and max(c.cost_ratios) > 0.9  # moved onto the boundary
        assert not any(np.allclose(c.policy, h.policy) for h in first[:3])
    # from the first PPO episode (before any update), the mean proposes the best of the five
    high = env.action_space.high[0]
    assert np.allclose(means[5], np.minimum(best_seen[4].policy, high), atol=0.05)
    assert not np.allclose(means[4], np.minimum(best_seen[4].policy, high), atol=0.05)
    again, _, _, _ = run(warm_random=2)
    assert [c.policy for c in again.history.candidates] == [c.policy for c in
                                                            result.history.candidates]
    plain, _, _, _ = run()
    assert not any(str(c.extra.get("warm_start", "")).startswith("random")
                   for c in plain.history.candidates)
    with pytest.raises(ValueError, match="warm_random"):
        CPLConfig(warm_random=-1)


def test_exploration_width_defaults_by_granularity_and_follows_an_override():
    """Weight budgets explore at log std -2.0, channel budgets at -1.0 (the cpl
    ablation), an explicit ``log_std_init`` wins, and cpl-paper keeps -0.5."""
    from rlprune import api

    torch.manual_seed(0)
    model = models.create("lenet300", num_classes=10, in_channels=1, input_size=8)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    seen = {}
    for key, method, gran, kwargs in (("weight", "cpl", "weight", {}),
                                      ("channel", "cpl", "channel", {}),
                                      ("override", "cpl", "weight", {"log_std_init": -1.2}),
                                      ("paper", "cpl-paper", "weight", {})):
        agent = CPL if method == "cpl" else CPLPaper
        searcher = agent(episodes=2, progress=False, **kwargs)
        splits = data.from_tensors(x, y, x, y, num_classes=10)
        bound = api.budget_for("params<=0.3", gran).bind(model, x[:1])
        searcher._setup(api.make_env(model, splits, bound, method, granularity=gran))
        seen[key] = float(searcher.policy.log_std.detach()[0])
    assert seen == {"weight": -2.0, "channel": -1.0, "override": pytest.approx(-1.2),
                    "paper": -0.5}


def test_polish_spends_the_last_episodes_near_the_best_candidate(trained_digits_cnn, digits):
    """``polish=0.5`` spends the second half of the episodes on perturbations of the best
    candidate, each moved onto the budget's boundary; the same seed proposes the same."""
    from rlprune import api
    from rlprune.costs import Budget

    bound = Budget.parse("params<=0.3").bind(trained_digits_cnn, digits.example_input(1))

    def run():
        env = api.make_env(trained_digits_cnn, digits, bound, "cpl")
        return CPL(episodes=12, seed=0, progress=False, polish=0.5).search(env), env

    result, env = run()
    cands = result.history.candidates
    assert len(cands) == 12 and result.extra["episodes"] == 12
    polished = [c for c in cands if c.extra.get("polish")]
    assert [c.index for c in polished] == list(range(6, 12))
    for c in polished:
        assert c.feasible and 0.97 < max(c.cost_ratios) <= 1.0  # on the boundary
        # near a candidate scored before it: no keep ratio moved by more than a factor 3
        before = [np.asarray(p.policy) for p in cands[:c.index] if p.feasible]
        keep = 1.0 - np.asarray(c.policy)
        assert min(np.max(np.abs(np.log(keep / np.maximum(1.0 - b, 1e-9)))) for b in before) < 1.1
    again, _ = run()
    assert [c.policy for c in again.history.candidates] == [c.policy for c in cands]
    with pytest.raises(ValueError, match="polish is a fraction"):
        CPLConfig(polish=1.0)
