"""stats.py against published worked examples for paired binary data.

Every expected number below was read from the source named beside it, never
recalled; each tolerance is half a unit in the last printed decimal.

Mapping. The literature writes a paired 2x2 table as ``[[n11, n12], [n21,
n22]]`` (rows: first condition, columns: second) and Tango's interval is for
``p1+ − p+1 = (n12 − n21)/N``. stats.py takes ``b`` = reference passes and
candidate fails, ``c`` = the reverse, and ``Δ = (b − c)/n``. Reading the first
condition as the reference and "success" as "pass" gives ``b = n12``,
``c = n21``, ``n = N`` and ``Δ = p1+ − p+1``: the published interval is then
the interval of our drop with no change of sign. ratesci writes the same table
as ``x = c(a, b, c, d)`` with ``b = n12`` and ``c = n21``.

stats.py has no two-sided interval: the two-sided ``1 − α`` Tango interval is
the pair of one-sided ``1 − α/2`` score bounds (``score_lower_bound`` solves
``Z(δ) = z₁₋α/₂``, ``score_upper_bound`` solves ``Z(δ) = −z₁₋α/₂``), which is
how contingencytables' ``Tango_asymptotic_score_CI_paired_2x2`` finds its
limits (``uniroot`` of ``T0 ∓ z`` with ``z = qnorm(1 − α/2)``).

Sources read:

* contingencytables, Fagerland's own R package for Fagerland, Lydersen & Laake,
  *Statistical Analysis of Contingency Tables* (2017), Chapter 8 "The Paired
  2x2 Table": github.com/ocbe-uio/contingencytables at commit
  b1fde68e35bf73ec98672e414eb3e0f582e5d7f3, files
  ``tests/testthat/test-ch8.R`` (printed outputs), ``R/datasets.R`` (the
  tables), ``R/Tango_asymptotic_score_CI_paired_2x2.R``,
  ``R/McNemar_asymptotic_test_paired_2x2.R``,
  ``R/McNemar_exact_cond_test_paired_2x2.R`` and
  ``R/McNemar_exact_unconditional_test_paired_2x2.R`` (what each prints).
* ratesci (Laud), github.com/petelaud/ratesci at commit
  0c942289aa8de0bd707edf6afae13e286a8f6e04, ``tests/testthat/test3.R``: plain
  Tango intervals (``skew = FALSE, bcf = FALSE``) checked there against
  published examples, to 3 decimals (``round(..., 3)``); the full references
  are in ``R/pairbinci.R`` of the same repository.

McNemar's exact test against statsmodels is in test_stats.py already.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from pytest_quantgate.statistics import stats


def tango_interval(n12: int, n21: int, n: int, level: float) -> tuple[float, float]:
    """Two-sided ``level`` Tango score interval of ``(n12 − n21)/n`` from stats.py's one-sided bounds."""
    tail = (1.0 - level) / 2.0
    return stats.score_lower_bound(n12, n21, n, tail), stats.score_upper_bound(n12, n21, n, tail)


# --------------------------------------------------------------------------
# Tango's score interval, printed to 4 decimals by contingencytables


@pytest.mark.parametrize(
    ("n12", "n21", "n", "lower", "upper"),
    [
        # Cavo et al. (2012), complete response before and after consolidation
        # therapy: cavo_2012 = rbind(c(59, 6), c(16, 80)), so n12 = 6, n21 = 16,
        # N = 161. test-ch8.R: "score CI: estimate = -0.0621 (95% CI -0.1240 to
        # -0.0054)".
        (6, 16, 161, -0.1240, -0.0054),
        # test-ch8.R edge tables. matrix(c(0, 0, 3, 0), 2) fills by column:
        # n12 = 3, n21 = 0, N = 3: "1.0000 (95% CI -0.1230 to 1.0000)".
        (3, 0, 3, -0.1230, 1.0000),
        # matrix(c(0, 3, 0, 0), 2): n12 = 0, n21 = 3, N = 3:
        # "-1.0000 (95% CI -1.0000 to 0.1230)".
        (0, 3, 3, -1.0000, 0.1230),
    ],
)
def test_tango_interval_contingencytables(n12: int, n21: int, n: int, lower: float, upper: float) -> None:
    assert tango_interval(n12, n21, n, 0.95) == pytest.approx((lower, upper), abs=5e-5)


# --------------------------------------------------------------------------
# Tango's score interval, published examples as ratesci checks them (3 decimals)


