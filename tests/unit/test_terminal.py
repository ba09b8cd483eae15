"""The terminal writer alone: bounds on the right side of the margin, notes, fitting a width, the matrix."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from pytest_quantgate.core.config import GateConfig
from pytest_quantgate.core.records import CaseRecord, ModelOutcome, Outcome
from pytest_quantgate.report import json_report
from pytest_quantgate.report.matrix import matrix
from pytest_quantgate.report.model import CandidateGate, GateReport, MatrixCell, Unevaluated
from pytest_quantgate.report.terminal import summary, table
from pytest_quantgate.report.text import Line, Sep, cut_middle, format_bound, format_bytes
from pytest_quantgate.statistics.gate import GateSettings, SliceOutcomes, SliceResult, Verdict, evaluate
from pytest_quantgate.values.specs import parse_spec


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


# -- the matrix ----------------------------------------------------------------

KIB, MIB = 1024, 2**20


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (None, "?"),
        (0, "0.0 KiB"),
        (1536, "1.5 KiB"),
        (MIB - 1, "1024.0 KiB"),  # under 1 MiB: KiB, however it rounds
        (MIB, "1.0 MiB"),
        (33_792 * 4, "132.0 KiB"),
        (7 * 2**30 + 300 * MIB, "7468.0 MiB"),
    ],
)
def test_format_bytes(n: int | None, shown: str) -> None:
    assert format_bytes(n) == shown


def _gate(label: str, rows: list[SliceResult], verdict: Verdict | None) -> CandidateGate:
    return CandidateGate(label, f"{label} (rtn4:m)", verdict, tuple(rows), 0, (), (), path="/m")


def _report(*gates: CandidateGate, models: dict[str, dict[str, Any]] | None = None) -> GateReport:
    specs = [parse_spec(f"{g.label}=rtn4:/m", check_path=False) for g in gates]
    config = GateConfig(reference=parse_spec("ref=/m", check_path=False), candidates=tuple(specs))
    return GateReport(config, models or {}, gates, (), True, (), 0)


def _three() -> GateReport:
    """rtn4 passes, gptq-int4 regresses on arith (and has no 'format' slice), nf4 did not load."""
    rtn4 = _gate(
        "rtn4",
        [
            _row("arith", Verdict.PASS, drop=0.0),
            _row("recall", Verdict.INCONCLUSIVE, drop=0.013),
            _row("format", Verdict.IMPROVED, drop=-0.05),
            _row("ALL", Verdict.PASS, drop=0.004, n=180, is_total=True),
        ],
        Verdict.INCONCLUSIVE,
    )
    gptq = _gate(
        "gptq-int4",
        [
            _row("recall", Verdict.INCONCLUSIVE, drop=0.0),
            _row("arith", Verdict.REGRESSED, drop=1 / 3),
            _row("ALL", Verdict.REGRESSED, drop=0.1667, n=120, is_total=True),
        ],
        Verdict.REGRESSED,
    )
    nf4 = replace(_gate("nf4", [], None), not_evaluated="CUDA out of memory\n(the whole message)")
    models: dict[str, dict[str, Any]] = {
        "ref": {"weight_bytes": 4 * MIB + 256 * KIB},
        "rtn4": {"weight_bytes": 3 * MIB // 2},
        "gptq-int4": {"weight_bytes": 33_792 * 4},
        "nf4": {"load_error": "CUDA out of memory\n(the whole message)"},
    }
    return _report(rtn4, gptq, nf4, models=models)


def _lines(lines: Iterator[Line | Sep]) -> list[str]:
    return [f"=== {x.title} ===" if isinstance(x, Sep) else "".join(seg for seg, _ in x) for x in lines]


def test_matrix_model_is_what_the_gates_say() -> None:
    data = _three().matrix()
    assert (data.reference, data.reference_weight_bytes) == ("ref", 4 * MIB + 256 * KIB)
    # The first candidate's order, then slices only later ones have, the ALL row last.
    assert data.slices == ("arith", "recall", "format", "ALL")
    assert [(c.label, c.verdict, c.unevaluated, c.weight_bytes) for c in data.candidates] == [
        ("rtn4", Verdict.INCONCLUSIVE, None, 3 * MIB // 2),
        ("gptq-int4", Verdict.REGRESSED, None, 33_792 * 4),
        ("nf4", None, Unevaluated.NOT_LOADED, None),
    ]
    arith, _, fmt, total = data.cells
    assert arith == (
        MatrixCell(0.0, Verdict.PASS, 60),
        MatrixCell(1 / 3, Verdict.REGRESSED, 60),
        None,
    )
    assert fmt[1:] == (None, None) and total[1] == MatrixCell(0.1667, Verdict.REGRESSED, 120)


def test_matrix_json_is_the_model() -> None:
    report = _three()
    out = json_report.to_dict(report)["matrix"]
    assert out == json.loads(json.dumps(out, allow_nan=False))
    assert out["reference"] == {"label": "ref", "weight_bytes": 4 * MIB + 256 * KIB}
    assert out["slices"] == ["arith", "recall", "format", "ALL"]
    assert out["candidates"][2] == {
        "label": "nf4",
        "verdict": None,
        "not_evaluated": "not loaded",
        "weight_bytes": None,
    }
    assert out["cells"][0] == [
        {"drop": 0.0, "verdict": "PASS", "n": 60},
        {"drop": pytest.approx(1 / 3), "verdict": "REGRESSED", "n": 60},
        None,
    ]
    # A row with no cases has no drop: null, not NaN.
    empty = _gate("e", [_row("ALL", Verdict.INCONCLUSIVE, n=0, drop=math.nan, is_total=True)], None)
    assert json_report.to_dict(_report(empty))["matrix"]["cells"] == [
        [{"drop": None, "verdict": "INCONCLUSIVE", "n": 0}]
    ]


def test_matrix_cells_weights_and_a_candidate_not_evaluated() -> None:
    lines = _lines(matrix(_three(), 100))
    assert lines == [
        "=== quantgate: 3 candidates vs reference ref (weights 4.2 MiB) ===",
        "slice        rtn4  gptq-int4  nf4 (not loaded)",
        "arith    Δ +0.0 P  Δ -33.3 R                 —",
        "recall   Δ -1.3 ?   Δ +0.0 ?                 —",
        "format   Δ +5.0 I          —                 —",
        "───────  ────────  ─────────  ────────────────",
        "ALL      Δ -0.4 P  Δ -16.7 R                 —",
        "weights   1.5 MiB  132.0 KiB                 ?",
        "Δ: candidate − reference accuracy, pts; R regressed, P pass, ? inconclusive, I improved; —: not",
        "  gated; weights: parameters and buffers in memory",
    ]


def test_matrix_cells_carry_their_verdicts_colour() -> None:
    arith = next(x for x in matrix(_three(), 100) if not isinstance(x, Sep) and x[0][0].startswith("arith"))
    assert [(text.strip(), markup) for text, markup in arith if text.strip()] == [
        ("arith", {"bold": False}),
        ("Δ +0.0 P", {"green": True}),
        ("Δ -33.3 R", {"red": True, "bold": True}),
        ("—", {}),
    ]


@pytest.mark.parametrize("width", [40, 50, 60, 80, 120, 200])
def test_matrix_fits_the_width(width: int) -> None:
    labels = [f"Qwen2.5-7B-Instruct-{s}" for s in ("GPTQ-Int4", "GPTQ-Int8", "AWQ", "bnb-nf4", "rtn3")]
    rows = [
        _row("a-rather-long-slice-name-for-a-matrix", Verdict.REGRESSED, drop=0.333),
        _row("arith", Verdict.IMPROVED, drop=-1.0),
        _row("ALL", Verdict.REGRESSED, is_total=True, n=12345),
    ]
    gates = [_gate(label, rows, Verdict.REGRESSED) for label in labels]
    gates[3] = replace(gates[3], verdict=None, rows=(), not_evaluated="boom")
    models: dict[str, dict[str, Any]] = {label: {"weight_bytes": 123 * 2**30} for label in labels}
    models[labels[3]] = {"load_error": "boom"}
    lines = _lines(matrix(_report(*gates, models=models), width))
    body = [line for line in lines if not line.startswith("===")]
    assert max(len(line) for line in body) <= width
    # Every candidate has a column, in some block; the prefix all labels share is dropped.
    headings = " ".join(line for line in body if line.startswith("slice ")).split()
    assert [h for h in headings if h.startswith("…")] == [
        "…GPTQ-Int4",
        "…GPTQ-Int8",
        "…AWQ",
        "…bnb-nf4",
        "…rtn3",
    ]
    assert "(not loaded)" in " ".join(headings)
    blocks = sum(line.startswith("slice ") for line in body)
    assert (blocks == 1) == (width >= 120)
    assert sum(line.startswith("weights ") for line in body) == blocks
    assert all("125952.0 MiB" in line for line in body if line.startswith("weights ") and "?" not in line)


def test_summary_shows_the_matrix_last_and_only_for_two_candidates_or_more() -> None:
    three = _lines(summary(_three(), 100))
    at = three.index("=== quantgate: 3 candidates vs reference ref (weights 4.2 MiB) ===")
    # After every candidate's section.
    assert at > max(i for i, line in enumerate(three) if line.startswith("=== quantgate: nf4"))
    report = _three()
    one = replace(report, candidates=report.candidates[:1])
    assert not any("candidates vs reference" in line for line in _lines(summary(one, 100)))
    # Without a reference nothing was gated: no matrix either.
    assert not any("candidates vs" in x for x in _lines(summary(replace(report, reference_error="x"), 100)))


def test_matrix_cuts_long_labels_in_the_middle_when_they_share_no_prefix() -> None:
    rows = [_row("ALL", Verdict.PASS, is_total=True, drop=0.0)]
    gates = [_gate(label, rows, Verdict.PASS) for label in ("first-long-label-x4", "second-long-label-y8")]
    heading = next(line for line in _lines(matrix(_report(*gates), 200)) if line.startswith("slice"))
    assert heading.split() == ["slice", "first-lo…abel-x4", "second-l…abel-y8"]


@pytest.mark.parametrize(
    ("lost", "models", "reference_error", "why"),
    [
        ((), {"nf4": {"load_error": "boom"}}, None, Unevaluated.NOT_LOADED),
        ((), {"nf4": {"load_error": "boom"}}, "no tokenizer", Unevaluated.NOT_LOADED),
        ((), {}, "no tokenizer", Unevaluated.REFERENCE_NOT_LOADED),
        (("t.py::test[3]",), {}, None, Unevaluated.CASES_LOST),
    ],
)
def test_matrix_says_why_a_candidate_was_not_evaluated(
    lost: tuple[str, ...], models: dict[str, dict[str, Any]], reference_error: str | None, why: Unevaluated
) -> None:
    nf4 = replace(_gate("nf4", [], None), not_evaluated="the whole message", lost=lost)
    report = replace(_report(nf4, models=models), reference_error=reference_error)
    (column,) = report.matrix().candidates
    assert column.unevaluated is why and column.verdict is None
    heading = next(line for line in _lines(matrix(report, 80)) if line.startswith("slice"))
    assert heading.split(maxsplit=1) == ["slice", f"nf4 ({why.value})"]


# -- regressed cases -------------------------------------------------------------


def _trajectory(ref_turns: list[dict[str, Any]], cand_turns: list[dict[str, Any]]) -> CaseRecord:
    def outcome(turns: list[dict[str, Any]], result: Outcome) -> ModelOutcome:
        return ModelOutcome(result, turns[-1]["reply"], transcript=tuple(turns))

    return CaseRecord(
        key="k",
        nodeid="t.py::test_agent[a]",
        slices=("agent",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes={"ref": outcome(ref_turns, "pass"), "q": outcome(cand_turns, "fail")},
        prompt="first",
        trajectory=True,
    )


def _regressed_block(record: CaseRecord) -> list[str]:
    gate = replace(
        _gate("q", [_row("ALL", Verdict.REGRESSED, is_total=True)], Verdict.REGRESSED), regressed=(record,)
    )
    lines = _lines(summary(replace(_report(gate), records=(record,)), 80))
    return lines[lines.index("regressed cases (1):") + 1 :]


def test_a_trajectory_parted_at_its_last_step_shows_its_replies_once() -> None:
    """Chat prompts show their last message; the final outputs are the step's replies, not shown again."""
    first = [{"role": "user", "content": "cap 7"}]
    then = [*first, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "set o7>"}]
    record = _trajectory(
        [{"prompt": first, "reply": "ok"}, {"prompt": then, "reply": "put o7"}],
        [{"prompt": first, "reply": "ok"}, {"prompt": then, "reply": "put o6"}],
    )
    assert _regressed_block(record) == [
        "  R t.py::test_agent[a]",
        "      parted at step 2 of 2:",
        "      prompt  … user: 'set o7>'",
        "      ref     'put o7'",
        "      q       'put o6'",
    ]


