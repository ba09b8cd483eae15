"""Paired statistics for a reference model and a quantized candidate.

Pure numpy/scipy, no pytest. Every function works on the paired counts of one
slice: ``n`` cases, ``b`` regressions (reference passes, candidate fails) and
``c`` improvements (reference fails, candidate passes). The drop is
``Δ̂ = (b − c)/n`` (positive = candidate worse) and ``δ`` is the margin.

The formulas are those of DESIGN.md §4a: the restricted maximum-likelihood
estimate of ``p01`` under ``Δ = δ`` and the score statistic of Nam (1997) and
Tango (1998), an exact unconditional p-value at any n, McNemar's exact
conditional test at ``δ = 0``, Holm's step-down correction and the design
effect of clustered cases (Miller 2024). The power of these tests, and the
plan of an INCONCLUSIVE row, are in :mod:`.power`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special

# scipy.stats is not imported: it costs about a second at the end of every
# gate run, and everything used here is a scipy.special function (the
# distributions' own implementations call the same ones). scipy.optimize is
# imported where a bound is solved (_brentq).

Method = Literal["auto", "exact", "normal"]


# Score ties between tables are decided with this slack: two tables whose Z
# differ only by rounding must fall on the same side of the observed one.
_TIE_TOL = 1e-9

# Tables outside a box holding all but ~4e-17 of the multinomial mass are
# skipped (see _support); ln(1/1e-17).
_LOG_INV_EPS = 39.14

# Per ψ, discordant counts weighing less than e^-46 ≈ 1e-20 of the likeliest
# one are left out of a tail (_weighted_tails).
_LOG_LIVE = 46.0

# Keeps root brackets off ±1, where the score variance vanishes.
_EDGE = 1e-12

__all__ = [
    "Method",
    "design_effect",
    "exact_upper_bound",
    "holm",
    "improvement_pvalue",
    "noninferiority_pvalue",
    "noninferiority_rejects",
    "paired_se",
    "pass_region",
    "region_probability",
    "regression_pvalue",
    "regression_region",
    "regression_rejects",
    "resolve_method",
    "restricted_p01",
    "score_lower_bound",
    "score_upper_bound",
    "score_z",
    "upper_bound",
]


# --------------------------------------------------------------------------
# validation


def _check_counts(b: int, c: int, n: int) -> None:
    for name, value in (("b", b), ("c", c), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if b + c > n:
        raise ValueError(f"b + c = {b + c} exceeds n = {n}")


def _check_delta(delta: float) -> None:
    if not -1.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (-1, 1), got {delta}")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def _check_power(power: float) -> None:
    # Below 0.5 the power formulas lose their monotonicity in the drop.
    if not 0.5 <= power < 1.0:
        raise ValueError(f"power must lie in [0.5, 1), got {power}")


def resolve_method(n: int, method: Method = "auto", deff: float = 1.0) -> Literal["exact", "normal"]:
    """Picks the p-value machinery for a slice.

    Args:
        n: Number of paired cases.
        method: ``"exact"``, ``"normal"`` or ``"auto"`` (exact whenever the
            cases are independent, ``deff == 1``, at any n: the exact tail
            costs about a millisecond even at n = 100,000).
        deff: Design effect of clustered cases; the exact tests assume
            independent cases, so ``deff > 1`` needs the normal approximation.

    Returns:
        ``"exact"`` or ``"normal"``.

    Raises:
        ValueError: Unknown method, ``deff < 1``, or ``"exact"`` with ``deff > 1``.
    """
    if not deff >= 1.0:
        raise ValueError(f"design effect must be >= 1, got {deff}")
    if method == "auto":
        return "exact" if deff == 1.0 else "normal"
    if method == "exact":
        if deff != 1.0:
            raise ValueError("the exact tests assume independent cases; use method='normal'")
        return "exact"
    if method == "normal":
        return "normal"
    raise ValueError(f"method must be 'auto', 'exact' or 'normal', got {method!r}")


# --------------------------------------------------------------------------
# point estimates and the score statistic


def paired_se(b: int, c: int, n: int) -> float:
    """Wald standard error of the paired drop, ``√(((b+c)/n − Δ̂²)/n)``.

    Returns:
        The standard error; 0.0 when ``n == 0``.
    """
    _check_counts(b, c, n)
    if n == 0:
        return 0.0
    drop = (b - c) / n
    # max() absorbs rounding when every case is discordant one way.
    return math.sqrt(max((b + c) / n - drop * drop, 0.0) / n)


def _p01(b: NDArray[np.float64], c: NDArray[np.float64], n: float, delta: float) -> NDArray[np.float64]:
    """Vectorised restricted MLE of p01 under ``Δ = δ`` (see restricted_p01)."""
    w = (b + c) + delta * (b - c - 2.0 * n)
    disc = np.maximum(w * w + 8.0 * n * c * delta * (1.0 - delta), 0.0)
    root = np.sqrt(disc)
    nonneg = w >= 0.0
    # For W < 0 (only when δ > 0) the textbook root cancels catastrophically;
    # the product of the roots, −cδ(1−δ)/(2n), gives the same root stably.
    # √D − W > 0 there, so the placeholder 1.0 only guards the unused branch.
    denom = np.where(nonneg, 1.0, root - w)
    return np.where(nonneg, (w + root) / (4.0 * n), 2.0 * c * delta * (1.0 - delta) / denom)


def _z(b: NDArray[np.float64], c: NDArray[np.float64], n: float, delta: float) -> NDArray[np.float64]:
    """Vectorised score statistic (see score_z)."""
    x = _p01(b, c, n, delta)
    var = (2.0 * x + delta - delta * delta) / n
    num = (b - c) / n - delta
    positive = var > 0.0
    # The variance vanishes only at δ = 0 with b = c = 0, where the numerator
    # is 0 too: no discordant pair is no evidence either way, so Z = 0.
    return np.where(positive, num / np.sqrt(np.where(positive, var, 1.0)), 0.0)


def restricted_p01(b: int, c: int, n: int, delta: float) -> float:
    """Restricted MLE of ``p01`` (improvement rate) under ``Δ = p10 − p01 = δ``.

    Maximises the multinomial likelihood ``b·log(x+δ) + c·log x +
    (n−b−c)·log(1−2x−δ)``. Its stationarity condition is the quadratic
    ``2n·x² − W·x − c·δ(1−δ) = 0`` with ``W = (b+c) + δ(b−c−2n)``, and the
    maximiser is its larger root, ``x = (W + √(W² + 8ncδ(1−δ)))/(4n)``.

    The larger root is the right one for negative δ as well: the quadratic is
    non-negative at the lower end of the feasible interval ``x ≥ max(0, −δ)``
    and non-positive at the upper end ``x = (1−δ)/2``, so the feasible
    maximiser is the larger root (at the boundary ``x = −δ`` when ``b = 0``
    and the data favour it). At ``δ = 0`` it is ``(b + c)/(2n)``.

    Args:
        b: Regressions.
        c: Improvements.
        n: Paired cases, ``n >= 1``.
        delta: The drop under the null, in (-1, 1).

    Returns:
        The restricted estimate of ``p01``; ``p10`` is it plus ``delta``.
    """
    _check_counts(b, c, n)
    _check_delta(delta)
    if n == 0:
        raise ValueError("restricted_p01 needs n >= 1")
    x = _p01(np.array([b], dtype=float), np.array([c], dtype=float), float(n), delta)
    return float(x[0])


def score_z(b: int, c: int, n: int, delta: float) -> float:
    """Score statistic of Nam (1997) and Tango (1998) for ``H0: Δ = δ``.

    ``Z(δ) = (Δ̂ − δ)/√((2x + δ − δ²)/n)`` with ``x = restricted_p01``; at
    ``δ = 0`` it is McNemar's ``(b − c)/√(b + c)``. Large Z means the
    candidate is worse than ``δ``.

    Returns:
        Z; 0.0 when the null variance is 0 (``b = c = 0`` at ``δ = 0``) or
        ``n == 0``, i.e. no evidence either way.
    """
    _check_counts(b, c, n)
    _check_delta(delta)
    if n == 0:
        return 0.0
    z = _z(np.array([b], dtype=float), np.array([c], dtype=float), float(n), delta)
    return float(z[0])


# --------------------------------------------------------------------------
# p-values


def _support(n: int, p: float) -> tuple[int, int]:
    """Range of a Binomial(n, p) count holding all but 2·1e-17 of its mass.

    Bernstein's inequality, ``P(|X − np| ≥ t) ≤ 2·exp(−t²/(2(σ² + t/3)))``,
    solved for t; pure arithmetic, so it is cheap enough to call per p-value.
    """
    mean = n * p
    var = n * p * (1.0 - p)
    third = _LOG_INV_EPS / 3.0
    t = third + math.sqrt(third * third + 2.0 * _LOG_INV_EPS * var)
    return max(math.floor(mean - t) - 1, 0), min(math.ceil(mean + t) + 1, n)


#: Berger & Boos (1994): the exact p-value is the largest tail over a
#: 1 − γ confidence interval of the discordance rate, plus γ.
BB_GAMMA = 0.001
#: The maximum over ψ is searched on this many evenly spaced points of the
#: interval (with the restricted MLE's ψ and the edge |δ|), then on as many
#: between the neighbours of each peak.
PSI_POINTS = 9


def _psi_interval(m: int, n: int) -> tuple[float, float]:
    """Clopper–Pearson two-sided 1 − γ interval of ψ from m discordant pairs of n."""
    lo = 0.0 if m == 0 else float(special.betaincinv(m, n - m + 1, BB_GAMMA / 2))
    hi = 1.0 if m == n else float(special.betaincinv(m + 1, n - m, 1.0 - BB_GAMMA / 2))
    return lo, hi


def psi_points(b: int, c: int, n: int, delta: float) -> NDArray[np.float64]:
    """The coarse discordance rates over which the exact p-value of a table is maximised.

    PSI_POINTS evenly spaced across the 1 − γ interval of ψ, and, when they
    lie inside it, the rate of the restricted MLE under ``Δ = δ`` (so the
    p-value is never below the plain estimated one, plus γ) and the edge of
    the feasible region, ``ψ = |δ|``: every discordant pair in one direction.
    The tail is often largest at the edge (for the lower tail no ψ below it
    is feasible), and an even grid steps over it: at (b, c, n, δ) =
    (2, 3, 30, 0.05) the grid alone gave a non-inferiority p-value of 0.167
    where the tail at the edge is 0.215. Sorted, without duplicates.
    """
    lo, hi = _psi_interval(b + c, n)
    x = float(_p01(np.array([b], dtype=float), np.array([c], dtype=float), float(n), delta)[0])
    psi0 = min(max(2.0 * x + delta, 0.0), 1.0)
    points: NDArray[np.float64] = np.linspace(lo, hi, PSI_POINTS, dtype=np.float64)
    extra = [p for p in (psi0, abs(delta)) if lo <= p <= hi]
    if extra:
        points = np.unique(np.append(points, extra))
    return points


def _refine(points: NDArray[np.float64], tails: NDArray[np.float64]) -> NDArray[np.float64]:
    """PSI_POINTS rates strictly between the neighbours of every local maximum of the coarse tails.

    The tail need not be unimodal in ψ: at (5, 6, 20, δ = 0.1) it has three
    peaks, and refining around the best coarse point alone found 0.2032
    where the largest tail is 0.2053. Refining around each peak keeps the
    search within the bound that tools/verify_gate.py states (section 4).
    """
    inner = tails[1:-1]
    peak = np.zeros(tails.size, dtype=bool)
    peak[1:-1] = (inner >= tails[:-2]) & (inner >= tails[2:])
    peak[0] = tails.size == 1 or tails[0] >= tails[1]
    peak[-1] = tails.size == 1 or tails[-1] >= tails[-2]
    peak &= tails > 0.0
    if not peak.any():
        peak[int(np.argmax(tails))] = True
    return _refine_at(points, peak)


def _refine_at(points: NDArray[np.float64], peak: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The rates _refine searches around the coarse points marked as peaks."""
    chunks = [
        np.linspace(points[max(i - 1, 0)], points[min(i + 1, points.size - 1)], PSI_POINTS + 2)[1:-1]
        for i in np.nonzero(peak)[0]
    ]
    return np.concatenate(chunks)


