"""Search methods. Importing this package registers every method by name:
``cpl`` (PPO-Lagrangian), ``purl`` (DQN, dense reward), ``amc`` (DDPG, action wall),
and the baselines ``uniform``, ``random`` and ``global``."""

from rlprune.agents import amc, baselines, cpl, purl  # noqa: F401  (registration)
from rlprune.agents.base import SearchResult, get_method, list_methods, register_method

__all__ = ["SearchResult", "get_method", "list_methods", "register_method"]
