"""Runs as a user starts them: config files, run directories, resume, the demo.

A run is a :class:`RunConfig`, read from a YAML file by :func:`load_config` (unknown
keys and wrong types are an error naming them) and carried out by :func:`run_prune`
or :func:`run_compare`. How a run is typed lives in :mod:`rlprune.cli`: ``rlprune
prune`` and ``rlprune compare`` are thin shells over these functions, with one flag
per config key (dashes for underscores). :func:`pretrain` is the one way a registry
model is trained from scratch; :func:`pretrained` caches it.

A run directory holds ``config.yaml`` (what was asked), ``log.jsonl`` (one line
per evaluated candidate, appended and flushed as the search goes) and, at the end,
the report and exports written by :mod:`rlprune.report`. ``run_prune(cfg,
resume=True)`` (``rlprune prune --resume DIR``, with the run's own config) reads
the log back: the search starts again from its seed, and every candidate already
in the log is replayed from it instead of being evaluated again, so an
interrupted run (even by ``kill -9``) loses nothing and repeats no evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunConfig", "load_config", "run_prune", "run_compare", "demo", "cache_dir",
           "RESUME_MAY_CHANGE", "pretrain", "pretrained", "registry_model", "PRETRAIN_LR"]


@dataclass
class RunConfig:
    """Every setting of a prune or compare run (each is also a CLI flag).

    What: a registry ``model`` (pretrained for ``pretrain_epochs`` and cached), a
    ``checkpoint``, or a user's architecture ``model_def`` (``package.module:factory``
    or ``path/to/file.py:Name``, :func:`rlprune.models.load_definition`) with its
    trained state dict ``weights`` (read with ``weights_only=True``; ``weights`` also
    fits a registry ``model``), pruned on the dataset ``data`` (files in ``data_dir``, default
    ``$RLPRUNE_DATA``) of which ``reward_fraction`` of the training set is held out as
    the reward split, to fit ``budget`` (a budget string) at ``granularity``
    (``channel`` or ``weight``) with channels or weights ranked by ``importance``.

    How: ``method`` (``rlprune prune``) or ``methods`` (``rlprune compare``) search for
    ``episodes`` candidate evaluations, each candidate fine-tuned for
    ``search_finetune_steps`` SGD steps and scored with the ``reward`` scheme (default:
    the method's) on the first ``reward_samples`` of the reward split (``dense_samples``
    for the per-layer rewards of dense schemes), stopping early when ``race`` is on and
    it cannot beat the best; the result is fine-tuned for ``finetune_epochs`` at
    ``finetune_lr``, distilling from the original with ``distill``. ``seed`` makes the
    run reproducible. ``latency_table`` lets the search predict latency constraints from a
    per-layer lookup table (the result is still measured for real). A noisy cost
    (latency) is accepted on ``noise_repeats`` measurements whose upper bound keeps a
    relative margin ``noise_margin`` below its limit (:class:`rlprune.noise.NoiseRule`);
    with ``noise_paired`` a relative limit on it is checked against the original timed
    beside the candidate.

    Output: the run directory ``out``, with ``pruned.onnx`` when ``onnx``, the PNG plots
    when ``plots`` and TensorBoard scalars when ``tensorboard``; ``quiet`` hides the
    progress bars.
    """

    model: str | None = None  # registry name (pretrained and cached if no checkpoint)
    checkpoint: str | None = None  # a checkpoint written by `rlprune pretrain` / save_checkpoint
    model_def: str | None = None  # a user's architecture: package.module:factory or file.py:Name
    weights: str | None = None  # the state dict of model_def (or of a registry model)
    data: str | None = None
    data_dir: str | None = None
    budget: str | None = None
    method: str = "cpl"
    methods: list[str] = field(default_factory=lambda: ["cpl", "purl", "amc", "uniform",
                                                        "random", "global", "lamp"])
    granularity: str = "channel"
    importance: str = "l2"  # space.DEFAULT_IMPORTANCE; not imported, the CLI starts fast
    episodes: int = 300
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    distill: bool = False
    search_finetune_steps: int = 0
    reward: str | None = None
    reward_samples: int | None = None
    dense_samples: int | None = None
    race: bool = True
    latency_table: bool = False  # predict latency costs from a lookup table during the search
    noise_margin: float = 0.03  # noisy costs: relative margin of the upper bound below a limit
    noise_repeats: int = 5  # noisy costs: measurements per acceptance check
    noise_paired: bool = True  # relative noisy limits: time the original beside the candidate
    reward_fraction: float = 0.1
    pretrain_epochs: int = 10
    seed: int = 0
    workers: int = 1  # candidates scored in N local processes (or N Ray actors with ray)
    parallel: int | None = None  # candidates a method proposes together (default: workers)
    ray: str | None = None  # score on a Ray cluster: auto, local or an address
    threads: int | None = None  # torch threads per worker
    out: str | None = None
    quiet: bool = False
    onnx: bool = True
    plots: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        """Clear errors for missing or malformed settings."""
        if not self.data:
            raise ValueError("no dataset: give --data (digits, mnist, cifar10, cifar100, "
                             "folder:PATH, npz:PATH) or `data:` in the config")
        if not self.budget:
            raise ValueError('no budget: give --budget, e.g. "params<=0.3,flops<=50%"')
        if not (self.model or self.checkpoint or self.model_def or self.weights):
            raise ValueError("give a --checkpoint to prune, a registry --model to pretrain, or "
                             "your own --model-def with its --weights")
        self._check_model_source()
        if self.granularity not in ("channel", "weight"):
            raise ValueError(f"granularity must be channel or weight, got {self.granularity!r}")
        if self.workers < (0 if self.ray else 1):
            raise ValueError(f"workers must be >= 1 (0 with --ray: one per GPU or CPU of "
                             f"the cluster), got {self.workers}")
        for name in ("parallel", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("episodes", "finetune_epochs", "pretrain_epochs", "search_finetune_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("reward_samples", "dense_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.noise_rule()

    def _check_model_source(self) -> None:
        """One way to name the model: ``model_def`` needs ``weights``, ``weights`` needs
        an architecture, and a whole ``checkpoint`` goes alone (or with a registry
        ``model`` for a plain state dict)."""
        if self.model_def and self.model:
            raise ValueError("give either --model-def (your architecture) or --model (a "
                             "registry name), not both")
        if self.model_def and not self.weights:
            raise ValueError("--model-def builds the architecture only: give its trained "
                             "weights with --weights FILE (torch.save(model.state_dict(), FILE))")
        if self.weights and not (self.model_def or self.model):
            raise ValueError("--weights holds a state dict, which does not say which "
                             "architecture to build: add --model-def package.module:factory "
                             "(or path/to/file.py:Name), or a registry --model NAME")
        if self.weights and self.checkpoint:
            raise ValueError("give the weights once: --weights (a state dict, with --model-def "
                             "or --model) or --checkpoint (an rlprune checkpoint), not both")

    def noise_rule(self) -> Any:
        """The :class:`rlprune.noise.NoiseRule` of ``noise_repeats``, ``noise_margin`` and
        ``noise_paired`` (``ValueError`` for values out of range)."""
        from rlprune.noise import NoiseRule

        return NoiseRule(repeats=self.noise_repeats, margin=self.noise_margin,
                         paired=self.noise_paired)


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
#: Settings a resumed run may change: they change how a run is shown or where its
#: candidates are scored, never which candidates it proposes.
RESUME_MAY_CHANGE = ("quiet", "workers", "ray", "threads")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the YAML config at ``path`` as ``{key: value}``; unknown keys raise
    ``ValueError`` naming them, and a value of the wrong type names its key."""
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