def test_a_trajectory_whose_inputs_differed_says_whose_prompt_is_shown() -> None:
    record = _trajectory(
        [{"prompt": "go", "rendered": "<s>go", "reply": "a"}, {"prompt": "go a", "reply": "end"}],
        [{"prompt": "go", "rendered": "go", "reply": "b"}],
    )
    block = _regressed_block(record)
    assert block[1:5] == [
        "      parted at step 1 of 2 (the inputs differed there; the reference's is shown):",
        "      prompt  'go'",
        "      ref     'a'",
        "      q       'b'",
    ]
    assert block[5:] == ["      final outputs:", "      ref     'end'", "      q       'b'"]


@pytest.mark.parametrize(
    ("width", "shown"),
    [(10, "abcdefghij"), (12, "abcdefghij"), (6, "abc…ij"), (5, "ab…ij"), (2, "a…"), (1, "…")],
)
def test_cut_middle_keeps_both_ends(width: int, shown: str) -> None:
    assert cut_middle("abcdefghij", width) == shown
    assert len(shown) <= width


def test_a_long_prompt_at_the_parting_step_keeps_its_rule_and_its_newest_request() -> None:
    steps = ["limit 46\npay 48>", "flag\npay 42>", *["ok\npay 44>"] * 4, "ok\npay 51>"]
    prompts = ["".join(steps[: i + 1]) for i in range(len(steps))]
    replies = ["flag", "ok", "ok", "ok", "ok", "ok"]
    ref = [{"prompt": p, "reply": r} for p, r in zip(prompts, [*replies, "flag"], strict=True)]
    cand = [{"prompt": p, "reply": r} for p, r in zip(prompts, [*replies, "ok"], strict=True)]
    block = _regressed_block(_trajectory(ref, cand))
    prompt = block[2].removeprefix("      prompt  ")
    assert prompt.startswith("'limit 46\\npay 48>") and prompt.endswith("\\npay 51>'") and "…" in prompt
    assert len(block[2]) <= 80
