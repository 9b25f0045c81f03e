"""``PruningEnv``: the layer-by-layer pruning MDP shared by every method.

One episode prunes the network once, one step per prunable entry of the
:class:`~rlprune.space.PruningSpace` (``t = 0..T-1``):

* observation (``float32`` in [0, 1]): the static layer features of the space
  (index, kind, in/out width, kernel, stride, params, MACs), then the dynamic ones:
  MACs removed so far, MACs of the layers after this one, the previous action, and
  for each constraint the share of the remaining layers' size that the budget still
  allows to keep (a cheap analytic proxy: 1 means "keep everything", 0 "nothing").
* action: a prune ratio in ``[0, a_max]`` (``Box``), or an index into discrete
  ``levels`` (``Discrete``) when ``action="discrete"``.
* after the last step the policy is applied to a copy of the model, optionally
  fine-tuned for ``finetune_steps`` SGD steps on the train split, and scored (top-1)
  on the reward split, never on test. Constraints are measured on that pruned copy.
* ``info["cost"]``: numpy vector of ``value_i / limit_i`` for every constraint
  (``<= 1`` holds), zeros before the last step; ``info["costs"]``: raw values by
  name; ``info["accuracy"]``, ``info["policy"]``, ``info["feasible"]``.

Reward schemes are small functions in :data:`REWARD_SCHEMES`: ``terminal_accuracy``
(cpl, amc), ``neg_error_log_flops`` (AMC's R_FLOPs) and ``dense`` (PuRL-style, a
reward at every step). Every evaluated policy is appended to ``env.history``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlprune.costs import Budget
from rlprune.data import Splits
from rlprune.history import Candidate, History, policy_key
from rlprune.space import PruningSpace, project
from rlprune.train import evaluate, finetune_steps, recalibrate_bn

__all__ = ["PruningEnv", "REWARD_SCHEMES", "RewardContext", "register_reward", "dense_reward"]

# Costs approximated by parameter counts in the observation's budget proxy; every other
# cost (macs, flops, latency, custom) is approximated by MACs.
_PARAM_LIKE = ("params", "nonzero_params", "disk_mb", "memory_mb")


@dataclass
class RewardContext:
    """What a reward scheme sees at one step."""

    step: int
    num_steps: int
    terminal: bool
    accuracy: float  # on the reward split; nan when not evaluated at this step
    original_accuracy: float
    sparsity: float  # fraction of the original's prunable size removed so far (proxy)
    target_sparsity: float
    macs_ratio: float  # MACs of the candidate / original (measured at the terminal step)
    options: dict[str, float]


RewardFn = Callable[[RewardContext], float]


def terminal_accuracy(ctx: RewardContext) -> float:
    """0 until the last step, then top-1 accuracy on the reward split (cpl, amc)."""
    return float(ctx.accuracy) if ctx.terminal else 0.0


def neg_error_log_flops(ctx: RewardContext) -> float:
    """AMC's R_FLOPs = -error * log(FLOPs), at the last step.

    FLOPs enter as the candidate's absolute count (``options['original_flops']`` times
    the measured ratio) so that the reward prefers fewer FLOPs at equal error.
    """
    if not ctx.terminal:
        return 0.0
    flops = max(ctx.options.get("original_flops", 1.0) * ctx.macs_ratio, 1.0)
    return -(1.0 - ctx.accuracy) * math.log(flops)


def dense_reward(ctx: RewardContext) -> float:
    """Dense reward at every step (PuRL-style).

    ``r_t = -beta * [max((E - E*) / (1 - E*), 0) + max(1 - S / S*, 0)]`` with ``E`` the
    reward-split error after pruning layers ``1..t``, ``S`` the sparsity reached,
    ``E*`` and ``S*`` their targets, ``beta = 5``. PuRL's full text was not available
    to us: this form is the one of its published successor and is kept pluggable.
    """
    beta = ctx.options.get("beta", 5.0)
    e_star = ctx.options.get("target_error", 1.0 - ctx.original_accuracy)
    e_star = min(max(e_star, 0.0), 0.999)
    err = 1.0 - ctx.accuracy
    s_star = max(ctx.target_sparsity, 1e-6)
    return -beta * (max((err - e_star) / (1.0 - e_star), 0.0) + max(1.0 - ctx.sparsity / s_star,
                                                                       0.0))


REWARD_SCHEMES: dict[str, RewardFn] = {
    "terminal_accuracy": terminal_accuracy,
    "neg_error_log_flops": neg_error_log_flops,
    "dense": dense_reward,
}
#: Schemes that need the reward-split accuracy at every step, not only the last.
DENSE_SCHEMES = {"dense"}


def register_reward(name: str, fn: RewardFn, dense: bool = False) -> None:
    """Add a reward scheme; ``dense=True`` evaluates accuracy after every step."""
    REWARD_SCHEMES[name] = fn
    if dense:
        DENSE_SCHEMES.add(name)


class PruningEnv(gym.Env):
    """The pruning MDP over a model, its data and a budget (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module,
        splits: Splits,
        budget: Budget | str,
        space: PruningSpace | None = None,
        granularity: str = "channel",
        importance: str = "l1",
        reward: str | RewardFn = "terminal_accuracy",
        action: str = "continuous",
        a_max: float | None = None,
        levels: Sequence[float] | None = None,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        eval_batch_size: int = 1024,
        reward_samples: int | None = None,
        dense_samples: int | None = 1000,
        reward_options: dict[str, float] | None = None,
        bn_samples: int = 256,
        example_input: torch.Tensor | None = None,
        history: History | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.model = model.eval()
        self.splits = splits
        self.budget = Budget.parse(budget) if isinstance(budget, str) else budget
        self.example_input = (
            example_input if example_input is not None else splits.example_input(1)
        )
        self.space = space if space is not None else PruningSpace.from_model(
            model, self.example_input, granularity=granularity, importance=importance,
            data=(splits.train.x[:256], splits.train.y[:256]),
        )
        self.bound = self.budget.bind(model, self.example_input)
        self.constraint_names: list[str] = list(self.bound.names)
        self.num_constraints = len(self.constraint_names)
        self.T = len(self.space)
        self.max_episode_steps = self.T
        self.seed_value = seed

        # reward scheme
        if callable(reward):
            self.reward_name, self.reward_fn = getattr(reward, "__name__", "custom"), reward
        else:
            if reward not in REWARD_SCHEMES:
                raise ValueError(f"unknown reward scheme {reward!r}; known: "
                                 f"{', '.join(REWARD_SCHEMES)}")
            self.reward_name, self.reward_fn = reward, REWARD_SCHEMES[reward]
        self.dense = self.reward_name in DENSE_SCHEMES

        # actions
        max_ratios = np.asarray(self.space.max_policy(), dtype=np.float64)
        self.a_max = float(a_max) if a_max is not None else float(max_ratios.max())
        if not 0.0 < self.a_max < 1.0:
            raise ValueError(f"a_max must be in (0, 1), got {self.a_max}")
        self.max_ratios = np.minimum(max_ratios, self.a_max)
        if action == "continuous":
            self.levels = None
            self.action_space: spaces.Space = spaces.Box(0.0, self.a_max, (1,), np.float32)
        elif action == "discrete":
            self.set_levels(levels if levels is not None else np.linspace(0.0, self.a_max, 10))
        else:
            raise ValueError(f"action must be 'continuous' or 'discrete', got {action!r}")

        # static features and the analytic proxies of the observation
        self._static = np.asarray(self.space.features(), dtype=np.float32)
        self._w_params = np.array([max(e.params, 1) for e in self.space.entries], np.float64)
        self._w_macs = np.array([max(e.macs, 1) for e in self.space.entries], np.float64)
        self._limit_frac = self._proxy_limits()
        n_dyn = 3 + self.num_constraints
        self.observation_space = spaces.Box(0.0, 1.0, (self._static.shape[1] + n_dyn,),
                                            np.float32)

        # evaluation settings
        if bn_samples < 0:
            raise ValueError(f"bn_samples must be >= 0, got {bn_samples}")
        self._bn_x = splits.train.x[:bn_samples]
        self.finetune_steps = int(finetune_steps)
        self.finetune_lr = finetune_lr
        self.eval_batch_size = eval_batch_size
        rx, ry = splits.reward.x, splits.reward.y
        if len(ry) == 0:
            raise ValueError("the reward split is empty: use reward_fraction > 0")
        if reward_samples is not None:
            rx, ry = rx[:reward_samples], ry[:reward_samples]
        self._rx, self._ry = rx, ry
        n_dense = len(ry) if dense_samples is None else min(dense_samples, len(ry))
        self._dx, self._dy = rx[:n_dense], ry[:n_dense]
        self.original_accuracy = evaluate(model, rx, ry, eval_batch_size)
        self.original_costs = dict(self.bound.original)
        opts = dict(reward_options or {})
        from rlprune.costs import count_macs

        opts.setdefault("original_flops", 2.0 * count_macs(model, self.example_input))
        self.reward_options = opts
        self.target_sparsity = self._target_sparsity()

        self.history = history if history is not None else History()
        if self.dense:
            self.history.rank = "accuracy"
        self.episode = 0
        self._replay: dict[tuple[float, ...], int] = {}
        self._t = 0
        self._policy = np.zeros(self.T, dtype=np.float64)
        self._start = time.perf_counter()

    # ------------------------------------------------------------------ proxies
    def _proxy_weights(self, name: str) -> np.ndarray:
        base = name.split(":")[0]
        return self._w_params if base in _PARAM_LIKE else self._w_macs

    def _proxy_limits(self) -> np.ndarray:
        """Each constraint's limit as a fraction of the original value (proxy scale)."""
        out = []
        for name in self.constraint_names:
            orig = self.bound.original[name]
            lim = self.bound.limits[name]
            out.append(min(lim / orig, 1.0) if orig > 0 else 1.0)
        return np.asarray(out, dtype=np.float64)

    def _target_sparsity(self) -> float:
        """Target fraction of prunable size to remove, for the dense reward's S*."""
        if "target_sparsity" in self.reward_options:
            return float(self.reward_options["target_sparsity"])
        return float(max(1.0 - self._limit_frac.min(), 0.0))

    def _sparsity(self, policy: np.ndarray, weights: np.ndarray | None = None) -> float:
        w = self._w_params if weights is None else weights
        return float((w * policy).sum() / w.sum())

    def _obs(self) -> np.ndarray:
        t = min(self._t, self.T - 1)
        done = self._policy[:t]
        macs_removed = float((self._w_macs[:t] * done).sum() / self._w_macs.sum())
        macs_after = float(self._w_macs[t + 1:].sum() / self._w_macs.sum())
        prev = float(self._policy[t - 1] / self.a_max) if t > 0 else 0.0
        left = []
        for i, name in enumerate(self.constraint_names):
            w = self._proxy_weights(name)
            kept_done = (w[:t] * (1 - done)).sum() / w.sum()
            rest = w[t:].sum() / w.sum()
            allow = (self._limit_frac[i] - kept_done) / rest if rest > 0 else 1.0
            left.append(float(np.clip(allow, 0.0, 1.0)))
        dyn = np.array([macs_removed, macs_after, prev, *left], dtype=np.float32)
        return np.clip(np.concatenate([self._static[t], dyn]), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------- gym contract
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._policy = np.zeros(self.T, dtype=np.float64)
        return self._obs(), {}

    def set_levels(self, levels: Sequence[float] | np.ndarray) -> None:
        """Replace the prune ratios of a discrete action space (before an agent is built)."""
        lv = [float(v) for v in levels]
        if not lv or min(lv) < 0 or max(lv) >= 1:
            raise ValueError(f"discrete levels must lie in [0, 1), got {lv}")
        self.levels = np.asarray(lv, dtype=np.float64)
        self.action_space = spaces.Discrete(len(lv))

    def action_to_ratio(self, action: Any) -> float:
        """Map an agent's action to a prune ratio for the current layer (clipped)."""
        if self.levels is not None:
            return float(self.levels[int(np.asarray(action).reshape(-1)[0])])
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not math.isfinite(a):
            a = 0.0
        return float(np.clip(a, 0.0, self.a_max))

    def step(self, action: Any):
        if self._t >= self.T:
            raise RuntimeError("step() called after the episode ended; call reset()")
        t = self._t
        self._policy[t] = min(self.action_to_ratio(action), self.max_ratios[t])
        self._t += 1
        terminal = self._t == self.T
        info: dict[str, Any] = {"cost": np.zeros(self.num_constraints, dtype=np.float64)}
        if terminal:
            cand = self.evaluate_policy(self._policy, episode=self.episode)
            self.episode += 1
            reward = cand.reward if not self.dense else self._dense_step(
                t, cand.accuracy, self._policy, macs_ratio=cand.extra.get("macs_ratio", 1.0))
            info.update(cost=np.asarray(cand.cost_ratios, dtype=np.float64), costs=cand.costs,
                        accuracy=cand.accuracy, policy=list(cand.policy),
                        feasible=cand.feasible, candidate=cand)
        elif self.dense:
            partial = self._policy.copy()
            acc = self._accuracy(self.build(partial, finetune=False), dense=True)
            reward = self._dense_step(t, acc, partial)
            info["accuracy"] = acc
        else:
            reward = 0.0
        obs = self._obs()
        return obs, float(reward), terminal, False, info

    def _dense_step(self, t: int, acc: float, policy: np.ndarray,
                    macs_ratio: float = 1.0) -> float:
        ctx = RewardContext(step=t, num_steps=self.T, terminal=t == self.T - 1, accuracy=acc,
                            original_accuracy=self.original_accuracy,
                            sparsity=self._sparsity(policy), target_sparsity=self.target_sparsity,
                            macs_ratio=macs_ratio, options=self.reward_options)
        return float(self.reward_fn(ctx))

    # -------------------------------------------------------------- evaluation
    def _accuracy(self, model: nn.Module, dense: bool = False) -> float:
        x, y = (self._dx, self._dy) if dense else (self._rx, self._ry)
        return evaluate(model, x, y, self.eval_batch_size)

    def build(self, policy: Sequence[float] | np.ndarray, finetune: bool = True) -> nn.Module:
        """The pruned copy of the model, its BatchNorm statistics re-estimated on
        ``bn_samples`` training inputs, and (if configured) briefly fine-tuned."""
        pruned = self.space.apply(self.model, np.asarray(policy, dtype=np.float64))
        recalibrate_bn(pruned, self._bn_x)
        if finetune and self.finetune_steps > 0:
            finetune_steps(pruned, self.splits.train, self.finetune_steps, lr=self.finetune_lr,
                           seed=self.seed_value, augmentation=self.splits.augmentation,
                           keep_zeros=self.space.granularity == "weight")
        return pruned

    def cost_ratios(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """Constraint values / limits of the pruned policy, without scoring accuracy."""
        return np.asarray(self.bound.ratios(self.space.apply(self.model, np.asarray(policy))),
                          dtype=np.float64)

    def evaluate_policy(self, policy: Sequence[float] | np.ndarray,
                        episode: int | None = None) -> Candidate:
        """Score one policy on the reward split and record it in ``history``.

        A policy evaluated before (same ratios) is taken from the history's cache and
        recorded again with ``extra['cached'] = True`` instead of being re-scored.
        """
        pol = np.clip(np.asarray(policy, dtype=np.float64).reshape(-1), 0.0, self.max_ratios)
        if pol.shape[0] != self.T:
            raise ValueError(f"policy has {pol.shape[0]} ratios, the space has {self.T} layers")
        ep = self.episode if episode is None else episode
        tags = dict(self.history.tags)
        prev = self.history.lookup(pol)
        key = policy_key(pol)
        if prev is not None and self._replay.get(key, 0) > 0:
            # resuming: this candidate is already in the history; hand it back unrecorded
            self._replay[key] -= 1
            return prev
        if prev is not None:
            cand = Candidate(index=len(self.history), episode=ep, policy=list(prev.policy),
                             reward=prev.reward, accuracy=prev.accuracy, costs=dict(prev.costs),
                             cost_ratios=list(prev.cost_ratios), feasible=prev.feasible,
                             time=time.perf_counter() - self._start,
                             extra={**prev.extra, **tags, "cached": True})
            return self.history.add(cand)
        pruned = self.build(pol)
        costs = self.bound.measure(pruned)
        ratios = [costs[n] / self.bound.limits[n] for n in self.constraint_names]
        acc = self._accuracy(pruned)
        macs_ratio = self._macs_ratio(pruned)
        ctx = RewardContext(step=self.T - 1, num_steps=self.T, terminal=True, accuracy=acc,
                            original_accuracy=self.original_accuracy,
                            sparsity=self._sparsity(pol), target_sparsity=self.target_sparsity,
                            macs_ratio=macs_ratio, options=self.reward_options)
        reward = float(self.reward_fn(ctx)) if not self.dense else acc
        cand = Candidate(index=len(self.history), episode=ep, policy=[float(p) for p in pol],
                         reward=reward, accuracy=acc, costs={k: float(v) for k, v in costs.items()},
                         cost_ratios=[float(r) for r in ratios],
                         feasible=all(r <= 1.0 for r in ratios),
                         time=time.perf_counter() - self._start,
                         extra={**tags, "macs_ratio": macs_ratio})
        return self.history.add(cand)

    def enable_replay(self) -> None:
        """Treat the candidates already in ``history`` as a replay log (resuming a run).

        A search restarted from the same seed proposes the same policies again; each
        one found in the log is returned from it, neither re-scored nor recorded twice.
        """
        self._replay = {}
        for c in self.history.candidates:
            k = policy_key(c.policy)
            self._replay[k] = self._replay.get(k, 0) + 1
        self.episode = 0

    def _macs_ratio(self, pruned: nn.Module) -> float:
        from rlprune.costs import count_macs

        orig = self.reward_options["original_flops"] / 2.0
        return float(count_macs(pruned, self.example_input) / orig) if orig > 0 else 1.0

    def project(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """The nearest feasible policy (every hard constraint measured on the pruned model)."""
        return np.asarray(project(self.space, self.model, np.asarray(policy, dtype=np.float64),
                                  self.bound, self.example_input), dtype=np.float64)

    @property
    def policy(self) -> np.ndarray:
        """The ratios chosen so far in the current episode."""
        return self._policy.copy()

    @property
    def step_index(self) -> int:
        """The index of the layer the next action prunes."""
        return self._t
