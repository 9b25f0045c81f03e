"""Noisy costs: the acceptance rule, limits resolved from many repeats, the report of
the measured spread, custom noisy costs, and resume replaying measurements."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from rlprune import api, costs, data, pipeline, report, train
from rlprune.costs import BoundBudget, Budget
from rlprune.noise import MeasurementTape, NoiseRule, Spread, fingerprint
from rlprune.runlog import read_log


def count_params(model: nn.Module) -> float:
    return float(sum(p.numel() for p in model.parameters()))


class Jitter:
    """A noisy cost: the parameter count times ``1 + U(-amp, amp)`` from its own RNG,
    which nothing reseeds (like a latency); ``calls`` counts real measurements."""

    def __init__(self, amp: float = 0.02, seed: int | None = None):
        self.amp, self.rng, self.calls = amp, random.Random(seed), 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        return count_params(model) * (1.0 + self.rng.uniform(-self.amp, self.amp))


class Sequence_:
    """A cost returning the given values in turn (then the last one)."""

    def __init__(self, values: list[float]):
        self.values, self.i = values, 0

    def __call__(self, model: nn.Module) -> float:
        v = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        return v


# ----------------------------------------------------------------------- the rule
def test_spread_bound_is_a_prediction_bound_never_below_the_largest_value() -> None:
    s = Spread.of([1.0, 1.0, 1.0, 1.0])
    assert (s.median, s.sd, s.bound) == (1.0, 0.0, 1.0)
    s = Spread.of([1.0, 2.0, 3.0], z=2.0)
    assert s.sd == pytest.approx(1.0)
    assert s.bound == pytest.approx(2.0 + 2.0 * np.sqrt(1 + 1 / 3))
    assert Spread.of([5.0, 1.0], z=0.0).bound == 5.0  # the largest value at least
    with pytest.raises(ValueError, match="no measurements"):
        Spread.of([])


def test_rule_accepts_only_with_the_margin_below_the_limit() -> None:
    rule = NoiseRule(z=0.0, margin=0.05)
    assert rule.accepts([1.0, 1.0], 1.05)
    assert not rule.accepts([1.0, 1.0], 1.04)  # median inside the limit, the margin not
    assert rule.accepts([1.0, 1.0], 1.04, margin=0.0)
    wide = NoiseRule(z=2.0, margin=0.0)
    assert not wide.accepts([0.8, 1.0, 0.9], 1.0)  # every value in, the bound above
    assert NoiseRule.from_dict(rule.to_dict()) == rule
    assert NoiseRule.from_dict(None) == NoiseRule()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"repeats": 1}, "repeats must be an integer >= 2"),
    ({"margin": -0.1}, "margin must be a finite number >= 0"),
    ({"margin": 1.5}, "fraction of the limit"),
    ({"z": float("nan")}, "z must be a finite number"),
    ({"original_repeats": 0}, "original_repeats must be an integer >= 1"),
])
def test_bad_rules_are_clear_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        NoiseRule(**kwargs)


# ------------------------------------------------------- binding and evaluating
def test_a_relative_noisy_limit_is_resolved_from_the_median_of_many_repeats() -> None:
    model = nn.Linear(4, 2)
    # one wild first measurement (a cold start) must not move the limit
    values = [50.0] + [10.0 + 0.1 * i for i in range(20)]
    b = Budget(custom={"timed": (Sequence_(values), "50%", {"noisy": True, "unit": "ms"})})
    with pytest.warns(UserWarning, match="the machine is busy"):  # sd 8.5 of 12.8
        bound = b.bind(model, rule=NoiseRule(original_repeats=21))
    assert bound.original["timed"] == pytest.approx(float(np.median(values)))
    assert bound.limits["timed"] == pytest.approx(0.5 * float(np.median(values)))
    spread = bound.original_spread["timed"]
    assert spread.n == 21 and spread.high == 50.0
    stored = json.loads(json.dumps(bound.to_dict()))
    again = BoundBudget.from_dict(b, stored)  # nothing measured: the sequence is not read
    assert again.limits == bound.limits and again.original_spread == bound.original_spread
    assert again.rule == bound.rule


def test_binding_on_a_busy_machine_warns() -> None:
    """A noisy cost of the original that varies by more than 5% of its mean means the
    machine is busy: the limit resolved now depends on its load, and bind says so."""
    model = nn.Linear(4, 2)
    busy = Budget(custom={"timed": (Sequence_([10.0, 12.0] * 5), "50%", {"noisy": True}),
                          "params_": (count_params, 100.0)})
    with pytest.warns(UserWarning, match=r"timed of the original model varied by 9\.6%"):
        busy.bind(model, rule=NoiseRule(original_repeats=10))
    idle = Budget(custom={"timed": (Sequence_([10.0, 10.2] * 5), "50%", {"noisy": True})})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idle.bind(model, rule=NoiseRule(original_repeats=10))


def test_custom_cost_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        Budget(custom={"x": (count_params, 3.0, {"noisey": True})})
    with pytest.raises(ValueError, match="options must be a mapping"):
        Budget(custom={"x": (count_params, 3.0, True)})
    b = Budget(custom={"x": (count_params, 3.0, {"noisy": True, "unit": "mJ"})})
    (c,) = b
    assert c.cost.noisy and c.cost.unit == "mJ"


def test_evaluate_reports_the_spread_and_fails_a_median_inside_a_noisy_limit() -> None:
    model = nn.Linear(4, 2)
    # original: 10 measured 3 times; candidate: 9.0, 9.9, 9.5 (median 9.5 < limit 10)
    cost = Sequence_([10.0, 10.0, 10.0, 9.0, 9.9, 9.5])
    b = Budget(custom={"timed": (cost, 10.0, {"noisy": True})})
    bound = b.bind(model, rule=NoiseRule(repeats=3, original_repeats=3, margin=0.03))
    ev = bound.evaluate(model)["timed"]
    assert ev["value"] == pytest.approx(9.5)
    assert ev["ok"] is False  # the upper bound (9.9 at least) * 1.03 > 10
    noise = ev["noise"]
    assert noise["measured"]["n"] == 3 and noise["measured"]["high"] == pytest.approx(9.9)
    assert noise["margin"] == 0.03 and noise["accept_at"] == pytest.approx(10 / 1.03)
    assert noise["original"]["n"] == 3


# ------------------------------------------------------------------------- tape
def test_tape_replays_in_order_and_stops_at_the_first_disagreement(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tape = MeasurementTape()
    tape.record("a", {"t": 1.0})
    tape.attach(path)
    tape.record("b", {"t": 2.0})
    tape.record("c", {"t": 3.0})
    with open(path, "a") as f:
        f.write('{"fp": "d", "val')  # a torn last line
    again = MeasurementTape.load(path)
    assert len(again.replay) == 3 and path.read_text().count("\n") == 3
    assert again.take("a") == {"t": 1.0}
    assert again.take("x") is None and again.diverged
    assert again.take("b") is None  # replay is over for good once the run went elsewhere
    assert MeasurementTape.load(tmp_path / "absent.jsonl").replay == []


def test_fingerprint_tells_prunings_apart() -> None:
    a = nn.Linear(4, 3)
    b = copy.deepcopy(a)
    assert fingerprint(a) == fingerprint(b)
    with_zero = copy.deepcopy(a)
    with_zero.weight.data[0, 0] = 0.0
    assert fingerprint(with_zero) != fingerprint(a)
    assert fingerprint(nn.Linear(4, 2)) != fingerprint(a)


# ------------------------------------------------------------------- end to end
@pytest.fixture
def jitter() -> Iterator[Jitter]:
    """``jitter_params``: a registered noisy, relative cost (removed afterwards)."""
    fn = Jitter(amp=0.02)
    costs.register_cost("jitter_params", fn, relative=True, noisy=True, unit="p",
                        overwrite=True)
    try:
        yield fn
    finally:
        costs._COSTS.pop("jitter_params", None)


def test_prune_accepts_a_noisy_cost_only_with_its_margin_and_reports_it(
    trained_digits_cnn: nn.Module, digits: data.Splits, jitter: Jitter
) -> None:
    rule = NoiseRule(repeats=4, margin=0.05, original_repeats=9)
    res = api.prune(copy.deepcopy(trained_digits_cnn), digits, "jitter_params<=0.5",
                    method="uniform", progress=False, noise=rule)
    c = res.costs["jitter_params"]
    assert c["ok"] is True
    noise = c["noise"]
    assert noise["measured"]["n"] == 4 and noise["original"]["n"] == 9
    # accepted on the bound with the margin, not on one lucky measurement
    assert noise["measured"]["bound"] * 1.05 <= c["limit"]
    assert res.bound is not None and res.bound.rule == rule
    # the plain parameter count sits well inside: the margin made the model smaller
    params = count_params(res.model) / count_params(trained_digits_cnn)
    assert params <= 0.5 / 1.05


def test_a_noisy_budget_that_no_margin_can_meet_is_a_clear_error(
    trained_digits_cnn: nn.Module, digits: data.Splits
) -> None:
    """Every single measurement of a pruned model passes (9.0 or 9.9 against 10), so the
    search finds candidates, but no pruning keeps the settling's margin over repeats (the
    rule's 3% and ``SETTLE_HEADROOM``'s point): the run stops with one line naming the
    median, the bound and the limit."""
    full = count_params(trained_digits_cnn)
    flip = [0]

    def swinging(model: nn.Module) -> float:
        if count_params(model) == full:
            return 20.0
        flip[0] += 1
        return 9.0 if flip[0] % 2 else 9.9

    b = Budget(custom={"swing": (swinging, 10.0, {"noisy": True})})
    with pytest.raises(costs.BudgetInfeasibleError,
                       match=r"4% margin.*swing median 9[.0-9]*, upper bound .*limit 10\)"):
        api.prune(copy.deepcopy(trained_digits_cnn), digits, b, method="uniform",
                  progress=False)


class Interrupt(Exception):
    """Stands for a kill in the middle of a run."""


def test_resume_replays_noisy_measurements(
    trained_digits_cnn: nn.Module, digits: data.Splits, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``amc`` run (its action wall measures the noisy cost at every step) killed in
    the middle and resumed takes the same decisions as a run never interrupted.

    The noisy cost draws its noise from one seeded stream, call after call. A resumed
    run that replays the measurements it made before the kill draws the next values
    where the interrupted run stopped, exactly as the uninterrupted run did; one that
    measured again would draw new values and its action wall would decide otherwise.
    """
    ckpt = tmp_path / "model.pt"
    train.save_checkpoint(ckpt, trained_digits_cnn, {"data": "digits"})

    def run(name: str, fn: Any, resume: bool = False) -> Any:
        monkeypatch.setitem(costs._COSTS, "jitter_params", costs.Cost(
            "jitter_params", fn, relative=True, noisy=True, unit="p"))
        cfg = pipeline.RunConfig(checkpoint=str(ckpt), data="digits",
                                 budget="jitter_params<=0.4", method="amc", episodes=8,
                                 out=str(tmp_path / name), quiet=True, onnx=False,
                                 plots=False)
        return pipeline.run_prune(cfg, resume=resume)

    ref_fn = Jitter(amp=0.02, seed=5)
    settle, searched = api.table_mod.settle, []

    def settle_after_search(*args: Any, **kwargs: Any) -> Any:
        searched.append(ref_fn.calls)  # the measurements the search made
        return settle(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(api.table_mod, "settle", settle_after_search)
        ref = run("ref", ref_fn)
    ref_log = read_log(tmp_path / "ref" / "log.jsonl").candidates
    assert (tmp_path / "ref" / "measurements.jsonl").read_text().count("\n") > 8

    class Killed(Jitter):
        """The same stream, killed (before drawing) at call ``at``."""

        def __init__(self, at: int):
            super().__init__(amp=0.02, seed=5)
            self.at = at

        def __call__(self, model: nn.Module) -> float:
            if self.calls + 1 == self.at:
                self.at = -1
                raise Interrupt("killed")
            return super().__call__(model)

    killed = Killed(at=searched[0] // 2)
    with pytest.raises(ValueError, match="killed"):
        run("run", killed)
    before = read_log(tmp_path / "run" / "log.jsonl").candidates
    assert 0 < len(before) < len(ref_log), "not killed in the middle of the search"
    res = run("run", killed, resume=True)
    log = read_log(tmp_path / "run" / "log.jsonl").candidates
    assert [c.policy for c in log] == [c.policy for c in ref_log]
    assert res.costs["jitter_params"] == ref.costs["jitter_params"]
    assert killed.calls == ref_fn.calls  # what was measured before the kill was replayed


# ----------------------------------------------------------------- paired checks
class Host:
    """A noisy cost whose machine slows down: the parameter count times ``slow``,
    which a test raises between measurements; ``seen`` lists the models measured."""

    def __init__(self) -> None:
        self.slow, self.seen = 1.0, []  # type: float, list[nn.Module]

    def __call__(self, model: nn.Module) -> float:
        self.seen.append(model)
        return count_params(model) * self.slow


def test_a_paired_check_times_the_original_beside_the_candidate() -> None:
    """The host runs 20% slower than when the limit was resolved: timed beside the
    original, a candidate at 45% of it still holds ``timed<=50%``; checked in absolute
    terms (``paired=False``, or a bound restored without the original) it fails."""
    original, small = nn.Linear(100, 10), nn.Linear(45, 10)
    host = Host()
    b = Budget(custom={"timed": (host, "50%", {"noisy": True})})
    bound = b.bind(original, rule=NoiseRule(repeats=3, original_repeats=3))
    unpaired = b.bind(original, rule=NoiseRule(repeats=3, original_repeats=3, paired=False))
    assert bound.paired_names == ["timed"] and bound.reference is original
    assert unpaired.paired_names == []
    host.slow, host.seen = 1.2, []
    ev = bound.evaluate(small)["timed"]
    assert host.seen == [original, small] * 3  # each measurement follows the original's
    assert ev["ok"] is True
    assert ev["ratio"] == pytest.approx(count_params(small) / count_params(original))
    assert ev["noise"]["reference"]["median"] == pytest.approx(1.2 * count_params(original))
    assert bound.accepts(small)
    assert unpaired.evaluate(small)["timed"]["ok"] is False
    restored = BoundBudget.from_dict(b, json.loads(json.dumps(bound.to_dict())))
    assert restored.paired_names == [] and not restored.accepts(small)
    again = BoundBudget.from_dict(b, bound.to_dict(), reference=original)
    assert again.paired_names == ["timed"] and again.accepts(small)


def test_absolute_limits_and_exact_costs_are_not_paired() -> None:
    """``timed<=60`` is the user's own number of milliseconds, and a parameter count
    does not drift: neither times the original again."""
    original = nn.Linear(100, 10)
    host = Host()
    b = Budget(params="50%", custom={"timed": (host, 600.0, {"noisy": True})})
    bound = b.bind(original, rule=NoiseRule(repeats=3, original_repeats=3))
    host.seen = []
    assert bound.paired_names == []
    ev = bound.evaluate(nn.Linear(45, 10))
    assert all(m is not original for m in host.seen) and len(host.seen) == 3
    assert ev["timed"]["noise"]["reference"] is None


def test_a_host_that_slows_during_the_run_does_not_fail_the_final_check(
    trained_digits_cnn: nn.Module, digits: data.Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine runs 8% slower by the final check than while settling (load that
    built up during the fine-tune). A paired check measures the ratio the budget states,
    so the settled model passes its final check; checked against the value resolved at
    the start, the same run fails it and is settled again, pruned further."""
    settle = api.table_mod.settle

    def run(paired: bool) -> api.PruneResult:
        host = Host()

        def settle_then_slow(*args: Any, **kwargs: Any) -> Any:
            policy = settle(*args, **kwargs)
            host.slow *= 1.08
            return policy

        monkeypatch.setattr(api.table_mod, "settle", settle_then_slow)
        monkeypatch.setitem(costs._COSTS, "host_params", costs.Cost(
            "host_params", host, relative=True, noisy=True, unit="p"))
        return api.prune(copy.deepcopy(trained_digits_cnn), digits, "host_params<=0.5",
                         method="uniform", progress=False,
                         noise=NoiseRule(repeats=3, original_repeats=3, paired=paired))

    full = count_params(trained_digits_cnn)
    res = run(paired=True)
    c = res.costs["host_params"]
    assert c["ok"] is True and "resettled" not in res.search.extra
    assert c["ratio"] == pytest.approx(count_params(res.model) / full)
    assert c["noise"]["reference"]["median"] == pytest.approx(1.08 * full)
    md = report.report_markdown(report.run_report(res, include_versions=False))
    assert re.search(r"checked beside the original, which measured median [\d,.e+]+ this "
                     r"time, so the pruned model's values are scaled by", md)
    absolute = run(paired=False)
    assert absolute.costs["host_params"]["ok"] is True
    assert absolute.search.extra.get("resettled")
    assert count_params(absolute.model) < count_params(res.model)


def test_fresh_process_checks_count_the_processes_where_every_limit_held() -> None:
    """benchmarks.remeasure measures saved models in new processes against the bound
    limits (never re-resolved): a model inside counts every process, one outside none."""
    import torch
    from benchmarks import remeasure

    ex = torch.randn(1, 6)
    original = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    bound = Budget.parse("params<=0.6").bind(original, ex)
    small = nn.Sequential(nn.Linear(6, 2), nn.ReLU(), nn.Linear(2, 3))
    out = remeasure.fresh_checks({"small": small, "original": original}, bound, "channel",
                                 times=2)
    assert out["passed"] == {"small": 2, "original": 0}
    assert out["worst"]["original"]["params"] == pytest.approx(1 / 0.6)


def test_fresh_checks_probe_the_machine_speed_with_the_unpruned_model() -> None:
    """Given the unpruned model, each fresh process measures it too: a process where it
    runs slower than at the run's start (here: than a stored value far below any real
    latency) is not counted as one at the run's speed."""
    import torch
    from benchmarks import remeasure

    from rlprune.costs import BoundBudget

    ex = torch.randn(1, 6)
    original = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    budget = Budget.parse("latency_ms<=1000")  # one second: every process holds
    for start_ms, normal in ((1e6, 1), (1e-9, 0)):
        bound = BoundBudget(budget, {"latency_ms": start_ms}, ex)
        out = remeasure.fresh_checks({"m": original}, bound, "channel", times=1,
                                     original=original)
        assert out["passed"] == {"m": 1}
        assert len(out["slowdown"]) == 1 and out["normal"] == normal
        assert out["passed_normal"] == {"m": normal}


def test_fresh_checks_count_relative_limits_against_the_unpruned_model_timed_beside() -> None:
    """A relative latency limit is also counted as rlprune checks it: the model's value
    scaled by the unpruned model's value at the start over its value in that process.
    The unpruned model itself is 100% of itself, whatever the stored start says."""
    import torch
    from benchmarks import remeasure

    from rlprune.costs import BoundBudget

    ex = torch.randn(1, 6)
    original = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    for text, start_ms, absolute, paired in (("latency_ms<=50%", 1e6, 1, 0),
                                             ("latency_ms<=200%", 1e-9, 0, 1)):
        bound = BoundBudget(Budget.parse(text), {"latency_ms": start_ms}, ex)
        out = remeasure.fresh_checks({"m": original}, bound, "channel", times=1,
                                     original=original)
        assert out["passed"] == {"m": absolute} and out["passed_paired"] == {"m": paired}


def test_a_final_check_lost_to_noise_keeps_the_search_for_resume(
    trained_digits_cnn: nn.Module, jitter: Jitter, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose final check keeps failing (a machine too busy to time anything) stops
    with one line pointing at --resume; the resumed run replays the search from the log
    and the measurements made during it, and measures the final check afresh."""
    ckpt = tmp_path / "model.pt"
    train.save_checkpoint(ckpt, trained_digits_cnn, {"data": "digits"})
    cfg = pipeline.RunConfig(checkpoint=str(ckpt), data="digits", budget="jitter_params<=0.4",
                             method="amc", episodes=4, out=str(tmp_path / "run"), quiet=True,
                             onnx=False, plots=False)
    real = BoundBudget.evaluate

    def busy(self: BoundBudget, model: nn.Module) -> dict[str, dict[str, Any]]:
        out = real(self, model)
        return {n: {**v, "ok": False} if "noise" in v else v for n, v in out.items()}

    monkeypatch.setattr(BoundBudget, "evaluate", busy)
    with pytest.raises(costs.BudgetInfeasibleError, match="--resume .*run` replays it"):
        pipeline.run_prune(copy.deepcopy(cfg))
    log = read_log(tmp_path / "run" / "log.jsonl").candidates
    assert len(log) >= 4
    monkeypatch.setattr(BoundBudget, "evaluate", real)
    calls = jitter.calls
    res = pipeline.run_prune(copy.deepcopy(cfg), resume=True)
    assert [c.policy for c in read_log(tmp_path / "run" / "log.jsonl").candidates] == [
        c.policy for c in log]
    assert res.costs["jitter_params"]["ok"] is True
    assert jitter.calls > calls  # the final check measured again, not replayed


def test_settle_rechecks_a_step_before_moving_on_a_burst(
    trained_digits_cnn: nn.Module, digits: data.Splits
) -> None:
    """A burst of load during the first check of a policy that fits (every value of
    that check doubled) does not push it to more pruning: the step is measured twice
    more and taken on the majority. Without re-checks it moves, and a step that truly
    misses the limit moves whatever the re-checks say."""
    from rlprune.latency_table import settle
    from rlprune.space import PruningSpace

    model = copy.deepcopy(trained_digits_cnn)
    x = digits.train.x[:2]
    space = PruningSpace.from_model(model, x)
    full = count_params(model)

    class Bursty:
        """The parameter count, doubled for the measurements ``burst`` selects."""

        def __init__(self) -> None:
            self.calls = 0
            self.burst = range(0)

        def __call__(self, m: nn.Module) -> float:
            v = count_params(m)
            if v < full:  # the original is measured quietly when the limit is bound
                self.calls += 1
                if self.calls in self.burst:
                    return 2.0 * v
            return v

    fn = Bursty()
    rule = NoiseRule(repeats=3, margin=0.0, original_repeats=3)
    policy = space.max_policy() * 0.3
    pruned = count_params(space.apply(model, policy))
    bound = Budget(custom={"bursty": (fn, 1.3 * pruned, {"noisy": True})}).bind(
        model, x, rule)  # it fits, but not when doubled

    def start() -> None:  # the next check of the first step meets a burst
        fn.calls = 0
        fn.burst = range(2, 2 + rule.repeats)

    start()
    kept = settle(space, model, policy, bound)
    # projection measured once, the burst check, then two re-checks took the step
    assert fn.calls == 1 + 3 * rule.repeats
    np.testing.assert_allclose(kept, policy)
    start()
    moved = settle(space, model, policy, bound, rechecks=0)
    assert np.all(moved >= policy) and np.any(moved > policy)
    # one lucky check of three does not take the step: the first and third meet a burst
    fn.calls, r = 0, rule.repeats
    fn.burst = set(range(2, 2 + r)) | set(range(2 + 2 * r, 2 + 3 * r))  # type: ignore[assignment]
    lucky = settle(space, model, policy, bound)
    assert np.all(lucky >= policy) and np.any(lucky > policy)
    # a step whose every check meets the burst is left, re-check or not
    fn.calls = 0
    fn.burst = range(2, 10**9)
    try:
        assert np.any(settle(space, model, policy, bound) > policy)
    except costs.BudgetInfeasibleError:
        pass
    assert fn.calls > 1 + 2 * rule.repeats
    with pytest.raises(ValueError, match="rechecks"):
        settle(space, model, policy, bound, rechecks=-1)


def test_settle_narrows_the_step_that_first_held(
    trained_digits_cnn: nn.Module, digits: data.Splits
) -> None:
    """The settling steps grow (to 20%, then 40% of the way to the most aggressive
    policy): when the limit lies between two of them, the refinement returns a policy
    between the two that still holds, not the far step."""
    from rlprune.latency_table import settle
    from rlprune.space import PruningSpace

    model = copy.deepcopy(trained_digits_cnn)
    x = digits.train.x[:2]
    space = PruningSpace.from_model(model, x)
    policy = space.max_policy() * 0.3
    pmax = space.max_policy()

    def params_at(t: float) -> int:
        return count_params(space.apply(model, np.minimum(policy + t * (pmax - policy), pmax)))

    c0, c25 = params_at(0.0), params_at(0.25)
    margin = c0 / c25 - 1.0 + 1e-6  # the start fits the limit, not the limit less the margin
    limit = c25 * (1.0 + margin)  # first held at t = 0.25: between the 0.2 and 0.4 steps
    rule = NoiseRule(repeats=2, margin=margin, original_repeats=1)
    bound = Budget(custom={"exact_but_noisy": (count_params, limit, {"noisy": True})}).bind(
        model, x, rule)
    coarse = settle(space, model, policy, bound, refine=0)
    fine = settle(space, model, policy, bound)
    c_coarse = count_params(space.apply(model, coarse))
    c_fine = count_params(space.apply(model, fine))
    assert c_fine * (1.0 + margin) <= limit  # it holds
    assert c_fine > c_coarse  # and keeps more than the step the coarse walk stopped at
    assert np.all(fine <= coarse) and np.all(fine >= policy)
    with pytest.raises(ValueError, match="refine"):
        settle(space, model, policy, bound, refine=-1)


def test_the_command_line_turns_paired_checks_off() -> None:
    """``--no-noise-paired`` (``noise_paired: false``) reaches the run's rule; the default
    pairs."""
    from rlprune import cli

    args = ["prune", "--data", "digits", "--model", "digits_cnn", "--budget",
            "latency_ms<=50%"]
    parser = cli.build_parser()
    on = cli._config_from_args(parser.parse_args(args))
    off = cli._config_from_args(parser.parse_args([*args, "--no-noise-paired"]))
    assert on.noise_rule().paired is True and off.noise_rule().paired is False
