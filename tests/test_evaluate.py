"""The candidate evaluator, the budget bound once, and what a run leaves untouched."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from rlprune import api, costs, report
from rlprune.agents import get_method
from rlprune.costs import Budget
from rlprune.env import PruningEnv
from rlprune.evaluate import EvalOptions, Evaluator
from rlprune.space import PruningSpace


@pytest.fixture(scope="module")
def model(trained_digits_cnn):
    return copy.deepcopy(trained_digits_cnn).eval()


def _evaluator(model, digits, budget="params<=0.5", **opts) -> Evaluator:
    ex = digits.example_input(1)
    space = PruningSpace.from_model(model, ex)
    return Evaluator(model, space, Budget.parse(budget).bind(model, ex), digits,
                     EvalOptions(**opts))


def test_score_is_pure_and_evaluate_records_and_caches(model, digits):
    ev = _evaluator(model, digits)
    policy = np.full(len(ev.space), 0.3)
    scored = ev.score(policy)
    assert len(ev.history) == 0  # scoring records nothing
    first = ev.evaluate(policy, episode=4)
    assert first.index == 0 and first.episode == 4
    assert (first.accuracy, first.costs, first.reward) == (scored.accuracy, scored.costs,
                                                          scored.reward)
    again = ev.evaluate(policy, episode=5)
    assert again.extra.get("cached") is True and ev.history.evaluations == 1
    assert len(ev.history) == 2


def test_evaluator_pickles_and_scores_the_same_elsewhere(model, digits):
    ev = _evaluator(model, digits, "params<=0.5,flops<=0.7")
    policy = np.linspace(0.1, 0.5, len(ev.space))
    here = ev.score(policy)
    there = pickle.loads(pickle.dumps(ev)).score(policy)
    assert there.accuracy == here.accuracy
    assert there.costs == here.costs and there.cost_ratios == here.cost_ratios


def test_evaluator_refuses_an_unbound_budget(model, digits):
    space = PruningSpace.from_model(model, digits.example_input(1))
    with pytest.raises(TypeError, match="BoundBudget"):
        Evaluator(model, space, Budget.parse("params<=0.5"), digits)  # type: ignore[arg-type]


def test_env_leaves_the_callers_model_alone(model, digits):
    mine = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    env = PruningEnv(mine, digits, "params<=0.5")
    env.reset(seed=0)
    for _ in range(env.T):
        env.step(np.array([0.3], np.float32))
    assert mine.training, "PruningEnv put the caller's model in eval mode"
    for k, v in mine.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_prune_and_compare_leave_the_callers_model_alone(model, digits, granularity):
    mine = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    api.prune(mine, digits, "params<=0.5", method="random", granularity=granularity,
              episodes=3, finetune_epochs=1, progress=False)
    api.compare(mine, digits, "params<=0.5", methods=["uniform", "cpl"],
                granularity=granularity, episodes=2, progress=False)
    assert mine.training
    for k, v in mine.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("method", ["cpl", "purl", "amc", "random"])
def test_prune_leaves_the_global_random_state_alone(model, digits, method):
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    api.prune(model, digits, "params<=0.5", method=method, episodes=3, progress=False)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


def test_the_budget_is_bound_once_per_run(model, digits):
    """A relative limit on a cost that drifts: the limit comes from the first measurement
    of the original, at the start, and the final check uses that same limit (re-binding
    would measure the original again and move it)."""
    width = costs.count_params(model)
    seen_original = []

    def drifting(m: nn.Module) -> float:
        n = costs.count_params(m)
        if n == width:  # the unpruned model: a measurement that moves every time
            seen_original.append(n)
            return n * (1.0 + 0.1 * len(seen_original))
        return float(n)

    budget = Budget(custom={"drifting": (drifting, "60%")})
    res = api.prune(model, digits, budget, method="random", episodes=3, progress=False)
    first = 0.6 * width * 1.1  # the first measurement of the original
    assert res.costs["drifting"]["limit"] == pytest.approx(first)
    assert res.bound.limits["drifting"] == pytest.approx(first)
    assert res.costs["drifting"]["original"] == pytest.approx(width * 1.1)
    seen_original.clear()
    out = api.compare(model, digits, budget, methods=["uniform", "random"], episodes=2,
                      progress=False)
    for r in out:  # one binding shared by every method of a comparison
        assert r.costs["drifting"]["limit"] == pytest.approx(first)


def test_options_a_method_does_not_know_are_an_error(model, digits):
    for method in ("uniform", "random", "global"):
        with pytest.raises(ValueError, match=f"unknown {method} option"):
            api.prune(model, digits, "params<=0.5", method=method, progress=False,
                      method_kwargs={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown cpl option"):
        get_method("cpl", not_an_option=1)


def test_prune_with_a_ready_env_refuses_what_it_would_ignore(model, digits):
    bound = Budget.parse("params<=0.5").bind(model, digits.example_input(1))
    env = api.make_env(model, digits, bound, "uniform")
    with pytest.raises(ValueError, match="space"):
        api.prune(model, digits, "params<=0.5", method="uniform", env=env,
                  space=env.space, progress=False)
    with pytest.raises(ValueError, match="env_kwargs"):
        api.prune(model, digits, "params<=0.5", method="uniform", env=env,
                  env_kwargs={"bn_samples": 0}, progress=False)
    with pytest.raises(ValueError, match="importance"):
        api.prune(model, digits, "params<=0.5", method="uniform", env=env,
                  importance="l2", progress=False)


def test_summary_shows_costs_that_are_only_reported(model, digits):
    res = api.prune(model, digits, "flops<=0.6", method="uniform", progress=False)
    text = res.summary()
    assert "nan" not in text
    assert "params:" in text and "reported only" in text
    assert "flops:" in text and "limit" in text


# ------------------------------------------------------------------ repair of episodes
def _run_episode(env: PruningEnv, ratio: float) -> dict:
    env.reset(seed=0)
    info: dict = {}
    for _ in range(env.T):
        _, _, _, _, info = env.step(np.array([ratio], np.float32))
    return info


def test_repair_project_scores_the_projection_and_reports_the_raw_cost(model, digits):
    env = PruningEnv(model, digits, "params<=0.3", repair="project")
    info = _run_episode(env, 0.1)  # far over the budget
    assert info["projected"] and np.all(info["cost"] > 1.0)
    cand = env.history.candidates[-1]
    assert cand.feasible and np.all(np.asarray(cand.cost_ratios) <= 1.0)
    assert np.all(np.asarray(cand.policy) >= 0.1 - 1e-12)  # moved toward more pruning
    plain = PruningEnv(model, digits, "params<=0.3")  # the paper's MDP scores it as chosen
    info = _run_episode(plain, 0.1)
    assert not info["projected"] and not plain.history.candidates[-1].feasible


def test_repair_boundary_spends_the_budget_and_keeps_the_shape(model, digits):
    env = PruningEnv(model, digits, "params<=0.5", repair="boundary")
    assert env.T == 3
    for ratios, inside in (([0.8, 0.3, 0.6], True), ([0.3, 0.2, 0.3], False)):
        env.reset(seed=0)
        for r in ratios:
            _, _, _, _, info = env.step(np.array([r], np.float32))
        raw = np.minimum(np.asarray(ratios), env.max_ratios)
        assert bool(np.all(info["cost"] <= 1.0)) == inside  # room to spare, or over
        cand = env.history.candidates[-1]
        assert info["projected"] and cand.feasible
        assert max(cand.cost_ratios) > 0.97  # the scored candidate spends the budget
        keep, raw_keep = 1.0 - np.asarray(cand.policy), 1.0 - raw
        inner = (keep < 1.0 - 1e-9) & (keep > 1.0 - env.max_ratios + 1e-9)
        scale = keep[inner] / raw_keep[inner]
        assert inner.sum() >= 2 and np.allclose(scale, scale[0], rtol=1e-6)  # one factor
    with pytest.raises(ValueError, match="repair"):
        PruningEnv(model, digits, "params<=0.5", repair="always")


@pytest.fixture(scope="module")
def wide_reward():
    """Digits with a reward split large enough to race on (about 430 samples)."""
    from rlprune import data

    return data.load("digits", reward_fraction=0.3, seed=0)


def test_raced_accuracy_stops_where_told_and_counts_what_it_scored(model, wide_reward):
    ev = _evaluator(model, wide_reward)
    n = len(wide_reward.reward.y)
    assert n >= 200
    pruned = ev.build(np.full(len(ev.space), 0.2))
    full = ev.accuracy(pruned)
    before = ev.spent["reward_samples"]
    acc, scored = ev.raced_accuracy(pruned, lambda upper, p: True)
    assert scored == int(n * 0.25) and ev.spent["reward_samples"] - before == scored
    seen = []
    acc, scored = ev.raced_accuracy(pruned, lambda upper, p: seen.append((upper, p)) or False)
    assert scored == n and acc == pytest.approx(full)
    assert len(seen) == 2 and all(u >= p for u, p in seen)  # an upper bound, twice


def test_racing_stops_a_hopeless_candidate_and_never_a_winner(model, wide_reward):
    ev = _evaluator(model, wide_reward, "params<=0.9")
    n = len(wide_reward.reward.y)
    good = ev.evaluate(np.full(len(ev.space), 0.1))
    assert "raced" not in good.extra and ev.spent["reward_samples"] == n  # nothing to beat yet
    bad = ev.evaluate(np.full(len(ev.space), 0.85))
    assert bad.extra.get("raced") is True and bad.extra["scored_samples"] < n
    assert ev.spent["reward_samples"] < 2 * n
    assert ev.score(bad.policy).accuracy < good.accuracy  # it was rightly stopped
    off = _evaluator(model, wide_reward, "params<=0.9", race_z=None)
    off.evaluate(np.full(len(ev.space), 0.1))
    assert "raced" not in off.evaluate(np.full(len(ev.space), 0.85)).extra
    assert off.spent["reward_samples"] == 2 * n


def test_a_raced_search_returns_a_fully_scored_best(model, wide_reward):
    ex = wide_reward.example_input(1)
    res = api.prune(model, wide_reward, "params<=0.4", method="random", episodes=24, seed=3,
                    progress=False)
    hist = res.history
    raced = [c for c in hist if c.extra.get("raced")]
    assert raced, "random candidates below the best should stop early"
    assert "raced" not in hist.best.extra
    assert res.search.extra["spent"]["reward_samples"] < len(hist) * len(wide_reward.reward.y)
    space = PruningSpace.from_model(model, ex)
    full = Evaluator(model, space, Budget.parse("params<=0.4").bind(model, ex), wide_reward,
                     EvalOptions(race_z=None))
    for c in raced:  # none of the stopped candidates would have won
        assert full.score(c.policy).accuracy <= hist.best.accuracy


def test_race_z_must_be_positive():
    with pytest.raises(ValueError, match="race_z"):
        EvalOptions(race_z=0.0)


@pytest.fixture
def noisy_params():
    """A noisy cost (parameter count with +-1% jitter) registered for one test."""
    rng = np.random.default_rng(0)
    costs.register_cost("test_noisy_params",
                        lambda m: costs.count_params(m) * (1 + rng.uniform(-0.01, 0.01)),
                        relative=True, noisy=True, overwrite=True)
    yield "test_noisy_params"
    costs._COSTS.pop("test_noisy_params", None)


def test_repair_boundary_under_a_noisy_cost_aims_at_the_limit_less_the_margin(
        model, digits, noisy_params):
    """A noisy budget is repaired too: a policy with room to spare or one over the
    budget is moved onto it, aiming at the limit less the noise rule's margin, so the
    scored candidate is feasible on its own measurement and spends the budget."""
    env = PruningEnv(model, digits, f"{noisy_params}<=0.5", repair="boundary")
    target = 1.0 / (1.0 + env.evaluator.bound.rule.margin)
    for ratios, inside in (([0.8, 0.3, 0.6], True), ([0.3, 0.2, 0.3], False)):
        env.reset(seed=0)
        for r in ratios:
            _, _, _, _, info = env.step(np.array([r], np.float32))
        assert bool(np.all(info["cost"] <= 1.0)) == inside  # the chosen policy's own
        cand = env.history.candidates[-1]
        assert info["projected"] and cand.feasible
        # a channel of this small CNN is a few percent of the budget; +-1% noise
        # between the repair's measurement and the candidate's
        assert 0.85 < max(cand.cost_ratios) <= target * 1.01 / 0.99


def test_a_noisy_final_check_that_fails_settles_again_instead_of_losing_the_run(
        model, digits, noisy_params, monkeypatch):
    real = costs.BoundBudget.evaluate
    failures = [1, 1]  # the final check and its recheck fail, as a slow model would

    def flaky(self, m):
        out = real(self, m)
        if failures:
            failures.pop()
            out[noisy_params] = {**out[noisy_params], "ok": False,
                                 "value": out[noisy_params]["limit"] * 1.05}
        return out

    monkeypatch.setattr(costs.BoundBudget, "evaluate", flaky)
    res = api.prune(model, digits, f"{noisy_params}<=0.5", method="uniform", progress=False)
    assert [r["margin"] for r in res.search.extra["resettled"]] == [0.06]
    assert res.costs[noisy_params]["ok"]
    # settled with a 6% margin: the returned policy measures well inside the limit
    assert res.costs[noisy_params]["pruned"] * 1.04 <= res.costs[noisy_params]["limit"]
    # the report and the comparison row say so, so a user sees why the model is smaller
    md = report.report_markdown(report.run_report(res, include_versions=False))
    assert "settled again after fine-tuning at a 6% margin, because the final check failed" \
        in md
    assert report.compare_row(res)["resettled"] == 1
    assert not res.search.extra.get("final_rechecked")


def test_settling_after_the_search_keeps_headroom_over_the_final_check(model, digits):
    """Settling returns the least pruned policy that passed, so it asks for
    ``SETTLE_HEADROOM`` more margin than the final check: a model settled right at the
    rule's edge would fail the final check whenever the host runs a little slower."""
    name = "test_steady_noisy_params"  # declared noisy, measures the same every time
    costs.register_cost(name, lambda m: costs.count_params(m), relative=True, noisy=True,
                        overwrite=True)
    try:
        res = api.prune(model, digits, f"{name}<=0.5", method="uniform", progress=False)
        c = res.costs[name]
        # the uniform allocation lands within the rule's 3% margin; settling moves it
        assert res.search.extra["settled"] is True
        assert c["pruned"] * (1 + 0.03 + 0.01) <= c["limit"], (c["pruned"], c["limit"])
    finally:
        costs._COSTS.pop(name, None)


