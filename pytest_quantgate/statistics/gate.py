"""Verdicts per slice from paired pass/fail outcomes (DESIGN.md §4).

For one candidate, every slice gets one of four verdicts, checked in order:

1. ``REGRESSED``: the drop exceeds the slice's tolerance δ, i.e. ``H0: Δ ≤ δ``
   is rejected at level α after Holm's correction across the candidate's
   slices and its ALL row. The test is nested in δ (stats.regression_pvalue).
2. ``IMPROVED``: the candidate is significantly better (``H1: Δ < 0``),
   Holm-corrected likewise. Information, never a failure.
3. ``PASS``: non-inferior, the one-sided ``1 − α`` upper bound of Δ lies
   below δ.
4. ``INCONCLUSIVE``: none of these; the row carries the minimum detectable
   drop and the number of cases a non-inferiority claim would need.

A slice whose checks returned graded scores in [0, 1] is gated on the mean
paired score difference by the same rules, margin, clusters and Holm family:
its tests run on the pass/fail tables of :func:`graded_counts`. Scores that
are all 0 or 1 are pass/fail outcomes and take the pass/fail path unchanged.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ALL",
    "GateSettings",
    "SliceOutcomes",
    "SliceResult",
    "Verdict",
    "evaluate",
    "graded_counts",
    "overall_verdict",
]


#: The name of the row (and pseudo-slice) of all cases together; no slice may take it.
ALL = "ALL"


class Verdict(str, enum.Enum):
    """Outcome of the gate for one slice (or for a whole candidate)."""

    REGRESSED = "REGRESSED"
    PASS = "PASS"
    INCONCLUSIVE = "INCONCLUSIVE"
    IMPROVED = "IMPROVED"

    def __str__(self) -> str:
        # f-strings print the bare value on every Python version.
        return self.value

    def fails(self, *, strict: bool) -> bool:
        """Whether a row with this verdict fails the run (INCONCLUSIVE only when strict)."""
        return self is Verdict.REGRESSED or (strict and self is Verdict.INCONCLUSIVE)


@dataclass(frozen=True)
class SliceOutcomes:
    """Paired outcomes of one slice for one candidate.

    Attributes:
        name: Slice name.
        reference: Per case, whether the reference passed.
        candidate: Per case, in the same order, whether the candidate passed.
        clusters: Optional cluster id per case (cases from one template or
            document); ``None`` entries are singletons.
        tolerance: Margin δ of this slice; ``None`` uses the gate default.
        reference_scores: Optional graded score in [0, 1] per case for the
            reference (a check that returned a number); a pass/fail case
            scores 1.0 or 0.0. With both score tuples given and any score
            strictly between 0 and 1, the slice is gated on the mean paired
            score difference (see :func:`graded_counts`); otherwise on the
            pass/fail outcomes, unchanged.
        candidate_scores: The same for the candidate.
    """

    name: str
    reference: tuple[bool, ...]
    candidate: tuple[bool, ...]
    clusters: tuple[str | None, ...] | None = None
    tolerance: float | None = None
    reference_scores: tuple[float, ...] | None = None
    candidate_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.reference) != len(self.candidate):
            raise ValueError(
                f"slice {self.name!r}: {len(self.reference)} reference outcomes "
                f"but {len(self.candidate)} candidate outcomes"
            )
        if self.clusters is not None and len(self.clusters) != len(self.reference):
            raise ValueError(
                f"slice {self.name!r}: {len(self.clusters)} cluster ids for {len(self.reference)} cases"
            )
        if self.tolerance is not None and not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"slice {self.name!r}: tolerance must lie in [0, 1)")
        if (self.reference_scores is None) != (self.candidate_scores is None):
            raise ValueError(f"slice {self.name!r}: scores must be given for both models or neither")
        for scores in (self.reference_scores, self.candidate_scores):
            if scores is None:
                continue
            if len(scores) != len(self.reference):
                raise ValueError(f"slice {self.name!r}: {len(scores)} scores for {len(self.reference)} cases")
            bad = next((x for x in scores if not 0.0 <= x <= 1.0), None)
            if bad is not None:
                raise ValueError(f"slice {self.name!r}: a score must lie in [0, 1], got {bad!r}")

    @property
    def graded(self) -> bool:
        """Whether the slice is gated on scores: both given, and one strictly between 0 and 1."""
        if self.reference_scores is None or self.candidate_scores is None:
            return False
        return any(0.0 < x < 1.0 for x in (*self.reference_scores, *self.candidate_scores))


@dataclass(frozen=True)
class GateSettings:
    """Level, default margin and target power of the gate.

    Attributes:
        alpha: One-sided level of every test (family-wise across slices for
            REGRESSED and IMPROVED).
        tolerance: Default margin δ, as a fraction of accuracy.
        power: Power used for the minimum detectable drop and cases needed.
        plan: Compute those two for INCONCLUSIVE rows (exact power: up to
            about a second a row); False leaves them None.
    """

    alpha: float = 0.05
    tolerance: float = 0.02
    power: float = 0.8
    plan: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance must lie in [0, 1), got {self.tolerance}")
        if not 0.5 <= self.power < 1.0:
            raise ValueError(f"power must lie in [0.5, 1), got {self.power}")


@dataclass(frozen=True)
class SliceResult:
    """One row of the gate: a slice of one candidate, or the ALL row.

    Fractions, not percentage points. NaN marks a statistic that an empty
    slice does not have.

    Attributes:
        slice: Slice name (:data:`ALL` for the total row).
        n: Paired cases.
        ref_accuracy: Reference pass rate.
        cand_accuracy: Candidate pass rate.
        drop: ``(b − c)/n``; positive means the candidate is worse.
        se: Paired standard error of the drop, times √design_effect.
        upper: One-sided ``1 − α`` upper bound of the drop.
        regressions: b, cases the reference passes and the candidate fails.
        improvements: c, the reverse.
        p_value: Raw one-sided p-value of ``H0: drop ≤ tolerance``.
        p_adjusted: p_value after Holm across the candidate's slices and
            its ALL row.
        tolerance: Margin δ used for this row.
        alpha: Level used for this row.
        design_effect: Variance inflation from clusters (1.0 without).
        verdict: The verdict.
        mdd: The smallest true drop the gate flags REGRESSED at this slice's
            margin with at least the gate's power, at this n and discordance
            (power.detectable_drop: exact power at level α/K, K the Holm
            family); inf when no drop is; INCONCLUSIVE only.
        n_needed: Cases the slice needs for a verdict with at least the
            gate's power, taking the observed drop (floored at 0) and
            discordance as the truth (power.cases_needed, exact power), more
            than n; None if no n decides it, e.g. a zero margin with no
            observed drop. INCONCLUSIVE only.
        is_total: True for the ALL row.
        n_needed_for: What ``n_needed`` cases would settle: ``"PASS"`` when
            the assumed drop is below the tolerance, ``"REGRESSED"`` (the
            drop confirmed) when above; None with ``n_needed``.
        graded: The slice was gated on graded scores: ``ref_accuracy`` and
            ``cand_accuracy`` are mean scores, ``drop`` their difference,
            ``regressions`` and ``improvements`` the cases the candidate
            scored lower and higher on. Serialised only when true.
    """

    slice: str
    n: int
    ref_accuracy: float
    cand_accuracy: float
    drop: float
    se: float
    upper: float
    regressions: int
    improvements: int
    p_value: float
    p_adjusted: float
    tolerance: float
    alpha: float
    design_effect: float
    verdict: Verdict
    mdd: float | None
    n_needed: int | None
    is_total: bool = False
    n_needed_for: str | None = None
    graded: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Returns the row as JSON-safe builtins: NaN and ±inf become None.

        ``graded`` appears only on graded rows, so pass/fail reports keep their keys.
        """
        out: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "graded" and not value:
                continue
            if isinstance(value, Verdict):
                out[field.name] = value.value
            elif isinstance(value, bool):
                out[field.name] = value
            elif isinstance(value, int):
                out[field.name] = int(value)
            elif isinstance(value, float):
                out[field.name] = float(value) if math.isfinite(value) else None
            else:
                out[field.name] = value
        return out


