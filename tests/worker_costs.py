"""Costs for the worker tests, at module level so that worker processes can unpickle them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from torch import nn


def fragile_params(model: nn.Module, marker: str = "", main_pid: int = 0) -> float:
    """The model's parameter count; the first call in a process other than ``main_pid``
    kills that process (SIGKILL, as the out-of-memory killer does), once per ``marker``."""
    if marker and os.getpid() != main_pid:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return float(sum(p.numel() for p in model.parameters()))


def killed_pid(marker: str) -> int | None:
    """The pid that ``fragile_params`` killed for ``marker`` (``None``: none yet)."""
    path = Path(marker)
    return int(path.read_text()) if path.is_file() and path.read_text() else None


class FragileParams:
    """``fragile_params`` bound to a marker and the main process (a picklable cost)."""

    def __init__(self, marker: str, main_pid: int):
        self.marker = marker
        self.main_pid = main_pid

    def __call__(self, model: nn.Module) -> float:
        return fragile_params(model, self.marker, self.main_pid)


def params_count(model: nn.Module) -> float:
    """The model's parameter count (``FragileParams`` that never kills)."""
    return fragile_params(model)
