"""The terminal report: pure iterators of lines; the plugin prints them.

pytest's report header, each case's status letter and word, the failure
text of a case and of a gate test, and the quantgate section: one table per
candidate, slices as rows and an ALL row, fitted to the terminal's width
(columns dropped in a fixed order when it is narrow), verdicts coloured;
under it, in short lines, what the INCONCLUSIVE rows would need and what the
columns mean; then the regressed cases, each once, under its whole id,
with its prompt, arguments and every model's output (a trajectory's from
the step where the paths parted). With two candidates or more, the
matrix of :mod:`.matrix` last. The text primitives (lines, markup, numbers)
are in :mod:`.text`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.overlap import NGRAM, CalibrationOverlap
from ..core.records import Status
from ..statistics.gate import SliceResult, Verdict
from . import perplexity
from .divergence_text import divergence_lines, format_kl, noise_floor_lines
from .matrix import matrix
from .text import (
    COST_COLUMNS,
    DEFAULT_WIDTH,
    VERDICT_MARKUP,
    Line,
    Markup,
    Sep,
    cost_caption,
    cut,
    cut_middle,
    format_bound,
    format_p,
    format_percent,
    format_points,
    format_tolerance,
    partial_note,
    short_repr,
    wrapped,
)

if TYPE_CHECKING:
    from ..core.config import GateConfig
    from ..core.records import CaseRecord
    from .model import CandidateGate, GateReport, GateTest

__all__ = [
    # Sep is text's, named here too: the plugin tells headings from lines by it.
    "Sep",
    "case_lines",
    "gate_test_lines",
    "header_lines",
    "summary",
    "table",
    "teststatus",
]

MAX_CASES_SHOWN = 10
#: Longest message of a load error shown, in lines (the JSON report has it all).
MAX_ERROR_LINES = 40


def header_lines(config: GateConfig) -> Iterator[str]:
    """Lines for pytest's report header."""
    if config.reference is None:
        return
    yield f"quantgate: reference {config.reference.display}"
    cands = ", ".join(c.display for c in config.candidates) or "none"
    yield f"quantgate: candidates {cands}"
    yield (
        f"quantgate: tolerance {format_tolerance(config.tolerance)} pts, alpha {config.alpha:g}, "
        f"device {config.device}, dtype {config.dtype}, "
        f"batch {'auto' if config.batch_size is None else config.batch_size}"
        + (", strict" if config.strict else "")
        + (", keep-loaded" if config.keep_loaded else "")
    )


#: How a case's status shows in pytest's progress and summary: (letter, word, markup).
STATUS_DISPLAY: dict[Status, tuple[str, str, Markup]] = {
    Status.ERROR: ("E", "ERROR", {"red": True}),
    Status.REGRESSED: ("R", "REGRESSED", {"yellow": True, "bold": True}),
    Status.IMPROVED: ("I", "IMPROVED", {"green": True}),
    Status.BOTH_FAILED: ("b", "BOTH-FAILED", {"yellow": True}),
}


def teststatus(status: Status, *, failed: bool) -> tuple[str, str, tuple[str, Markup]] | None:
    """A case's category, letter and word for pytest's report, or None for pytest's own.

    Errors count as errors (``E``) even though they are reported as failed
    tests; the other statuses with a display are their own categories, unless
    the test failed (a critical regression), which pytest shows as a failure.
    Skipped cases are pytest's own ``s`` and ``x``.
    """
    display = STATUS_DISPLAY.get(status)
    if display is None or (failed and status is not Status.ERROR):
        return None
    letter, word, markup = display
    return status.value, letter, (word, markup)


# -- the table -----------------------------------------------------------------

COLUMNS = ("slice", "n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p", "verdict")
_RIGHT = {"n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p"}
#: How a narrow table is made to fit, step by step: drop a column, or cut
#: slice names to a width. Columns not named here always stay.
FIT_STEPS: tuple[str | int, ...] = ("SE", "p", 14, "ref", "−/+", 6)