def test_a_final_check_that_fails_once_is_measured_again_before_settling_again(
        model, digits, monkeypatch):
    """One failed final check on a noisy cost (a burst of load) is measured again, as
    settling measures a failed step again, instead of pruning the model further."""
    name = "test_steady_noisy_params"  # declared noisy, measures the same every time
    costs.register_cost(name, lambda m: costs.count_params(m), relative=True, noisy=True,
                        overwrite=True)
    real = costs.BoundBudget.evaluate
    failures = [1]
    calls = []

    def flaky(self, m):
        calls.append(1)
        out = real(self, m)
        if failures:
            failures.pop()
            out[name] = {**out[name], "ok": False, "value": out[name]["limit"] * 1.05}
        return out

    monkeypatch.setattr(costs.BoundBudget, "evaluate", flaky)
    try:
        res = api.prune(model, digits, f"{name}<=0.5", method="uniform", progress=False)
    finally:
        costs._COSTS.pop(name, None)
    assert len(calls) == 2 and not res.search.extra.get("resettled")
    assert res.search.extra["final_rechecked"] == 1 and res.costs[name]["ok"]
    rep = report.run_report(res, include_versions=False)
    assert rep["search"]["final_rechecked"] == 1
    assert ("1 final check failed on a noisy cost and passed when measured again"
            in report.report_markdown(rep))