def _null_rates(
    psi: NDArray[np.float64], delta: float, upper: bool
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Regression rate p10 at the least favourable null point for each ψ, and where H0 is possible.

    Upper tail (H0: Δ ≤ δ): Δ = min(δ, ψ), since a drop cannot exceed the
    discordance. Lower tail (H0: Δ ≥ δ): Δ = max(δ, −ψ), possible only when
    δ ≤ ψ.
    """
    drop = np.clip(delta, -psi, psi)
    feasible = delta >= -psi if upper else delta <= psi
    return (psi + drop) / 2.0, feasible


#: The thresholds of one table's tail: the first discordant count they start at, and per count
#: the first b′ beyond the observed score (see _tails_at).
_Thresholds = tuple[int, NDArray[np.int64]]


def _tails_at(
    n: int,
    delta: float,
    upper: bool,
    z_obs: float,
    psis: NDArray[np.float64],
    known: _Thresholds | None = None,
) -> NDArray[np.float64]:
    """``P(Z ≥ z_obs)`` (or ``≤``) at the null rates of each ψ; 0.0 where H0 cannot hold."""
    return _tails_and_thresholds(n, delta, upper, z_obs, psis, known)[0]


def _tails_and_thresholds(
    n: int,
    delta: float,
    upper: bool,
    z_obs: float,
    psis: NDArray[np.float64],
    known: _Thresholds | None = None,
) -> tuple[NDArray[np.float64], _Thresholds | None]:
    """_tails_at, and the thresholds it used (None when H0 holds at no ψ).

    ``known``: thresholds of the same table already found for a range of
    counts; the refinement reuses the coarse search's, whose range covers
    its own (its ψ lie inside the coarse interval).
    """
    p10, feasible = _null_rates(psis, delta, upper)
    out = np.zeros(psis.size)
    if not feasible.any():
        return out, None
    where = np.nonzero(feasible)[0]
    psis, p10 = psis[where], p10[where]
    m_lo = min(_support(n, float(p))[0] for p in (psis.min(), psis.max()))
    m_hi = max(_support(n, float(p))[1] for p in (psis.min(), psis.max()))
    m = np.arange(m_lo, m_hi + 1, dtype=np.int64)
    first = _first_beyond(n, delta, upper, z_obs, m_lo, m_hi, known)
    out[where] = _weighted_tails(n, m, first, psis, p10, upper)
    return out, (m_lo, first)


def _first_beyond(
    n: int, delta: float, upper: bool, z_obs: float, m_lo: int, m_hi: int, known: _Thresholds | None = None
) -> NDArray[np.int64]:
    """Per discordant count m_lo..m_hi, the smallest b′ with Z(b′, m − b′) beyond the observed score.

    Upper tail: Z ≥ cut, the tables at least as extreme are b′ ≥ first.
    Lower tail: Z > cut, the tables at most as extreme are b′ < first. The
    value of each count does not depend on the range asked for.
    """
    if known is not None and known[0] <= m_lo and m_hi < known[0] + known[1].size:
        return known[1][m_lo - known[0] : m_hi - known[0] + 1]
    slack = _TIE_TOL * max(1.0, abs(z_obs))
    cut = z_obs - slack if upper else z_obs + slack
    m = np.arange(m_lo, m_hi + 1, dtype=np.int64)
    if n <= _GRID_MAX_N:
        rows = _z_grid(n, delta)[m_lo : m_hi + 1]
        first: NDArray[np.int64] = m + 1 - (rows >= cut).sum(axis=1) if upper else (rows <= cut).sum(axis=1)
        return first
    return _bisect_first(m, n, delta, cut, strict=not upper)


def _weighted_tails(
    n: int,
    m: NDArray[np.int64],
    first: NDArray[np.int64],
    psis: NDArray[np.float64],
    p10: NDArray[np.float64],
    upper: bool,
) -> NDArray[np.float64]:
    """Per ψ: Σ over m of P(M = m) · P(b′ beyond first[m] | m), at regression rate p10."""
    mf = m.astype(float)
    log_choose = special.gammaln(n + 1.0) - special.gammaln(mf + 1.0) - special.gammaln(n - mf + 1.0)
    col = psis[:, None]
    log_weight = (
        log_choose[None, :] + special.xlogy(mf[None, :], col) + special.xlog1py(n - mf[None, :], -col)
    )
    # Only counts with visible mass need their binomial tail: per ψ, those
    # within e^-46 (1e-20) of its largest weight. The rest, a few hundred at
    # most, change a tail by less than 1e-17.
    live = log_weight > np.maximum(log_weight.max(axis=1, keepdims=True) - _LOG_LIVE, -690.0)
    share = np.clip(p10 / np.where(psis > 0.0, psis, 1.0), 0.0, 1.0)[:, None]
    rows, cols = np.nonzero(live)
    k = first[cols] - 1
    if upper:
        inside = special.bdtrc(k, m[cols], share[rows, 0])
    else:
        inside = np.where(k < 0, 0.0, special.bdtr(np.maximum(k, 0), m[cols], share[rows, 0]))
    totals = np.zeros(psis.size)
    np.add.at(totals, rows, np.exp(log_weight[rows, cols]) * inside)
    return totals


@lru_cache(maxsize=8192)
def _unconditional_tail(b: int, c: int, n: int, delta: float, upper: bool) -> float:
    """Exact unconditional p-value of the score statistic (DESIGN §4a), level α at every n.

    The tail ``P(Z ≥ Z_obs)`` (``upper``; ``≤`` otherwise) of the multinomial
    at the null point, maximised over the discordance rate ψ across a
    1 − γ Clopper–Pearson interval from the observed ``b + c``, plus γ
    (Berger & Boos 1994, γ = :data:`BB_GAMMA`). The maximum is searched on a
    coarse grid that holds the edge ψ = |δ| and the restricted MLE, then
    between the neighbours of every peak of the coarse tails (psi_points,
    _refine); over every table up to n = 50 at the margins
    tools/verify_gate.py checks, that search is at most 3.7e-4 below a
    400-point one (docs/verification.md, section 4). The exact checks sum
    the decisions this makes, so they hold for the test as computed. The
    tail at the restricted MLE alone (the "estimated" p-value) is not level
    α: summed over every table, its false-alarm rate at the boundary reaches
    0.0502 at n = 2001, δ = 0.02, ψ = 0.03. The maximum over the interval,
    plus γ, is valid at every n.

    Each tail is summed one discordant count ``m = b′ + c′`` at a time: ``m``
    is Binomial(n, ψ) and, given ``m``, ``b′`` is Binomial(m, p10/ψ). For
    fixed ``m``, Z rises with ``b′`` (checked over a grid in the tests), so
    the tables at least as extreme are ``b′ ≥ b*(m)``, read off a cached grid
    of every table's Z for small n and found by bisection for large n, and
    their mass is one binomial tail. Counts ``m`` outside a range holding all
    but 2·1e-17 of Binomial(n, ψ) are skipped (see _support). Tens of
    milliseconds at n = 100,000.

    Memoised (and its first stage, _coarse_tails): the gate, its bounds and
    its power ask for the same tables often.
    """
    z_obs, coarse, tails, known = _coarse_tails(b, c, n, delta, upper)
    fine = _tails_at(n, delta, upper, z_obs, _refine(coarse, tails), known)
    return min(max(float(tails.max()), float(fine.max())) + BB_GAMMA, 1.0)


@lru_cache(maxsize=8192)
def _coarse_tails(
    b: int, c: int, n: int, delta: float, upper: bool
) -> tuple[float, NDArray[np.float64], NDArray[np.float64], _Thresholds | None]:
    """The first stage of _unconditional_tail: Z_obs, the coarse ψ points, their tails, the thresholds."""
    z_obs = float(_z(np.array([b], dtype=float), np.array([c], dtype=float), float(n), delta)[0])
    coarse = psi_points(b, c, n, delta)
    tails, known = _tails_and_thresholds(n, delta, upper, z_obs, coarse)
    coarse.setflags(write=False)
    tails.setflags(write=False)
    return z_obs, coarse, tails, known


def _tail_below(b: int, c: int, n: int, delta: float, upper: bool, alpha: float) -> bool:
    """``_unconditional_tail(...) < α``, from bounds on the tails when they settle it.

    The p-value is the larger of the coarse and the refined maxima, plus γ,
    so a coarse tail at or above ``α − γ`` decides "not below" on its own.
    _banded_decision tries the decision from the likeliest counts of each ψ
    alone; where its bounds leave it open, the p-value is computed in full
    (a coarse tail reaching ``α − γ`` still skipping the refinement). The
    decision is the same as comparing the full p-value either way.
    """
    decided = _banded_decision(b, c, n, delta, upper, alpha)
    if decided is not None:
        return decided
    tails = _coarse_tails(b, c, n, delta, upper)[2]
    if min(float(tails.max()) + BB_GAMMA, 1.0) >= alpha:
        return False
    return _unconditional_tail(b, c, n, delta, upper) < alpha


#: Per (n, δ, upper): the index of the coarse point where the last table's
#: tail peaked (neighbouring tables peak at the same index most often). A
#: hint for _banded_decision's first look; it never changes a decision.
_PEAK_HINT: dict[tuple[int, float, bool], int] = {}

#: A decision taken from bounds on a sum needs this much room, far above the
#: rounding of a sum of a few thousand terms in [0, 1] (under 1e-12).
_DECIDE_SLACK = 1e-9

#: _banded_decision sums each ψ's tail over the counts within this many
#: standard deviations of its mean (the full sum spans about ±9.6): the
#: coarse tails, whose order decides the peaks, over more of them than the
#: first look and the refinement, which only need to stay clear of α − γ.
_BAND_SDS = 5.5
_NARROW_SDS = 3.5


def _banded_decision(b: int, c: int, n: int, delta: float, upper: bool, alpha: float) -> bool | None:
    """``_unconditional_tail(...) < α`` from bounds on its tails; None where they do not settle it.

    Every tail is a sum of non-negative terms, each at most the weight of its
    count: summed over the counts within _BAND_SDS standard deviations of the
    mean, it is a lower bound L, and L plus the weight outside the band is an
    upper bound U (the full sum leaves out less than 1e-17 more). A tail
    with ``L ≥ α − γ`` decides "not below"; "below" needs ``U < α − γ`` at
    every coarse point and at every point the refinement would add, and the
    refinement's points are those of the full search only when the bounds
    settle which coarse points are peaks (the refined points' upper bounds
    come first from the coarse tails themselves, _refined_above). Each
    comparison keeps _DECIDE_SLACK of room, so the answer is the one the
    full p-value gives. About half the terms of the full sum at a coarse
    point and a third at a refined one (_BAND_SDS, _NARROW_SDS), and a tenth
    of the points for most tables that are "not below", where the hint's
    point settles it.
    """
    need = alpha - BB_GAMMA
    points = psi_points(b, c, n, delta)
    _, feasible = _null_rates(points, delta, upper)
    if not feasible.any():
        return None
    z_obs = float(_z(np.array([b], dtype=float), np.array([c], dtype=float), float(n), delta)[0])
    spread = points[feasible]
    lo_end = _band(n, float(spread.min()))
    hi_end = _band(n, float(spread.max()))
    m_lo, m_hi = min(lo_end[0], hi_end[0]), max(lo_end[1], hi_end[1])
    known = (m_lo, _first_beyond(n, delta, upper, z_obs, m_lo, m_hi))
    key = (n, delta, upper)
    guess = _PEAK_HINT.get(key, -1)
    if 0 <= guess < points.size:
        low, _, _ = _banded_tails(n, delta, upper, known, points[guess : guess + 1], _NARROW_SDS)
        if low[0] - _DECIDE_SLACK >= need:
            return False
    low, high, chance = _banded_tails(n, delta, upper, known, points, _BAND_SDS)
    if len(_PEAK_HINT) > 64:
        _PEAK_HINT.clear()
    _PEAK_HINT[key] = int(np.argmax(low))
    if (low - _DECIDE_SLACK >= need).any():
        return False
    if not (high + _DECIDE_SLACK < need).all():
        return None
    # Where H0 is impossible a tail is exactly 0 in both sums.
    lo = np.where(feasible, low - _DECIDE_SLACK, 0.0)
    hi = np.where(feasible, high + _DECIDE_SLACK, 0.0)
    peak = _sure_peaks(lo, hi)
    if peak is None:
        return None
    fine = _refine_at(points, peak)
    above = _refined_above(n, known, points, feasible, chance, fine)
    if above is not None and (above + _DECIDE_SLACK < need).all():
        return True
    low, high, _ = _banded_tails(n, delta, upper, known, fine, _NARROW_SDS)
    if (low - _DECIDE_SLACK >= need).any():
        return False
    if (high + _DECIDE_SLACK < need).all():
        return True
    return None


def _sure_peaks(lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.bool_] | None:
    """_refine's peaks of tails known to lie in [lo, hi]; None unless the bounds settle every one."""
    size = lo.size
    yes = np.zeros(size, dtype=bool)
    maybe = np.zeros(size, dtype=bool)
    for i in range(size):
        sure, possible = lo[i] > 0.0, hi[i] > 0.0
        for j in (i - 1, i + 1):
            if 0 <= j < size:
                sure = sure and lo[i] >= hi[j]
                possible = possible and hi[i] >= lo[j]
        yes[i], maybe[i] = sure, possible
    if (maybe & ~yes).any() or not yes.any():
        return None
    return yes


def _band(n: int, psi: float) -> tuple[int, int]:
    """The counts within _BAND_SDS standard deviations of a Binomial(n, ψ) mean."""
    sd = math.sqrt(n * psi * (1.0 - psi))
    return max(math.floor(n * psi - _BAND_SDS * sd) - 1, 0), min(math.ceil(n * psi + _BAND_SDS * sd) + 1, n)


def _band_weights(
    n: int, psis: NDArray[np.float64], k_lo: int, k_hi: int, sds: float
) -> tuple[int, NDArray[np.int64], NDArray[np.float64]]:
    """Binomial(n, ψ) weights of the counts in each ψ's band cut to k_lo..k_hi, 0.0 outside it.

    Returns the first count of the columns, the counts and the weights (a row per ψ).
    """
    sd = np.sqrt(n * psis * (1.0 - psis))
    band_lo = np.clip(np.floor(n * psis - sds * sd) - 1, k_lo, k_hi).astype(np.int64)
    band_hi = np.clip(np.ceil(n * psis + sds * sd) + 1, k_lo, k_hi).astype(np.int64)
    a, z = int(band_lo.min()), int(band_hi.max())
    m = np.arange(a, z + 1, dtype=np.int64)
    mf = m.astype(float)
    log_choose = special.gammaln(n + 1.0) - special.gammaln(mf + 1.0) - special.gammaln(n - mf + 1.0)
    col = psis[:, None]
    weight = np.exp(
        log_choose[None, :] + special.xlogy(mf[None, :], col) + special.xlog1py(n - mf[None, :], -col)
    )
    inband = (m[None, :] >= band_lo[:, None]) & (m[None, :] <= band_hi[:, None])
    return a, m, np.where(inband, weight, 0.0)


def _banded_tails(
    n: int, delta: float, upper: bool, known: _Thresholds, psis: NDArray[np.float64], sds: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper bounds on _tails_at from the counts in each ψ's band (see _banded_decision).

    The band is cut to the counts whose thresholds are known; what it leaves
    out goes to the upper bound. 0.0 and 0.0 where H0 cannot hold. Also
    returns, per ψ and per known count, the chance inside the tail given the
    count where it was computed and 1.0 (a bound) where it was not.
    """
    low = np.zeros(psis.size)
    high = np.zeros(psis.size)
    k_lo, first_all = known
    k_hi = k_lo + first_all.size - 1
    chance = np.ones((psis.size, first_all.size))
    p10, feasible = _null_rates(psis, delta, upper)
    where = np.nonzero(feasible)[0]
    if where.size == 0:
        return low, high, chance
    psis, p10 = psis[where], p10[where]
    a, m, weight = _band_weights(n, psis, k_lo, k_hi, sds)
    first = first_all[a - k_lo : a - k_lo + m.size]
    share = np.clip(p10 / np.where(psis > 0.0, psis, 1.0), 0.0, 1.0)
    rows, cols = np.nonzero(weight > 0.0)
    k = first[cols] - 1
    if upper:
        inside = special.bdtrc(k, m[cols], share[rows])
    else:
        inside = np.where(k < 0, 0.0, special.bdtr(np.maximum(k, 0), m[cols], share[rows]))
    part = np.zeros(psis.size)
    np.add.at(part, rows, weight[rows, cols] * inside)
    low[where] = part
    high[where] = part + np.maximum(1.0 - weight.sum(axis=1), 0.0)
    chance[where[rows], cols + (a - k_lo)] = inside
    return low, high, chance


def _refined_above(
    n: int,
    known: _Thresholds,
    points: NDArray[np.float64],
    feasible: NDArray[np.bool_],
    chance: NDArray[np.float64],
    fine: NDArray[np.float64],
) -> NDArray[np.float64] | None:
    """Upper bounds on the tails at the refined rates, without a binomial tail of their own.

    The regression share of the null point, p10/ψ, is monotone in ψ (1 or
    0 up to ψ = |δ|, then ½ + δ/(2ψ)), and the chance inside a tail given a
    count is monotone in that share, so between two coarse points it lies
    between the chances at the two: their larger one bounds it, and the
    weights are those of the refined rate itself. None when a coarse point
    next to a refined rate is one where H0 cannot hold (its chances are
    not known). Most often the bounds fall short of settling the table;
    they spare the refinement's binomial tails for the rest.
    """
    k_lo, first_all = known
    k_hi = k_lo + first_all.size - 1
    right = np.clip(np.searchsorted(points, fine, side="left"), 1, points.size - 1)
    left = right - 1
    if not (feasible[left].all() and feasible[right].all()):
        return None
    bound = np.maximum(chance[left], chance[right])
    a, m, weight = _band_weights(n, fine, k_lo, k_hi, _NARROW_SDS)
    inside = bound[:, a - k_lo : a - k_lo + m.size]
    above: NDArray[np.float64] = (weight * inside).sum(axis=1) + np.maximum(1.0 - weight.sum(axis=1), 0.0)
    return above


#: Up to this n, the score of every table is computed once per (n, δ) and kept.
_GRID_MAX_N = 400


@lru_cache(maxsize=32)
def _z_grid(n: int, delta: float) -> NDArray[np.float64]:
    """Z of every table: row m (discordant pairs), column b′ (regressions); NaN where b′ > m."""
    m, b = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="ij")
    valid = b <= m
    grid = np.full((n + 1, n + 1), np.nan)
    grid[valid] = _z(b[valid], m[valid] - b[valid], float(n), delta)
    grid.setflags(write=False)
    return grid


def _bisect_first(
    m: NDArray[np.int64], n: int, delta: float, cut: float | NDArray[np.float64], *, strict: bool
) -> NDArray[np.int64]:
    """Per m, the smallest b′ in [0, m + 1] with Z(b′, m − b′) ≥ cut (> cut when strict).

    ``cut`` is one score for every m or one per m.

    The search starts from a bracket of ±4 around the root of the Wald form
    of Z, ``((2b′ − m)/n − δ)/√((m/n − δ²)/n) = cut``, which lies within 3
    of the answer over every table of the tests; a bracket whose ends do not
    hold the answer falls back to all of [0, m + 1].
    """
    mf = m.astype(float)
    var = np.maximum(mf / n - delta * delta, 1e-12) / n
    centre = (mf + n * delta + n * cut * np.sqrt(var)) / 2.0
    lo = np.clip(np.floor(centre) - 4, 0, m + 1).astype(np.int64)
    hi = np.clip(np.ceil(centre) + 4, 0, m + 1).astype(np.int64)
    # The bracket holds the answer when the table just below it is not
    # beyond the cut (or there is none) and its top one is (or is m + 1).
    ends = np.concatenate([lo - 1, hi])
    mm = np.concatenate([m, m])
    cuts = np.broadcast_to(cut, m.shape)
    both = np.concatenate([cuts, cuts])
    z = _z(ends.astype(float), (mm - ends).astype(float), float(n), delta)
    beyond = z > both if strict else z >= both
    below_ok = (lo == 0) | ~beyond[: m.size]
    top_ok = (hi == m + 1) | beyond[m.size :]
    bad = ~(below_ok & top_ok)
    lo = np.where(bad, 0, lo)
    hi = np.where(bad, m + 1, hi)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        z = _z(mid.astype(float), (m - mid).astype(float), float(n), delta)
        above = z > cut if strict else z >= cut
        searching = lo < hi
        hi = np.where(searching & above, mid, hi)
        lo = np.where(searching & ~above, mid + 1, lo)
    return lo


def regression_rejects(b: int, c: int, n: int, delta: float, alpha: float) -> bool:
    """``regression_pvalue(b, c, n, δ) < α`` (exact method), McNemar's test first (it is cheap)."""
    if _tail(b, c, n, 0.0, "exact", 1.0, None, upper=True) >= alpha:
        return False
    return delta <= 0.0 or _tail_below(int(b), int(c), int(n), float(delta), True, alpha)


def noninferiority_rejects(b: int, c: int, n: int, delta: float, alpha: float) -> bool:
    """``noninferiority_pvalue(b, c, n, δ) < α`` (exact method), without refining a clear miss."""
    _check_counts(b, c, n)
    _check_delta(delta)
    if n == 0 or (delta == 0.0 and b + c == 0):
        return False  # p = 1.0: no evidence either way
    if delta == 0.0:
        return _mcnemar_lower(b, c) < alpha
    return _tail_below(int(b), int(c), int(n), float(delta), False, alpha)


def _mcnemar_upper(b: int, c: int) -> float:
    """``P(X ≥ b)`` for ``X ~ Binomial(b + c, ½)``; 1.0 without discordant pairs."""
    if b + c == 0:
        return 1.0
    return _binom_sf(b - 1, b + c, 0.5)


def _mcnemar_lower(b: int, c: int) -> float:
    """``P(X ≤ b)`` for ``X ~ Binomial(b + c, ½)``; 1.0 without discordant pairs."""
    if b + c == 0:
        return 1.0
    return _binom_cdf(b, b + c, 0.5)


def regression_pvalue(
    b: int,
    c: int,
    n: int,
    delta: float,
    *,
    method: Method = "auto",
    deff: float = 1.0,
    df: int | None = None,
    nested: bool = True,
) -> float:
    """One-sided p-value of ``H0: Δ ≤ δ`` against ``H1: Δ > δ`` (candidate worse).

    Exact: at ``δ = 0`` McNemar's exact conditional test, ``P(X ≥ b | b + c,
    ½)``; otherwise the exact unconditional p-value of the score statistic,
    level α at every n (Berger–Boos; see _unconditional_tail). Normal: ``1 − F(Z/√deff)`` with F the
    standard normal, or Student's t with ``df`` degrees of freedom.

    Nested (the gate's p-value): at ``δ > 0`` the larger of the exact
    p-value and McNemar's at 0. McNemar's conditional test is less powerful
    at small n than the unconditional one, so without it (4, 0, 20) was
    REGRESSED at δ = 0.02 and not at 0; with it, REGRESSED at δ implies
    REGRESSED at 0. Between positive margins the exact p-value rises with δ:
    tools/verify_gate.py checks every table up to n = 150 at the margins
    0, 0.5, 1, 2 and 5 points. Raising a p-value keeps the level.
    The normal p-value is monotone in δ already (Z falls as δ rises).

    Args:
        b: Regressions.
        c: Improvements.
        n: Paired cases.
        delta: Margin, in (-1, 1) (the gate uses [0, 1)).
        method: ``"auto"``, ``"exact"`` or ``"normal"`` (see resolve_method).
        deff: Design effect of clustered cases; scales the null variance.
        df: Degrees of freedom of a t reference for the normal method
            (clusters − 1); None for the normal distribution.
        nested: Take the maximum with McNemar's test at 0 (see above).

    Returns:
        The p-value; 1.0 when ``n == 0`` or, at ``δ = 0``, when ``b + c == 0``.
    """
    p = _tail(b, c, n, delta, method, deff, df, upper=True)
    if not nested or delta <= 0.0 or resolve_method(n, method, deff) == "normal":
        return p
    return max(p, _tail(b, c, n, 0.0, method, deff, df, upper=True))


def noninferiority_pvalue(
    b: int,
    c: int,
    n: int,
    delta: float,
    *,
    method: Method = "auto",
    deff: float = 1.0,
    df: int | None = None,
) -> float:
    """One-sided p-value of ``H0: Δ ≥ δ`` against ``H1: Δ < δ`` (non-inferior).

    The mirror of regression_pvalue (not nested): exact ``P(Z ≤ Z_obs)`` at
    the restricted estimate, McNemar's ``P(X ≤ b | b + c, ½)`` at ``δ = 0``,
    or ``F(Z/√deff)``.

    Returns:
        The p-value; 1.0 when ``n == 0`` or, at ``δ = 0``, when ``b + c == 0``.
    """
    return _tail(b, c, n, delta, method, deff, df, upper=False)


def _reference_sf(z: float, df: int | None) -> float:
    """Upper tail of the standard normal, or of Student's t with ``df`` degrees of freedom."""
    return float(special.ndtr(-z) if df is None else special.stdtr(df, -z))


def _reference_isf(alpha: float, df: int | None) -> float:
    """The point with upper tail ``alpha`` (normal, or t with ``df`` degrees of freedom)."""
    return float(-special.ndtri(alpha) if df is None else -special.stdtrit(df, alpha))


def _binom_sf(k: int, n: int, p: float) -> float:
    """``P(X > k)`` for ``X ~ Binomial(n, p)``."""
    if k < 0:
        return 1.0
    if k >= n:
        return 0.0
    return float(special.bdtrc(k, n, p))


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X ≤ k)`` for ``X ~ Binomial(n, p)``."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(special.bdtr(k, n, p))


def _brentq(f: Callable[[float], float], lo: float, hi: float, xtol: float) -> float:
    from scipy import optimize

    return float(optimize.brentq(f, lo, hi, xtol=xtol))


def _tail(
    b: int, c: int, n: int, delta: float, method: Method, deff: float, df: int | None, *, upper: bool
) -> float:
    _check_counts(b, c, n)
    _check_delta(delta)
    resolved = resolve_method(n, method, deff)
    if df is not None and df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if n == 0:
        return 1.0
    if delta == 0.0 and b + c == 0:
        # The conditional distribution is degenerate: no evidence either way.
        return 1.0
    if resolved == "normal":
        z = score_z(b, c, n, delta) / math.sqrt(deff)
        return _reference_sf(z if upper else -z, df)
    if delta == 0.0:
        return _mcnemar_upper(b, c) if upper else _mcnemar_lower(b, c)
    return _unconditional_tail(int(b), int(c), int(n), float(delta), upper)


def improvement_pvalue(
    b: int, c: int, n: int, *, method: Method = "auto", deff: float = 1.0, df: int | None = None
) -> float:
    """One-sided p-value that the candidate is better (``H1: Δ < 0``).

    Exact: McNemar's ``P(X ≥ c | b + c, ½)``; normal: ``F(Z(0)/√deff)``.

    Returns:
        The p-value; 1.0 when ``b + c == 0``.
    """
    return _tail(b, c, n, 0.0, method, deff, df, upper=False)


# --------------------------------------------------------------------------
# every table at once: the rejection region and its probability


def _pvalues_of(
    n: int, delta: float, b: NDArray[np.int64], c: NDArray[np.int64], upper: bool
) -> NDArray[np.float64]:
    """_unconditional_tail of many tables of n cases at once, sharing the score grid.

    For exact sums over every table (regression_region); n up to a few hundred.
    """
    _check_delta(delta)
    if n > _GRID_MAX_N:
        raise ValueError(f"tables of n <= {_GRID_MAX_N} cases only, got {n}")
    z = _z(b.astype(float), c.astype(float), float(n), delta)
    slack = _TIE_TOL * np.maximum(1.0, np.abs(z))
    cut = z - slack if upper else z + slack
    grid = _z_grid(n, delta)
    # first[t, m]: the first b′ of row m beyond table t's cut (rows rise in b′).
    first = np.empty((b.size, n + 1), dtype=np.int64)
    for m in range(n + 1):
        first[:, m] = np.searchsorted(grid[m, : m + 1], cut, side="left" if upper else "right")
    p = np.empty(b.size)
    for i in range(b.size):
        coarse = psi_points(int(b[i]), int(c[i]), n, delta)
        tails = _tails_full(n, delta, upper, first[i], coarse)
        fine = _tails_full(n, delta, upper, first[i], _refine(coarse, tails))
        p[i] = min(max(float(tails.max()), float(fine.max())) + BB_GAMMA, 1.0)
    return p


def _tails_full(
    n: int, delta: float, upper: bool, first: NDArray[np.int64], psis: NDArray[np.float64]
) -> NDArray[np.float64]:
    """_tails_at with the thresholds of every m in 0..n given."""
    p10, feasible = _null_rates(psis, delta, upper)
    out = np.zeros(psis.size)
    where = np.nonzero(feasible)[0]
    if where.size == 0:
        return out
    m = np.arange(n + 1)
    out[where] = _weighted_tails(n, m, first, psis[where], p10[where], upper)
    return out


def _mcnemar_table(n: int) -> NDArray[np.float64]:
    """McNemar's exact upper p-value of every table of n cases (1.0 at b = c = 0)."""
    bs, cs = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    with np.errstate(invalid="ignore"):
        p = np.where(bs + cs > 0, special.bdtrc(bs - 1, bs + cs, 0.5), 1.0)
    return np.where(bs + cs <= n, p, np.nan)


def regression_region(n: int, delta: float, alpha: float) -> NDArray[np.bool_]:
    """The tables of n cases that the gate's nested test calls REGRESSED at margin δ.

    Entry ``[b, c]`` is ``regression_pvalue(b, c, n, δ) < α``: McNemar's test
    at 0 and the exact test at δ both reject. The exact one is only computed
    for the tables McNemar's rejects.
    """
    _check_alpha(alpha)
    if delta < 0.0:
        raise ValueError("regression_region takes a margin >= 0")
    reject = _mcnemar_table(n) < alpha
    b, c = np.nonzero(reject)
    if delta > 0.0 and b.size:
        reject[b, c] = _pvalues_of(n, delta, b, c, upper=True) < alpha
    return reject


def pass_region(n: int, delta: float, alpha: float) -> NDArray[np.bool_]:
    """The tables of n cases whose exact upper bound lies below the margin δ (the gate's PASS test).

    Entry ``[b, c]`` is ``upper_bound(b, c, n, α) < δ``. A table whose drop
    ``(b − c)/n`` is at least δ has a score of at least 0 at δ and is never
    shown below it (no such table up to n = 30 at δ = 0.02, 0.05, 0.1 has a
    bound below δ), so only the others are computed: a few hundred bounds,
    for exact sums of the size of PASS.
    """
    _check_alpha(alpha)
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"pass_region takes a margin in [0, 1), got {delta}")
    region = np.zeros((n + 1, n + 1), dtype=bool)
    for b in range(n + 1):
        for c in range(n + 1 - b):
            if b - c < delta * n:
                region[b, c] = exact_upper_bound(b, c, n, float(alpha)) < delta
    return region


