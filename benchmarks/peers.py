"""The peers of every benchmark table: what a user would pick instead of rlprune.

Each peer runs through its own library, as that library's users run it, on the same
checkpoint, bound budget, reward split and fine-tune schedule as rlprune's methods:

* channel budgets: Torch-Pruning's ``MetaPruner`` with
  ``GroupMagnitudeImportance(p=2)``, once per layer (``tp-uniform``,
  ``global_pruning=False``) and once with one global ranking (``tp-global``,
  ``global_pruning=True``); the model's output layers are in ``ignored_layers``.
  ``pruning_ratio`` is bisected so the budget is just met, every constraint measured
  on the pruned model.
* weight budgets: ``torch.nn.utils.prune.global_unstructured`` over every Conv/Linear
  weight, with ``L1Unstructured`` on the weights themselves
  (``torch-global-magnitude``) or on their LAMP scores (``lamp``, Lee et al., ICLR
  2021); the number of weights removed is bisected onto the budget (starting from the
  count the nonzero limit implies, so a ``params`` budget costs two measurements), and
  the pruning is made permanent (``prune.remove``).

The pruned model is then scored exactly as rlprune scores a candidate
(:meth:`rlprune.evaluate.Evaluator.score_model`: BatchNorm re-estimated on the same
training inputs, accuracy on the same reward split, every cost against the run's bound
budget), fine-tuned with :func:`rlprune.train.fit` as rlprune's results are, and
re-measured after a save/load round trip. What each peer spent is counted: pruned
models measured during the bisection, how many of them were scored on the reward split
(one), reward-split samples scored, and wall seconds (bisection and scoring; the
fine-tune is not search).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as tprune

from rlprune import costs, train
from rlprune.costs import BoundBudget, BudgetInfeasibleError
from rlprune.data import Splits
from rlprune.evaluate import EvalOptions, Evaluator
from rlprune.space import DEFAULT_IMPORTANCE, PruningSpace

__all__ = ["PEERS", "PeerSetup", "peers_for", "run_peer", "run_peers", "lamp_scores",
           "output_layers", "tp_prune", "magnitude_prune", "lamp_prune", "remeasure",
           "BudgetInfeasibleError"]

#: The peers of each granularity, in table order.
PEERS: dict[str, tuple[str, ...]] = {
    "channel": ("tp-uniform", "tp-global"),
    "weight": ("torch-global-magnitude", "lamp"),
}

_CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)


def peers_for(granularity: str) -> tuple[str, ...]:
    """The peers that apply to ``granularity`` (none for an unknown one)."""
    return PEERS.get(granularity, ())


@dataclass
class PeerSetup:
    """What every peer shares with the comparison it joins.

    ``bound`` is the comparison's bound budget (``results[0].bound``): the same absolute
    limits rlprune's methods were held to. ``reward_samples`` is the run's
    ``reward_samples`` (``None``: the whole reward split), so a peer's reward-split
    accuracy is computed on the same samples as every candidate's.
    """

    original: nn.Module
    splits: Splits
    bound: BoundBudget
    granularity: str
    example_input: torch.Tensor
    reward_samples: int | None = None
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    seed: int = 0
    importance: str = DEFAULT_IMPORTANCE
    space: PruningSpace | None = None

    def evaluator(self) -> Evaluator:
        """A fresh evaluator (its ``spent`` counters at zero) scoring as the run's did."""
        if self.space is None:
            self.space = PruningSpace.from_model(
                self.original, self.example_input, granularity=self.granularity,
                importance=self.importance,
                data=(self.splits.train.x[:256], self.splits.train.y[:256]))
        return Evaluator(self.original, self.space, self.bound, self.splits,
                         EvalOptions(reward_samples=self.reward_samples, seed=self.seed),
                         example_input=self.example_input)


# --------------------------------------------------------------------- measuring
@dataclass
class _Probe:
    """One pruned model of a bisection and its measured constraint values."""

    model: nn.Module | None
    values: dict[str, float]
    ratios: list[float]

    @property
    def ok(self) -> bool:
        return all(r <= 1.0 for r in self.ratios)