@pytest.mark.parametrize(
    ("n12", "n21", "n", "level", "lower", "upper"),
    [
        # Fagerland, Lydersen & Laake (2014), Stat Med 33:2850-2875: airway
        # hyper-responsiveness before and after stem cell transplantation
        # (Bentur et al. 2009). test3.R, "paired methods examples from Fagerland
        # et al 2014 / Tango RD": x = c(1, 1, 7, 12), so n12 = 1, n21 = 7,
        # N = 21 (contingencytables' bentur_2009 = rbind(c(1, 1), c(7, 12)) is
        # the same table) -> c(-0.517, -0.026).
        (1, 7, 21, 0.95, -0.517, -0.026),
        # Agresti & Min (2005), Stat Med 24:729-740. test3.R, "paired methods
        # examples from Agresti & Min 2005": x = c(53, 16, 8, 9), so n12 = 16,
        # n21 = 8, N = 86 -> c(-0.020, 0.207).
        (16, 8, 86, 0.95, -0.020, 0.207),
        # Tango (1998), Stat Med 17:891-908. test3.R, "Tango RD" (the section
        # of the paper is not named there): x = c(4, 9, 3, 16), so n12 = 9,
        # n21 = 3, N = 32 -> c(-0.027, 0.390).
        (9, 3, 32, 0.95, -0.027, 0.390),
        # Tango (1998), 90% interval. test3.R, "Tango RD": x = c(43, 0, 1, 0),
        # so n12 = 0, n21 = 1, N = 44, level = 0.90 -> c(-0.096, 0.037). This
        # is the soft-contact-lens cross-over trial of Tango's section 6.1.
        (0, 1, 44, 0.90, -0.096, 0.037),
        # Chang P et al. (2024), J Appl Stat 51:139-152, "Continuity corrected
        # score confidence interval for the difference in proportions in paired
        # data" (reference as listed in ratesci's R/pairbinci.R). test3.R,
        # "Chang 2024 RD example": x = c(7, 25, 2, 68), so n12 = 25, n21 = 2,
        # N = 102 -> c(0.139, 0.321).
        (25, 2, 102, 0.95, 0.139, 0.321),
    ],
)
def test_tango_interval_ratesci_published(
    n12: int, n21: int, n: int, level: float, lower: float, upper: float
) -> None:
    assert tango_interval(n12, n21, n, level) == pytest.approx((lower, upper), abs=5e-4)


# --------------------------------------------------------------------------
# McNemar's tests on Cavo et al. (2012), printed to 6 (P) and 3 (Z) decimals


def test_mcnemar_asymptotic_cavo() -> None:
    # test-ch8.R: McNemar_asymptotic_test_paired_2x2(cavo_2012) prints
    # "P = 0.033006, Z = -2.132"; its Z is (n12 − n21)/√(n12 + n21) and its P
    # is two-sided, 2·(1 − Φ(|Z|)). n12 = 6, n21 = 16, N = 161.
    b, c, n = 6, 16, 161
    assert stats.score_z(b, c, n, 0.0) == pytest.approx(-2.132, abs=5e-4)
    # Z < 0 here, so the smaller one-sided tail is the improvement side.
    two_sided = 2.0 * stats.improvement_pvalue(b, c, n, method="normal")
    assert two_sided == pytest.approx(0.033006, abs=5e-7)


def test_mcnemar_exact_conditional_cavo() -> None:
    # test-ch8.R: McNemar_exact_cond_test_paired_2x2(cavo_2012) prints
    # "P = 0.052479", computed as 2·pbinom(min(n12, n21), n12 + n21, 0.5).
    b, c, n = 6, 16, 161
    assert 2.0 * stats.improvement_pvalue(b, c, n) == pytest.approx(0.052479, abs=5e-7)
    # With the roles swapped the same tail is the regression side.
    assert 2.0 * stats.regression_pvalue(c, b, n, 0.0) == pytest.approx(0.052479, abs=5e-7)


# --------------------------------------------------------------------------
# McNemar's exact unconditional test (Berger-Boos), contingencytables' own


def test_mcnemar_exact_unconditional_berger_boos_tail() -> None:
    # test-ch8.R: McNemar_exact_unconditional_test_paired_2x2(n_short) with
    # n_short = floor(cavo_2012 / 10) = [[5, 0], [1, 8]] prints "P = 0.542071".
    # This is a table of the package's test suite derived from the book's
    # example, not a table printed in the book. n12 = 0, n21 = 1, N = 14.
    #
    # The R function (read in R/McNemar_exact_unconditional_test_paired_2x2.R)
    # sums the trinomial probabilities, with p12 = p21 = π/2, of the tables
    # whose T = (x12 − x21)²/(x12 + x21) is at least the observed one; it
    # takes the largest sum over 1000 equally spaced π across the
    # Clopper-Pearson 1 − γ interval of π from n12 + n21 of N (qbeta(γ/2,
    # X, N − X + 1) to qbeta(1 − γ/2, X + 1, N − X)), and adds γ = 0.0001.
    #
    # stats.py's Berger-Boos p-value (γ = BB_GAMMA, 9 + 9 grid points) is a
    # different maximisation, so the check goes one level down, to the tail
    # it maximises: _tails_at gives P(Z ≤ z_obs) at p10 = p01 = ψ/2 for δ = 0,
    # with Z = (b − c)/√(b + c), so T ≥ T_obs is |Z| ≥ |z_obs| and, p10 and
    # p01 being equal, its probability is twice the one-sided tail.
    b, c, n, gamma = 0, 1, 14, 1e-4
    m = b + c
    lo = float(special.betaincinv(m, n - m + 1, gamma / 2))
    hi = float(special.betaincinv(m + 1, n - m, 1.0 - gamma / 2))
    psis = np.linspace(lo, hi, 1000, dtype=np.float64)
    z_obs = stats.score_z(b, c, n, 0.0)
    # McNemar's Z of the table, -1; other tables at exactly |Z| = 1 are ties that
    # R counts (T0 >= Tobs) and _tails_at counts within its tie slack.
    assert z_obs == pytest.approx(-1.0, abs=1e-12)
    tails = stats._tails_at(n, 0.0, False, z_obs, psis)
    assert 2.0 * float(tails.max()) + gamma == pytest.approx(0.542071, abs=5e-7)