@dataclass(frozen=True)
class _Tested:
    """Statistics of one slice before the multiplicity correction."""

    name: str
    n: int
    b: int
    c: int
    ref_accuracy: float
    cand_accuracy: float
    tolerance: float
    deff: float
    se: float
    upper: float
    p_regression: float
    p_improvement: float
    graded: bool = False
    drop: float = math.nan  # the mean paired difference
    plan_b: int = 0  # the table PASS is tested on (b and c but for graded slices)
    plan_c: int = 0


def graded_counts(reference: Sequence[float], candidate: Sequence[float]) -> tuple[int, int, int, int]:
    """The pass/fail tables a graded slice is tested on, rounded against each verdict.

    With ``d_i = r_i − q_i`` in [−1, 1], the soft counts ``b̃ = Σ max(d_i, 0)``
    and ``c̃ = Σ max(−d_i, 0)`` give the mean difference ``(b̃ − c̃)/n``
    exactly. A difference in [−1, 1] is a contraction of one in {−1, 0, 1}
    with the same mean (each score difference could be the average of a
    full regression or improvement and none), and the tests built for
    pass/fail pairs take that extreme, highest-variance case, so they are
    conservative for graded scores (tools/verify_graded.py measures their
    size). The soft counts are rounded so that each test errs toward its
    null: fewer regressions and more improvements for REGRESSED
    (``⌊b̃⌋, ⌈c̃⌉``), the reverse for PASS and IMPROVED (``⌈b̃⌉, ⌊c̃⌋``).
    Scores of 0 and 1 only give the plain counts both ways.

    Returns:
        ``(b, c)`` for REGRESSED, then ``(b, c)`` for PASS and IMPROVED.
    """
    n = len(reference)
    b_soft = math.fsum(max(r - q, 0.0) for r, q in zip(reference, candidate, strict=True))
    c_soft = math.fsum(max(q - r, 0.0) for r, q in zip(reference, candidate, strict=True))
    # Scores are often fractions like 1/3: a sum a rounding error away from
    # an integer is that integer.
    b_lo, b_hi = math.floor(b_soft + 1e-9), math.ceil(b_soft - 1e-9)
    c_lo, c_hi = math.floor(c_soft + 1e-9), math.ceil(c_soft - 1e-9)
    b_reg = b_lo
    c_reg = min(c_hi, n - b_reg)
    b_pass = min(b_hi, n)
    c_pass = min(c_lo, n - b_pass)
    return b_reg, c_reg, b_pass, c_pass


