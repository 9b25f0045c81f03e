"""The proxy-correlation study's rank correlation (benchmarks/proxy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.proxy import spearman  # the repository's package (pytest's pythonpath)
from scipy.stats import spearmanr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 30).astype(float)  # many ties
    b = a + rng.normal(0, 2, 30)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_of_a_monotone_map_is_one_and_of_a_constant_nan():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(10)))
