"""The glue between Stable-Baselines3's training loop and :class:`~rlprune.agents.base.Searcher`.

``purl`` (DQN) and ``amc`` (DDPG) train SB3 models on the pruning env. SB3 calls a
``BaseCallback`` after every env step; :class:`EpisodeHook` collects the rewards the
learner received and, when an episode ends, hands it to the searcher's
``_episode_end`` (curves, progress, the user's callbacks), adding what the method
puts in :meth:`EpisodeHook.episode_info`. SB3 seeds the global random generators when
a model is built and draws from them while it learns, so a method builds and trains
its model inside one :func:`~rlprune.agents.base.preserve_global_rng` block.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from rlprune.agents.base import Searcher

__all__ = ["EpisodeHook"]


class EpisodeHook(BaseCallback):
    """Per-episode bookkeeping of an SB3 search over a ``PruningEnv``.

    The searcher's callbacks get ``step_rewards`` (the rewards the learner received,
    in order) besides the common entries and whatever :meth:`episode_info` adds.
    ``searcher`` is the method whose episodes are recorded and ``env`` the pruning env
    the learner acts on.
    """

    def __init__(self, searcher: Searcher, env: Any):
        super().__init__(verbose=0)
        self.searcher = searcher
        self.penv = env
        self.step_rewards: list[float] = []

    def _on_step(self) -> bool:
        self.step_rewards.append(float(np.asarray(self.locals["rewards"]).reshape(-1)[0]))
        if bool(np.asarray(self.locals["dones"]).reshape(-1)[0]):
            info = self.locals["infos"][0]
            extra = self.episode_info(info)
            self.searcher._episode_end(self.penv, float(sum(self.step_rewards)), curves=extra,
                                       step_rewards=list(self.step_rewards))
            self.step_rewards = []
        return True

    def episode_info(self, info: dict[str, Any]) -> dict[str, float]:
        """Method-specific numbers for the curves and the callbacks (override).

        ``info`` is the ``info`` dict of the episode's last step, as the env returned
        it; the numbers returned are added to the episode's curves and to what the
        searcher's callbacks receive.
        """
        return {}

    def replay_buffer(self) -> ReplayBuffer:
        """The replay buffer of the off-policy learner (DQN, DDPG) this hook drives.

        SB3 types a callback's ``model`` as any ``BaseAlgorithm``; only off-policy ones
        have a buffer. This is where rlprune reaches into SB3's internals, checked once.
        """
        model = self.model
        if not isinstance(model, OffPolicyAlgorithm) or model.replay_buffer is None:
            raise TypeError(f"{type(model).__name__} has no replay buffer: the hook needs an "
                            "off-policy SB3 algorithm that has started learning")
        return model.replay_buffer
