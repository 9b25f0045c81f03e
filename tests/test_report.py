"""Tests of ``rlprune.report``: the run folder (with its exports and plots) and the
comparison tables. The parts have their own files: ``test_fileio.py``,
``test_runlog.py`` and ``test_export.py``.

Two real runs (digits CNN, ``uniform`` at ``params<=0.5``, channel and weight
granularity) are written once per module; a synthetic duck-typed result covers what a
``uniform`` run cannot show (several constraints, Lagrange multipliers, infeasible
candidates, NaN accuracies, a user model).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rlprune
from rlprune import data, models, report, train
from rlprune.history import Candidate, History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_KEYS = {"model", "onnx", "policy", "log", "plot_layers", "plot_search",
            "plot_candidates", "report_json", "report_md"}


def _strict_json(text: str) -> Any:
    """``json.loads`` that rejects NaN/Infinity, as strict parsers (jq, browsers) do."""

    def bad(c: str) -> Any:
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained() -> tuple[data.Splits, nn.Module]:
    splits = data.load("digits")
    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1)
    train.fit(model, splits, epochs=5, progress=False)
    return splits, model


@pytest.fixture(scope="module", params=["channel", "weight"])
def run(request: pytest.FixtureRequest, trained: tuple[data.Splits, nn.Module],
        tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    splits, model = trained
    g = request.param
    result = rlprune.prune(model, splits, "params<=0.5", method="uniform", granularity=g,
                           progress=False)
    out = tmp_path_factory.mktemp(f"run_{g}")
    paths = report.write_run(out, result, data_name="digits",
                             command=["rlprune", "prune", "--budget", "params<=0.5"],
                             config={"granularity": g, "lr": float("nan")},
                             example_input=splits.example_input(1))
    return SimpleNamespace(granularity=g, result=result, out=out, paths=paths, splits=splits,
                           model=model)


# ------------------------------------------------------------------- the run folder
def test_every_file_written_and_parses(run: SimpleNamespace) -> None:
    res, paths, out = run.result, run.paths, run.out
    assert set(paths) == RUN_KEYS
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0, p
        assert p.resolve().is_relative_to(out.resolve())
    lines = paths["log"].read_text().splitlines()
    assert len(lines) == len(res.history) >= 1
    cands = [_strict_json(line) for line in lines]
    assert [c["index"] for c in cands] == [c.index for c in res.history]
    assert cands[-1]["policy"] == pytest.approx(list(res.history.candidates[-1].policy))
    policy = _strict_json(paths["policy"].read_text())
    assert policy["method"] == "uniform" and policy["granularity"] == run.granularity
    assert policy["budget"] == res.budget
    assert policy["policy"] == pytest.approx(res.policy.tolist())
    assert [row["name"] for row in policy["layers"]] == [row["name"] for row in res.layers]
    assert [row["after"] for row in policy["layers"]] == [row["after"] for row in res.layers]


def test_report_json_matches_result(run: SimpleNamespace) -> None:
    res = run.result
    rep = _strict_json(run.paths["report_json"].read_text())
    for key in ("method", "granularity", "budget", "constraints", "costs", "accuracy", "search",
                "seed", "timings", "versions", "data", "command", "onnx", "files", "feasible"):
        assert key in rep, key
    assert (rep["method"], rep["granularity"], rep["budget"]) == (
        "uniform", run.granularity, res.budget)
    assert rep["data"] == "digits" and rep["seed"] == res.seed
    assert rep["command"] == "rlprune prune --budget 'params<=0.5'"
    assert rep["config"]["lr"] is None  # NaN in the user's config became null
    assert rep["feasible"] is True
    for name, c in res.costs.items():
        got = rep["costs"][name]
        assert got["pruned"] == pytest.approx(c["pruned"])
        assert got["ratio"] == pytest.approx(c["ratio"])
        assert got["ok"] == c["ok"]
        if not c.get("reported_only"):
            assert rep["constraints"][name]["limit"] == pytest.approx(c["limit"])
            assert name in rep["budget"]
    for name, v in res.accuracy.items():
        assert rep["accuracy"][name] == pytest.approx(v)
    s = rep["search"]
    assert s["evaluations"] == res.search.evaluations
    assert s["candidates"] == len(res.history)
    assert s["best_found_at"] == res.search.best_found_at
    assert s["wall_time_s"] == pytest.approx(res.search.wall_time)
    assert s["interrupted"] is False
    assert rep["timings"]["search_s"] == pytest.approx(res.timings["search_s"])
    v = rep["versions"]
    for pkg in ("python", "torch", "torch_pruning", "gymnasium", "stable_baselines3", "numpy",
                "rlprune"):
        assert isinstance(v[pkg], str) and v[pkg], pkg
    assert rep["onnx"]["ok"] is True and rep["onnx"]["max_abs_diff"] <= 1e-4
    assert rep["onnx"]["dynamic_batch"] is True
    assert set(rep["files"]) >= RUN_KEYS


def test_report_md_is_complete(run: SimpleNamespace) -> None:
    md = run.paths["report_md"].read_text()
    res = run.result
    assert md.startswith("# rlprune: digits_cnn, uniform")
    size = "nonzero_params" if run.granularity == "weight" else "params"
    ratio = res.costs[size]["ratio"]
    assert f"to **{100 * ratio:.1f}% of {size}**" in md
    assert f"{100 * res.accuracy['original']:.2f}% → {100 * res.accuracy['pruned']:.2f}%" in md
    for header in ("## Costs", "## Accuracy", "## Search", "## Layers", "## Plots"):
        assert header in md
    assert "| cost | original | pruned |" in md
    for row in res.layers:
        assert f"`{row['name']}`" in md
    for rel in ("plots/layers.png", "plots/search.png", "plots/candidates.png"):
        assert f"]({rel})" in md and (run.out / rel).is_file()


def test_no_temp_files_left(run: SimpleNamespace) -> None:
    names = [p.name for p in run.out.rglob("*")]
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names


def test_files_readable_by_others(run: SimpleNamespace) -> None:
    """Atomic writes go through mkstemp (0600); the final files get the umask's mode."""
    mask = os.umask(0o022)
    os.umask(mask)
    want = 0o666 & ~mask
    for p in run.paths.values():
        assert p.stat().st_mode & 0o777 == want, p


