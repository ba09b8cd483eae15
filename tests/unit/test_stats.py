"""Paired statistics: known values, independent re-implementations, simulations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps
from scipy.special import gammaln, xlogy
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from pytest_quantgate.statistics import power, stats

# --------------------------------------------------------------------------
# independent helpers (deliberately not sharing code with stats.py)


def profile_p01(b: int, c: int, n: int, delta: float) -> float:
    """Restricted MLE of p01 by numerically maximising the likelihood."""

    def neg_loglik(x: float) -> float:
        return -(xlogy(b, x + delta) + xlogy(c, x) + xlogy(n - b - c, 1.0 - 2.0 * x - delta))

    lo = max(0.0, -delta)
    hi = (1.0 - delta) / 2.0
    res = optimize.minimize_scalar(neg_loglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13})
    # The bounded search never evaluates the ends; the maximum may sit there.
    candidates = [res.x, lo, hi]
    return min(candidates, key=neg_loglik)


def tango_p21(b: int, c: int, n: int, delta: float) -> float:
    """Tango (1998) closed form: p21 = (−B + √(B² − 4AC))/(2A)."""
    a_ = 2.0 * n
    b_ = -b - c + (2.0 * n - b + c) * delta
    c_ = -c * delta * (1.0 - delta)
    return (-b_ + math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0))) / (2.0 * a_)


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    p21 = tango_p21(b, c, n, delta)
    var = (2.0 * p21 + delta - delta * delta) / n
    if var <= 0.0:
        return 0.0
    return ((b - c) / n - delta) / math.sqrt(var)


def brute_exact_tail(b: int, c: int, n: int, delta: float, upper: bool) -> float:
    """Exact unconditional tail by enumerating every table with scipy's multinomial."""
    x = tango_p21(b, c, n, delta)
    probs = [x + delta, x, max(1.0 - 2.0 * x - delta, 0.0)]
    z_obs = tango_z(b, c, n, delta)
    total = 0.0
    for bb in range(n + 1):
        for cc in range(n + 1 - bb):
            z = tango_z(bb, cc, n, delta)
            if (z >= z_obs - 1e-9) if upper else (z <= z_obs + 1e-9):
                total += sps.multinomial.pmf([bb, cc, n - bb - cc], n, probs)
    return min(total, 1.0)


def brute_tail_at(b: int, c: int, n: int, delta: float, psi: float, upper: bool) -> float:
    """The score tail at discordance ψ and the least favourable null drop, every table enumerated."""
    if (upper and delta < -psi) or (not upper and delta > psi):
        return 0.0  # H0 cannot hold at this ψ
    drop = min(max(delta, -psi), psi)
    probs = [(psi + drop) / 2, (psi - drop) / 2, 1.0 - psi]
    z_obs = tango_z(b, c, n, delta)
    total = 0.0
    for bb in range(n + 1):
        for cc in range(n + 1 - bb):
            z = tango_z(bb, cc, n, delta)
            if (z >= z_obs - 1e-9) if upper else (z <= z_obs + 1e-9):
                total += sps.multinomial.pmf([bb, cc, n - bb - cc], n, probs)
    return total


def brute_berger_boos(b: int, c: int, n: int, delta: float, upper: bool) -> float:
    """The exact p-value by enumeration: the largest tail over stats' ψ points, plus γ."""
    coarse = stats.psi_points(b, c, n, delta)
    tails = np.array([brute_tail_at(b, c, n, delta, float(psi), upper) for psi in coarse])
    fine = [brute_tail_at(b, c, n, delta, float(psi), upper) for psi in stats._refine(coarse, tails)]
    return min(max(float(tails.max()), max(fine)) + stats.BB_GAMMA, 1.0)


def test_psi_points_span_a_clopper_pearson_interval() -> None:
    points = stats.psi_points(8, 2, 100, 0.02)
    # statsmodels' Clopper–Pearson ("beta") interval at 1 − γ.
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(10, 100, alpha=stats.BB_GAMMA, method="beta")
    assert points.min() == pytest.approx(lo, rel=1e-9) and points.max() == pytest.approx(hi, rel=1e-9)
    psi0 = 2 * stats.restricted_p01(8, 2, 100, 0.02) + 0.02
    assert np.isclose(points, psi0).any() and np.all(np.diff(points) >= 0)


def brute_score_bound(b: int, c: int, n: int, alpha: float, upper: bool) -> float:
    """Inverts the score test on a grid of δ, then bisects the crossing."""
    crit = sps.norm.isf(alpha)
    grid = np.linspace(-0.999, 0.999, 1999)
    if upper:
        inside = [d for d in grid if tango_z(b, c, n, d) > -crit]
        lo = max(inside)
        hi = lo + 0.001
        f = lambda d: tango_z(b, c, n, d) + crit  # noqa: E731
    else:
        inside = [d for d in grid if tango_z(b, c, n, d) < crit]
        hi = min(inside)
        lo = hi - 0.001
        f = lambda d: tango_z(b, c, n, d) - crit  # noqa: E731
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if (f(mid) > 0) == (f(lo) > 0):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------
# McNemar's exact test

