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

import numpy as np
from numpy.typing import NDArray
from scipy import special

from . import batch, stats
from .stats import (
    _DECIDE_SLACK,
    _EDGE,
    BB_GAMMA,
    _bisect_first,
    _brentq,
    _check_alpha,
    _check_power,
    _p01,
    _reference_isf,
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
            out[maybe] = batch.decide_tables(b[maybe], c[maybe], n, margin, True, alpha)
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
        return batch.decide_tables(b, c, n, margin, False, alpha)

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
