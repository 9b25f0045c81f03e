"""The benchmark peers (benchmarks/peers.py) and the spend/plot helpers of benchmarks/run.py."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from benchmarks import peers  # the repository's package (pytest's pythonpath)
from benchmarks import run as bench  # noqa: E402
from torch import nn

from rlprune import api, data
from rlprune.history import Candidate, History

ROW_KEYS = {"method", "costs", "reward_acc_before_ft", "test_acc_before_ft",
            "test_acc_after_ft", "reward_acc_after_ft", "evaluations", "best_found_at",
            "search_s", "time_to_best_s", "feasible"}
BUDGETS = {"channel": "flops<=0.3", "weight": "params<=0.1"}


def _setup(model: nn.Module, splits: data.Splits, granularity: str, budget: str,
           **kw: object) -> peers.PeerSetup:
    ex = splits.example_input(1)
    bound = api.budget_for(budget, granularity).bind(model, ex)
    return peers.PeerSetup(original=model, splits=splits, bound=bound,
                           granularity=granularity, example_input=ex, **kw)


@pytest.mark.parametrize("name", ["tp-uniform", "tp-global", "torch-global-magnitude", "lamp"])
def test_peer_meets_the_bound_budget_and_counts_its_spend(name, digits, trained_digits_cnn):
    gran = "channel" if name.startswith("tp-") else "weight"
    setup = _setup(trained_digits_cnn, digits, gran, BUDGETS[gran], reward_samples=100)
    before = copy.deepcopy(trained_digits_cnn.state_dict())
    row = peers.run_peer(name, setup)
    model = row["model"]
    # every constraint measured on the returned model itself
    values = setup.bound.measure(model)
    assert all(values[n] <= setup.bound.limits[n] for n in setup.bound.names)
    assert row["feasible"] and all(ok for _, _, ok in row["remeasured"].values())
    # and the budget is just met, not met by pruning far more than needed
    worst = max(values[n] / setup.bound.limits[n] for n in setup.bound.names)
    assert worst > 0.9
    if gran == "channel":
        assert sum(p.numel() for p in model.parameters()) < sum(
            p.numel() for p in trained_digits_cnn.parameters())  # physically smaller
    else:
        assert not any(hasattr(m, "weight_orig") for m in model.modules())  # made permanent
    # the row of a compare table, plus what the peer spent
    assert ROW_KEYS <= set(row)
    assert row["method"] == name
    assert row["models_measured"] == row["evaluations"] >= 1
    assert row["scored"] == 1
    assert row["reward_samples"] == 100  # one candidate scored on the run's 100 samples
    assert row["search_s"] > 0
    assert row["candidate"].accuracy == pytest.approx(row["candidate"].accuracy)
    assert 0.0 <= row["reward_acc_before_ft"] <= 1.0
    # the caller's model is left alone
    after = trained_digits_cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_nonzero_budget_costs_two_measurements(digits, trained_digits_cnn):
    setup = _setup(trained_digits_cnn, digits, "weight", "params<=0.1")
    row = peers.run_peer("torch-global-magnitude", setup)
    assert row["models_measured"] == 2  # the exact count, then one weight fewer removed
    limit = setup.bound.limits["nonzero_params"]
    assert limit - 1 < row["costs"]["nonzero_params"]["pruned"] <= limit


@pytest.mark.parametrize("guess", [None, 0, 5000, 23000])
def test_weight_bisection_finds_the_fewest_weights_removed(guess, digits, trained_digits_cnn):
    """With or without a (right or wrong) start, the bisection ends on the smallest
    number of weights removed that meets the budget."""
    setup = _setup(trained_digits_cnn, digits, "weight", "params<=0.1")
    total = sum(p.numel() for n, p in trained_digits_cnn.named_parameters()
                if n.endswith("weight") and p.dim() > 1)

    def build(a: int) -> nn.Module:
        return peers.magnitude_prune(trained_digits_cnn, a)

    probe, amount, measured = peers._bisect_amount(build, setup.bound, total, guess, "m")
    assert probe.ok and setup.bound.feasible(probe.model)
    assert not setup.bound.feasible(build(amount - 1))
    assert probe.values == setup.bound.measure(build(amount))
    assert measured <= 2 + math.ceil(math.log2(total + 1))


def test_peer_scores_like_a_candidate(digits, trained_digits_cnn):
    """The peer's reward-split accuracy is the evaluator's, on the BN-recalibrated model."""
    setup = _setup(trained_digits_cnn, digits, "weight", "params<=0.2")
    row = peers.run_peer("lamp", setup)
    ev = setup.evaluator()
    probe = peers.lamp_prune(trained_digits_cnn, int(row["peer_setting"]["amount"]))
    _, cand = ev.score_model(probe)
    assert cand.accuracy == pytest.approx(row["candidate"].accuracy)
    assert row["reward_acc_before_ft"] == pytest.approx(cand.accuracy)  # whole split here


def _lamp_numpy(w: np.ndarray) -> np.ndarray:
    flat = w.reshape(-1).astype(np.float64)
    order = np.argsort(flat ** 2, kind="stable")
    out = np.empty_like(flat)
    for pos, u in enumerate(order):
        out[u] = flat[u] ** 2 / sum(flat[v] ** 2 for v in order[pos:])
    return out.reshape(w.shape)


def test_lamp_scores_match_a_direct_computation():
    w = torch.tensor([[0.3, -1.2, 0.05, 2.0], [-0.7, 0.0, 0.9, -0.1], [1.5, -0.2, 0.4, 0.6]])
    got = peers.lamp_scores(w).numpy()
    np.testing.assert_allclose(got, _lamp_numpy(w.numpy()), rtol=1e-12)
    assert got.shape == (3, 4)
    assert got.max() == pytest.approx(1.0)  # the largest weight of a layer scores 1
    assert got[1, 1] == 0.0  # a zero weight scores 0


def _tiny_layer_model() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        m[0].weight.copy_(1e-3 * torch.randn(8, 6, generator=g))  # a layer of tiny weights
        m[2].weight.copy_(torch.randn(4, 8, generator=g))
    return m


def test_lamp_keeps_every_layer_where_global_magnitude_empties_one():
    model = _tiny_layer_model()
    amount = 48 + 8  # more than the tiny layer's 48 weights
    mag = peers.magnitude_prune(model, amount)
    lamp = peers.lamp_prune(model, amount)
    assert int(torch.count_nonzero(mag[0].weight)) == 0  # global magnitude empties it
    assert int(torch.count_nonzero(lamp[0].weight)) >= 1
    assert int(torch.count_nonzero(lamp[2].weight)) >= 1
    for m in (mag, lamp):  # both removed exactly `amount` weights, permanently
        n_zero = sum(int((layer.weight == 0).sum()) for layer in (m[0], m[2]))
        assert n_zero == amount
        assert not any(hasattr(layer, "weight_mask") for layer in m.modules())
    assert int(torch.count_nonzero(model[0].weight)) == 48  # the input is not modified


def test_output_layer_is_ignored_and_tp_global_prunes_non_uniformly(digits, trained_digits_cnn):
    ex = digits.example_input(1)
    assert peers.output_layers(trained_digits_cnn, ex) == ["fc"]

    def kept(m: nn.Module) -> list[float]:
        convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
        return [c.out_channels / w for c, w in zip(convs, (16, 32, 64))]

    glob = peers.tp_prune(trained_digits_cnn, ex, 0.5, True, ["fc"])
    uni = peers.tp_prune(trained_digits_cnn, ex, 0.5, False, ["fc"])
    assert glob.fc.out_features == uni.fc.out_features == 10
    assert np.ptp(kept(uni)) < 0.05  # one ratio per layer
    assert np.ptp(kept(glob)) > 0.1  # one global ranking: layers pruned differently
    assert sum(c.out_channels for c in glob.modules() if isinstance(c, nn.Conv2d)) == \
        pytest.approx(0.5 * 112, abs=2)


def test_unreachable_budget_is_an_error_line_not_a_crash(digits, trained_digits_cnn):
    # weight pruning zeroes weights but does not remove MACs: no peer can meet this
    setup = _setup(trained_digits_cnn, digits, "weight", "flops<=0.5")
    lines: list[str] = []
    rows, errors = peers.run_peers(setup, log=lines.append)
    assert rows == []
    assert len(errors) == 2 and [line.strip() for line in lines] == errors
    assert all("unreachable" in e and "flops" in e and "limit" in e for e in errors)
    with pytest.raises(peers.BudgetInfeasibleError) as info:
        peers.run_peer("lamp", setup)
    assert "flops" in info.value.failures


def test_peers_apply_to_their_granularity_only(digits, trained_digits_cnn):
    assert peers.peers_for("channel") == ("tp-uniform", "tp-global")
    assert peers.peers_for("weight") == ("torch-global-magnitude", "lamp")
    setup = _setup(trained_digits_cnn, digits, "channel", "flops<=0.5")
    with pytest.raises(ValueError, match="does not apply"):
        peers.run_peer("lamp", setup)


def _fake_result(method: str, evaluations: int, episodes: int, layers: int,
                 extra: dict | None = None) -> SimpleNamespace:
    search = SimpleNamespace(evaluations=evaluations, extra={"episodes": episodes,
                                                             **(extra or {})})
    return SimpleNamespace(method=method, search=search, layers=[{}] * layers)


def test_search_spend_counts_reward_samples():
    cfg = SimpleNamespace(reward_samples=None, reward=None, dense_samples=None)
    # terminal reward: one scoring of the reward split per evaluation
    assert bench.search_spend(_fake_result("cpl", 12, 12, 4), cfg, 500) == (12 * 500, False)
    # purl also scores every non-terminal step on dense_samples (at most the split)
    assert bench.search_spend(_fake_result("purl", 10, 10, 4), cfg, 500) == (
        10 * 500 + 10 * 3 * 500, False)
    cfg2 = SimpleNamespace(reward_samples=2000, reward=None, dense_samples=None)
    assert bench.search_spend(_fake_result("purl", 10, 11, 4), cfg2, 6000) == (
        10 * 2000 + 11 * 3 * 1000, False)
    # the evaluator's own counter wins when the search reports it
    res = _fake_result("purl", 10, 10, 4, {"spent": {"reward_samples": 1234}})
    assert bench.search_spend(res, cfg, 500) == (1234, True)


def test_search_plot_draws_methods_and_peers(tmp_path):
    def cand(i: int, acc: float, feasible: bool, cached: bool = False) -> Candidate:
        return Candidate(index=i, episode=i, policy=[0.1 * i], reward=acc, accuracy=acc,
                         costs={}, cost_ratios=[0.9], feasible=feasible, time=0.5 * (i + 1),
                         extra={"cached": True} if cached else {})

    hist = History([cand(0, 0.5, False), cand(1, 0.6, True), cand(2, 0.6, True, cached=True),
                    cand(3, 0.7, True)])
    x, t, y = bench._best_so_far(list(hist))
    assert list(x) == [1, 2, 3]  # the cache hit is no evaluation
    assert math.isnan(y[0]) and list(y[1:]) == [0.6, 0.7]  # infeasible never counts
    search = SimpleNamespace(best=hist.best, evaluations=3, wall_time=2.0, extra={})
    cpl = SimpleNamespace(method="cpl", history=hist, search=search)
    uniform = SimpleNamespace(method="uniform", history=History([cand(0, 0.55, True)]),
                              search=SimpleNamespace(best=cand(0, 0.55, True), evaluations=1,
                                                     wall_time=0.1, extra={}))
    peer = {"method": "lamp", "models_measured": 2, "search_s": 0.2,
            "candidate": cand(0, 0.65, True)}
    out = bench.plot_search_spend([cpl, uniform], [peer], tmp_path / "s.png", title="t")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("granularity,budget,append", [("channel", "flops<=0.4", False),
                                                       ("weight", "params<=0.1", True)])
def test_benchmark_table_carries_peer_rows_and_spend(granularity, budget, append, tmp_path,
                                                     monkeypatch, capsys):
    """The runner end to end on digits: rlprune's rows, then the peers', with the spend
    columns. Appending writes the section and its plot under docs/; --no-append writes
    nothing there and puts the plot in the run directory."""
    (tmp_path / "configs").mkdir()
    # rlprune's own lamp baseline joins the weight run: the peer's row is told apart
    methods = "purl, uniform" + (", lamp" if granularity == "weight" else "")
    (tmp_path / "configs" / "tiny.yaml").write_text(
        f"model: digits_cnn\ndata: digits\nbudget: {budget}\ngranularity: {granularity}\n"
        f"methods: [{methods}]\nepisodes: 3\nfinetune_epochs: 1\nfinetune_lr: 0.02\n"
        "pretrain_epochs: 2\nreward_samples: 100\nplots: false\nonnx: false\n")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["tiny", "--out", str(out)] + ([] if append else ["--no-append"])
    assert bench.main(args) == 0
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert "reward forward passes" in table[0] and "search s" in table[0]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[1:]}
    peer_names = {"lamp": "lamp (peer)"} if granularity == "weight" else {}
    peer_names = [peer_names.get(n, n) for n in peers.peers_for(granularity)]
    want = ["purl", "uniform", *(["lamp"] if granularity == "weight" else []), *peer_names]
    assert list(rows) == want
    col = table[0].split(" | ").index("reward forward passes")
    evals = table[0].split(" | ").index("evaluations")
    for name in peer_names:
        assert rows[name][col] == "100"  # one model scored on the run's 100 samples
        assert rows[name][evals].endswith("(1 scored)")
    assert rows["uniform"][col].startswith("100")
    if append:
        results = (tmp_path / "docs" / "RESULTS.md").read_text()
        assert "## tiny" in results and all(f"| {m} |" in results for m in want)
        assert "](plots/tiny-search.png)" in results
        assert (tmp_path / "docs" / "plots" / "tiny-search.png").is_file()
        assert not (out / "search-spend.png").exists()
    else:
        assert (out / "search-spend.png").is_file()
        assert not (tmp_path / "docs").exists()


def test_settled_note_names_the_methods_the_noise_rule_moved() -> None:
    """The benchmark line that explains a model far inside a latency limit: which
    method's best candidate the noise rule moved, from where, and the settling again
    after a failed final check."""
    bound = SimpleNamespace(noisy_names=["latency_ms"], limits={"latency_ms": 2.0})
    best = SimpleNamespace(costs={"latency_ms": 1.93, "params": 10.0})
    moved = SimpleNamespace(method="cpl", history=SimpleNamespace(best=best),
                            search=SimpleNamespace(extra={"settled": True,
                                                          "resettled": [{"margin": 0.06}]}))
    kept = SimpleNamespace(method="random", history=SimpleNamespace(best=best),
                           search=SimpleNamespace(extra={"settled": False}))
    assert bench.settled_note([moved, kept], bound) == (
        "`cpl` (its best candidate at latency_ms 0.965 x the limit, one measurement), "
        "settled again after fine-tuning at a 6% margin")
    assert bench.settled_note([kept], bound) == "none"


def test_remeasure_checks_a_noisy_cost_as_the_final_check_does() -> None:
    """A noisy cost that fails one check (a burst) is measured again, as rlprune's final
    check does, before the table says NO; one that fails every check is NO."""
    from rlprune.costs import Budget
    from rlprune.noise import NoiseRule

    model = nn.Linear(4, 2)
    values = iter([1.0] * 3 + [2.0] * 3 + [1.0] * 3 + [2.0] * 100)

    def timed(m: nn.Module) -> float:
        return next(values)

    bound = Budget(custom={"timed": (timed, 1.5, {"noisy": True})}).bind(
        model, rule=NoiseRule(repeats=3, original_repeats=3, margin=0.0))
    # the original took the first three; the first check meets the burst, the second not
    assert peers.remeasure(model, bound)["timed"] == (1.0, 1.5, True)
    assert peers.remeasure(model, bound)["timed"] == (2.0, 1.5, False)