MCNEMAR_TABLES = [
    (0, 0),
    (1, 0),
    (0, 1),
    (1, 1),
    (2, 0),
    (5, 0),
    (0, 5),
    (3, 3),
    (7, 2),
    (2, 7),
    (10, 9),
    (9, 10),
    (32, 8),
    (8, 32),
    (150, 86),
    (86, 150),
    (40, 20),
    (25, 0),
    (1, 24),
]


@pytest.mark.parametrize(("b", "c"), MCNEMAR_TABLES)
def test_mcnemar_exact_against_statsmodels_and_scipy(b: int, c: int) -> None:
    n = b + c + 17
    ours = stats.regression_pvalue(b, c, n, 0.0, method="exact")
    two_sided = mcnemar([[17, b], [c, 0]], exact=True).pvalue
    if b + c == 0:
        assert ours == 1.0
        assert two_sided == 1.0
    elif b > c:
        # statsmodels doubles the smaller tail; for b > c that tail is ours.
        assert ours == pytest.approx(two_sided / 2.0, rel=1e-12)
    else:
        greater = sps.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert ours == pytest.approx(greater, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), MCNEMAR_TABLES)
def test_improvement_and_noninferiority_at_zero_are_the_lower_mcnemar_tail(b: int, c: int) -> None:
    n = b + c + 3
    expected = 1.0 if b + c == 0 else sps.binomtest(c, b + c, 0.5, alternative="greater").pvalue
    assert stats.improvement_pvalue(b, c, n) == pytest.approx(expected, rel=1e-12)
    assert stats.noninferiority_pvalue(b, c, n, 0.0) == pytest.approx(expected, rel=1e-12)
    # Swapping b and c swaps the two directions.
    assert stats.regression_pvalue(c, b, n, 0.0) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------
# Agresti's presidential approval table (Categorical Data Analysis, Table 10.1):
# 794 approve twice, 150 approve then disapprove, 86 the reverse, 570 never.


def test_agresti_presidential_approval_wald_interval() -> None:
    b, c, n = 150, 86, 1600
    se = stats.paired_se(b, c, n)
    assert (b - c) / n == pytest.approx(0.04)
    assert se == pytest.approx(0.0095, abs=5e-5)
    z = sps.norm.isf(0.025)
    assert (0.04 - z * se, 0.04 + z * se) == pytest.approx((0.021, 0.059), abs=6e-4)


def test_agresti_mcnemar_statistic() -> None:
    # Agresti reports z² = 17.36 for the McNemar statistic of that table.
    assert stats.score_z(150, 86, 1600, 0.0) ** 2 == pytest.approx(17.36, abs=0.01)


@pytest.mark.parametrize(("b", "c", "n"), [(0, 0, 0), (0, 0, 10), (3, 0, 3), (0, 5, 5)])
def test_paired_se_degenerate(b: int, c: int, n: int) -> None:
    assert stats.paired_se(b, c, n) == 0.0


# --------------------------------------------------------------------------
# DESIGN.md §4a worked values


@pytest.mark.parametrize(
    ("b", "c", "n", "delta", "z"),
    [
        (32, 8, 340, 0.02, 2.83),
        (0, 0, 340, 0.02, -2.63),
        (0, 0, 30, 0.02, -0.78),
        (0, 0, 340, 0.0, 0.0),
        (150, 86, 1600, 0.0, 64 / math.sqrt(236)),
    ],
)
def test_design_worked_z(b: int, c: int, n: int, delta: float, z: float) -> None:
    assert stats.score_z(b, c, n, delta) == pytest.approx(z, abs=0.005)


def test_design_worked_pvalue() -> None:
    # DESIGN §4a: the tail at the restricted MLE is 0.0024. The gate's exact
    # p-value takes the largest tail over a 99.9% interval of ψ, plus 0.001.
    z = stats.score_z(32, 8, 340, 0.02)
    psi0 = 2 * stats.restricted_p01(32, 8, 340, 0.02) + 0.02
    estimated = float(stats._tails_at(340, 0.02, True, z, np.array([psi0]))[0])
    assert estimated == pytest.approx(0.0024, abs=5e-5)
    p = stats.regression_pvalue(32, 8, 340, 0.02)
    assert estimated + stats.BB_GAMMA <= p < 0.005
    assert stats.regression_pvalue(0, 0, 340, 0.0) == 1.0


