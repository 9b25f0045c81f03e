"""Runs as a user starts them: config files, run directories, resume, the demo.

``rlprune prune`` and ``rlprune compare`` are thin shells over :func:`run_prune`
and :func:`run_compare`, which take a :class:`RunConfig`. Every CLI flag has a
config key of the same name (dashes become underscores); flags given on the
command line override the file; unknown keys are an error naming them.

A run directory holds ``config.yaml`` (what was asked), ``log.jsonl`` (one line
per evaluated candidate, appended and flushed as the search goes) and, at the end,
the report and exports written by :mod:`rlprune.report`. ``--resume DIR`` reads
the config and the log back: the search starts again from its seed, and every
candidate already in the log is replayed from it instead of being evaluated
again, so an interrupted run (even by ``kill -9``) loses nothing and repeats
no evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunConfig", "load_config", "run_prune", "run_compare", "demo", "add_cli_commands",
           "cache_dir", "pretrained"]


@dataclass
class RunConfig:
    """Every setting of a prune or compare run (each is also a CLI flag)."""

    model: str | None = None  # registry name (pretrained and cached if no checkpoint)
    checkpoint: str | None = None  # a checkpoint written by `rlprune pretrain` / save_checkpoint
    data: str | None = None
    data_dir: str | None = None
    budget: str | None = None
    method: str = "cpl"
    methods: list[str] = field(default_factory=lambda: ["cpl", "purl", "amc", "uniform",
                                                        "random", "global"])
    granularity: str = "channel"
    importance: str = "l1"
    episodes: int = 300
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    distill: bool = False
    search_finetune_steps: int = 0
    reward: str | None = None
    reward_samples: int | None = None
    dense_samples: int | None = None
    reward_fraction: float = 0.1
    pretrain_epochs: int = 10
    seed: int = 0
    out: str | None = None
    quiet: bool = False
    onnx: bool = True
    plots: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        """Clear errors for missing or malformed settings."""
        if not self.data:
            raise ValueError("no dataset: give --data (digits, mnist, cifar10, cifar100) or "
                             "`data:` in the config")
        if not self.budget:
            raise ValueError('no budget: give --budget, e.g. "params<=0.3,flops<=50%"')
        if not self.model and not self.checkpoint:
            raise ValueError("give a --checkpoint to prune, or a registry --model to pretrain")
        if self.granularity not in ("channel", "weight"):
            raise ValueError(f"granularity must be channel or weight, got {self.granularity!r}")
        for name in ("episodes", "finetune_epochs", "pretrain_epochs", "search_finetune_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("reward_samples", "dense_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config; unknown keys raise ``ValueError`` naming them."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {p} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {p} must hold a mapping of keys to values")
    norm = {str(k).replace("-", "_"): v for k, v in raw.items()}
    norm.pop("_command", None)  # written by a run into its config.yaml: that file is reusable
    unknown = sorted(set(norm) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown key(s) in {p}: {', '.join(unknown)}; known keys: "
                         f"{', '.join(sorted(_FIELDS))}")
    if isinstance(norm.get("methods"), str):
        norm["methods"] = [m.strip() for m in norm["methods"].split(",") if m.strip()]
    for key, value in norm.items():
        norm[key] = _check_type(p, key, value)
    return norm


def _check_type(path: Path, key: str, value: Any) -> Any:
    """``value`` as the type of config key ``key``; a clear error naming the key if not."""
    typ = str(_FIELDS[key].type)
    if value is None:
        if "None" in typ:
            return None
        raise ValueError(f"config key {key!r} in {path} needs a value")
    if typ == "bool":
        ok = isinstance(value, bool)
        want = "true or false"
    elif typ == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif typ == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        want = "a number"
    elif typ.startswith("list"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of names"
    elif typ.startswith("int"):  # int | None
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    else:  # str, str | None
        ok = isinstance(value, str)
        want = "a string"
    if not ok:
        raise ValueError(f"config key {key!r} in {path} must be {want}, got {value!r}")
    return value


def cache_dir() -> Path:
    """Where pretrained checkpoints are cached (``$RLPRUNE_CACHE`` or the user cache)."""
    env = os.environ.get("RLPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlprune"


def pretrained(model_name: str, splits: Any, epochs: int, seed: int = 0,
               progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """A registry model trained on ``splits``, cached so every method and run reuses it."""
    import torch

    from rlprune import models, train

    path = cache_dir() / f"{model_name}_{splits.name}_e{epochs}_s{seed}.pt"

    def build() -> tuple[Any, dict[str, Any]]:
        in_ch = splits.input_shape[0] if len(splits.input_shape) == 3 else 1
        torch.manual_seed(seed)
        m = models.create(model_name, num_classes=splits.num_classes, in_channels=in_ch)
        train.fit(m, splits, epochs=epochs, seed=seed, progress=progress,
                  desc=f"pretrain {model_name}")
        acc = train.evaluate(m, splits.test.x, splits.test.y)
        return m, {"dataset": splits.name, "test_accuracy": acc, "epochs": epochs}

    return train.cached(path, build)


def _check_names(cfg: RunConfig, methods: list[str]) -> None:
    """Method and reward names, checked before data loading and pretraining (minutes)."""
    from rlprune.agents.base import check_methods
    from rlprune.env import REWARD_SCHEMES

    check_methods(methods)
    if cfg.reward and cfg.reward not in REWARD_SCHEMES:
        raise ValueError(f"unknown reward scheme {cfg.reward!r}; known: "
                         f"{', '.join(REWARD_SCHEMES)}")


def _load_inputs(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any]]:
    from rlprune import data, train

    splits = data.load(cfg.data or "", root=cfg.data_dir, reward_fraction=cfg.reward_fraction,
                       seed=cfg.seed)
    if cfg.checkpoint:
        model, meta = train.load_checkpoint(cfg.checkpoint)
    else:
        model, meta = pretrained(cfg.model or "", splits, cfg.pretrain_epochs, cfg.seed,
                                 progress=not cfg.quiet)
    ds = meta.get("dataset")
    if ds and ds != splits.name:
        raise ValueError(f"the checkpoint was trained on {ds!r} but --data is {splits.name!r}")
    return model, splits, meta


class _Recorder:
    """Per-episode callback: appends new candidates to log.jsonl, feeds TensorBoard."""

    def __init__(self, log_path: Path | None, env: Any, tb_dir: Path | None = None):
        self.log_path = log_path
        self.env = env
        self.written = len(env.history)
        self.tb = None
        if tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tb_dir))
            except Exception:  # tensorboard is an optional extra
                self.tb = None

    def __call__(self, agent: Any, info: dict[str, Any]) -> None:
        cands = self.env.history.candidates
        new = cands[self.written:]
        if self.log_path is not None:
            from rlprune.report import append_log

            for c in new:
                append_log(self.log_path, c)
        if self.tb is not None:
            for c in new:
                self.tb.add_scalar("search/reward", c.reward, c.index)
                self.tb.add_scalar("search/accuracy", c.accuracy, c.index)
                for n, r in zip(self.env.constraint_names, c.cost_ratios):
                    self.tb.add_scalar(f"cost/{n}", r, c.index)
                for i, nu in enumerate(c.extra.get("multipliers", []) or []):
                    self.tb.add_scalar(f"lagrange/nu{i}", nu, c.index)
        self.written = len(cands)


def _read_log(path: Path) -> list[Any]:
    """Candidates of a log.jsonl (none if absent); a torn last line is dropped."""
    from rlprune.report import read_log

    return read_log(path).candidates if path.is_file() else []


def _save_config(run_dir: Path, cfg: RunConfig, command: str) -> None:
    from rlprune.train import atomic_write_bytes

    body = dataclasses.asdict(cfg)
    body["_command"] = command
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(body, sort_keys=False).encode())


def run_prune(cfg: RunConfig, resume: bool = False, command: str = "") -> Any:
    """Prune as configured, write the run directory, return the ``PruneResult``."""
    from rlprune import api, report
    from rlprune.costs import Budget
    from rlprune.history import History

    cfg.validate()
    budget = Budget.parse(cfg.budget or "")
    _check_names(cfg, [cfg.method])
    model, splits, _ = _load_inputs(cfg)
    run_dir = Path(cfg.out) if cfg.out else None
    log_path = None if run_dir is None else run_dir / "log.jsonl"
    replay: list[Any] = _read_log(log_path) if (resume and log_path is not None) else []

    env_kwargs = _env_kwargs(cfg)
    history = History(replay)
    env_kwargs["history"] = history
    holder: dict[str, Any] = {}

    def callback(agent: Any, info: dict[str, Any]) -> None:
        rec = holder.get("rec")
        if rec is None:
            return
        rec(agent, info)

    # The recorder needs the env, which prune() builds; a space built here is shared.
    from rlprune.space import PruningSpace

    ex = splits.example_input(1)
    space = PruningSpace.from_model(model, ex, granularity=cfg.granularity,
                                    importance=cfg.importance,
                                    data=(splits.train.x[:256], splits.train.y[:256]))
    env_probe = api.make_env(model, splits, budget, cfg.method, cfg.granularity,
                             cfg.importance, ex, space, cfg.seed, **env_kwargs)
    if replay:
        env_probe.enable_replay()
    # an unreachable budget is an error now, not after the whole search (and before the
    # run directory is written): the most aggressive pruning allowed must fit
    env_probe.project(env_probe.space.max_policy())
    if run_dir is not None and log_path is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            # rewrite the log without a torn tail line
            from rlprune.report import write_log

            write_log(log_path, replay)
        else:
            if log_path.exists():
                log_path.unlink()
            _save_config(run_dir, cfg, command)
    holder["rec"] = _Recorder(log_path, env_probe,
                              run_dir / "tb" if (cfg.tensorboard and run_dir) else None)
    result = api.prune(model, splits, budget, method=cfg.method, granularity=cfg.granularity,
                       example_input=ex, finetune_epochs=cfg.finetune_epochs,
                       finetune_lr=cfg.finetune_lr, distill=cfg.distill,
                       search_episodes=cfg.episodes, importance=cfg.importance, seed=cfg.seed,
                       progress=not cfg.quiet, env=env_probe, callback=callback)
    if run_dir is not None:
        report.write_run(run_dir, result, data_name=splits.name, command=command,
                         config=dataclasses.asdict(cfg), example_input=ex,
                         plots=cfg.plots, onnx=cfg.onnx)
    return result


def run_compare(cfg: RunConfig, command: str = "") -> list[Any]:
    """Every method of ``cfg.methods`` on the same checkpoint and budget; writes the table."""
    from rlprune import api, report
    from rlprune.costs import Budget

    cfg.validate()
    Budget.parse(cfg.budget or "")
    _check_names(cfg, list(cfg.methods))
    model, splits, _ = _load_inputs(cfg)
    ex = splits.example_input(1)
    env_kwargs = _env_kwargs(cfg)

    def done(res: Any) -> None:
        if not cfg.quiet:
            print(f"  {res.method}: {res.search.evaluations} evaluations, "
                  f"{res.search.wall_time:.1f} s, test acc after fine-tune "
                  f"{res.accuracy.get('pruned', float('nan')):.4f}", file=sys.stderr)

    results = api.compare(model, splits, cfg.budget or "", methods=list(cfg.methods),
                          granularity=cfg.granularity, episodes=cfg.episodes,
                          finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr,
                          importance=cfg.importance, example_input=ex, seed=cfg.seed,
                          progress=not cfg.quiet, env_kwargs=env_kwargs, on_result=done)
    rows = [report.compare_row(r) for r in results]
    original = {"test": results[0].accuracy.get("original"),
                "reward": results[0].accuracy.get("reward_original")}
    budget = results[0].budget
    print(report.format_compare_console(rows, original=original, budget=budget))
    if cfg.out:
        out = Path(cfg.out)
        report.write_compare(out, rows, original=original, budget=budget, data_name=splits.name,
                             model_name=cfg.model or cfg.checkpoint, command=command,
                             plots=cfg.plots)
        best = max(results, key=lambda r: (r.accuracy.get("reward_pruned") or 0.0))
        report.write_run(out / f"best-{best.method}", best, data_name=splits.name,
                         command=command, config=dataclasses.asdict(cfg), example_input=ex,
                         plots=cfg.plots, onnx=cfg.onnx)
    return results


# ------------------------------------------------------------------------------- demo
def demo(out: str = "runs/demo", quiet: bool = False, episodes: int = 40) -> int:
    """Pretrain digits_cnn (cached), compare every method at ``params<=0.3``, write a run."""
    cfg = RunConfig(model="digits_cnn", data="digits", budget="params<=0.3",
                    granularity="channel", episodes=episodes, finetune_epochs=3,
                    finetune_lr=0.02, pretrain_epochs=15, out=out, quiet=quiet)
    t0 = time.perf_counter()
    print("rlprune demo: digits_cnn on sklearn's 8x8 digits, budget params<=0.3 (channel "
          f"pruning), {episodes} candidate evaluations per searching method", file=sys.stderr)
    run_compare(cfg, command="rlprune demo")
    print(f"\nwrote {out}/compare.md and a full run of the best method in {out}/best-*/ "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


# -------------------------------------------------------------------------------- CLI
_FLAG_HELP = {
    "model": "registry model to pretrain (cached) when no --checkpoint is given",
    "checkpoint": "checkpoint to prune (written by `rlprune pretrain` or save_checkpoint)",
    "data": "dataset: digits, mnist, cifar10, cifar100",
    "data_dir": "folder with the dataset files (default: $RLPRUNE_DATA)",
    "budget": 'constraints, e.g. "params<=0.1" or "flops<=50%,latency_ms<=2"',
    "method": "search method: cpl, purl, amc, uniform, random, global",
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
    "reward_fraction": "fraction of the training set held out as the reward split",
    "pretrain_epochs": "epochs when pretraining a registry --model",
    "seed": "random seed (the run is reproducible from it)",
    "out": "run directory to write",
    "quiet": "no progress bars",
    "onnx": "export pruned.onnx (checked with onnxruntime)",
    "plots": "write the PNG plots",
    "tensorboard": "log TensorBoard scalars (needs the tensorboard extra)",
}


def _env_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The environment options a run config sets (the rest keep the env's defaults)."""
    kw: dict[str, Any] = {"finetune_steps": cfg.search_finetune_steps,
                          "reward_samples": cfg.reward_samples}
    if cfg.dense_samples is not None:
        kw["dense_samples"] = cfg.dense_samples
    if cfg.reward:
        kw["reward"] = cfg.reward
    return kw


