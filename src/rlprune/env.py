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
* reward: the scheme's (:mod:`rlprune.rewards`); terminal schemes pay at the last step.
  With ``repair="boundary"`` (``cpl``'s default) or ``"project"``, the candidate an
  episode scores is the chosen policy moved onto the budget (costs only), while
  ``info["cost"]`` still reports the chosen policy's own costs.
* ``info["cost"]``: numpy vector of ``value_i / limit_i`` for every constraint
  (``<= 1`` holds), zeros before the last step; ``info["costs"]``: raw values by
  name; ``info["accuracy"]``, ``info["policy"]``, ``info["feasible"]``.

The environment is the MDP only. Building the pruned candidate, re-estimating its
BatchNorm statistics, scoring it on the reward split (never on test), measuring its
costs, the cache and the record of every candidate belong to its
:class:`~rlprune.evaluate.Evaluator` (``env.evaluator``), which the baselines use
directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlprune.costs import BoundBudget, Budget
from rlprune.data import Splits
from rlprune.evaluate import REPAIRS, EvalOptions, Evaluator
from rlprune.history import Candidate, History, policy_key
from rlprune.rewards import RewardFn
from rlprune.space import DEFAULT_IMPORTANCE, PruningSpace

__all__ = ["PruningEnv"]

# Costs approximated by parameter counts in the observation's budget proxy; every other
# cost (macs, flops, latency, custom) is approximated by MACs.
_PARAM_LIKE = ("params", "nonzero_params", "disk_mb", "memory_mb")


class PruningEnv(gym.Env):
    """The pruning MDP over a model, its data and a budget (see the module docstring).

    Give either the pieces (``model``, ``splits``, ``budget`` and the evaluation
    options), from which the env builds its :class:`~rlprune.evaluate.Evaluator`
    (binding a plain budget to ``model`` here), or a ready ``evaluator``, whose model,
    space, bound budget and splits are then used and the other evaluation arguments
    must be left out. ``rlprune.prune`` binds the budget once per run and passes it
    bound.

    The pieces: ``space`` (default: built from ``model`` with ``granularity`` and
    ``importance``), ``example_input`` (default: one sample of ``splits``), ``history``
    where candidates are recorded, and the :class:`~rlprune.evaluate.EvalOptions`
    ``bn_samples``, ``finetune_steps``, ``finetune_lr``, ``eval_batch_size``,
    ``reward_samples``, ``dense_samples``, ``seed`` and ``race_z``, and ``reward`` (a
    scheme name or function, :mod:`rlprune.rewards`) with its ``reward_options``.

    The MDP: ``action`` is ``"continuous"`` (a prune ratio in ``[0, a_max]``; default
    ``a_max``: the largest ratio any entry allows) or ``"discrete"`` (an index into
    ``levels``, default ten ratios evenly spaced in ``[0, a_max]``); ``repair`` chooses
    which candidate an episode scores: ``"none"`` the policy as chosen (the paper's
    MDP), ``"project"`` its projection onto the budget when it violates it,
    ``"boundary"`` the policy scaled onto the budget's boundary.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module | None = None,
        splits: Splits | None = None,
        budget: Budget | BoundBudget | str | None = None,
        space: PruningSpace | None = None,
        granularity: str = "channel",
        importance: str = DEFAULT_IMPORTANCE,
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
        evaluator: Evaluator | None = None,
        repair: str = "none",
        race_z: float | None = EvalOptions.race_z,
    ):
        super().__init__()
        if evaluator is None:
            evaluator = _build_evaluator(
                model, splits, budget, space, granularity, importance, reward,
                EvalOptions(bn_samples=bn_samples, finetune_steps=int(finetune_steps),
                            finetune_lr=finetune_lr, eval_batch_size=eval_batch_size,
                            reward_samples=reward_samples, dense_samples=dense_samples,
                            seed=seed, race_z=race_z),
                reward_options, example_input, history)
        elif any(v is not None for v in (model, splits, budget, space, history)):
            raise ValueError("give PruningEnv either an evaluator or model/splits/budget/"
                             "space/history, not both: the evaluator already holds them")
        if repair not in REPAIRS:
            raise ValueError(f"repair must be one of {', '.join(REPAIRS)}, got {repair!r}")
        #: Which candidate an episode scores: ``"none"`` the
        #: policy as chosen (the paper's MDP), ``"project"`` the projection onto the budget
        #: of a policy that violates it, ``"boundary"`` the policy with all its keep
        #: ratios scaled by one factor onto the budget's boundary, in or out
        #: (:meth:`Evaluator.to_boundary`; a noisy cost is aimed at its limit less the
        #: noise rule's margin). In every case
        #: ``info["cost"]`` is the chosen policy's own cost ratios, so a constrained
        #: agent still sees what it chose.
        self.repair = repair
        self.evaluator = evaluator
        self.constraint_names: list[str] = evaluator.constraint_names
        self.num_constraints = len(self.constraint_names)
        self.T = len(evaluator.space)
        self.max_episode_steps = self.T
        self.dense = evaluator.dense
        self.reward_name = evaluator.reward_name

        # actions
        max_ratios = evaluator.caps
        self.a_max = float(a_max) if a_max is not None else float(max_ratios.max())
        if not 0.0 < self.a_max < 1.0:
            raise ValueError(f"a_max must be in (0, 1), got {self.a_max}")
        self.max_ratios = np.minimum(max_ratios, self.a_max)
        #: Whether discrete levels are the env's default grid (a method may replace them).
        self.default_levels = levels is None
        if action == "continuous":
            self.levels: np.ndarray | None = None
            self.action_space: spaces.Space[Any] = spaces.Box(0.0, self.a_max, (1,), np.float32)
        elif action == "discrete":
            self.set_levels(levels if levels is not None else np.linspace(0.0, self.a_max, 10))
        else:
            raise ValueError(f"action must be 'continuous' or 'discrete', got {action!r}")

        # static features and the analytic proxies of the observation
        entries = evaluator.space.entries
        self._static = np.asarray(evaluator.space.features(), dtype=np.float32)
        self._w_params = np.array([max(e.params, 1) for e in entries], np.float64)
        self._w_macs = np.array([max(e.macs, 1) for e in entries], np.float64)
        self._limit_frac = evaluator.limit_fractions
        n_dyn = 3 + self.num_constraints
        self.observation_space = spaces.Box(0.0, 1.0, (self._static.shape[1] + n_dyn,),
                                            np.float32)
        self.episode = 0
        self._t = 0
        self._policy = np.zeros(self.T, dtype=np.float64)
        # repairs worked out by prefetch() for the episodes of its batch
        self._repairs: dict[tuple[float, ...], tuple[np.ndarray, np.ndarray | None]] = {}

    # --------------------------------------------------------- evaluator views
    @property
    def history(self) -> History:
        """Every candidate evaluated so far (the evaluator's record)."""
        return self.evaluator.history

    @property
    def space(self) -> PruningSpace:
        """The prunable entries, one per step."""
        return self.evaluator.space

    @property
    def bound(self) -> BoundBudget:
        """The budget with absolute limits, resolved once."""
        return self.evaluator.bound

    # ------------------------------------------------------------------ proxies
    def _proxy_weights(self, name: str) -> np.ndarray:
        base = name.split(":")[0]
        return self._w_params if base in _PARAM_LIKE else self._w_macs

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
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode at the first entry with nothing pruned; gymnasium's contract.

        ``seed`` seeds the env's ``np_random`` (gymnasium's convention); ``options`` is
        accepted and unused. Returns the first observation and an empty ``info``.
        """
        super().reset(seed=seed)
        self._t = 0
        self._policy = np.zeros(self.T, dtype=np.float64)
        return self._obs(), {}

    def set_levels(self, levels: Sequence[float] | np.ndarray) -> None:
        """Replace the prune ratios of a discrete action space (before an agent is built).

        ``levels`` are prune ratios in ``[0, 1)``; the action space becomes
        ``Discrete(len(levels))``.
        """
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

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Prune the current entry by ``action`` and move to the next; gymnasium's contract.

        ``action`` is a prune ratio (continuous) or a level index (discrete), capped at
        the entry's maximum. Returns ``(observation, reward, terminated, truncated,
        info)``: the episode terminates after the last entry, when the policy is
        evaluated and ``info`` carries its costs, accuracy and candidate (module
        docstring); ``truncated`` is always ``False``.
        """
        if self._t >= self.T:
            raise RuntimeError("step() called after the episode ended; call reset()")
        t = self._t
        self._policy[t] = self.step_ratio(action)
        self._t += 1
        terminal = self._t == self.T
        info: dict[str, Any] = {"cost": np.zeros(self.num_constraints, dtype=np.float64)}
        ev = self.evaluator
        if terminal:
            cand, cost, projected = self._evaluate_episode()
            self.episode += 1
            reward = cand.reward if not self.dense else float(ev.reward_fn(ev.context(
                t, cand.accuracy, self._policy, cand.extra.get("macs_ratio", 1.0))))
            info.update(cost=cost, costs=cand.costs, accuracy=cand.accuracy,
                        policy=list(cand.policy), feasible=cand.feasible, candidate=cand,
                        projected=projected)
        elif self.dense:
            partial = self._policy.copy()
            acc = ev.dense_accuracy(partial)
            reward = float(ev.reward_fn(ev.context(t, acc, partial)))
            info["accuracy"] = acc
        else:
            reward = 0.0
        obs = self._obs()
        return obs, float(reward), terminal, False, info

    def _repaired(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The policy an episode that chose ``policy`` scores under ``repair``, and the
        chosen policy's own cost ratios (``None`` when no repair applies)."""
        memo = self._repairs.get(policy_key(policy))
        if memo is not None:
            return memo
        return self.evaluator.repair(policy, self.repair)

    def _evaluate_episode(self) -> tuple[Candidate, np.ndarray, bool]:
        """The episode's candidate, the cost ratios the agent sees, whether projected."""
        ev = self.evaluator
        fixed, raw = self._repaired(self._policy)
        if raw is not None and not np.allclose(fixed, self._policy):
            return ev.evaluate(fixed, episode=self.episode), raw, True
        cand = ev.evaluate(self._policy, episode=self.episode)
        return cand, np.asarray(cand.cost_ratios, dtype=np.float64), False

    def observe(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """The observation an episode sees after choosing ``ratios`` for its first
        ``len(ratios)`` entries (as returned ratios, capped), evaluating nothing; the
        env's current episode is left as it was. Lets a method plan episodes ahead."""
        r = np.asarray(ratios, dtype=np.float64).reshape(-1)
        if len(r) >= self.T:
            raise ValueError(f"observe() takes at most {self.T - 1} ratios, got {len(r)}")
        saved = self._t, self._policy
        try:
            self._t = len(r)
            self._policy = np.zeros(self.T, dtype=np.float64)
            self._policy[:len(r)] = np.minimum(r, self.max_ratios[:len(r)])
            return self._obs()
        finally:
            self._t, self._policy = saved

    def step_ratio(self, action: Any, t: int | None = None) -> float:
        """The ratio :meth:`step` records for ``action`` at entry ``t`` (default: the
        current one): the action's ratio, capped at the entry's maximum."""
        return min(self.action_to_ratio(action),
                   float(self.max_ratios[self._t if t is None else t]))

    def prefetch(self, policies: Sequence[Sequence[float] | np.ndarray]) -> None:
        """Score together the candidates of the next ``len(policies)`` episodes.

        ``policies`` are the ratios those episodes will choose, in order (as
        :meth:`step` records them). Each one's repair is worked out now and kept for its
        terminal step, and the candidates they will score go to
        :meth:`Evaluator.prefetch <rlprune.evaluate.Evaluator.prefetch>` as one batch
        (on the evaluator's workers, if any). Stepping through the episodes afterwards
        records them as if scored one by one.
        """
        pols = [np.minimum(np.asarray(p, dtype=np.float64).reshape(-1), self.max_ratios)
                for p in policies]
        repaired = self.evaluator.prefetch(pols, [self.episode + i for i in range(len(pols))],
                                           repair=self.repair)
        self._repairs = {policy_key(p): r for p, r in zip(pols, repaired)}

    def observations(self, policy: Sequence[float] | np.ndarray) -> np.ndarray:
        """The ``T`` observations an episode that chooses ``policy`` sees (nothing is
        evaluated; the env's current episode is left as it was)."""
        saved = self._t, self._policy
        pol = np.minimum(np.asarray(policy, dtype=np.float64).reshape(-1), self.max_ratios)
        self._policy = np.zeros(self.T, dtype=np.float64)
        out = []
        try:
            for t in range(self.T):
                self._t = t
                out.append(self._obs())
                self._policy[t] = pol[t]
        finally:
            self._t, self._policy = saved
        return np.stack(out)

    @property
    def policy(self) -> np.ndarray:
        """The ratios chosen so far in the current episode."""
        return self._policy.copy()

    @property
    def step_index(self) -> int:
        """The index of the layer the next action prunes."""
        return self._t


def _build_evaluator(
    model: nn.Module | None,
    splits: Splits | None,
    budget: Budget | BoundBudget | str | None,
    space: PruningSpace | None,
    granularity: str,
    importance: str,
    reward: str | RewardFn,
    options: EvalOptions,
    reward_options: dict[str, float] | None,
    example_input: torch.Tensor | None,
    history: History | None,
) -> Evaluator:
    """The evaluator of an env built from pieces (for direct use of ``PruningEnv``)."""
    if model is None or splits is None or budget is None:
        raise ValueError("PruningEnv needs model, splits and budget (or a ready evaluator)")
    ex = example_input if example_input is not None else splits.example_input(1)
    if space is None:
        space = PruningSpace.from_model(model, ex, granularity=granularity,
                                        importance=importance,
                                        data=splits.train.take(256))
    if not isinstance(budget, BoundBudget):
        budget = Budget.coerce(budget).bind(model, ex)
    return Evaluator(model, space, budget, splits, options, reward, reward_options, ex, history)
