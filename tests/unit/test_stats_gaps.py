"""The four gaps of the pass/fail statistics, each reproduced at the numbers it was found with.

(a) the Berger–Boos search over ψ, (b) the size of PASS, (c) the bound and
the p-value of clustered slices, (d) the cost of the plan of an
INCONCLUSIVE row. tools/verify_gate.py runs the same checks at larger sizes.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
from scipy import stats as sps

from pytest_quantgate.statistics import batch, power, stats
from pytest_quantgate.statistics.gate import GateSettings, SliceOutcomes, Verdict, evaluate

ALPHA = 0.05

# --------------------------------------------------------------------------
# (a) the search over ψ


def test_the_edge_of_the_feasible_region_is_searched() -> None:
    # (2, 3, 30, δ = 0.05): the tail at ψ = δ (every discordant pair a
    # regression) is 0.2146; the grid without the edge gave 0.167.
    b, c, n, delta = 2, 3, 30, 0.05
    z = stats.score_z(b, c, n, delta)
    edge = float(stats._tails_at(n, delta, False, z, np.array([delta]))[0])
    assert edge == pytest.approx(0.2146, abs=1e-4)
    assert delta in stats.psi_points(b, c, n, delta)
    assert stats.noninferiority_pvalue(b, c, n, delta) >= edge + stats.BB_GAMMA - 1e-12


def test_every_peak_of_the_tail_is_refined() -> None:
    # (5, 6, 20, δ = 0.1), lower tail: three peaks in ψ; refining around the
    # best coarse point alone gave 0.2032 where the largest tail is 0.2053.
    b, c, n, delta = 5, 6, 20, 0.1
    z = stats.score_z(b, c, n, delta)
    lo, hi = stats._psi_interval(b + c, n)
    dense = float(stats._tails_at(n, delta, False, z, np.linspace(lo, hi, 2001).astype(np.float64)).max())
    assert dense > 0.2050
    assert stats.noninferiority_pvalue(b, c, n, delta) >= dense + stats.BB_GAMMA - 2e-4


#: The most the search may fall below a 400-point search: 3.7e-4 measured over every table up
#: to n = 50 (tools/verify_gate.py, section 4); before the edge and the peaks, 3.1e-3.
SEARCH_SHORTFALL = 5e-4


def dense_pvalues(n: int, delta: float, upper: bool, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(search, dense) p-values of every table of n cases; dense: `points` ψ plus the search's own."""
    bs, cs = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = bs + cs <= n
    b, c = bs[keep].astype(np.int64), cs[keep].astype(np.int64)
    search = stats._pvalues_of(n, delta, b, c, upper)
    z = stats._z(b.astype(float), c.astype(float), float(n), delta)
    cut = z - 1e-9 * np.maximum(1.0, np.abs(z)) if upper else z + 1e-9 * np.maximum(1.0, np.abs(z))
    grid = stats._z_grid(n, delta)
    dense = np.empty(b.size)
    for i in range(b.size):
        side: Literal["left", "right"] = "left" if upper else "right"
        first = np.array([np.searchsorted(grid[m, : m + 1], cut[i], side=side) for m in range(n + 1)])
        lo, hi = stats._psi_interval(int(b[i] + c[i]), n)
        psis = np.unique(
            np.concatenate([np.linspace(lo, hi, points), stats.psi_points(int(b[i]), int(c[i]), n, delta)])
        )
        dense[i] = min(float(stats._tails_full(n, delta, upper, first, psis).max()) + stats.BB_GAMMA, 1.0)
    return search, dense


@pytest.mark.parametrize("upper", [True, False])
@pytest.mark.parametrize(("n", "delta"), [(20, 0.1), (25, 0.05)])
def test_the_search_is_close_to_a_dense_search_on_every_table(n: int, delta: float, upper: bool) -> None:
    search, dense = dense_pvalues(n, delta, upper, 200)
    assert float((dense - search).max()) <= SEARCH_SHORTFALL


# --------------------------------------------------------------------------
# (b) the size of PASS


def test_pass_region_is_the_gates_pass() -> None:
    n, delta = 10, 0.1
    region = stats.pass_region(n, delta, ALPHA)
    for b in range(n + 1):
        for c in range(n + 1 - b):
            both = (True,) * (n - b - c)
            outcomes = SliceOutcomes(
                "s", (True,) * b + (False,) * c + both, (False,) * b + (True,) * c + both, tolerance=delta
            )
            row = evaluate([outcomes], None, GateSettings(alpha=ALPHA, plan=False))[0]
            if row.verdict is not Verdict.IMPROVED:
                assert region[b, c] == (row.verdict is Verdict.PASS), (b, c)


