"""The HTML report (``--quant-html``): one self-contained file to open and share when a slice fails.

No network at view time: the CSS is inline and the plots are inline SVG (no
script, no font, no CDN). Per candidate: a forest plot of each slice's change
in accuracy with its one-sided bound against the tolerance band (the ALL row
last), the verdict table, and the regressed and improved cases with the
reference's and the candidate's outputs side by side (for a trajectory, every
turn, the step where the paths parted marked). Then the matrix with several
candidates, the models with their footprints, and the configuration. It
renders the report model and recomputes nothing.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..statistics.gate import Verdict
from ..values.files import atomic_write_text
from .divergence_text import divergence_html, noise_floor_html
from .markdown import headline
from .text import (
    COST_COLUMNS,
    SLICE_HEADINGS,
    VERDICT_LETTER,
    cost_caption,
    format_bytes,
    format_points,
    partial_note,
    slice_cells,
)

if TYPE_CHECKING:
    from ..core.records import CaseRecord
    from ..statistics.gate import SliceResult
    from .model import CandidateGate, GateReport

__all__ = ["forest_plot", "pareto_front", "quality_cost_plot", "render", "write"]

#: Cases of one kind (regressed, improved) shown per candidate; the JSON report has them all.
MAX_CASES = 200
#: Characters of one output shown.
OUTPUT_CHARS = 4_000
_COLOURS = {
    Verdict.REGRESSED: "#c62828",
    Verdict.PASS: "#2e7d32",
    Verdict.INCONCLUSIVE: "#b26a00",
    Verdict.IMPROVED: "#00838f",
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:72em;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}.REGRESSED{color:#c62828;font-weight:bold}.PASS{color:#2e7d32}
.INCONCLUSIVE{color:#b26a00}.IMPROVED{color:#00838f}.note{background:#fff8e1;padding:.5em 1em}
pre{white-space:pre-wrap;margin:0;font-size:12px}.case td{vertical-align:top;text-align:left;width:50%}
.parted{background:#ffebee}.fail{background:#fff3f3}ul.headlines li{margin:.2em 0}
"""