def _cells(row: SliceResult) -> dict[str, str]:
    return {
        "slice": f"{row.slice}*" if row.graded else row.slice,
        "n": str(row.n),
        "ref": format_percent(row.ref_accuracy),
        "cand": format_percent(row.cand_accuracy),
        "Δ pts": format_points(-row.drop if not math.isnan(row.drop) else row.drop, signed=True),
        "SE": format_points(row.se),
        "drop≤": format_bound(row.upper, row.tolerance),
        "tol": format_tolerance(row.tolerance),
        "−/+": f"{row.regressions}/{row.improvements}",
        "p": format_p(row.p_adjusted),
        "verdict": row.verdict.value,
    }


def _fit(body: Sequence[dict[str, str]], width: int) -> tuple[list[str], dict[str, int]]:
    """The columns that fit in ``width`` and their widths; slice names may be cut."""
    columns = list(COLUMNS)
    widths = {h: max(len(h), *(len(b[h]) for b in body)) for h in columns}

    def total() -> int:
        return sum(widths[h] for h in columns) + 2 * (len(columns) - 1)

    for step in FIT_STEPS:
        excess = total() - width
        if excess <= 0:
            break
        if isinstance(step, int):
            widths["slice"] = max(step, min(widths["slice"], widths["slice"] - excess))
        else:
            columns.remove(step)
    return columns, widths


def table(rows: Sequence[SliceResult], alpha: float, width: int = DEFAULT_WIDTH) -> Iterator[Line]:
    """The per-slice table of one candidate, fitted to ``width``, then its notes and legend."""
    body = [_cells(r) for r in rows]
    columns, widths = _fit(body, width)

    def fmt(cells: dict[str, str]) -> list[str]:
        return [
            cut(cells[h], widths[h]).rjust(widths[h])
            if h in _RIGHT
            else cut(cells[h], widths[h]).ljust(widths[h])
            for h in columns
        ]

    yield [("  ".join(fmt({h: h for h in COLUMNS})).rstrip(), {"bold": True})]
    for row, cells in zip(rows, body, strict=True):
        parts = fmt(cells)
        if row.is_total:
            yield [("  ".join("─" * widths[h] for h in columns), {})]
        yield [
            ("  ".join(parts[:-1]) + "  ", {"bold": True} if row.is_total else {}),
            (parts[-1].rstrip(), VERDICT_MARKUP[row.verdict]),
        ]
    for row in rows:
        note = _note(row)
        if note:
            yield from wrapped(f"{row.slice}: {note}", width, {})
    level = round(100 * (1 - alpha))
    legend = {
        "Δ pts": "Δ: candidate − reference accuracy",
        "SE": "SE: its standard error",
        "drop≤": f"drop≤: {level}% upper bound of the drop, rounded up",
        "tol": "tol: margin",
        "−/+": "−/+: regressed/improved cases",
        "p": "p: one-sided, Holm-adjusted",
    }
    if any(row.graded for row in rows):
        legend["slice"] = (
            "*: graded (the checks returned scores): ref, cand: mean scores ×100, Δ: their difference, "
            "−/+: cases scored lower/higher"
        )
    yield from wrapped("; ".join(text for h, text in legend.items() if h in columns), width, {})


def _note(row: SliceResult) -> str:
    """What an INCONCLUSIVE row could detect, and what would settle it."""
    if row.verdict is not Verdict.INCONCLUSIVE:
        return ""
    if row.n == 0:
        return "no cases (every case errored or was skipped)"
    bits = []
    if row.mdd is None or math.isnan(row.mdd) or math.isinf(row.mdd):
        bits.append("too few cases to detect any drop")
    else:
        bits.append(f"detects drops ≥ {format_points(row.mdd)} pts")
    if row.n_needed is None:
        bits.append(f"no number of cases would show the drop < {format_tolerance(row.tolerance)} pts")
    elif row.n_needed_for == Verdict.REGRESSED.value:
        bits.append(f"~{row.n_needed} cases would confirm a drop > {format_tolerance(row.tolerance)} pts")
    else:
        bits.append(f"~{row.n_needed} cases would show the drop < {format_tolerance(row.tolerance)} pts")
    return "; ".join(bits)


