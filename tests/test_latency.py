"""Latency costs (PyTorch and ONNX Runtime, batch size and threads) and latency tables.

Timings are noisy on shared machines: the only timing comparison here is between two
models that differ 16x in MACs. Everything else checks structure (which batch a model
sees, which session options ONNX Runtime gets) or uses a deterministic stand-in for a
latency measurement, so that a table's predictions can be checked exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rlprune
from rlprune import costs, data, models
from rlprune.agents.base import Callback
from rlprune.costs import Budget, Constraint, Cost, LatencyMeter
from rlprune.latency_table import LatencyTable
from rlprune.report import report_markdown, run_report
from rlprune.space import PruningSpace

FAST = {"repeats": 3, "min_repeat_s": 0.002}


def convnet(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


class Recorder(nn.Module):
    """Records the shape of every input it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(int(d) for d in x.shape))  # ints, also while traced
        return self.lin(x)


# ------------------------------------------------------------------ ort_latency_ms
def test_ort_latency_positive_and_smaller_for_a_narrower_net() -> None:
    x = torch.randn(2, 3, 32, 32)
    meter = costs.ort_latency_cost(**FAST)
    full, quarter = meter(convnet(64), x), meter(convnet(16), x)
    assert math.isfinite(full) and full > 0 and quarter > 0
    assert quarter < 0.5 * full  # 16x fewer MACs in the second conv
    assert costs.get_cost("ort_latency_ms").noisy
    assert costs.get_cost("ort_latency_ms").fn == costs.ort_latency_cost()


def test_ort_latency_uses_batch_size_and_threads() -> None:
    rec = Recorder()
    costs.measure_ort_latency_ms(rec, torch.randn(5, 4), batch_size=6, num_threads=2, **FAST)
    assert rec.shapes and set(rec.shapes) == {(6, 4)}  # traced at the batch asked for
    sess = next(reversed(costs._ORT_SESSIONS.values()))
    assert sess.get_inputs()[0].shape == [6, 4]
    assert sess.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ValueError, match="batch_size"):
        costs.measure_ort_latency_ms(rec, torch.randn(1, 4), batch_size=0)


def test_ort_latency_reuses_the_export_of_a_structure() -> None:
    x = torch.randn(1, 3, 8, 8)
    costs.measure_ort_latency_ms(convnet(8), x, **FAST)
    n = len(costs._ORT_SESSIONS)
    other = convnet(8)
    with torch.no_grad():
        other[0].weight.mul_(2.0)  # other weights, same shapes: same session
    costs.measure_ort_latency_ms(other, x, **FAST)
    assert len(costs._ORT_SESSIONS) == n
    costs.measure_ort_latency_ms(convnet(4), x, **FAST)
    assert len(costs._ORT_SESSIONS) == min(n + 1, costs._ORT_SESSIONS_MAX)


def test_torch_latency_uses_batch_size() -> None:
    rec = Recorder()
    costs.latency_cost(batch_size=3, repeats=1, min_repeat_s=0.0)(rec, torch.randn(5, 4))
    assert rec.shapes and set(rec.shapes) == {(3, 4)}


def test_latency_variants_by_name() -> None:
    b = Budget.parse("ort_latency_b4_t2_ms<=1,latency_b3_ms<=50%")
    ort_cost, torch_cost = (c.cost for c in b)
    assert ort_cost.fn == LatencyMeter("onnxruntime", batch_size=4, num_threads=2)
    assert torch_cost.fn == LatencyMeter("torch", batch_size=3, num_threads=1)
    assert ort_cost.noisy and ort_cost.unit == "ms"
    assert ort_cost.settings == "ONNX Runtime CPU, batch 4, 2 threads, fastest of 20 windows"
    assert (costs.get_cost("latency_ms").settings
            == "PyTorch CPU, batch 1, 1 thread, fastest of 20 windows")
    assert costs.get_cost("latency_t8_ms").fn == LatencyMeter("torch", num_threads=8)
    assert costs.get_cost("params").settings == ""
    for bad in ("latency_b0_ms<=1", "ort_latency_x_ms<=1"):
        with pytest.raises(ValueError, match="latency_b<N>_t<N>_ms"):
            Budget.parse(bad)


