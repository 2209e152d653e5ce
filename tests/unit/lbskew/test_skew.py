"""Skew indices and the chi-square test (checked against scipy)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2, chisquare

from agent.netstate.skew import assess, chi2_sf, chi2_statistic, gammaincc


@given(
    st.floats(min_value=0.0, max_value=2000.0, allow_nan=False),
    st.integers(min_value=1, max_value=500),
)
def test_chi2_sf_matches_scipy(x: float, dof: int) -> None:
    """Our survival function agrees with scipy.stats.chi2.sf (relative 1e-9 or absolute 1e-300)."""
    ours, theirs = chi2_sf(x, dof), float(chi2.sf(x, dof))
    assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-300)


@pytest.mark.parametrize("a,x", [(0.5, 1e-12), (0.5, 700.0), (250.0, 250.0), (1.0, math.inf)])
def test_gammaincc_edges(a: float, x: float) -> None:
    """Tiny and huge arguments stay within [0, 1] and match the closed forms where known."""
    q = gammaincc(a, x)
    assert 0.0 <= q <= 1.0
    if a == 1.0:
        assert q == math.exp(-x)


def test_statistic_matches_scipy_chisquare() -> None:
    """Pearson's statistic against unequal shares equals scipy.stats.chisquare's."""
    obs, shares = [40, 30, 50], [0.25, 0.25, 0.5]
    stat, dof = chi2_statistic(obs, shares)
    ref = chisquare(obs, [sum(obs) * s for s in shares])
    assert math.isclose(stat, ref.statistic) and dof == 2
    assert math.isclose(chi2_sf(stat, dof), ref.pvalue)


def test_even_traffic_is_not_skewed() -> None:
    """Equal counts: ratio 1, cv 0, p 1, not skewed."""
    r = assess([40, 40, 40], [1 / 3] * 3)
    assert (r.max_mean_ratio, r.cv, r.sufficient, r.skewed) == (1.0, 0.0, True, False)
    assert math.isclose(r.p_value, 1.0)


def test_pinned_traffic_is_skewed() -> None:
    """All connections on one of three endpoints: ratio 3 and a tiny p-value."""
    r = assess([60, 0, 0], [1 / 3] * 3)
    assert r.skewed and r.max_mean_ratio == 3.0 and r.p_value < 1e-9


def test_small_samples_never_alarm() -> None:
    """Three connections all on one endpoint: indices show it, but no test and no verdict."""
    r = assess([3, 0, 0], [1 / 3] * 3, min_samples=30)
    assert r.max_mean_ratio == 3.0
    assert not r.sufficient and not r.skewed and r.p_value == 1.0


def test_too_few_expected_per_endpoint_is_insufficient() -> None:
    """40 connections over 10 endpoints (4 expected each) is below Cochran's 5 per cell."""
    r = assess([40] + [0] * 9, [0.1] * 10, min_samples=30)
    assert not r.sufficient and not r.skewed


def test_traffic_following_a_broken_chain() -> None:
    """Counts that match .8/.1/.1 rules: the rules' test passes, the fair test flags skew."""
    r = assess([80, 10, 10], [0.8, 0.1, 0.1], [1 / 3] * 3)
    assert r.p_value > 0.5
    assert r.fair_p_value < 1e-9 and r.skewed


def test_moderate_unevenness_below_the_ratio_threshold_is_not_skewed() -> None:
    """Significant but small imbalance (ratio < 1.5) on a big sample is not an alarm."""
    r = assess([1200, 1000, 1000], [1 / 3] * 3)
    assert r.fair_p_value < 1e-3 and r.max_mean_ratio < 1.5 and not r.skewed


def test_weighted_fair_shares() -> None:
    """IPVS weights 1:3 with 25/75 connections are exactly fair."""
    r = assess([25, 75], [0.25, 0.75], [0.25, 0.75])
    assert r.max_mean_ratio == 1.0 and not r.skewed


def test_mismatched_lengths_are_rejected() -> None:
    """Counts and shares must describe the same endpoints."""
    with pytest.raises(ValueError):
        assess([1, 2], [1.0])
