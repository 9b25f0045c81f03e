"""``cpl``: constrained pruning with PPO-Lagrangian, in one readable file.

Malik et al., "Neural Network Pruning Through Constrained Reinforcement Learning"
(ICPR 2022) cast pruning as a constrained MDP: one episode chooses a prune ratio
per layer, the terminal reward is the pruned model's accuracy, and each budget
(parameters, FLOPs, latency, any black-box ``model -> float``) is a constraint
``E[episode cost_i] <= d_i``. The constraint is handled with a Lagrange multiplier
``nu_i >= 0`` per constraint on top of PPO. Stable-Baselines3 has no constrained
algorithm, so it is written here, CleanRL style: the hyperparameters are in
:class:`CPLConfig`, the small pieces that carry the maths are pure functions that
the tests check directly, and :meth:`CPL.search` reads top to bottom as
*collect a rollout -> update the multipliers -> PPO update*.

Choices worth knowing (each documented where it is made):

* Costs come from ``info["cost"]`` (ratios ``value_i / limit_i``, so ``d_i = 1``
  means "meet the budget"). They are only *measured*: nothing is differentiated
  through a cost, which is why any black-box cost works.
* The Gaussian policy acts in an unbounded space ``u``; the env action is the
  squashed ``low + (tanh(u) + 1) / 2 * (high - low)``. PPO's ratio uses the
  log-probability of ``u`` (the tanh Jacobian cancels in the ratio). Clipping
  instead of squashing was tried and fails here: once the mean drifts past the
  bound (it does, since keeping everything maximises accuracy until ``nu`` catches
  up), every sample maps to the same action, advantages vanish and the policy
  never comes back.
* A rollout is ``rollout_steps`` rounded *up* to whole episodes, shortened for short
  searches so that at least ``min_updates`` (default 4) updates happen. Pruning episodes
  have a fixed length ``T`` and all reward/cost arrives at the last step, so a cut
  episode would only add bootstrap noise; whole episodes also make every rollout
  boundary an episode boundary.
* The multipliers move by projected gradient ascent ``nu <- max(0, nu + lr (J_c - d))``
  (or a PID controller, Stooke et al. 2020), never by Adam on a scalar, which
  would move by about ``lr`` whatever the size of the violation.
* Reward advantages are normalised per minibatch and cost advantages centred; by
  default (``cost_adv_scale="reward_std"``) the cost advantages are divided by the
  *same* std as the reward ones, so the policy follows the gradient of the true
  Lagrangian ``J_r - sum nu_i J_ci`` and ``nu_i`` keeps its meaning (reward lost
  per unit of constraint ``i``; about 0.5 on the toy tests). ``"center"`` is the
  safety-starter-agents convention (centre only): there the effective multiplier is
  ``nu * std(A_r)``, which shrinks as the policy concentrates, and on the toy MDPs
  ``nu`` grew without bound while the cost stayed at twice its limit.
* The agent owns its random generators (torch and numpy), so a run is reproducible
  from ``seed`` without touching global RNG state. A run is resumed by replaying its
  log (the same seed proposes the same candidates; see ``rlprune.pipeline``), so no
  agent state is saved.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rlprune.agents.base import Searcher, make_config, register_method

if TYPE_CHECKING:
    from rlprune.env import PruningEnv

__all__ = [
    "CPL",
    "CPLConfig",
    "CPLPaper",
    "LOG_STD_BY_GRANULARITY",
    "PIDLagrangian",
    "compute_gae",
    "default_log_std",
    "ppo_lagrangian_policy_loss",
    "update_multipliers",
]


# --------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------


@dataclass
class CPLConfig:
    """PPO-Lagrangian hyperparameters; the defaults follow the ``cpl`` authors' setup.

    Budget: the search runs for ``episodes`` (a :class:`CPL` argument) unless
    ``total_timesteps`` is set, in which case it runs ``ceil(total_timesteps / T)``
    episodes (the authors used 40k timesteps).

    PPO: each update runs ``update_epochs`` passes over the rollout in minibatches of
    ``minibatch_size``, with the ratio clipped to ``1 +- clip_coef``, gradients clipped
    to norm ``max_grad_norm`` and an entropy bonus ``ent_coef``; ``gamma`` discounts
    rewards and costs. Multipliers start at ``nu_init``; with ``lagrangian="pid"`` the
    gains ``pid_kp``, ``pid_ki`` and ``pid_kd`` drive them (:class:`PIDLagrangian`).
    """

    # networks
    hidden_sizes: tuple[int, ...] = (32, 32)
    """Hidden layers of the policy and of every critic (tanh activations)."""
    log_std_init: float | None = None
    """Initial state-independent log std of the Gaussian policy (before the tanh squash).
    ``None`` (default): -1.0 (std 0.37) for channel budgets, -2.0 (std 0.14) for weight
    budgets, which keep a few percent of most layers, where a step of -1.0's width
    changes a layer's kept weights by about two thirds. The earlier -0.5 (std 0.61,
    kept by ``cpl-paper``) scattered the candidates so far that on ResNet-20 no search
    improved on its warm start; at -1.0 none did on ResNet-20's weight budget
    (docs/RESULTS.md, cpl ablation)."""
    init_action: float | None = None
    """Action (in the env's units, e.g. a prune ratio) the policy's mean starts at;
    ``None`` (default) starts mid-range. Starting at the uniform ratio that just meets
    the budget helped LeNet-300 in short searches but hurt LeNet-5 (see
    docs/METHODS.md), so it is an option, not the default."""
    # optimisation
    learning_rate: float = 3e-4
    """Adam step size of the policy and of the critics (two separate optimisers)."""
    rollout_steps: int = 128
    """Steps per rollout, rounded up to whole episodes (the authors' 128), for each
    candidate the search proposes together (``parallel``: as with the authors'
    vectorised envs, ``rollout_steps`` per env)."""
    min_updates: int = 4
    """Shorten the rollouts of a short search so that at least this many policy and
    multiplier updates happen (0: the authors' rollouts whatever the search length; a
    40-episode search of a 3-layer model would then never update)."""
    minibatch_size: int = 64
    update_epochs: int = 10
    target_kl: float | None = 0.1
    """Stop the epochs of one update early once the approximate KL exceeds this."""
    clip_coef: float = 0.2
    max_grad_norm: float = 0.5
    ent_coef: float = 0.0
    norm_adv: bool = True
    """Normalise reward advantages per minibatch (cost advantages are only centred)."""
    cost_adv_scale: str = "reward_std"
    """``"reward_std"``: divide centred cost advantages by the reward advantages' std
    (true Lagrangian gradient); ``"center"``: centre only (safety-starter-agents)."""
    # advantages
    gamma: float = 0.99
    gae_lambda: float = 0.95
    """GAE lambda of the reward critic."""
    cost_gae_lambda: float = 1.0
    """GAE lambda of the cost critics (1.0: Monte-Carlo cost returns, unbiased)."""
    # constraints and multipliers
    cost_limits: float | tuple[float, ...] = 1.0
    """Threshold ``d_i`` on the expected episode cost ratio, one value or one per constraint."""
    lagrangian: str = "gradient"
    """Multiplier update: ``"gradient"`` (projected ascent) or ``"pid"`` (Stooke et al.)."""
    lagrangian_lr: float = 0.05
    """Step size of the projected gradient ascent on ``nu`` (costs are O(1) ratios)."""
    nu_init: float = 0.0
    pid_kp: float = 0.5
    pid_ki: float = 0.05
    pid_kd: float = 0.0
    # budget
    total_timesteps: int | None = None
    # start
    warm_start: bool = True
    """Evaluate the one-shot heuristics' allocations (uniform, global threshold, LAMP)
    as the search's first candidates and start the policy's mean at the best of them
    (regressed onto it), so the search begins where the heuristics end. ``False`` for
    the paper's start (mid-range). Needs a ``PruningEnv``; other envs start mid-range."""

    warm_random: int = 0
    """Random allocations (``random``'s draws, moved onto the budget's boundary) scored
    after the heuristics in the warm start, before the policy's mean is set to the best
    of them all. Counts as episodes of the search."""

    polish: float = 0.0
    """Fraction of the episodes spent, at the end, on local search around the best
    candidate instead of on PPO episodes (0: none, the paper's search; PPO goes on while
    no candidate is feasible). Each proposal
    multiplies the best candidate's keep ratios by ``exp(step * N(0, 1))`` per entry and
    is moved onto the budget's boundary; ``step`` starts at ``polish_step`` and adapts
    (x1.5 after an improvement, x0.85 otherwise)."""
    polish_step: float = 0.1
    """The polish phase's first step: the standard deviation of the log keep-ratio
    perturbations (0.1: about 10% of each entry's kept share)."""

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.polish) < 1.0):
            raise ValueError(f"polish is a fraction of the episodes in [0, 1), got "
                             f"{self.polish!r}")
        if int(self.warm_random) < 0:
            raise ValueError(f"warm_random must be >= 0, got {self.warm_random!r}")
        if not float(self.polish_step) > 0.0:
            raise ValueError(f"polish_step must be > 0, got {self.polish_step!r}")
        if self.lagrangian not in ("gradient", "pid"):
            raise ValueError(
                f"lagrangian={self.lagrangian!r} is not supported; use 'gradient' or 'pid'"
            )
        if self.cost_adv_scale not in ("reward_std", "center"):
            raise ValueError(
                f"cost_adv_scale={self.cost_adv_scale!r} is not supported; "
                "use 'reward_std' or 'center'"
            )
        for name in ("rollout_steps", "minibatch_size", "update_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.nu_init < 0:
            raise ValueError(f"nu_init must be >= 0, got {self.nu_init!r}")
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if not isinstance(self.cost_limits, (int, float)):
            self.cost_limits = tuple(float(d) for d in self.cost_limits)


# --------------------------------------------------------------------------------------
# The maths, as pure functions
# --------------------------------------------------------------------------------------


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    last_value: float | np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over one rollout.

    ``rewards[t]`` and ``values[t]`` are those of step ``t`` (shape ``(N,)``, or
    ``(N, m)`` for ``m`` signals such as one cost per constraint); ``dones[t]`` is 1
    when the episode *ended* at step ``t`` (shape ``(N,)``), so nothing is
    bootstrapped across it. ``last_value`` is the value of the state after the last
    step (ignored when that step was terminal). ``gamma`` is the discount and ``lam``
    GAE's lambda (1: Monte-Carlo returns, 0: one-step TD). Returns ``(advantages,
    returns)`` with ``returns = advantages + values``, the regression target of the
    critic.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    dones = np.asarray(dones, dtype=np.float64)
    if rewards.ndim == 2:
        dones = dones.reshape(-1, 1)
    advantages = np.zeros_like(rewards)
    gae = np.zeros_like(rewards[0]) if len(rewards) else np.zeros(())
    next_value = np.asarray(last_value, dtype=np.float64)
    for t in reversed(range(len(rewards))):
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        gae = delta + gamma * lam * nonterminal * gae
        advantages[t] = gae
        next_value = values[t]
    return advantages, advantages + values