def _probe(bound: BoundBudget, model: nn.Module) -> _Probe:
    """Measure ``model`` against ``bound``. A noisy cost is measured as rlprune accepts
    it (:class:`rlprune.noise.NoiseRule`): its value here is the upper bound of the
    repeats plus the margin, so ``ok`` is the rule's verdict, as for rlprune's methods."""
    if not bound.noisy:
        values = {k: float(v) for k, v in bound.measure(model).items()}
    else:
        runs, noisy = bound.repeated(model), set(bound.noisy_names)
        values = {k: (bound.rule.spread(v).bound * (1.0 + bound.rule.margin) if k in noisy
                      else float(v[0])) for k, v in runs.items()}
    return _Probe(model, values, [float(r) for r in bound.ratios_of(values)])


def _infeasible(peer: str, bound: BoundBudget, best: _Probe | None, what: str
                ) -> BudgetInfeasibleError:
    """The error of a budget the peer cannot reach, naming the smallest value it reached."""
    if best is None:
        return BudgetInfeasibleError(f"{peer}: budget {bound} is unreachable")
    fails = {n: (best.values[n], float(bound.limits[n])) for n in bound.names
             if best.values[n] > bound.limits[n]}
    parts = ", ".join(f"{n} {v:.6g} > limit {lim:.6g}" for n, (v, lim) in fails.items())
    return BudgetInfeasibleError(
        f"{peer}: budget {bound} is unreachable; the most it pruned ({what}) measures "
        f"{parts}", fails)


def _closest(a: _Probe | None, b: _Probe) -> _Probe:
    """The probe nearer to feasible (smallest worst ratio)."""
    return b if a is None or max(b.ratios) < max(a.ratios) else a


def remeasure(model: nn.Module, bound: BoundBudget) -> dict[str, tuple[float, float, bool]]:
    """Save ``model``, load it back and recompute every constraint from scratch against
    ``bound``'s limits: ``{name: (value, limit, ok)}``. A noisy cost is checked as
    ``rlprune.prune``'s final check does: under the noise rule, measured again
    (``api.FINAL_RECHECKS`` times) when a check fails on noisy costs alone."""
    from rlprune.api import FINAL_RECHECKS

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "pruned.pt"
        train.save_checkpoint(p, model, {})
        loaded, _ = train.load_checkpoint(p)
    noisy = set(bound.noisy_names)
    measured = bound.evaluate(loaded)
    for _ in range(FINAL_RECHECKS):
        failed = {n for n, v in measured.items() if not v["ok"]}
        if not failed or not failed <= noisy:
            break
        print(f"re-measured {', '.join(sorted(failed))} over the limit once: "
              f"{json.dumps({n: measured[n] for n in failed})}; measuring again",
              file=sys.stderr)
        measured = bound.evaluate(loaded)
    for name, v in measured.items():
        if not v["ok"]:  # the reader of the table wants to know by how much, and why
            print(f"re-measured {name} over its limit: {json.dumps(v)}", file=sys.stderr)
    return {name: (float(v["value"]), float(v["limit"]), bool(v["ok"]))
            for name, v in measured.items()}


# --------------------------------------------------------- Torch-Pruning (channel)
def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv/Linear layers whose output channels are the model's outputs.

    Walks Torch-Pruning's dependency graph back from every node without consumers
    through channel-preserving nodes and stops at the first Conv/Linear on each path
    (what a Torch-Pruning user puts in ``ignored_layers``: the classifier).
    """
    work = copy.deepcopy(model).eval()
    dg = tp.DependencyGraph().build_dependency(work, example_inputs=example_input[:1])
    names = {id(m): n for n, m in work.named_modules()}
    found: set[str] = set()
    stack = [n for n in dg.module2node.values() if not n.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _CONV_LINEAR) and id(node.module) in names:
            found.add(names[id(node.module)])
            continue
        stack.extend(node.inputs)
    return sorted(found)


def tp_prune(model: nn.Module, example_input: torch.Tensor, pruning_ratio: float,
             global_pruning: bool, ignored: Sequence[str]) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning's ``MetaPruner`` in one step, with
    ``GroupMagnitudeImportance(p=2)`` and the layers named in ``ignored`` left whole."""
    work = copy.deepcopy(model).eval()
    mods = dict(work.named_modules())
    pruner = tp.pruner.MetaPruner(
        work, example_input[:1], importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=global_pruning, pruning_ratio=float(pruning_ratio),
        ignored_layers=[mods[n] for n in ignored])
    pruner.step()
    return work.eval()