def render(report: GateReport) -> str:
    """The whole report as one HTML document."""
    body = "\n".join(_body(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>quantgate report</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write(report: GateReport, path: Path) -> None:
    """Write the report to ``path``, whole."""
    atomic_write_text(path, render(report))


def _body(report: GateReport) -> Iterator[str]:
    ref = report.config.reference
    yield "<h1>quantgate report</h1>"
    if ref is None:
        yield "<p>No reference model was given: nothing was gated.</p>"
        return
    state = "complete" if report.complete else "interrupted" if report.interrupted else "partial"
    verdict = "fails the run" if report.failed else "passes"
    yield f"<p>Reference <b>{_e(ref.display)}</b>; the gate {verdict}; the run is {state}.</p>"
    note = partial_note(report)
    if note:
        yield f'<p class="note">{_e(note)}</p>'
    if report.failures:
        yield "<p>The run fails because:</p>"
        yield "<ul>" + "".join(f"<li>{_e(f.message)}</li>" for f in report.failures) + "</ul>"
    if report.reference_error is not None:
        yield f"<h2>The reference could not be loaded</h2><pre>{_e(report.reference_error)}</pre>"
    yield '<ul class="headlines">'
    for gate in report.candidates:
        cls = "" if gate.verdict is None else gate.verdict.value
        yield f'<li class="{cls}">{_e(headline(gate))}</li>'
    yield "</ul>"
    for gate in report.candidates:
        yield from _candidate(report, gate)
    yield from noise_floor_html(report)
    if len(report.candidates) > 1:
        yield from _matrix(report)
    yield from _cost(report)
    yield from _models(report)
    yield "<h2>Configuration</h2>"
    yield f"<pre>{_e(json.dumps(report.config.to_dict(), indent=2, sort_keys=True))}</pre>"


def _candidate(report: GateReport, gate: CandidateGate) -> Iterator[str]:
    yield f'<h2 id="{_e(gate.label)}">{_e(gate.display)}: {_verdict(gate.verdict)}</h2>'
    if not gate.evaluated:
        yield f"<p>Not evaluated:</p><pre>{_e(gate.not_evaluated or '')}</pre>"
        return
    yield forest_plot(gate.rows, report.config.alpha)
    yield "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in SLICE_HEADINGS) + "</tr>"
    for r in gate.rows:
        cells = "".join(f"<td>{_e(c)}</td>" for c in slice_cells(r))
        yield f"<tr>{cells}<td>{_verdict(r.verdict)}</td></tr>"
    yield "</table>"
    yield from divergence_html(report, gate)
    yield from _cases(f"Regressed cases ({len(gate.regressed)})", gate.regressed, gate.label)
    yield from _cases(f"Improved cases ({len(gate.improved)})", gate.improved, gate.label)


def forest_plot(rows: Sequence[SliceResult], alpha: float) -> str:
    """An SVG forest plot: per row the change in accuracy (a dot) and its one-sided bound (a line
    towards the worst plausible change), against the tolerance (the band of changes the gate
    accepts). A row PASSes when its whole line lies inside the band."""
    shown = [r for r in rows if not math.isnan(r.drop)]
    if not shown:
        return "<p>No row has a case.</p>"
    worst = max((r.upper for r in shown if math.isfinite(r.upper)), default=0.0)
    best = max(-r.drop for r in shown)
    low = -max(worst, max(r.tolerance for r in shown), 0.05) * 1.1
    high = max(best, 0.02) * 1.1
    width, row_h, left, right, top = 640, 26, 130, 20, 30
    height = top + row_h * len(shown) + 30

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (width - left - right)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="forest" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="change in accuracy per slice">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>',
    ]
    tol = max(r.tolerance for r in shown)
    parts.append(
        f'<rect x="{x(-tol):.1f}" y="{top - 10}" width="{x(high) - x(-tol):.1f}" '
        f'height="{row_h * len(shown) + 10}" fill="#e8f5e9"/>'
    )
    zero = x(0.0)
    parts.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{top - 10}" y2="{height - 25}" stroke="#999"/>')
    parts.append(
        f'<text x="{x(-tol):.1f}" y="{top - 14}" font-size="11" text-anchor="middle" fill="#2e7d32">'
        f"-{format_points(tol)} pts (tolerance)</text>"
    )
    for i, r in enumerate(shown):
        y = top + row_h * i + row_h / 2
        colour = _COLOURS[r.verdict]
        label = "ALL" if r.is_total else r.slice
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{_e(label)}</text>'
        )
        # This row's own tolerance (the band is the widest one's).
        parts.append(
            f'<line x1="{x(-r.tolerance):.1f}" x2="{x(-r.tolerance):.1f}" y1="{y - 8:.1f}" y2="{y + 8:.1f}" '
            'stroke="#2e7d32" stroke-width="2"/>'
        )
        bound = -r.upper if math.isfinite(r.upper) else low
        parts.append(
            f'<line x1="{x(max(bound, low)):.1f}" x2="{x(-r.drop):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        parts.append(f'<circle cx="{x(-r.drop):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        parts.append(
            f'<text x="{width - right}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="{colour}">'
            f"{VERDICT_LETTER[r.verdict]}</text>"
        )
    confidence = f"{100 * (1 - alpha):g}"
    parts.append(
        f'<text x="{left}" y="{height - 8}" font-size="11" fill="#555">change in accuracy, points '
        f"(dot); line: to the {confidence}% one-sided bound of the drop; green tick: the tolerance</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _cases(title: str, records: Sequence[CaseRecord], candidate: str) -> Iterator[str]:
    if not records:
        return
    yield f"<h3>{_e(title)}</h3>"
    for record in records[:MAX_CASES]:
        yield from _case(record, candidate)
    if len(records) > MAX_CASES:
        yield f"<p>{len(records) - MAX_CASES} more in the JSON report.</p>"


def _case(record: CaseRecord, candidate: str) -> Iterator[str]:
    ref, cand = record.outcomes[record.reference], record.outcomes[candidate]
    yield f"<details><summary><code>{_e(record.nodeid)}</code></summary>"
    if record.params:
        args = ", ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in record.params.items()
        )
        yield f"<p>{_e(args)}</p>"
    yield '<table class="case"><tr>'
    yield f"<th>{_e(record.reference)} (reference, {_e(ref.outcome)})</th>"
    yield f"<th>{_e(candidate)} (candidate, {_e(cand.outcome)})</th></tr>"
    parted = record.divergence(candidate)
    if record.trajectory and (ref.transcript or cand.transcript):
        steps = max(len(ref.transcript), len(cand.transcript))
        for i in range(steps):
            here = parted is not None and parted["step"] == i + 1
            cls = ' class="parted"' if here else ""
            mark = " — the paths part here" if here else ""
            yield f"<tr{cls}><td colspan=2><b>step {i + 1}{mark}</b></td></tr>"
            yield f"<tr{cls}><td>{_turn(ref.transcript, i)}</td><td>{_turn(cand.transcript, i)}</td></tr>"
    else:
        if record.prompt:
            yield f"<tr><td colspan=2><b>prompt</b><pre>{_pre(record.prompt)}</pre></td></tr>"
        yield f"<tr><td><pre>{_pre(ref.output)}</pre></td>"
        yield f'<td class="fail"><pre>{_pre(cand.output)}</pre></td></tr>'
    messages = [m for m in (ref.message, cand.message) if m]
    if messages:
        yield (
            "<tr>" + "".join(f"<td><i>{_e(m or '')}</i></td>" for m in (ref.message, cand.message)) + "</tr>"
        )
    yield "</table></details>"


