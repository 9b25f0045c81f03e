"""The candidate evaluator: one pruning policy in, one scored and measured candidate out.

Every method, RL agent or baseline, asks the same :class:`Evaluator` about a policy
(one prune ratio per entry of the :class:`~rlprune.space.PruningSpace`):

1. the policy is applied to a copy of the trained model (never to the model itself);
2. BatchNorm statistics are re-estimated on ``bn_samples`` training inputs (adaptive
   BN: the pruned network's activations no longer match the stored statistics);
3. optionally ``finetune_steps`` SGD steps on the train split;
4. top-1 accuracy on the ``reward`` split (never on ``test``) and every constraint of
   the bound budget, measured on the pruned copy itself;
5. the terminal reward of the configured scheme (:mod:`rlprune.rewards`).

:meth:`Evaluator.score` does 1-5 and nothing else: a pure function of the policy.
:meth:`Evaluator.evaluate` adds the bookkeeping of a search around it: a policy seen
before is taken from the history instead of being scored again (cache), a resumed
search is handed back the candidates of its log (replay), and every new candidate is
appended to the :class:`~rlprune.history.History`.

The evaluator is built from plain data (the model, its space, a
:class:`~rlprune.costs.BoundBudget` whose limits are already absolute, the data
splits, :class:`EvalOptions` and a registered reward scheme), so it pickles and can
score candidates in another process or on another machine. :meth:`Evaluator.prefetch`
scores a batch of policies a method knows it will ask for (on ``Evaluator.workers``,
a :class:`~rlprune.workers.Workers` pool, when one is set); the method then asks for
them one by one with :meth:`Evaluator.evaluate` as always, and they are recorded in
that order. Every candidate of a batch races against the best candidate known before
the batch, so the answers do not depend on which worker finished first.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from rlprune.costs import BoundBudget, ExampleInput, count_macs
from rlprune.data import DatasetSplit, Split, Splits
from rlprune.history import Candidate, History, policy_key
from rlprune.projection import bisect_boundary, project, uniform_policy
from rlprune.rewards import DENSE_SCHEMES, RewardContext, RewardFn, get_reward
from rlprune.space import PruningSpace
from rlprune.train import evaluate as top1
from rlprune.train import finetune_steps, recalibrate_bn
from rlprune.workers import Workers

__all__ = ["EvalOptions", "Evaluator", "REPAIRS"]

#: What an episode may score instead of an out-of-budget or slack policy (see
#: :meth:`Evaluator.repair`).
REPAIRS = ("none", "project", "boundary")
#: Fractions of the reward samples after which a raced candidate may stop scoring.
RACE_STAGES = (0.25, 0.5)
#: Reward splits smaller than this are always scored whole (racing would be noise).
RACE_MIN_SAMPLES = 200


def _probe(reward: float, accuracy: float) -> Candidate:
    """A stand-in candidate, only for ranking a (reward, accuracy) pair."""
    return Candidate(index=-1, episode=0, policy=[], reward=reward, accuracy=accuracy,
                     costs={}, cost_ratios=[], feasible=True)


@dataclass(frozen=True)
class EvalOptions:
    """How a candidate is scored (every field is a plain number, so options pickle)."""

    bn_samples: int = 256
    """Training inputs used to re-estimate BatchNorm statistics of each candidate."""
    finetune_steps: int = 0
    """SGD steps of fine-tuning of each candidate before it is scored (0: none)."""
    finetune_lr: float = 0.01
    """Learning rate of that fine-tuning."""
    eval_batch_size: int = 1024
    """Batch size of scoring on the reward split."""
    reward_samples: int | None = None
    """Score candidates on the first ``reward_samples`` of the reward split only."""
    dense_samples: int | None = 1000
    """Samples scoring the per-layer rewards of dense schemes (``None``: all)."""
    seed: int = 0
    """Seed of the in-search fine-tune's batch order."""
    race_z: float | None = 2.0
    """Racing (``None``: off). A search's candidate is scored on the first quarter of the
    reward samples, then half, then all; it stops early once its accuracy, ``race_z``
    standard errors above what the scored part shows, could not beat the best feasible
    candidate so far. Such a candidate keeps its partial accuracy (``extra['raced']``);
    the best candidate is always scored on every sample."""

    def __post_init__(self) -> None:
        if self.bn_samples < 0:
            raise ValueError(f"bn_samples must be >= 0, got {self.bn_samples}")
        if self.race_z is not None and not (math.isfinite(self.race_z) and self.race_z > 0):
            raise ValueError(f"race_z must be a positive number or None, got {self.race_z}")
        for name in ("reward_samples", "dense_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")