def _test(outcomes: SliceOutcomes, settings: GateSettings) -> _Tested:
    from . import stats

    tolerance = settings.tolerance if outcomes.tolerance is None else outcomes.tolerance
    n = len(outcomes.reference)
    if n == 0:
        nan = math.nan
        return _Tested(outcomes.name, 0, 0, 0, nan, nan, tolerance, nan, nan, nan, nan, nan)
    ref: list[float] = [float(bool(r)) for r in outcomes.reference]
    cand: list[float] = [float(bool(q)) for q in outcomes.candidate]
    graded = outcomes.graded
    if graded and outcomes.reference_scores is not None and outcomes.candidate_scores is not None:
        ref = [float(x) for x in outcomes.reference_scores]
        cand = [float(x) for x in outcomes.candidate_scores]
    b_reg, c_reg, b, c = graded_counts(ref, cand)
    deff = 1.0
    df: int | None = None
    method: stats.Method = "exact"
    if outcomes.clusters is not None:
        diffs = [r - q for r, q in zip(ref, cand, strict=True)]
        deff = stats.design_effect(diffs, outcomes.clusters)
        # Few clusters estimate the clustered variance poorly: refer the
        # scaled score to Student's t with G − 1 degrees of freedom.
        named = {cl for cl in outcomes.clusters if cl is not None}
        groups = len(named) + sum(cl is None for cl in outcomes.clusters)
        if 2 <= groups < n:
            # Every clustered slice takes the t reference, also when the
            # estimated design effect is floored at 1: the exact tests assume
            # independent cases, and their bound need not invert their
            # p-value (at (7, 9, 100, δ = 0.05) with 20 clusters of 5 the
            # exact bound was 0.0503 while the exact p-value was 0.0491).
            # The bound and the p-values then come from one statistic,
            # Z(δ)/√deff against t with G − 1 degrees of freedom.
            method, df = "normal", groups - 1
    # One method for all three tests and the bound, so that they agree:
    # exact for independent slices, the score test scaled by the design
    # effect for clustered ones.
    alpha = settings.alpha
    if graded:
        # Cases scored lower and higher, for the report; the tests use the rounded soft counts.
        shown_b = sum(r > q for r, q in zip(ref, cand, strict=True))
        shown_c = sum(q > r for r, q in zip(ref, cand, strict=True))
    else:
        shown_b, shown_c = b, c
    return _Tested(
        name=outcomes.name,
        n=n,
        b=shown_b,
        c=shown_c,
        ref_accuracy=math.fsum(ref) / n,
        cand_accuracy=math.fsum(cand) / n,
        tolerance=tolerance,
        deff=deff,
        se=_se(ref, cand, b, c, n, graded) * math.sqrt(deff),
        upper=stats.upper_bound(b, c, n, alpha, method=method, deff=deff, df=df),
        p_regression=stats.regression_pvalue(b_reg, c_reg, n, tolerance, method=method, deff=deff, df=df),
        p_improvement=stats.improvement_pvalue(b, c, n, method=method, deff=deff, df=df),
        graded=graded,
        drop=(math.fsum(ref) - math.fsum(cand)) / n,
        plan_b=b,
        plan_c=c,
    )