#: The ratios tried, in order, until one meets the budget (then bisection below it).
#: Torch-Pruning skips a group that a ratio would empty, so feasibility is not monotone
#: near 1; starting at 0.5 and moving toward 1 finds a feasible ratio without scanning.
_TP_UPPER = (0.5, 0.75, 0.875, 0.9375, 0.96875, 0.984375, 0.9921875)


def _bisect_ratio(build: Callable[[float], nn.Module], bound: BoundBudget, peer: str,
                  tol: float = 1e-4) -> tuple[_Probe, float, int]:
    """The smallest ratio found in [0, 1) whose pruned model meets ``bound`` (measured).

    Returns ``(probe, ratio, models measured)``. The returned probe is always a measured
    feasible model, whatever the shape of cost vs ratio.
    """
    n = 0
    lo, hi, best, closest = 0.0, None, None, None
    for r in _TP_UPPER:
        p = _probe(bound, build(r))
        n += 1
        if p.ok:
            hi, best = r, p
            break
        lo, closest = r, _closest(closest, p)
    if hi is None or best is None:
        raise _infeasible(peer, bound, closest, f"pruning_ratio up to {_TP_UPPER[-1]}")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        p = _probe(bound, build(mid))
        n += 1
        if p.ok:
            hi, best = mid, p
        else:
            lo = mid
    return best, hi, n


# ------------------------------------------------------- torch.nn.utils.prune (weight)
def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every Conv/Linear layer (a tied weight once)."""
    out, seen = [], set()
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, _CONV_LINEAR) and isinstance(w, torch.Tensor) and id(w) not in seen:
            seen.add(id(w))
            out.append((m, "weight"))
    return out


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer's weights (Lee et al., ICLR 2021), shaped like ``weight``.

    With the squared weights sorted ascending, ``score(u) = w_u^2 / sum_{v >= u} w_v^2``
    (the weight itself and every larger one). The largest weight of a layer scores 1,
    the maximum, so a global threshold over these scores keeps every layer's largest
    weight unless all but fewer than one weight per layer are removed. A zero weight
    scores 0. Computed in float64.
    """
    sq = weight.detach().double().reshape(-1) ** 2
    srt, idx = torch.sort(sq, stable=True)
    tail = torch.flip(torch.cumsum(torch.flip(srt, [0]), 0), [0])  # sum_{v >= u}
    s = torch.where(tail > 0, srt / tail.clamp_min(torch.finfo(torch.float64).tiny),
                    torch.zeros_like(srt))
    out = torch.empty_like(s)
    out[idx] = s
    return out.reshape(weight.shape)


def _global_unstructured(model: nn.Module, amount: int, lamp: bool) -> nn.Module:
    work = copy.deepcopy(model).eval()
    params = _weights(work)
    scores = {(m, n): lamp_scores(getattr(m, n)) for m, n in params} if lamp else None
    if amount > 0:
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured,
                                   importance_scores=scores, amount=int(amount))
        for m, n in params:
            tprune.remove(m, n)  # permanent: a plain module with zeros in its weights
    return work


def magnitude_prune(model: nn.Module, amount: int) -> nn.Module:
    """A copy of ``model`` with its ``amount`` smallest Conv/Linear weights (by magnitude,
    across all layers) set to zero by ``prune.global_unstructured``."""
    return _global_unstructured(model, amount, lamp=False)


def lamp_prune(model: nn.Module, amount: int) -> nn.Module:
    """A copy of ``model`` with the ``amount`` Conv/Linear weights of lowest LAMP score
    set to zero (``prune.global_unstructured`` with ``importance_scores``)."""
    return _global_unstructured(model, amount, lamp=True)