class Evaluator:
    """Scores pruning policies of one model under one bound budget (module docstring).

    ``model`` is copied once (the caller's model is never touched, not even put in
    eval mode). ``bound`` must be a :class:`~rlprune.costs.BoundBudget`: limits are
    resolved once per run, by the caller, and used unchanged by every evaluation,
    projection and final check. ``history`` (optional) is where candidates are
    recorded; pass the history of a logged run and call :meth:`enable_replay` to
    resume it. ``space`` is the pruning space of ``model``, ``splits`` the data (the
    reward split scores, the training split feeds BatchNorm re-estimation), ``options``
    the :class:`EvalOptions`, ``reward`` the reward scheme (a name or function, see
    :mod:`rlprune.rewards`) with its ``reward_options``, and ``example_input`` the batch
    costs are measured on (default: one training input).
    """

    def __init__(
        self,
        model: nn.Module,
        space: PruningSpace,
        bound: BoundBudget,
        splits: Splits,
        options: EvalOptions | None = None,
        reward: str | RewardFn = "terminal_accuracy",
        reward_options: dict[str, float] | None = None,
        example_input: ExampleInput | None = None,
        history: History | None = None,
    ):
        if not isinstance(bound, BoundBudget):
            raise TypeError(
                "Evaluator needs a BoundBudget (limits resolved once per run): pass "
                f"Budget.bind(model, example_input), got {type(bound).__name__}"
            )
        self.model = copy.deepcopy(model).eval()
        self.space = space
        self.bound = bound
        self.splits = splits
        self.options = options if options is not None else EvalOptions()
        self.reward_name, self.reward_fn = get_reward(reward)
        self.dense = self.reward_name in DENSE_SCHEMES
        self.example_input = (
            example_input if example_input is not None else splits.example_input(1)
        )
        self.T = len(space)
        self.caps = np.asarray(space.max_policy(), dtype=np.float64)

        opt = self.options
        scoring = splits.reward
        if len(scoring) == 0:
            raise ValueError("the reward split is empty: use reward_fraction > 0")
        if opt.reward_samples is not None:
            scoring = scoring.head(opt.reward_samples)
        # the samples that score candidates: in memory, views of the split's tensors;
        # streamed, index ranges read batch by batch for each score
        self._reward: Split | DatasetSplit = scoring
        n_dense = len(scoring) if opt.dense_samples is None else min(opt.dense_samples,
                                                                      len(scoring))
        self._dense: Split | DatasetSplit = scoring.head(n_dense)
        # a fixed, bounded batch of training inputs, read once
        self._bn_x = splits.train.take(opt.bn_samples)[0]
        self.original_accuracy = top1(self.model, scoring, batch_size=opt.eval_batch_size)

        ropts = dict(reward_options or {})
        ropts.setdefault("original_flops", 2.0 * count_macs(self.model, self.example_input))
        self.reward_options = ropts
        self._w_params = np.array([max(e.params, 1) for e in space.entries], np.float64)
        self.limit_fractions = self._limit_fractions()
        self.target_sparsity = (
            float(ropts["target_sparsity"]) if "target_sparsity" in ropts
            else float(max(1.0 - self.limit_fractions.min(), 0.0))
        )

        self.history = history if history is not None else History()
        if self.dense:
            self.history.rank = "accuracy"
        self._replay: dict[tuple[float, ...], int] = {}
        self._start = time.perf_counter()
        #: What the evaluations spent: models built, reward-split samples scored
        #: (forward passes of one sample) and BN re-estimation samples.
        self.spent = {"built": 0, "reward_samples": 0, "bn_samples": 0}
        #: Where :meth:`prefetch` scores a batch (``None``: in this process).
        self.workers: Workers | None = None
        #: How many candidates a method proposes together (one :meth:`prefetch` batch).
        #: It is part of the search's definition (a batch races against the best
        #: candidate known before it), so a seed and ``parallel`` fix the answers
        #: whatever ``workers`` runs them.
        self.parallel = 1
        self._prefetched: dict[tuple[float, ...], Candidate] = {}

    # ------------------------------------------------------------ budget facts
    @property
    def constraint_names(self) -> list[str]:
        """The budget's constraints, in the order of every cost vector."""
        return list(self.bound.names)

    def _limit_fractions(self) -> np.ndarray:
        """Each constraint's limit as a fraction of the original value (at most 1)."""
        out = []
        for name in self.bound.names:
            orig, lim = self.bound.original[name], self.bound.limits[name]
            out.append(min(lim / orig, 1.0) if orig > 0 else 1.0)
        return np.asarray(out, dtype=np.float64)

    def sparsity(self, policy: Sequence[float] | np.ndarray) -> float:
        """Fraction of the prunable parameters that ``policy`` removes (analytic)."""
        w = self._w_params
        return float((w * np.asarray(policy, dtype=np.float64)).sum() / w.sum())

    def context(self, step: int, accuracy: float, policy: Sequence[float] | np.ndarray,
                macs_ratio: float = 1.0) -> RewardContext:
        """What the reward scheme sees after pruning entries ``0`` to ``step`` with
        ``policy``: the candidate's reward-split ``accuracy`` and ``macs_ratio`` (its MACs
        over the original's)."""
        return RewardContext(step=step, num_steps=self.T, terminal=step == self.T - 1,
                             accuracy=accuracy, original_accuracy=self.original_accuracy,
                             sparsity=self.sparsity(policy),
                             target_sparsity=self.target_sparsity, macs_ratio=macs_ratio,
                             options=self.reward_options)

    # ---------------------------------------------------------------- scoring
    def build(self, policy: Sequence[float] | np.ndarray, finetune: bool = True) -> nn.Module:
        """The pruned copy of the model under ``policy``, its BatchNorm statistics
        re-estimated on ``bn_samples`` training inputs, and (if configured and
        ``finetune``) briefly fine-tuned."""
        pruned = self.space.apply(self.model, np.asarray(policy, dtype=np.float64))
        self.recalibrate(pruned)
        opt = self.options
        if finetune and opt.finetune_steps > 0:
            finetune_steps(pruned, self.splits.train, opt.finetune_steps, lr=opt.finetune_lr,
                           seed=opt.seed, augmentation=self.splits.augmentation,
                           keep_zeros=self.space.granularity == "weight")
        return pruned

    def recalibrate(self, model: nn.Module) -> None:
        """Re-estimate ``model``'s BatchNorm statistics (in place) as for every candidate."""
        self.spent["built"] += 1
        if recalibrate_bn(model, self._bn_x):
            self.spent["bn_samples"] += len(self._bn_x)

    def accuracy(self, model: nn.Module, dense: bool = False) -> float:
        """Top-1 of ``model`` on the reward split (on its first ``dense_samples`` when
        ``dense``)."""
        split = self._dense if dense else self._reward
        self.spent["reward_samples"] += len(split)
        return top1(model, split, batch_size=self.options.eval_batch_size)

    def score_model(self, model: nn.Module) -> tuple[nn.Module, Candidate]:
        """Score a model pruned elsewhere (e.g. by another library) as a candidate is.

        A copy of ``model`` gets its BatchNorm statistics re-estimated, is scored on the
        reward split and measured against the bound budget. Returns that copy and an
        unrecorded :class:`~rlprune.history.Candidate` (its ``policy`` is empty: the
        model does not come from this space).
        """
        pruned = copy.deepcopy(model).eval()
        self.recalibrate(pruned)
        costs = self.bound.measure(pruned)
        ratios = [costs[n] / self.bound.limits[n] for n in self.bound.names]
        acc = self.accuracy(pruned)
        return pruned, Candidate(index=-1, episode=0, policy=[], reward=acc, accuracy=acc,
                                 costs={k: float(v) for k, v in costs.items()},
                                 cost_ratios=[float(r) for r in ratios],
                                 feasible=all(r <= 1.0 for r in ratios),
                                 extra={"macs_ratio": self.macs_ratio(pruned)})

    def dense_accuracy(self, policy: Sequence[float] | np.ndarray) -> float:
        """Accuracy of a partly chosen policy, for per-step rewards (not recorded)."""
        return self.accuracy(self.build(policy, finetune=False), dense=True)

    def macs_ratio(self, pruned: nn.Module) -> float:
        """MACs of ``pruned`` over the original's."""
        orig = self.reward_options["original_flops"] / 2.0
        return float(count_macs(pruned, self.example_input) / orig) if orig > 0 else 1.0

    def cost_ratios(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """Constraint values / limits of the pruned policy, without scoring accuracy."""
        pruned = self.space.apply(self.model, np.asarray(policy, dtype=np.float64))
        return np.asarray(self.bound.ratios(pruned), dtype=np.float64)

    def _clip(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        pol = np.clip(np.asarray(policy, dtype=np.float64).reshape(-1), 0.0, self.caps)
        if pol.shape[0] != self.T:
            raise ValueError(f"policy has {pol.shape[0]} ratios, the space has {self.T} layers")
        return pol

    def score(self, policy: Sequence[float] | np.ndarray, episode: int = 0,
              beat: Candidate | None = None) -> Candidate:
        """Build, score and measure one policy; nothing is cached or recorded.

        With ``beat`` (a fully scored candidate) and racing on (``options.race_z``),
        scoring stops early once this candidate cannot outrank ``beat``
        (:meth:`raced_accuracy`). The candidate's ``index`` and ``time`` are filled in
        by :meth:`evaluate`; ``episode`` is recorded on it.
        """
        pol = self._clip(policy)
        pruned = self.build(pol)
        costs = self.bound.measure(pruned, taped=False)  # the candidate log keeps these
        ratios = [costs[n] / self.bound.limits[n] for n in self.bound.names]
        macs_ratio = self.macs_ratio(pruned)

        def reward_at(acc: float) -> float:
            if self.dense:
                return acc
            return float(self.reward_fn(self.context(self.T - 1, acc, pol, macs_ratio)))

        beaten: Callable[[float, float], bool] | None = None
        if beat is not None:
            target = self.history.key(beat)

            def cannot_win(upper: float, partial: float) -> bool:
                return all(self.history.key(_probe(reward_at(a), a)) < target
                           for a in (upper, partial))

            beaten = cannot_win

        acc, n_scored = self.raced_accuracy(pruned, beaten)
        extra: dict[str, Any] = {"macs_ratio": macs_ratio}
        if n_scored < len(self._reward):
            extra.update(raced=True, scored_samples=n_scored)
        return Candidate(index=-1, episode=episode, policy=[float(p) for p in pol],
                         reward=reward_at(acc), accuracy=acc,
                         costs={k: float(v) for k, v in costs.items()},
                         cost_ratios=[float(r) for r in ratios],
                         feasible=all(r <= 1.0 for r in ratios), extra=extra)

    def raced_accuracy(self, model: nn.Module,
                       beaten: Callable[[float, float], bool] | None = None
                       ) -> tuple[float, int]:
        """Reward-split accuracy of ``model`` scored in stages, and the samples scored.

        Without ``beaten`` or with racing off, every reward sample is scored. Otherwise
        the first quarter, then half of the samples are scored; after each stage, with
        ``p`` the accuracy so far on ``n`` of ``N`` samples, the accuracy on all ``N`` is
        at most ``upper = p + z * sqrt(p (1 - p) / n * (N - n) / (N - 1))`` (``z`` =
        ``options.race_z`` standard errors, finite-population corrected, with ``p (1 -
        p)`` floored at ``1 / n`` so that a perfect or null score so far is not taken as
        certain), and scoring stops when ``beaten(upper, p)`` says the candidate cannot
        win anyway. Splits of
        fewer than ``RACE_MIN_SAMPLES`` samples are always scored whole.
        """
        reward = self._reward
        n_all = len(reward)
        z = self.options.race_z
        if beaten is None or z is None or n_all < RACE_MIN_SAMPLES:
            return self.accuracy(model), n_all
        bs = self.options.eval_batch_size
        correct, done = 0, 0
        for end in (*(int(n_all * f) for f in RACE_STAGES), n_all):
            if end <= done:
                continue
            correct += round(top1(model, reward.part(done, end), batch_size=bs) * (end - done))
            self.spent["reward_samples"] += end - done
            done = end
            if done == n_all:
                break
            p = correct / done
            var = max(p * (1.0 - p), 1.0 / done)
            upper = min(p + z * math.sqrt(var / done * (n_all - done) / (n_all - 1)), 1.0)
            if beaten(upper, p):
                return p, done
        return correct / n_all, n_all

    def evaluate(self, policy: Sequence[float] | np.ndarray, episode: int = 0) -> Candidate:
        """Score one policy on the reward split and record it in ``history``.

        A policy evaluated before (same ratios) is taken from the history's cache and
        recorded again with ``extra['cached'] = True`` instead of being re-scored;
        while replaying a resumed run, a logged policy is handed back unrecorded.
        The history's ``tags`` (e.g. an agent's multipliers) go into ``extra``, and
        ``episode`` is recorded on the candidate.
        """
        pol = self._clip(policy)
        tags = dict(self.history.tags)
        prev = self.history.lookup(pol)
        key = policy_key(pol)
        if prev is not None and self._replay.get(key, 0) > 0:
            self._replay[key] -= 1
            return prev
        now = time.perf_counter() - self._start
        if prev is not None:
            cand = Candidate(index=len(self.history), episode=episode, policy=list(prev.policy),
                             reward=prev.reward, accuracy=prev.accuracy, costs=dict(prev.costs),
                             cost_ratios=list(prev.cost_ratios), feasible=prev.feasible,
                             time=now, extra={**prev.extra, **tags, "cached": True})
            return self.history.add(cand)
        found: Candidate | None = self._prefetched.pop(key, None)
        if found is not None:
            cand = found
        else:
            beat = self.history.best if self.options.race_z is not None else None
            cand = self.score(pol, episode, beat=beat)
        cand.episode = episode
        cand.index = len(self.history)
        cand.time = time.perf_counter() - self._start
        cand.extra = {**tags, **cand.extra}
        return self.history.add(cand)

    def repair(self, policy: Sequence[float] | np.ndarray, mode: str
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """The policy an episode that chose ``policy`` scores under the repair ``mode``
        (:data:`REPAIRS`), and the chosen policy's own cost ratios (``None`` for
        ``"none"``, which repairs nothing). A repair that moves
        the policy by less than ``np.allclose`` sees returns ``policy`` itself."""
        pol = np.asarray(policy, dtype=np.float64)
        if mode not in REPAIRS:
            raise ValueError(f"repair must be one of {', '.join(REPAIRS)}, got {mode!r}")
        if mode == "none":
            return pol, None
        raw = self.cost_ratios(pol)
        fixed = pol
        if mode == "boundary":
            fixed = self.to_boundary(pol)
        elif np.any(raw > 1.0):
            fixed = self.project(pol)
        fixed = np.asarray(fixed, dtype=np.float64)
        return (pol if np.allclose(fixed, pol) else fixed), raw

    def prefetch(self, policies: Sequence[Sequence[float] | np.ndarray],
                 episodes: Sequence[int] | None = None, repair: str = "none"
                 ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Score ``policies`` together (on ``workers`` if set) for :meth:`evaluate` to record.

        A method calls this with the policies it is about to evaluate, then
        :meth:`evaluate` on each in its order, which records the candidate scored here
        instead of scoring it again. ``repair`` (:data:`REPAIRS`) is applied first
        (:meth:`repair`); the repaired policy is the one scored, and the workers do the
        repair too unless a resumed run still has candidates to replay. Policies the
        history already holds, that a resumed run will replay, or that repeat one
        earlier in the batch are not scored (they are cache hits or replays of
        :meth:`evaluate`). Every policy of the batch races against the best candidate
        known now (``options.race_z``). ``episodes`` are recorded on the candidates
        (default 0). Returns, per policy, :meth:`repair`'s answer.
        """
        eps = [int(e) for e in episodes] if episodes is not None else [0] * len(policies)
        beat = self.history.best if self.options.race_z is not None else None
        remote_repair = (self.workers is not None and repair != "none"
                         and not self.bound.noisy and not any(self._replay.values()))
        if remote_repair:
            assert self.workers is not None
            jobs = []
            for policy, ep in zip(policies, eps):
                jobs.append((np.asarray(policy, dtype=np.float64), ep, beat, repair))
            out: list[tuple[np.ndarray, np.ndarray | None]] = []
            for fixed_raw, cand, spent in self.workers.map(jobs):
                self._count(spent)
                key = policy_key(self._clip(fixed_raw[0]))
                if self.history.lookup(fixed_raw[0]) is None:
                    self._prefetched.setdefault(key, cand)
                out.append(fixed_raw)
            return out
        repaired = [self.repair(p, repair) for p in policies]
        replay = dict(self._replay)
        scored: list[tuple[np.ndarray, int, Candidate | None, str]] = []
        keys: list[tuple[float, ...]] = []
        for (fixed, _), ep in zip(repaired, eps):
            pol = self._clip(fixed)
            key = policy_key(pol)
            if replay.get(key, 0) > 0:
                replay[key] -= 1
                continue
            if key in self._prefetched or key in keys or self.history.lookup(pol) is not None:
                continue
            scored.append((pol, ep, beat, "none"))
            keys.append(key)
        if self.workers is not None and scored:
            for key, (_, cand, spent) in zip(keys, self.workers.map(scored)):
                self._count(spent)
                self._prefetched[key] = cand
        else:
            for key, (pol, ep, bt, _) in zip(keys, scored):
                self._prefetched[key] = self.score(pol, ep, beat=bt)
        return repaired

    def _count(self, spent: dict[str, int]) -> None:
        for k, v in spent.items():
            self.spent[k] = self.spent.get(k, 0) + v

    def score_job(self, job: tuple[np.ndarray, int, Candidate | None, str]
                  ) -> tuple[tuple[np.ndarray, np.ndarray | None], Candidate, dict[str, int]]:
        """A worker's answer to ``job`` = ``(policy, episode, beat, repair)``:
        :meth:`repair`'s answer, :meth:`score`'s candidate of the repaired policy, and
        what that spent (the ``spent`` counters' increase, the repair's cost
        measurements aside)."""
        policy, episode, beat, mode = job
        fixed_raw = self.repair(policy, mode)
        before = dict(self.spent)
        cand = self.score(fixed_raw[0], episode, beat=beat)
        return fixed_raw, cand, {k: v - before.get(k, 0) for k, v in self.spent.items()}

    def for_workers(self) -> Evaluator:
        """A copy to send to workers: the same model, space, budget, data and options,
        with an empty history (ranked the same way) and no pool, cache or replay."""
        clone = copy.copy(self)
        clone.history = History(rank=self.history.rank)
        clone.workers = None
        clone._replay = {}
        clone._prefetched = {}
        clone.spent = {k: 0 for k in self.spent}
        return clone

    def enable_replay(self) -> None:
        """Treat the candidates already in ``history`` as a replay log (resuming a run).

        A search restarted from the same seed proposes the same policies again; each
        one found in the log is returned from it, neither re-scored nor recorded twice.
        """
        self._replay = {}
        for c in self.history.candidates:
            k = policy_key(c.policy)
            self._replay[k] = self._replay.get(k, 0) + 1

    # ------------------------------------------------------ budget projection
    def project(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """The nearest feasible policy (every hard constraint measured on the pruned model)."""
        return np.asarray(project(self.space, self.model, np.asarray(policy, dtype=np.float64),
                                  self.bound), dtype=np.float64)

    def to_boundary(self, policy: Sequence[float] | np.ndarray, iterations: int | None = None
                    ) -> np.ndarray:
        """``policy`` moved onto the budget's boundary, keeping its shape.

        Every entry's keep ratio ``1 - p_i`` is multiplied by one factor ``s`` (capped so
        that no entry keeps more than all of it or less than its minimum), and ``s`` is
        bisected to the largest value that meets the budget, measured on pruned copies:
        an out-of-budget policy shrinks, one that leaves budget unused grows, and the
        *relative* widths the policy chose are kept. Only costs are measured, over
        ``iterations`` bisection steps (default 14, or 8 for a budget with a noisy cost,
        where every step times the model and the timing's own noise, a few percent,
        blurs the boundary anyway). A noisy cost (latency) is measured once per step
        against its limit less the noise rule's margin (``limit / (1 + margin)``): the
        returned model must later pass the rule's repeated check, and a candidate placed
        right at the limit would measure over it about every other time.
        """
        p = self._clip(policy)
        noisy = set(self.bound.noisy_names)
        if iterations is None:
            iterations = 8 if noisy else 14
        target = np.array([1.0 / (1.0 + self.bound.rule.margin) if n in noisy else 1.0
                           for n in self.bound.names])
        keep = 1.0 - p
        floor = 1.0 - self.caps
        s_max = 1.0 / max(float(keep.min()), 1e-6)

        def at(t: float) -> np.ndarray:
            k = np.clip(keep * (1.0 - t) * s_max, floor, 1.0)
            return 1.0 - k

        def ok(t: float) -> bool:
            return bool(np.all(self.cost_ratios(at(t)) <= target))

        if ok(0.0):  # keeping everything fits: nothing to prune
            return at(0.0)
        if not ok(1.0):  # even the most aggressive pruning fails: the usual projection
            return self.project(p)
        return at(bisect_boundary(ok, iterations))

    def uniform_policy(self) -> np.ndarray:
        """One ratio for every entry (capped per entry) that just meets the budget."""
        return np.asarray(uniform_policy(self.space, self.model, self.bound), dtype=np.float64)

    def uniform_ratio(self) -> float:
        """The one prune ratio for every entry that just meets the budget."""
        return float(np.max(self.uniform_policy(), initial=0.0))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_start"] = 0.0  # a perf_counter reading means nothing in another process
        state["workers"] = None  # a pool belongs to the process that started it
        return state
