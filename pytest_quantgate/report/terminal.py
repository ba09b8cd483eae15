"""The terminal report: pure iterators of lines; the plugin prints them.

One table per candidate, slices as rows and an ALL row, fitted to the
terminal's width (columns dropped in a fixed order when it is narrow),
verdicts coloured; under it, in short lines, what the INCONCLUSIVE rows would
need and what the columns mean; then the regressed cases, each once, with
its prompt, arguments and every model's output. With two candidates or
more, a matrix last: slices × candidates, each cell the change in accuracy
and the verdict's letter, and each model's weight footprint.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.overlap import NGRAM, CalibrationOverlap
from ..core.records import Status
from ..statistics.gate import ALL, SliceResult, Verdict

if TYPE_CHECKING:
    from ..core.config import GateConfig
    from ..core.records import CaseRecord
    from .model import CandidateGate, GateReport, GateTest, MatrixCandidate, MatrixCell

__all__ = [
    "DEFAULT_WIDTH",
    "Line",
    "Sep",
    "case_lines",
    "format_bound",
    "format_bytes",
    "gate_test_lines",
    "header_lines",
    "matrix",
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
#: The width used when the terminal's is unknown.
DEFAULT_WIDTH = 80
#: Longest message of a load error shown, in lines (the JSON report has it all).
MAX_ERROR_LINES = 40


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
        f"quantgate: tolerance {_tol(config.tolerance)} pts, alpha {config.alpha:g}, "
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


# -- numbers -------------------------------------------------------------------


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _tol(x: float) -> str:
    """A margin in points, exactly as far as 4 decimals go, at least one decimal (2.0, 1.25)."""
    text = f"{100 * x:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def format_bound(upper: float, tolerance: float) -> str:
    """The upper bound of a drop, in points, rounded up, never on the wrong side of the margin.

    Rounded up at 0.1 points, so that the bound shown is never below the
    true one. A bound below the margin (a PASS) that this rounding would
    show at or above the margin gets more digits, up to 4 (``1.999``); past
    that it is shown as ``<`` the margin. A bound at or above the margin is
    shown at or above it by the rounding up alone.
    """
    if math.isnan(upper):
        return "-"
    if math.isinf(upper):
        return "inf"
    pts = 100 * upper
    tol_shown = float(_tol(tolerance))
    below = upper < tolerance
    for digits in range(1, 5):
        scale = 10**digits
        # The 1e-6 keeps float noise (4.9 stored as 4.9000000001) from rounding up a whole step.
        shown = math.ceil(pts * scale - 1e-6) / scale + 0.0
        if not below or shown < tol_shown:
            return f"{shown:.{digits}f}"
    return f"<{_tol(tolerance)}"


def format_bytes(n: int | None) -> str:
    """A footprint: MiB with one decimal, KiB under 1 MiB; ``?`` when unknown."""
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _p(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


# -- the table -----------------------------------------------------------------

COLUMNS = ("slice", "n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p", "verdict")
_RIGHT = {"n", "ref", "cand", "Δ pts", "SE", "drop≤", "tol", "−/+", "p"}
#: How a narrow table is made to fit, step by step: drop a column, or cut
#: slice names to a width. Columns not named here always stay.
FIT_STEPS: tuple[str | int, ...] = ("SE", "p", 14, "ref", "−/+", 6)


def _cells(row: SliceResult) -> dict[str, str]:
    return {
        "slice": row.slice,
        "n": str(row.n),
        "ref": _pct(row.ref_accuracy),
        "cand": _pct(row.cand_accuracy),
        "Δ pts": _pts(-row.drop if not math.isnan(row.drop) else row.drop, signed=True),
        "SE": _pts(row.se),
        "drop≤": format_bound(row.upper, row.tolerance),
        "tol": _tol(row.tolerance),
        "−/+": f"{row.regressions}/{row.improvements}",
        "p": _p(row.p_adjusted),
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


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(rows: Sequence[SliceResult], alpha: float, width: int = DEFAULT_WIDTH) -> Iterator[Line]:
    """The per-slice table of one candidate, fitted to ``width``, then its notes and legend."""
    body = [_cells(r) for r in rows]
    columns, widths = _fit(body, width)

    def fmt(cells: dict[str, str]) -> list[str]:
        return [
            _cut(cells[h], widths[h]).rjust(widths[h])
            if h in _RIGHT
            else _cut(cells[h], widths[h]).ljust(widths[h])
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
            yield from _wrapped(f"{row.slice}: {note}", width, {})
    level = round(100 * (1 - alpha))
    legend = {
        "Δ pts": "Δ: candidate − reference accuracy",
        "SE": "SE: its standard error",
        "drop≤": f"drop≤: {level}% upper bound of the drop, rounded up",
        "tol": "tol: margin",
        "−/+": "−/+: regressed/improved cases",
        "p": "p: one-sided, Holm-adjusted",
    }
    yield from _wrapped("; ".join(text for h, text in legend.items() if h in columns), width, {})


def _wrapped(text: str, width: int, markup: Markup) -> Iterator[Line]:
    for line in textwrap.wrap(text, width=max(width, 20), subsequent_indent="  ", break_on_hyphens=False):
        yield [(line, markup)]


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
        bits.append(f"detects drops ≥ {_pts(row.mdd)} pts")
    if row.n_needed is None:
        bits.append(f"no number of cases would show the drop < {_tol(row.tolerance)} pts")
    elif row.n_needed_for == Verdict.REGRESSED.value:
        bits.append(f"~{row.n_needed} cases would confirm a drop > {_tol(row.tolerance)} pts")
    else:
        bits.append(f"~{row.n_needed} cases would show the drop < {_tol(row.tolerance)} pts")
    return "; ".join(bits)


# -- cases ---------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    return _cut(repr(text), max(width, 12))


def case_lines(record: CaseRecord, width: int = DEFAULT_WIDTH) -> Iterator[str]:
    """Both models' outputs and check results for one case (the failure of its test)."""
    statuses = record.statuses
    worst = record.worst
    if worst is Status.ERROR:
        yield f"quantgate: case error in {record.nodeid} (an exception other than AssertionError)"
    elif worst is Status.FAILED:
        yield "quantgate: the reference fails this case (no candidate given)"
    elif worst is Status.REGRESSED:
        critical = " (critical)" if record.critical else ""
        yield f"quantgate: case regressed{critical}: the reference passes, a candidate fails"
    if record.prompt:
        yield f"  prompt: {_short(record.prompt, width - 10)}"
    for label, outcome in record.outcomes.items():
        role = "reference" if label == record.reference else f"candidate {statuses[label]}"
        yield f"  {label} [{role.strip()}]: {outcome.outcome}  output={_short(outcome.output, width - 30)}"
        if outcome.message:
            for i, line in enumerate(outcome.message.splitlines()[:6]):
                yield f"      {'' if i else '→ '}{line}"
        parted = _parted(record, label) if label != record.reference else None
        if parted:
            yield f"      parted from the reference at {parted}"


