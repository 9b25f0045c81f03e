"""rlprune: prune trained PyTorch networks with reinforcement learning to fit a budget.

The one-call API is :func:`rlprune.prune`; :func:`rlprune.compare` runs several
methods side by side; :func:`rlprune.load` loads a saved pruned model.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prune": ("rlprune.api", "prune"),
    "compare": ("rlprune.api", "compare"),
    "load": ("rlprune.api", "load"),
    "PruneResult": ("rlprune.api", "PruneResult"),
    "Budget": ("rlprune.costs", "Budget"),
    "NoiseRule": ("rlprune.noise", "NoiseRule"),
    "PruningSpace": ("rlprune.space", "PruningSpace"),
    "PruningEnv": ("rlprune.env", "PruningEnv"),
    "Evaluator": ("rlprune.evaluate", "Evaluator"),
    "Callback": ("rlprune.agents.base", "Callback"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    # Lazy so that `import rlprune` stays cheap and the CLI starts fast.
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'rlprune' has no attribute {name!r}")
