"""The one-shot baselines: LAMP's scores and allocation, the global threshold."""

from __future__ import annotations

import numpy as np
import pytest

from rlprune import api
from rlprune.agents.baselines import heuristic_policies, lamp_scores
from rlprune.costs import Budget


def test_lamp_scores_match_the_definition():
    w = np.array([0.5, -2.0, 0.1, 1.0])
    sq = w ** 2  # sorted ascending: 0.01, 0.25, 1, 4 -> tails 5.26, 5.25, 5, 4
    expected = {0.1: 0.01 / 5.26, 0.5: 0.25 / 5.25, 1.0: 1.0 / 5.0, -2.0: 4.0 / 4.0}
    got = lamp_scores(w)
    for x, e in expected.items():
        assert got[list(w).index(x)] == pytest.approx(e)
    assert got.max() == pytest.approx(1.0) and np.all(sq[np.argsort(got)] == np.sort(sq))


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_heuristics_meet_the_budget(trained_digits_cnn, digits, granularity):
    budget = api.budget_for("params<=0.1", granularity)
    bound = budget.bind(trained_digits_cnn, digits.example_input(1))
    env = api.make_env(trained_digits_cnn, digits, bound, "lamp", granularity=granularity)
    pols = heuristic_policies(env)
    assert set(pols) == {"uniform", "global", "lamp"}
    for name, p in pols.items():
        assert np.all(env.evaluator.cost_ratios(p) <= 1.0), name
        assert np.all(p <= env.max_ratios + 1e-12), name
    assert not np.allclose(pols["lamp"], pols["global"])  # a different allocation
    res = api.prune(trained_digits_cnn, digits, Budget.parse("params<=0.1"), method="lamp",
                    granularity=granularity, progress=False)
    assert res.feasible and res.search.evaluations == 1


def test_global_channel_threshold_does_not_empty_wide_layers(trained_digits_cnn, digits):
    """Raw channel importances favour narrow-fan-in layers; the threshold compares each
    channel with its own group's mean (Torch-Pruning's default), so no layer is emptied
    and the accuracy stays near the uniform allocation's instead of collapsing (raw
    importances: 18% against uniform's 70% here)."""
    res = {m: api.prune(trained_digits_cnn, digits, "params<=0.3", method=m, progress=False)
           for m in ("uniform", "global")}
    acc = {m: r.accuracy["reward_pruned_before_finetune"] for m, r in res.items()}
    assert acc["global"] >= 0.8 * acc["uniform"], acc
    kept = [layer["after"] / layer["before"] for layer in res["global"].layers]
    assert min(kept) >= 0.3, kept
