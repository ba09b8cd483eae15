"""Many tables decided at once: the boundaries of the exact power, found in batches.

Every shortcut here must give the decisions, boundaries and plan that the
one-table-at-a-time search gives; these tests hold them to it table by table.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from pytest_quantgate.statistics import batch, power, stats

ALPHA = 0.05


def tables_near_the_boundaries(n: int, delta: float, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The tables of up to spread·n discordant pairs whose score lies near either one-sided boundary."""
    bs, cs = [], []
    for m in range(0, int(spread * n) + 1, max(1, n // 60)):
        for b in range(m + 1):
            z = stats.score_z(b, m - b, n, delta)
            if -3.4 < z < 0.3 or 1.2 < z < 3.4:  # near the boundaries at α from 0.05 down to 0.001
                bs.append(b)
                cs.append(m - b)
    return np.array(bs, dtype=np.int64), np.array(cs, dtype=np.int64)


@pytest.mark.parametrize(("n", "delta"), [(1, 0.02), (20, 0.05), (150, 0.02), (401, 0.3), (1578, 0.0125)])
def test_the_points_of_many_tables_are_psi_points(n: int, delta: float) -> None:
    bs, cs = tables_near_the_boundaries(n, delta, spread=1.0 if n < 1000 else 0.2)
    many = batch._psi_points_many(bs, cs, n, delta)
    for row, b, c in zip(many, bs, cs, strict=True):
        np.testing.assert_array_equal(row[~np.isnan(row)], stats.psi_points(int(b), int(c), n, delta))


def test_the_chances_given_a_count_are_scipys_binomial_cdfs() -> None:
    rng = np.random.default_rng(7)
    n = 400
    counts = np.arange(40, 300)[None, :].repeat(3, axis=0)
    k = np.cumsum(rng.integers(0, 2, size=counts.shape), axis=1) - 5 + np.array([[0], [20], [60]])
    share = np.array([[0.0, 0.3, 0.5, 0.77, 1.0]] * 3)
    grid = batch._Grid.of(n, counts, np.ones(counts.shape, dtype=bool), k)
    cdf = grid.cdfs(share)
    weights = grid.weights(share)
    for t in range(3):
        for p in range(share.shape[1]):
            kk, mm, ss = k[t], counts[t], share[t, p]
            with np.errstate(invalid="ignore"):
                inside = special.bdtr(np.maximum(kk, 0), mm, ss)
                expected = np.where(kk < 0, 0.0, np.where(kk >= mm, 1.0, inside))
            np.testing.assert_allclose(cdf[t, p], expected, rtol=0, atol=1e-12)
            np.testing.assert_allclose(weights[t, p], power._binom_pmf(mm, n, ss), rtol=1e-10, atol=1e-300)
    # Windows of rows (a refined rate's band) give their table's values; one that would run
    # past its row's end starts earlier, and sums only the counts asked for.
    rows = np.array([1, 2, 0])
    low = counts[rows, [3, 100, -2]]
    part = grid.windows(rows, low, low + np.array([3, 3, 1]))
    columns = np.array([[3, 4, 5, 6], [100, 101, 102, 103], [-4, -3, -2, -1]])
    chosen = share[rows, 1:2]
    np.testing.assert_allclose(part.cdfs(chosen)[:, 0, :], cdf[rows[:, None], 1, columns], atol=1e-12)
    expected_weights = weights[rows[:, None], 1, columns]
    expected_weights[2, :2] = 0.0
    np.testing.assert_allclose(part.weights(chosen)[:, 0, :], expected_weights)


@pytest.mark.parametrize(
    ("n", "delta", "upper", "alpha"),
    [
        (20, 0.05, True, ALPHA),
        (45, 0.3, False, ALPHA),
        (60, 0.0125, False, ALPHA),
        (150, 0.02, False, ALPHA),
        (300, 0.02, True, ALPHA),
        (300, 0.02, False, 0.0125),
        (700, 0.05, True, ALPHA),
        (1578, 0.02, False, ALPHA),
        (1584, 0.02, True, 0.05 / 12),  # a Holm-corrected level: the bounds need more room
        (2000, 0.0125, True, ALPHA),
    ],
)
def test_tables_decided_at_once_are_decided_as_the_full_pvalue_decides_them(
    n: int, delta: float, upper: bool, alpha: float
) -> None:
    bs, cs = tables_near_the_boundaries(n, delta)
    if n > 500:  # every eighth table: the full p-values are the slow part of this test
        bs, cs = bs[::8], cs[::8]
    verdicts = batch.decide_tables(bs, cs, n, delta, upper, alpha)
    tables = zip(bs.tolist(), cs.tolist(), strict=True)
    pvalues = [stats._unconditional_tail(b, c, n, delta, upper) for b, c in tables]
    full = np.array(pvalues) < alpha
    decided = verdicts >= 0
    assert np.array_equal(verdicts[decided].astype(bool), full[decided])
    assert decided.mean() > 0.95  # a batch that leaves many open would be slower than no batch
    assert full.any() and not full.all()


def test_no_table_is_decided_at_a_margin_of_zero() -> None:
    bs, cs = tables_near_the_boundaries(100, 0.0)
    assert (batch.decide_tables(bs, cs, 100, 0.0, True, ALPHA) == -1).all()


def one_at_a_time(boundaries: power._Boundaries) -> power._Boundaries:
    return power._Boundaries(boundaries.decide, upward=boundaries.upward)


@pytest.mark.parametrize(
    ("n", "margin", "alpha", "regression"),
    [
        (40, 0.05, ALPHA, False),
        (300, 0.02, ALPHA, False),
        (900, 0.05, 0.0125, True),
        (1578, 0.02, ALPHA, False),
    ],
)
def test_boundaries_found_in_batches_are_those_found_one_at_a_time(
    n: int, margin: float, alpha: float, regression: bool
) -> None:
    make = power._regression_boundaries if regression else power._pass_boundaries
    make.cache_clear()
    made = make(n, margin, alpha)
    one_by_one = 0

    def counted(b: int, c: int) -> bool:
        nonlocal one_by_one
        one_by_one += 1
        return made.decide(b, c)

    batched = power._Boundaries(counted, upward=made.upward, decide_many=made.decide_many, near=made.near)
    counts = list(range(0, min(n, 40) + 1)) + list(range(int(0.08 * n), int(0.14 * n)))
    batched.fill(counts)
    assert set(counts) <= batched.known.keys()
    single = one_at_a_time(made)
    assert {m: single.at(m) for m in counts} == {m: batched.known[m] for m in counts}
    # A second fill starts from the boundaries the first found.
    more = list(range(int(0.14 * n), int(0.2 * n)))
    batched.fill(more)
    assert {m: single.at(m) for m in more} == {m: batched.known[m] for m in more}
    assert one_by_one <= len(counts + more) // 20  # the batches decided (nearly) every table


@pytest.mark.parametrize(("n", "delta"), [(30, 0.05), (401, 0.02), (1578, 0.0125), (2000, 0.3)])
@pytest.mark.parametrize("strict", [False, True])
def test_thresholds_of_many_cuts_are_those_bisection_finds(n: int, delta: float, strict: bool) -> None:
    rng = np.random.default_rng(n)
    lowest = rng.integers(0, n // 2, size=12)
    counts = np.minimum(lowest[:, None] + np.arange(n // 3 + 1)[None, :], n)
    cut = rng.uniform(-3.0, 3.0, size=12)
    cut[:3] = (-9.0, 0.0, 9.0)  # thresholds at either end of a row, and one in the middle
    expected = np.stack(
        [stats._bisect_first(row, n, delta, x, strict=strict) for row, x in zip(counts, cut, strict=True)]
    )
    np.testing.assert_array_equal(batch._thresholds_many(counts, n, delta, cut, strict=strict), expected)