def region_probability(region: NDArray[np.bool_], p10: float, p01: float) -> float:
    """``P((b, c) ∈ region)`` for n cases with regression and improvement rates p10, p01."""
    n = region.shape[0] - 1
    if not (p10 >= 0.0 and p01 >= 0.0 and p10 + p01 <= 1.0 + 1e-12):
        raise ValueError(f"rates must be >= 0 and sum to at most 1, got {p10}, {p01}")
    bs, cs = np.meshgrid(np.arange(n + 1.0), np.arange(n + 1.0), indexing="ij")
    valid = (bs + cs <= n) & region
    b, c = bs[valid], cs[valid]
    rest = n - b - c
    logp = (
        special.gammaln(n + 1.0)
        - special.gammaln(b + 1.0)
        - special.gammaln(c + 1.0)
        - special.gammaln(rest + 1.0)
        + special.xlogy(b, p10)
        + special.xlogy(c, p01)
        + special.xlogy(rest, max(1.0 - p10 - p01, 0.0))
    )
    return float(np.exp(logp).sum())


# --------------------------------------------------------------------------
# confidence bounds


def score_upper_bound(
    b: int, c: int, n: int, alpha: float, *, deff: float = 1.0, df: int | None = None
) -> float:
    """One-sided ``1 − α`` upper score bound of Δ: the δ with ``Z(δ)/√deff = −z₁₋α``.

    ``z₁₋α`` is the normal quantile, or Student's t with ``df`` degrees of freedom.

    Found with brentq between ``Δ̂`` (where Z = 0) and just below 1.

    Returns:
        The bound; 1.0 when ``n == 0`` or no δ < 1 reaches the critical value.
    """
    _check_counts(b, c, n)
    _check_alpha(alpha)
    resolve_method(n, "normal", deff)
    if n == 0:
        return 1.0
    crit = _reference_isf(alpha, df) * math.sqrt(deff)
    bb = np.array([b], dtype=float)
    cc = np.array([c], dtype=float)

    def gap(delta: float) -> float:
        return float(_z(bb, cc, float(n), delta)[0]) + crit

    lo, hi = (b - c) / n, 1.0 - _EDGE
    if lo >= hi or gap(hi) >= 0.0:
        return 1.0
    return float(_brentq(gap, lo, hi, xtol=1e-12))