def _case_block(rec: CaseRecord, labels: Sequence[str], width: int) -> Iterator[Line]:
    """One regressed case: its id, prompt, arguments and every model's output, aligned."""
    crit = " [critical]" if rec.critical else ""
    yield [(_cut(f"  R {rec.nodeid}{crit}", width), {"yellow": True})]
    fields = [("prompt", rec.prompt)] if rec.prompt else []
    fields += [(name, value) for name, value in rec.params.items()]
    fields += [(label, repr(rec.outcomes[label].output)) for label in labels if label in rec.outcomes]
    parted = _parted(rec, labels[-1])
    if parted:
        fields.append(("parted", parted))
    key_width = min(max(len(k) for k, _ in fields), 16)
    room = width - 6 - key_width - 2
    for key, value in fields:
        shown = repr(value) if key == "prompt" else value
        yield [(f"      {_cut(key, key_width).ljust(key_width)}  {_cut(shown, max(room, 12))}", {})]


def _parted(rec: CaseRecord, candidate: str) -> str | None:
    """Where a trajectory's replies parted: ``step 3 of 6: ref 'a' | cand 'b'``."""
    d = rec.divergence(candidate)
    if d is None:
        return None
    steps = len(rec.outcomes[rec.reference].transcript)

    def said(reply: str | None) -> str:
        return "(had stopped)" if reply is None else repr(reply)

    where = f"step {d['step']} of {steps}" if steps else f"step {d['step']}"
    text = f"{where}: {rec.reference} {said(d['reference'])} | {candidate} {said(d['candidate'])}"
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
        f"  accuracy {_pct(row.ref_accuracy)} → {_pct(row.cand_accuracy)} "
        f"(Δ {_pts(-row.drop, signed=True)} pts, SE {_pts(row.se)}) on {row.n} cases"
    )
    yield (
        f"  drop ≤ {format_bound(row.upper, row.tolerance)} pts at {round(100 * (1 - row.alpha))}% "
        f"confidence; tolerance {_tol(row.tolerance)} pts; p = {_p(row.p_adjusted)}"
        + (" (Holm)" if not row.is_total else "")
    )
    yield f"  {row.regressions} regressed, {row.improvements} improved"
    if row.regressions:
        # Listed once, in the quantgate summary: not again under every row they belong to.
        yield "  (regressed cases: see the quantgate summary, with prompts and outputs)"
    if row.verdict is Verdict.INCONCLUSIVE:
        yield f"  inconclusive, which fails under --quant-strict: {_note(row)}"


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


