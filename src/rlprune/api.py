"""The one-call Python API: :func:`prune`, :func:`compare` and :func:`load`.

``prune`` builds the pruning space and environment, runs one method, applies the
returned policy to a copy of the model, fine-tunes it if asked, and measures every
constraint on the pruned model itself. The input model is never modified.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlprune import costs as costs_mod
from rlprune import train as train_mod
from rlprune.agents.base import SearchResult, check_methods, get_method
from rlprune.costs import Budget
from rlprune.data import Splits, as_splits
from rlprune.env import PruningEnv
from rlprune.history import History
from rlprune.space import PruningSpace, bisect_boundary, uniform_policy

__all__ = ["PruneResult", "prune", "compare", "load", "make_env", "budget_levels", "budget_for",
           "METHOD_ENV_DEFAULTS", "SEARCHING_METHODS"]

#: How each method wants the shared environment configured (PuRL: discrete levels and
#: dense rewards; the rest: continuous ratios and a terminal reward).
METHOD_ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "purl": {"action": "discrete", "reward": "dense"},
}


#: Agent options ``prune`` sets unless the caller does. cpl: the authors' 128-step
#: rollouts would give a short search (tens of episodes) no update at all, so rollouts
#: are shortened to give at least 4 policy and multiplier updates.
METHOD_AGENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpl": {"min_updates": 4},
}


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    ``costs[name]`` = ``{"original", "pruned", "ratio", "limit", "ok"}`` measured on the
    returned model; ``accuracy`` has ``original``, ``pruned`` (test split, after
    fine-tuning if any), ``pruned_before_finetune`` and the reward-split accuracies.
    """

    model: nn.Module
    policy: np.ndarray
    costs: dict[str, dict[str, Any]]
    accuracy: dict[str, float]
    history: History
    search: SearchResult
    method: str
    granularity: str
    budget: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    original: nn.Module | None = None
    example_input: torch.Tensor | None = None

    @property
    def feasible(self) -> bool:
        """Every constraint holds on the returned model."""
        return all(c["ok"] for c in self.costs.values())

    def summary(self) -> str:
        """A few human-readable lines."""
        parts = [f"method {self.method} ({self.granularity}), budget {self.budget}"]
        for name, c in self.costs.items():
            parts.append(f"  {name}: {c['pruned']:.6g} (limit {c['limit']:.6g}, "
                         f"{c['ratio']:.1%} of original) {'ok' if c['ok'] else 'VIOLATED'}")
        acc = self.accuracy
        if "original" in acc:
            parts.append(f"  test accuracy: original {acc['original']:.4f}, pruned "
                         f"{acc.get('pruned_before_finetune', float('nan')):.4f}, after "
                         f"fine-tune {acc.get('pruned', float('nan')):.4f}")
        parts.append(f"  search: {self.search.evaluations} evaluations, "
                     f"{self.search.wall_time:.1f} s")
        return "\n".join(parts)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"model parameter {name!r} contains NaN or inf values; "
                             "rlprune needs a trained model with finite weights")


def budget_for(budget: Budget | str, granularity: str) -> Budget:
    """The budget as measured for ``granularity``.

    Weight pruning zeroes weights without removing them, so under ``weight`` a
    ``params`` constraint means the nonzero parameter count (as in Han et al. and the
    constrained-RL paper): it is measured as ``nonzero_params``.
    """
    from rlprune.costs import Constraint, get_cost

    b = Budget.coerce(budget)
    if granularity != "weight" or "params" not in b.names:
        return b
    if "nonzero_params" in b.names:
        raise ValueError("under weight granularity `params` means nonzero parameters: give "
                         "either params or nonzero_params, not both")
    nz = get_cost("nonzero_params")
    return Budget([Constraint("nonzero_params", nz, c.value, c.percent) if c.name == "params"
                   else c for c in b])