def _add_config_flags(p: argparse.ArgumentParser, compare: bool) -> None:
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


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config(args.config))
    for name in _FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return RunConfig(**values)


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, quoted so that it can be pasted back into a shell."""
    return "rlprune " + shlex.join(getattr(args, "argv", None) or sys.argv[1:])


def _cmd_prune(args: argparse.Namespace) -> int:
    command = _command_line(args)
    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"cannot resume: {cfg_path} not found (is {run_dir} a "
                                    "run directory written by `rlprune prune --out`?)")
        raw = yaml.safe_load(cfg_path.read_text()) or {}
        raw.pop("_command", None)
        cfg = RunConfig(**raw)
        cfg.out = str(run_dir)
        if args.quiet:
            cfg.quiet = True
        res = run_prune(cfg, resume=True, command=command)
    else:
        cfg = _config_from_args(args)
        res = run_prune(cfg, command=command)
    print(res.summary())
    if cfg.out:
        print(f"run directory: {cfg.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    run_compare(_config_from_args(args), command=_command_line(args))
    return 0


def add_cli_commands(sub: Any) -> None:
    """Register ``prune`` and ``compare`` on the CLI's sub-command parser."""
    p = sub.add_parser("prune", help="prune a model to fit a budget and write a run directory")
    _add_config_flags(p, compare=False)
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run from its directory")
    p.set_defaults(handler=_cmd_prune)
    p = sub.add_parser("compare", help="run several methods side by side on one budget")
    _add_config_flags(p, compare=True)
    p.set_defaults(handler=_cmd_compare)
