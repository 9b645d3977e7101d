"""The statistics compare reports, from scipy.stats: Wilson intervals of success rates,
exact Poisson intervals of drop rates, Fisher's exact test, Mann-Whitney U and the E-test of
two Poisson rates. By hand only what scipy has no function for: reading histogram buckets
as tied samples, and the exact Poisson interval from scipy's chi-square quantiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loginprobe.compare.promapi import CompareError

ALPHA = 0.05


def _scipy() -> Any:
    """scipy.stats, imported when compare first needs it (not at every CLI start)."""
    try:
        import scipy.stats
    except ImportError:
        raise CompareError(
            "loginprobe compare needs scipy: pip install 'loginprobe[compare]'"
        ) from None
    return scipy.stats


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval: unlike the textbook p ± z·se it keeps its coverage near 0%
    and 100% and for small n, which is where login success rates live."""
    if n == 0:
        return 0.0, 1.0
    ci = _scipy().binomtest(successes, n).proportion_ci(1 - ALPHA, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def fisher_exact(a_successes: int, a_n: int, b_successes: int, b_n: int) -> float:
    """Two-sided p-value of Fisher's exact test on successes/failures of two groups.

    Exact rather than the two-proportion z-test because success rates near 100% give
    expected failure counts below 5, where the z-test's normal approximation misleads.
    """
    if a_n == 0 or b_n == 0:
        return 1.0
    table = [[a_successes, a_n - a_successes], [b_successes, b_n - b_successes]]
    return min(1.0, float(_scipy().fisher_exact(table).pvalue))


def mann_whitney_binned(a: Sequence[int], b: Sequence[int]) -> tuple[float, float] | None:
    """Two-sided p-value and P(a slower than b) from two groups' counts in the same bins.

    A histogram keeps only which bucket each attempt fell in, i.e. an order with ties. The
    Mann-Whitney U test needs nothing more: each bucket is one tie group, the tie-corrected
    variance accounts for the binning exactly, and it answers the question asked (does one
    group tend to be slower?). A chi-square test on the bucket counts would instead flag any
    change of shape in either direction. The cost: a difference that stays within one
    bucket is invisible (conservative). scipy's asymptotic test with continuity correction;
    fine from a few dozen attempts a group.
    """
    import numpy as np

    na, nb = sum(a), sum(b)
    if na == 0 or nb == 0:
        return None
    if sum(1 for ca, cb in zip(a, b, strict=True) if ca or cb) == 1:
        return 1.0, 0.5  # every attempt of both groups in one bucket: nothing tells them apart
    bins = np.arange(len(a), dtype=np.int32)
    x, y = np.repeat(bins, list(a)), np.repeat(bins, list(b))
    result = _scipy().mannwhitneyu(x, y, alternative="two-sided", method="asymptotic",
                                   use_continuity=True)
    return min(1.0, float(result.pvalue)), float(result.statistic) / (na * nb)


def poisson_interval(events: int, exposure: float) -> tuple[float, float]:
    """Exact (Garwood) 95% interval of a rate: events counted over `exposure` (for drops,
    session-hours). scipy has the chi-square quantiles, not this interval."""
    if exposure <= 0:
        return 0.0, float("inf")
    chi2 = _scipy().chi2
    lo = 0.0 if events == 0 else float(chi2.ppf(ALPHA / 2, 2 * events)) / 2
    hi = float(chi2.ppf(1 - ALPHA / 2, 2 * events + 2)) / 2
    return lo / exposure, hi / exposure


def poisson_rates_p(a_events: int, a_exposure: float, b_events: int,
                    b_exposure: float) -> float | None:
    """Two-sided p-value that two Poisson rates differ (scipy's E-test, Krishnamoorthy and
    Thomson), e.g. drops per session-hour on two network types; None without exposure."""
    if a_exposure <= 0 or b_exposure <= 0:
        return None
    if a_events == 0 and b_events == 0:
        return 1.0
    result = _scipy().poisson_means_test(a_events, a_exposure, b_events, b_exposure)
    return min(1.0, float(result.pvalue))