# -- the matrix ----------------------------------------------------------------

#: A verdict in a matrix cell: one letter.
VERDICT_LETTER: dict[Verdict, str] = {
    Verdict.REGRESSED: "R",
    Verdict.PASS: "P",
    Verdict.INCONCLUSIVE: "?",
    Verdict.IMPROVED: "I",
}
#: A matrix cell with nothing in it: the candidate has no such row.
NO_CELL = "—"
#: Candidate labels longer than this are cut in a matrix column's heading...
MATRIX_LABEL = 16
#: ... and down to this many characters when that saves a block of columns.
MATRIX_LABEL_MIN = 8
#: Slice names longer than this are cut in the matrix (the tables have them whole)...
MATRIX_SLICE = 24
#: ... and down to this many characters when that saves a block of columns.
MATRIX_SLICE_MIN = 12
_WEIGHTS = "weights"
_SEPARATORS = "-_./: "


def _matrix_cell(cell: MatrixCell | None) -> tuple[str, Markup]:
    if cell is None:
        return NO_CELL, {}
    return f"Δ {_pts(-cell.drop, signed=True)} {VERDICT_LETTER[cell.verdict]}", VERDICT_MARKUP[cell.verdict]


def _abbreviated(labels: Sequence[str], width: int) -> list[str]:
    """Labels in ``width`` characters: what all of them start with goes first, then the middle.

    Labels made from checkpoint names (``Qwen2.5-7B-Instruct-GPTQ-Int4``,
    ``Qwen2.5-7B-Instruct-AWQ``) differ at their ends: a prefix that every
    label shares, up to a separator, is dropped from the long ones
    (``…GPTQ-Int4``); one still too long loses its middle.
    """
    common = labels[0] if len(labels) > 1 else ""
    for label in labels[1:]:
        while not label.startswith(common):
            common = common[:-1]
    cut = max((i + 1 for i, ch in enumerate(common) if ch in _SEPARATORS), default=0)
    out = []
    for label in labels:
        if len(label) > width and 0 < cut < len(label):
            label = "…" + label[cut:]
        if len(label) > width:
            tail = (width - 1) // 2
            label = label[: width - 1 - tail] + "…" + (label[-tail:] if tail else "")
        out.append(label)
    return out