def make_env(
    model: nn.Module,
    splits: Splits,
    budget: Budget,
    method: str,
    granularity: str = "channel",
    importance: str = "l1",
    example_input: torch.Tensor | None = None,
    space: PruningSpace | None = None,
    seed: int = 0,
    **env_kwargs: Any,
) -> PruningEnv:
    """The environment configured as ``method`` expects (see ``METHOD_ENV_DEFAULTS``).

    Discrete actions without given ``levels`` get :func:`budget_levels` when the
    budget is tight (the evenly spaced default grid has no level near it).
    """
    kw = {**METHOD_ENV_DEFAULTS.get(method, {}), **env_kwargs}
    env = PruningEnv(model, splits, budget_for(budget, granularity), space=space,
                     granularity=granularity,
                     importance=importance, example_input=example_input, seed=seed, **kw)
    if env.levels is not None and "levels" not in kw:
        levels = budget_levels(env)
        if levels is not None:
            env.set_levels(levels)
    return env


def budget_levels(env: PruningEnv, n: int = 10, tight: float = 0.25) -> np.ndarray | None:
    """Discrete prune ratios for a tight budget, or ``None`` when the default grid fits.

    With ``k`` the keep ratio of the one-ratio-for-all policy that just meets the
    budget, a budget is tight when ``k < tight``: the default grid, evenly spaced prune
    ratios ``0, a_max/9, ..., a_max``, then has at most two levels at or beyond the
    uniform policy (for 8% of the weights, keep 12% or 1%), so per-layer choices are
    all-or-nothing. Here the levels are no pruning plus ``n - 1`` keep ratios spaced
    geometrically from ``k / 4`` to ``4 k`` (each clipped to what the layers allow).
    """
    k = 1.0 - _uniform_ratio(env)
    if k >= tight:
        return None
    keeps = np.clip(k * 2.0 ** np.linspace(-2.0, 2.0, n - 1), 1.0 - env.a_max, 1.0)
    return np.unique(np.round(np.concatenate([[0.0], 1.0 - keeps]), 6))


def _budget_aware_defaults(method: str, env: PruningEnv,
                           given: dict[str, Any]) -> dict[str, Any]:
    """Agent options that depend on how tight the budget is (unless the caller set them).

    ``amc``'s published lowest preserve ratio of 0.2 cannot reach a budget tighter
    than keeping 20% of every layer (every episode would hit the same walled policy).
    With ``r`` the one prune ratio for every layer that just meets the budget, it is
    lowered to ``min(0.2, (1 - r) / 2)``: every layer may go to half the uniform keep
    ratio.
    """
    if method != "amc" or "config" in given or "min_preserve" in given:
        return {}
    return {"min_preserve": min(0.2, (1.0 - _uniform_ratio(env)) / 2.0)}


def _uniform_ratio(env: PruningEnv) -> float:
    """The one prune ratio for every layer that just meets ``env``'s budget."""
    return float(np.max(uniform_policy(env.space, env.model, env.bound, env.example_input),
                        initial=0.0))


def refine(env: PruningEnv, policy: np.ndarray, iterations: int = 12) -> np.ndarray:
    """Spend budget the chosen policy left unused, if that scores better.

    Searches often end on a policy that is comfortably inside the budget. This scales
    every prune ratio down by one factor ``s`` in [0, 1], bisected to the smallest ``s``
    that is still feasible (measured), scores that policy on the reward split, and
    returns it when it ranks above the original choice. At most two evaluations are
    added to the history (the original is scored too if the search never did).
    Skipped for budgets with noisy costs (latency), whose boundary is not reliable.
    """
    p = np.asarray(policy, dtype=np.float64)
    if env.bound.noisy or not p.any():
        return p

    def ok(s: float) -> bool:
        return bool(np.all(env.cost_ratios(p * s) <= 1.0))

    hi = 0.0 if ok(0.0) else bisect_boundary(ok, iterations)
    if hi > 0.995:
        return p
    base = env.history.lookup(p) or env.evaluate_policy(p)
    cand = env.evaluate_policy(p * hi)
    cand.extra["refined_from"] = base.index
    if cand.feasible and env.history.key(cand) > env.history.key(base):
        return np.asarray(cand.policy, dtype=np.float64)
    return p