def update_multipliers(
    nu: np.ndarray, mean_costs: np.ndarray, limits: np.ndarray, lr: float
) -> np.ndarray:
    """One projected gradient-ascent step on the Lagrange multipliers.

    The Lagrangian ``J_r - sum_i nu_i (J_ci - d_i)`` is minimised over ``nu >= 0``
    by the dual, so ``nu_i`` grows in proportion to the violation ``J_ci - d_i`` and
    shrinks when the constraint has slack, but never below 0 (the projection).
    ``nu`` are the current multipliers, ``mean_costs`` the rollout's mean episode costs
    ``J_ci``, ``limits`` the thresholds ``d_i`` and ``lr`` the step size.
    """
    nu = np.asarray(nu, dtype=np.float64)
    step = lr * (np.asarray(mean_costs, dtype=np.float64) - np.asarray(limits, dtype=np.float64))
    return np.maximum(0.0, nu + step)


class PIDLagrangian:
    """PID control of the multipliers (Stooke, Achiam & Abbeel, ICML 2020, Alg. 2).

    Plain gradient ascent is the integral term alone, which overshoots and oscillates;
    the proportional term reacts to the current violation and the derivative term to
    a rising cost. Per constraint, with ``delta = J_c - d``::

        I   <- max(0, I + delta)
        D    = max(0, J_c - J_c_prev)       (0 on the first update)
        nu   = max(0, kp * delta + ki * I + kd * D)

    With ``kp = kd = 0`` and ``ki = lr`` this is exactly :func:`update_multipliers`.
    ``num_constraints`` multipliers start at ``nu_init`` (the integral term is set so
    that the first update continues from there).
    """

    def __init__(self, num_constraints: int, kp: float, ki: float, kd: float, nu_init: float = 0.0):
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        start = nu_init / self.ki if self.ki > 0 else 0.0
        self.integral = np.full(num_constraints, start, dtype=np.float64)
        self.prev_cost: np.ndarray | None = None
        self.nu = np.full(num_constraints, float(nu_init), dtype=np.float64)

    def update(self, mean_costs: np.ndarray, limits: np.ndarray) -> np.ndarray:
        """Feed one measurement of the episode costs; return the new multipliers.

        ``mean_costs`` are the rollout's mean episode costs ``J_c`` and ``limits`` the
        thresholds ``d``, one per constraint.
        """
        cost = np.asarray(mean_costs, dtype=np.float64)
        delta = cost - np.asarray(limits, dtype=np.float64)
        self.integral = np.maximum(0.0, self.integral + delta)
        rise = cost - (cost if self.prev_cost is None else self.prev_cost)
        deriv = np.maximum(0.0, rise)
        self.prev_cost = cost.copy()
        self.nu = np.maximum(0.0, self.kp * delta + self.ki * self.integral + self.kd * deriv)
        return self.nu.copy()


