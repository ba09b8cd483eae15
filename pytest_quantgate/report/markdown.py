"""The Markdown report: what a CI job's summary page shows (``$GITHUB_STEP_SUMMARY``, ``--quant-markdown``).

A headline per candidate, each candidate's slice table (Δ and its upper
bound against the tolerance, the Holm-adjusted p-value, the verdict), the
matrix when there are several candidates, and the regressed cases in
``<details>`` blocks with every model's output (for a trajectory, the step
where the paths parted). It renders the report model and recomputes nothing:
every number is formatted from the same row the JSON report writes.

GitHub drops a step summary above 1 MiB whole: the cases, last, are cut to
stay under :data:`MAX_BYTES`, saying how many were left out and where the
JSON report has them all.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..statistics.gate import Verdict
from ..values.files import atomic_write_text
from . import perplexity
from .divergence_text import divergence_markdown, noise_floor_markdown
from .text import (
    COST_COLUMNS,
    SLICE_HEADINGS,
    VERDICT_LETTER,
    cost_caption,
    format_bytes,
    format_p,
    format_points,
    partial_note,
    slice_cells,
)

if TYPE_CHECKING:
    from ..core.records import CaseRecord
    from ..statistics.gate import SliceResult
    from .model import CandidateGate, GateReport

__all__ = ["MAX_BYTES", "append", "headline", "render", "write"]

#: GitHub's limit of one step summary is 1 MiB; the report stays under it with room to spare.
MAX_BYTES = 1_000_000
#: Characters of one output shown in a case's block (the JSON report has them whole).
OUTPUT_CHARS = 2_000


def headline(gate: CandidateGate) -> str:
    """One line for a candidate: ``rtn2: REGRESSED on arith (-15.0 pts, p = 0.004)``."""
    if not gate.evaluated or gate.verdict is None:
        why = (gate.not_evaluated or "").strip().splitlines()
        return f"{gate.label}: NOT EVALUATED ({why[0] if why else 'no reason given'})"
    slices = [r for r in gate.rows if not r.is_total]
    named = [r for r in gate.rows if r.verdict is gate.verdict]
    if gate.verdict is Verdict.REGRESSED:
        where = ", ".join(f"{_row_name(r)} ({_delta(r)} pts, p = {format_p(r.p_adjusted)})" for r in named)
        return f"{gate.label}: REGRESSED on {where}"
    if gate.verdict is Verdict.INCONCLUSIVE:
        where = ", ".join(_row_name(r) for r in named)
        return (
            f"{gate.label}: INCONCLUSIVE on {where} (too few cases to rule out a drop beyond the tolerance)"
        )
    noun = "slice" if len(slices) == 1 else "slices"
    return f"{gate.label}: {gate.verdict.value} on {len(slices)} {noun}"


def render(report: GateReport, *, json_path: Path | None = None, limit: int = MAX_BYTES) -> str:
    """The whole Markdown report, at most ``limit`` bytes (UTF-8)."""
    head = "\n".join(_head(report)) + "\n"
    cases = list(_cases(report))
    tail_room = 400  # the line that says what was cut
    out = [head]
    size = len(head.encode())
    shown = 0
    for block in cases:
        need = len(block.encode())
        if size + need + tail_room > limit:
            break
        out.append(block)
        size += need
        shown += 1
    if shown < len(cases):
        where = f" ({json_path})" if json_path is not None else ""
        out.append(
            f"\n_{len(cases) - shown} of {len(cases)} regressed cases left out to stay under GitHub's "
            f"1 MiB limit of a step summary: the JSON report{where} has every case._\n"
        )
    return "".join(out)


def write(report: GateReport, path: Path, json_path: Path | None = None) -> None:
    """Write the report to ``path`` (whole, replacing what was there)."""
    atomic_write_text(path, render(report, json_path=json_path))


def append(report: GateReport, path: Path, json_path: Path | None = None) -> None:
    """Append the report to ``path`` (a step summary collects every step's), under the limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        used = path.stat().st_size
    except OSError:
        used = 0
    text = render(report, json_path=json_path, limit=max(MAX_BYTES - used, 10_000))
    with path.open("a", encoding="utf-8") as fh:
        fh.write(("\n" if used else "") + text)


# -- sections --------------------------------------------------------------------


def _head(report: GateReport) -> Iterator[str]:
    ref = report.config.reference
    yield "## quantgate"
    yield ""
    if ref is None:
        yield "No reference model was given (`--quant-reference`): nothing was gated."
        return
    if report.reference_error is not None:
        first = report.reference_error.strip().splitlines()
        yield f"**The reference {_md(ref.label)} could not be loaded**: {_md(first[0] if first else '')}"
        yield ""
        yield "Nothing was gated."
        return
    for gate in report.candidates:
        yield f"- **{_md(headline(gate))}**"
    if not report.candidates:
        passed = report.reference_passed
        yield f"- reference {_md(ref.label)} only: {passed}/{len(report.records)} cases pass"
    note = partial_note(report)
    if note:
        yield ""
        yield f"> {_md(note)}"
    for gate in report.candidates:
        if gate.evaluated:
            yield ""
            yield f"### {_md(gate.display)} vs reference {_md(ref.label)}: {gate.verdict}"
            yield ""
            yield from _table(gate.rows)
            yield from divergence_markdown(report, gate)
    yield from noise_floor_markdown(report)
    if len(report.candidates) > 1:
        yield ""
        yield from _matrix(report)
    if report.cost:
        yield ""
        yield "### Cost"
        yield ""
        yield "| " + " | ".join(h for h, _ in COST_COLUMNS) + " |"
        yield "|---|" + "---:|" * (len(COST_COLUMNS) - 1)
        for row in report.cost:
            yield "| " + " | ".join(_md(show(row)) for _, show in COST_COLUMNS) + " |"
        yield ""
        yield f"_{_md(cost_caption(report.cost))}_"
    yield from perplexity.markdown_section(report)
    if any(gate.regressed for gate in report.candidates):
        yield ""
        yield "### Regressed cases"
        yield ""


def _table(rows: Sequence[SliceResult]) -> Iterator[str]:
    yield "| " + " | ".join(SLICE_HEADINGS) + " |"
    yield "|---|" + "---:|" * (len(SLICE_HEADINGS) - 2) + "---|"
    for r in rows:
        verdict = f"**{r.verdict.value}**" if r.verdict is Verdict.REGRESSED else r.verdict.value
        yield "| " + " | ".join([*map(_md, slice_cells(r)), verdict]) + " |"


def _matrix(report: GateReport) -> Iterator[str]:
    matrix = report.matrix()
    yield "### All candidates"
    yield ""
    yield "| slice | " + " | ".join(_md(c.label) for c in matrix.candidates) + " |"
    yield "|---|" + "---:|" * len(matrix.candidates)
    for name, row in zip(matrix.slices, matrix.cells, strict=True):
        cells = [
            "–"
            if cell is None
            else f"{format_points(-cell.drop, signed=True)} {VERDICT_LETTER[cell.verdict]}"
            for cell in row
        ]
        yield f"| {_md(name)} | " + " | ".join(cells) + " |"
    weights = [format_bytes(c.weight_bytes) for c in matrix.candidates]
    ref_weights = format_bytes(matrix.reference_weight_bytes)
    yield f"| weights (reference {ref_weights}) | " + " | ".join(weights) + " |"
    yield ""
    yield (
        "Cells: change in accuracy in points, then the verdict "
        "(R regressed, P pass, ? inconclusive, I improved)."
    )


def _cases(report: GateReport) -> Iterator[str]:
    for gate in report.candidates:
        for record in gate.regressed:
            yield _case_block(record, gate.label)


def _case_block(record: CaseRecord, candidate: str) -> str:
    lines = [
        f"<details><summary>{html.escape(candidate)}: <code>{html.escape(record.nodeid)}</code></summary>",
        "",
    ]
    if record.prompt:
        lines.append(f"<b>prompt</b><pre>{_pre(record.prompt)}</pre>")
    for name, value in record.params.items():
        lines.append(f"<b>{html.escape(name)}</b> <code>{html.escape(str(value))}</code><br>")
    parted = record.divergence(candidate)
    if parted is not None:
        lines.append(f"<b>parted at step {parted['step']}</b>:<br>")
        for label, reply in ((record.reference, parted["reference"]), (candidate, parted["candidate"])):
            said = "(had stopped)" if reply is None else reply
            lines.append(f"{html.escape(label)}<pre>{_pre(str(said))}</pre>")
    for label in (record.reference, candidate):
        outcome = record.outcomes[label]
        role = "reference" if label == record.reference else "candidate"
        lines.append(
            f"<b>{html.escape(label)}</b> ({role}, {outcome.outcome})<pre>{_pre(outcome.output)}</pre>"
        )
        if outcome.message:
            lines.append(f"<i>{html.escape(outcome.message.splitlines()[0])}</i><br>")
    lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


# -- formatting -------------------------------------------------------------------


def _row_name(row: SliceResult) -> str:
    return "ALL" if row.is_total else row.slice


def _delta(row: SliceResult) -> str:
    """The change in accuracy, in points (negative: the candidate is worse), as the JSON's ``drop``."""
    return format_points(-row.drop, signed=True)


def _md(text: str) -> str:
    """Text in a Markdown table cell or line: pipes escaped, no line breaks, no HTML."""
    return html.escape(text.replace("\n", " ")).replace("|", "\\|")


def _pre(text: str) -> str:
    shown = text if len(text) <= OUTPUT_CHARS else text[: OUTPUT_CHARS - 1] + "…"
    return html.escape(shown)
