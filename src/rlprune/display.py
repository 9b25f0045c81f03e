"""How a run's numbers are shown to people, in one place for every report and plot.

``report.md``, the comparison tables (Markdown and console) and the plot titles all
show the same costs and accuracies; they format them with these helpers so a value
reads the same everywhere: counts with thousands separators, accuracies and ratios as
percentages, and a missing or non-finite value (a ``null`` read back from JSON, a
NaN accuracy without a test split) as a dash rather than ``nan``.
:func:`constraint_names` says which cost rows are the budget's constraints, as
opposed to rows only reported.

This module imports nothing from :mod:`rlprune`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["as_float", "fmt_num", "fmt_acc", "fmt_ratio", "constraint_names"]

#: What a missing or non-finite value is shown as.
MISSING = "–"


def as_float(v: Any) -> float:
    """``v`` as a float; ``None`` or anything not a number becomes NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def fmt_acc(v: Any) -> str:
    """An accuracy fraction ``v`` as a percentage with two decimals (``0.9164`` → ``91.64%``).

    A missing or non-finite ``v`` is shown as :data:`MISSING`.
    """
    f = as_float(v)
    return MISSING if not math.isfinite(f) else f"{100 * f:.2f}%"


def fmt_num(v: Any) -> str:
    """A count ``v`` with thousands separators (``12,029``), any other number to 4 digits.

    A missing or non-finite ``v`` is shown as :data:`MISSING`.
    """
    f = as_float(v)
    if not math.isfinite(f):
        return MISSING
    if f == int(f) and abs(f) < 1e15:
        return f"{int(f):,}"
    return f"{f:.4g}"


def fmt_ratio(v: Any) -> str:
    """A ratio ``v`` as a percentage with one decimal (``0.499`` → ``49.9%``).

    A missing or non-finite ``v`` is shown as :data:`MISSING`.
    """
    f = as_float(v)
    return MISSING if not math.isfinite(f) else f"{100 * f:.1f}%"


def constraint_names(costs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the budget's constraints among a result's cost rows: those not marked
    ``reported_only`` (costs measured for the report but not limited)."""
    return [n for n, c in costs.items() if not c.get("reported_only")]