# -- cases ---------------------------------------------------------------------


def case_lines(record: CaseRecord, width: int = DEFAULT_WIDTH) -> Iterator[str]:
    """Both models' outputs and check results for one case (the failure of its test)."""
    statuses = record.statuses
    worst = record.worst
    if worst is Status.ERROR:
        yield (
            f"quantgate: case error in {record.nodeid} "
            "(an exception other than AssertionError, or a returned score outside [0, 1])"
        )
    elif worst is Status.FAILED:
        yield "quantgate: the reference fails this case (no candidate given)"
    elif worst is Status.REGRESSED:
        critical = " (critical)" if record.critical else ""
        yield f"quantgate: case regressed{critical}: the reference passes, a candidate fails"
    if record.prompt:
        yield f"  prompt: {short_repr(record.prompt, width - 10)}"
    for label, outcome in record.outcomes.items():
        role = "reference" if label == record.reference else f"candidate {statuses[label]}"
        shown = short_repr(outcome.output, width - 30)
        yield f"  {label} [{role.strip()}]: {outcome.outcome}  output={shown}"
        if outcome.message:
            for i, line in enumerate(outcome.message.splitlines()[:6]):
                yield f"      {'' if i else '→ '}{line}"
        parted = _parted(record, label) if label != record.reference else None
        if parted:
            yield f"      parted from the reference at {parted}"


def _case_block(rec: CaseRecord, labels: Sequence[str], width: int) -> Iterator[Line]:
    """One regressed case: its id, prompt, arguments and every model's output, aligned.

    The id is never cut (:func:`_id_lines`). A trajectory whose paths
    parted leads with the step where they did, since its first prompt and
    final replies can be the same on both paths: the prompt there (cut in
    the middle when long) and both replies. Its arguments and final outputs
    follow (unless it parted at its last step, whose replies are the final
    ones).
    """
    yield from _id_lines(f"  R {rec.nodeid}", "[critical]" if rec.critical else "", width, {"yellow": True})
    parting = _parting(rec, labels[-1])
    fields = [("prompt", repr(rec.prompt))] if rec.prompt and parting is None else []
    fields += [(name, repr(v) if isinstance(v, str) else json.dumps(v)) for name, v in rec.params.items()]
    outputs = [(label, repr(rec.outcomes[label].output)) for label in labels if label in rec.outcomes]
    sections: list[tuple[str | None, list[tuple[str, str]]]] = [(None, fields + outputs)]
    if parting is not None:
        heading, at_step = parting
        last = outputs == at_step[-len(outputs) :]  # parted at the last step: the same replies again
        sections = [(heading, at_step), (None, fields), ("final outputs:", [] if last else outputs)]
    keys = [key for _, section in sections for key, _ in section]
    key_width = min(max(map(len, keys), default=0), 16)
    room = max(width - 6 - key_width - 2, 12)
    for title, section in sections:
        if title and section:
            yield [(f"      {title}", {})]
        for key, value in section:
            # The prompt at the parting step: its start has the task, its end the step's request.
            fit = cut_middle if title and key == "prompt" else cut
            yield [(f"      {cut(key, key_width).ljust(key_width)}  {fit(value, room)}", {})]


def _id_lines(text: str, tag: str, width: int, markup: Markup) -> Iterator[Line]:
    """A line that names a test, never cut: its id is what a reader copies to re-run it.

    Longer than ``width``, the line is left for the terminal to wrap. ``tag``
    follows on the same line when it fits there, else on a line of its own.
    """
    if not tag:
        yield [(text, markup)]
    elif len(text) + 1 + len(tag) <= width:
        yield [(f"{text} {tag}", markup)]
    else:
        yield [(text, markup)]
        yield [(f"      {tag}", markup)]