@pytest.mark.parametrize(("n", "delta"), [(10, 0.1), (25, 0.05), (25, 0.1)])
def test_pass_is_rare_when_the_true_drop_is_the_margin(n: int, delta: float) -> None:
    """Exact: P(PASS or IMPROVED) summed over every table at true drop = δ, ψ from δ (the edge) up."""
    ships = stats.pass_region(n, delta, ALPHA) | (stats._mcnemar_table(n).T < ALPHA)
    for psi in (delta, 1.5 * delta, 2 * delta, 0.3, 0.6):
        size = stats.region_probability(ships, (psi + delta) / 2, (psi - delta) / 2)
        assert size <= ALPHA, (n, delta, psi, size)


def test_the_old_search_let_pass_through_at_the_edge() -> None:
    # The edge is where PASS is likeliest to be wrong: the old search's
    # p-value 0.167 < 0.215 was its tail there. The bound now covers it.
    assert stats.upper_bound(2, 3, 30, ALPHA) > 0.05
    assert stats.noninferiority_pvalue(2, 3, 30, 0.05) > 0.2


def test_pass_size_at_the_edge_matches_a_direct_sum() -> None:
    # At ψ = δ no case improves: b ~ Binomial(n, δ), c = 0, and PASS needs
    # upper(b, 0) < δ. The verification sums the same region.
    n, delta = 30, 0.05
    region = stats.pass_region(n, delta, ALPHA)
    direct = sum(
        sps.binom.pmf(b, n, delta) for b in range(n + 1) if stats.upper_bound(b, 0, n, ALPHA) < delta
    )
    assert stats.region_probability(region, delta, 0.0) == pytest.approx(direct, abs=1e-12)


# --------------------------------------------------------------------------
# (c) clustered slices: the bound and the p-value are one computation


def clustered_slice(b: int, c: int, n: int, size: int, order: np.ndarray) -> SliceOutcomes:
    cats = np.array([0] * b + [1] * c + [2] * (n - b - c))[order]
    return SliceOutcomes(
        "s",
        tuple(bool(x != 1) for x in cats),
        tuple(bool(x != 0) for x in cats),
        clusters=tuple(f"k{i // size}" for i in range(n)),
        tolerance=0.05,
    )


def test_the_clustered_row_of_the_audit_agrees_with_its_pvalue() -> None:
    # (7, 9, 100, δ = 0.05), 20 clusters of 5, arranged so that the design
    # effect is floored at 1. The row showed the exact bound 0.0503
    # (INCONCLUSIVE) while the exact p-value was 0.0491.
    order = np.random.default_rng(1).permutation(100)
    outcomes = clustered_slice(7, 9, 100, 5, order)
    (row,) = evaluate([outcomes], None, GateSettings(alpha=ALPHA, plan=False))
    assert row.design_effect == 1.0
    p = stats.noninferiority_pvalue(7, 9, 100, 0.05, method="normal", deff=1.0, df=19)
    assert row.upper == pytest.approx(stats.score_upper_bound(7, 9, 100, ALPHA, deff=1.0, df=19), abs=1e-12)
    assert (row.upper < 0.05) == (p < ALPHA)
    assert row.upper != pytest.approx(0.0503, abs=1e-4)


