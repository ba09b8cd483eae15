"""Power and the plan of an INCONCLUSIVE row: what a slice can detect, and how many cases a verdict needs.

Connor's (1987) large-sample power and Nam's (1997) sample size start the
searches; the answers are exact: the chance that the gate's own tests (the
exact unconditional score tests of :mod:`.stats`) reject, summed over every
table with non-negligible mass. Each test rejects, per discordant count m,
on one side of a boundary in b; the boundaries of each (n, margin, α) are
found once, many tables decided at a time, and kept for the run.

Pure numpy/scipy, no pytest; imported where the plan is computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import special

from . import stats
from .stats import (
    _BAND_SDS,
    _DECIDE_SLACK,
    _EDGE,
    _TIE_TOL,
    BB_GAMMA,
    PSI_POINTS,
    _bisect_first,
    _brentq,
    _check_alpha,
    _check_power,
    _null_rates,
    _p01,
    _reference_isf,
    _z,
)

__all__ = [
    "EXACT_PLAN_MAX_N",
    "cases_needed",
    "detectable_drop",
    "min_detectable_drop",
    "n_needed_at_margin",
    "pass_power",
    "regression_power",
]


# --------------------------------------------------------------------------
# power (Connor 1987)


def _connor_n(drop: float, psi: float, z_alpha: float, z_power: float) -> float:
    psi = max(psi, drop)
    return (z_alpha * math.sqrt(psi) + z_power * math.sqrt(max(psi - drop * drop, 0.0))) ** 2 / (drop * drop)


def min_detectable_drop(n: int, psi: float, alpha: float, power: float = 0.8) -> float:
    """Smallest true drop McNemar's test detects with the given power (Connor 1987).

    Large-sample, against a margin of 0: the gate uses it only as the start
    of detectable_drop's exact search. Solves
    ``n = (z₁₋α·√ψ + z_power·√(ψ − Δ²))² / Δ²`` for Δ with brentq, with ψ
    floored at Δ (a true drop needs at least Δ discordant pairs per case).
    With the floor the right-hand side falls monotonically from +∞ to
    ``z₁₋α²`` as Δ goes from 0 to 1, so a root exists in (0, 1) whenever
    ``n > z₁₋α²``.

    Returns:
        The drop as a fraction; ``math.inf`` when ``n <= z₁₋α²`` (about 2.7
        at α = 0.05): even a total collapse would not be significant.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"psi must lie in [0, 1], got {psi}")
    _check_alpha(alpha)
    _check_power(power)
    z_alpha = _reference_isf(alpha, None)
    z_power = float(special.ndtri(power))
    if n <= z_alpha * z_alpha:
        return math.inf

    def gap(drop: float) -> float:
        return _connor_n(drop, psi, z_alpha, z_power) - n

    hi = 1.0 - _EDGE
    if gap(hi) >= 0.0:
        return math.inf
    return float(_brentq(gap, 1e-9, hi, xtol=1e-12))