def test_the_report_says_when_the_noise_rule_moved_the_best_candidate(model, digits):
    """The search accepts a candidate on one measurement; the returned policy must pass
    the noise rule's repeated measurements with its margin, so a candidate placed near
    the limit is moved after the search, and the report names it and where it was."""
    rng = np.random.default_rng(0)
    noisy_params = "test_noisier_params"  # +-5%: the rule's bound sits well above a value
    costs.register_cost(noisy_params,
                        lambda m: costs.count_params(m) * (1 + rng.uniform(-0.05, 0.05)),
                        relative=True, noisy=True, overwrite=True)
    try:
        res = api.prune(model, digits, f"{noisy_params}<=0.5", method="uniform",
                        progress=False)
    finally:
        costs._COSTS.pop(noisy_params, None)
    assert res.search.extra["settled"] is True
    best = res.history.best
    assert not np.allclose(best.policy, res.policy)
    rep = report.run_report(res, include_versions=False)
    assert rep["search"]["settled"] is True
    again = rep["search"]["resettled"]  # margins of settlings after a failed final check
    assert again == [float(r["margin"]) for r in res.search.extra.get("resettled", [])]
    md = report.report_markdown(rep)
    assert ("returned policy: the best candidate, moved toward heavier pruning until the "
            "noise rule accepted it") in md
    ratio = best.costs[noisy_params] / res.costs[noisy_params]["limit"]
    assert f"{noisy_params} {ratio:.3f} x its limit, as measured during the search" in md
    row = report.compare_row(res)
    assert row["settled"] is True and row["resettled"] == len(again)


def test_a_noisy_cost_that_keeps_failing_is_a_clear_budget_error(model, digits, noisy_params,
                                                                monkeypatch):
    real = costs.BoundBudget.evaluate

    def always_over(self, m):
        out = real(self, m)
        out[noisy_params] = {**out[noisy_params], "ok": False}
        return out

    monkeypatch.setattr(costs.BoundBudget, "evaluate", always_over)
    with pytest.raises(costs.BudgetInfeasibleError, match="final measurement.*30% margin"):
        api.prune(model, digits, f"{noisy_params}<=0.5", method="uniform", progress=False)