def score_lower_bound(
    b: int, c: int, n: int, alpha: float, *, deff: float = 1.0, df: int | None = None
) -> float:
    """One-sided ``1 − α`` lower score bound of Δ: the δ with ``Z(δ)/√deff = z₁₋α``.

    Returns:
        The bound; −1.0 when ``n == 0`` or no δ > −1 reaches the critical value.
    """
    _check_counts(b, c, n)
    _check_alpha(alpha)
    resolve_method(n, "normal", deff)
    if n == 0:
        return -1.0
    crit = _reference_isf(alpha, df) * math.sqrt(deff)
    bb = np.array([b], dtype=float)
    cc = np.array([c], dtype=float)

    def gap(delta: float) -> float:
        return float(_z(bb, cc, float(n), delta)[0]) - crit

    lo, hi = -1.0 + _EDGE, (b - c) / n
    if lo >= hi or gap(lo) <= 0.0:
        return -1.0
    return float(_brentq(gap, lo, hi, xtol=1e-12))


def _exact_crossing(gap: Callable[[float], float], start: float, step: float) -> float:
    """Brackets the sign change of a falling ``gap`` around ``start``, then brentq.

    The step doubles while searching, so a poor start costs a few evaluations.

    Returns:
        The crossing; 1.0 (−1.0) when ``gap`` stays non-negative (negative)
        up to 1 − 1e-9 (down to −1 + 1e-9).
    """
    top, bottom = 1.0 - 1e-9, -1.0 + 1e-9
    lo = hi = start = min(max(start, bottom), top)
    if gap(start) >= 0.0:
        while True:
            if hi >= top:
                return 1.0
            hi = min(hi + step, top)
            step *= 2.0
            if gap(hi) < 0.0:
                break
            lo = hi
    else:
        while True:
            if lo <= bottom:
                return -1.0
            lo = max(lo - step, bottom)
            step *= 2.0
            if gap(lo) >= 0.0:
                break
            hi = lo
    return float(_brentq(gap, lo, hi, xtol=1e-9))


