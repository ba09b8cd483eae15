"""Many tables of n cases decided at once: is each one's exact p-value below α?

The plan (:mod:`.power`) finds each discordant count's rejection boundary at
every n it tries, two tables a count; one at a time (stats._tail_below) a
table costs a millisecond or more. Here a batch of them is decided in array
operations, with the same bounds and room as the one-table decision, and
what the bounds leave open is left to it.

Pure numpy/scipy, no pytest; imported where the plan is computed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import special

from .stats import (
    _BAND_SDS,
    _DECIDE_SLACK,
    _TIE_TOL,
    BB_GAMMA,
    PSI_POINTS,
    _bisect_first,
    _null_rates,
    _p01,
    _z,
)

__all__ = ["decide_tables"]

#: decide_tables works through its tables this many at a time, which bounds
#: its (table × ψ × count) arrays to a few megabytes.
_TABLES_AT_ONCE = 64


@lru_cache(maxsize=4)
def _log_factorials(size: int) -> NDArray[np.float64]:
    """``ln k!`` for k = 0..size − 1."""
    table: NDArray[np.float64] = special.gammaln(np.arange(size, dtype=np.float64) + 1.0)
    table.setflags(write=False)
    return table


def _log_factorials_to(n: int) -> NDArray[np.float64]:
    """``ln k!`` for k = 0..n at least (the size rounded up to a power of two, so that few are kept)."""
    return _log_factorials(max(1024, 1 << (n + 1).bit_length()))


#: ln 0 as a finite number: ``0 · _LOG_ZERO = 0`` where ``0 · −inf`` is NaN,
#: and any count above 0 times it is far below the smallest double's log.
_LOG_ZERO = -1e300


def _logs(p: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``ln p`` and ``ln(1 − p)``, _LOG_ZERO where they are −inf (p in [0, 1])."""
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(p), _LOG_ZERO), np.maximum(np.log1p(-p), _LOG_ZERO)


def _psi_points_many(b: NDArray[np.int64], c: NDArray[np.int64], n: int, delta: float) -> NDArray[np.float64]:
    """stats.psi_points of many tables: a row each, sorted, NaN after a row's last point."""
    m = b + c
    lo = np.where(m == 0, 0.0, special.betaincinv(np.maximum(m, 1), n - m + 1, BB_GAMMA / 2))
    hi = np.where(m == n, 1.0, special.betaincinv(m + 1, np.maximum(n - m, 1), 1.0 - BB_GAMMA / 2))
    x = _p01(b.astype(float), c.astype(float), float(n), delta)
    extra = np.stack([np.clip(2.0 * x + delta, 0.0, 1.0), np.full(m.size, abs(delta))], axis=1)
    extra = np.where((extra >= lo[:, None]) & (extra <= hi[:, None]), extra, np.nan)
    points = np.sort(np.concatenate([np.linspace(lo, hi, PSI_POINTS, axis=1), extra], axis=1), axis=1)
    # np.unique's duplicates become NaN and sort to the end.
    points[:, 1:] = np.where(points[:, 1:] == points[:, :-1], np.nan, points[:, 1:])
    out: NDArray[np.float64] = np.sort(points, axis=1)
    return out


