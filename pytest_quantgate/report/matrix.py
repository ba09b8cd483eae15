"""The candidates matrix of the terminal report: slices × candidates, fitted to a width.

Each cell is the change in accuracy and the verdict's letter; under the
slices, each model's weight footprint. Shown last in the terminal section
when there are two candidates or more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..statistics.gate import ALL
from .text import (
    DEFAULT_WIDTH,
    VERDICT_LETTER,
    VERDICT_MARKUP,
    Line,
    Markup,
    Sep,
    cut,
    format_bytes,
    format_points,
    partial_note,
    wrapped,
)

if TYPE_CHECKING:
    from .model import GateReport, MatrixCandidate, MatrixCell

__all__ = ["MATRIX_LABEL", "MATRIX_LABEL_MIN", "MATRIX_SLICE", "MATRIX_SLICE_MIN", "NO_CELL", "matrix"]

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
    return (
        f"Δ {format_points(-cell.drop, signed=True)} {VERDICT_LETTER[cell.verdict]}",
        VERDICT_MARKUP[cell.verdict],
    )


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
    shared = max((i + 1 for i, ch in enumerate(common) if ch in _SEPARATORS), default=0)
    out = []
    for label in labels:
        if len(label) > width and 0 < shared < len(label):
            label = "…" + label[shared:]
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
    partial = partial_note(report)
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
            line: Line = [(cut(name, sw).ljust(sw), {"bold": name == ALL})]
            for j in block:
                text, markup = row[j]
                line += [("  ", {}), (text.rjust(widths[j]), markup)]
            yield line
        yield [("  ".join([_WEIGHTS.ljust(sw), *(footer[j].rjust(widths[j]) for j in block)]), {})]
    yield from wrapped(
        "Δ: candidate − reference accuracy, pts; R regressed, P pass, ? inconclusive, I improved; "
        f"{NO_CELL}: not gated; weights: parameters and buffers in memory",
        width,
        {},
    )