class Bursty(nn.Module):
    """A model whose calls alternate between 1 ms and 25 ms: a machine with bursts."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        self.calls += 1
        time.sleep(0.025 if self.calls % 2 else 0.001)
        return x


def test_latency_is_the_fastest_window_unless_the_median_is_asked_for() -> None:
    x = torch.randn(1, 4)
    # one call per window (min_repeat_s=0), 6 windows alternating 25 ms and 1 ms
    fastest = costs.measure_latency_ms(Bursty(), x, repeats=6, min_repeat_s=0.0)
    median = costs.measure_latency_ms(Bursty(), x, repeats=6, min_repeat_s=0.0,
                                      statistic="median")
    assert fastest < 10.0 < median
    # the windows those two summarise, in order (warm-up calls excluded)
    win = costs.latency_windows(Bursty(), x, repeats=6, min_repeat_s=0.0)
    assert len(win) == 6 and min(win[0::2]) > 20.0 and max(win[1::2]) < 10.0
    assert LatencyMeter(statistic="median").describe().endswith("median of 20 windows")
    with pytest.raises(ValueError, match="statistic must be one of min, median"):
        LatencyMeter(statistic="mean")


# ------------------------------------------------------------------ latency tables
def fake_ms(model: nn.Module, x: Any) -> float:
    """A deterministic stand-in for a latency measurement: 0.5 ms per call plus a
    nonlinear function of every layer's widths (so interpolation is inexact between
    grid points and exact on them)."""
    total = 0.5
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            total += 1e-5 * float(m.weight.shape[0] * m.weight.shape[1]) ** 1.5
        elif isinstance(m, nn.BatchNorm2d):
            total += 1e-3 * m.num_features ** 2
    return total


FAKE = Cost("fake_ms", fake_ms, noisy=True, takes_input=True, unit="ms")


def digits_setup() -> tuple[nn.Module, torch.Tensor, PruningSpace]:
    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1).eval()
    x = torch.randn(1, 1, 8, 8)
    return model, x, PruningSpace.from_model(model, x)


def policy_for(space: PruningSpace, kept: tuple[int, ...]) -> np.ndarray:
    return np.array([(e.prunable - k) / e.prunable for e, k in zip(space.entries, kept)])


def test_table_is_exact_on_its_grid_and_sums_its_entries() -> None:
    model, x, space = digits_setup()
    table = LatencyTable.build(space, model, x, FAKE, levels=4, passes=2)
    assert [g.key for g in table.groups] == [(0,), (0, 1), (1,), (1, 2), (2,)]
    assert sum(g.values.size for g in table.groups) == 4 * 3 + 16 * 2
    assert table.measurements == 2 * (4 * 3 + 16 * 2 + 4)  # grid and 4 anchors, twice
    assert table.predict(model) == pytest.approx(fake_ms(model, x))
    axes = {e: g.axes[k] for g in table.groups for k, e in enumerate(g.key)}
    for idx in itertools.product(range(4), repeat=3):
        kept = tuple(int(axes[e][i]) for e, i in enumerate(idx))
        pruned = space.apply(model, policy_for(space, kept))
        assert tuple(table.widths(pruned)) == kept
        summed = table.remainder + sum(
            float(g.values[tuple(idx[e] for e in g.key)]) for g in table.groups)
        assert table.predict(pruned) == pytest.approx(summed, abs=1e-12)
        assert table(pruned, x) == pytest.approx(fake_ms(pruned, x), rel=1e-9)
    # between grid points the nonlinear stand-in is only approximated
    off = space.apply(model, policy_for(space, (3, 9, 20)))
    assert table.predict(off) != pytest.approx(fake_ms(off, x), rel=1e-9)
    assert table.predict(off) == pytest.approx(fake_ms(off, x), rel=0.2)


def test_table_refuses_weight_spaces_and_foreign_models() -> None:
    model, x, space = digits_setup()
    weights = PruningSpace.from_model(model, x, granularity="weight")
    with pytest.raises(ValueError, match="granularity='channel'"):
        LatencyTable.build(weights, model, x, FAKE)
    table = LatencyTable.build(space, model, x, FAKE, levels=2, passes=1)
    with pytest.raises(ValueError, match="has no layer"):
        table.predict(convnet(4))


class Phases(Callback):
    """Counts real measurements of pruned models before, during and after the search."""

    def __init__(self) -> None:
        self.phase = "before"
        self.real: dict[str, int] = {"before": 0, "search": 0, "after": 0}
        self.predicted = 0

    def measure(self, model: nn.Module, x: Any) -> float:
        if type(model).__name__ != "_Calls":  # a whole model, not a table's layer timing
            self.real[self.phase] += 1
        return fake_ms(model, x)

    def on_search_start(self, searcher: Any, env: Any) -> None:
        self.phase = "search"

    def on_search_end(self, searcher: Any, result: Any) -> None:
        self.phase = "after"


def run(digits: data.Splits, table: bool, monkeypatch: pytest.MonkeyPatch,
        predict_low: bool = False) -> tuple[Any, Phases]:
    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1).eval()
    phases = Phases()
    cost = Cost("fake_ms", phases.measure, noisy=True, takes_input=True, unit="ms")
    budget = Budget([Constraint("fake_ms", cost, 80.0, percent=True)])
    original = LatencyTable.predict_kept

    def predict_kept(self: LatencyTable, kept: Any) -> float:
        phases.predicted += 1
        return 0.0 if predict_low else original(self, kept)

    monkeypatch.setattr(LatencyTable, "predict_kept", predict_kept)
    res = rlprune.prune(model, digits, budget, method="random", episodes=4, progress=False,
                        callback=phases, latency_table=table)
    return res, phases


def test_search_uses_the_table_and_the_result_is_measured(digits: data.Splits,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    res, phases = run(digits, True, monkeypatch)
    assert phases.real["search"] == 0 and phases.predicted > 0
    assert phases.real["after"] >= 4  # settle's projection and checks, the final check
    assert res.costs["fake_ms"]["pruned"] == pytest.approx(fake_ms(res.model, None))
    # settle leaves a margin of 3% under the limit for the measurement to come
    assert res.costs["fake_ms"]["pruned"] * 1.03 <= res.costs["fake_ms"]["limit"]
    assert "lookup table" in res.costs["fake_ms"]["settings"]
    info = res.search.extra["latency_table"]
    assert info["tables"]["fake_ms"]["measurements"] > 0
    md = report_markdown(run_report(res, include_versions=False))
    assert "- `fake_ms`: searched with a lookup table" in md
    # without the table, the search measures every candidate
    res, phases = run(digits, False, monkeypatch)
    assert phases.real["search"] > 0 and phases.predicted == 0
    assert "latency_table" not in res.search.extra and "settings" not in res.costs["fake_ms"]


def test_a_table_that_predicts_too_low_is_corrected_by_real_measurement(
        digits: data.Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    res, phases = run(digits, True, monkeypatch, predict_low=True)
    assert res.search.extra["latency_table"]["moved_by_real_check"]
    assert res.costs["fake_ms"]["ok"]
    assert res.costs["fake_ms"]["pruned"] <= res.costs["fake_ms"]["limit"]


def test_latency_table_needs_a_latency_constraint(digits: data.Splits) -> None:
    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1).eval()
    with pytest.raises(ValueError, match="needs a latency constraint"):
        rlprune.prune(model, digits, "params<=0.5", method="uniform", progress=False,
                      latency_table=True)


def test_a_given_env_gets_its_real_budget_back(digits: data.Splits) -> None:
    from rlprune.api import make_env

    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1).eval()
    x = digits.example_input(1)
    budget = Budget([Constraint("fake_ms", FAKE, 80.0, percent=True)])
    bound = budget.bind(model, x)
    env = make_env(model, digits, bound, "random", example_input=x)
    res = rlprune.prune(model, digits, budget, method="random", episodes=2, env=env,
                        progress=False, latency_table=True)
    assert env.bound is bound and env.bound.noisy  # the table was the search's only
    assert res.costs["fake_ms"]["ok"]