def _blocks(widths: Sequence[int], room: int) -> list[list[int]]:
    """Column indexes in blocks that each fit ``room`` (two spaces before each column)."""
    blocks: list[list[int]] = []
    used = 0
    for j, w in enumerate(widths):
        if not blocks or used + 2 + w > room:
            blocks.append([])
            used = 0
        blocks[-1].append(j)
        used += 2 + w
    return blocks


@dataclass(frozen=True)
class _Layout:
    """How a matrix fits a width: its slice column, headings and columns, in blocks."""

    slice_width: int
    headings: list[str]
    widths: list[int]
    blocks: list[list[int]]


def _layout(
    names: Sequence[str], candidates: Sequence[MatrixCandidate], texts: Sequence[Sequence[str]], width: int
) -> _Layout:
    """The fewest blocks of columns that fit ``width``; for that, the least cut names and labels.

    ``texts[j]`` are the cells and the footer of column ``j``. Slice names are
    cut first (to :data:`MATRIX_SLICE_MIN`), then labels, a character at a
    time (to :data:`MATRIX_LABEL_MIN`); then columns wrap into blocks.
    """
    natural = min(max(len(n) for n in (*names, _WEIGHTS)), MATRIX_SLICE)
    labels = [c.label for c in candidates]
    options = []
    for label_width in range(MATRIX_LABEL, MATRIX_LABEL_MIN - 1, -1):
        headings = [
            label if c.unevaluated is None else f"{label} ({c.unevaluated})"
            for label, c in zip(_abbreviated(labels, label_width), candidates, strict=True)
        ]
        widths = [max(len(h), *(len(t) for t in col)) for h, col in zip(headings, texts, strict=True)]
        for slice_width in dict.fromkeys((natural, min(natural, MATRIX_SLICE_MIN))):
            # A single column beside the slices must fit, whatever it costs the slice names.
            fitted = max(min(slice_width, width - 2 - max(widths)), len(_WEIGHTS))
            options.append(_Layout(fitted, headings, widths, _blocks(widths, width - fitted)))
    return min(options, key=lambda layout: len(layout.blocks))  # the first of the fewest: the least cut


def matrix(report: GateReport, width: int = DEFAULT_WIDTH) -> Iterator[Line | Sep]:
    """Slices × candidates: each cell ``Δ -3.1 R`` (points, verdict letter), then each weight footprint.

    Rendered from :meth:`~.model.GateReport.matrix` alone. A candidate that
    was not evaluated has ``—`` cells and says why in its heading. What does
    not fit ``width`` is cut (slice names, then labels), then wraps into
    further blocks of columns, each with the slice column again.
    """
    data = report.matrix()
    if not data.candidates:
        return
    cells = [[_matrix_cell(c) for c in row] for row in data.cells]
    footer = [format_bytes(c.weight_bytes) for c in data.candidates]
    texts = [[*(row[j][0] for row in cells), footer[j]] for j in range(len(data.candidates))]
    layout = _layout(data.slices, data.candidates, texts, width)
    sw, widths = layout.slice_width, layout.widths

    ref = f"reference {data.reference} (weights {format_bytes(data.reference_weight_bytes)})"
    yield Sep(f"quantgate: {len(data.candidates)} candidates vs {ref}")
    partial = _partial(report)
    if partial:
        yield [(partial, {"yellow": True, "bold": True})]
    for b, block in enumerate(layout.blocks):
        if b:
            yield []
        headings = [layout.headings[j].rjust(widths[j]) for j in block]
        yield [("  ".join(["slice".ljust(sw), *headings]), {"bold": True})]
        for name, row in zip(data.slices, cells, strict=True):
            if name == ALL:
                yield [("  ".join("─" * w for w in [sw, *(widths[j] for j in block)]), {})]
            line: Line = [(_cut(name, sw).ljust(sw), {"bold": name == ALL})]
            for j in block:
                text, markup = row[j]
                line += [("  ", {}), (text.rjust(widths[j]), markup)]
            yield line
        yield [("  ".join([_WEIGHTS.ljust(sw), *(footer[j].rjust(widths[j]) for j in block)]), {})]
    yield from _wrapped(
        "Δ: candidate − reference accuracy, pts; R regressed, P pass, ? inconclusive, I improved; "
        f"{NO_CELL}: not gated; weights: parameters and buffers in memory",
        width,
        {},
    )


