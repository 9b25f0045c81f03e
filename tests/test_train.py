"""Training, evaluation, fine-tuning, distillation and checkpoints."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlprune import data, models, train
from rlprune.train import CheckpointError


class UserNet(nn.Module):
    """A model the registry knows nothing about (saved as a whole module)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def fresh_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("digits_cnn", num_classes=10, in_channels=1)


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def count_train_forwards(model: nn.Module) -> list[int]:
    """A counter of forward calls made while ``model`` is in train mode."""
    calls = [0]

    def hook(mod: nn.Module, args: object, out: object) -> None:
        if mod.training:
            calls[0] += 1

    model.register_forward_hook(hook)
    return calls


def kl_to_teacher(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), 1),
                              F.softmax(teacher.eval()(x), 1), reduction="batchmean"))


# ------------------------------------------------------------------------ fit / evaluate
def test_fit_raises_accuracy_from_chance(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    untrained = train.evaluate(fresh_cnn(), digits.test.x, digits.test.y)
    assert untrained < 0.35
    trained = train.evaluate(trained_digits_cnn, digits.test.x, digits.test.y)
    assert trained > 0.9
    assert not trained_digits_cnn.training  # fit leaves the model in eval mode


def test_fit_curves_steps_and_determinism(digits: data.Splits) -> None:
    a = fresh_cnn()
    calls = count_train_forwards(a)
    curves = train.fit(a, digits, epochs=2, lr=0.05, seed=3, progress=False)
    assert set(curves) == {"loss", "train_acc", "reward_acc"}
    assert all(len(v) == 2 for v in curves.values())
    assert all(0.0 <= v <= 1.0 for v in curves["reward_acc"] + curves["train_acc"])
    assert curves["loss"][1] < curves["loss"][0]
    steps_per_epoch = -(-len(digits.train) // 128)
    assert calls[0] == 2 * steps_per_epoch
    assert not a.training

    b = fresh_cnn()
    train.fit(b, digits, epochs=2, lr=0.05, seed=3, progress=False)
    assert params_equal(a, b)  # same seed, same weights


def test_fit_max_steps_and_zero_epochs(digits: data.Splits) -> None:
    model = fresh_cnn()
    calls = count_train_forwards(model)
    train.fit(model, digits, epochs=5, max_steps=3, progress=False)
    assert calls[0] == 3

    model = fresh_cnn()
    before = copy.deepcopy(model)
    curves = train.fit(model, digits, epochs=0, progress=False)
    assert curves == {"loss": [], "train_acc": [], "reward_acc": []}
    assert params_equal(model, before)


def test_fit_rejects_negative_epochs(digits: data.Splits) -> None:
    with pytest.raises(ValueError, match="epochs"):
        train.fit(fresh_cnn(), digits, epochs=-1, progress=False)


def test_fit_diverging_loss_is_clear_error(digits: data.Splits) -> None:
    with pytest.raises(FloatingPointError, match="learning rate"):
        train.fit(fresh_cnn(), digits, epochs=3, lr=1e12, progress=False)


def test_evaluate_matches_manual_accuracy(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = trained_digits_cnn
    with torch.no_grad():
        pred = model.eval()(digits.test.x).argmax(1)
    manual = (pred == digits.test.y).float().mean().item()
    assert train.evaluate(model, digits.test.x, digits.test.y) == pytest.approx(manual)
    # batching does not change the result, even with a ragged last batch
    assert train.evaluate(model, digits.test.x, digits.test.y, batch_size=50) == pytest.approx(
        manual
    )
    # labels shifted by one class: accuracy computed against the given labels
    wrong = (digits.test.y + 1) % 10
    assert train.evaluate(model, digits.test.x, wrong) == pytest.approx(
        (pred == wrong).float().mean().item()
    )
    empty = torch.empty(0, dtype=torch.int64)
    assert train.evaluate(model, digits.test.x[:0], empty) != train.evaluate(
        model, digits.test.x[:0], empty
    )  # NaN for an empty split


def test_evaluate_runs_in_eval_mode_and_keeps_the_mode(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = copy.deepcopy(trained_digits_cnn).eval()
    acc_eval = train.evaluate(model, digits.test.x, digits.test.y)
    assert not model.training  # not left in train mode
    stats = copy.deepcopy(model.state_dict())

    model.train()
    acc_from_train_mode = train.evaluate(model, digits.test.x[:7], digits.test.y[:7])
    with torch.no_grad():
        expected = (model.eval()(digits.test.x[:7]).argmax(1) == digits.test.y[:7]).float()
    assert acc_from_train_mode == pytest.approx(expected.mean().item())
    # BatchNorm running statistics were not touched by evaluate
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert acc_eval > 0.9


def test_evaluate_does_not_track_gradients(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = copy.deepcopy(trained_digits_cnn)
    outputs: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, a, out: outputs.append(out))
    train.evaluate(model, digits.test.x, digits.test.y)
    assert outputs and all(not o.requires_grad for o in outputs)


# ------------------------------------------------------------------ fine-tune / distill
def test_finetune_steps_changes_weights(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = copy.deepcopy(trained_digits_cnn)
    before = copy.deepcopy(model)
    train.finetune_steps(model, digits.train, steps=0)
    assert params_equal(model, before)
    calls = count_train_forwards(model)
    train.finetune_steps(model, digits.train, steps=4, lr=0.01, seed=0)
    assert calls[0] == 4
    assert not params_equal(model, before)
    assert not model.training
    assert train.evaluate(model, digits.test.x, digits.test.y) > 0.85


def test_finetune_steps_more_than_one_epoch(digits: data.Splits) -> None:
    small = data.Split(digits.train.x[:40], digits.train.y[:40])
    model = fresh_cnn()
    calls = count_train_forwards(model)
    train.finetune_steps(model, small, steps=7, batch_size=16)  # 3 batches per pass
    assert calls[0] == 7


class OddConvNet(nn.Module):
    """Conv3d and ConvTranspose2d layers (weight pruning zeroes them like any conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(1, 4, (1, 3, 3), padding=(0, 1, 1))
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3d(x.unsqueeze(2))).squeeze(2)  # (N, 4, 8, 8)
        x = torch.relu(self.up(x))  # (N, 4, 16, 16)
        x = torch.relu(self.conv1d(x.flatten(2)))  # (N, 4, 256)
        return self.head(x.mean(2))


def test_keep_zeros_covers_every_conv_kind(digits: data.Splits) -> None:
    torch.manual_seed(0)
    model = OddConvNet()
    layers = [model.conv3d, model.up, model.conv1d, model.head]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in layers:  # zero half of the weights at random, as weight pruning would
            m.weight.mul_(torch.rand(m.weight.shape, generator=g) < 0.5)
    zeros = [m.weight == 0 for m in layers]
    before = copy.deepcopy(model)
    train.fit(model, digits, epochs=1, max_steps=5, lr=0.05, progress=False, keep_zeros=True)
    for m, z in zip(layers, zeros, strict=True):
        assert bool((m.weight[z] == 0).all()), f"{type(m).__name__} regrew pruned weights"
    assert not params_equal(model, before)  # it did train
    assert {id(w) for w, _ in train.zero_masks(model)} == {id(m.weight) for m in layers}
    train.finetune_steps(model, digits.train, steps=3, keep_zeros=True)
    for m, z in zip(layers, zeros, strict=True):
        assert bool((m.weight[z] == 0).all()), f"{type(m).__name__} regrew pruned weights"


FIT_WITH_PROGRESS = """
import sys, torch
from rlprune import data, models, train
torch.set_num_threads(1)
torch.manual_seed(0)
digits = data.load("digits")
model = models.create("digits_cnn", num_classes=10, in_channels=1)
train.fit(model, digits, epochs=2, batch_size=8, max_steps=int(sys.argv[1]), progress=True)
"""


def test_fit_progress_in_a_log_file_writes_few_lines(tmp_path: Path) -> None:
    """A progress bar on stderr redirected to a file: not one line per step."""
    log = tmp_path / "stderr.log"
    steps = 300
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-c", FIT_WITH_PROGRESS, str(steps)],
                              stdout=subprocess.DEVNULL, stderr=err, timeout=300, check=False,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    text = log.read_text()
    assert proc.returncode == 0, text
    updates = text.count("\n") + text.count("\r")
    assert 1 <= updates < 10, f"{updates} progress updates for {steps} steps:\n{text[:2000]}"
    assert f"{steps}/{steps}" in text.splitlines()[-1]  # the final state is logged


def test_distillation_lowers_kl_to_teacher(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    teacher = copy.deepcopy(trained_digits_cnn)
    teacher_before = copy.deepcopy(teacher)
    student = fresh_cnn(seed=1)
    x = digits.reward.x
    kl_before = kl_to_teacher(student, teacher, x)
    teacher.train()  # fit must put the teacher in eval mode itself
    train.fit(student, digits, epochs=3, lr=0.05, teacher=teacher, distill_alpha=0.9,
              temperature=4.0, seed=0, progress=False)
    assert not teacher.training
    assert params_equal(teacher, teacher_before)  # the teacher is never trained
    kl_after = kl_to_teacher(student, teacher, x)
    assert kl_after < 0.75 * kl_before
    # the same student trained on the labels alone ends further from the teacher
    plain = fresh_cnn(seed=1)
    train.fit(plain, digits, epochs=3, lr=0.05, seed=0, progress=False)
    assert kl_after < 0.9 * kl_to_teacher(plain, teacher, x)


def test_distillation_loss_term_is_used() -> None:
    out = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    plain = train._loss(out, y, 0.0, None, 0.0, 4.0)
    same_teacher = train._loss(out, y, 0.0, out.clone(), 1.0, 4.0)
    other_teacher = train._loss(out, y, 0.0, torch.tensor([[-1.0, 0.0, 2.0]]), 1.0, 4.0)
    assert plain.item() == pytest.approx(F.cross_entropy(out, y).item())
    assert same_teacher.item() == pytest.approx(0.0, abs=1e-6)  # pure KD to itself
    assert other_teacher.item() > 0.1


# ------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_registry_model(
    tmp_path: Path, digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    path = tmp_path / "ck.pt"
    meta = {"dataset": "digits", "test_accuracy": 0.97, "mean": [0.3]}
    train.save_checkpoint(path, trained_digits_cnn, meta)
    payload = torch.load(path, weights_only=False)
    assert "state_dict" in payload and "module" not in payload  # stored by name
    loaded, loaded_meta = train.load_checkpoint(path)
    assert loaded_meta == meta
    assert not loaded.training
    assert models.arch_spec(loaded) == models.arch_spec(trained_digits_cnn)
    with torch.no_grad():
        assert torch.equal(loaded(digits.test.x), trained_digits_cnn.eval()(digits.test.x))


def test_checkpoint_round_trip_user_module(tmp_path: Path, digits: data.Splits) -> None:
    torch.manual_seed(0)
    model = UserNet()
    train.fit(model, digits, epochs=1, progress=False)
    path = tmp_path / "user.pt"
    train.save_checkpoint(path, model)
    assert "module" in torch.load(path, weights_only=False)
    loaded, meta = train.load_checkpoint(path)
    assert meta == {}
    assert isinstance(loaded, UserNet)
    assert models.arch_spec(loaded) is None
    with torch.no_grad():
        assert torch.equal(loaded(digits.test.x), model.eval()(digits.test.x))


def test_checkpoint_round_trip_physically_pruned_registry_model(
    tmp_path: Path, digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = copy.deepcopy(trained_digits_cnn)
    # narrow the last conv from 64 to 40 channels, as a channel pruner would
    conv, bn = model.features[7], model.features[8]
    keep = torch.arange(40)
    new_conv = nn.Conv2d(conv.in_channels, 40, 3, padding=1, bias=False)
    new_conv.weight.data = conv.weight.data[keep].clone()
    new_bn = nn.BatchNorm2d(40)
    new_bn.load_state_dict({k: (v[keep].clone() if v.dim() else v.clone())
                            for k, v in bn.state_dict().items()})
    new_fc = nn.Linear(40, 10)
    new_fc.weight.data = model.fc.weight.data[:, keep].clone()
    new_fc.bias.data = model.fc.bias.data.clone()
    model.features[7], model.features[8], model.fc = new_conv, new_bn, new_fc
    model.eval()
    assert models.arch_spec(model)["name"] == "digits_cnn"  # still claims the registry name

    path = tmp_path / "pruned.pt"
    train.save_checkpoint(path, model, {"note": "pruned"})
    assert "module" in torch.load(path, weights_only=False)
    loaded, meta = train.load_checkpoint(path)
    assert meta == {"note": "pruned"}
    assert loaded.features[7].out_channels == 40
    with torch.no_grad():
        assert torch.equal(loaded(digits.test.x), model(digits.test.x))


def test_checkpoint_write_is_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_digits_cnn: nn.Module
) -> None:
    path = tmp_path / "sub" / "dir" / "ck.pt"  # parents are created
    train.save_checkpoint(path, trained_digits_cnn, {"v": 1})
    train.save_checkpoint(path, trained_digits_cnn, {"v": 2})  # overwrite
    assert sorted(os.listdir(path.parent)) == ["ck.pt"]  # no temp files left
    assert train.load_checkpoint(path)[1] == {"v": 2}

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(train.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, trained_digits_cnn, {"v": 3})
    monkeypatch.undo()
    assert sorted(os.listdir(path.parent)) == ["ck.pt"]  # the temp file was removed
    assert train.load_checkpoint(path)[1] == {"v": 2}  # the old file is intact


def test_missing_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        train.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "content", [b"garbage, not a torch file" * 10, b"", b"PK\x03\x04truncated zip"]
)
def test_garbage_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        train.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint_error(tmp_path: Path, trained_digits_cnn: nn.Module) -> None:
    path = tmp_path / "ck.pt"
    train.save_checkpoint(path, trained_digits_cnn)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError) as info:
        train.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_non_checkpoint_torch_file_error(tmp_path: Path, trained_digits_cnn: nn.Module) -> None:
    path = tmp_path / "sd.pt"
    torch.save(trained_digits_cnn.state_dict(), path)  # a bare state dict: no architecture
    with pytest.raises(CheckpointError, match="not an rlprune checkpoint") as info:
        train.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_bare_pickled_module_loads(tmp_path: Path, digits: data.Splits) -> None:
    path = tmp_path / "bare.pt"
    model = UserNet().eval()
    torch.save(model, path)
    loaded, meta = train.load_checkpoint(path)
    assert meta == {}
    with torch.no_grad():
        assert torch.equal(loaded(digits.test.x[:5]), model(digits.test.x[:5]))


def test_cached_builds_once_and_rebuilds_corrupt(
    tmp_path: Path, trained_digits_cnn: nn.Module
) -> None:
    path = tmp_path / "cache.pt"
    builds = []

    def build() -> tuple[nn.Module, dict[str, object]]:
        builds.append(1)
        return trained_digits_cnn, {"n": len(builds)}

    assert train.cached(path, build)[1] == {"n": 1}
    assert train.cached(path, build)[1] == {"n": 1}  # loaded, not rebuilt
    path.write_bytes(b"corrupt")
    assert train.cached(path, build)[1] == {"n": 2}
    assert len(builds) == 2


# ----------------------------------------------------------------------------- devices
def test_compute_device_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLPRUNE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert train.compute_device().type == expected
    assert train.compute_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("RLPRUNE_DEVICE", "cpu")
    assert train.compute_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        train.compute_device("gpu0")
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        train.compute_device("meta")
    if not torch.cuda.is_available():
        monkeypatch.setenv("RLPRUNE_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            train.compute_device()


class _RecordingNet(nn.Module):
    """Records every ``.to`` call instead of moving anything."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.moves: list[object] = []

    def to(self, *args: object, **kwargs: object) -> _RecordingNet:  # type: ignore[override]
        self.moves.append(args[0] if args else kwargs)
        return self


def test_on_device_moves_there_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _RecordingNet()
    monkeypatch.setattr(train, "compute_device", lambda device=None: torch.device("cuda"))
    with pytest.raises(RuntimeError, match="boom"), train._on_device(net, None) as dev:
        assert dev == torch.device("cuda")
        assert net.moves == [torch.device("cuda")]
        raise RuntimeError("boom")
    assert net.moves == [torch.device("cuda"), torch.device("cpu")]  # back even on error
    net.moves.clear()
    monkeypatch.setattr(train, "compute_device", lambda device=None: torch.device("cpu"))
    with train._on_device(net, None):
        pass
    assert net.moves == []  # already there: no copies


def test_cpu_device_keeps_parameters_in_place(digits: data.Splits) -> None:
    model = fresh_cnn()
    ids = [id(p) for p in model.parameters()]
    acc = train.evaluate(model, digits.test.x, digits.test.y, device="cpu")
    train.fit(model, digits, epochs=1, max_steps=2, progress=False, device="cpu")
    assert [id(p) for p in model.parameters()] == ids
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert 0.0 <= acc <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scores_like_cpu_and_model_comes_back(
    digits: data.Splits, trained_digits_cnn: nn.Module
) -> None:
    model = copy.deepcopy(trained_digits_cnn)
    cpu = train.evaluate(model, digits.test.x, digits.test.y, device="cpu")
    gpu = train.evaluate(model, digits.test.x, digits.test.y, device="cuda")
    assert abs(cpu - gpu) < 0.01
    train.fit(model, digits, epochs=1, max_steps=3, progress=False, device="cuda")
    assert train.recalibrate_bn(model, digits.train.x[:64], device="cuda")
    train.finetune_steps(model, digits.train, 2, device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())