def test_identical_outcomes_exact_noninferiority() -> None:
    # With b = c = 0 only the all-concordant table is as extreme: (1 − ψ)^n,
    # largest at the smallest ψ under H0 (ψ = δ), plus γ.
    gamma = stats.BB_GAMMA
    assert stats.noninferiority_pvalue(0, 0, 340, 0.02) == pytest.approx(0.98**340 + gamma, rel=1e-9)
    assert stats.noninferiority_pvalue(0, 0, 30, 0.02) == pytest.approx(0.98**30 + gamma, rel=1e-9)


# --------------------------------------------------------------------------
# restricted MLE and the score statistic

P01_CASES = [
    (b, c, n, delta)
    for (b, c, n) in [
        (0, 0, 30),
        (5, 0, 30),
        (0, 5, 30),
        (7, 3, 50),
        (32, 8, 340),
        (3, 12, 40),
        (20, 0, 20),
        (0, 20, 20),
        (1, 1, 2),
    ]
    for delta in (-0.3, -0.05, -0.01, 0.0, 0.01, 0.05, 0.3)
]


@pytest.mark.parametrize(("b", "c", "n", "delta"), P01_CASES)
def test_restricted_p01_maximises_the_likelihood(b: int, c: int, n: int, delta: float) -> None:
    ours = stats.restricted_p01(b, c, n, delta)
    assert ours == pytest.approx(profile_p01(b, c, n, delta), abs=2e-6)
    assert ours == pytest.approx(tango_p21(b, c, n, delta), abs=1e-12)
    assert ours >= max(0.0, -delta) - 1e-12
    assert ours + delta <= 1.0 - ours + 1e-12


@pytest.mark.parametrize(("b", "c", "n"), [(0, 0, 30), (4, 1, 30), (10, 10, 60), (2, 9, 25)])
def test_restricted_p01_at_zero_and_mirror(b: int, c: int, n: int) -> None:
    assert stats.restricted_p01(b, c, n, 0.0) == pytest.approx((b + c) / (2 * n))
    for delta in (0.02, 0.1, 0.4):
        # Under Δ = −δ the roles of b and c swap: p01 = (p10 of the mirror).
        mirrored = stats.restricted_p01(c, b, n, delta) + delta
        assert stats.restricted_p01(b, c, n, -delta) == pytest.approx(mirrored, abs=1e-12)
        assert stats.score_z(b, c, n, -delta) == pytest.approx(-stats.score_z(c, b, n, delta))


def test_restricted_p01_no_cancellation_for_tiny_improvement_rate() -> None:
    # W < 0 and a tiny c: the textbook root would lose every digit.
    x = stats.restricted_p01(0, 1, 10**6, 0.3)
    assert x == pytest.approx(profile_p01(0, 1, 10**6, 0.3), rel=1e-4)
    assert x > 0.0


@pytest.mark.parametrize(("b", "c", "n"), [(0, 0, 30), (5, 2, 40), (2, 5, 40), (30, 0, 100)])
def test_score_z_is_decreasing_in_delta(b: int, c: int, n: int) -> None:
    zs = [stats.score_z(b, c, n, d) for d in np.linspace(-0.95, 0.95, 381)]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(zs))


# --------------------------------------------------------------------------
# score bounds


BOUND_CASES = [
    (0, 0, 30),
    (0, 0, 340),
    (32, 8, 340),
    (8, 32, 340),
    (5, 1, 20),
    (1, 5, 20),
    (150, 86, 1600),
    (12, 0, 12),
    (3, 3, 200),
    (40, 20, 160),
    (1, 7, 21),
]


@pytest.mark.parametrize(("b", "c", "n"), BOUND_CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.025])
def test_score_bounds_against_brute_force_inversion(b: int, c: int, n: int, alpha: float) -> None:
    upper = stats.score_upper_bound(b, c, n, alpha)
    lower = stats.score_lower_bound(b, c, n, alpha)
    assert lower <= (b - c) / n <= upper
    expected_upper = 1.0 if b == n else brute_score_bound(b, c, n, alpha, upper=True)
    assert upper == pytest.approx(expected_upper, abs=1e-7)
    assert lower == pytest.approx(brute_score_bound(b, c, n, alpha, upper=False), abs=1e-7)


@pytest.mark.parametrize(("b", "c", "n"), BOUND_CASES)
def test_score_bounds_solve_the_score_equation(b: int, c: int, n: int) -> None:
    crit = sps.norm.isf(0.05)
    upper = stats.score_upper_bound(b, c, n, 0.05)
    if upper < 1.0:
        assert stats.score_z(b, c, n, upper) == pytest.approx(-crit, abs=1e-6)
    lower = stats.score_lower_bound(b, c, n, 0.05)
    if lower > -1.0:
        assert stats.score_z(b, c, n, lower) == pytest.approx(crit, abs=1e-6)


def test_score_bounds_empty_slice_and_design_effect() -> None:
    assert stats.score_upper_bound(0, 0, 0, 0.05) == 1.0
    assert stats.score_lower_bound(0, 0, 0, 0.05) == -1.0
    assert stats.upper_bound(0, 0, 0, 0.05) == 1.0
    # A design effect widens the bound.
    plain = stats.score_upper_bound(10, 4, 100, 0.05)
    assert stats.score_upper_bound(10, 4, 100, 0.05, deff=2.0) > plain