def _parting(rec: CaseRecord, candidate: str) -> tuple[str, list[tuple[str, str]]] | None:
    """Where a trajectory's paths parted: ``parted at step 3 of 6:``, and the prompt and both
    replies at that step; None when they never did (or the case is no trajectory)."""
    d = rec.divergence(candidate)
    if d is None:
        return None
    step = d["step"]
    transcripts = (rec.outcomes[rec.reference].transcript, rec.outcomes[candidate].transcript)
    turn = next((t[step - 1] for t in transcripts if len(t) >= step), None)
    steps = len(transcripts[0])
    heading = f"parted at step {step} of {steps}" if steps else f"parted at step {step}"
    if not d["same_input"] and d["reference"] is not None and d["candidate"] is not None:
        heading += " (the inputs differed there; the reference's is shown)"
    fields = [("prompt", _step_prompt(turn.get("prompt")))] if turn is not None else []
    fields += [(rec.reference, _said(d["reference"])), (candidate, _said(d["candidate"]))]
    return heading + ":", fields


def _step_prompt(prompt: Any) -> str:
    """A step's prompt as a block shows it: the text's repr; of chat messages, the last one."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        last = prompt[-1]
        earlier = "… " if len(prompt) > 1 else ""  # the conversation so far is in the JSON report
        return f"{earlier}{last.get('role')}: {last.get('content')!r}"
    return repr(prompt)


def _said(reply: str | None) -> str:
    """A reply at a step, or that the model's run had ended before it."""
    return "(had stopped)" if reply is None else repr(reply)


def _parted(rec: CaseRecord, candidate: str) -> str | None:
    """Where a trajectory's replies parted: ``step 3 of 6: ref 'a' | cand 'b'``."""
    d = rec.divergence(candidate)
    if d is None:
        return None
    steps = len(rec.outcomes[rec.reference].transcript)
    where = f"step {d['step']} of {steps}" if steps else f"step {d['step']}"
    text = f"{where}: {rec.reference} {_said(d['reference'])} | {candidate} {_said(d['candidate'])}"
    return (
        text
        if d["same_input"] or d["reference"] is None or d["candidate"] is None
        else (text + " (the inputs differed there)")
    )


def gate_test_lines(report: GateReport, test: GateTest) -> Iterator[str]:
    """The body of the report of a gate test ``::quantgate::<candidate>::<row>``."""
    gate = test.candidate
    if test.row is None:
        if gate.evaluated:
            yield f"candidate {gate.display} loaded"
        else:
            yield from _not_evaluated_lines(gate)
        return
    row = test.row
    name = "all cases" if row.is_total else f"slice {row.slice!r}"
    yield f"{name} of candidate {gate.display}: {row.verdict.value}"
    yield (
        f"  {'mean score (graded)' if row.graded else 'accuracy'} "
        f"{format_percent(row.ref_accuracy)} → {format_percent(row.cand_accuracy)} "
        f"(Δ {format_points(-row.drop, signed=True)} pts, SE {format_points(row.se)}) on {row.n} cases"
    )
    yield (
        f"  drop ≤ {format_bound(row.upper, row.tolerance)} pts at {round(100 * (1 - row.alpha))}% "
        f"confidence; tolerance {format_tolerance(row.tolerance)} pts; p = {format_p(row.p_adjusted)}"
        + (" (Holm)" if not row.is_total else "")
    )
    yield f"  {row.regressions} regressed, {row.improvements} improved"
    if row.regressions:
        # Listed once, in the quantgate summary: not again under every row they belong to.
        yield "  (regressed cases: see the quantgate summary, with prompts and outputs)"
    if row.verdict is Verdict.INCONCLUSIVE:
        yield f"  inconclusive, which fails under --quant-strict: {_note(row)}"
    divergence = gate.divergence_of(row.slice)
    if divergence is not None and divergence.exceeds and divergence.summary is not None:
        d = divergence.summary
        yield (
            f"  FAILED on divergence: mean token KL {format_kl(d.mean_kl)} (lower bound {format_kl(d.low)}) "
            f"is above the slice's max_kl {d.threshold:g}"
        )


