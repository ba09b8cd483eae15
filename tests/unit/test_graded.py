"""Graded scores: the check's number, the slice's soft counts, and the level of the graded gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_quantgate.core.records import CheckResult, ModelOutcome, graded_score, run_check
from pytest_quantgate.statistics import stats
from pytest_quantgate.statistics.gate import GateSettings, SliceOutcomes, Verdict, evaluate, graded_counts

ALPHA = 0.05

# --------------------------------------------------------------------------
# the check's return value


@pytest.mark.parametrize(
    ("value", "score"),
    [
        (0.5, 0.5),
        (np.float64(0.25), 0.25),
        (1, 1.0),
        (0, 0.0),
        (None, None),
        (True, None),
        (np.bool_(False), None),
    ],
)
def test_numbers_in_zero_one_are_scores(value: object, score: float | None) -> None:
    assert graded_score(value) == (score, None)


@pytest.mark.parametrize("value", [2, -0.1, 1.0000001, math.nan, math.inf])
def test_numbers_outside_are_a_mistake_named_in_one_line(value: float) -> None:
    score, why = graded_score(value)
    assert score is None
    assert why == f"the check returned {value!r}: a graded score must be a number in [0, 1]"


def test_run_check_carries_the_score() -> None:
    graded = run_check(lambda: 2 / 3, {})
    assert isinstance(graded, CheckResult)
    assert tuple(graded) == ("fail", "graded score 0.666667") and graded.score == pytest.approx(2 / 3)
    full = run_check(lambda: 1.0, {})
    assert tuple(full) == ("pass", None) and full.score == 1.0
    plain = run_check(lambda: None, {})
    assert tuple(plain) == ("pass", None) and plain.score is None
    assert tuple(run_check(lambda: False, {})) == ("pass", None)  # a bool is no score, as before
    outcome, message = run_check(lambda: math.nan, {})
    assert outcome == "error" and message is not None and "nan" in message


def test_a_score_travels_with_the_outcome_and_only_when_given() -> None:
    scored = ModelOutcome("fail", "x", "graded score 0.5", score=0.5)
    assert ModelOutcome.from_dict(scored.to_dict()) == scored
    assert "score" not in ModelOutcome("pass", "x").to_dict()


# --------------------------------------------------------------------------
# the soft counts


def test_graded_counts_round_toward_each_null() -> None:
    ref = [1.0, 0.5, 1.0, 0.0, 0.25]
    cand = [0.5, 0.5, 0.0, 0.5, 0.0]
    # d = 0.5, 0, 1, -0.5, 0.25: b̃ = 1.75, c̃ = 0.5
    assert graded_counts(ref, cand) == (1, 1, 2, 0)


def test_graded_counts_of_pass_fail_scores_are_the_plain_counts() -> None:
    ref = [1.0, 1.0, 0.0, 0.0, 1.0]
    cand = [0.0, 1.0, 1.0, 0.0, 0.0]
    assert graded_counts(ref, cand) == (2, 1, 2, 1)


def test_graded_counts_absorb_rounding_of_thirds() -> None:
    ref = [1.0] * 3
    cand = [2 / 3] * 3  # b̃ = 3 · (1/3), a hair off 1.0 in floating point
    assert graded_counts(ref, cand) == (1, 0, 1, 0)


def test_graded_counts_stay_within_n() -> None:
    ref = [1.0, 0.0]
    cand = [0.0, 0.9]
    b_reg, c_reg, b_pass, c_pass = graded_counts(ref, cand)
    assert b_reg + c_reg <= 2 and b_pass + c_pass <= 2


# --------------------------------------------------------------------------
# the gate on scores


def scored(ref: list[float], cand: list[float], **kwargs: object) -> SliceOutcomes:
    return SliceOutcomes(
        "s",
        tuple(x == 1.0 for x in ref),
        tuple(x == 1.0 for x in cand),
        reference_scores=tuple(ref),
        candidate_scores=tuple(cand),
        **kwargs,  # type: ignore[arg-type]
    )


def test_scores_of_zero_and_one_take_the_pass_fail_path_unchanged() -> None:
    rng = np.random.default_rng(3)
    ref = [float(x) for x in rng.random(340) < 0.8]
    cand = [float(x) for x in rng.random(340) < 0.75]
    with_scores = scored(ref, cand)
    plain = SliceOutcomes("s", with_scores.reference, with_scores.candidate)
    assert not with_scores.graded
    assert evaluate([with_scores], None, GateSettings()) == evaluate([plain], None, GateSettings())


def test_a_graded_row_reports_mean_scores_and_its_tests() -> None:
    ref = [1.0, 0.5, 1.0, 0.0, 0.25] * 40
    cand = [0.5, 0.5, 0.0, 0.5, 0.0] * 40
    (row,) = evaluate([scored(ref, cand)], None, GateSettings(plan=False))
    assert row.graded and row.to_dict()["graded"] is True
    assert row.ref_accuracy == pytest.approx(0.55) and row.cand_accuracy == pytest.approx(0.3)
    assert row.drop == pytest.approx(0.25)
    assert (row.regressions, row.improvements) == (120, 40)  # cases scored lower, higher
    b_reg, c_reg, b_pass, c_pass = graded_counts(ref, cand)
    assert row.p_value == stats.regression_pvalue(b_reg, c_reg, 200, 0.02)
    assert row.upper == stats.upper_bound(b_pass, c_pass, 200, ALPHA)
    assert row.verdict is Verdict.REGRESSED


def test_pass_fail_rows_serialise_without_the_graded_key() -> None:
    (row,) = evaluate([SliceOutcomes("s", (True,) * 5, (True,) * 5)], None, GateSettings(plan=False))
    assert "graded" not in row.to_dict()


def test_graded_clusters_take_the_t_reference() -> None:
    ref = [1.0, 0.5, 1.0, 0.0, 0.25] * 40
    cand = [0.5, 0.5, 0.0, 0.5, 0.0] * 40
    ids = tuple(f"k{i // 10}" for i in range(200))
    (row,) = evaluate([scored(ref, cand, clusters=ids)], None, GateSettings(plan=False))
    _, _, b_pass, c_pass = graded_counts(ref, cand)
    deff = row.design_effect
    assert row.upper == pytest.approx(stats.score_upper_bound(b_pass, c_pass, 200, ALPHA, deff=deff, df=19))


@pytest.mark.parametrize(
    ("ref", "cand", "match"),
    [
        ((0.5, 1.2), (0.5, 0.5), "a score must lie in"),
        ((0.5, math.nan), (0.5, 0.5), "a score must lie in"),
        ((0.5,), (0.5, 0.5), "1 scores for 2 cases"),
    ],
)
def test_bad_scores_are_refused_in_one_line(
    ref: tuple[float, ...], cand: tuple[float, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SliceOutcomes("s", (True, True), (True, True), reference_scores=ref, candidate_scores=cand)


def test_scores_for_one_model_only_are_refused() -> None:
    with pytest.raises(ValueError, match="both models or neither"):
        SliceOutcomes("s", (True,), (True,), reference_scores=(0.5,))


def test_graded_pass_keeps_its_level_where_a_t_test_does_not() -> None:
    """Scores in {0, ½, 1}, n = 10, true mean drop = the margin: the gate passes ≤ α, a t-test far more.

    tools/verify_graded.py measures the whole grid (docs/verification.md).
    """
    rng = np.random.default_rng(11)
    reps, n, delta = 600, 10, 0.05
    levels = np.array([0.0, 0.5, 1.0])
    gate_passes = t_passes = 0
    for _ in range(reps):
        ref = rng.choice(levels, size=n, p=[0.2, 0.3, 0.5])
        own = rng.choice(levels, size=n, p=[0.45, 0.3, 0.25])  # mean 0.4 = 0.65 − δ/0.2
        cand = np.where(rng.random(n) < 0.2, own, ref)
        row = evaluate([scored(list(ref), list(cand), tolerance=delta)], None, GateSettings(plan=False))[0]
        gate_passes += row.verdict in (Verdict.PASS, Verdict.IMPROVED)
        d = ref - cand
        se = d.std(ddof=1) / math.sqrt(n)
        upper = d.mean() + 1.833 * se  # t(9) 95% quantile
        t_passes += upper < delta
    mc = 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert gate_passes / reps <= ALPHA + mc
    assert t_passes / reps > ALPHA + mc