# --------------------------------------------------------------------------
# exact unconditional p-values


EXACT_CASES = [
    (0, 0, 12, 0.05),
    (3, 0, 12, 0.05),
    (0, 3, 12, 0.1),
    (4, 1, 15, 0.02),
    (6, 2, 20, 0.1),
    (2, 2, 20, 0.05),
    (10, 0, 20, 0.3),
    (1, 9, 18, 0.2),
    (5, 5, 10, 0.15),
    (3, 1, 16, -0.05),
]


@pytest.mark.parametrize(("b", "c", "n", "delta"), EXACT_CASES)
def test_exact_pvalues_against_enumeration(b: int, c: int, n: int, delta: float) -> None:
    reg = stats.regression_pvalue(b, c, n, delta, method="exact", nested=False)
    non = stats.noninferiority_pvalue(b, c, n, delta, method="exact")
    assert reg == pytest.approx(brute_berger_boos(b, c, n, delta, upper=True), abs=1e-12)
    assert non == pytest.approx(brute_berger_boos(b, c, n, delta, upper=False), abs=1e-12)
    # The tail at the restricted MLE alone (the "estimated" p-value) is one of its terms.
    x = tango_p21(b, c, n, delta)
    z_obs = stats.score_z(b, c, n, delta)
    estimated = float(stats._tails_at(n, delta, True, z_obs, np.array([2 * x + delta]))[0])
    assert estimated == pytest.approx(brute_exact_tail(b, c, n, delta, upper=True), abs=1e-12)
    # The gate's nested p-value is never below the plain one.
    assert stats.regression_pvalue(b, c, n, delta) >= reg
    # Both tails contain the observed table, so they overlap.
    assert reg + non >= 1.0 - 1e-12


def test_exact_pvalue_matches_the_full_table_sum_at_larger_n() -> None:
    # The table box of stats._support must not drop visible mass.
    b, c, n, delta = 60, 25, 1200, 0.01
    i = np.arange(n + 1.0)
    bb, cc = np.meshgrid(i, i, indexing="ij")
    keep = bb + cc <= n
    bb, cc = bb[keep], cc[keep]
    x = tango_p21(b, c, n, delta)
    logp = sps.multinomial.logpmf(
        np.stack([bb, cc, n - bb - cc], axis=1), n, [x + delta, x, 1 - 2 * x - delta]
    )
    # Tango's statistic for every table, vectorised the textbook way.
    big_b = -bb - cc + (2.0 * n - bb + cc) * delta
    p21 = (-big_b + np.sqrt(big_b**2 + 8.0 * n * cc * delta * (1 - delta))) / (4.0 * n)
    zs = ((bb - cc) / n - delta) / np.sqrt((2 * p21 + delta - delta**2) / n)
    z_obs = tango_z(b, c, n, delta)
    full = float(np.exp(logp[zs >= z_obs - 1e-9]).sum())
    tail = stats._tails_at(n, delta, True, stats.score_z(b, c, n, delta), np.array([2 * x + delta]))
    assert float(tail[0]) == pytest.approx(full, abs=1e-12)


@pytest.mark.parametrize(("b", "c", "n", "delta"), [(32, 8, 340, 0.02), (5, 1, 200, 0.02), (0, 0, 30, 0.02)])
def test_normal_method_is_the_score_tail(b: int, c: int, n: int, delta: float) -> None:
    z = stats.score_z(b, c, n, delta)
    assert stats.regression_pvalue(b, c, n, delta, method="normal") == pytest.approx(sps.norm.sf(z))
    assert stats.noninferiority_pvalue(b, c, n, delta, method="normal") == pytest.approx(sps.norm.cdf(z))
    deffed = stats.regression_pvalue(b, c, n, delta, deff=2.5)
    assert deffed == pytest.approx(sps.norm.sf(z / math.sqrt(2.5)))


def test_auto_method_is_exact_at_every_n() -> None:
    assert stats.resolve_method(100_000) == "exact"
    assert stats.resolve_method(100, deff=1.5) == "normal"
    # At δ = 0 McNemar's exact test needs only b + c: (3, 0) is 0.5³ at any n,
    # where the normal approximation used to say 0.042 at n = 2500.
    assert stats.regression_pvalue(3, 0, 2500, 0.0) == pytest.approx(0.125)
    assert stats.regression_pvalue(3, 0, 10**5, 0.0) == pytest.approx(0.125)