def _turn(transcript: Sequence[dict[str, Any]], i: int) -> str:
    if i >= len(transcript):
        return "<i>(had stopped)</i>"
    turn = transcript[i]
    prompt = turn["prompt"] if isinstance(turn["prompt"], str) else json.dumps(turn["prompt"])
    return f"<pre>{_pre(prompt)}</pre><b>reply</b><pre>{_pre(turn['reply'])}</pre>"


def _matrix(report: GateReport) -> Iterator[str]:
    matrix = report.matrix()
    yield "<h2>All candidates</h2><table><tr><th>slice</th>"
    yield "".join(f"<th>{_e(c.label)}</th>" for c in matrix.candidates) + "</tr>"
    for name, row in zip(matrix.slices, matrix.cells, strict=True):
        cells = "".join(
            "<td>–</td>"
            if cell is None
            else f'<td class="{cell.verdict.value}">{format_points(-cell.drop, signed=True)} '
            f"{VERDICT_LETTER[cell.verdict]}</td>"
            for cell in row
        )
        yield f"<tr><td>{_e(name)}</td>{cells}</tr>"
    weights = "".join(f"<td>{format_bytes(c.weight_bytes)}</td>" for c in matrix.candidates)
    reference = format_bytes(matrix.reference_weight_bytes)
    yield f"<tr><td>weights (reference {reference})</td>{weights}</tr></table>"