def _not_evaluated_lines(gate: CandidateGate) -> Iterator[str]:
    """Why a candidate has no gate: the cases lost with a crashed worker, or its load error."""
    if gate.lost:
        yield f"{gate.display}: {gate.not_evaluated}:"
        for nodeid in gate.lost[:MAX_CASES_SHOWN]:
            yield f"  {nodeid}"
        if len(gate.lost) > MAX_CASES_SHOWN:
            yield f"  ... and {len(gate.lost) - MAX_CASES_SHOWN} more"
        return
    yield from _load_error_lines(gate.display, gate.path, gate.not_evaluated or "")


def _load_error_lines(display: str, path: str, message: str) -> Iterator[str]:
    yield f"{display} could not be loaded from {path}:"
    lines = message.splitlines() or [""]
    for line in lines[:MAX_ERROR_LINES]:
        yield f"  {line}"
    if len(lines) > MAX_ERROR_LINES:
        yield f"  ... {len(lines) - MAX_ERROR_LINES} more lines in the JSON report"


# -- the whole section -----------------------------------------------------------


def summary(
    report: GateReport,
    width: int = DEFAULT_WIDTH,
    write_errors: Sequence[str] = (),
    json_written: Path | None = None,
) -> Iterator[Line | Sep]:
    """The whole terminal section: per candidate a table and its regressions.

    Args:
        report: The report model.
        width: The terminal's width, which every line fits (long ids and
            paths aside).
        write_errors: Why a report file (JSON, Markdown) could not be written, one line each.
        json_written: Where the JSON report was written, if it was.
    """
    yield from _no_reference_line(report)
    yield from _body(report, width)
    yield from noise_floor_lines(report, width)
    yield from _cost(report)
    yield from perplexity.terminal_section(report, width)
    yield from _calibration_lines(report.calibration_overlap, width)
    for error in write_errors:
        yield [(error, {"red": True, "bold": True})]
    if json_written is not None:
        state = "complete" if report.complete else "incomplete"
        yield [(f"quantgate: JSON report ({state}) written to {json_written}", {})]


def _no_reference_line(report: GateReport) -> Iterator[Line]:
    """One line when quant cases skipped for want of a reference: else a CI job that forgets the
    flags goes green with nothing gated (issue 17). Nothing when no quant case was selected."""
    skipped = report.selection.skipped
    if report.config.reference is None and skipped:
        cases = "quant case" if skipped == 1 else "quant cases"
        text = (
            f"quantgate: no reference model given: {skipped} {cases} skipped; "
            "give --quant-reference (or quant_reference) to gate them"
        )
        yield [(text, {"yellow": True})]


def _calibration_lines(found: CalibrationOverlap | None, width: int) -> Iterator[Line]:
    """What the calibration-overlap check found: a warning above its threshold, else one plain line."""
    if found is None:
        return
    share = f"{len(found.overlapping)} of {found.cases} cases ({100 * found.share:.1f}%)"
    if not found.warns:
        yield [(f"quantgate: calibration file {found.file}: {share} found in its texts", {})]
        return
    yield from wrapped(
        f"warning: {share} appear in the calibration file (a shared {NGRAM}-word run, or the whole "
        "prompt): the candidates were fitted to cases that judge them, and their verdicts may be "
        "optimistic",
        width,
        {"yellow": True, "bold": True},
    )
    yield [(f"  file: {found.file}", {"yellow": True})]
    for nodeid in found.overlapping[:MAX_CASES_SHOWN]:
        yield [(f"  {nodeid}", {"yellow": True})]  # whole: copied to find the case
    if len(found.overlapping) > MAX_CASES_SHOWN:
        yield [(f"  ... and {len(found.overlapping) - MAX_CASES_SHOWN} more (all in the JSON report)", {})]