def _se(ref: Sequence[float], cand: Sequence[float], b: int, c: int, n: int, graded: bool) -> float:
    """Standard error of the mean paired difference: Wald for pass/fail, the sample one for scores."""
    from . import stats

    if not graded:
        return stats.paired_se(b, c, n)
    diffs = [r - q for r, q in zip(ref, cand, strict=True)]
    mean = math.fsum(diffs) / n
    return math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / n / n)


def _row(
    tested: _Tested,
    p_regression: float,
    p_improvement: float,
    settings: GateSettings,
    *,
    is_total: bool,
    family_size: int = 1,
) -> SliceResult:
    """Applies the verdict rules to one slice, given its (adjusted) p-values."""
    from . import power

    alpha = settings.alpha
    name = ALL if is_total else tested.name
    if tested.n == 0:
        nan = math.nan
        return SliceResult(
            slice=name,
            n=0,
            ref_accuracy=nan,
            cand_accuracy=nan,
            drop=nan,
            se=nan,
            upper=nan,
            regressions=0,
            improvements=0,
            p_value=nan,
            p_adjusted=nan,
            tolerance=tested.tolerance,
            alpha=alpha,
            design_effect=nan,
            verdict=Verdict.INCONCLUSIVE,
            mdd=nan,
            n_needed=None,
            is_total=is_total,
        )
    mdd: float | None = None
    n_needed: int | None = None
    n_needed_for: str | None = None
    if p_regression < alpha:
        verdict = Verdict.REGRESSED
    elif p_improvement < alpha:
        verdict = Verdict.IMPROVED
    elif tested.upper < tested.tolerance:
        # The bound inverts the non-inferiority test, so this is its p-value
        # at the tolerance being < α. Deciding on the bound rather than the
        # p-value only matters where the exact p-value dips below α inside
        # the confidence set (stats.exact_upper_bound); the bound keeps the
        # verdict nested across margins and equal to what the report shows.
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    if verdict is Verdict.INCONCLUSIVE and settings.plan:
        # Power by exact computation against the tests the gate runs, at the
        # slice's own margin. REGRESSED is Holm-corrected: it is certain at a
        # raw p below α/K, so its power is computed at that level (a lower
        # bound on the chance); PASS needs no correction (Berger 1982).
        # Clustered cases count as n / design effect independent ones.
        n_eff = max(1, round(tested.n / tested.deff))
        psi = (tested.plan_b + tested.plan_c) / tested.n
        strict_alpha = alpha / max(family_size, 1)
        mdd = power.detectable_drop(n_eff, psi, tested.tolerance, strict_alpha, settings.power)
        # Plan with the observed drop as the truth, but never bank on an
        # observed gain: below the margin that is the n to show non-inferiority
        # with no true drop, above it the n to confirm the regression.
        assumed = max((tested.plan_b - tested.plan_c) / tested.n, 0.0)
        confirms = assumed > tested.tolerance
        needed = power.cases_needed(
            assumed,
            psi,
            tested.tolerance,
            strict_alpha if confirms else alpha,
            settings.power,
            at_least=n_eff + 1,
        )
        if needed is not None:
            n_needed = math.ceil(needed * tested.deff)
            n_needed_for = Verdict.REGRESSED.value if confirms else Verdict.PASS.value
    return SliceResult(
        slice=name,
        n=tested.n,
        ref_accuracy=tested.ref_accuracy,
        cand_accuracy=tested.cand_accuracy,
        drop=tested.drop,
        se=tested.se,
        upper=tested.upper,
        regressions=tested.b,
        improvements=tested.c,
        p_value=tested.p_regression,
        p_adjusted=p_regression,
        tolerance=tested.tolerance,
        alpha=alpha,
        design_effect=tested.deff,
        verdict=verdict,
        mdd=mdd,
        n_needed=n_needed,
        is_total=is_total,
        n_needed_for=n_needed_for,
        graded=tested.graded,
    )


