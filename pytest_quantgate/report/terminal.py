"""The terminal report: pure iterators of lines; the plugin prints them.

One table per candidate, slices as rows and an ALL row, aligned columns,
verdicts coloured; then the regressed cases with both outputs, truncated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..cases import Status
from ..gate import SliceResult, Verdict

if TYPE_CHECKING:
    from ..cases import CaseRecord
    from ..config import GateConfig
    from .model import CandidateGate, GateReport

__all__ = [
    "Line",
    "Sep",
    "case_lines",
    "header_lines",
    "row_failure_lines",
    "summary",
    "table",
    "teststatus",
]

Markup = dict[str, bool]
#: A line is a list of (text, markup) segments.
Line = list[tuple[str, Markup]]

VERDICT_MARKUP: dict[Verdict, Markup] = {
    Verdict.REGRESSED: {"red": True, "bold": True},
    Verdict.PASS: {"green": True},
    Verdict.INCONCLUSIVE: {"yellow": True},
    Verdict.IMPROVED: {"cyan": True},
}
MAX_CASES_SHOWN = 10
OUTPUT_WIDTH = 60


@dataclass(frozen=True)
class Sep:
    """A section heading (``=== title ===``)."""

    title: str
    markup: Markup = field(default_factory=dict)


def header_lines(config: GateConfig) -> Iterator[str]:
    """Lines for pytest's report header."""
    if config.reference is None:
        return
    yield f"quantgate: reference {config.reference.display}"
    cands = ", ".join(c.display for c in config.candidates) or "none"
    yield f"quantgate: candidates {cands}"
    yield (
        f"quantgate: tolerance {_pts(config.tolerance)} pts, alpha {config.alpha:g}, "
        f"device {config.device}, dtype {config.dtype}, batch {config.batch_size}"
        + (", strict" if config.strict else "")
    )


#: How a case's status shows in pytest's progress and summary: (letter, word, markup).
STATUS_DISPLAY: dict[Status, tuple[str, str, Markup]] = {
    Status.ERROR: ("E", "ERROR", {"red": True}),
    Status.REGRESSED: ("R", "REGRESSED", {"yellow": True, "bold": True}),
    Status.IMPROVED: ("I", "IMPROVED", {"green": True}),
    Status.BOTH_FAILED: ("b", "BOTH-FAILED", {"yellow": True}),
}


def teststatus(record: CaseRecord, *, failed: bool) -> tuple[str, str, tuple[str, Markup]] | None:
    """A case's category, letter and word for pytest's report, or None for pytest's own.

    Errors count as errors (``E``) even though they are reported as failed
    tests; the other statuses with a display are their own categories, unless
    the test failed (a critical regression), which pytest shows as a failure.
    """
    status = record.worst
    display = STATUS_DISPLAY.get(status)
    if display is None or (failed and status is not Status.ERROR):
        return None
    letter, word, markup = display
    return status.value, letter, (word, markup)


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _p(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


COLUMNS = ("slice", "n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p", "verdict")
_RIGHT = {"n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p"}


def _cells(row: SliceResult) -> list[str]:
    return [
        row.slice,
        str(row.n),
        _pct(row.ref_accuracy),
        _pct(row.cand_accuracy),
        _pts(-row.drop if not math.isnan(row.drop) else row.drop, signed=True),
        _pts(row.se),
        _pts(row.upper, signed=True),
        _pts(row.tolerance),
        f"{row.regressions}/{row.improvements}",
        _p(row.p_adjusted),
        row.verdict.value,
    ]


def _note(row: SliceResult) -> str:
    if row.verdict is not Verdict.INCONCLUSIVE:
        return ""
    bits = []
    if row.mdd is not None and not math.isnan(row.mdd):
        bits.append(f"detects drops ≥ {_pts(row.mdd)} pts")
    if row.n_needed is not None:
        bits.append(f"~{row.n_needed} cases to show ≤ {_pts(row.tolerance)}")
    return "  (" + "; ".join(bits) + ")" if bits else ""


def table(rows: Sequence[SliceResult], alpha: float) -> Iterator[Line]:
    """The per-slice table of one candidate, aligned, verdicts coloured."""
    body = [_cells(r) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(COLUMNS)]

    def fmt(cells: Sequence[str]) -> list[str]:
        return [
            c.rjust(w) if h in _RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, COLUMNS, strict=True)
        ]

    yield [("  ".join(fmt(COLUMNS)).rstrip(), {"bold": True})]
    for row, cells in zip(rows, body, strict=True):
        parts = fmt(cells)
        if row.is_total:
            yield [("  ".join("─" * w for w in widths), {})]
        yield [
            ("  ".join(parts[:-1]) + "  ", {"bold": True} if row.is_total else {}),
            (parts[-1].rstrip(), VERDICT_MARKUP[row.verdict]),
            (_note(row), {}),
        ]
    level = round(100 * (1 - alpha))
    yield [
        (
            f"Δ: candidate − reference accuracy; drop≤: one-sided {level}% upper bound of the drop; "
            "tol: margin; −/+: regressions/improvements; p: one-sided, Holm-adjusted across slices",
            {},
        )
    ]