def test_clustered_rows_pass_exactly_when_the_pvalue_rejects() -> None:
    rng = np.random.default_rng(7)
    settings = GateSettings(alpha=ALPHA, plan=False)
    for _ in range(300):
        n = int(rng.choice([60, 100, 150]))
        b, c = (int(x) for x in rng.integers(0, 12, size=2))
        outcomes = clustered_slice(b, c, n, 5, rng.permutation(n))
        (row,) = evaluate([outcomes], None, settings)
        p = stats.noninferiority_pvalue(b, c, n, 0.05, method="normal", deff=row.design_effect, df=n // 5 - 1)
        assert (row.upper < 0.05) == (p < ALPHA), (b, c, n, row.upper, p)


# --------------------------------------------------------------------------
# (d) the plan of an INCONCLUSIVE row


def clear_caches() -> None:
    for cached in (
        stats._unconditional_tail,
        stats._coarse_tails,
        stats.exact_upper_bound,
        stats._z_grid,
        power._regression_boundaries,
        power._pass_boundaries,
    ):
        cached.cache_clear()


def test_the_plan_decides_tables_without_refining_clear_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same plan with a fraction of the full p-values: bounds on the tails settle most tables."""
    row = (0.0, 0.07, 0.05, ALPHA, 0.8)  # a PASS plan of a slice with 7 % discordance
    clear_caches()
    fast = power.cases_needed(*row, at_least=31)
    full_pvalues = stats._coarse_tails.cache_info().misses
    decisions = 0

    def full(b: int, c: int, n: int, delta: float, upper: bool, alpha: float) -> bool:
        nonlocal decisions
        decisions += 1
        return stats._unconditional_tail(b, c, n, delta, upper) < alpha

    def none_at_once(b: np.ndarray, c: np.ndarray, *_: object) -> np.ndarray:
        return np.full(b.size, -1, dtype=np.int8)

    monkeypatch.setattr(stats, "_tail_below", full)
    monkeypatch.setattr(batch, "decide_tables", none_at_once)
    clear_caches()
    assert power.cases_needed(*row, at_least=31) == fast == 201
    assert full_pvalues < 0.1 * decisions


def _plain_first(m: np.ndarray, n: int, delta: float, cut: float, strict: bool) -> np.ndarray:
    """The threshold search before its bracket: bisection over all of [0, m + 1]."""
    lo = np.zeros_like(m)
    hi = m + 1
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        z = stats._z(mid.astype(float), (m - mid).astype(float), float(n), delta)
        above = z > cut if strict else z >= cut
        searching = lo < hi
        hi = np.where(searching & above, mid, hi)
        lo = np.where(searching & ~above, mid + 1, lo)
    return lo


@pytest.mark.parametrize("n", [401, 1578, 2400, 20_000])
@pytest.mark.parametrize("delta", [0.005, 0.02, 0.1, 0.4])
def test_the_bracketed_threshold_search_finds_what_bisection_finds(n: int, delta: float) -> None:
    m = np.arange(n + 1, dtype=np.int64)
    for cut in (-9.0, -3.0, -1.7, -0.2, 0.0, 0.9, 1.96, 3.5, 9.0):
        for strict in (False, True):
            expected = _plain_first(m, n, delta, cut, strict)
            assert np.array_equal(stats._bisect_first(m, n, delta, cut, strict=strict), expected), (
                cut,
                strict,
            )


@pytest.mark.parametrize(
    ("n", "delta", "upper"), [(150, 0.02, False), (700, 0.05, True), (1578, 0.02, False)]
)
def test_bounded_decisions_are_those_of_the_full_pvalue(n: int, delta: float, upper: bool) -> None:
    """Every table near the rejection boundary of a few counts: the bounds never disagree with the p-value."""
    settled = 0
    for m in range(int(0.06 * n), int(0.16 * n), max(1, n // 100)):
        for b in range(m + 1):
            c = m - b
            z = stats.score_z(b, c, n, delta)
            if not -2.6 < z < 0.3 and not 1.2 < z < 2.6:  # far from either boundary at α = 0.05
                continue
            decided = stats._banded_decision(b, c, n, delta, upper, ALPHA)
            full = stats._unconditional_tail(b, c, n, delta, upper) < ALPHA
            assert decided in (None, full), (b, c, n, delta, upper)
            assert stats._tail_below(b, c, n, delta, upper, ALPHA) == full
            settled += decided is not None
    assert settled > 20


@pytest.mark.parametrize(
    ("n", "drop", "psi", "margin"), [(300, 0.0, 0.1, 0.02), (900, 0.01, 0.2, 0.05), (1500, 0.0, 0.1, 0.02)]
)
def test_the_power_compared_from_part_of_its_sum_is_the_full_power_compared(
    n: int, drop: float, psi: float, margin: float
) -> None:
    boundaries = power._pass_boundaries(n, margin, ALPHA)
    chance = power._power(n, drop, psi, boundaries)
    for target in (0.5, 0.8, 0.95, chance, chance - 1e-7, chance + 1e-7, chance - 0.02, chance + 0.02):
        assert power._power_reaches(n, drop, psi, boundaries, target) == (chance >= target), target
    regression = power._regression_boundaries(n, margin, ALPHA)
    chance = power._power(n, 0.06, psi, regression)
    for target in (0.5, chance, chance + 1e-9, chance - 1e-9):
        assert power._power_reaches(n, 0.06, psi, regression, target) == (chance >= target), target


# The plan of these rows as the code before the bounded searches computed it
# (every memo cleared first): power.detectable_drop(n, ψ, margin, α, 0.8),
# power.cases_needed(drop, ψ, margin, α, 0.8, at_least=...) and the gate's row
# (verdict, detectable drop, cases needed, design effect) of b regressions and
# c improvements among n cases, in clusters of the given size (0: none).
PINNED_DETECTABLE = {
    (20, 0.0, 0.02, 0.05): 0.314,
    (20, 0.25, 0.05, 0.0125): 0.419,
    (60, 0.0, 0.05, 0.0125): 0.185,
    (60, 0.25, 0.02, 0.05): 0.172,
    (150, 0.06, 0.02, 0.05): 0.06,
    (150, 0.25, 0.05, 0.0125): 0.171,
    (340, 0.0, 0.02, 0.05): 0.044,
    (340, 0.06, 0.02, 0.05): 0.05,
    (340, 0.25, 0.02, 0.05): 0.087,
    (340, 0.25, 0.05, 0.0125): 0.132,
    (900, 0.06, 0.02, 0.05): 0.04,
    (900, 0.25, 0.02, 0.05): 0.062,
    (900, 0.25, 0.05, 0.0125): 0.101,
    (2000, 0.1, 0.02, 0.05): 0.038,
    (2000, 0.02, 0.05, 0.05): 0.063,
    (1, 0.0, 0.02, 0.05): math.inf,
    (3, 0.5, 0.0, 0.05): math.inf,
    (45, 0.2, 0.0, 0.025): 0.185,
}
PINNED_NEEDED = {
    (0.0, 0.03, 0.02, 0.05, 1): 533,
    (0.0, 0.03, 0.05, 0.0125, 101): 188,
    (0.0, 0.12, 0.05, 0.0125, 101): 490,
    (0.0, 0.12, 0.05, 0.05, 40): 315,
    (0.01, 0.03, 0.05, 0.0125, 101): 284,
    (0.01, 0.12, 0.05, 0.05, 40): 487,
    (0.035, 0.03, 0.02, 0.05, 1): 800,
    (0.035, 0.03, 0.05, 0.0125, 101): 1896,
    (0.035, 0.03, 0.05, 0.05, 40): 1200,
    (0.0, 0.0, 0.02, 0.05, 1): 150,
    (0.0, 0.06, 0.03, 0.05, 150): 452,
    (0.0, 0.3, 0.02, 0.05, 1): 4643,  # large-sample: above EXACT_PLAN_MAX_N
    (0.0, 0.1, 0.0, 0.05, 1): None,
    (0.02, 0.1, 0.02, 0.05, 1): None,
}
PINNED_ROWS = {
    (5, 5, 100, 0): ("INCONCLUSIVE", 0.089, 1578, 1.0),
    (3, 2, 60, 0): ("INCONCLUSIVE", 0.11, 46439, 1.0),
    (4, 0, 120, 0): ("INCONCLUSIVE", 0.075, 936, 1.0),
    (1, 1, 80, 0): ("INCONCLUSIVE", 0.098, 466, 1.0),
    (9, 6, 250, 0): ("INCONCLUSIVE", 0.055, 5921, 1.0),
    (12, 12, 340, 4): ("INCONCLUSIVE", 0.093, 4561, 4.035714285714286),
    (10, 6, 340, 5): ("INCONCLUSIVE", 0.093, 21392, 4.805970149253732),
    (7, 9, 100, 5): ("INCONCLUSIVE", 0.287, 11353, 4.557578155916107),
    (20, 14, 340, 10): ("INCONCLUSIVE", 0.18, 1064992, 9.545328326654257),
    (6, 2, 200, 8): ("INCONCLUSIVE", 0.167, None, 5.150883838383839),
}


@pytest.mark.parametrize(("n", "psi", "margin", "alpha"), list(PINNED_DETECTABLE))
def test_the_detectable_drop_is_the_one_computed_before(
    n: int, psi: float, margin: float, alpha: float
) -> None:
    clear_caches()
    assert power.detectable_drop(n, psi, margin, alpha, 0.8) == pytest.approx(
        PINNED_DETECTABLE[(n, psi, margin, alpha)], abs=1e-12
    )


@pytest.mark.parametrize(("drop", "psi", "margin", "alpha", "at_least"), list(PINNED_NEEDED))
def test_the_cases_needed_are_those_computed_before(
    drop: float, psi: float, margin: float, alpha: float, at_least: int
) -> None:
    clear_caches()
    expected = PINNED_NEEDED[(drop, psi, margin, alpha, at_least)]
    assert power.cases_needed(drop, psi, margin, alpha, 0.8, at_least=at_least) == expected


@pytest.mark.parametrize(("b", "c", "n", "size"), list(PINNED_ROWS))
def test_the_plan_of_a_row_is_the_one_computed_before(b: int, c: int, n: int, size: int) -> None:
    both = n - b - c
    clusters = tuple(f"t{i // size}" for i in range(n)) if size else None
    outcomes = SliceOutcomes(
        "s", (True,) * (b + both) + (False,) * c, (False,) * b + (True,) * (both + c), clusters=clusters
    )
    clear_caches()
    (row,) = evaluate([outcomes], None, GateSettings())
    verdict, mdd, needed, deff = PINNED_ROWS[(b, c, n, size)]
    assert row.verdict.value == verdict
    assert row.mdd == pytest.approx(mdd, abs=1e-12)
    assert row.n_needed == needed
    assert row.design_effect == pytest.approx(deff, rel=1e-12)
