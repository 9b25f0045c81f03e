"""Streamed data: ``DatasetSplit``, ``from_datasets`` and every reader of a split.

Issue #14, section 1: ``prune``/``compare``/``fit`` accept ``torch.utils.data`` Datasets
and DataLoaders, read batch by batch. These tests check that a streamed split reads
only what it is asked for (lazily, one batch at a time; racing reads only the stages it
scores), carves the reward split by indices exactly as the tensor path does, scores a
candidate exactly as the tensor path does when it holds the same samples, leaves the
global RNG alone, and turns bad datasets into one clear error.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

import rlprune
from rlprune import api, data, models, train
from rlprune.costs import Budget
from rlprune.data import DataError, DatasetSplit, Split
from rlprune.evaluate import EvalOptions, Evaluator
from rlprune.space import PruningSpace

BUDGET = "params<=0.5"


class Counting(Dataset[tuple[torch.Tensor, int]]):
    """``(x[i], y[i])`` pairs that record every index read; ``targets`` optional."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, targets: bool = True):
        self.x, self.y, self.reads = x, y, []
        self._targets = targets

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads.append(int(i))
        return self.x[i], int(self.y[i])

    def __getattr__(self, name: str) -> Any:
        if name == "targets" and self.__dict__.get("_targets"):
            return self.y.tolist()
        raise AttributeError(name)