def _cost(report: GateReport) -> Iterator[Line | Sep]:
    """The models' cost side by side (``--quant-cost``), ratios to the reference's."""
    if not report.cost:
        return
    yield Sep("quantgate: cost", {})
    table = [[h for h, _ in COST_COLUMNS], *([show(r) for _, show in COST_COLUMNS] for r in report.cost)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COST_COLUMNS))]
    for row in table:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        yield [("  ".join(cells), {})]
    yield [(cost_caption(report.cost), {})]


def _body(report: GateReport, width: int) -> Iterator[Line | Sep]:
    ref = report.config.reference
    if ref is None or not report.has_results:
        return
    partial = partial_note(report)
    partial_line: Line = [(partial, {"yellow": True, "bold": True})] if partial else []
    if report.reference_error is not None:
        yield Sep(f"quantgate: reference {ref.label} could not be loaded", {"red": True})
        for line in _load_error_lines(ref.display, ref.path, report.reference_error):
            yield [(line, {"red": True})]
        yield [("nothing was gated: the run stops", {"red": True})]
    elif not report.candidates:
        yield Sep(f"quantgate: reference {ref.label} only", {})
        if partial_line:
            yield partial_line
        passed, total = report.reference_passed, len(report.records)
        yield [(f"{passed}/{total} cases pass; give --quant-candidate to gate a model", {})]
    for gate in report.candidates if report.reference_error is None else ():
        yield from _candidate(report, gate, partial_line, width)
    if report.reference_error is None and len(report.candidates) >= 2:
        yield from matrix(report, width)


def _candidate(report: GateReport, gate: CandidateGate, partial: Line, width: int) -> Iterator[Line | Sep]:
    ref = report.config.reference
    assert ref is not None
    if not gate.evaluated:
        yield Sep(f"quantgate: {gate.display}: NOT EVALUATED", {"red": True})
        for line in _not_evaluated_lines(gate):
            yield [(line, {"red": True})]
        return
    verdict = gate.verdict
    assert verdict is not None
    yield Sep(
        f"quantgate: {gate.display} vs reference {ref.label}: {verdict.value}",
        {"red": True}
        if verdict is Verdict.REGRESSED
        else {"green": verdict is not Verdict.INCONCLUSIVE, "yellow": verdict is Verdict.INCONCLUSIVE},
    )
    if partial:
        yield partial
    yield from table(gate.rows, report.config.alpha, width)
    yield from divergence_lines(report, gate, width)
    if gate.errors:
        yield [(f"{gate.errors} case(s) with errors are left out of the statistics", {"red": True})]
    if gate.skipped:
        yield [(f"{gate.skipped} case(s) skipped by their check on the reference are left out", {})]
    if gate.inconclusive and not report.config.strict:
        names = ", ".join(gate.inconclusive)
        yield from wrapped(
            f"warning: INCONCLUSIVE ({names}): too few cases to rule out a drop beyond the "
            "tolerance; passing for now, --quant-strict fails them",
            width,
            {"yellow": True},
        )
    if gate.regressed:
        yield [(f"regressed cases ({len(gate.regressed)}):", {"bold": True})]
        labels = [ref.label, gate.label]
        for rec in gate.regressed[:MAX_CASES_SHOWN]:
            yield from _case_block(rec, labels, width)
        if len(gate.regressed) > MAX_CASES_SHOWN:
            more = len(gate.regressed) - MAX_CASES_SHOWN
            path = report.config.report_path
            where = f" (all in {path})" if path else " (--quant-report=PATH writes them all)"
            yield [(f"  ... and {more} more{where}", {})]
