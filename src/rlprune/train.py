"""Training, fine-tuning and evaluation, batch by batch from any split, and checkpoints.

``fit`` is plain SGD with momentum, a cosine schedule, weight decay and optional
label smoothing or distillation from a teacher (the unpruned model), with a progress
bar (:func:`rlprune.progress.progress_bar`: in place on a terminal, a line every 30 s in
a log). ``evaluate`` runs under ``torch.inference_mode()``. All of them read their data
batch by batch through the split interface of :mod:`rlprune.data`, so the same code
trains on in-memory tensors and on a dataset streamed from disk. Checkpoints store the
architecture (registry name and arguments, or the whole module for user models
and pruned models whose shapes differ from the registry's) together with the
state dict, the dataset and its normalisation, and the test accuracy; they are
written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rlprune import models
from rlprune.data import DatasetSplit, DataSource, Split, Splits, as_splits, augment, to_split
from rlprune.fileio import atomic_write_bytes
from rlprune.progress import progress_bar

__all__ = [
    "fit",
    "finetune_steps",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "recalibrate_bn",
    "compute_device",
    "CheckpointError",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing or unreadable."""


Device = str | torch.device | None


def compute_device(device: Device = None) -> torch.device:
    """The device training and evaluation run on.

    ``device`` if given, else ``$RLPRUNE_DEVICE``, else CUDA when available, else the
    CPU. Models live on the CPU everywhere else in the library (pruning, cost
    counting, export); the functions of this module move a model to this device for
    the duration of the call and back, so a GPU speeds up the expensive part (scoring
    and fine-tuning) without any other code knowing about it.
    """
    name = device if device is not None else os.environ.get("RLPRUNE_DEVICE") or None
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N): {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: rlprune runs on cpu or cuda")
    return dev


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def _on_device(model: nn.Module, device: Device) -> Iterator[torch.device]:
    """Run a block with ``model`` on the compute device, then move it back."""
    target = compute_device(device)
    home = _model_device(model)
    moved = home != target
    if moved:
        model.to(target)
    try:
        yield target
    finally:
        if moved:
            model.to(home)


#: What :func:`evaluate` and :func:`recalibrate_bn` read: an input tensor, a split, a
#: map-style ``Dataset`` or a ``DataLoader``.
Data = torch.Tensor | Split | DatasetSplit | Dataset[Any] | DataLoader[Any]


def evaluate(model: nn.Module, x: Data, y: torch.Tensor | None = None,
             batch_size: int = 1024, device: Device = None) -> float:
    """Top-1 accuracy in [0, 1] of ``model``, in eval mode, no autograd, computed on
    ``compute_device(device)`` in batches of ``batch_size`` (NaN if there are no samples).

    ``x`` is an input tensor with its labels ``y``, or (``y`` left out) a split of
    :mod:`rlprune.data`, a map-style ``Dataset`` or a ``DataLoader`` (its dataset),
    streamed batch by batch.
    """
    if isinstance(x, torch.Tensor):
        if y is None:
            raise TypeError("evaluate(model, x, y): labels y are needed with an input tensor")
        split: Split | DatasetSplit = Split(x, y)
    elif y is not None:
        raise TypeError("evaluate(model, split): labels come with the split; leave out y")
    else:
        split = to_split(x)
    n = len(split)
    if n == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    with _on_device(model, device) as dev, torch.inference_mode():
        for xb, yb in split.batches(batch_size):
            out = model(xb.to(dev, non_blocking=True))
            correct += int((out.argmax(1) == yb.to(dev, non_blocking=True)).sum())
    model.train(was_training)
    return correct / n


def _loss(
    out: torch.Tensor,
    yb: torch.Tensor,
    label_smoothing: float,
    teacher_out: torch.Tensor | None,
    distill_alpha: float,
    temperature: float,
) -> torch.Tensor:
    loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
    if teacher_out is not None and distill_alpha > 0:
        t = temperature
        kd = F.kl_div(
            F.log_softmax(out / t, 1), F.softmax(teacher_out / t, 1), reduction="batchmean"
        ) * (t * t)
        loss = (1 - distill_alpha) * loss + distill_alpha * kd
    return loss


def fit(
    model: nn.Module,
    splits: Splits | DataSource,
    epochs: int = 10,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.0,
    temperature: float = 4.0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    max_steps: int | None = None,
    keep_zeros: bool = False,
    device: Device = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place on ``splits.train`` and return per-epoch curves.

    ``splits`` is a :class:`~rlprune.data.Splits` or anything
    :func:`~rlprune.data.as_splits` turns into one (a ``Dataset`` or ``DataLoader`` of
    training samples, tensors, a dataset name...; its reward split drawn with ``seed``).

    ``epochs`` passes over the training split in shuffled batches of ``batch_size``,
    SGD with Nesterov-free ``momentum``, ``weight_decay`` and a cosine schedule from
    ``lr`` to zero; ``label_smoothing`` softens the targets of the cross-entropy and
    ``seed`` fixes the batch order and augmentation. ``teacher`` (e.g. the unpruned
    model) adds knowledge distillation with weight ``distill_alpha`` at softmax
    ``temperature``. Augmentation follows ``splits.augmentation``. ``progress`` shows
    a bar labelled ``desc``. ``max_steps`` caps the number of optimiser steps (a short
    fine-tune). ``keep_zeros`` keeps every weight of a conv/linear layer that is zero at
    the start at zero (fine-tuning a weight-pruned model without regrowing what was
    pruned). Accuracy on the reward split is reported per epoch (never the test split).
    Training runs on ``compute_device(device)`` and the model is back on its own device
    afterwards.
    Returns ``{"loss", "train_acc", "reward_acc"}``, one value per epoch.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    splits = as_splits(splits, seed=seed)
    train = splits.train
    steps_per_epoch = max(1, math.ceil(len(train) / batch_size))
    total = epochs * steps_per_epoch if max_steps is None else min(
        max_steps, max(epochs, 1) * steps_per_epoch
    )
    curves: dict[str, list[float]] = {"loss": [], "train_acc": [], "reward_acc": []}
    if total == 0:
        return curves
    with _on_device(model, device) as dev, contextlib.ExitStack() as stack:
        if teacher is not None:
            stack.enter_context(_on_device(teacher, dev))
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        if teacher is not None:
            teacher.eval()
        masks = zero_masks(model) if keep_zeros else []
        step = 0
        bar = stack.enter_context(progress_bar(total=total, desc=desc, unit="step",
                                               disable=not progress))
        model.train()
        while step < total:
            tot_loss, tot_correct, tot_n = 0.0, 0, 0
            for xb, yb in train.batches(batch_size, shuffle=True, generator=g):
                xb = augment(xb, splits.augmentation, g).to(dev, non_blocking=True)
                yb = yb.to(dev, non_blocking=True)
                out = model(xb)
                t_out = None
                if teacher is not None and distill_alpha > 0:
                    with torch.no_grad():
                        t_out = teacher(xb)
                loss = _loss(out, yb, label_smoothing, t_out, distill_alpha, temperature)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} at step {step}; "
                        "lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                _apply_masks(masks)
                step += 1
                tot_loss += loss.item() * len(yb)
                tot_correct += int((out.argmax(1) == yb).sum())
                tot_n += len(yb)
                bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}",
                                acc=f"{tot_correct / tot_n:.3f}", refresh=False)
                bar.update(1)
                if step >= total:
                    break
            curves["loss"].append(tot_loss / max(tot_n, 1))
            curves["train_acc"].append(tot_correct / max(tot_n, 1))
            if len(splits.reward):
                curves["reward_acc"].append(evaluate(model, splits.reward, device=dev))
        model.eval()
    return curves


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def recalibrate_bn(model: nn.Module, x: Data, batch_size: int = 256,
                   device: Device = None) -> bool:
    """Re-estimate BatchNorm running statistics of ``model`` on inputs ``x`` (in place).

    Pruning changes the activations each BN layer sees, so the stored statistics no
    longer match; re-estimating them from a few hundred training inputs (no labels,
    no gradient) recovers much of the accuracy a pruned model shows before
    fine-tuning (adaptive BN, as in EagleEye, Li et al. 2020), which makes the
    search's candidate scores far more informative. ``x`` (an input tensor, or a split,
    ``Dataset`` or ``DataLoader`` whose every input is used) is fed in batches of
    ``batch_size`` on ``compute_device(device)``. Returns whether any BN was found.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    source: torch.Tensor | Split | DatasetSplit = x if isinstance(x, torch.Tensor) else to_split(x)
    if not bns or len(source) == 0:
        return False
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    with _on_device(model, device) as dev, torch.no_grad():
        if isinstance(source, torch.Tensor):
            for i in range(0, len(source), batch_size):
                model(source[i : i + batch_size].to(dev, non_blocking=True))
        else:
            for xb, _ in source.batches(batch_size):
                model(xb.to(dev, non_blocking=True))
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)
    model.eval()
    return True


def zero_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, keep-mask) pairs of every conv/linear weight that has zeros.

    Every ``nn.modules.conv._ConvNd`` (Conv1d/2d/3d and the transposed ones) and
    ``nn.Linear``: the layers whose weights weight-granularity pruning zeroes.
    """
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            w = m.weight
            if bool((w == 0).any()):
                out.append((w, (w != 0).to(w.dtype)))
    return out