def pool(digits: data.Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits training pool (train + reward), in its original row order."""
    x = torch.cat([digits.train.x, digits.reward.x])
    y = torch.cat([digits.train.y, digits.reward.y])
    return x, y


@pytest.fixture(scope="module")
def whole(digits: data.Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits pool with reward_fraction=0: rows in the order from_tensors carves."""
    w = data.load("digits", reward_fraction=0.0)
    assert isinstance(w.train, Split)
    return w.train.x, w.train.y


# ------------------------------------------------------------------ the split itself
def test_batches_are_read_lazily_and_cover_the_split_once() -> None:
    x, y = torch.randn(1000, 1, 4, 4), torch.randint(0, 5, (1000,))
    ds = Counting(x, y)
    split = DatasetSplit(ds)
    it = split.batches(100)
    xb, yb = next(it)
    assert len(ds.reads) == 100  # one batch read, nothing more
    assert torch.equal(xb, x[:100]) and torch.equal(yb, y[:100])
    rest = list(it)
    assert sorted(ds.reads) == list(range(1000))  # every sample exactly once
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert [len(b[1]) for b in rest] == [100] * 9

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.cat([b for _, b in split.batches(64, shuffle=True, generator=g1)])
    b = torch.cat([b for _, b in split.batches(64, shuffle=True, generator=g2)])
    assert torch.equal(a, b) and not torch.equal(a, y)  # seeded, and shuffled
    assert torch.equal(a.sort().values, y.sort().values)


def test_head_part_and_take_read_only_what_they_name() -> None:
    x, y = torch.randn(500, 3), torch.randint(0, 3, (500,))
    ds = Counting(x, y)
    split = DatasetSplit(ds, indices=torch.arange(499, -1, -1))  # reversed order
    head, part = split.head(40), split.part(100, 130)
    assert len(head) == 40 and len(part) == 30 and ds.reads == []  # nothing read yet
    xt, yt = part.take(1000)
    want = torch.arange(399, 369, -1)
    assert torch.equal(xt, x[want]) and torch.equal(yt, y[want])
    assert sorted(ds.reads) == list(range(370, 400))
    assert split.label_range() == (int(y.min()), int(y.max()))
    assert split.input_shape == (3,)
    assert DatasetSplit(ds, indices=[]).take(5)[0].shape == (0, 3)


def test_the_global_rng_is_left_alone() -> None:
    split = DatasetSplit(TensorDataset(torch.randn(300, 2), torch.randint(0, 2, (300,))))
    state = torch.get_rng_state()
    for _ in split.batches(50, shuffle=True, generator=torch.Generator().manual_seed(0)):
        pass
    for _ in split.batches(50):
        pass
    assert torch.equal(state, torch.get_rng_state())


def test_labels_come_from_targets_through_a_subset() -> None:
    x, y = torch.randn(20, 2), torch.arange(20) % 4
    base = Counting(x, y)
    sub = Subset(base, [3, 7, 11])
    split = DatasetSplit(sub)
    assert split.label_range() == (3, 3)
    assert DatasetSplit(Counting(x, y, targets=False)).label_range() is None


# ---------------------------------------------------------------- from_datasets
def test_reward_split_is_carved_by_the_same_indices_in_random_order(
        digits: data.Splits, whole: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = whole
    x_te, y_te = digits.test.x, digits.test.y
    streamed = data.from_datasets(TensorDataset(x, y), test=TensorDataset(x_te, y_te),
                                  reward_fraction=0.1, seed=0)
    tensors = data.from_tensors(x, y, x_te, y_te, reward_fraction=0.1, seed=0)
    assert isinstance(streamed.reward, DatasetSplit) and isinstance(tensors.reward, Split)
    r_idx, t_idx = streamed.reward.indices, streamed.train.indices
    # the same samples as the tensor path: its rows are these indices, sorted
    assert torch.equal(x[r_idx.sort().values], tensors.reward.x)
    assert torch.equal(x[t_idx.sort().values], tensors.train.x)
    # a partition of the training set, in a random (not sorted) order
    assert torch.equal(torch.cat([r_idx, t_idx]).sort().values, torch.arange(len(y)))
    assert not torch.equal(r_idx, r_idx.sort().values)
    # fixed by the seed
    again = data.from_datasets(TensorDataset(x, y), reward_fraction=0.1, seed=0)
    other = data.from_datasets(TensorDataset(x, y), reward_fraction=0.1, seed=1)
    assert isinstance(again.reward, DatasetSplit) and isinstance(other.reward, DatasetSplit)
    assert torch.equal(again.reward.indices, r_idx)
    assert not torch.equal(other.reward.indices.sort().values, r_idx.sort().values)
    assert streamed.streamed and not tensors.streamed
    assert streamed.num_classes == 10 and streamed.input_shape == (1, 8, 8)
    assert len(streamed.test) == len(y_te) and len(again.test) == 0


def test_num_classes_from_classes_targets_or_one_pass() -> None:
    x, y = torch.randn(60, 2), torch.arange(60) % 3
    with_targets = data.from_datasets(Counting(x, y), progress=False)
    assert with_targets.num_classes == 3
    ds = Counting(x, y, targets=False)
    scanned = data.from_datasets(ds, progress=False)
    assert scanned.num_classes == 3 and sorted(set(ds.reads)) == list(range(60))
    ds.classes = ["a", "b", "c", "d", "e"]  # type: ignore[attr-defined]
    assert data.from_datasets(ds, progress=False).num_classes == 5


def test_an_explicit_reward_dataset_is_used_whole(digits: data.Splits) -> None:
    x, y = pool(digits)
    rx, ry = digits.test.x[:100], digits.test.y[:100]
    s = data.as_splits({"train": TensorDataset(x, y), "reward": TensorDataset(rx, ry)})
    assert len(s.train) == len(y) and len(s.reward) == 100 and len(s.test) == 0
    assert isinstance(s.reward, DatasetSplit)
    assert torch.equal(s.reward.indices.sort().values, torch.arange(100))


def test_a_dataloader_lends_its_dataset_and_workers_not_its_batches(
        digits: data.Splits) -> None:
    x, y = pool(digits)
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True, num_workers=0)
    s = data.as_splits(loader)
    assert isinstance(s.train, DatasetSplit) and s.train.dataset is loader.dataset
    assert [len(b) for _, b in s.reward.batches(100)][0] == 100


# ------------------------------------------------------------ readers of a split
def test_evaluate_on_a_stream_equals_the_tensors(digits: data.Splits,
                                                 trained_digits_cnn: nn.Module) -> None:
    x, y = digits.test.x, digits.test.y
    ref = train.evaluate(trained_digits_cnn, x, y)
    ds = TensorDataset(x, y)
    assert train.evaluate(trained_digits_cnn, DatasetSplit(ds)) == ref
    assert train.evaluate(trained_digits_cnn, DataLoader(ds, batch_size=5), batch_size=33) == ref
    assert train.evaluate(trained_digits_cnn, digits.test) == ref
    wrong = (y + 1) % 10
    assert train.evaluate(trained_digits_cnn, TensorDataset(x, wrong)) != ref
    with pytest.raises(TypeError, match="labels"):
        train.evaluate(trained_digits_cnn, x)


def test_bn_recalibration_from_a_stream_equals_the_tensors(
        digits: data.Splits, trained_digits_cnn: nn.Module) -> None:
    a, b = copy.deepcopy(trained_digits_cnn), copy.deepcopy(trained_digits_cnn)
    xs = digits.train.x[:300]
    assert train.recalibrate_bn(a, xs, batch_size=64)
    assert train.recalibrate_bn(b, TensorDataset(xs, digits.train.y[:300]), batch_size=64)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k


def streamed_copy(splits: data.Splits) -> data.Splits:
    """The same samples in the same order, each split streamed from a TensorDataset."""
    def s(split: Split | DatasetSplit) -> DatasetSplit:
        assert isinstance(split, Split)
        return DatasetSplit(TensorDataset(split.x, split.y), num_classes=splits.num_classes)

    return data.Splits(train=s(splits.train), reward=s(splits.reward), test=s(splits.test),
                       num_classes=splits.num_classes, input_shape=splits.input_shape,
                       name=splits.name)


def test_a_candidate_scores_the_same_streamed_or_in_memory(
        digits: data.Splits, trained_digits_cnn: nn.Module) -> None:
    model = trained_digits_cnn
    ex = digits.example_input(1)
    space = PruningSpace.from_model(model, ex)
    bound = Budget.parse(BUDGET).bind(model, ex)
    opts = EvalOptions(finetune_steps=3)
    mem = Evaluator(model, space, bound, digits, opts)
    st = Evaluator(model, space, bound, streamed_copy(digits), opts)
    assert st.original_accuracy == mem.original_accuracy
    for p in (0.2, 0.5):
        policy = np.full(len(space), p) * space.max_policy()
        a, b = mem.score(policy), st.score(policy)
        assert a.accuracy == b.accuracy and a.costs == b.costs
        # the same BatchNorm samples and fine-tuning batches: the same weights, bit for bit
        built = mem.build(policy).state_dict(), st.build(policy).state_dict()
        assert all(torch.equal(v, built[1][k]) for k, v in built[0].items())


def test_racing_reads_only_the_stages_it_scores(digits: data.Splits,
                                                trained_digits_cnn: nn.Module) -> None:
    x, y = pool(digits)
    ds = Counting(x, y)
    splits = data.from_datasets(ds, reward_fraction=0.3, seed=0)  # 431 reward samples
    model = trained_digits_cnn
    ex = splits.example_input(1)
    space = PruningSpace.from_model(model, ex)
    ev = Evaluator(model, space, Budget.parse("params<=1.0").bind(model, ex), splits,
                   EvalOptions(bn_samples=64))
    assert isinstance(splits.reward, DatasetSplit)
    reward_idx = set(splits.reward.indices.tolist())
    assert ev.evaluate(np.zeros(len(space))).extra.get("raced") is None  # the best so far
    ds.reads.clear()
    bad = ev.evaluate(space.max_policy())  # far worse: stops after the first quarter
    assert bad.extra.get("raced") and bad.extra["scored_samples"] == len(reward_idx) // 4
    from_reward = [i for i in ds.reads if i in reward_idx]
    assert len(from_reward) == bad.extra["scored_samples"]
    assert from_reward == splits.reward.indices[: len(from_reward)].tolist()
    # BatchNorm samples were read once, at construction, not again per candidate
    assert len(ds.reads) == len(from_reward)


def test_an_evaluator_over_a_stream_pickles(digits: data.Splits,
                                            trained_digits_cnn: nn.Module) -> None:
    x, y = pool(digits)
    splits = data.from_datasets(TensorDataset(x, y), seed=0)
    env = api.make_env(trained_digits_cnn, splits, Budget.parse(BUDGET).bind(
        trained_digits_cnn, splits.example_input(1)), "uniform")
    ev = env.evaluator
    twin = pickle.loads(pickle.dumps(ev))
    policy = np.full(ev.T, 0.3) * ev.caps
    assert twin.score(policy).accuracy == ev.score(policy).accuracy


# ----------------------------------------------------------------- the one-call API
def test_prune_accepts_datasets_and_meets_the_budget(digits: data.Splits,
                                                     trained_digits_cnn: nn.Module) -> None:
    x, y = pool(digits)
    test = TensorDataset(digits.test.x, digits.test.y)
    res = rlprune.prune(trained_digits_cnn, (TensorDataset(x, y), test), BUDGET,
                        method="uniform", finetune_epochs=1, progress=False)
    assert res.feasible and res.costs["params"]["pruned"] <= res.costs["params"]["limit"]
    assert res.accuracy["original"] == train.evaluate(trained_digits_cnn, digits.test.x,
                                                      digits.test.y)
    assert res.accuracy["pruned"] == train.evaluate(res.model, digits.test.x, digits.test.y)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    res2 = rlprune.prune(trained_digits_cnn, loader, BUDGET, method="uniform", progress=False)
    assert res2.feasible and "original" not in res2.accuracy  # no test split given


def test_a_streamed_search_is_reproducible(digits: data.Splits,
                                           trained_digits_cnn: nn.Module) -> None:
    x, y = pool(digits)

    def run() -> list[tuple[list[float], float]]:
        res = rlprune.prune(trained_digits_cnn, TensorDataset(x, y), BUDGET, method="cpl",
                            episodes=4, seed=3, progress=False)
        return [(c.policy, c.accuracy) for c in res.history.candidates]

    first = run()
    assert len(first) >= 4 and first == run()


def test_compare_and_fit_accept_datasets(digits: data.Splits) -> None:
    x, y = pool(digits)
    torch.manual_seed(0)
    model = models.create("digits_cnn", 10, 1)
    curves = train.fit(model, (TensorDataset(x, y), TensorDataset(digits.test.x, digits.test.y)),
                       epochs=3, progress=False)
    assert len(curves["reward_acc"]) == 3 and curves["reward_acc"][-1] > 0.5
    results = rlprune.compare(model, TensorDataset(x, y), BUDGET, methods=["uniform", "global"],
                              progress=False)
    assert [r.method for r in results] == ["uniform", "global"]
    assert all(r.feasible for r in results)


# --------------------------------------------------------------------------- errors
class OnlyInputs(Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3)


class Stream(IterableDataset[tuple[torch.Tensor, int]]):
    def __iter__(self) -> Any:
        return iter([(torch.zeros(2), 0)])


def test_datasets_that_cannot_work_are_one_clear_error(trained_digits_cnn: nn.Module) -> None:
    with pytest.raises(DataError, match="IterableDataset.*map-style"):
        data.from_datasets(Stream())
    with pytest.raises(DataError, match=r"\(input, label\) pairs"):
        data.from_datasets(OnlyInputs(), num_classes=2)
    with pytest.raises(DataError, match="training dataset is empty"):
        data.from_datasets(TensorDataset(torch.zeros(0, 2), torch.zeros(0)))
    with pytest.raises(ValueError, match="too few for reward_fraction"):
        data.from_datasets(TensorDataset(torch.zeros(1, 2), torch.zeros(1)))
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        data.as_splits({"train": torch.zeros(3)})
    x, y = torch.randn(40, 2), torch.arange(40) % 4
    # labels stated by targets: refused before anything is read
    with pytest.raises(DataError, match="label 3, out of range.*0..2"):
        data.from_datasets(Counting(x, y), num_classes=3)
    # labels not stated: refused on the batch that holds one, naming the sample
    s = data.from_datasets(Counting(x, y, targets=False), num_classes=3, reward_fraction=0.5)
    with pytest.raises(DataError, match=r"label 3 of sample \d+ of the (train|reward) split"):
        train.evaluate(trained_digits_cnn, s.reward)
    bad_x = x.clone()
    bad_x[5, 0] = float("nan")
    s = data.from_datasets(Counting(bad_x, y), reward_fraction=0.5)
    with pytest.raises(DataError, match="NaN or inf"):
        for split in (s.train, s.reward):
            list(split.batches(64))
    with pytest.raises(DataError, match="differ in shape"):
        data.from_datasets(Counting(x, y), test=Counting(torch.randn(5, 3), y[:5]))


def test_a_model_with_fewer_outputs_than_unstated_classes(digits: data.Splits) -> None:
    x, y = pool(digits)
    four = models.create("digits_cnn", 4, 1)
    s = data.from_datasets(Counting(x, y, targets=False), num_classes=10)
    with pytest.raises(ValueError, match="outputs 4 classes but .* has 10"):
        api.check_inputs(four, s)
