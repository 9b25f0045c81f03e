"""The ``rlprune`` command: pretrain, eval, models, prune, compare, demo.

Everything about how a run is typed lives here: the sub-commands, their flags (one
per :class:`rlprune.pipeline.RunConfig` key for ``prune`` and ``compare``), the
merging of ``--config`` files with flags, and ``--resume``. What a run does is
:mod:`rlprune.pipeline`'s; this module imports it, never the reverse.

Wrong arguments and bad input (:class:`UserError`, ``ValueError`` and its
subclasses such as ``CheckpointError``, ``OSError`` such as ``FileNotFoundError``) end
with one clear line on stderr and exit code 2; any other exception is a bug and keeps its
traceback (set ``RLPRUNE_DEBUG=1`` to see tracebacks for user errors too).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlprune import pipeline
from rlprune.pipeline import RunConfig

if TYPE_CHECKING:
    from rlprune.data import Splits

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


#: Errors of the user's input: one line on stderr, exit code 2 (CheckpointError,
#: DataError, BudgetInfeasibleError... subclass ValueError; OSError is a path that cannot
#: be read or written: missing, not writable, a file where a folder is needed, disk full).
_USER_ERRORS = (UserError, ValueError, OSError)


#: What ``--data`` takes (for argparse's help: ``%`` doubled).
_DATA_HELP = ("dataset: digits, mnist, cifar10, cifar100; folder:PATH (one subfolder of images "
              "per class; a test/ or val/ subfolder, or test_fraction, gives the test split); "
              "npz:PATH (x_train, y_train, x_test, y_test). Options follow a ?, e.g. "
              "folder:PATH?size=32&test_fraction=0.2: size, crop, channels, mean, std, "
              "test_fraction, stream, workers for folder:, classes, mean, std, stream for npz:")


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required,
                   help=_DATA_HELP.replace("%", "%%").replace("cifar100;", "cifar100, synthetic;"))
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
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {pipeline.PRETRAIN_LR})")
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

    p = sub.add_parser("prune", help="prune a model to fit a budget and write a run directory")
    _add_config_flags(p, compare=False)
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from its directory, with its stored "
                        "config.yaml (other flags must agree with it; --quiet, --workers, --ray "
                        "and --threads may change)")

    p = sub.add_parser("compare", help="run several methods side by side on one budget")
    _add_config_flags(p, compare=True)
    return parser


def _load_data(args: argparse.Namespace) -> Splits:
    from rlprune import data

    return data.load(args.data, root=args.data_dir, reward_fraction=args.reward_fraction,
                     seed=getattr(args, "seed", 0), progress=not getattr(args, "quiet", False))


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rlprune import train

    splits = _load_data(args)
    model, meta = pipeline.pretrain(args.model, splits, args.epochs, lr=args.lr,
                                    batch_size=args.batch_size,
                                    weight_decay=args.weight_decay, seed=args.seed,
                                    progress=not args.quiet)
    train.save_checkpoint(args.out, model, meta)
    print(f"{args.model} on {splits.name}: test accuracy {meta['test_accuracy']:.4f}, "
          f"params {sum(p.numel() for p in model.parameters()):,}, "
          f"{args.epochs} epochs in {meta['train_seconds']:.1f} s -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlprune import costs, data, train

    model, meta = train.load_checkpoint(args.checkpoint)
    name = args.data or meta.get("dataset")
    if not name:
        raise UserError("the checkpoint does not name its dataset: pass --data")
    if not args.data and str(name).lower().replace("-", "") not in data.list_datasets():
        raise UserError(f"the checkpoint was trained on {name!r}, which is not a dataset "
                        "rlprune loads by name: pass --data (folder:PATH or npz:PATH, with "
                        "the options it was trained with)")
    args.data = name
    splits = _load_data(args)
    acc = train.evaluate(model, splits.test)
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
    return pipeline.demo(out=args.out, quiet=args.quiet)


# ----------------------------------------------------------------- prune and compare
_FLAG_HELP = {
    "model": "registry model to pretrain (cached) when no --checkpoint is given; with "
             "--checkpoint, the architecture of a plain state dict (read safely, "
             "weights_only=True)",
    "checkpoint": "checkpoint to prune (written by `rlprune pretrain` or save_checkpoint)",
    "model_def": "your architecture: package.module:factory or path/to/file.py:Name, called "
                 "without arguments (use with --weights)",
    "weights": "trained state dict of --model-def (or of a registry --model), read safely "
               "(weights_only=True)",
    "data": _DATA_HELP.replace("%", "%%"),
    "data_dir": "folder with the dataset files (default: $RLPRUNE_DATA)",
    "budget": 'constraints, e.g. "params<=0.1" or "flops<=50%%,latency_ms<=2"',  # %% for argparse
    "method": "search method: cpl, cpl-paper, purl, amc, uniform, random, global, lamp",
    "methods": "comma-separated methods to compare",
    "granularity": "channel (physically smaller) or weight (unstructured zeros)",
    "importance": "channel/weight importance: l1, l2, random, taylor, bn_scale",
    "episodes": "candidate evaluations per searching method",
    "finetune_epochs": "epochs of fine-tuning after pruning",
    "finetune_lr": "learning rate of the fine-tune",
    "distill": "distil from the unpruned model while fine-tuning",
    "search_finetune_steps": "SGD steps of fine-tuning of each candidate during the search",
    "reward": "reward scheme: terminal_accuracy, neg_error_log_flops, dense",
    "reward_samples": "score candidates on the first N reward-split samples only",
    "dense_samples": "samples scoring the per-layer rewards of dense schemes (purl; "
                     "default 1000)",
    "race": "stop scoring a candidate on the reward split once it cannot beat the best "
            "(--no-race: score every candidate on every sample)",
    "latency_table": "during the search, predict latency constraints (latency_ms, "
                     "ort_latency_ms, latency_b8_t2_ms...) from per-layer timings taken once "
                     "(channel pruning); the result is still measured for real",
    "noise_margin": "noisy costs (latency): relative margin their measured upper bound "
                    "must keep below the limit (default 0.03 = 3%%)",
    "noise_repeats": "noisy costs: measurements of a model per acceptance check "
                     "(default 5)",
    "noise_paired": "relative limits on noisy costs (latency_ms<=50%%): time the original "
                    "beside the candidate in every check and check their ratio (default; "
                    "--no-noise-paired: milliseconds against the limit resolved at the start)",
    "reward_fraction": "fraction of the training set held out as the reward split",
    "pretrain_epochs": "epochs when pretraining a registry --model",
    "seed": "random seed (the run is reproducible from it)",
    "workers": "score candidates in N local worker processes (cpl, random); with --ray, "
               "N Ray actors (0: one per GPU, else per CPU, of the cluster)",
    "parallel": "candidates a method proposes and scores together (default: --workers); "
                "a seed and this fix the result, whatever runs it",
    "ray": "score candidates on a Ray cluster: auto (the cluster this machine joined), "
           "local (start one here) or its address; needs pip install 'rlprune[ray]'",
    "threads": "torch threads per worker (default: this machine's cores shared out; 1 on "
               "Ray)",
    "out": "run directory to write",
    "quiet": "no progress bars",
    "onnx": "export pruned.onnx (checked with onnxruntime)",
    "plots": "write the PNG plots",
    "tensorboard": "log TensorBoard scalars (needs the tensorboard extra)",
}

#: RunConfig's fields by name (their types are strings: annotations are postponed).
_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _add_config_flags(p: argparse.ArgumentParser, compare: bool) -> None:
    """``--config`` and one flag per RunConfig key (``--method`` or ``--methods``)."""
    p.add_argument("--config", help="YAML file with any of the settings below")
    for name, f in _FIELDS.items():
        if name == ("method" if compare else "methods"):
            continue
        flag = "--" + name.replace("_", "-")
        helptext = _FLAG_HELP.get(name, "")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=helptext)
        elif name == "methods":
            p.add_argument(flag, default=None, help=helptext,
                           type=lambda s: [m.strip() for m in s.split(",") if m.strip()])
        else:
            typ = {"int": int, "float": float}.get(str(f.type).replace(" | None", ""), str)
            p.add_argument(flag, type=typ, default=None, help=helptext)


def _show(value: Any) -> str:
    """A setting's value as a user types it (flag or YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _given_settings(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """The settings this command line gives: ``name -> (value, how it was given)``.

    A ``--config`` file's keys first, then the flags, which override them.
    """
    given: dict[str, tuple[Any, str]] = {}
    if getattr(args, "config", None):
        for name, value in pipeline.load_config(args.config).items():
            given[name] = (value, f"{name}: {_show(value)} in --config {args.config}")
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            text = flag if value else "--no-" + flag[2:]
        else:
            text = f"{flag} {_show(value)}"
        given[name] = (value, text)
    return given


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{name: value for name, (value, _) in _given_settings(args).items()})


def _resume_config(args: argparse.Namespace) -> RunConfig:
    """The stored config of the run ``--resume`` names; a conflicting setting is an error.

    A resumed run must be the run that was started (its log is replayed candidate by
    candidate), so every setting given beside ``--resume`` must equal the stored one;
    only ``--quiet`` and where candidates are scored (``--workers``, ``--ray``,
    ``--threads``) may change.
    """
    run_dir = Path(args.resume)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"cannot resume: {cfg_path} not found (is {run_dir} a "
                                "run directory written by `rlprune prune --out`?)")
    cfg = RunConfig(**pipeline.load_config(cfg_path))
    given = _given_settings(args)
    for name, (value, text) in given.items():
        if name in pipeline.RESUME_MAY_CHANGE:
            setattr(cfg, name, value)
            continue
        if name == "out":
            if Path(value).resolve() == run_dir.resolve():
                continue
            stored = f"the run directory is {run_dir}"
        elif value == getattr(cfg, name):
            continue
        else:
            stored = f"{cfg_path} has {name}: {_show(getattr(cfg, name))}"
        raise UserError(f"{text} conflicts with the run being resumed ({stored}); a resumed "
                        "run keeps its stored settings (only --quiet, --workers, --ray and "
                        "--threads may change): drop it, "
                        "or start a new run with another --out")
    cfg.out = str(run_dir)
    return cfg


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, quoted so that it can be pasted back into a shell."""
    return "rlprune " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])


def cmd_prune(args: argparse.Namespace) -> int:
    command = _command_line(args)
    if args.resume:
        cfg = _resume_config(args)
        res = pipeline.run_prune(cfg, resume=True, command=command)
    else:
        cfg = _config_from_args(args)
        res = pipeline.run_prune(cfg, command=command)
    print(res.summary())
    if cfg.out:
        print(f"run directory: {cfg.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    pipeline.run_compare(_config_from_args(args), command=_command_line(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlprune`` console script; returns the exit status.

    ``argv`` are the command's arguments without the program name (default:
    ``sys.argv[1:]``). Errors in what the user gave end with one line on stderr and
    status 2 (``RLPRUNE_DEBUG=1`` re-raises them), an interrupt with status 130.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # the words of this command (not sys.argv, which is another program's when main(argv)
    # is called in-process), recorded in run directories and reports
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handler = globals()[f"cmd_{args.command}"]
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("rlprune: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as e:
        if os.environ.get("RLPRUNE_DEBUG"):
            raise
        # one line, whatever the message holds (a user's exception, a library's report)
        print("rlprune: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