#: Learning rate of :func:`pretrain` when none is given.
PRETRAIN_LR = 0.05


def pretrain(model_name: str, splits: Any, epochs: int, lr: float | None = None,
             batch_size: int = 128, weight_decay: float = 5e-4, seed: int = 0,
             progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Build the registry model ``model_name`` for ``splits`` and train it from scratch.

    The one pretraining path: ``rlprune pretrain`` and the cached :func:`pretrained` both
    call it. The input channels (and ``lenet300``'s image side) come from the data; the
    initial weights come from ``seed`` alone, without reseeding the caller's global torch
    RNG. Training is :func:`rlprune.train.fit` for ``epochs`` at learning rate ``lr``
    (default :data:`PRETRAIN_LR`) with ``batch_size`` and ``weight_decay``; ``progress``
    shows a bar. Returns ``(model, meta)`` with ``meta`` as stored in a checkpoint:
    dataset, normalisation, input shape, classes, test accuracy, epochs, seed, training
    seconds and the per-epoch curves.
    """
    import torch

    from rlprune import train

    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also reseed every CUDA
        # generator, which fork_rng(devices=[]) does not restore
        torch.default_generator.manual_seed(seed)
        model = registry_model(model_name, splits)
    t0 = time.perf_counter()
    curves = train.fit(model, splits, epochs=epochs, lr=PRETRAIN_LR if lr is None else lr,
                       batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                       progress=progress, desc=f"pretrain {model_name}")
    wall = time.perf_counter() - t0
    acc = train.evaluate(model, splits.test)
    meta = {"dataset": splits.name, "mean": list(splits.mean), "std": list(splits.std),
            "input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "test_accuracy": acc, "epochs": epochs, "seed": seed,
            "train_seconds": round(wall, 1), "curves": curves}
    return model, meta


def registry_model(model_name: str, splits: Any) -> Any:
    """The registry model ``model_name`` shaped for ``splits`` (its input channels and
    classes; ``lenet300``'s image side), with fresh weights."""
    from rlprune import models

    shape = tuple(splits.input_shape)
    kwargs: dict[str, Any] = {}
    if str(model_name).lower() == "lenet300" and len(shape) == 3:
        if shape[1] != shape[2]:
            raise ValueError(f"lenet300 needs square images, got {shape[1]}x{shape[2]} "
                             f"from {splits.name}")
        kwargs["input_size"] = shape[-1]
    return models.create(model_name, num_classes=splits.num_classes,
                         in_channels=shape[0] if len(shape) == 3 else 1, **kwargs)


def pretrained(model_name: str, splits: Any, epochs: int, seed: int = 0,
               progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """:func:`pretrain` with its defaults, cached so every method and run reuses it.

    ``model_name``, ``splits``, ``epochs``, ``seed`` and ``progress`` are
    :func:`pretrain`'s; the cache (:func:`cache_dir`) is keyed by model, dataset, epochs
    and seed.
    """
    from rlprune import train

    path = cache_dir() / f"{model_name}_{splits.name}_e{epochs}_s{seed}.pt"
    return train.cached(path, lambda: pretrain(model_name, splits, epochs, seed=seed,
                                               progress=progress))


def _check_names(cfg: RunConfig, methods: list[str]) -> None:
    """Method and reward names, checked before data loading and pretraining (minutes)."""
    from rlprune.agents.base import check_methods
    from rlprune.rewards import REWARD_SCHEMES

    check_methods(methods)
    if cfg.reward and cfg.reward not in REWARD_SCHEMES:
        raise ValueError(f"unknown reward scheme {cfg.reward!r}; known: "
                         f"{', '.join(REWARD_SCHEMES)}")


def _load_inputs(cfg: RunConfig) -> tuple[Any, Any, dict[str, Any]]:
    from rlprune import data, train

    user = None
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"--weights {cfg.weights}: no such file (a state dict saved "
                                "with torch.save(model.state_dict(), FILE))")
    if cfg.model_def:
        from rlprune import models

        # a user's architecture and its plain state dict (read with weights_only=True: no
        # code in the weights file runs), before the data: a wrong one fails at once
        user = train.load_checkpoint(cfg.weights or "",
                                     model=models.load_definition(cfg.model_def))
    splits = data.load(cfg.data or "", root=cfg.data_dir, reward_fraction=cfg.reward_fraction,
                       seed=cfg.seed, progress=not cfg.quiet)
    if user is not None:
        model, meta = user
    elif cfg.weights:  # a plain state dict of a registry model
        model, meta = train.load_checkpoint(cfg.weights, model=registry_model(cfg.model or "",
                                                                             splits))
    elif cfg.checkpoint and cfg.model:
        # a plain state dict of a registry model: read with weights_only=True (no code runs)
        model, meta = train.load_checkpoint(cfg.checkpoint,
                                            model=registry_model(cfg.model, splits))
    elif cfg.checkpoint:
        model, meta = train.load_checkpoint(cfg.checkpoint)
    else:
        model, meta = pretrained(cfg.model or "", splits, cfg.pretrain_epochs, cfg.seed,
                                 progress=not cfg.quiet)
    ds = meta.get("dataset")
    if ds and ds != splits.name:
        raise ValueError(f"the checkpoint was trained on {ds!r} but --data is {splits.name!r}")
    return model, splits, meta


def _recorder(log_path: Path | None, env: Any, tb_dir: Path | None = None) -> Any:
    """The run's callback: appends each new candidate to log.jsonl, feeds TensorBoard."""
    from rlprune.agents.base import Callback

    class _Recorder(Callback):
        def __init__(self) -> None:
            self.written = len(env.history)
            self.tb = None
            if tb_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(tb_dir))
                except Exception:  # tensorboard is an optional extra
                    self.tb = None

        def on_episode(self, searcher: Any, info: dict[str, Any]) -> None:
            cands = env.history.candidates
            new = cands[self.written:]
            if log_path is not None:
                from rlprune.runlog import append_log

                for c in new:
                    append_log(log_path, c)
            if self.tb is not None:
                for c in new:
                    self.tb.add_scalar("search/reward", c.reward, c.index)
                    self.tb.add_scalar("search/accuracy", c.accuracy, c.index)
                    for n, r in zip(env.constraint_names, c.cost_ratios):
                        self.tb.add_scalar(f"cost/{n}", r, c.index)
                    for i, nu in enumerate(c.extra.get("multipliers", []) or []):
                        self.tb.add_scalar(f"lagrange/nu{i}", nu, c.index)
            self.written = len(cands)

    return _Recorder()


def _read_log(path: Path) -> list[Any]:
    """Candidates of a log.jsonl (none if absent); a torn last line is dropped."""
    from rlprune.runlog import read_log

    return read_log(path).candidates if path.is_file() else []


def _save_config(run_dir: Path, cfg: RunConfig, command: str) -> None:
    from rlprune.fileio import atomic_write_bytes

    body = dataclasses.asdict(cfg)
    body["_command"] = command
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(body, sort_keys=False).encode())


#: The bound budget of a run directory: every limit resolved once, at the run's start.
BUDGET_FILE = "budget.json"
#: The noisy measurements of a run, in order, replayed when it is resumed.
MEASUREMENTS_FILE = "measurements.jsonl"


def _bound_budget(cfg: RunConfig, model: Any, ex: Any, run_dir: Path | None,
                  resume: bool) -> Any:
    """The run's budget, bound once: from ``budget.json`` when resuming, else measured."""
    import json

    from rlprune.api import budget_for
    from rlprune.costs import BoundBudget, Budget

    budget = budget_for(Budget.parse(cfg.budget or ""), cfg.granularity)
    path = None if run_dir is None else run_dir / BUDGET_FILE
    if resume and path is not None and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("budget") != str(budget):
            raise ValueError(f"{path} binds {stored.get('budget')!r}, not the run's budget "
                             f"{str(budget)!r}")
        return BoundBudget.from_dict(budget, stored, ex, reference=model)
    return budget.bind(model, ex, rule=cfg.noise_rule())


def _check_workers(cfg: RunConfig) -> None:
    """A Ray cluster that cannot be reached is an error before anything is loaded."""
    if cfg.ray:
        from rlprune.workers import check_ray

        check_ray(cfg.ray)


def _cluster_workers(cfg: RunConfig) -> int:
    """The actors ``--workers 0`` gives on ``cfg.ray``'s cluster."""
    from rlprune.workers import ray_cluster_workers

    return ray_cluster_workers(cfg.ray or "auto", cfg.threads or 1)


def _check_out(out: str | None) -> None:
    """A clear error now, not after the search, for an output folder that cannot be made."""
    if not out:
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a directory: give a folder for the run")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {p} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {p} cannot be written: {parent} is not writable; choose "
                         "another --out")


