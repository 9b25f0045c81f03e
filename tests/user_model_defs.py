"""Model definitions as users keep them: a file with a class and factory functions.

``rlprune prune --model-def tests/user_model_defs.py:GroupedNet --weights sd.pt`` loads
from here in the tests (this file is not a test module: pytest does not collect it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupedNet(nn.Module):
    """A digits classifier with a GroupNorm, a grouped 3x3 conv and a 1x1 conv."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.gn = nn.GroupNorm(4, width)
        self.grouped = nn.Conv2d(width, 2 * width, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(2 * width)
        self.mix = nn.Conv2d(2 * width, 2 * width, 1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn(self.stem(x)))
        x = F.max_pool2d(F.relu(self.bn(self.grouped(x))), 2)
        return self.fc(F.relu(self.mix(x)).mean((2, 3)))


def wide() -> nn.Module:
    """A factory function: GroupedNet with a width fixed here."""
    return GroupedNet(width=48)


def needs_arguments(width: int) -> nn.Module:
    return GroupedNet(width)


def broken() -> nn.Module:
    raise RuntimeError("the factory's own bug")


def not_a_model() -> int:
    return 3


INSTANCE = GroupedNet(width=8)