def prune(
    model: nn.Module,
    data: Splits | tuple[Any, ...] | str,
    budget: Budget | str,
    method: str = "cpl",
    granularity: str = "channel",
    example_input: torch.Tensor | None = None,
    finetune_epochs: int = 0,
    finetune_lr: float = 0.01,
    distill: bool = False,
    search_episodes: int | None = None,
    importance: str = "l1",
    seed: int = 0,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    method_kwargs: dict[str, Any] | None = None,
    space: PruningSpace | None = None,
    callback: Any = None,
    env: PruningEnv | None = None,
    refine_policy: bool = True,
) -> PruneResult:
    """Prune ``model`` to fit ``budget`` with ``method``; returns a :class:`PruneResult`.

    ``data`` is a :class:`~rlprune.data.Splits`, a dataset name or a tuple
    ``(x_train, y_train, x_test, y_test)``; ``budget`` a :class:`Budget` or a string
    such as ``"params<=0.3,flops<=50%"``. ``search_episodes`` sets the search length
    of the searching methods (candidate evaluations). The returned model meets every
    constraint of the budget, measured on it; an unreachable budget raises
    :class:`~rlprune.costs.BudgetInfeasibleError` naming the smallest reachable value.
    ``env`` is a ready :class:`PruningEnv` over ``model`` (e.g. one replaying a logged
    search when resuming); ``callback(agent, info)`` is called after every episode.
    ``refine_policy`` lets :func:`refine` spend budget the search's choice left unused.
    """
    _check_model(model)
    if granularity not in ("channel", "weight"):
        raise ValueError(f"granularity must be 'channel' or 'weight', got {granularity!r}")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    splits = as_splits(data, seed=seed)
    budget = budget_for(budget, granularity)
    torch.manual_seed(seed)
    np.random.seed(seed)
    original = copy.deepcopy(model).eval()
    ex = example_input if example_input is not None else splits.example_input(1)
    t0 = time.perf_counter()
    if env is None:
        env = make_env(original, splits, budget, method, granularity, importance, ex, space,
                       seed, **(env_kwargs or {}))
    t_env = time.perf_counter() - t0
    # An unreachable budget is a clear error before any search time is spent.
    env.project(env.max_ratios)
    mkw = {**METHOD_AGENT_DEFAULTS.get(method, {}), **(method_kwargs or {})}
    mkw.update(_budget_aware_defaults(method, env, mkw))
    if search_episodes is not None:
        mkw["episodes"] = search_episodes
    searcher = get_method(method, seed=seed, progress=progress, **mkw)
    if callback is not None:
        searcher.callback = callback  # type: ignore[attr-defined]
    result = searcher.search(env, budget)
    if refine_policy:
        n0 = len(env.history)
        result.policy = refine(env, result.policy)
        result.evaluations = env.history.evaluations
        if len(env.history) > n0 and callback is not None:
            callback(searcher, {"episode": env.episode, "candidate": env.history.candidates[-1],
                                "best": env.history.best, "refine": True})
        result.best = env.history.best
        result.best_found_at = env.history.best_found_at

    pruned = env.build(result.policy, finetune=False)
    acc: dict[str, float] = {}
    has_test = len(splits.test) > 0
    if has_test:
        acc["original"] = train_mod.evaluate(original, splits.test.x, splits.test.y)
        acc["pruned_before_finetune"] = train_mod.evaluate(pruned, splits.test.x, splits.test.y)
    acc["reward_original"] = env.original_accuracy
    acc["reward_pruned_before_finetune"] = train_mod.evaluate(pruned, splits.reward.x,
                                                              splits.reward.y)
    t1 = time.perf_counter()
    if finetune_epochs > 0:
        train_mod.fit(pruned, splits, epochs=finetune_epochs, lr=finetune_lr, seed=seed,
                      teacher=original if distill else None,
                      distill_alpha=0.5 if distill else 0,
                      progress=progress, desc="fine-tune",
                      keep_zeros=granularity == "weight")
    t_ft = time.perf_counter() - t1
    if has_test:
        acc["pruned"] = train_mod.evaluate(pruned, splits.test.x, splits.test.y)
    acc["reward_pruned"] = train_mod.evaluate(pruned, splits.reward.x, splits.reward.y)
    pruned.eval()

    measured = budget.evaluate(pruned, original, ex)
    cost_table = {
        name: {"original": float(v["original"]), "pruned": float(v["value"]),
               "ratio": float(v["ratio"]), "limit": float(v["limit"]), "ok": bool(v["ok"])}
        for name, v in measured.items()
    }
    # Report params and MACs too when they are not constraints: users always want them.
    for extra in ("params", "macs"):
        if extra not in cost_table:
            fn = costs_mod.get_cost(extra)
            o, p = float(fn(original, ex)), float(fn(pruned, ex))
            cost_table[extra] = {"original": o, "pruned": p, "ratio": p / o if o else 1.0,
                                 "limit": float("nan"), "ok": True, "reported_only": True}
    if not all(c["ok"] for c in cost_table.values()):
        bad = ", ".join(f"{n}={c['pruned']:.6g} > {c['limit']:.6g}"
                        for n, c in cost_table.items() if not c["ok"])
        raise RuntimeError(f"internal error: the pruned model violates the budget ({bad}); "
                           "please report this with the command that produced it")
    return PruneResult(
        model=pruned, policy=np.asarray(result.policy, dtype=np.float64), costs=cost_table,
        accuracy=acc, history=result.history, search=result, method=method,
        granularity=granularity, budget=str(budget),
        layers=env.space.describe(original, result.policy), seed=seed,
        timings={"setup_s": t_env, "search_s": result.wall_time, "finetune_s": t_ft,
                 "total_s": time.perf_counter() - t0},
        original=original,
        example_input=ex,
    )