def ppo_lagrangian_policy_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv_r: torch.Tensor,
    adv_cs: torch.Tensor | Sequence[torch.Tensor],
    nus: Sequence[float] | np.ndarray | torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """The PPO-Lagrangian policy loss (to minimise).

    ``[-clipped_surrogate(A_r) + sum_i nu_i * mean(ratio * A_ci)] / (1 + sum_i nu_i)``

    The reward term is PPO's clipped surrogate; each cost term is the plain
    importance-weighted cost advantage, penalised by its multiplier (making a costly
    action *less* likely lowers the loss). Dividing by ``1 + sum nu`` keeps the
    gradient's scale bounded as the multipliers grow. ``new_logp`` and ``old_logp``
    are the log-probabilities of the ``B`` sampled actions under the current and the
    rollout's policy, ``adv_r`` their reward advantages, ``adv_cs`` the cost
    advantages, ``(m, B)`` or a list of ``m`` tensors of shape ``(B,)``, ``nus`` the
    ``m`` multipliers and ``clip`` PPO's clip range.
    """
    ratio = torch.exp(new_logp - old_logp)
    surrogate = torch.min(ratio * adv_r, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv_r)
    loss = -surrogate.mean()
    nus_t = torch.as_tensor(np.asarray(nus, dtype=np.float64), dtype=new_logp.dtype)
    if nus_t.numel() == 0:
        return loss
    adv_c = adv_cs if isinstance(adv_cs, torch.Tensor) else torch.stack(list(adv_cs))
    adv_c = adv_c.reshape(nus_t.numel(), -1)
    penalty = (nus_t * (ratio.unsqueeze(0) * adv_c).mean(dim=1)).sum()
    return (loss + penalty) / (1.0 + nus_t.sum())


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the agent's tiny tensor ops on one thread, then restore the caller's setting.

    The networks are a few thousand weights: torch's intra-op threads only add
    synchronisation, and on a shared 2-core machine that made updates ~10x slower.
    The env (which evaluates real models) keeps every thread between agent calls.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------