@pytest.mark.parametrize("name", ["layers", "search", "candidates"])
def test_plots_are_real_pngs(run: SimpleNamespace, name: str) -> None:
    import matplotlib.image as mpimg

    p = run.paths[f"plot_{name}"]
    assert p.read_bytes()[:8] == PNG_MAGIC
    assert p.stat().st_size > 10_000
    img = mpimg.imread(p)
    assert img.shape[1] > 600 and img.shape[0] > 400
    assert img[..., :3].std() > 0.05  # not a blank canvas


# ------------------------------------------------------------------------------ exports
def test_onnx_matches_pytorch(run: SimpleNamespace) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(run.paths["onnx"]), providers=["CPUExecutionProvider"])
    x = run.splits.test.x[:17]  # a batch size never used at export time
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        want = run.result.model.eval()(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_pruned_pt_loads_in_fresh_process(run: SimpleNamespace, tmp_path: Path) -> None:
    x = run.splits.test.x[:32]
    with torch.inference_mode():
        want = run.result.model.eval()(x)
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import torch, rlprune
        m = rlprune.load({str(run.paths["model"])!r})
        x = torch.load({str(tmp_path / "x.pt")!r})
        with torch.inference_mode():
            y = m(x)
        torch.save({{"y": y, "params": sum(p.numel() for p in m.parameters()),
                    "nonzero": sum(int((p != 0).sum()) for p in m.parameters()),
                    "training": m.training}}, {str(tmp_path / "y.pt")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "y.pt")
    assert got["training"] is False
    assert torch.allclose(got["y"], want, atol=1e-6, rtol=0)
    size = "nonzero" if run.granularity == "weight" else "params"
    key = "nonzero_params" if run.granularity == "weight" else "params"
    assert got[size] == pytest.approx(run.result.costs[key]["pruned"])
    assert got[size] <= 0.5 * run.result.costs[key]["original"]


# ----------------------------------------------------------------- a synthetic result
def _fake_result(tmp_model: nn.Module) -> SimpleNamespace:
    """Two constraints, multipliers, infeasible candidates, no test split (NaN accuracy)."""
    rng = np.random.default_rng(0)
    hist = History()
    for i in range(40):
        pol = rng.uniform(0, 0.8, size=2).tolist()
        ratios = [1.6 * (1 - np.mean(pol)), 1.3 * (1 - pol[0])]
        hist.add(Candidate(index=i, episode=i, policy=pol, reward=float(1 - np.mean(pol) ** 2),
                           accuracy=float(1 - np.mean(pol) ** 2),
                           costs={"params": ratios[0] * 100, "latency_ms": ratios[1] * 2},
                           cost_ratios=ratios, feasible=all(r <= 1 for r in ratios),
                           extra={"multipliers": [0.05 * i, 0.02 * i]}))
    hist.add(Candidate(index=40, episode=40, policy=[0.0, 0.0], reward=math.nan,
                       accuracy=math.nan, costs={"params": math.nan, "latency_ms": 4.0},
                       cost_ratios=[math.nan, 2.0], feasible=False))
    best = hist.best
    assert best is not None
    search = SimpleNamespace(best=best, evaluations=len(hist), wall_time=1.5,
                             best_found_at=hist.best_found_at,
                             extra={"interrupted": True, "multipliers": [2.0, 0.8],
                                    "episodes": 41})
    layers = [{"index": 0, "name": "0", "kind": "linear", "ratio": best.policy[0],
               "unit": "channels", "before": 16, "after": 12},
              {"index": 1, "name": "2", "kind": "linear", "ratio": best.policy[1],
               "unit": "channels", "before": 8, "after": 6}]
    return SimpleNamespace(
        model=tmp_model, policy=np.array(best.policy), method="cpl", granularity="channel",
        budget="params<=0.6,latency_ms<=2", layers=layers, seed=3, history=hist, search=search,
        timings={"search_s": 1.5, "total_s": 2.0},
        costs={"params": {"original": 160.0, "pruned": 90.0, "ratio": 0.5625, "limit": 100.0,
                          "ok": True},
               "latency_ms": {"original": 2.6, "pruned": 1.9, "ratio": 0.73, "limit": 2.0,
                              "ok": True},
               "macs": {"original": 1e4, "pruned": 5e3, "ratio": 0.5, "limit": math.nan,
                        "ok": True, "reported_only": True}},
        accuracy={"reward_original": 0.97, "reward_pruned_before_finetune": 0.9,
                  "reward_pruned": float("nan")},
    )


def test_synthetic_result_with_multipliers_and_nan(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    user_model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    res = _fake_result(user_model)
    paths = report.write_run(tmp_path, res, example_input=torch.randn(1, 5), versions=False)
    rep = _strict_json(paths["report_json"].read_text())
    assert rep["accuracy"]["reward_pruned"] is None
    assert rep["costs"]["macs"]["limit"] is None
    assert set(rep["constraints"]) == {"params", "latency_ms"}
    assert rep["search"]["interrupted"] is True and rep["search"]["episodes"] == 41
    assert rep["search"]["multipliers"] == [2.0, 0.8]
    assert rep["search"]["best_found_at"] == res.search.best_found_at
    assert "versions" not in rep
    assert rep["onnx"]["ok"] is True  # a user nn.Sequential exports too
    log = [_strict_json(line) for line in paths["log"].read_text().splitlines()]
    assert log[-1]["reward"] is None and log[-1]["cost_ratios"][0] is None
    # search.png gets a third panel for the multipliers: taller than the 2-panel version
    assert mpimg.imread(paths["plot_search"]).shape[0] > 1000
    assert mpimg.imread(paths["plot_candidates"]).shape[1] > 1000  # one panel per constraint
    md = paths["report_md"].read_text()
    assert "reward split accuracy **97.00% → –**" in md
    assert "interrupted: yes" in md
    # the user model's checkpoint is the whole module and loads back
    loaded = rlprune.load(paths["model"])
    x = torch.randn(3, 5)
    assert torch.equal(loaded(x), user_model(x))


def test_missing_example_input_skips_onnx(tmp_path: Path) -> None:
    res = _fake_result(nn.Sequential(nn.Linear(5, 3)))
    paths = report.write_run(tmp_path, res, versions=False, plots=False)
    assert "onnx" not in paths and not (tmp_path / "pruned.onnx").exists()
    assert not (tmp_path / "plots").exists()
    rep = _strict_json(paths["report_json"].read_text())
    assert rep["onnx"]["ok"] is False and "example input" in rep["onnx"]["error"]


# ------------------------------------------------------------------------------ compare
def _rows() -> list[dict[str, Any]]:
    def costs(p: float, lat: float, ok: bool = True) -> dict[str, dict[str, Any]]:
        return {"params": {"pruned": p, "ratio": p / 24058, "limit": 12029.0, "ok": ok},
                "latency_ms": {"pruned": lat, "ratio": lat / 0.2, "limit": 0.15, "ok": ok}}

    return [
        {"method": "uniform", "costs": costs(11800, 0.12), "reward_acc_before_ft": 0.41,
         "test_acc_before_ft": 0.40, "test_acc_after_ft": 0.93, "evaluations": 1,
         "best_found_at": 1, "search_s": 0.8},
        {"method": "cpl", "costs": costs(12000, 0.14), "reward_acc_before_ft": 0.62,
         "test_acc_before_ft": 0.60, "test_acc_after_ft": 0.95, "evaluations": 200,
         "best_found_at": 153, "search_s": 95.2},
        {"method": "amc", "costs": costs(12029, 0.15), "reward_acc_before_ft": float("nan"),
         "test_acc_before_ft": np.float64(0.5), "test_acc_after_ft": float("nan"),
         "evaluations": 300, "best_found_at": None, "search_s": 120.0},
    ]


def test_compare_table_has_every_row_and_column() -> None:
    rows = _rows()
    md = report.compare_table(rows, original={"test": 0.9164, "reward": 0.9028},
                              budget="params<=0.5,latency_ms<=0.15")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)
    header = table[0]
    for col in ("method", "params", "latency_ms", "reward acc (before FT)",
                "test acc (before FT)", "test acc (after FT)", "evaluations", "best found at",
                "search time"):
        assert col in header, col
    ncols = header.count("|")
    assert all(line.count("|") == ncols for line in table)
    for r in rows:
        assert any(line.startswith(f"| {r['method']} |") for line in table)
    assert md.startswith("Budget params<=0.5,latency_ms<=0.15; unpruned test accuracy 91.64%")
    assert "| cpl | 12,000 (49.9%) ✓ | 0.14 (70.0%) ✓ | 62.00% | 60.00% | 95.00% | 200 | 153 |" \
        in md
    amc = next(line for line in table if line.startswith("| amc |"))
    assert "| – |" in amc  # NaN accuracy and missing best_found_at shown as a dash

    console = report.format_compare_console(rows, original={"test": 0.9164})
    lines = console.splitlines()
    assert lines[0].startswith("unpruned test accuracy")
    body = lines[1:]
    assert len(body) == 2 + len(rows)
    assert len({len(line) for line in body[:2]}) == 1  # header and rule line up
    for r in rows:
        assert any(line.startswith(r["method"]) for line in body)


def test_compare_row_from_a_run(run: SimpleNamespace) -> None:
    row = report.compare_row(run.result)
    assert row["method"] == "uniform"
    assert row["test_acc_after_ft"] == pytest.approx(run.result.accuracy["pruned"])
    assert row["evaluations"] == run.result.search.evaluations
    assert set(row["costs"]) == set(run.result.costs)
    assert report.compare_table([row]).count("| uniform |") == 1


def test_write_compare_files(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    rows = _rows()
    paths = report.write_compare(tmp_path, rows, original={"test": 0.9164, "reward": 0.9},
                                 budget="params<=0.5", data_name="digits",
                                 model_name="digits_cnn", command=["rlprune", "compare"],
                                 versions=False)
    assert set(paths) == {"md", "json", "plot"}
    doc = _strict_json(paths["json"].read_text())
    assert [r["method"] for r in doc["rows"]] == ["uniform", "cpl", "amc"]
    assert doc["rows"][2]["test_acc_after_ft"] is None
    assert doc["rows"][2]["reward_acc_before_ft"] is None
    assert doc["rows"][2]["test_acc_before_ft"] == 0.5
    assert doc["original"]["test"] == 0.9164 and doc["command"] == "rlprune compare"
    md = paths["md"].read_text()
    assert md.startswith("# rlprune comparison: digits_cnn, digits, params<=0.5")
    assert "![compare](compare.png)" in md
    png = paths["plot"]
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert mpimg.imread(png).shape[1] > 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.json", "compare.md",
                                                          "compare.png"]