def evaluate(
    slices: Sequence[SliceOutcomes],
    total: SliceOutcomes | None,
    settings: GateSettings,
) -> list[SliceResult]:
    """Gives every slice of one candidate its verdict.

    Holm's correction runs over the non-empty ``slices`` and the ``total``
    row together (a slice holding every case at the total's margin counts
    once): the candidate fails with probability at most α when no row's
    true drop exceeds its margin. Empty slices are INCONCLUSIVE with NaN
    statistics and do not enlarge the family.

    PASS needs no correction across slices: the candidate as a whole passes
    only when every slice does, an intersection–union test, which is level α
    without adjustment (Berger 1982).

    Args:
        slices: Per-slice outcomes, reported in this order.
        total: Outcomes of all cases together, or None for no ALL row.
        settings: Level, default tolerance and power.

    Returns:
        One row per slice, then the ALL row when ``total`` is given.
    """
    from . import stats

    tested = [_test(outcomes, settings) for outcomes in slices]
    if total is not None:
        tested.append(_test(total, settings))
    # The Holm family: every non-empty row, the ALL row included, so that a
    # candidate with no drop beyond the tolerance anywhere fails the gate
    # with probability at most α. A slice that holds every case at the ALL
    # row's margin is the same hypothesis: it is counted once.
    key = list(range(len(tested)))
    if total is not None:
        whole = tested[-1]
        twin = next(
            (i for i, t in enumerate(tested[:-1]) if t.n == whole.n and t.tolerance == whole.tolerance),
            None,
        )
        if twin is not None:
            key[-1] = twin
    family = sorted({key[i] for i, t in enumerate(tested) if t.n > 0})
    adj_regression = dict(zip(family, stats.holm([tested[i].p_regression for i in family]), strict=True))
    adj_improvement = dict(zip(family, stats.holm([tested[i].p_improvement for i in family]), strict=True))
    last = len(tested) - 1
    return [
        _row(
            t,
            adj_regression.get(key[i], math.nan),
            adj_improvement.get(key[i], math.nan),
            settings,
            is_total=total is not None and i == last,
            family_size=len(family),
        )
        for i, t in enumerate(tested)
    ]


def overall_verdict(results: Sequence[SliceResult]) -> Verdict:
    """Folds a candidate's rows into one verdict.

    REGRESSED if any row regressed; else INCONCLUSIVE if any row is
    inconclusive (or there are no rows); else IMPROVED if the ALL row
    improved (every row, when there is no ALL row); else PASS.
    """
    if not results:
        return Verdict.INCONCLUSIVE
    verdicts = [r.verdict for r in results]
    if Verdict.REGRESSED in verdicts:
        return Verdict.REGRESSED
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    totals = [r for r in results if r.is_total]
    deciding = totals if totals else list(results)
    if all(r.verdict is Verdict.IMPROVED for r in deciding):
        return Verdict.IMPROVED
    return Verdict.PASS