def mlp(sizes: Sequence[int], out_gain: float, generator: torch.Generator) -> nn.Sequential:
    """Tanh MLP with orthogonal init (hidden gain sqrt(2), output ``out_gain``), zero biases."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2), generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian over pre-squash actions: MLP mean, state-independent log std.

    A small output gain (0.01) starts every mean near 0, i.e. mid-range actions.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        log_std_init: float,
        generator: torch.Generator,
    ):
        super().__init__()
        self.mean = mlp([obs_dim, *hidden, act_dim], 0.01, generator)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.mean(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))


class Critics(nn.Module):
    """One reward critic and one cost critic per constraint, each its own MLP."""

    def __init__(
        self, obs_dim: int, num_constraints: int, hidden: Sequence[int], generator: torch.Generator
    ):
        super().__init__()
        self.reward = mlp([obs_dim, *hidden, 1], 1.0, generator)
        self.costs = nn.ModuleList(
            mlp([obs_dim, *hidden, 1], 1.0, generator) for _ in range(num_constraints)
        )

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_r, v_c)`` with shapes ``(B,)`` and ``(B, m)``."""
        v_r = self.reward(obs).squeeze(-1)
        if len(self.costs) == 0:
            return v_r, obs.new_zeros(obs.shape[0], 0)
        return v_r, torch.cat([c(obs) for c in self.costs], dim=-1)


# --------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------


