"""Ablation of a method's options: several variants, several seeds, one line each.

    python -m benchmarks.ablation BENCH EPISODES SEEDS VARIANTS [--data-dir DIR]
    python -m benchmarks.ablation l5w 100 0,1,2 cpl,cpl-paper,cpl:nowarm,amc,lamp

BENCH is one of ``digits`` (digits_cnn, params<=0.3, channel), ``l5w`` (LeNet-5 MNIST,
params<=0.08, weight), ``l5c`` (LeNet-5 MNIST, flops<=0.3, channel), ``l5p`` (LeNet-5
MNIST, params<=0.1, channel), ``l300``
(LeNet-300-100 MNIST, params<=0.08, weight), ``r20c`` (ResNet-20 CIFAR-10 JPEG-q75
copy, flops<=0.5, channel), ``r20w`` (the same ResNet-20, params<=0.1, weight), ``r20m``
(the same ResNet-20, params<=0.5,latency_ms<=50%, channel: cifar10-multi's budget; run it
alone, it measures latency), on the committed checkpoints. Searches score candidates on
the first 1000 reward-split samples (digits: the whole split); each line reports the
returned model's accuracy on the *whole* reward split before fine-tuning. A variant is
``METHOD[:OPT+OPT...]`` with options ``none``/``project``/``boundary`` (the env's
``repair``), ``norace`` (every candidate scored on every reward sample), ``nowarm``
(cpl's ``warm_start=False``), ``init=R`` (cpl's ``init_action``), ``a_max=R`` (the env's
largest prune ratio per layer, as AMC bounds its actions) or ``NAME=VALUE`` (any
option of the method).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rlprune import api, data, pipeline, train

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {
    "digits": ("digits", None, "params<=0.3", "channel"),
    "l5w": ("mnist", "benchmarks/checkpoints/lenet5_mnist.pt", "params<=0.08", "weight"),
    "l5c": ("mnist", "benchmarks/checkpoints/lenet5_mnist.pt", "flops<=0.3", "channel"),
    "l5p": ("mnist", "benchmarks/checkpoints/lenet5_mnist.pt", "params<=0.1", "channel"),
    "l300": ("mnist", "benchmarks/checkpoints/lenet300_mnist.pt", "params<=0.08", "weight"),
    "r20c": ("cifar10", "benchmarks/checkpoints/resnet20_cifar10.pt", "flops<=0.5", "channel"),
    "r20w": ("cifar10", "benchmarks/checkpoints/resnet20_cifar10.pt", "params<=0.1", "weight"),
    "r20m": ("cifar10", "benchmarks/checkpoints/resnet20_cifar10.pt",
             "params<=0.5,latency_ms<=50%", "channel"),
}


def _variant(spec: str) -> tuple[str, dict, dict]:
    method, _, opts = spec.partition(":")
    env_kw: dict = {}
    method_kw: dict = {}
    for o in filter(None, opts.split("+")):
        if o in ("none", "project", "boundary"):
            env_kw["repair"] = o
        elif o == "norace":
            env_kw["race_z"] = None
        elif o == "nowarm":
            method_kw["warm_start"] = False
        elif o.startswith("a_max="):
            env_kw["a_max"] = float(o[6:])
        elif o.startswith("init="):
            method_kw["init_action"] = float(o[5:])
        elif "=" in o:
            k, v = o.split("=", 1)
            method_kw[k] = float(v) if "." in v else int(v)
        else:
            raise SystemExit(f"unknown option {o!r} in variant {spec!r}")
    return method, env_kw, method_kw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", choices=sorted(BENCHES))
    ap.add_argument("episodes", type=int)
    ap.add_argument("seeds", help="comma-separated seeds")
    ap.add_argument("variants", help="comma-separated variants")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default $RLPRUNE_DATA)")
    args = ap.parse_args(argv)
    name, ckpt, budget, gran = BENCHES[args.bench]
    splits = data.load(name, root=args.data_dir, reward_fraction=0.1, seed=0)
    if ckpt is None:
        model, _ = pipeline.pretrained("digits_cnn", splits, 15, 0, progress=False)
        env_base: dict = {}
    else:
        model, _ = train.load_checkpoint(ROOT / ckpt)
        env_base = {"reward_samples": 1000}
    for spec in args.variants.split(","):
        method, env_kw, method_kw = _variant(spec)
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            r = api.prune(model, splits, budget, method=method, granularity=gran,
                          episodes=args.episodes, seed=seed, progress=False,
                          env_kwargs={**env_base, **env_kw}, method_kwargs=method_kw)
            print(json.dumps({
                "bench": args.bench, "variant": spec, "seed": seed,
                "reward_acc": round(r.accuracy["reward_pruned_before_finetune"], 4),
                "evaluations": r.search.evaluations,
                "reward_passes": r.search.extra.get("spent", {}).get("reward_samples"),
                "feasible_share": round(sum(c.feasible for c in r.history) / len(r.history), 3),
                "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
