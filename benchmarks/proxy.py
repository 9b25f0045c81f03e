"""Which in-search score predicts accuracy after the final fine-tune? A rank-correlation study.

    python -m benchmarks.proxy BENCH CANDIDATES [--seed S] [--data-dir DIR] [--out FILE]
    python -m benchmarks.proxy l5c 30

BENCH is one of ``benchmarks.ablation``'s benches (same checkpoints and budgets). The
candidates are the one-shot heuristics' allocations (uniform, global, LAMP) and random
per-layer allocations, every one scaled onto the budget's boundary (all feasible, all
spending the budget, as a search's candidates are). Each candidate is scored by every
proxy on the first 1000 reward-split samples (digits: the whole split):

* ``no-bn``: the pruned copy as it comes out of pruning;
* ``adaptive-bn``: BatchNorm statistics re-estimated on 256 training inputs (EagleEye;
  rlprune's default);
* ``adaptive-bn+ft32`` / ``adaptive-bn+ft128``: then 32 / 128 SGD steps (the
  constrained-RL paper's code fine-tunes 0, 32 or 128 iterations in the loop).

The target is the candidate's *test* accuracy after the benchmark's final fine-tune
(its config's epochs and learning rate). Printed: one JSON line per candidate, then per
proxy Spearman's rho against the target and the proxy's seconds per candidate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.ablation import BENCHES, ROOT
from rlprune import api, data, pipeline, train
from rlprune.agents.baselines import heuristic_policies
from rlprune.evaluate import Evaluator

PROXIES = {
    "no-bn": {"bn_samples": 0},
    "adaptive-bn": {},
    "adaptive-bn+ft32": {"finetune_steps": 32},
    "adaptive-bn+ft128": {"finetune_steps": 128},
}
CONFIGS = {"l5w": "mnist-lenet5-weight", "l5c": "mnist-lenet5-channel",
           "l300": "mnist-lenet300-weight", "r20c": "cifar10-resnet20-channel"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v), dtype=np.float64)
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def candidates(bench: str, n: int, seed: int, data_dir: str | None):
    """The model, its splits, a base evaluator and ``n`` boundary policies named."""
    name, ckpt, budget, gran = BENCHES[bench]
    splits = data.load(name, root=data_dir, reward_fraction=0.1, seed=0)
    if ckpt is None:
        model, _ = pipeline.pretrained("digits_cnn", splits, 15, 0, progress=False)
        n_reward = None
    else:
        model, _ = train.load_checkpoint(ROOT / ckpt)
        n_reward = 1000
    bound = api.budget_for(budget, gran).bind(model, splits.example_input(1))
    env = api.make_env(model, splits, bound, "random", granularity=gran, seed=seed,
                       reward_samples=n_reward, race_z=None)
    ev = env.evaluator
    named = [(k, p) for k, p in heuristic_policies(env).items()]
    rng = np.random.default_rng(seed)
    while len(named) < n:
        raw = rng.uniform(0.0, 1.0, len(ev.space)) * env.max_ratios
        named.append((f"random-{len(named)}", ev.to_boundary(raw)))
    return model, splits, ev, named[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=sorted(BENCHES))
    ap.add_argument("candidates", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None, help="dataset folder (default $RLPRUNE_DATA)")
    ap.add_argument("--out", default=None, help="also write the summary as JSON here")
    args = ap.parse_args(argv)
    if args.candidates < 3:
        raise SystemExit("need at least 3 candidates for a rank correlation")
    model, splits, base, named = candidates(args.bench, args.candidates, args.seed,
                                            args.data_dir)
    cfg_name = CONFIGS.get(args.bench)
    cfg = yaml.safe_load((ROOT / "configs" / f"{cfg_name}.yaml").read_text()) if cfg_name \
        else {"finetune_epochs": 3, "finetune_lr": 0.02}
    epochs, lr = int(cfg.get("finetune_epochs", 1)), float(cfg.get("finetune_lr", 0.01))
    evs = {k: Evaluator(model, base.space, base.bound, splits,
                        dataclasses.replace(base.options, **opts))
           for k, opts in PROXIES.items()}
    scores: dict[str, list[float]] = {k: [] for k in PROXIES}
    seconds: dict[str, float] = {k: 0.0 for k in PROXIES}
    target: list[float] = []
    keep_zeros = base.space.granularity == "weight"
    for i, (label, pol) in enumerate(named):
        row: dict = {"candidate": label}
        for k, ev in evs.items():
            t0 = time.perf_counter()
            row[k] = ev.score(pol).accuracy
            seconds[k] += time.perf_counter() - t0
            scores[k].append(row[k])
        pruned = base.build(pol, finetune=False)
        train.fit(pruned, splits, epochs=epochs, lr=lr, seed=args.seed, progress=False,
                  keep_zeros=keep_zeros)
        row["test_after_ft"] = train.evaluate(pruned, splits.test.x, splits.test.y)
        target.append(row["test_after_ft"])
        print(json.dumps({"i": i, **{k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in row.items()}}), flush=True)
    n = len(named)
    summary = {"bench": args.bench, "candidates": n, "finetune_epochs": epochs,
               "target_range": [round(min(target), 4), round(max(target), 4)],
               "proxies": {k: {"spearman": round(spearman(np.array(scores[k]),
                                                          np.array(target)), 3),
                               "seconds_per_candidate": round(seconds[k] / n, 3)}
                           for k in PROXIES}}
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