def _apply_masks(masks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for w, mask in masks:
            w.mul_(mask)


def finetune_steps(
    model: nn.Module, train: Split | DatasetSplit, steps: int, lr: float = 0.01,
    batch_size: int = 128, seed: int = 0, augmentation: str | None = None, keep_zeros: bool = False,
    device: Device = None,
) -> None:
    """A short fine-tune of ``steps`` SGD steps at a constant rate (used inside a search),
    on ``compute_device(device)``.

    ``model`` is trained in place on the ``train`` split (in memory or streamed), in
    shuffled batches of ``batch_size`` at learning rate ``lr`` (momentum 0.9), with
    ``augmentation`` (``None``, ``"crop"`` or ``"crop_flip"``, see
    :func:`~rlprune.data.augment`) and the batch order fixed by ``seed``; ``keep_zeros``
    keeps pruned weights at zero.
    """
    if steps <= 0:
        return
    with _on_device(model, device) as dev:
        masks = zero_masks(model) if keep_zeros else []
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        model.train()
        done = 0
        while done < steps:
            for xb, yb in train.batches(batch_size, shuffle=True, generator=g):
                xb = augment(xb, augmentation, g).to(dev, non_blocking=True)
                loss = F.cross_entropy(model(xb), yb.to(dev, non_blocking=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _apply_masks(masks)
                done += 1
                if done >= steps:
                    break
        model.eval()


# -------------------------------------------------------------------------- checkpoints
def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module,
                    meta: dict[str, Any] | None = None) -> None:
    """Save ``model`` with its architecture and ``meta`` (dataset, normalisation, accuracy)
    to ``path``, atomically.

    Registry models whose shapes still match the registry are stored by name + state
    dict; anything else (user models, physically pruned models) is stored as the whole
    module so that it loads without the code that built it being re-run.
    """
    spec = models.arch_spec(model)
    payload: dict[str, Any] = {"format": "rlprune-checkpoint-1", "meta": dict(meta or {})}
    if spec is not None and _same_shapes(model, models.create(**spec)):
        payload["arch"] = spec
        payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        payload["arch"] = spec
        payload["module"] = copy.deepcopy(model).cpu()
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`. Returns ``(model, meta)``.

    Loading unpickles the file, and unpickling runs whatever code the file names: load
    only checkpoints you trust. A bare pickled ``nn.Module`` (``torch.save(model, path)``)
    is accepted too, with an empty ``meta``.

    The safe path: with ``model`` (an ``nn.Module`` of the file's architecture) the file
    is read with ``torch.load(weights_only=True)``, which runs no code. It may hold a plain
    state dict (``torch.save(net.state_dict(), path)``) or an rlprune checkpoint stored by
    name and state dict; the weights are loaded into a copy of ``model`` (``model`` itself
    is not changed). Anything that cannot be loaded, a plain state dict without ``model``
    included (it does not say which architecture to build), raises
    :class:`CheckpointError` naming the file and what to do.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {p} is a directory, not a file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    safe = model is not None
    try:
        payload = torch.load(p, map_location="cpu", weights_only=safe)
    except Exception as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if safe and found:
            raise CheckpointError(
                f"cannot read {p} with weights_only=True: it holds pickled code or objects "
                f"({found.group(1)}), not only tensors; load it as a full checkpoint (without "
                "--model / model=) only if you trust the file: unpickling runs its code"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {p} (truncated, corrupt, or not written "
                              f"by torch.save): {type(e).__name__}: {e}") from None
    if model is not None:
        is_ckpt = isinstance(payload, dict) and "state_dict" in payload
        state = payload["state_dict"] if is_ckpt else payload
        meta = payload.get("meta") if is_ckpt else None
        out = copy.deepcopy(model)
        _load_weights(out, state, p, type(model).__name__)
        return out.eval(), dict(meta) if isinstance(meta, dict) else {}
    if isinstance(payload, nn.Module):
        return payload.eval(), {}
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor)
                                                     for v in payload.values()):
        raise CheckpointError(
            f"{p} is not an rlprune checkpoint but a plain state dict, which does not say "
            "which architecture to build: "
            "give --model NAME with it (a registry model, see `rlprune models`), or in "
            "Python load_checkpoint(path, model=net); both read it with weights_only=True"
        )
    if not isinstance(payload, dict) or ("module" not in payload and "state_dict" not in payload):
        raise CheckpointError(
            f"{p} is not an rlprune checkpoint (expected one written by rlprune pretrain / "
            "rlprune.save_checkpoint, or a pickled nn.Module)"
        )
    meta = payload.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    if "module" in payload:
        module = payload["module"]
        if not isinstance(module, nn.Module):
            raise CheckpointError(f"{p}: its 'module' entry is a {type(module).__name__}, "
                                  "not an nn.Module")
        return module.eval(), meta
    arch = payload.get("arch")
    if not isinstance(arch, dict):
        raise CheckpointError(
            f"{p} holds a state dict but does not say which architecture to build (no 'arch' "
            "entry): give --model NAME with it, or in Python load_checkpoint(path, model=net)"
        )
    try:
        built = models.create(**arch)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{p} names an architecture rlprune cannot build: {e}") from None
    what = f"{arch.get('name')}(" + ", ".join(f"{k}={v}" for k, v in arch.items()
                                              if k != "name") + ")"
    _load_weights(built, payload["state_dict"], p, what)
    return built.eval(), meta


def _load_weights(model: nn.Module, state: Any, path: Path, what: str) -> None:
    """``model.load_state_dict(state)``, or a one-line :class:`CheckpointError` saying
    how the file's weights differ from the model's."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} holds no state dict (names mapped to tensors) for {what}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    other = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or other:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        if other:
            k = other[0]
            parts.append(f"{len(other)} of another shape (first {k!r}: "
                         f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the "
                         "model)")
        raise CheckpointError(f"the weights in {path} do not fit {what}: {'; '.join(parts)}")
    model.load_state_dict(state)


def cached(path: Path, build: Callable[[], tuple[nn.Module, dict[str, Any]]]
           ) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``path`` if it exists, else build, save and return it (pretraining cache)."""
    if path.is_file():
        try:
            return load_checkpoint(path)
        except CheckpointError:
            pass  # corrupt cache: rebuild it
    model, meta = build()
    save_checkpoint(path, model, meta)
    return model, meta