def _short(text: str, width: int = OUTPUT_WIDTH) -> str:
    text = repr(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def case_lines(record: CaseRecord) -> Iterator[str]:
    """Both models' outputs and check results for one case."""
    statuses = record.statuses
    worst = record.worst
    if worst is Status.ERROR:
        yield f"quantgate: case error in {record.nodeid} (an exception other than AssertionError)"
    elif worst is Status.FAILED:
        yield "quantgate: the reference fails this case (no candidate given)"
    elif worst is Status.REGRESSED:
        critical = " (critical)" if record.critical else ""
        yield f"quantgate: case regressed{critical}: the reference passes, a candidate fails"
    for label, outcome in record.outcomes.items():
        role = "reference" if label == record.reference else f"candidate {statuses[label]}"
        yield f"  {label} [{role.strip()}]: {outcome.outcome}  output={_short(outcome.output)}"
        if outcome.message:
            for i, line in enumerate(outcome.message.splitlines()[:6]):
                yield f"      {'' if i else '→ '}{line}"


def row_failure_lines(gate: CandidateGate, row: SliceResult) -> Iterator[str]:
    """The body of the failed report ``quantgate::<candidate>::<slice>``."""
    name = "all cases" if row.is_total else f"slice {row.slice!r}"
    yield f"{name} of candidate {gate.display}: {row.verdict.value}"
    yield (
        f"  accuracy {_pct(row.ref_accuracy)} → {_pct(row.cand_accuracy)} "
        f"(Δ {_pts(-row.drop, signed=True)} pts, SE {_pts(row.se)}) on {row.n} cases"
    )
    yield (
        f"  drop ≤ {_pts(row.upper)} pts at {round(100 * (1 - row.alpha))}% confidence; "
        f"tolerance {_pts(row.tolerance)} pts; p = {_p(row.p_adjusted)}"
        + (" (Holm)" if not row.is_total else "")
    )
    yield f"  {row.regressions} regressed, {row.improvements} improved"
    if row.verdict is Verdict.INCONCLUSIVE:
        yield f"  inconclusive under --quant-strict{_note(row)}"
    cases = [r for r in gate.regressed if row.is_total or row.slice in r.slices]
    for rec in cases[:MAX_CASES_SHOWN]:
        yield f"  R {rec.nodeid}"
    if len(cases) > MAX_CASES_SHOWN:
        yield f"  ... and {len(cases) - MAX_CASES_SHOWN} more"


def _outputs_line(rec: CaseRecord, label: str) -> str:
    ref = rec.outcomes[rec.reference]
    cand = rec.outcomes[label]
    return f"      reference: {_short(ref.output)}   candidate: {_short(cand.output)}"


def summary(report: GateReport) -> Iterator[Line | Sep]:
    """The whole terminal section: per candidate a table and its regressions."""
    ref = report.config.reference
    assert ref is not None
    if not report.candidates:
        yield Sep(f"quantgate: reference {ref.label} only", {})
        passed, total = report.reference_passed, len(report.records)
        yield [(f"{passed}/{total} cases pass; give --quant-candidate to gate a model", {})]
    for gate in report.candidates:
        verdict = gate.verdict
        yield Sep(
            f"quantgate: {gate.display} vs reference {ref.label}: {verdict.value}",
            {"red": True}
            if verdict is Verdict.REGRESSED
            else {"green": verdict is not Verdict.INCONCLUSIVE, "yellow": verdict is Verdict.INCONCLUSIVE},
        )
        yield from table(gate.rows, report.config.alpha)
        if gate.errors:
            yield [(f"{gate.errors} case(s) with errors are left out of the statistics", {"red": True})]
        if gate.inconclusive and not report.config.strict:
            names = ", ".join(gate.inconclusive)
            yield [
                (
                    f"warning: INCONCLUSIVE ({names}): too few cases to rule out a drop beyond the "
                    "tolerance; passing for now, --quant-strict fails them",
                    {"yellow": True},
                )
            ]
        if gate.regressed:
            yield [(f"regressed cases ({len(gate.regressed)}):", {"bold": True})]
            for rec in gate.regressed[:MAX_CASES_SHOWN]:
                crit = " [critical]" if rec.critical else ""
                yield [(f"  R {rec.nodeid}{crit}", {"yellow": True})]
                yield [(_outputs_line(rec, gate.label), {})]
            if len(gate.regressed) > MAX_CASES_SHOWN:
                more = len(gate.regressed) - MAX_CASES_SHOWN
                path = report.config.report_path
                where = f" (all in {path})" if path else " (--quant-report=PATH writes them all)"
                yield [(f"  ... and {more} more{where}", {})]
    if report.config.report_path is not None:
        yield [(f"quantgate: JSON report written to {report.config.report_path}", {})]