def _bands(n: int, psis: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The first and last count within _BAND_SDS standard deviations of each Binomial(n, ψ)'s mean."""
    sd = np.sqrt(n * psis * (1.0 - psis))
    low = np.clip(np.floor(n * psis - _BAND_SDS * sd) - 1, 0, n).astype(np.int64)
    high = np.clip(np.ceil(n * psis + _BAND_SDS * sd) + 1, 0, n).astype(np.int64)
    return low, high


def _weights(
    n: int, counts: NDArray[np.int64], log_choose: NDArray[np.float64], psis: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Binomial(n, ψ) probabilities, ``exp(log_choose + count·ln ψ + (n − count)·ln(1 − ψ))``."""
    log_psi, log_rest = _logs(psis)
    mf = counts.astype(float)
    with np.errstate(over="ignore"):
        out: NDArray[np.float64] = np.exp(log_choose + mf * log_psi + (n - mf) * log_rest)
    return out


class _Grid(NamedTuple):
    """Rows of consecutive discordant counts of one table each, and what every sum over them reuses.

    A row's tails at many ψ share its log binomial coefficients and, given
    its thresholds, the steps of _Grid.cdfs; they are computed once per
    table and cut into windows for the rows of its refined rates (windows).
    """

    n: int
    #: (..., W): the counts, one more per column.
    counts: NDArray[np.int64]
    #: ``ln C(n, count)``, −inf where a column is not summed (its weight is 0).
    log_choose: NDArray[np.float64]
    #: The largest b′ outside the upper tail (inside the lower one): the threshold − 1.
    k: NDArray[np.int64]
    #: (..., W − 1), from each column to the next: how much k rises (0 or 1),
    step: NDArray[np.float64]
    #: the b′ whose probability moves the cdf, as a float, and the count minus it,
    enter: NDArray[np.float64]
    stay: NDArray[np.float64]
    #: and ``ln C(count, b′)`` of it (−inf where b′ is outside 0..count).
    step_log: NDArray[np.float64]

    @classmethod
    def of(cls, n: int, counts: NDArray[np.int64], summed: NDArray[np.bool_], k: NDArray[np.int64]) -> _Grid:
        log_fact = _log_factorials_to(n)
        step = np.diff(k, axis=-1)
        entering = k[..., :-1] + step
        before = counts[..., :-1]
        enter = np.clip(entering, 0, before)
        return cls(
            n=n,
            counts=counts,
            log_choose=np.where(summed, log_fact[n] - log_fact[counts] - log_fact[n - counts], -np.inf),
            k=k,
            step=step.astype(float),
            enter=enter.astype(float),
            stay=(before - enter).astype(float),
            step_log=np.where(
                (entering >= 0) & (entering <= before),
                log_fact[before] - log_fact[enter] - log_fact[before - enter],
                -np.inf,
            ),
        )

    def rows(self, index: NDArray[np.int64]) -> _Grid:
        """These rows (of a grid with one axis of rows)."""
        return _Grid(
            n=self.n,
            counts=self.counts[index],
            log_choose=self.log_choose[index],
            k=self.k[index],
            step=self.step[index],
            enter=self.enter[index],
            stay=self.stay[index],
            step_log=self.step_log[index],
        )

    def windows(self, rows: NDArray[np.int64], low: NDArray[np.int64], high: NDArray[np.int64]) -> _Grid:
        """The counts ``low..high`` of row ``rows`` (shapes broadcast), as rows of one width: (..., W′).

        Views of consecutive columns, copied a block at a time. A window
        that would run past its row's end starts earlier; what lies outside
        ``low..high`` is not summed.
        """
        width = int((high - low).max()) + 1
        starts = np.clip(low - self.counts[rows, 0], 0, self.counts.shape[-1] - width)

        def cut(array: NDArray[Any], size: int) -> NDArray[Any]:
            return sliding_window_view(array, size, axis=-1)[rows, starts]

        counts = cut(self.counts, width)
        summed = (counts >= low[..., None]) & (counts <= high[..., None])
        return _Grid(
            n=self.n,
            counts=counts,
            log_choose=np.where(summed, cut(self.log_choose, width), -np.inf),
            k=cut(self.k, width),
            step=cut(self.step, width - 1),
            enter=cut(self.enter, width - 1),
            stay=cut(self.stay, width - 1),
            step_log=cut(self.step_log, width - 1),
        )

    def weights(self, psis: NDArray[np.float64]) -> NDArray[np.float64]:
        """Binomial(n, ψ) probabilities of each row's counts at each of its ψ: (..., ψ, W).

        0.0 where a column is not summed.
        """
        return _weights(self.n, self.counts[..., None, :], self.log_choose[..., None, :], psis[..., None])

    def cdfs(self, share: NDArray[np.float64]) -> NDArray[np.float64]:
        """``P(B ≤ k)`` for ``B ~ Binomial(count, s)`` at each row's counts and shares s: (..., s, W).

        Along a row the counts rise by one and k by 0 or 1 (the caller
        checks), so each value follows from the one before with a single
        probability: ``B_{m+1} = B_m + X``, hence ``P(B_{m+1} ≤ k) =
        P(B_m ≤ k) − s·P(B_m = k)`` and ``P(B_{m+1} ≤ k + 1) = P(B_m ≤ k) +
        (1 − s)·P(B_m = k + 1)``. The first of a row is scipy's bdtr.
        Summing a few hundred terms of at most 1 rounds by under 1e-13, far
        inside _DECIDE_SLACK (so a value may stray that far outside [0, 1]).
        """
        s = share[..., None]
        log_s, log_rest = _logs(share)
        k0, m0 = self.k[..., :1], self.counts[..., :1]
        start = np.where(k0 < 0, 0.0, np.where(k0 >= m0, 1.0, special.bdtr(np.clip(k0, 0, m0), m0, share)))
        # One array, filled in place: the start, then each column's move, then their running sum.
        rows = np.broadcast_shapes((*self.counts.shape[:-1], 1), share.shape)  # (..., share)
        out: NDArray[np.float64] = np.empty((*rows, self.counts.shape[-1]))
        moves = out[..., 1:]
        np.multiply(self.enter[..., None, :], log_s[..., None], out=moves)
        moves += self.stay[..., None, :] * log_rest[..., None]
        moves += self.step_log[..., None, :]
        with np.errstate(over="ignore"):
            np.exp(moves, out=moves)
        # Up a step the new value adds (1 − s)·P(B = k + 1); on the flat it takes away s·P(B = k).
        moves *= self.step[..., None, :] - s
        out[..., 0] = start
        np.cumsum(out, axis=-1, out=out)
        return out


def _between_bounds(
    weight: NDArray[np.float64], chance: NDArray[np.float64], feasible: NDArray[np.bool_], upper: bool
) -> NDArray[np.float64]:
    """Upper bounds on the tail at every ψ between each two neighbouring coarse points: (table, gap).

    In a gap the chance given a count is at most the chance at one end (it
    is monotone in ψ: the left end for the upper tail, the right end for
    the lower one); call that f. f need not be monotone in the count, but
    its running maximum from either side is, and the expectation of a
    monotone function of a Binomial(n, ψ) count is monotone in ψ, so over
    the gap it is largest at one end: the tail is at most the smaller of
    those two expectations, plus the weight outside the counts summed at
    either end. Loose (a few times the largest tail), but it needs no new
    weights or chances, and it holds whichever rates stats._refine would search.
    """
    f = chance[:, :-1, :] if upper else chance[:, 1:, :]
    falling = np.maximum.accumulate(f[:, :, ::-1], axis=2)[:, :, ::-1]
    rising = np.maximum.accumulate(f, axis=2)
    outside = np.maximum(1.0 - weight.sum(axis=2), 0.0)
    left_out, right_out = outside[:, :-1], outside[:, 1:]
    bound = (
        np.minimum(
            (weight[:, :-1, :] * falling).sum(axis=2) + left_out,
            (weight[:, 1:, :] * rising).sum(axis=2) + right_out,
        )
        + left_out
        + right_out
    )
    # The lower tail is 0 where H0 cannot hold: below δ, so in a gap whose right end is infeasible.
    live = np.ones_like(bound, dtype=bool) if upper else feasible[:, 1:]
    out: NDArray[np.float64] = np.where(live, bound, 0.0)
    return out


def _thresholds_many(
    counts: NDArray[np.int64], n: int, delta: float, cut: NDArray[np.float64], *, strict: bool
) -> NDArray[np.int64]:
    """stats._bisect_first of each table's counts (table, count) at the table's own cut (table,).

    The tables share n and δ, so the scores are computed once, on a window
    of every count's row that holds the thresholds of all the cuts (around
    the root of the Wald form of Z, as stats._bisect_first's bracket); each
    threshold is then the window's start plus the number of scores short of
    the cut (rows rise in b′). A window that does not hold a threshold (its
    first score already beyond the cut, or its last short of it) leaves
    that one to _bisect_first.
    """
    top, bottom = int(counts.max()), int(counts.min())
    m = np.arange(bottom, top + 1, dtype=np.int64)
    mf = m.astype(float)
    sd = np.sqrt(np.maximum(mf / n - delta * delta, 1e-12) / n)
    start = np.floor((mf + n * delta + n * float(cut.min()) * sd) / 2.0).astype(np.int64) - 4
    stop = np.ceil((mf + n * delta + n * float(cut.max()) * sd) / 2.0).astype(np.int64) + 4
    start = np.clip(start, 0, m + 1)
    # Each row's window, from the table before it.
    b = start[:, None] - 1 + np.arange(int((stop - start).max()) + 2)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = _z(b.astype(float), (m[:, None] - b).astype(float), float(n), delta)
    z = np.where(b < 0, -np.inf, np.where(b > m[:, None], np.inf, z))
    rows = z[counts - bottom]  # (table, count, window)
    short = (rows <= cut[:, None, None]) if strict else (rows < cut[:, None, None])
    below = short.sum(axis=2)
    first = start[counts - bottom] - 1 + below
    missed = (below == 0) | (below == rows.shape[2])
    if missed.any():
        first[missed] = _bisect_first(
            counts[missed], n, delta, np.broadcast_to(cut[:, None], counts.shape)[missed], strict=strict
        )
    return first


def decide_tables(
    b: NDArray[np.int64], c: NDArray[np.int64], n: int, delta: float, upper: bool, alpha: float
) -> NDArray[np.int8]:
    """stats._tail_below of many tables of n cases at once: 1 below α, 0 not, −1 left open.

    The bounds of stats._banded_decision, for a batch of tables in array
    operations (the boundaries of one n ask for a hundred or more tables,
    each a millisecond on its own). First one tail per table, at its middle
    point: most tables that are not below α reach α − γ there. Then, for
    the rest, every coarse ψ's tail summed over the counts within _BAND_SDS
    standard deviations of any of its ψ (a lower bound; plus the weight left
    out, an upper one); the peaks those bounds settle; and the tails at the
    rates stats._refine adds around each peak. The chance inside a tail
    given a count follows from the one before (_Grid.cdfs) rather than a
    binomial tail per count. A table is decided only where the full p-value
    would decide it the same way with _DECIDE_SLACK to spare; the rest are
    left to stats._tail_below. Only δ > 0 (the margins of the power
    searches); −1 otherwise.
    """
    out = np.full(b.size, -1, dtype=np.int8)
    if delta <= 0.0:
        return out
    for at in range(0, b.size, _TABLES_AT_ONCE):
        part = slice(at, at + _TABLES_AT_ONCE)
        out[part] = _decide_some(b[part], c[part], n, delta, upper, alpha)
    return out


def _decide_some(
    b: NDArray[np.int64], c: NDArray[np.int64], n: int, delta: float, upper: bool, alpha: float
) -> NDArray[np.int8]:
    """decide_tables of up to _TABLES_AT_ONCE tables."""
    need = alpha - BB_GAMMA
    size = b.size
    rows = np.arange(size)
    points = _psi_points_many(b, c, n, delta)
    real = ~np.isnan(points)
    last = real.sum(axis=1) - 1
    points = np.where(real, points, points[rows, last][:, None])  # padding: the last point again
    z_obs = _z(b.astype(float), c.astype(float), float(n), delta)
    slack = _TIE_TOL * np.maximum(1.0, np.abs(z_obs))
    cut = z_obs - slack if upper else z_obs + slack
    # Each table's counts: the union of its points' bands.
    band_low, band_high = _bands(n, points)
    lowest, highest = band_low.min(axis=1), band_high.max(axis=1)
    width = highest - lowest + 1
    columns = np.arange(int(width.max()))
    used = columns[None, :] < width[:, None]
    counts = np.minimum(lowest[:, None] + columns[None, :], n)
    first = _thresholds_many(counts, n, delta, cut, strict=not upper)
    first = np.where(used, first, first[rows, width - 1][:, None])  # past a row's end: flat
    grid = _Grid.of(n, counts, used, first - 1)
    steady = ((grid.step == 0.0) | (grid.step == 1.0)).all(axis=1)  # else _Grid.cdfs does not hold
    p10, feasible = _null_rates(points, delta, upper)
    share = np.clip(p10 / np.where(points > 0.0, points, 1.0), 0.0, 1.0)
    result = np.full(size, -1, dtype=np.int8)
    # One point first, the middle one: a table that is not below α has a tail
    # reaching α − γ at nearly every ψ, so one tail settles most of them.
    middle = last // 2
    weight = grid.weights(points[rows, middle][:, None])[:, 0]
    cdf = grid.cdfs(share[rows, middle][:, None])[:, 0]
    low = (weight * (1.0 - cdf if upper else cdf)).sum(axis=1)
    result[steady & feasible[rows, middle] & (low - _DECIDE_SLACK >= need)] = 0
    rest = np.nonzero(steady & (result < 0))[0]
    if rest.size:
        result[rest] = _decide_at_every_point(delta, upper, need, points[rest], real[rest], grid.rows(rest))
    return result


def _decide_at_every_point(
    delta: float,
    upper: bool,
    need: float,
    points: NDArray[np.float64],
    real: NDArray[np.bool_],
    grid: _Grid,
) -> NDArray[np.int8]:
    """The second stage of _decide_some: every coarse tail, the peaks, the refined rates.

    ``grid``: a row per table, its counts the union of its points' bands.
    """
    n = grid.n
    size = points.shape[0]
    last = real.sum(axis=1) - 1
    p10, feasible = _null_rates(points, delta, upper)
    share = np.clip(p10 / np.where(points > 0.0, points, 1.0), 0.0, 1.0)
    cdf = grid.cdfs(share)
    chance = 1.0 - cdf if upper else cdf  # past a row's end too: its weights there are 0
    weight = grid.weights(points)
    low = np.where(feasible, (weight * chance).sum(axis=2), 0.0)
    high = np.where(feasible, low + np.maximum(1.0 - weight.sum(axis=2), 0.0), 0.0)
    result = np.full(size, -1, dtype=np.int8)
    result[(low - _DECIDE_SLACK >= need).any(axis=1)] = 0
    candidate = (result < 0) & (high + _DECIDE_SLACK < need).all(axis=1)
    if not candidate.any():
        return result
    # The peaks stats._refine would search around, where the bounds settle them (stats._sure_peaks).
    lo = np.where(feasible & real, low - _DECIDE_SLACK, 0.0)
    hi = np.where(feasible & real, high + _DECIDE_SLACK, 0.0)
    index = np.arange(points.shape[1])[None, :]
    has_left = index >= 1
    has_right = index < last[:, None]
    lo_left, hi_left = np.roll(lo, 1, axis=1), np.roll(hi, 1, axis=1)
    lo_right, hi_right = np.roll(lo, -1, axis=1), np.roll(hi, -1, axis=1)
    sure = (lo > 0.0) & (~has_left | (lo >= hi_left)) & (~has_right | (lo >= hi_right)) & real
    maybe = (hi > 0.0) & (~has_left | (hi >= lo_left)) & (~has_right | (hi >= lo_right)) & real
    settled = ~(maybe & ~sure).any(axis=1) & sure.any(axis=1)
    unsure = np.nonzero(candidate & ~settled)[0]
    if unsure.size:
        # Peaks the bounds leave open (most often every tail is near 0): every rate
        # between the first and last coarse point at once, whatever stats._refine would pick.
        inside = np.where(weight[unsure] > 0.0, chance[unsure], 0.0)
        spans = _between_bounds(weight[unsure], inside, feasible[unsure], upper)
        result[unsure[(spans + _DECIDE_SLACK < need).all(axis=1)]] = 1
    candidate &= settled
    table, peak = np.nonzero(sure & candidate[:, None])
    if not table.size:
        return result
    left = points[table, np.maximum(peak - 1, 0)]
    right = points[table, np.minimum(peak + 1, last[table])]
    fine = np.linspace(left, right, PSI_POINTS + 2, axis=1)[:, 1:-1]  # (peak, point)
    # A peak's refined rates lie between its two neighbours: their tails are
    # summed over the counts from the left one's band to the right one's, a
    # slice of the table's columns (what it leaves out goes to the upper bound).
    span = grid.windows(table, _bands(n, left)[0], _bands(n, right)[1])
    fine_p10, fine_feasible = _null_rates(fine, delta, upper)
    fine_share = np.clip(fine_p10 / np.where(fine > 0.0, fine, 1.0), 0.0, 1.0)
    fine_weight = span.weights(fine)
    fine_cdf = span.cdfs(fine_share)  # (peak, point, count)
    fine_low = np.where(
        fine_feasible, (fine_weight * (1.0 - fine_cdf if upper else fine_cdf)).sum(axis=2), 0.0
    )
    fine_high = np.where(fine_feasible, fine_low + np.maximum(1.0 - fine_weight.sum(axis=2), 0.0), 0.0)
    reached = np.zeros(size, dtype=bool)
    reached[table[(fine_low - _DECIDE_SLACK >= need).any(axis=1)]] = True
    short = np.ones(size, dtype=bool)
    short[table[(fine_high + _DECIDE_SLACK >= need).any(axis=1)]] = False
    result[candidate & reached] = 0
    result[candidate & short & ~reached] = 1
    return result