# -- the whole section -----------------------------------------------------------


def _partial(report: GateReport) -> str | None:
    """Why the tables below are not the gate of the whole suite, or None."""
    sel = report.selection
    ran = f"{sel.ran} quant case(s) ran"
    if report.interrupted:
        return f"interrupted: {ran} before the run stopped; these rows are not the gate's verdict"
    if report.complete:
        return None
    why = ", ".join(sel.narrowed_by)
    of = f" of {sel.collected} collected" if sel.collected is not None and sel.counted else ""
    if sel.stopped:
        return f"partial run: {ran}{of}; stopped early ({sel.stopped})"
    narrowed = not sel.counted or (sel.collected or 0) > (sel.selected or 0)
    if narrowed:
        return f"partial run: {ran}{of}" + (f", selected by {why}" if why else "")
    if sel.selected is not None and sel.ran + sel.skipped < sel.selected:
        return f"partial run: {ran} of {sel.selected} selected"
    unloaded = [label for label, facts in report.models.items() if "load_error" in facts]
    if unloaded:
        return f"partial run: {', '.join(unloaded)} could not be loaded"
    return f"partial run: {ran}"


def summary(
    report: GateReport, width: int = DEFAULT_WIDTH, write_error: str | None = None
) -> Iterator[Line | Sep]:
    """The whole terminal section: per candidate a table and its regressions.

    Args:
        report: The report model.
        width: The terminal's width, which every line fits (long ids and
            paths aside).
        write_error: Why the JSON report could not be written, if it could not.
    """
    yield from _body(report, width)
    yield from _calibration_lines(report.calibration_overlap, width)
    path = report.config.report_path
    if write_error is not None:
        yield [(write_error, {"red": True, "bold": True})]
    elif path is not None:
        state = "complete" if report.complete else "incomplete"
        yield [(f"quantgate: JSON report ({state}) written to {path}", {})]


def _calibration_lines(found: CalibrationOverlap | None, width: int) -> Iterator[Line]:
    """What the calibration-overlap check found: a warning above its threshold, else one plain line."""
    if found is None:
        return
    share = f"{len(found.overlapping)} of {found.cases} cases ({100 * found.share:.1f}%)"
    if not found.warns:
        yield [(f"quantgate: calibration file {found.file}: {share} found in its texts", {})]
        return
    yield from _wrapped(
        f"warning: {share} appear in the calibration file (a shared {NGRAM}-word run, or the whole "
        "prompt): the candidates were fitted to cases that judge them, and their verdicts may be "
        "optimistic",
        width,
        {"yellow": True, "bold": True},
    )
    yield [(f"  file: {found.file}", {"yellow": True})]
    for nodeid in found.overlapping[:MAX_CASES_SHOWN]:
        yield [(_cut(f"  {nodeid}", width), {"yellow": True})]
    if len(found.overlapping) > MAX_CASES_SHOWN:
        yield [(f"  ... and {len(found.overlapping) - MAX_CASES_SHOWN} more (all in the JSON report)", {})]


def _body(report: GateReport, width: int) -> Iterator[Line | Sep]:
    ref = report.config.reference
    if ref is None or not report.has_results:
        return
    partial = _partial(report)
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
    if gate.errors:
        yield [(f"{gate.errors} case(s) with errors are left out of the statistics", {"red": True})]
    if gate.skipped:
        yield [(f"{gate.skipped} case(s) skipped by their check on the reference are left out", {})]
    if gate.inconclusive and not report.config.strict:
        names = ", ".join(gate.inconclusive)
        yield from _wrapped(
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
