"""The ``rlprune`` command: pretrain, eval, prune, compare, demo.

Wrong arguments and bad input end with one clear line on stderr and exit code 2;
tracebacks are kept for real bugs (set ``RLPRUNE_DEBUG=1`` to see them for
user errors too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required,
                   help="dataset: digits, mnist, cifar10, cifar100, synthetic")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: $RLPRUNE_DATA)")
    p.add_argument("--reward-fraction", type=float, default=0.1,
                   help="fraction of the training set held out as the reward split")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    from rlprune import __version__

    parser = argparse.ArgumentParser(
        prog="rlprune",
        description="Prune trained PyTorch networks with reinforcement learning to fit a budget.",
    )
    parser.add_argument("--version", action="version", version=f"rlprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="train a registry model on a dataset and save a checkpoint")
    p.add_argument("--model", required=True, help="registry model name (see `rlprune models`)")
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per dataset)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("eval", help="print test accuracy, parameters and MACs of a checkpoint")
    p.add_argument("checkpoint")
    _add_data_args(p, required=False)

    sub.add_parser("models", help="list the registered models")

    p = sub.add_parser("demo", help="the zero-download demo on sklearn's digits")
    p.add_argument("--out", default="runs/demo", help="run directory to write")
    p.add_argument("--quiet", action="store_true")

    try:
        from rlprune import pipeline
    except ImportError:  # pragma: no cover - pipeline not yet available
        pipeline = None  # type: ignore[assignment]
    if pipeline is not None:
        pipeline.add_cli_commands(sub)
    return parser


def _load_data(args: argparse.Namespace):
    from rlprune import data

    return data.load(args.data, root=args.data_dir, reward_fraction=args.reward_fraction,
                     seed=getattr(args, "seed", 0))


def _default_lr(dataset: str) -> float:
    return 0.05 if dataset.lower() in ("digits", "synthetic") else 0.05


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from rlprune import models, train

    splits = _load_data(args)
    in_ch = splits.input_shape[0] if len(splits.input_shape) == 3 else 1
    kwargs = {}
    if args.model.lower() == "lenet300" and len(splits.input_shape) == 3:
        kwargs["input_size"] = splits.input_shape[-1]
    torch.manual_seed(args.seed)
    model = models.create(args.model, num_classes=splits.num_classes, in_channels=in_ch, **kwargs)
    t0 = time.perf_counter()
    curves = train.fit(model, splits, epochs=args.epochs, lr=args.lr or _default_lr(args.data),
                       batch_size=args.batch_size, weight_decay=args.weight_decay, seed=args.seed,
                       progress=not args.quiet, desc=f"pretrain {args.model}")
    wall = time.perf_counter() - t0
    acc = train.evaluate(model, splits.test.x, splits.test.y)
    meta = {"dataset": splits.name, "mean": list(splits.mean), "std": list(splits.std),
            "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "test_accuracy": acc, "epochs": args.epochs, "seed": args.seed,
            "train_seconds": round(wall, 1), "curves": curves}
    train.save_checkpoint(args.out, model, meta)
    print(f"{args.model} on {splits.name}: test accuracy {acc:.4f}, "
          f"params {sum(p.numel() for p in model.parameters()):,}, "
          f"{args.epochs} epochs in {wall:.1f} s -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlprune import costs, train

    model, meta = train.load_checkpoint(args.checkpoint)
    name = args.data or meta.get("dataset")
    if not name:
        raise UserError("the checkpoint does not name its dataset: pass --data")
    args.data = name
    splits = _load_data(args)
    acc = train.evaluate(model, splits.test.x, splits.test.y)
    ex = splits.example_input(1)
    print(f"{args.checkpoint}: test accuracy {acc:.4f} on {splits.name} "
          f"({len(splits.test)} images), params {costs.count_params(model):,}, "
          f"nonzero {costs.count_nonzero(model):,}, MACs {costs.count_macs(model, ex):,.0f}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from rlprune import models

    print("\n".join(models.list_models()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rlprune import pipeline

    return pipeline.demo(out=args.out, quiet=args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlprune`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # the words of this command (not sys.argv, which is another program's when main(argv)
    # is called in-process), recorded in run directories and reports
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = getattr(args, "handler", None) or globals()[f"cmd_{args.command}"]
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("rlprune: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, TypeError) as e:
        if os.environ.get("RLPRUNE_DEBUG"):
            raise
        print(f"rlprune: error: {e}", file=sys.stderr)
        return 2


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
