"""Search methods. Importing this package registers every method by name:
``cpl`` (PPO-Lagrangian; ``cpl-paper`` as the paper ran it), ``purl`` (DQN, dense
reward), ``amc`` (DDPG, action wall), and the baselines ``uniform``, ``random``,
``global`` and ``lamp``. Every method is a
:class:`~rlprune.agents.base.Searcher`."""

from rlprune.agents import amc, baselines, cpl, purl  # noqa: F401  (registration)
from rlprune.agents.base import (
    Callback,
    Searcher,
    SearchResult,
    get_method,
    list_methods,
    method_class,
    register_method,
)

__all__ = ["Callback", "Searcher", "SearchResult", "get_method", "list_methods", "method_class",
           "register_method"]