@register_method("cpl")
class CPL(Searcher):
    """PPO-Lagrangian pruning search (method id ``cpl``).

    ``CPL(episodes=300, seed=0).search(env)`` trains on ``env`` for ``episodes``
    episodes and returns the best feasible policy the env evaluated. Hyperparameters
    come from ``config`` and keyword ``overrides`` (field names of :class:`CPLConfig`);
    ``seed``, ``progress``, ``callback`` and ``refine`` are
    :class:`~rlprune.agents.base.Searcher`'s. Callbacks get,
    besides the common entries, ``costs`` (the episode's cost ratios), ``multipliers``
    (those in force during the episode) and ``timesteps``. ``extra["curves"]`` of the
    result adds ``multiplier/<name>`` to the common curves.
    """

    default_episodes = 300
    env_options = {"repair": "boundary"}
    batches = True

    def __init__(self, episodes: int | None = None, seed: int = 0, progress: bool = True,
                 callback: Any = None, refine: bool = False, config: CPLConfig | None = None,
                 **overrides: Any):
        super().__init__(episodes, seed, progress, callback, refine)
        self.config: CPLConfig = make_config(CPLConfig, config, overrides, "cpl")
        # the agent's own random generators: global random state is never touched
        self.torch_gen = torch.Generator().manual_seed(self.seed)
        self.np_rng = np.random.default_rng(self.seed)
        # networks and optimisers, built from the env's spaces on the first search
        self.policy: GaussianPolicy | None = None
        self.critics: Critics | None = None
        self.pi_opt: torch.optim.Adam | None = None
        self.vf_opt: torch.optim.Adam | None = None
        self.pid: PIDLagrangian | None = None
        self.nu = np.zeros(0)
        self.limits = np.zeros(0)
        self.dims: dict[str, Any] = {}
        self.timesteps = 0

    def _total_episodes(self, env: PruningEnv) -> int:
        if self.config.total_timesteps is not None:
            return max(1, math.ceil(self.config.total_timesteps / _env_dims(env)["episode_steps"]))
        return self.episodes

    # ---------------------------------------------------------------- the main loop

    def _run(self, env: PruningEnv) -> None:
        """Rollout -> multipliers -> PPO update, until the episode budget is spent."""
        cfg = self.config
        self._setup(env)
        total = self._total_episodes(env)
        # The authors' 128-step rollouts, unless the search is so short that fewer than
        # ``min_updates`` policy/multiplier updates would happen (a 40-episode search of a
        # 3-layer model would otherwise never update at all).
        # ``rollout_steps`` per candidate proposed together, as with the authors'
        # vectorised envs (128 steps per env), so that a batch fills the workers
        parallel = max(1, int(getattr(getattr(env, "evaluator", None), "parallel", 1)))
        # the last ``polish`` share of the episodes searches around the best candidate
        n_polish = (int(round(total * cfg.polish))
                    if hasattr(env, "evaluator") and total > 3 else 0)
        ppo_total = total - n_polish
        eps_per_rollout = parallel * max(1, math.ceil(cfg.rollout_steps
                                                      / self.dims["episode_steps"]))
        if cfg.min_updates > 0:
            eps_per_rollout = max(1, min(eps_per_rollout, ppo_total // cfg.min_updates))
        history = getattr(env, "evaluator", env).history
        if cfg.warm_start and hasattr(env, "evaluator") and total > 3:
            self._warm_start(env)
        obs, _ = env.reset(seed=self.seed)
        while self.episode < total:
            if self.episode >= ppo_total and history.best is not None:
                self._polish(env, total)  # PPO goes on only while nothing is feasible
                break
            # 1. rollout of whole episodes with the current policy and multipliers
            history.tags["multipliers"] = [float(v) for v in self.nu]
            end = ppo_total if self.episode < ppo_total else total
            batch, obs = self._collect_rollout(env, obs, min(eps_per_rollout,
                                                             end - self.episode))
            # 2. multipliers from the measured mean episode costs
            mean_costs = batch["episode_costs"].mean(axis=0)
            if self.pid is not None:
                self.nu = self.pid.update(mean_costs, self.limits)
            else:
                self.nu = update_multipliers(self.nu, mean_costs, self.limits, cfg.lagrangian_lr)
            # 3. PPO update of policy and critics with the new multipliers
            with one_thread():
                self._ppo_update(batch)

    def _result_extra(self, env: PruningEnv) -> dict[str, Any]:
        return {"multipliers": [float(v) for v in self.nu], "timesteps": self.timesteps}

    def _warm_start(self, env: PruningEnv) -> None:
        """Score the heuristics' allocations, then regress the policy mean onto the best."""
        from rlprune.agents.baselines import heuristic_policies, random_draw

        history = env.evaluator.history
        best = None
        heuristics = heuristic_policies(env)
        ev = env.evaluator
        for k in range(int(self.config.warm_random)):
            raw = random_draw(self.np_rng, env.max_ratios)
            heuristics[f"random{k}"] = ev.repair(raw, "boundary")[0] if not ev.bound.noisy \
                else ev.project(raw)
        if ev.parallel > 1 or ev.workers is not None:  # scored together, recorded in order
            ev.prefetch(list(heuristics.values()),
                        [self.episode + i for i in range(len(heuristics))])
        for name, policy in heuristics.items():
            history.tags["warm_start"] = name
            cand = env.evaluator.evaluate(policy, episode=self.episode)
            del history.tags["warm_start"]
            self._episode_end(env, cand.reward, warm_start=name)
            if cand.feasible and (best is None or history.key(cand) > history.key(best)):
                best = cand
        # the heuristics' candidates are this search's first episodes: the env numbers
        # the agent's own episodes after them
        env.episode = self.episode
        if best is not None:
            self._imitate(env.observations(best.policy), np.asarray(best.policy))

    def _polish(self, env: PruningEnv, total: int) -> None:
        """Local search around the best candidate until ``total`` episodes are spent.

        Proposals perturb the best candidate's keep ratios multiplicatively (so a layer
        that keeps 5% moves by about as large a share as one that keeps 50%) and are
        moved onto the budget's boundary (:meth:`~rlprune.evaluate.Evaluator.repair`);
        ``Evaluator.parallel`` of them are proposed and scored together. The step grows
        after a batch that improved on the best and shrinks after one that did not.
        Draws come from the agent's generator, so a resumed run proposes the same ones.
        """
        cfg = self.config
        ev = env.evaluator
        history = ev.history
        floor = 1.0 - np.asarray(env.max_ratios, dtype=np.float64)
        step = float(cfg.polish_step)
        history.tags["polish"] = True
        try:
            while self.episode < total and history.best is not None:
                best = history.best
                keep = 1.0 - np.asarray(best.policy, dtype=np.float64)
                n = min(max(1, int(ev.parallel)), total - self.episode)
                props = []
                for _ in range(n):
                    k = np.clip(keep * np.exp(step * self.np_rng.standard_normal(keep.shape)),
                                floor, 1.0)
                    props.append(ev.repair(1.0 - k, "boundary")[0])
                if n > 1 or ev.workers is not None:
                    ev.prefetch(props, [self.episode + i for i in range(n)])
                for pol in props:
                    cand = ev.evaluate(pol, episode=self.episode)
                    self._episode_end(env, cand.reward, polish=True)
                improved = history.best is not best
                step = float(np.clip(step * (1.5 if improved else 0.85), 0.01, 1.0))
        finally:
            del history.tags["polish"]
            env.episode = self.episode

    def _imitate(self, obs: np.ndarray, actions: np.ndarray, steps: int = 300) -> None:
        """Regress the policy's mean onto ``actions`` (env units) at ``obs``."""
        assert self.policy is not None
        low = np.asarray(self.dims["action_low"], dtype=np.float64)
        high = np.asarray(self.dims["action_high"], dtype=np.float64)
        z = np.clip(2.0 * (actions.reshape(-1, 1) - low) / np.maximum(high - low, 1e-12) - 1.0,
                    -0.95, 0.95)
        target = torch.as_tensor(np.arctanh(z), dtype=torch.float32)
        x = torch.as_tensor(obs, dtype=torch.float32)
        opt = torch.optim.Adam(self.policy.mean.parameters(), lr=1e-2)
        with one_thread():
            for _ in range(steps):
                loss = ((self.policy.mean(x) - target) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _collect_rollout(
        self, env: PruningEnv, obs: np.ndarray, n_eps: int
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Run ``n_eps`` whole episodes; return the batch with GAE advantages."""
        assert self.policy is not None and self.critics is not None
        m = len(self.limits)
        obs_l, u_l, rew_l, cost_l, done_l, ep_costs = [], [], [], [], [], []
        ep_reward, ep_cost = 0.0, np.zeros(m)
        done_eps = 0
        ev: Any = getattr(env, "evaluator", None)
        per_plan = int(getattr(ev, "parallel", 1))
        plan = hasattr(env, "prefetch") and (per_plan > 1 or getattr(ev, "workers", None))
        planned: deque[tuple[np.ndarray, np.ndarray]] = deque()
        while done_eps < n_eps:
            obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(-1))
            if plan and not planned:  # the next episodes' candidates, scored as one batch
                planned = self._plan(env, min(per_plan, n_eps - done_eps))
            if planned:
                u_np, action = planned.popleft()
            else:
                u_np, action = self._sample(obs_t)
            next_obs, reward, terminated, truncated, info = env.step(action.astype(np.float32))
            cost = np.asarray(info.get("cost", np.zeros(m)), dtype=np.float64).reshape(m)
            done = bool(terminated or truncated)
            obs_l.append(obs_t.numpy())
            u_l.append(u_np)
            rew_l.append(float(reward))
            cost_l.append(cost)
            done_l.append(float(done))
            ep_reward += float(reward)
            ep_cost += cost
            self.timesteps += 1
            obs = next_obs
            if done:
                ep_costs.append(ep_cost.copy())
                nu = [float(v) for v in self.nu]
                self._episode_end(
                    env, ep_reward, postfix=f" nu=[{', '.join(f'{v:.3f}' for v in nu)}]",
                    curves={f"multiplier/{n}": v
                            for n, v in zip(self.dims["constraint_names"], nu)},
                    costs=[float(c) for c in ep_cost], multipliers=nu, timesteps=self.timesteps,
                )
                ep_reward, ep_cost = 0.0, np.zeros(m)
                done_eps += 1
                obs, _ = env.reset()

        cfg = self.config
        b_obs = torch.as_tensor(np.stack(obs_l))
        b_u = torch.as_tensor(np.stack(u_l), dtype=torch.float32)
        with torch.no_grad(), one_thread():
            b_logp = self.policy(b_obs).log_prob(b_u).sum(-1)
            v_r, v_c = self.critics(b_obs)
        rewards, costs, dones = np.asarray(rew_l), np.stack(cost_l), np.asarray(done_l)
        # every rollout ends on a terminal step, so there is nothing to bootstrap
        adv_r, ret_r = compute_gae(rewards, v_r.numpy(), dones, 0.0, cfg.gamma, cfg.gae_lambda)
        adv_c, ret_c = compute_gae(
            costs, v_c.numpy(), dones, np.zeros(m), cfg.gamma, cfg.cost_gae_lambda
        )
        batch = {
            "obs": b_obs,
            "u": b_u,
            "logp": b_logp,
            "adv_r": adv_r,
            "ret_r": ret_r,
            "adv_c": adv_c,
            "ret_c": ret_c,
            "episode_costs": np.stack(ep_costs),
        }
        return batch, obs

    def _sample(self, obs_t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One draw of the policy at ``obs_t``: the unbounded ``u`` and the env action."""
        assert self.policy is not None
        low = np.asarray(self.dims["action_low"], dtype=np.float64)
        high = np.asarray(self.dims["action_high"], dtype=np.float64)
        with torch.no_grad(), one_thread():
            dist = self.policy(obs_t)
            # sample u unbounded; the env gets the tanh-squashed, rescaled action
            u = dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=self.torch_gen)
        u_np = u.numpy().astype(np.float64)
        return u_np, low + (np.tanh(u_np) + 1.0) * 0.5 * (high - low)

    def _plan(self, env: PruningEnv, n_eps: int) -> deque[tuple[np.ndarray, np.ndarray]]:
        """Draw the actions of the next ``n_eps`` episodes and have their candidates
        scored together (:meth:`PruningEnv.prefetch`).

        Within a rollout the policy is fixed and an observation depends only on the
        ratios chosen before it, never on a score, so the episodes can be drawn before
        any is scored: the draws are the ones stepping would make, in the same order.
        """
        steps: deque[tuple[np.ndarray, np.ndarray]] = deque()
        policies = []
        for _ in range(n_eps):
            ratios: list[float] = []
            for t in range(env.T):
                obs_t = torch.as_tensor(env.observe(ratios).reshape(-1))
                u_np, action = self._sample(obs_t)
                steps.append((u_np, action))
                ratios.append(env.step_ratio(action.astype(np.float32), t))
            policies.append(ratios)
        env.prefetch(policies)
        return steps

    def _ppo_update(self, batch: dict[str, Any]) -> dict[str, float]:
        """Clipped PPO epochs over shuffled minibatches; early stop on the KL target."""
        assert self.policy is not None and self.critics is not None
        assert self.pi_opt is not None and self.vf_opt is not None
        cfg = self.config
        n = len(batch["obs"])
        adv_r_all = torch.as_tensor(batch["adv_r"], dtype=torch.float32)
        ret_r_all = torch.as_tensor(batch["ret_r"], dtype=torch.float32)
        adv_c_all = torch.as_tensor(batch["adv_c"], dtype=torch.float32)
        ret_c_all = torch.as_tensor(batch["ret_c"], dtype=torch.float32)
        n_minibatches = max(1, n // cfg.minibatch_size)
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "approx_kl": 0.0, "epochs": 0.0}
        for _epoch in range(cfg.update_epochs):
            perm = self.np_rng.permutation(n)
            for mb in np.array_split(perm, n_minibatches):
                idx = torch.as_tensor(mb)
                dist = self.policy(batch["obs"][idx])
                new_logp = dist.log_prob(batch["u"][idx]).sum(-1)
                logratio = new_logp - batch["logp"][idx]
                with torch.no_grad():
                    approx_kl = ((logratio.exp() - 1.0) - logratio).mean().item()
                adv_r = adv_r_all[idx]
                adv_c = adv_c_all[idx]
                adv_c = adv_c - adv_c.mean(dim=0)
                if cfg.norm_adv and len(mb) > 1:
                    scale = adv_r.std() + 1e-8
                    adv_r = (adv_r - adv_r.mean()) / scale
                    if cfg.cost_adv_scale == "reward_std":
                        adv_c = adv_c / scale
                pi_loss = ppo_lagrangian_policy_loss(
                    new_logp, batch["logp"][idx], adv_r, adv_c.T, self.nu, cfg.clip_coef
                )
                if cfg.ent_coef:
                    pi_loss = pi_loss - cfg.ent_coef * dist.entropy().sum(-1).mean()
                self.pi_opt.zero_grad()
                pi_loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.pi_opt.step()

                v_r, v_c = self.critics(batch["obs"][idx])
                v_loss = ((v_r - ret_r_all[idx]) ** 2).mean()
                if v_c.shape[1]:
                    v_loss = v_loss + ((v_c - ret_c_all[idx]) ** 2).mean(dim=0).sum()
                self.vf_opt.zero_grad()
                v_loss.backward()
                nn.utils.clip_grad_norm_(self.critics.parameters(), cfg.max_grad_norm)
                self.vf_opt.step()
                stats["policy_loss"], stats["value_loss"] = pi_loss.item(), v_loss.item()
                stats["approx_kl"] = approx_kl
            stats["epochs"] += 1
            if cfg.target_kl is not None and stats["approx_kl"] > cfg.target_kl:
                break
        return stats

    # ---------------------------------------------------------------- networks

    def _setup(self, env: PruningEnv) -> None:
        """Read the spaces of ``env``; build networks and optimisers on first use."""
        dims = _env_dims(env)
        if self.policy is None:
            self._build(dims)
        else:
            for key in ("obs_dim", "act_dim", "num_constraints"):
                if self.dims[key] != dims[key]:
                    raise ValueError(
                        f"env {key}={dims[key]} differs from the agent's {key}={self.dims[key]}"
                        " (a trained agent must search the same kind of env)"
                    )
            self.dims.update(dims)

    def _build(self, dims: dict[str, Any]) -> None:
        cfg = self.config
        m = dims["num_constraints"]
        self.dims = dict(dims)
        limits = cfg.cost_limits
        if isinstance(limits, (int, float)):
            self.limits = np.full(m, float(limits))
        elif len(limits) == m:
            self.limits = np.asarray(limits, dtype=np.float64)
        else:
            raise ValueError(
                f"cost_limits has {len(limits)} values but the env has {m} constraints "
                f"({', '.join(dims['constraint_names'])}); give one value or one per constraint"
            )
        # weights come from the agent's generator; nn.Linear's default init would also
        # draw from torch's global RNG, so that draw is undone to leave it untouched
        with torch.random.fork_rng(devices=[]):
            self.policy = GaussianPolicy(
                dims["obs_dim"],
                dims["act_dim"],
                cfg.hidden_sizes,
                default_log_std(cfg.log_std_init, dims["granularity"]),
                self.torch_gen,
            )
            self.critics = Critics(dims["obs_dim"], m, cfg.hidden_sizes, self.torch_gen)
        if cfg.init_action is not None:
            self._start_mean_at(cfg.init_action)
        self.pi_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.vf_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.nu = np.full(m, cfg.nu_init, dtype=np.float64)
        self.pid = (
            PIDLagrangian(m, cfg.pid_kp, cfg.pid_ki, cfg.pid_kd, cfg.nu_init)
            if cfg.lagrangian == "pid"
            else None
        )

    def _start_mean_at(self, action: float) -> None:
        """Set the mean head's bias so the squashed initial mean is ``action``."""
        assert self.policy is not None
        low = np.asarray(self.dims["action_low"], dtype=np.float64)
        high = np.asarray(self.dims["action_high"], dtype=np.float64)
        # keep the tanh out of saturation so the policy can still move either way
        z = np.clip(2.0 * (float(action) - low) / np.maximum(high - low, 1e-12) - 1.0,
                    -0.95, 0.95)
        head = self.policy.mean[-1]
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.bias.copy_(torch.as_tensor(np.arctanh(z), dtype=head.bias.dtype))


#: ``CPLConfig.log_std_init`` when it is ``None``, by the space's granularity
#: (docs/RESULTS.md, cpl ablation).
LOG_STD_BY_GRANULARITY = {"channel": -1.0, "weight": -2.0}


def default_log_std(log_std_init: float | None, granularity: str) -> float:
    """``log_std_init``, or the default for ``granularity`` when it is ``None``."""
    if log_std_init is not None:
        return float(log_std_init)
    return LOG_STD_BY_GRANULARITY.get(granularity, LOG_STD_BY_GRANULARITY["channel"])


def _env_dims(env: PruningEnv) -> dict[str, Any]:
    """The sizes the agent needs from the env contract, with clear errors if absent."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"cpl needs a flat Box observation space, got {obs_space!r}")
    if not isinstance(act_space, spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"cpl needs a flat Box action space (prune ratios), got {act_space!r}")
    steps = getattr(env, "max_episode_steps", None)
    if steps is None:
        steps = len(env.space)
    names = list(getattr(env, "constraint_names", []))
    m = int(getattr(env, "num_constraints", len(names)))
    if len(names) != m:
        names = [f"c{i}" for i in range(m)]
    return {
        "obs_dim": int(obs_space.shape[0]),
        "act_dim": int(act_space.shape[0]),
        "num_constraints": m,
        "constraint_names": names,
        "episode_steps": int(steps),
        # plain lists keep the state loadable with torch.load(weights_only=True)
        "action_low": np.asarray(act_space.low, dtype=np.float64).tolist(),
        "action_high": np.asarray(act_space.high, dtype=np.float64).tolist(),
        "granularity": str(getattr(getattr(env, "space", None), "granularity", "channel")),
    }


@register_method("cpl-paper")
class CPLPaper(CPL):
    """``cpl`` as the paper ran it (method id ``cpl-paper``), kept for ablations.

    Every episode scores the policy the agent chose, in or out of the budget
    (``repair="none"``), and the policy starts mid-range (``warm_start=False``);
    ``cpl`` instead scores each episode's policy scaled onto the budget's boundary and
    starts from the best one-shot heuristic (docs/METHODS.md has the measurements).
    The arguments (``episodes``, ``seed``, ``progress``, ``callback``, ``refine``,
    ``config`` and ``overrides``) are :class:`CPL`'s, with ``warm_start`` off and
    ``log_std_init=-0.5`` unless an override says otherwise.
    """

    env_options = {"repair": "none"}

    def __init__(self, episodes: int | None = None, seed: int = 0, progress: bool = True,
                 callback: Any = None, refine: bool = False, config: CPLConfig | None = None,
                 **overrides: Any):
        overrides.setdefault("warm_start", False)
        overrides.setdefault("log_std_init", -0.5)
        super().__init__(episodes, seed, progress, callback, refine, config, **overrides)
