"""compare's statistics now come from scipy.stats: they agree with the hand-written
versions they replaced (kept below, verbatim, as the reference) on the cases those were
tested on and on a sweep of small tables; the Poisson interval and rate test against
textbook values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest

from loginprobe.compare.stats import (
    fisher_exact,
    mann_whitney_binned,
    poisson_interval,
    poisson_rates_p,
    wilson,
)

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

# --- the hand-written statistics compare used before scipy -------------------------------


def old_wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
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


def old_fisher_exact(a_successes: int, a_n: int, b_successes: int, b_n: int) -> float:
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


def old_mann_whitney_binned(a: Sequence[int], b: Sequence[int]) -> tuple[float, float] | None:
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


# --- old and new agree ------------------------------------------------------------------

WILSON_CASES = [(0, 10), (99, 100), (0, 0), (5, 5), (713, 720), (612, 720), (1, 3)]
FISHER_CASES = [(3, 4, 1, 4), (3, 8, 1, 8), (1, 10, 11, 14), (713, 720, 612, 720),
                (5, 5, 5, 5), (0, 0, 5, 5)]
MW_CASES = [([1] * 5 + [0] * 5, [0] * 5 + [1] * 5), ([2, 3, 1, 0], [0, 1, 3, 1]),
            ([3, 0], [5, 0]), ([0, 0], [1, 2]), ([10, 40, 30, 5, 0], [2, 20, 40, 30, 8])]


@pytest.mark.parametrize("successes,n", WILSON_CASES)
def test_wilson_agrees(successes: int, n: int) -> None:
    assert wilson(successes, n) == pytest.approx(old_wilson(successes, n), abs=1e-9)


@pytest.mark.parametrize("case", FISHER_CASES)
def test_fisher_agrees(case: tuple[int, int, int, int]) -> None:
    assert fisher_exact(*case) == pytest.approx(old_fisher_exact(*case), rel=1e-6)


def test_fisher_agrees_on_every_small_table() -> None:
    for a_n, b_n in ((4, 4), (6, 9)):
        for a, b in itertools.product(range(a_n + 1), range(b_n + 1)):
            assert fisher_exact(a, a_n, b, b_n) == pytest.approx(
                old_fisher_exact(a, a_n, b, b_n), rel=1e-6, abs=1e-12), (a, a_n, b, b_n)


@pytest.mark.parametrize("a,b", MW_CASES)
def test_mann_whitney_agrees(a: Sequence[int], b: Sequence[int]) -> None:
    new, old = mann_whitney_binned(a, b), old_mann_whitney_binned(a, b)
    if old is None:
        assert new is None
    else:
        assert new == pytest.approx(old, rel=1e-9, abs=1e-12)


# --- what scipy added -------------------------------------------------------------------


def test_poisson_interval() -> None:
    # Garwood's exact interval: 0 events -> [0, 3.689]; 10 events -> [4.795, 18.390].
    assert poisson_interval(0, 1.0) == pytest.approx((0.0, 3.688879), abs=1e-6)
    assert poisson_interval(10, 1.0) == pytest.approx((4.795389, 18.390356), abs=1e-6)
    lo, hi = poisson_interval(10, 5.0)  # per unit of exposure
    assert (lo, hi) == pytest.approx((4.795389 / 5, 18.390356 / 5), abs=1e-6)
    assert poisson_interval(3, 0.0) == (0.0, math.inf)


def test_poisson_rates() -> None:
    assert poisson_rates_p(30, 10.0, 10, 10.0) == pytest.approx(0.00136, abs=1e-4)
    assert poisson_rates_p(10, 10.0, 10, 10.0) == pytest.approx(1.0, abs=1e-6)
    assert poisson_rates_p(0, 5.0, 0, 5.0) == 1.0
    assert poisson_rates_p(3, 0.0, 1, 1.0) is None