@lru_cache(maxsize=4096)
def exact_upper_bound(b: int, c: int, n: int, alpha: float) -> float:
    """Upper ``1 − α`` bound of Δ that inverts the exact non-inferiority test.

    The bound is where ``noninferiority_pvalue(b, c, n, δ, method="exact")``,
    as a function of δ, falls below α: the crossing is bracketed outward from
    the score bound and refined with brentq. The exact unconditional p-value
    need not be monotone in δ, so the set it does not reject need not be an
    interval: on rare tables it may dip below α by a hair just inside the
    bound. Apart from those, ``noninferiority_pvalue(b, c, n, t) < α``
    exactly when ``t > bound`` (checked on a grid in the tests). At ``δ = 0`` the test is
    McNemar's: when it does not reject ``Δ ≥ 0`` but the unconditional
    crossing lies below 0, 0 belongs to the confidence set and the bound is
    0.0.

    Returns:
        The bound; 1.0 when ``n == 0`` or no δ < 1 is rejected.
    """
    _check_counts(b, c, n)
    _check_alpha(alpha)
    if n == 0:
        return 1.0

    def gap(delta: float) -> float:
        return _unconditional_tail(b, c, n, delta, False) - alpha

    # Exact and score bounds differ by a fraction of a standard error.
    step = max(0.5 * paired_se(b, c, n), 1e-3)
    bound = _exact_crossing(gap, score_upper_bound(b, c, n, alpha), step)
    if bound < 0.0 and _mcnemar_lower(b, c) >= alpha:
        return 0.0
    return bound