def test_adding_a_concordant_case_does_not_flip_the_verdict() -> None:
    # The audit's example: the normal switch above n = 2000 turned
    # (51, 0, 2000) at δ = 0.02 from p 0.0509 into 0.0398 at n = 2001.
    p2000 = stats.regression_pvalue(51, 0, 2000, 0.02)
    p2001 = stats.regression_pvalue(51, 0, 2001, 0.02)
    assert 0.05 < p2000 < 0.053 and 0.05 < p2001 < 0.053
    assert abs(p2001 - p2000) < 5e-4


@pytest.mark.parametrize(
    ("b", "c", "n", "delta"),
    [(2100, 1900, 100_000, 0.001), (5000, 3000, 100_000, 0.02), (60, 10, 5000, 0.005), (0, 0, 100_000, 0.02)],
)
def test_exact_tail_at_large_n_against_a_direct_sum(b: int, c: int, n: int, delta: float) -> None:
    """The per-discordant-count sum equals the plain sum over every table of non-negligible mass."""
    x = stats.restricted_p01(b, c, n, delta)
    p10, p01 = x + delta, x
    z_obs = stats.score_z(b, c, n, delta)
    b_lo, b_hi = stats._support(n, p10)
    c_lo, c_hi = stats._support(n, p01)
    bb, cc = np.meshgrid(np.arange(b_lo, b_hi + 1.0), np.arange(c_lo, c_hi + 1.0), indexing="ij")
    logp = (
        math.lgamma(n + 1)
        - gammaln(bb + 1)
        - gammaln(cc + 1)
        - gammaln(np.maximum(n - bb - cc, 0) + 1)
        + xlogy(bb, p10)
        + xlogy(cc, p01)
        + xlogy(n - bb - cc, 1 - p10 - p01)
    )
    zs = np.where(bb + cc <= n, stats._z(bb, cc, float(n), delta), np.nan)
    slack = 1e-9 * max(1.0, abs(z_obs))
    upper = float(np.exp(logp[zs >= z_obs - slack]).sum())
    lower = float(np.exp(logp[zs <= z_obs + slack]).sum())
    # Both sides carry float rounding of log-factorials near 10⁶: ~1e-10.
    at_mle = np.array([p10 + p01])
    assert float(stats._tails_at(n, delta, True, z_obs, at_mle)[0]) == pytest.approx(upper, abs=1e-9)
    assert float(stats._tails_at(n, delta, False, z_obs, at_mle)[0]) == pytest.approx(lower, abs=1e-9)
    # The exact p-value is at least that tail, plus γ.
    assert stats.regression_pvalue(b, c, n, delta, nested=False) >= min(upper + stats.BB_GAMMA, 1.0) - 1e-9


