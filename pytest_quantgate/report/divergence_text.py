"""Token divergence and the noise floor in the terminal: a second table per candidate.

Rendered from the report model (:class:`~.model.DivergenceRow`,
:class:`~.model.NoiseFloor`); nothing is computed here but formatting.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..core.divergence import TOP_K
from .text import Line, Sep, wrapped

if TYPE_CHECKING:
    from ..statistics.divergence import DivergenceSummary
    from .model import CandidateGate, DivergenceRow, GateReport

__all__ = [
    "divergence_html",
    "divergence_lines",
    "divergence_markdown",
    "format_kl",
    "noise_floor_html",
    "noise_floor_lines",
    "noise_floor_markdown",
]


def format_kl(x: float) -> str:
    """A KL divergence in nats, three significant digits (``inf`` as such)."""
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def _interval(s: DivergenceSummary) -> str:
    if not math.isfinite(s.high):
        return "-"
    return f"[{format_kl(max(s.low, 0.0) if s.low > -1e-12 else s.low)}, {format_kl(s.high)}]"


#: Columns of the divergence table: heading, cell of a row, and the order they are dropped in
#: when the terminal is narrow (higher first; 0 never).
_Cell = Callable[["DivergenceRow"], str]
_COLUMNS: tuple[tuple[str, _Cell, int], ...] = (
    ("slice", lambda r: r.slice, 0),
    ("cases", lambda r: str(r.summary.cases) if r.summary else "0", 0),
    ("tokens", lambda r: str(r.summary.tokens) if r.summary else "0", 4),
    ("mean KL", lambda r: format_kl(r.summary.mean_kl) if r.summary else "-", 0),
    ("interval", lambda r: _interval(r.summary) if r.summary else "-", 1),
    ("median", lambda r: format_kl(r.summary.median_kl) if r.summary else "-", 5),
    ("p90", lambda r: format_kl(r.summary.p90_kl) if r.summary else "-", 8),
    ("p99", lambda r: format_kl(r.summary.p99_kl) if r.summary else "-", 3),
    ("max", lambda r: format_kl(r.summary.max_kl) if r.summary else "-", 6),
    ("top-1", lambda r: f"{100 * r.summary.top1:.1f}%" if r.summary else "-", 0),
    ("mean Δp", lambda r: f"{100 * r.summary.mean_dp:+.2f}%" if r.summary else "-", 7),
    ("flips", lambda r: "-" if r.flips is None else f"{100 * r.flips:.1f}%", 2),
)


_FLOOR_COLUMN: tuple[str, _Cell, int] = (
    "floor KL",
    lambda r: format_kl(r.floor) if r.floor_measured else "-",
    2,
)


def _columns(report: GateReport) -> list[tuple[str, _Cell, int]]:
    """The divergence table's columns; the noise floor's mean KL last when it was measured."""
    return [*_COLUMNS, *([_FLOOR_COLUMN] if report.noise_floor is not None else [])]


def _unseen_note(rows: Sequence[DivergenceRow]) -> str | None:
    """The sentence for slices where divergence sees what accuracy cannot yet show; None when none."""
    unseen = [row for row in rows if row.unseen_damage]
    if not unseen:
        return None
    measured = all(row.floor_measured for row in unseen)
    floor_text = "measured" if measured else "0: not measured, see --quant-noise-floor"
    return (
        f"{', '.join(row.slice for row in unseen)}: accuracy is INCONCLUSIVE while the mean KL is "
        f"significantly above the noise floor ({floor_text}): divergence sees damage that accuracy "
        "cannot yet show"
    )


#: The noise floor's columns; the KL ones only when the reference was scored (--quant-divergence).
_NOISE_HEADS = ("slice", "cases", "flips", "changed outputs", "mean KL", "p99 KL", "top-1")
_NOISE_KL = ("mean KL", "p99 KL", "top-1")


def _noise_body(report: GateReport) -> list[list[str]]:
    """The noise floor's table as cells, headings first (its KL columns only when scored)."""
    assert report.noise_floor is not None
    rows = report.noise_floor.rows
    scored = any(r.divergence is not None for r in rows)
    heads = [h for h in _NOISE_HEADS if scored or h not in _NOISE_KL]
    body = [heads]
    for r in rows:
        d = r.divergence
        cells = [r.slice, str(r.cases), f"{r.flips} ({100 * r.flip_rate:.1f}%)", str(r.changed)]
        if scored:
            cells += [
                format_kl(d.mean_kl) if d else "-",
                format_kl(d.p99_kl) if d else "-",
                f"{100 * d.top1:.1f}%" if d else "-",
            ]
        body.append(cells)
    return body


