"""The statistics compare reports: Wilson intervals, Fisher's exact test, Mann-Whitney U."""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05
Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval: unlike the textbook p ± z·se it keeps its coverage near 0% and
    100% and for small n, which is where login success rates live."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a_successes: int, a_n: int, b_successes: int, b_n: int) -> float:
    """Two-sided p-value of Fisher's exact test on successes/failures of two groups.

    Exact rather than the two-proportion z-test because success rates near 100% give
    expected failure counts below 5, where the z-test's normal approximation misleads.
    """
    n, s = a_n + b_n, a_successes + b_successes
    if a_n == 0 or b_n == 0:
        return 1.0

    def log_p(x: int) -> float:  # hypergeometric: x of the s successes fall in group a
        return _log_comb(a_n, x) + _log_comb(b_n, s - x) - _log_comb(n, s)

    observed = log_p(a_successes)
    # Sum every table no more likely than the observed one; the tolerance (as R and scipy
    # use) keeps tables equal to it from being lost to rounding.
    p = sum(
        math.exp(lp)
        for x in range(max(0, s - b_n), min(a_n, s) + 1)
        if (lp := log_p(x)) <= observed + 1e-7
    )
    return min(1.0, p)


def mann_whitney_binned(a: Sequence[int], b: Sequence[int]) -> tuple[float, float] | None:
    """Two-sided p-value and P(a slower than b) from two groups' counts in the same bins.

    A histogram keeps only which bucket each attempt fell in, i.e. an order with ties. The
    Mann-Whitney U test needs nothing more: each bucket is one tie group, the tie-corrected
    variance accounts for the binning exactly, and it answers the question asked (does one
    group tend to be slower?). A chi-square test on the bucket counts would instead flag any
    change of shape in either direction, and its p-value depends on how sparse buckets are
    merged. The cost: a difference that stays within one bucket is invisible (conservative).
    Normal approximation with continuity correction; fine from a few dozen attempts a group.
    """
    na, nb = sum(a), sum(b)
    if na == 0 or nb == 0:
        return None
    u = 0.0  # pairs (x from a, y from b) with x > y, ties counting one half
    b_below = 0
    for ca, cb in zip(a, b, strict=True):
        u += ca * (b_below + cb / 2)
        b_below += cb
    n = na + nb
    ties = sum((ca + cb) ** 3 - (ca + cb) for ca, cb in zip(a, b, strict=True))
    var = na * nb / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:  # every attempt of both groups in one bucket: nothing tells them apart
        return 1.0, u / (na * nb)
    z = max(0.0, abs(u - na * nb / 2) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2))), u / (na * nb)
