"""The text primitives of the terminal report: lines, markup and how numbers show.

Shared by the per-candidate tables (:mod:`.terminal`) and the candidates
matrix (:mod:`.matrix`), so that a number, a verdict or a cut name reads the
same in both.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..statistics.gate import SliceResult, Verdict

if TYPE_CHECKING:
    from .model import CostRow, GateReport

__all__ = [
    "COST_COLUMNS",
    "DEFAULT_WIDTH",
    "SLICE_HEADINGS",
    "VERDICT_LETTER",
    "VERDICT_MARKUP",
    "Line",
    "Markup",
    "Sep",
    "cost_caption",
    "cut",
    "cut_middle",
    "format_bound",
    "format_bytes",
    "format_p",
    "format_percent",
    "format_points",
    "format_ratio",
    "format_tolerance",
    "partial_note",
    "short_repr",
    "slice_cells",
    "wrapped",
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
#: A verdict in a matrix cell: one letter.
VERDICT_LETTER: dict[Verdict, str] = {
    Verdict.REGRESSED: "R",
    Verdict.PASS: "P",
    Verdict.INCONCLUSIVE: "?",
    Verdict.IMPROVED: "I",
}
#: The width used when the terminal's is unknown.
DEFAULT_WIDTH = 80


@dataclass(frozen=True)
class Sep:
    """A section heading (``=== title ===``)."""

    title: str
    markup: Markup = field(default_factory=dict)


# -- numbers -------------------------------------------------------------------


def format_points(x: float | None, signed: bool = False) -> str:
    """An accuracy or a change of it in points, one decimal; ``-`` when unknown."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def format_tolerance(x: float) -> str:
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
    tol_shown = float(format_tolerance(tolerance))
    below = upper < tolerance
    for digits in range(1, 5):
        scale = 10**digits
        # The 1e-6 keeps float noise (4.9 stored as 4.9000000001) from rounding up a whole step.
        shown = math.ceil(pts * scale - 1e-6) / scale + 0.0
        if not below or shown < tol_shown:
            return f"{shown:.{digits}f}"
    return f"<{format_tolerance(tolerance)}"


def format_bytes(n: int | None) -> str:
    """A footprint: MiB with one decimal, KiB under 1 MiB; ``?`` when unknown."""
    if n is None:
        return "?"
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def format_percent(x: float | None) -> str:
    """An accuracy in percent, one decimal; ``-`` when unknown."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def format_p(x: float | None) -> str:
    """A p-value: three decimals, two significant digits below 0.001; ``-`` when unknown."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


#: The headings of a candidate's slice table in the Markdown and HTML reports (the verdict last).
SLICE_HEADINGS = ("slice", "n", "ref", "cand", "Δ pts", "drop bound", "tolerance", "p (Holm)", "verdict")


def slice_cells(row: SliceResult) -> list[str]:
    """A slice row's cells under :data:`SLICE_HEADINGS`, but the verdict (each writer marks it up)."""
    return [
        "ALL" if row.is_total else row.slice,
        str(row.n),
        format_percent(row.ref_accuracy),
        format_percent(row.cand_accuracy),
        format_points(-row.drop, signed=True),
        format_bound(row.upper, row.tolerance),
        format_points(row.tolerance),
        format_p(row.p_adjusted),
    ]


def format_ratio(x: float | None) -> str:
    """A ratio to the reference's: ``×0.42``; ``-`` when unknown."""
    return "-" if x is None or math.isnan(x) else f"×{x:.2f}"


#: The cost table's columns (a heading, and how a row shows it), shared by every writer.
COST_COLUMNS: tuple[tuple[str, Callable[[CostRow], str]], ...] = (
    ("model", lambda r: r.label),
    ("tok/s", lambda r: f"{r.tokens_per_second:.0f} @{r.batch_size}"),
    ("×ref", lambda r: format_ratio(r.speed_ratio)),
    ("1st token", lambda r: f"{1000 * r.first_token_seconds:.1f} ms"),
    ("latency p50/p95", lambda r: f"{1000 * r.latency_p50:.0f}/{1000 * r.latency_p95:.0f} ms"),
    ("×ref", lambda r: format_ratio(r.latency_ratio)),
    ("peak memory", lambda r: format_bytes(r.peak_memory_bytes)),
    ("weights", lambda r: format_bytes(r.weight_bytes)),
    ("×ref", lambda r: format_ratio(r.weight_ratio)),
)


def cost_caption(rows: Sequence[CostRow]) -> str:
    """What the cost table measured, in one line."""
    first = rows[0]
    memory = "device peak" if first.memory == "device" else "rise of the process's peak RSS"
    return (
        f"cost: {first.new_tokens} new tokens per request on {first.prompts} of the suite's prompts, "
        f"medians after a warm-up; tok/s: decode rate at the largest batch; memory: {memory}"
    )


# -- text ----------------------------------------------------------------------


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending in ``…`` when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def cut_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle replaced by ``…`` when cut.

    For text whose both ends matter: a multi-step prompt holds the rule it
    was given at its start and the newest request at its end.
    """
    if len(text) <= width:
        return text
    tail = max(width - 1, 0) // 2
    return text[: max(width - 1 - tail, 0)] + "…" + (text[-tail:] if tail else "")


def short_repr(text: str, width: int) -> str:
    """The repr of a prompt or an output, cut to ``width`` (never under 12)."""
    return cut(repr(text), max(width, 12))


def wrapped(text: str, width: int, markup: Markup) -> Iterator[Line]:
    """``text`` wrapped to ``width`` (never under 20), the lines after the first indented."""
    for line in textwrap.wrap(text, width=max(width, 20), subsequent_indent="  ", break_on_hyphens=False):
        yield [(line, markup)]


def partial_note(report: GateReport) -> str | None:
    """Why the tables below are not the gate of the whole suite, or None.

    Both the tables and the matrix head with it: either may be read alone.
    """
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
