"""Reward schemes of the pruning MDP: small functions of a :class:`RewardContext`.

Each scheme turns what is known after a pruning step (accuracy on the reward split,
sparsity reached, MACs of the candidate) into a scalar reward. They live apart from
the environment because the candidate evaluator needs them too: the terminal reward
of a candidate is recorded with it, so that every method (RL or not) ranks the same
numbers. Schemes are registered by name in :data:`REWARD_SCHEMES`:

* ``terminal_accuracy`` (cpl, amc): 0 until the last step, then top-1 accuracy;
* ``neg_error_log_flops``: AMC's R_FLOPs, ``-error * log(FLOPs)`` at the last step;
* ``dense`` (purl): a reward after every step (see :func:`dense_reward`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RewardContext", "RewardFn", "REWARD_SCHEMES", "DENSE_SCHEMES", "register_reward",
           "get_reward", "terminal_accuracy", "neg_error_log_flops", "dense_reward"]


@dataclass
class RewardContext:
    """What a reward scheme sees at one step.

    ``step`` is the index of the entry just pruned, of ``num_steps`` in an episode;
    ``terminal`` whether it was the last. ``original_accuracy`` is the unpruned model's
    reward-split accuracy and ``target_sparsity`` the sparsity the budget implies;
    ``options`` are the run's ``reward_options`` (e.g. ``beta``, ``original_flops``).
    """

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
    """0 until the last step, then top-1 accuracy on the reward split (cpl, amc).

    ``ctx`` is the step's :class:`RewardContext`.
    """
    return float(ctx.accuracy) if ctx.terminal else 0.0


def neg_error_log_flops(ctx: RewardContext) -> float:
    """AMC's R_FLOPs = -error * log(FLOPs), at the last step.

    FLOPs enter as the candidate's absolute count (``options['original_flops']`` times
    the measured ratio) so that the reward prefers fewer FLOPs at equal error. ``ctx``
    is the step's :class:`RewardContext`.
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
    ``ctx`` is the step's :class:`RewardContext`; ``ctx.options`` may set ``beta`` and
    ``target_error``.
    """
    beta = ctx.options.get("beta", 5.0)
    e_star = ctx.options.get("target_error", 1.0 - ctx.original_accuracy)
    e_star = min(max(e_star, 0.0), 0.999)
    err = 1.0 - ctx.accuracy
    s_star = max(ctx.target_sparsity, 1e-6)
    return -beta * (max((err - e_star) / (1.0 - e_star), 0.0) + max(1.0 - ctx.sparsity / s_star,
                                                                       0.0))


#: The registered reward schemes by name (:func:`register_reward` adds one).
REWARD_SCHEMES: dict[str, RewardFn] = {
    "terminal_accuracy": terminal_accuracy,
    "neg_error_log_flops": neg_error_log_flops,
    "dense": dense_reward,
}
#: Schemes that need the reward-split accuracy at every step, not only the last.
DENSE_SCHEMES = {"dense"}


def register_reward(name: str, fn: RewardFn, dense: bool = False) -> None:
    """Add a reward scheme; ``dense=True`` evaluates accuracy after every step.

    ``name`` is what ``reward=`` (and the ``reward`` config key) will accept, ``fn`` a
    function of a :class:`RewardContext` returning a float.
    """
    REWARD_SCHEMES[name] = fn
    if dense:
        DENSE_SCHEMES.add(name)




def get_reward(reward: str | RewardFn) -> tuple[str, RewardFn]:
    """``(name, function)`` of a registered scheme name or a callable; unknown names
    are an error listing the known ones.

    ``reward`` is a name in :data:`REWARD_SCHEMES` or a function of a
    :class:`RewardContext` (named by its ``__name__``).
    """
    if callable(reward):
        return getattr(reward, "__name__", "custom"), reward
    if reward not in REWARD_SCHEMES:
        raise ValueError(f"unknown reward scheme {reward!r}; known: {', '.join(REWARD_SCHEMES)}")
    return reward, REWARD_SCHEMES[reward]