def n_needed_at_margin(
    margin: float, psi: float, alpha: float, power: float = 0.8, *, drop: float = 0.0
) -> int | None:
    """Cases the score test at ``margin`` needs to reach a verdict with this power.

    Large-sample size (Nam 1997) when the true drop is ``drop`` = Δ₁ and the
    discordance rate ψ (floored at |Δ₁|): non-inferiority (``H0: Δ ≥ δ``)
    when Δ₁ < δ, a regression (``H0: Δ ≤ δ``) when Δ₁ > δ. The null variance
    per case is ``σ0² = 2x̃ + δ − δ²``, with x̃ the restricted estimate of
    ``p01`` under ``Δ = δ`` at the true ``(p10, p01) = ((ψ+Δ₁)/2, (ψ−Δ₁)/2)``;
    the true one is ``σ1² = ψ − Δ₁²``:

        ``n = (z₁₋α·σ0 + z_power·σ1)² / (δ − Δ₁)²``.

    With Δ₁ = 0 this is the n at which a candidate with discordance ψ and no
    true drop is shown non-inferior. It refines the simpler
    ``(z₁₋α + z_power)²·ψ/δ²`` and needs no floor on ψ: at ψ = 0 it is
    ``z₁₋α²·(1 − δ)/δ`` (133 cases at δ = 0.02, α = 0.05), because under the
    null the candidate may still regress. The exact test used for small
    slices needs somewhat more when ψ is near 0 (149 there).

    Returns:
        The number of cases; None when ``drop == margin`` (for instance a zero
        margin and no true drop): no n decides that.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must lie in [0, 1), got {margin}")
    if not 0.0 <= psi <= 1.0:
        raise ValueError(f"psi must lie in [0, 1], got {psi}")
    if not -1.0 <= drop <= 1.0:
        raise ValueError(f"drop must lie in [-1, 1], got {drop}")
    _check_alpha(alpha)
    _check_power(power)
    if drop == margin:
        return None
    psi = max(psi, abs(drop))
    p10 = np.array([(psi + drop) / 2.0])
    p01 = np.array([(psi - drop) / 2.0])
    x0 = float(_p01(p10, p01, 1.0, margin)[0])
    sigma0 = math.sqrt(2.0 * x0 + margin - margin * margin)
    sigma1 = math.sqrt(max(psi - drop * drop, 0.0))
    z_alpha = _reference_isf(alpha, None)
    z_power = float(special.ndtri(power))
    value = (z_alpha * sigma0 + z_power * sigma1) ** 2 / (margin - drop) ** 2
    return max(1, math.ceil(value - 1e-9))


# --------------------------------------------------------------------------
# many tables of n cases decided at once (the boundaries of the exact power)

#: _decide_tables works through its tables this many at a time, which bounds
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


def _decide_tables(
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
    """_decide_tables of up to _TABLES_AT_ONCE tables."""
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


# --------------------------------------------------------------------------
# exact power of the tests the gate runs

#: Up to this many cases, cases_needed searches by exact power.
EXACT_PLAN_MAX_N = 2000

#: _power_reaches finds the boundaries of at least this many counts at once.
_POWER_BATCH = 16

#: Power sums skip discordant counts farther than this many standard
#: deviations from the mean (under 1e-3 of the mass). Leaving mass out can
#: only lower a computed power, so a power claimed is never overstated.
_POWER_SDS = 3.5


#: _Boundaries.fill moves each guess this many steps at most before leaving
#: the count to the one-at-a-time search.
_FILL_ROUNDS = 6


class _Boundaries:
    """Where a test's decision switches, per discordant count m, found on demand and kept.

    With ``upward`` the decision holds for ``b ≥ r(m)`` and the boundary is
    r(m) (m + 1 when it never holds); otherwise it holds for ``b ≤ s(m)`` and
    the boundary is s(m) (−1 when never). Boundaries move little from one m
    to the next, so each search starts from the nearest known one, moved
    along the slope of the known ones behind it; most boundaries then take
    two decisions, one on each side. ``fill`` finds the boundaries of many
    counts at once with ``decide_many``, the same two decisions each; ``at``
    finds one, and what fill leaves. Kept per (n, margin, α) for the whole
    run (_regression_boundaries, _pass_boundaries), whatever row asks.
    """

    def __init__(
        self,
        decide: Callable[[int, int], bool],
        *,
        upward: bool,
        decide_many: Callable[[NDArray[np.int64], NDArray[np.int64]], NDArray[np.int8]] | None = None,
        near: Callable[[NDArray[np.int64]], NDArray[np.int64]] | None = None,
    ):
        self.decide = decide
        self.upward = upward
        #: Many tables at once: 1 the decision holds, 0 it does not, −1 left to ``decide``.
        self.decide_many = decide_many
        #: Per count, a b near its boundary (the large-sample one): where fill starts.
        self.near = near
        self.known: dict[int, int] = {}
        #: Every table decided so far, by (b, m): fill's and at's searches share them.
        self.decided: dict[tuple[int, int], bool] = {}

    def _holds(self, b: int, m: int) -> bool:
        key = (b, m)
        if key not in self.decided:
            self.decided[key] = self.decide(b, m - b)
        return self.decided[key]

    def fill(self, counts: Iterable[int]) -> None:
        """Find the boundaries of many counts together, deciding their tables in batches.

        Each count starts from ``near``, moved by how far the nearest count
        already known lay from its own. A round asks decide_many for the two
        tables that would pin every open boundary (the guess and the table
        next to it on the other side) and moves each guess one step towards
        its boundary; within _FILL_ROUNDS rounds nearly all are found, and the
        rest (and every table decide_many leaves open) go through ``at``.
        The boundaries are those ``at`` finds: each is pinned by the same two
        decisions.
        """
        todo = sorted({int(m) for m in counts} - self.known.keys())
        if not todo or self.decide_many is None or self.near is None:
            return
        pending = np.array(todo, dtype=np.int64)
        guess = self.near(pending)
        if self.known:
            seen = np.array(sorted(self.known), dtype=np.int64)
            shift = np.array([self.known[int(m)] for m in seen], dtype=np.int64) - self.near(seen)
            at = np.clip(np.searchsorted(seen, pending), 1, max(seen.size - 1, 1))
            closer = np.abs(seen[at - 1] - pending) <= np.abs(seen[np.minimum(at, seen.size - 1)] - pending)
            guess = guess + shift[np.where(closer, at - 1, np.minimum(at, seen.size - 1))]
        lowest = np.zeros_like(pending) if self.upward else np.full_like(pending, -1)
        guess = np.clip(guess, lowest, pending + 1 if self.upward else pending)
        toward = -1 if self.upward else 1  # from a table where the decision holds to the boundary's far side
        left = dict(zip(pending.tolist(), guess.tolist(), strict=True))
        for _ in range(_FILL_ROUNDS):
            wanted = sorted(
                {
                    (b, m)
                    for m, g in left.items()
                    for b in (g, g + toward)
                    if 0 <= b <= m and (b, m) not in self.decided
                }
            )
            if wanted:
                tables = np.array(wanted, dtype=np.int64)
                verdicts = self.decide_many(tables[:, 0], tables[:, 1] - tables[:, 0])
                for (b, m), verdict in zip(wanted, verdicts.tolist(), strict=True):
                    if verdict >= 0:
                        self.decided[(b, m)] = bool(verdict)
            moved: dict[int, int] = {}
            for m, g in left.items():
                beyond = g + toward
                here = g == (m + 1 if self.upward else -1) or self.decided.get((g, m))
                there = False if beyond in (-1, m + 1) else self.decided.get((beyond, m))
                if here is None or there is None:
                    continue  # decide_many left a table open: at() decides it
                if here and not there:
                    self.known[m] = g
                else:
                    moved[m] = beyond if here else g - toward
            left = moved
            if not left:
                break
        for m in todo:
            self.at(m)

    def at(self, m: int) -> int:
        """The boundary of discordant count m."""
        if m in self.known:
            return self.known[m]
        if self.upward:
            # The smallest b in [0, m + 1] where the decision holds (at m + 1 by convention).
            def holds(b: int) -> bool:
                return b == m + 1 or self._holds(b, m)

            def is_boundary(g: int) -> bool:
                return holds(g) and (g == 0 or not holds(g - 1))

            lo, hi = 0, m + 1
        else:
            # The largest b in [-1, m] where the decision holds (at -1 by convention).
            def holds(b: int) -> bool:
                return b == -1 or self._holds(b, m)

            def is_boundary(g: int) -> bool:
                return holds(g) and (g == m or not holds(g + 1))

            lo, hi = -1, m
        near = min(self.known, key=lambda k: abs(k - m), default=None)
        if near is not None:
            # Gallop from the nearest known boundary, moved along the slope of
            # the known ones behind it: it moves by about half a step per count.
            guess = float(self.known[near])
            back = near - 4 if m > near else near + 4
            if back in self.known:
                guess += (self.known[near] - self.known[back]) / (near - back) * (m - near)
            g = min(max(round(guess), lo), hi)
            inner, outer = (g, g - 1) if self.upward else (g, g + 1)
            if holds(inner):
                # Walk outward while the decision still holds one step further.
                step = 1
                while lo <= outer <= hi and holds(outer):
                    inner = outer
                    outer = inner - step if self.upward else inner + step
                    step *= 2
                bound = max(outer, lo - 1) if self.upward else min(outer, hi + 1)
                lo, hi = (bound + 1, inner) if self.upward else (inner, bound - 1)
            else:
                step = 1
                probe = g + step if self.upward else g - step
                while lo <= probe <= hi and not holds(probe):
                    g = probe
                    step *= 2
                    probe = g + step if self.upward else g - step
                probe = min(max(probe, lo), hi)
                lo, hi = (g + 1, probe) if self.upward else (probe, g - 1)
        while lo < hi:
            if self.upward:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if holds(mid) else (mid + 1, hi)
            else:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if holds(mid) else (lo, mid - 1)
        self.known[m] = lo
        return lo


def _count_range(n: int, psi: float) -> range:
    sd = math.sqrt(max(n * psi * (1.0 - psi), 0.0))
    lo = max(math.floor(n * psi - _POWER_SDS * sd) - 1, 0)
    hi = min(math.ceil(n * psi + _POWER_SDS * sd) + 1, n)
    return range(lo, hi + 1)


def _power(n: int, drop: float, psi: float, boundaries: _Boundaries) -> float:
    psi = max(psi, abs(drop))
    p10 = (psi + drop) / 2.0
    share = min(max(p10 / psi, 0.0), 1.0) if psi > 0.0 else 0.0
    m = np.array(_count_range(n, psi), dtype=np.int64)
    boundaries.fill(m.tolist())
    k = np.array([boundaries.at(int(x)) for x in m], dtype=np.int64)
    weight = _binom_pmf(m, n, psi)
    if boundaries.upward:  # P(B ≥ k) of B ~ Binomial(m, share)
        inside = np.where(k <= 0, 1.0, np.where(k > m, 0.0, special.bdtrc(np.maximum(k - 1, 0), m, share)))
    else:  # P(B ≤ k)
        inside = np.where(k < 0, 0.0, np.where(k >= m, 1.0, special.bdtr(np.maximum(k, 0), m, share)))
    return float(np.dot(weight, inside))


def _power_reaches(n: int, drop: float, psi: float, boundaries: _Boundaries, target: float) -> bool:
    """``_power(n, drop, psi, boundaries) >= target``, finding only the boundaries it needs.

    The counts are taken from the likeliest outward. The part of the sum
    already known is a lower bound on the power, and adding the weight of
    every count not yet taken gives an upper bound (the chance inside is at
    most 1); once the target lies outside those bounds, by more than the
    rounding of the sum, the answer is the one the full sum gives. Only when
    the target lies within them is every boundary found and the sum taken
    as _power takes it. Near the centre the boundaries are found as often
    anyway; the tails of the count range, a third of it, are often skipped.
    The boundaries are found a quarter of the counts at a time (fill).
    """
    psi_floor = max(psi, abs(drop))
    p10 = (psi_floor + drop) / 2.0
    share = min(max(p10 / psi_floor, 0.0), 1.0) if psi_floor > 0.0 else 0.0
    m = np.array(_count_range(n, psi_floor), dtype=np.int64)
    weight = _binom_pmf(m, n, psi_floor)
    order = np.argsort(-weight, kind="stable")
    left = float(weight.sum())
    done = 0.0
    batch = max(_POWER_BATCH, -(-order.size // 4))
    for taken, i in enumerate(order):
        if int(m[i]) not in boundaries.known:
            # The next quarter of the counts at once: most sums stop within two or three.
            boundaries.fill(m[order[taken : taken + batch]].tolist())
        k = boundaries.at(int(m[i]))
        size = int(m[i])
        if boundaries.upward:
            inside = 1.0 if k <= 0 else 0.0 if k > size else float(special.bdtrc(k - 1, size, share))
        else:
            inside = 0.0 if k < 0 else 1.0 if k >= size else float(special.bdtr(k, size, share))
        done += float(weight[i]) * inside
        left -= float(weight[i])
        if done >= target + _DECIDE_SLACK:
            return True
        if done + max(left, 0.0) < target - _DECIDE_SLACK:
            return False
    return _power(n, drop, psi, boundaries) >= target


def _regression_reaches(n: int, drop: float, psi: float, margin: float, alpha: float, target: float) -> bool:
    """``regression_power(...) >= target``, the same answer from fewer boundaries (_power_reaches)."""
    return _power_reaches(n, drop, psi, _regression_boundaries(n, float(margin), float(alpha)), target)


def _pass_reaches(n: int, drop: float, psi: float, margin: float, alpha: float, target: float) -> bool:
    """``pass_power(...) >= target``, the same answer from fewer boundaries (_power_reaches)."""
    if margin <= 0.0:
        return target <= 0.0
    return _power_reaches(n, drop, psi, _pass_boundaries(n, float(margin), float(alpha)), target)


def _binom_pmf(m: NDArray[np.int64], n: int, p: float) -> NDArray[np.float64]:
    """``P(X = m)`` for ``X ~ Binomial(n, p)``, elementwise (0 and 1 handled exactly)."""
    mf = m.astype(np.float64)
    log_choose = special.gammaln(n + 1.0) - special.gammaln(mf + 1.0) - special.gammaln(n - mf + 1.0)
    out: NDArray[np.float64] = np.exp(log_choose + special.xlogy(mf, p) + special.xlog1py(n - mf, -p))
    return out


@lru_cache(maxsize=256)
def _regression_boundaries(n: int, margin: float, alpha: float) -> _Boundaries:
    def many(b: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[np.int8]:
        # McNemar's test first, as stats.regression_rejects: its p-value as stats._tail computes it.
        with np.errstate(invalid="ignore"):
            mcnemar = np.where(b >= 1, special.bdtrc(b - 1, b + c, 0.5), 1.0)
        out = np.zeros(b.size, dtype=np.int8)
        maybe = mcnemar < alpha
        if maybe.any():
            out[maybe] = _decide_tables(b[maybe], c[maybe], n, margin, True, alpha)
        return out

    def near(m: NDArray[np.int64]) -> NDArray[np.int64]:
        return _bisect_first(m, n, margin, float(-special.ndtri(alpha - BB_GAMMA)), strict=False)

    return _Boundaries(
        lambda b, c: stats.regression_rejects(b, c, n, margin, alpha),
        upward=True,
        decide_many=many if margin > 0.0 else None,
        near=near,
    )


@lru_cache(maxsize=256)
def _pass_boundaries(n: int, margin: float, alpha: float) -> _Boundaries:
    def many(b: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[np.int8]:
        return _decide_tables(b, c, n, margin, False, alpha)

    def near(m: NDArray[np.int64]) -> NDArray[np.int64]:
        return _bisect_first(m, n, margin, float(special.ndtri(alpha - BB_GAMMA)), strict=True) - 1

    return _Boundaries(
        lambda b, c: stats.noninferiority_rejects(b, c, n, margin, alpha),
        upward=False,
        decide_many=many if margin > 0.0 and n > 0 else None,
        near=near,
    )


def regression_power(n: int, drop: float, psi: float, margin: float, alpha: float) -> float:
    """Exact chance that the gate's REGRESSED test at ``margin`` rejects.

    Under true regression and improvement rates ``((ψ + drop)/2, (ψ − drop)/2)``
    (``ψ`` is floored at ``|drop|``), summed over every table of n cases with
    non-negligible mass: for each discordant count m the test rejects for
    ``b ≥ r(m)`` (the shape tools/verify_gate.py checks table by table).
    """
    return _power(n, drop, psi, _regression_boundaries(n, float(margin), float(alpha)))


def pass_power(n: int, drop: float, psi: float, margin: float, alpha: float) -> float:
    """Exact chance that the non-inferiority test at ``margin`` rejects (the gate's PASS).

    As regression_power, with the tables ``b ≤ s(m)`` where
    ``noninferiority_pvalue(b, m − b, n, margin) < α``. The gate passes a
    slice when its upper bound is below the margin, which inverts this test
    (apart from the rare tables where the exact p-value dips; exact_upper_bound).
    """
    if margin <= 0.0:
        return 0.0  # a zero margin is never shown: the bound cannot be below 0
    return _power(n, drop, psi, _pass_boundaries(n, float(margin), float(alpha)))


def detectable_drop(n: int, psi: float, margin: float, alpha: float, power: float = 0.8) -> float:
    """Smallest true drop the gate's REGRESSED test at ``margin`` flags with this power.

    Exact power (regression_power) at discordance ``max(ψ, drop)``, bisected
    on the drop to 0.1 point and rounded up to that grid, so that the chance
    of REGRESSED at the returned drop is at least ``power``. Each comparison
    with ``power`` stops summing once the rest of the sum cannot change it
    (_power_reaches).

    Returns:
        The drop as a fraction; ``math.inf`` when not even a total collapse
        (every case regressing) would be flagged that often.
    """
    _check_alpha(alpha)
    _check_power(power)
    step = 0.001
    if not _regression_reaches(n, 1.0, 1.0, margin, alpha, power):
        return math.inf
    # Bracket from the large-sample answer outward (in steps of 0.1 point):
    # lo is short of the power (the margin itself always is), hi reaches it.
    lo = math.floor(margin / step)
    hi = round(1.0 / step)
    guess = min_detectable_drop(n, psi, alpha, power) + margin
    if math.isfinite(guess):
        g = min(max(math.ceil(guess / step), lo + 1), hi)
        while g < hi and not _regression_reaches(n, g * step, psi, margin, alpha, power):
            lo, g = g, min(hi, lo + 2 * (g - lo) + 1)
        hi = g
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _regression_reaches(n, mid * step, psi, margin, alpha, power):
            hi = mid
        else:
            lo = mid
    return hi * step


def cases_needed(
    drop: float, psi: float, margin: float, alpha: float, power: float = 0.8, *, at_least: int = 1
) -> int | None:
    """Cases a slice needs for its verdict with this power, by exact power.

    With a true drop below the margin, the n at which the gate shows PASS
    with at least this chance (pass_power); above it, the n at which it
    flags REGRESSED with at least this chance (regression_power). The
    search starts from the large-sample answer (n_needed_at_margin) and
    moves until the exact power reaches the target; the power of a discrete
    test is not monotone in n, so the n returned has the power, but a few
    smaller ones may have it too.

    Above :data:`EXACT_PLAN_MAX_N` cases the large-sample answer is returned
    as it is: exact power there costs 0.1–0.5 s per candidate n, and the
    large-sample power of the score test is accurate at that size.

    Returns:
        The number of cases (at least ``at_least``); None when no n decides
        it (the drop equals the margin) or more than a million would be needed.
    """
    start = n_needed_at_margin(margin, psi, alpha, power, drop=drop)
    if start is None or (drop < margin and margin == 0.0):
        return None
    if start > EXACT_PLAN_MAX_N:
        return max(start, at_least) if start <= 1_000_000 else None
    reaches = _pass_reaches if drop < margin else _regression_reaches

    def enough(n: int) -> bool:
        return reaches(n, drop, psi, margin, alpha, power)

    # Bracket [lo, hi] with lo short of the power and hi reaching it, from
    # the large-sample answer outward, then bisect to 1 % (the row says "~n").
    limit = 1_000_000
    hi = max(start, at_least)
    lo = at_least - 1
    if enough(hi):
        step = hi
        while hi > at_least:
            step = max(at_least, int(hi * 0.9))
            if not enough(step):
                lo = step
                break
            hi = step
    else:
        lo = hi
        while not enough(hi):
            lo, hi = hi, int(hi * 1.2) + 1
            if hi > limit:
                return None
    while hi - lo > max(1, hi // 100):
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