def _nonzero_guess(model: nn.Module, bound: BoundBudget) -> int | None:
    """Weights to remove so the nonzero count just meets a ``nonzero_params`` limit."""
    if "nonzero_params" not in bound.names:
        return None
    params = _weights(model)
    n_w = sum(getattr(m, n).numel() for m, n in params)
    nz_w = sum(int(torch.count_nonzero(getattr(m, n))) for m, n in params)
    other = costs.count_nonzero(model) - nz_w
    keep = math.floor(bound.limits["nonzero_params"] - other)
    return min(max(n_w - keep, 0), n_w)


def _bisect_amount(build: Callable[[int], nn.Module], bound: BoundBudget, total: int,
                   guess: int | None, peer: str) -> tuple[_Probe, int, int]:
    """The smallest count of weights removed in [0, total] that meets ``bound``.

    Starts from ``guess`` (exact for a nonzero-parameter budget: two measurements
    confirm it), then bisects on integers. Returns ``(probe, amount, models measured)``.
    """
    seen: dict[int, _Probe] = {}

    def probe(a: int) -> _Probe:
        if a not in seen:
            p = _probe(bound, build(a))
            # keep one model only, the feasible one with the fewest weights removed: a
            # large network is copied once per probe
            feasible = [k for k, q in seen.items() if q.ok]
            if not p.ok or (feasible and min(feasible) < a):
                p.model = None
            else:
                for k in feasible:
                    seen[k].model = None
            seen[a] = p
        return seen[a]

    lo, hi = -1, None  # lo: known infeasible (-1: none known), hi: known feasible
    if guess is not None:
        if probe(guess).ok:
            hi = guess
            if guess == 0 or not probe(guess - 1).ok:
                return seen[guess], guess, len(seen)
            hi = guess - 1
        else:
            lo = guess
    if hi is None:
        if not probe(total).ok:
            closest = min(seen.values(), key=lambda p: max(p.ratios))
            raise _infeasible(peer, bound, closest, f"all {total} weights removed")
        hi = total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid).ok:
            hi = mid
        else:
            lo = mid
    return seen[hi], hi, len(seen)


# ----------------------------------------------------------------------- peers
def _search(name: str, s: PeerSetup) -> tuple[_Probe, dict[str, float], int]:
    """Run peer ``name``'s own pruner onto the budget: (probe, setting, models measured)."""
    model, ex, bound = s.original, s.example_input, s.bound
    if name in ("tp-uniform", "tp-global"):
        ignored = output_layers(model, ex)
        glob = name == "tp-global"
        probe, ratio, n = _bisect_ratio(lambda r: tp_prune(model, ex, r, glob, ignored),
                                        bound, name)
        return probe, {"pruning_ratio": ratio}, n
    if name in ("torch-global-magnitude", "lamp"):
        lamp = name == "lamp"
        total = sum(getattr(m, n).numel() for m, n in _weights(model))
        probe, amount, n = _bisect_amount(
            lambda a: _global_unstructured(model, a, lamp), bound, total,
            _nonzero_guess(model, bound), name)
        return probe, {"amount": amount, "weights": total}, n
    raise ValueError(f"unknown peer {name!r}; known: "
                     f"{', '.join(p for ps in PEERS.values() for p in ps)}")


def _cost_table(model: nn.Module, s: PeerSetup) -> dict[str, dict[str, Any]]:
    """The costs of a row, as :func:`rlprune.api.prune` reports them: every constraint
    against the bound limits, plus params and MACs reported only."""
    table: dict[str, dict[str, Any]] = {
        n: {"original": float(v["original"]), "pruned": float(v["value"]),
            "ratio": float(v["ratio"]), "limit": float(v["limit"]), "ok": bool(v["ok"]),
            **({"noise": v["noise"]} if "noise" in v else {})}
        for n, v in s.bound.evaluate(model).items()}
    for extra in ("params", "macs"):
        if extra not in table:
            fn = costs.get_cost(extra)
            o, p = float(fn(s.original, s.example_input)), float(fn(model, s.example_input))
            table[extra] = {"original": o, "pruned": p, "ratio": p / o if o else 1.0,
                            "limit": float("nan"), "ok": True, "reported_only": True}
    return table


def _setting_text(setting: dict[str, float]) -> str:
    if "pruning_ratio" in setting:
        return f"pruning_ratio={setting['pruning_ratio']:.4f}"
    return f"amount={int(setting['amount'])} of {int(setting['weights'])} weights"


