"""Skew indices over per-endpoint connection counts, and the chi-square test behind them.

Called by agent.collectors.lbskew once per Service port per tick. The chi-square survival
function is computed here with the regularized upper incomplete gamma function (series for
x < a + 1, Lentz's continued fraction otherwise; Numerical Recipes §6.2) rather than imported
from scipy, which would add ~30 MB of RSS to a daemon that targets 80 MiB; the tests compare it
with scipy.stats.chi2.sf.

Two reference distributions are tested:
- ``expected`` shares: what the rules imply (the KUBE-SVC chain's probabilities, IPVS weights).
  A small p-value means the traffic does not follow the rules (long-lived connections pinned
  to a few endpoints, clients that reuse connections).
- ``fair`` shares: what the operator intends (equal for kube-proxy's iptables mode, the weights
  for IPVS). The verdict ``skewed`` uses these: a Service is skewed when the sample is large
  enough, the most loaded endpoint carries at least ``ratio_threshold`` times its fair load,
  and the fair-share test rejects at level ``alpha``. Requiring both an effect size and a
  significance level is what keeps small or noisy samples from raising alarms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MIN_SAMPLES = 30
DEFAULT_ALPHA = 1e-3
DEFAULT_RATIO_THRESHOLD = 1.5
# Cochran's rule: the chi-square approximation needs >= 5 expected observations per cell.
MIN_EXPECTED_PER_ENDPOINT = 5.0

_EPS = 1e-15
_FPMIN = 1e-300
_MAX_ITER = 10_000


def _log_prefactor(a: float, x: float) -> float:
    return -x + a * math.log(x) - math.lgamma(a)


def _lower_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (good for x < a + 1)."""
    term = total = 1.0 / a
    n = a
    for _ in range(_MAX_ITER):
        n += 1.0
        term *= x / n
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(_log_prefactor(a, x))


def _upper_fraction(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by Lentz's continued fraction (x >= a + 1)."""
    b = x + 1.0 - a
    c = 1.0 / _FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _FPMIN:
            d = _FPMIN
        c = b + an / c
        if abs(c) < _FPMIN:
            c = _FPMIN
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(_log_prefactor(a, x)) * h


def gammaincc(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Γ(a, x) / Γ(a), for a > 0."""
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return min(1.0, max(0.0, 1.0 - _lower_series(a, x)))
    return min(1.0, max(0.0, _upper_fraction(a, x)))


def chi2_sf(x: float, dof: float) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` degrees of freedom."""
    if dof <= 0:
        raise ValueError("dof must be positive")
    return gammaincc(dof / 2.0, x / 2.0)


def chi2_statistic(observed: Sequence[float], shares: Sequence[float]) -> tuple[float, int]:
    """Pearson's statistic of ``observed`` against ``shares`` (renormalised over cells with a
    positive share; observations in zero-share cells are left out) and its degrees of freedom."""
    cells = [(o, s) for o, s in zip(observed, shares, strict=True) if s > 0]
    total = sum(o for o, _ in cells)
    share_sum = sum(s for _, s in cells)
    if total <= 0 or len(cells) < 2:
        return 0.0, 0
    stat = 0.0
    for o, s in cells:
        e = total * s / share_sum
        stat += (o - e) ** 2 / e
    return stat, len(cells) - 1


@dataclass(frozen=True, slots=True)
class SkewResult:
    """Skew of one Service port over one tick."""

    total: int
    max_mean_ratio: float  # max over endpoints of observed / fair expected count (1 = even)
    cv: float  # coefficient of variation of observed / fair expected count (0 = even)
    p_value: float  # chi-square vs the rules' expected shares; 1.0 when not tested
    fair_p_value: float  # chi-square vs the fair shares; 1.0 when not tested
    sufficient: bool  # enough samples for the test to mean something
    skewed: bool


def assess(
    counts: Sequence[int],
    expected: Sequence[float],
    fair: Sequence[float] | None = None,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    alpha: float = DEFAULT_ALPHA,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
) -> SkewResult:
    """Compute the skew indices of ``counts`` (one per endpoint, in the order of the shares).

    ``fair`` defaults to equal shares over the endpoints with a positive expected share.
    """
    if len(counts) != len(expected):
        raise ValueError("counts and expected shares differ in length")
    if fair is None:
        live = sum(1 for s in expected if s > 0) or len(expected)
        fair = [1.0 / live if (s > 0 or live == len(expected)) else 0.0 for s in expected]
    cells = [(c, f) for c, f in zip(counts, fair, strict=True) if f > 0]
    total = sum(c for c, _ in cells)
    if total <= 0 or len(cells) < 2:
        return SkewResult(total, 1.0 if total else 0.0, 0.0, 1.0, 1.0, False, False)
    share_sum = sum(f for _, f in cells)
    loads = [c / (total * f / share_sum) for c, f in cells]
    ratio = max(loads)
    mean = sum(loads) / len(loads)
    cv = math.sqrt(sum((x - mean) ** 2 for x in loads) / len(loads)) / mean if mean else 0.0

    min_share = min(f / share_sum for _, f in cells)
    exp_pos = [s for s in expected if s > 0]
    if exp_pos:
        exp_sum = sum(exp_pos)
        min_share = min(min_share, min(exp_pos) / exp_sum)
    sufficient = total >= min_samples and total * min_share >= MIN_EXPECTED_PER_ENDPOINT
    p_value = fair_p = 1.0
    if sufficient:
        stat, dof = chi2_statistic(counts, expected)
        p_value = chi2_sf(stat, dof) if dof else 1.0
        fstat, fdof = chi2_statistic(counts, fair)
        fair_p = chi2_sf(fstat, fdof) if fdof else 1.0
    skewed = sufficient and ratio >= ratio_threshold and fair_p < alpha
    return SkewResult(total, ratio, cv, p_value, fair_p, sufficient, skewed)
