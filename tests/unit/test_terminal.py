"""The terminal writer alone: bounds on the right side of the margin, notes, fitting a width."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from pytest_quantgate.gate import GateSettings, SliceOutcomes, SliceResult, Verdict, evaluate
from pytest_quantgate.report.terminal import format_bound, table


@pytest.mark.parametrize(
    ("upper", "tolerance", "shown"),
    [
        (0.049, 0.02, "4.9"),  # float noise does not round up a whole step
        (0.0491, 0.02, "5.0"),  # rounded up, never down
        (0.01, 0.02, "1.0"),
        (0.01999, 0.02, "1.999"),  # below the margin: more digits rather than "2.0"
        (0.019999, 0.02, "1.9999"),
        (0.0199999999, 0.02, "<2.0"),  # four digits cannot tell: said as it is
        (0.02, 0.02, "2.0"),  # at the margin: not below it
        (0.07, 0.07, "7.0"),
        (0.0699, 0.07, "6.99"),
        (-0.004, 0.0, "-0.4"),  # a negative bound (an improvement) keeps its sign
        (0.0, 0.0, "0.0"),
        (math.nan, 0.02, "-"),
        (math.inf, 0.02, "inf"),
        (0.0124, 0.0125, "1.24"),
    ],
)
def test_format_bound(upper: float, tolerance: float, shown: str) -> None:
    assert format_bound(upper, tolerance) == shown
    assert not shown.startswith("+")


@pytest.mark.parametrize("tolerance", [0.0, 0.005, 0.02, 0.0125, 0.07, 0.1])
def test_bound_is_shown_on_the_side_of_the_margin_it_is_on(tolerance: float) -> None:
    for k in range(-50, 400):
        upper = k / 2000 + 1e-7 * (k % 7)
        text = format_bound(upper, tolerance)
        shown = float(text.lstrip("<"))
        if upper < tolerance:
            assert shown < 100 * tolerance + 1e-9 or text.startswith("<"), (upper, text)
        else:
            assert shown >= round(100 * tolerance, 4), (upper, text)
        if not text.startswith("<"):
            assert shown >= 100 * upper - 1e-6, (upper, text)  # rounded up


def _row(name: str, verdict: Verdict, **kw: object) -> SliceResult:
    base = SliceResult(
        slice=name,
        n=60,
        ref_accuracy=1.0,
        cand_accuracy=0.9167,
        drop=0.0833,
        se=0.036,
        upper=0.168,
        regressions=5,
        improvements=0,
        p_value=0.09,
        p_adjusted=0.094,
        tolerance=0.0,
        alpha=0.05,
        design_effect=1.0,
        verdict=verdict,
        mdd=None,
        n_needed=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _text(rows: list[SliceResult], width: int) -> list[str]:
    return ["".join(seg for seg, _ in line) for line in table(rows, 0.05, width)]


def test_notes_say_what_each_number_means() -> None:
    rows = [
        _row("format", Verdict.INCONCLUSIVE, mdd=0.129, n_needed=94, n_needed_for="REGRESSED"),
        _row("recall", Verdict.INCONCLUSIVE, mdd=0.1, n_needed=133, n_needed_for="PASS", tolerance=0.02),
        _row("tiny", Verdict.INCONCLUSIVE, n=2, mdd=math.inf, n_needed=None),
        _row("ALL", Verdict.REGRESSED, is_total=True),
    ]
    text = " ".join(line.strip() for line in _text(rows, 200))
    assert "format: detects drops ≥ 12.9 pts; ~94 cases would confirm a drop > 0.0 pts" in text
    assert "recall: detects drops ≥ 10.0 pts; ~133 cases would show the drop < 2.0 pts" in text
    assert "tiny: too few cases to detect any drop; no number of cases would show" in text
    assert "inf" not in text


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_table_fits_the_width(width: int) -> None:
    rows = [
        _row("a-rather-long-slice-name-for-a-table", Verdict.INCONCLUSIVE, mdd=0.1, n_needed=133),
        _row("arith", Verdict.REGRESSED),
        _row("ALL", Verdict.REGRESSED, is_total=True, n=12345),
    ]
    lines = _text(rows, width)
    assert max(len(line) for line in lines) <= max(width, 60)
    header = lines[0].split()
    # The verdict and the numbers the verdict rests on always stay.
    assert {"slice", "n", "cand", "Δ", "drop≤", "tol", "verdict"} <= set(header)
    if width >= 120:
        assert "SE" in header and "p" in header


@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.02, 0.05])
def test_a_printed_bound_never_contradicts_the_verdict(tolerance: float) -> None:
    """Over a grid of real gate rows: PASS shows a bound below the tolerance, nothing else does."""
    settings = GateSettings(plan=False)
    for n in (20, 60, 150, 400):
        for b in (0, 1, 2, 4, 8, 15):
            for c in (0, 1, 3, 6):
                if b + c > n:
                    continue
                ref = (True,) * (n - c) + (False,) * c
                cand = (True,) * (n - c - b) + (False,) * b + (True,) * c
                (row,) = evaluate([SliceOutcomes("s", ref, cand, tolerance=tolerance)], None, settings)
                text = format_bound(row.upper, tolerance)
                below = text.startswith("<") or float(text) < 100 * tolerance - 1e-9
                if row.verdict is Verdict.PASS:
                    assert below, (n, b, c, row.upper, text)
                elif row.verdict is not Verdict.IMPROVED:
                    assert not below, (n, b, c, row.upper, text, row.verdict)