def run_peer(name: str, setup: PeerSetup) -> dict[str, Any]:
    """Run one peer; return its table row.

    The row has the keys of :func:`rlprune.report.compare_row` (``method``, ``costs``,
    the accuracies, ``evaluations``, ``best_found_at``, ``search_s``, ...) plus
    ``remeasured`` (``{name: (value, limit, ok)}`` after a save/load round trip), the
    spend (``models_measured``: pruned models measured during the bisection,
    ``scored``: models scored on the reward split, ``reward_samples``: reward-split
    samples scored), ``peer_setting`` (``{"pruning_ratio": r}`` or ``{"amount": a,
    "weights": total}``, what the bisection found) and its text, ``candidate`` (the
    scored :class:`~rlprune.history.Candidate`), ``peer = True`` and ``model`` (the
    pruned, fine-tuned model). Raises :class:`BudgetInfeasibleError` when the peer
    cannot meet the budget.
    """
    if name not in peers_for(setup.granularity):
        raise ValueError(f"peer {name!r} does not apply to granularity "
                         f"{setup.granularity!r}; it has {', '.join(peers_for(setup.granularity))}")
    ev = setup.evaluator()
    t0 = time.perf_counter()
    probe, setting, measured = _search(name, setup)
    assert probe.model is not None
    pruned, cand = ev.score_model(probe.model)
    search_s = time.perf_counter() - t0
    splits = setup.splits
    has_test = len(splits.test) > 0
    nan = float("nan")
    acc_test_before = train.evaluate(pruned, splits.test.x, splits.test.y) if has_test else nan
    # on the whole reward split, as rlprune.prune reports its methods (not search spend)
    acc_reward_before = train.evaluate(pruned, splits.reward.x, splits.reward.y)
    t1 = time.perf_counter()
    if setup.finetune_epochs > 0:
        train.fit(pruned, splits, epochs=setup.finetune_epochs, lr=setup.finetune_lr,
                  seed=setup.seed, keep_zeros=setup.granularity == "weight", progress=False)
    finetune_s = time.perf_counter() - t1
    pruned.eval()
    acc_test_after = train.evaluate(pruned, splits.test.x, splits.test.y) if has_test else nan
    table = _cost_table(pruned, setup)
    return {
        "method": name,
        "costs": {n: {k: c[k] for k in ("pruned", "ratio", "limit", "ok", "reported_only")
                      if k in c} for n, c in table.items()},
        "reward_acc_before_ft": acc_reward_before,
        "test_acc_before_ft": acc_test_before,
        "test_acc_after_ft": acc_test_after,
        "reward_acc_after_ft": train.evaluate(pruned, splits.reward.x, splits.reward.y),
        "evaluations": measured,
        "candidates": measured,
        "best_found_at": None,
        "search_s": search_s,
        "time_to_best_s": None,
        "feasible": all(bool(c["ok"]) for c in table.values()),
        "finetune_s": finetune_s,
        "remeasured": remeasure(pruned, setup.bound),
        "models_measured": measured,
        "scored": 1,
        "reward_samples": int(ev.spent["reward_samples"]),
        "peer_setting": setting,
        "peer_setting_text": _setting_text(setting),
        "candidate": cand,
        "peer": True,
        "model": pruned,
    }


def run_peers(setup: PeerSetup, names: Sequence[str] | None = None,
              log: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every peer of ``setup.granularity`` (or ``names``): ``(rows, error lines)``.

    A peer that cannot meet the budget gives one error line instead of a row; ``log``
    (default: stderr) is told about each peer as it finishes.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    rows, errors = [], []
    for name in (names if names is not None else peers_for(setup.granularity)):
        try:
            row = run_peer(name, setup)
        except BudgetInfeasibleError as e:
            errors.append(str(e))
            say(f"  {e}")
            continue
        rows.append(row)
        say(f"  {name}: {row['peer_setting_text']}, {row['models_measured']} models measured, "
            f"{row['search_s']:.1f} s, test acc after fine-tune {row['test_acc_after_ft']:.4f}")
    return rows, errors