def _joined(cells: Sequence[str], widths: Sequence[int]) -> str:
    """A table line: the first cell left-aligned, the others right-aligned."""
    return "  ".join(
        c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _table(report: GateReport, rows: Sequence[DivergenceRow], width: int) -> Iterator[Line]:
    columns = _columns(report)
    while True:
        body = [[h for h, _, _ in columns], *([cell(r) for _, cell, _ in columns] for r in rows)]
        widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
        droppable = [c for c in columns if c[2] > 0]
        if sum(widths) + 2 * (len(widths) - 1) <= width or not droppable:
            break
        columns.remove(max(droppable, key=lambda c: c[2]))
    for i, line in enumerate(body):
        text = _joined(line, widths)
        if i == 0:
            yield [(text, {"bold": True})]
            continue
        row = rows[i - 1]
        yield [(text, {"red": True, "bold": True} if row.exceeds else {"yellow": row.unseen_damage})]


def divergence_lines(report: GateReport, gate: CandidateGate, width: int) -> Iterator[Line]:
    """The candidate's token divergence table and what it says, under its accuracy table."""
    if not gate.divergence:
        return
    ref = report.config.reference
    yield from wrapped(
        f"token divergence from {ref.label if ref else 'the reference'} (teacher-forced on its replies; "
        f"KL in nats/token over its top-{TOP_K} tokens + the rest):",
        width,
        {"bold": True},
    )
    yield from _table(report, gate.divergence, width)
    total = next((d for d in gate.divergence if d.slice == "ALL"), gate.divergence[-1])
    if total.summary is not None and total.summary.worst is not None:
        case, kl = total.summary.worst
        yield [(f"largest mean KL: {format_kl(kl)} on", {})]
        yield [(f"  {case}", {})]  # whole: copied to find the case
    note = _unseen_note(gate.divergence)
    if note:
        yield from wrapped(f"note: {note}", width, {"yellow": True})
    for row in gate.divergence:
        s = row.summary
        if row.exceeds and s is not None:
            yield from wrapped(
                f"FAILED: slice {row.slice!r}: mean KL {format_kl(s.mean_kl)}, lower bound "
                f"{format_kl(s.low)}, is above its max_kl {s.threshold:g}",
                width,
                {"red": True, "bold": True},
            )
        if row.missing and row.unavailable:
            yield from wrapped(
                f"{row.slice}: {row.missing} case(s) without divergence: {row.unavailable}", width, {}
            )


def noise_floor_lines(report: GateReport, width: int) -> Iterator[Line | Sep]:
    """The reference against itself (``--quant-noise-floor``), and the warning when it is unstable."""
    floor = report.noise_floor
    if floor is None or not floor.rows:
        return
    ref = report.config.reference
    yield Sep(f"quantgate: noise floor: {ref.label if ref else 'the reference'} against itself", {})
    gated = [g for g in report.candidates if g.evaluated]

    def candidate_flips(gate: CandidateGate, name: str) -> str:
        row = next((r for r in gate.rows if r.slice == name), None)
        if row is None or not row.n:
            return "-"
        flips = row.regressions + row.improvements
        return f"{flips} ({100 * flips / row.n:.1f}%)"

    body = _noise_body(report)
    body[0] += [f"{g.label} flips" for g in gated]
    for line, r in zip(body[1:], floor.rows, strict=True):
        line += [candidate_flips(g, r.slice) for g in gated]
    # Narrow terminals lose these first; the flips, the reference's and the candidates', stay.
    for dropped in ("p99 KL", "top-1", "changed outputs", "mean KL"):
        widths = [max(len(line[i]) for line in body) for i in range(len(body[0]))]
        if sum(widths) + 2 * (len(widths) - 1) <= width:
            break
        if dropped in body[0]:
            at = body[0].index(dropped)
            body = [line[:at] + line[at + 1 :] for line in body]
    widths = [max(len(line[i]) for line in body) for i in range(len(body[0]))]
    for i, line in enumerate(body):
        text = _joined(line, widths)
        yield [(text, {"bold": i == 0})]
    yield from wrapped(
        "the reference run again at batch size 1 in reverse order (flips: cases whose pass/fail "
        "changed; the candidates' beside it): differences below this level between models are "
        "numerics of this hardware, not quantization",
        width,
        {},
    )
    warning = floor.warning()
    if warning:
        yield from wrapped(f"warning: {warning}", width, {"yellow": True, "bold": True})


# -- Markdown (the job summary) ----------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def divergence_markdown(report: GateReport, gate: CandidateGate) -> Iterator[str]:
    """The candidate's divergence table in Markdown, under its accuracy table (``--quant-divergence``)."""
    if not gate.divergence:
        return
    columns = _columns(report)
    yield ""
    yield f"Token divergence (KL in nats/token over the reference's top-{TOP_K} tokens + the rest):"
    yield ""
    yield "| " + " | ".join(h for h, _, _ in columns) + " |"
    yield "|---|" + "---:|" * (len(columns) - 1)
    for row in gate.divergence:
        cells = [cell(row) for _, cell, _ in columns]
        if row.exceeds:
            cells[0] = f"**{row.slice}** (above max_kl)"
        yield "| " + " | ".join(map(_md_cell, cells)) + " |"
    note = _unseen_note(gate.divergence)
    if note:
        yield ""
        yield f"_{_md_cell(note)}._"


def noise_floor_markdown(report: GateReport) -> Iterator[str]:
    """The reference against itself in Markdown (``--quant-noise-floor``), with its warning."""
    floor = report.noise_floor
    if floor is None or not floor.rows:
        return
    yield ""
    yield "### Noise floor: the reference against itself (batch size 1, reverse order)"
    yield ""
    heads, *rows = _noise_body(report)
    yield "| " + " | ".join(heads) + " |"
    yield "|---|" + "---:|" * (len(heads) - 1)
    for cells in rows:
        yield "| " + " | ".join(map(_md_cell, cells)) + " |"
    warning = floor.warning()
    if warning:
        yield ""
        yield f"> **warning**: {_md_cell(warning)}"


# -- HTML ----------------------------------------------------------------------------------------


def divergence_html(report: GateReport, gate: CandidateGate) -> Iterator[str]:
    """The candidate's divergence table in the HTML report, under its accuracy table."""
    if not gate.divergence:
        return
    columns = _columns(report)
    yield (
        f"<p>Token divergence from the reference, teacher-forced on its replies (KL in nats/token "
        f"over its top-{TOP_K} tokens + the rest):</p>"
    )
    yield "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in columns) + "</tr>"
    for row in gate.divergence:
        style = ' class="REGRESSED"' if row.exceeds else ""
        cells = "".join(f"<td>{html.escape(cell(row))}</td>" for _, cell, _ in columns)
        yield f"<tr{style}>{cells}</tr>"
    yield "</table>"
    note = _unseen_note(gate.divergence)
    if note:
        yield f'<p class="note">{html.escape(note)}.</p>'


def noise_floor_html(report: GateReport) -> Iterator[str]:
    """The reference against itself in the HTML report (``--quant-noise-floor``), with its warning."""
    floor = report.noise_floor
    if floor is None or not floor.rows:
        return
    yield "<h2>Noise floor: the reference against itself (batch size 1, reverse order)</h2>"
    heads, *rows = _noise_body(report)
    yield "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
    for cells in rows:
        yield "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
    yield "</table>"
    warning = floor.warning()
    if warning:
        yield f'<p class="note">warning: {html.escape(warning)}</p>'