def _cost(report: GateReport) -> Iterator[str]:
    if not report.cost:
        return
    yield "<h2>Cost</h2><table><tr>" + "".join(f"<th>{_e(h)}</th>" for h, _ in COST_COLUMNS) + "</tr>"
    for row in report.cost:
        yield "<tr>" + "".join(f"<td>{_e(show(row))}</td>" for _, show in COST_COLUMNS) + "</tr>"
    yield f"</table><p>{_e(cost_caption(report.cost))}</p>"
    points: list[tuple[str, float, float, Verdict | None]] = []
    for row in report.cost:
        gate = next((g for g in report.candidates if g.label == row.label), None)
        total = next((r for r in gate.rows if r.is_total), None) if gate is not None else None
        if row.role == "reference":
            points.append((row.label, 1.0, 0.0, None))
        elif total is not None and row.weight_ratio is not None:
            points.append((row.label, row.weight_ratio, -total.drop, total.verdict))
    if len(points) > 1:
        yield quality_cost_plot(points)


def pareto_front(points: Sequence[tuple[str, float, float, Verdict | None]]) -> set[str]:
    """Labels no other point beats on both axes (cost lower or equal, change higher or equal)."""
    front = set()
    for label, cost, change, _ in points:
        beaten = any(
            c <= cost and d >= change and (c < cost or d > change)
            for other, c, d, _ in points
            if other != label
        )
        if not beaten:
            front.add(label)
    return front


def quality_cost_plot(points: Sequence[tuple[str, float, float, Verdict | None]]) -> str:
    """An SVG scatter: weight footprint (× the reference's) against the ALL row's change in accuracy,
    one point per model, the Pareto front joined and its points ringed."""
    width, height, left, bottom, top, right = 640, 320, 70, 40, 20, 20
    costs = [c for _, c, _, _ in points]
    changes = [d for _, _, d, _ in points]
    x_hi = max(costs) * 1.15
    y_lo, y_hi = min(min(changes), 0.0) - 0.01, max(max(changes), 0.0) + 0.01

    def x(v: float) -> float:
        return left + v / x_hi * (width - left - right)

    def y(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    front = pareto_front(points)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="scatter" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="quality against cost">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa"/>',
        f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>',
    ]
    on_front = sorted((c, d) for label, c, d, _ in points if label in front)
    if len(on_front) > 1:
        path = " ".join(f"{x(c):.1f},{y(d):.1f}" for c, d in on_front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#555" stroke-dasharray="4 3"/>')
    for label, c, d, verdict in points:
        colour = "#555" if verdict is None else _COLOURS[verdict]
        if label in front:
            parts.append(f'<circle cx="{x(c):.1f}" cy="{y(d):.1f}" r="9" fill="none" stroke="#555"/>')
        parts.append(f'<circle cx="{x(c):.1f}" cy="{y(d):.1f}" r="5" fill="{colour}"/>')
        parts.append(f'<text x="{x(c) + 10:.1f}" y="{y(d) - 8:.1f}" font-size="12">{_e(label)}</text>')
    parts.append(
        f'<text x="{left}" y="{height - 10}" font-size="11" fill="#555">weights, × the reference\'s '
        "(right: costlier); up: change in accuracy of all cases; ringed and joined: the Pareto front</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _models(report: GateReport) -> Iterator[str]:
    yield "<h2>Models</h2><table><tr><th>label</th><th>role</th><th>spec</th><th>device</th>"
    yield "<th>dtype</th><th>weights</th><th>quantization</th></tr>"
    for label, facts in report.models.items():
        weights = facts.get("weight_bytes")
        cells = [
            label,
            str(facts.get("role", "")),
            str(facts.get("spec", "")),
            str(facts.get("device", "")),
            str(facts.get("dtype", "")),
            format_bytes(weights if isinstance(weights, int) else None),
            json.dumps(facts.get("quantization")) if facts.get("quantization") else "",
        ]
        yield "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    yield "</table>"


def _verdict(verdict: Verdict | None) -> str:
    if verdict is None:
        return '<span class="REGRESSED">NOT EVALUATED</span>'
    return f'<span class="{verdict.value}">{verdict.value}</span>'


def _e(text: str) -> str:
    return html.escape(text)


def _pre(text: str) -> str:
    return html.escape(text if len(text) <= OUTPUT_CHARS else text[: OUTPUT_CHARS - 1] + "…")