def load(path: str | os.PathLike[str]) -> nn.Module:
    """Load a model saved by rlprune (``pruned.pt`` of a run or a checkpoint), ready to use."""
    model, _ = train_mod.load_checkpoint(path)
    return model


#: Methods that search (their effort is the number of candidate evaluations);
#: the others compute one policy directly.
SEARCHING_METHODS = ("cpl", "purl", "amc", "random")


def compare(
    model: nn.Module,
    data: Splits | tuple[Any, ...] | str,
    budget: Budget | str,
    methods: list[str] | tuple[str, ...] = ("cpl", "purl", "amc", "uniform", "random", "global"),
    granularity: str = "channel",
    episodes: int = 100,
    finetune_epochs: int = 0,
    finetune_lr: float = 0.01,
    importance: str = "l1",
    example_input: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    on_result: Any = None,
) -> list[PruneResult]:
    """Run several methods on the same model, data split, budget and fine-tune schedule.

    Equal search effort: every searching method gets ``episodes`` candidate
    evaluations. The pruning space (and its importance scores) is built once and
    shared. ``on_result(result)`` is called as each method finishes. Returns one
    :class:`PruneResult` per method, in order.
    """
    check_methods(methods)
    _check_model(model)
    splits = as_splits(data, seed=seed)
    budget = budget_for(budget, granularity)
    ex = example_input if example_input is not None else splits.example_input(1)
    original = copy.deepcopy(model).eval()
    space = PruningSpace.from_model(original, ex, granularity=granularity, importance=importance,
                                    data=(splits.train.x[:256], splits.train.y[:256]))
    results = []
    for m in methods:
        res = prune(original, splits, budget, method=m, granularity=granularity,
                    example_input=ex, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                    search_episodes=episodes if m in SEARCHING_METHODS else None,
                    importance=importance, seed=seed, progress=progress,
                    env_kwargs=env_kwargs, method_kwargs=(method_kwargs or {}).get(m),
                    space=space)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results

