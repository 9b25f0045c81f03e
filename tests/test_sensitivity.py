"""Per-layer sensitivity analysis and the allocation built from it (rlprune.sensitivity)."""

from __future__ import annotations

import numpy as np
import pytest

from rlprune import api, sensitivity
from rlprune.agents.cpl import CPL, CPLConfig
from rlprune.costs import Budget
from rlprune.train import evaluate as top1


@pytest.fixture
def env(trained_digits_cnn, digits):
    bound = Budget.parse("params<=0.3").bind(trained_digits_cnn, digits.example_input(1))
    return api.make_env(trained_digits_cnn, digits, bound, "cpl")


def test_sensitivity_prunes_each_entry_alone_and_counts_what_it_spends(env, digits):
    ev = env.evaluator
    T = len(ev.space)
    before = dict(ev.spent)
    sens = sensitivity.measure(ev, samples=60)
    assert sens.ratios.shape == sens.drops.shape == (T, len(sensitivity.LEVELS))
    np.testing.assert_allclose(sens.ratios[:, -1], ev.caps)
    np.testing.assert_allclose(sens.ratios[:, 0], ev.caps * sensitivity.LEVELS[0])
    # nothing is a candidate, but every probe is counted: the unpruned one and 4 per entry
    assert len(ev.history) == 0
    assert ev.spent["reward_samples"] - before["reward_samples"] == (4 * T + 1) * 60
    assert ev.spent["built"] - before["built"] == 4 * T + 1
    # one drop, recomputed by hand: entry 0 alone at its largest ratio
    head = digits.reward.head(60)
    base = top1(ev.build(np.zeros(T), finetune=False), head)
    pol = np.zeros(T)
    pol[0] = ev.caps[0]
    assert sens.drops[0, -1] == pytest.approx(base - top1(ev.build(pol, finetune=False), head))
    # each probe's cost ratios are its own: pruning more of an entry never costs more
    assert np.all(np.diff(sens.cost_ratios[..., 0], axis=1) <= 1e-12)
    assert np.all(sens.cost_ratios[:, -1, 0] < sens.original_ratios[0])
    rows = sens.summary()
    assert [r["entry"] for r in rows] == [e.name for e in ev.space.entries]
    with pytest.raises(ValueError, match="levels"):
        sensitivity.measure(ev, levels=(0.5, 1.5))


def test_allocation_prunes_where_accuracy_is_cheapest(env):
    """Entries that lose nothing are pruned before one that loses accuracy, and the
    allocation spends the budget (on its boundary, as the other heuristics)."""
    ev = env.evaluator
    T = len(ev.space)
    sens = sensitivity.measure(ev, samples=30)
    saver = int(np.argmax(sens.savings()[:, -1]))  # alone at its cap it meets the budget
    assert sens.savings()[saver, -1] > 1.0
    others = [i for i in range(T) if i != saver]
    sens.drops[:] = 0.0
    sens.drops[saver] = np.linspace(0.2, 0.8, sens.drops.shape[1])
    pol = sensitivity.allocate(ev, sens)
    ratios = ev.cost_ratios(pol)
    assert np.all(ratios <= 1.0) and np.max(ratios) > 0.9  # one channel is ~5% here
    assert pol[saver] == 0.0 and np.all(pol[others] > 0.0)
    # the other way round: only the saver is free to prune
    sens.drops[:] = 0.5
    sens.drops[saver] = 0.0
    pol2 = sensitivity.allocate(ev, sens)
    ratios2 = ev.cost_ratios(pol2)
    assert np.all(ratios2 <= 1.0) and np.max(ratios2) > 0.9
    assert pol2[saver] > 0.0 and np.all(pol2[others] == 0.0)


def test_cpl_scores_the_sensitivity_allocation_in_its_warm_start(env):
    result = CPL(episodes=6, seed=0, progress=False, sensitivity=True,
                 sensitivity_samples=40).search(env)
    starts = [c.extra.get("warm_start") for c in result.history.candidates[:4]]
    assert starts == ["uniform", "global", "lamp", "sensitivity"]
    assert result.history.candidates[3].feasible
    rows = result.extra["sensitivity"]
    assert len(rows) == len(env.evaluator.space) and len(rows[0]["accuracy_drop"]) == 4
    with pytest.raises(ValueError, match="sensitivity_samples"):
        CPLConfig(sensitivity_samples=0)
    plain = CPL(episodes=6, seed=0, progress=False)
    assert "sensitivity" not in plain.search(api.make_env(
        env.evaluator.model, env.evaluator.splits, env.bound, "cpl")).extra