@pytest.mark.parametrize("n", [5, 20, 60, 150, 1000])
@pytest.mark.parametrize("delta", [0.0, 0.01, 0.05, 0.3])
def test_score_rises_with_regressions_at_a_fixed_discordant_count(n: int, delta: float) -> None:
    """The exact tail's bisection relies on it: Z(b, m − b) is increasing in b for fixed m."""
    for m in sorted({1, 2, 3, n // 10, n // 3, n // 2, n}):
        b = np.arange(0, m + 1, dtype=float)
        assert np.all(np.diff(stats._z(b, m - b, float(n), delta)) >= -1e-12), m


def test_exact_regression_pvalue_keeps_its_size() -> None:
    # DESIGN §4a: n = 60, p01 = 0.02, true drop on the margin δ = 0.05. The
    # normal approximation rejects ~8.5% of the time; the exact test ≤ α.
    rng = np.random.default_rng(20240601)
    draws, n, alpha = 4000, 60, 0.05
    tables = rng.multinomial(n, [0.07, 0.02, 0.91], size=draws)[:, :2]
    unique, inverse = np.unique(tables, axis=0, return_inverse=True)
    mc_se = math.sqrt(alpha * (1 - alpha) / draws)
    exact = np.array([stats.regression_pvalue(int(b), int(c), n, 0.05) for b, c in unique])
    normal = np.array([stats.regression_pvalue(int(b), int(c), n, 0.05, method="normal") for b, c in unique])
    assert (exact[inverse.ravel()] < alpha).mean() <= alpha + 3 * mc_se
    assert (normal[inverse.ravel()] < alpha).mean() > alpha + 3 * mc_se


# --------------------------------------------------------------------------
# the bound agrees with the non-inferiority p-value


AGREEMENT_TABLES = [
    (b, c, n)
    for n in (1, 4, 9, 30, 75, 200)
    for b in sorted({0, 1, 2, n // 10, n // 4, n // 2})
    for c in sorted({0, 1, 3, n // 8})
    if b + c <= n
]
MARGINS = (0.0, 0.005, 0.02, 0.05, 0.1, 0.2)


@pytest.mark.parametrize("method", ["exact", "normal"])
def test_upper_bound_agrees_with_noninferiority_pvalue(method: str) -> None:
    alpha = 0.05
    blips = []
    for b, c, n in AGREEMENT_TABLES:
        upper = stats.upper_bound(b, c, n, alpha, method=method)  # type: ignore[arg-type]
        for margin in MARGINS:
            p = stats.noninferiority_pvalue(b, c, n, margin, method=method)  # type: ignore[arg-type]
            if (p < alpha) != (margin > upper):
                blips.append((b, c, n, margin, p, upper))
    if method == "normal":
        assert blips == []
    else:
        # The exact p-value is not monotone in the margin; it may dip below α
        # just inside the confidence set. Such dips must be marginal.
        assert len(blips) <= 2
        for _, _, _, margin, p, upper in blips:
            assert abs(p - alpha) < 1e-3
            assert abs(margin - upper) < 5e-3


def test_exact_upper_bound_is_close_to_the_score_bound() -> None:
    for b, c, n in [(32, 8, 340), (0, 0, 340), (20, 18, 1000), (5, 2, 200)]:
        exact = stats.exact_upper_bound(b, c, n, 0.05)
        score = stats.score_upper_bound(b, c, n, 0.05)
        assert exact == pytest.approx(score, abs=2e-3)
    # b = c = 0: the exact bound solves (1 − U)^n + γ = α.
    u = 1 - (0.05 - stats.BB_GAMMA) ** (1 / 340)
    assert stats.exact_upper_bound(0, 0, 340, 0.05) == pytest.approx(u, abs=1e-8)


@pytest.mark.parametrize(("b", "c", "n"), [(0, 3, 40), (0, 4, 5), (1, 6, 10), (14, 25, 40)])
def test_exact_upper_bound_is_not_below_zero_when_mcnemar_keeps_zero(b: int, c: int, n: int) -> None:
    # McNemar's test (used at δ = 0) keeps 0 in the confidence set, so the
    # bound is at least 0 even where the unconditional crossing is below it.
    assert stats.noninferiority_pvalue(b, c, n, 0.0) >= 0.05
    assert stats.exact_upper_bound(b, c, n, 0.05) >= 0.0


def test_upper_bound_of_a_total_collapse_is_one() -> None:
    assert stats.upper_bound(12, 0, 12, 0.05) == 1.0
    assert stats.score_upper_bound(12, 0, 12, 0.05) == 1.0


# --------------------------------------------------------------------------
# Holm


HOLM_CASES = [
    [0.01],
    [0.01, 0.04, 0.03],
    [0.2, 0.01, 0.01, 0.5, 0.049],
    [1.0, 1.0, 0.0],
    [0.001, 0.002, 0.003, 0.004, 0.3, 0.9],
    [0.04, 0.04, 0.04],
    list(np.random.default_rng(3).uniform(0, 0.2, size=25)),
]


@pytest.mark.parametrize("pvalues", HOLM_CASES)
def test_holm_against_statsmodels(pvalues: list[float]) -> None:
    expected = multipletests(pvalues, method="holm")[1]
    assert stats.holm(pvalues) == pytest.approx(list(expected), abs=1e-15)


def test_holm_edge_cases() -> None:
    assert stats.holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.1, math.nan])
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.2])


# --------------------------------------------------------------------------
# design effect


def test_design_effect_singletons_is_one() -> None:
    diffs = [1, 0, 0, -1, 1, 0, 1, 0, 0, 0]
    assert stats.design_effect(diffs, [None] * 10) == 1.0
    assert stats.design_effect(diffs, [f"c{i}" for i in range(10)]) == 1.0
    assert stats.design_effect(diffs, [None, "a", None, "b", None, "c", None, "d", None, "e"]) == 1.0


@pytest.mark.parametrize(("clusters", "size"), [(4, 5), (10, 3), (2, 8)])
def test_design_effect_perfectly_correlated_clusters(clusters: int, size: int) -> None:
    # Within a cluster every case has the same difference: Σ_k S_k² = s·Σ e²,
    # so the ratio is s·K/(K−1)·(n−1)/n.
    pattern = [1, 0, -1, 0, 1, 1, 0, -1, 0, 0]
    diffs = [pattern[k % len(pattern)] for k in range(clusters) for _ in range(size)]
    ids = [f"k{k}" for k in range(clusters) for _ in range(size)]
    n = clusters * size
    expected = size * clusters / (clusters - 1) * (n - 1) / n
    assert stats.design_effect(diffs, ids) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0


def test_design_effect_independent_looking_clusters_never_below_one() -> None:
    # Clusters whose sums cancel would give a ratio below 1: it is floored.
    diffs = [1, -1, 1, -1, 1, -1]
    assert stats.design_effect(diffs, ["a", "a", "b", "b", "c", "c"]) == 1.0


@pytest.mark.parametrize(
    ("diffs", "clusters"),
    [
        ([], []),
        ([1], ["a"]),
        ([0, 0, 0], ["a", "b", "c"]),
        ([1, 1, 1], ["a", "a", "b"]),
        ([1, 0, -1, 1], ["a"] * 4),
    ],
)
def test_design_effect_degenerate(diffs: list[int], clusters: list[str]) -> None:
    assert stats.design_effect(diffs, clusters) == 1.0


def test_design_effect_length_mismatch() -> None:
    with pytest.raises(ValueError, match="cluster ids"):
        stats.design_effect([1, 0], ["a"])


# --------------------------------------------------------------------------
# power


@pytest.mark.parametrize(
    ("drop", "psi", "alpha", "power", "expected"),
    [
        # (1.6449·√0.2 + 0.8416·√(0.2 − 0.0025))² / 0.0025 = 492.5
        (0.05, 0.2, 0.05, 0.8, 493),
        # ψ floored at the drop: (1.6449 + 0.8416·√0.9)² / 0.1 = 59.7
        (0.1, 0.0, 0.05, 0.8, 60),
        # (1.9600·√0.3 + 1.2816·√0.29)² / 0.01 = 311.0
        (0.1, 0.3, 0.025, 0.9, 312),
    ],
)
def test_connor_n_known_values(drop: float, psi: float, alpha: float, power: float, expected: int) -> None:
    assert connor_n(drop, psi, alpha, power) == expected


def connor_n(drop: float, psi: float, alpha: float, target: float = 0.8) -> int:
    """Connor's (1987) n, the inverse of power.min_detectable_drop."""
    value = power._connor_n(drop, psi, float(sps.norm.isf(alpha)), float(sps.norm.ppf(target)))
    return max(1, math.ceil(value - 1e-9))


def test_connor_n_has_the_simulated_power() -> None:
    # Simulate McNemar's z-test at the computed n; its power is the target.
    drop, psi, alpha = 0.05, 0.2, 0.05
    n = connor_n(drop, psi, alpha, 0.8)
    rng = np.random.default_rng(7)
    p10, p01 = (psi + drop) / 2, (psi - drop) / 2
    tables = rng.multinomial(n, [p10, p01, 1 - psi], size=20000)
    b, c = tables[:, 0], tables[:, 1]
    z = (b - c) / np.sqrt(np.maximum(b + c, 1))
    assert (z > sps.norm.isf(alpha)).mean() == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize(("n", "psi"), [(30, 0.0), (340, 0.12), (200, 0.05), (1000, 0.3)])
def test_min_detectable_drop_inverts_connor_n(n: int, psi: float) -> None:
    mdd = power.min_detectable_drop(n, psi, 0.05)
    assert 0.0 < mdd < 1.0
    assert connor_n(mdd, psi, 0.05) <= n + 1
    assert connor_n(mdd * 0.97, psi, 0.05) > n


def test_min_detectable_drop_tiny_slices_are_honest() -> None:
    assert power.min_detectable_drop(0, 0.0, 0.05) == math.inf
    assert power.min_detectable_drop(2, 0.5, 0.05) == math.inf
    assert power.min_detectable_drop(3, 0.5, 0.05) < 1.0


@pytest.mark.parametrize(
    ("margin", "psi", "expected"),
    [
        # ψ = 0: z²·(1 − δ)/δ = 2.7055·0.98/0.02 = 132.6
        (0.02, 0.0, 133),
        (0.05, 0.0, 52),
        (0.0, 0.1, None),
    ],
)
def test_n_needed_at_margin_known_values(margin: float, psi: float, expected: int | None) -> None:
    assert power.n_needed_at_margin(margin, psi, 0.05) == expected


def test_n_needed_at_margin_close_to_the_simple_formula() -> None:
    z = sps.norm.isf(0.05) + sps.norm.ppf(0.8)
    for psi in (0.05, 0.1, 0.3):
        simple = z * z * psi / 0.02**2
        ours = power.n_needed_at_margin(0.02, psi, 0.05)
        assert ours is not None
        assert 0.95 * simple < ours < 1.3 * simple


@pytest.mark.parametrize(
    ("psi", "margin", "drop"),
    [
        (0.1, 0.05, 0.0),  # no true drop: shown non-inferior
        (0.2, 0.05, 0.02),  # a drop below the margin: still non-inferior
        (0.2, 0.02, 0.07),  # a drop beyond the margin: shown regressed
    ],
)
def test_n_needed_at_margin_has_the_power_it_claims(psi: float, margin: float, drop: float) -> None:
    # At the computed n the normal score test reaches its verdict ~80% of the time.
    n = power.n_needed_at_margin(margin, psi, 0.05, drop=drop)
    assert n is not None
    rng = np.random.default_rng(11)
    cells = [(psi + drop) / 2, (psi - drop) / 2, 1 - psi]
    tables = rng.multinomial(n, cells, size=3000)
    unique, inverse = np.unique(tables[:, :2], axis=0, return_inverse=True)
    test = stats.noninferiority_pvalue if drop < margin else stats.regression_pvalue
    p = np.array([test(int(b), int(c), n, margin, method="normal") for b, c in unique])
    assert (p[inverse.ravel()] < 0.05).mean() == pytest.approx(0.8, abs=0.03)


def test_n_needed_at_margin_undecidable() -> None:
    assert power.n_needed_at_margin(0.0, 0.1, 0.05) is None
    assert power.n_needed_at_margin(0.03, 0.1, 0.05, drop=0.03) is None


# --------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stats.paired_se(5, 6, 10), "exceeds"),
        (lambda: stats.paired_se(-1, 0, 10), ">= 0"),
        (lambda: stats.score_z(1, 1, 10, 1.0), "delta"),
        (lambda: stats.regression_pvalue(1, 1, 10, 0.02, method="bogus"), "method"),  # type: ignore[arg-type]
        (lambda: stats.regression_pvalue(1, 1, 10, 0.02, method="exact", deff=2.0), "independent"),
        (lambda: stats.regression_pvalue(1, 1, 10, 0.02, deff=0.5), "design effect"),
        (lambda: stats.score_upper_bound(1, 1, 10, 1.5), "alpha"),
        (lambda: stats.restricted_p01(0, 0, 0, 0.02), "n >= 1"),
        (lambda: power.min_detectable_drop(10, 0.1, 0.05, power=0.3), "power"),
        (lambda: power.n_needed_at_margin(1.0, 0.1, 0.05), "margin"),
    ],
)
def test_invalid_arguments(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_counts_must_be_integers() -> None:
    with pytest.raises(TypeError):
        stats.paired_se(1.5, 0, 10)  # type: ignore[arg-type]


def test_empty_slice_has_no_evidence() -> None:
    assert stats.regression_pvalue(0, 0, 0, 0.02) == 1.0
    assert stats.noninferiority_pvalue(0, 0, 0, 0.02) == 1.0
    assert stats.improvement_pvalue(0, 0, 0) == 1.0
    assert stats.score_z(0, 0, 0, 0.02) == 0.0


# --------------------------------------------------------------------------
# exact size and nesting, summed over every table


def _size_by_threshold(n: int, delta: float, psi: float, alpha: float = 0.05) -> float:
    """P(plain exact test rejects) at the boundary, with the region b ≥ r(m) for each m."""
    p10 = (psi + delta) / 2
    m_lo, m_hi = stats._support(n, psi)
    total = 0.0
    for m in range(m_lo, m_hi + 1):
        lo, hi = 0, m + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if stats.regression_pvalue(mid, m - mid, n, delta, nested=False) < alpha:
                hi = mid
            else:
                lo = mid + 1
        total += float(sps.binom.pmf(m, n, psi) * sps.binom.sf(lo - 1, m, p10 / psi))
    return total


@pytest.mark.parametrize("n", [10, 25, 40])
@pytest.mark.parametrize("delta", [0.02, 0.05])
def test_false_alarm_rate_at_the_boundary_is_at_most_alpha(n: int, delta: float) -> None:
    """Exact: the gate's REGRESSED region summed under every boundary point tried."""
    region = stats.regression_region(n, delta, 0.05)
    for psi in (delta, 1.5 * delta, 0.2, 0.6):
        size = stats.region_probability(region, (psi + delta) / 2, (psi - delta) / 2)
        assert size <= 0.05, (n, delta, psi, size)


def test_the_exact_test_holds_its_level_where_the_estimated_one_did_not() -> None:
    # The tail at the restricted MLE alone rejected 5.02% of the time here;
    # the maximum over the interval of ψ, plus γ, keeps to α.
    assert _size_by_threshold(2001, 0.02, 0.03) <= 0.05


def test_regressed_is_nested_across_margins_for_every_small_table() -> None:
    # Every table up to n = 30 here; tools/verify_gate.py checks n ≤ 150.
    margins = (0.0, 0.005, 0.01, 0.02)
    for n in range(1, 31):
        regions = [stats.regression_region(n, margin, 0.05) for margin in margins]
        for smaller, larger in itertools.pairwise(regions):
            assert not (larger & ~smaller).any(), n
        # For each discordant count m, the REGRESSED tables are those with b ≥ r(m).
        for m in range(n + 1):
            row = np.array([regions[-1][b, m - b] for b in range(m + 1)])
            assert not row.any() or row[int(np.argmax(row)) :].all(), (n, m)


@pytest.mark.parametrize(("b", "c", "n"), [(4, 0, 20), (6, 1, 20), (4, 0, 30), (8, 2, 30), (4, 0, 40)])
def test_tables_mcnemar_keeps_are_not_regressed_at_a_larger_margin(b: int, c: int, n: int) -> None:
    """The audit's tables: REGRESSED at δ = 0.02 before, not at δ = 0."""
    assert stats.regression_pvalue(b, c, n, 0.0) >= 0.05
    assert stats.regression_pvalue(b, c, n, 0.02) >= 0.05