def upper_bound(
    b: int,
    c: int,
    n: int,
    alpha: float,
    *,
    method: Method = "auto",
    deff: float = 1.0,
    df: int | None = None,
) -> float:
    """Upper ``1 − α`` bound of Δ that agrees with noninferiority_pvalue.

    Same ``method``/``deff`` resolution as the p-values: exact_upper_bound for
    the exact test, score_upper_bound (with ``deff``) for the normal one. Then
    ``noninferiority_pvalue(..., t) < α`` exactly when ``t > upper_bound``
    (for the exact test, up to the rare dips described in exact_upper_bound).
    """
    _check_counts(b, c, n)
    if resolve_method(n, method, deff) == "exact":
        return exact_upper_bound(int(b), int(c), int(n), float(alpha))
    return score_upper_bound(b, c, n, alpha, deff=deff, df=df)


# --------------------------------------------------------------------------
# clusters


def design_effect(diffs: Sequence[float], clusters: Sequence[Hashable | None]) -> float:
    """Design effect of clustered cases for the mean paired difference.

    Following Miller (2024), "Adding Error Bars to Evals: A Statistical
    Approach to Language Model Evaluations" (arXiv:2411.00640): with
    residuals ``e_i = d_i − d̄`` of ``d_i = r_i − q_i``, the clustered variance
    of the mean is ``K/(K−1) · Σ_k (Σ_{i∈k} e_i)² / n²`` over K clusters. It
    is divided by the plain variance with the matching small-sample factor,
    ``n/(n−1) · Σ_i e_i² / n²``, so that all-singleton clusters give exactly 1.

    Args:
        diffs: ``d_i`` per case, in {-1, 0, 1} for pass/fail outcomes.
        clusters: Cluster id per case; ``None`` makes the case its own cluster.

    Returns:
        The ratio, never below 1.0; 1.0 when the plain variance is 0, there
        are fewer than 2 clusters (no between-cluster variance to estimate:
        independence is assumed) or every cluster is a singleton.

    Raises:
        ValueError: ``diffs`` and ``clusters`` differ in length.
    """
    if len(diffs) != len(clusters):
        raise ValueError(f"{len(diffs)} diffs but {len(clusters)} cluster ids")
    n = len(diffs)
    if n < 2:
        return 1.0
    codes: dict[Hashable, int] = {}
    labels = np.empty(n, dtype=np.int64)
    next_code = 0
    for i, cluster in enumerate(clusters):
        if cluster is None:
            labels[i] = next_code
            next_code += 1
            continue
        code = codes.get(cluster)
        if code is None:
            code = codes[cluster] = next_code
            next_code += 1
        labels[i] = code
    k = next_code
    d = np.asarray(diffs, dtype=float)
    if k < 2 or k == n or np.all(d == d[0]):
        return 1.0
    resid = d - d.mean()
    plain = float(np.dot(resid, resid))
    sums = np.bincount(labels, weights=resid, minlength=k)
    clustered = float(np.dot(sums, sums))
    ratio = (k / (k - 1) * clustered) / (n / (n - 1) * plain)
    return max(1.0, ratio)


# --------------------------------------------------------------------------
# multiplicity


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    The k-th smallest p (1-based) becomes ``max_{j≤k} min(1, (m − j + 1)·p_(j))``.
    Rejecting where the adjusted p is below α controls the family-wise error.

    Raises:
        ValueError: A p-value is NaN or outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError(f"p-values must lie in [0, 1], got {list(pvalues)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum((m - np.arange(m)) * p[order], 1.0)
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in adjusted]