def _check_not_another_run(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to start a run in a folder holding a run with other settings (it would
    lose that run's log and report): resume it, or choose another folder."""
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        return
    stored = dataclasses.asdict(RunConfig(**load_config(stored_path)))
    for key, value in dataclasses.asdict(cfg).items():
        if key not in ("out", *RESUME_MAY_CHANGE) and stored.get(key) != value:
            raise ValueError(
                f"--out {run_dir} already holds a different run ({stored_path} has {key}: "
                f"{stored.get(key)}, this run {value}): --resume {run_dir} continues that "
                "run; to start this one, choose another --out"
            )


def run_prune(cfg: RunConfig, resume: bool = False, command: str = "") -> Any:
    """Prune as configured by ``cfg``, write the run directory, return the ``PruneResult``.

    ``resume`` continues the run in ``cfg.out`` (its settings must equal the stored
    ones); ``command`` is the command line recorded in the report.

    The budget is bound once at the start and stored in ``budget.json``; a resumed run
    reads it back instead of measuring the original model again, and replays the
    candidates of ``log.jsonl`` and the noisy measurements of ``measurements.jsonl``
    (:class:`rlprune.noise.MeasurementTape`).
    """
    from rlprune import api, report
    from rlprune.costs import Budget, BudgetInfeasibleError
    from rlprune.fileio import atomic_write_json
    from rlprune.history import History
    from rlprune.noise import MeasurementTape

    cfg.validate()
    _check_workers(cfg)
    if cfg.parallel is None:
        # stored with the run: a resume with other workers proposes the same candidates
        cfg.parallel = cfg.workers if cfg.workers > 0 else _cluster_workers(cfg)
    _check_names(cfg, [cfg.method])
    api.budget_for(Budget.parse(cfg.budget or ""), cfg.granularity)  # before any loading
    _check_out(cfg.out)
    if cfg.out and not resume:
        _check_not_another_run(Path(cfg.out), cfg)
    model, splits, _ = _load_inputs(cfg)
    run_dir = Path(cfg.out) if cfg.out else None
    log_path = None if run_dir is None else run_dir / "log.jsonl"
    replay: list[Any] = _read_log(log_path) if (resume and log_path is not None) else []
    ex = splits.example_input(1)
    api.check_inputs(model, splits, ex)
    bound = _bound_budget(cfg, model, ex, run_dir, resume)
    tape_path = None if run_dir is None else run_dir / MEASUREMENTS_FILE
    if bound.noisy and tape_path is not None:
        bound.tape = (MeasurementTape.load(tape_path) if resume and tape_path.is_file()
                      else MeasurementTape())
    env = api.make_env(model, splits, bound, cfg.method, cfg.granularity, cfg.importance, ex,
                       seed=cfg.seed, history=History(replay), **_env_kwargs(cfg))
    if replay:
        env.evaluator.enable_replay()
    # an unreachable budget is an error now, not after the whole search (and before the
    # run directory is written): the most aggressive pruning allowed must fit
    env.evaluator.project(env.space.max_policy())
    if run_dir is not None and log_path is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            # rewrite the log without a torn tail line
            from rlprune.runlog import write_log

            write_log(log_path, replay)
        else:
            if log_path.exists():
                log_path.unlink()
            _save_config(run_dir, cfg, command)
        atomic_write_json(run_dir / BUDGET_FILE, bound.to_dict())
        if bound.tape is not None and tape_path is not None and bound.tape.path is None:
            bound.tape.attach(tape_path)
    recorder = _recorder(log_path, env, run_dir / "tb" if (cfg.tensorboard and run_dir) else None)
    try:
        result = api.prune(model, splits, bound.budget, method=cfg.method,
                           granularity=cfg.granularity, finetune_epochs=cfg.finetune_epochs,
                           finetune_lr=cfg.finetune_lr, distill=cfg.distill,
                           episodes=cfg.episodes, seed=cfg.seed, progress=not cfg.quiet,
                           env=env, callback=recorder, latency_table=cfg.latency_table,
                           workers=cfg.workers, parallel=cfg.parallel, ray=cfg.ray,
                           threads=cfg.threads)
    except BudgetInfeasibleError as e:
        tape = bound.tape
        if tape is None or tape.mark is None or run_dir is None:
            raise
        # the search is in the log: a resume replays it and measures the rest afresh
        tape.forget_after_mark()
        raise BudgetInfeasibleError(f"{e} (the search is kept: `rlprune prune --resume "
                                    f"{run_dir}` replays it and measures again)",
                                    e.failures) from e
    if run_dir is not None:
        report.write_run(run_dir, result, data_name=splits.name, command=command,
                         config=dataclasses.asdict(cfg), example_input=ex,
                         plots=cfg.plots, onnx=cfg.onnx)
    return result


def run_compare(cfg: RunConfig, command: str = "") -> list[Any]:
    """Every method of ``cfg.methods`` on the same checkpoint and budget; writes the table.

    ``command`` is the command line recorded in the reports. Returns the methods'
    ``PruneResult`` objects, in order.
    """
    from rlprune import api, report
    from rlprune.costs import Budget

    cfg.validate()
    _check_workers(cfg)
    Budget.parse(cfg.budget or "")
    _check_names(cfg, list(cfg.methods))
    _check_out(cfg.out)
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
                          progress=not cfg.quiet, env_kwargs=env_kwargs, on_result=done,
                          latency_table=cfg.latency_table, noise=cfg.noise_rule(),
                          workers=cfg.workers, parallel=cfg.parallel, ray=cfg.ray,
                          threads=cfg.threads)
    rows = [report.compare_row(r) for r in results]
    original = {"test": results[0].accuracy.get("original"),
                "reward": results[0].accuracy.get("reward_original")}
    budget = results[0].budget
    print(report.format_compare_console(rows, original=original, budget=budget))
    if cfg.out:
        out = Path(cfg.out)
        report.write_compare(out, rows, original=original, budget=budget, data_name=splits.name,
                             model_name=cfg.model or cfg.model_def or cfg.checkpoint,
                             command=command,
                             plots=cfg.plots)
        best = max(results, key=lambda r: (r.accuracy.get("reward_pruned") or 0.0))
        report.write_run(out / f"best-{best.method}", best, data_name=splits.name,
                         command=command, config=dataclasses.asdict(cfg), example_input=ex,
                         plots=cfg.plots, onnx=cfg.onnx)
    return results


# ------------------------------------------------------------------------------- demo
def demo(out: str = "runs/demo", quiet: bool = False, episodes: int = 40) -> int:
    """Pretrain digits_cnn (cached), compare every method at ``params<=0.3``, write a run.

    ``episodes`` candidate evaluations per searching method; the comparison and a full
    run of the best method go to ``out``; ``quiet`` hides the progress bars. Returns the
    exit status (0).
    """
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


def _env_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The environment options a run config sets (the rest keep the env's defaults)."""
    kw: dict[str, Any] = {"finetune_steps": cfg.search_finetune_steps,
                          "reward_samples": cfg.reward_samples}
    if cfg.dense_samples is not None:
        kw["dense_samples"] = cfg.dense_samples
    if not cfg.race:
        kw["race_z"] = None
    if cfg.reward:
        kw["reward"] = cfg.reward
    return kw

