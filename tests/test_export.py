"""Tests of ``rlprune.export``: ONNX export and its onnxruntime check against PyTorch.

The export of real run results (dynamic batch, agreement on an unseen batch size) is
checked through the run folder in ``test_report.py``; here are the failure paths and
every registry model, channel- and weight-pruned.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune import export, models


# --------------------------------------------------------------------------- failures
def test_onnx_failure_is_recorded_not_raised(tmp_path: Path) -> None:
    class ToFloat(nn.Module):
        """Returns a Python number: no exporter can turn that into an ONNX output."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> float:
            return self.fc(x).sum().item()

    with pytest.warns(RuntimeWarning, match="ONNX export failed"):
        info = export.export_onnx(ToFloat(), torch.randn(2, 4), tmp_path / "m.onnx",
                                  exporter="torchscript")
    assert info["ok"] is False and "torchscript" in info["error"]
    assert not (tmp_path / "m.onnx").exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    with pytest.raises(RuntimeError, match="ONNX export"):
        export.export_onnx(ToFloat(), torch.randn(2, 4), tmp_path / "m.onnx",
                           exporter="torchscript", strict=True)


def test_onnx_mismatch_is_flagged(tmp_path: Path) -> None:
    """A model that changes its output after export fails the onnxruntime check."""

    class Drifting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x) + (0.0 if torch.jit.is_tracing() else 1.0)

    with pytest.warns(RuntimeWarning, match="differs from PyTorch"):
        info = export.export_onnx(Drifting(), torch.randn(2, 4), tmp_path / "d.onnx",
                                  exporter="torchscript")
    assert info["ok"] is False and info["max_abs_diff"] == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------- every registry model
def _registry_input(name: str) -> torch.Tensor:
    if name == "digits_cnn":
        return torch.randn(2, 1, 8, 8)
    if name in ("lenet5", "lenet300"):
        return torch.randn(2, 1, 28, 28)
    return torch.randn(2, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_every_registry_model_exports_to_onnx(name: str, granularity: str,
                                              tmp_path: Path) -> None:
    """Channel- or weight-pruned registry models export and agree with PyTorch."""
    from rlprune.space import PruningSpace

    x = _registry_input(name)
    model = models.create(name, 10, x.shape[1]).eval()
    space = PruningSpace.from_model(model, x, granularity)
    pruned = space.apply(model, 0.5 * space.max_policy()).eval()
    info = export.export_onnx(pruned, x, tmp_path / "m.onnx", strict=True)
    # untrained deep nets have logits ~1e3: float32 rounding is relative to the output
    assert info["ok"] and info["max_abs_diff"] <= 1e-4 * max(1.0, info["output_scale"])
    assert info["dynamic_batch"] is True
