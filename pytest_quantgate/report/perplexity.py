"""Perplexity in the report (``--quant-ppl-corpus``; issue 19): the section, its failures, its lines.

The executor leaves each model's run in its facts
(``models[label]["perplexity"]``, :meth:`~..core.perplexity.PerplexityRun.to_dict`,
or ``{"error": line}``). :func:`attach` turns them into a
:class:`PerplexitySection` — each candidate compared with the reference
under one protocol (:func:`~..core.perplexity.compare`) — and adds a
failure per candidate the ratio margin fails; the writers render the
section with :func:`terminal_lines` and :func:`markdown_lines` and the JSON
report holds :meth:`PerplexitySection.to_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..core.perplexity import PerplexityComparison, PerplexityRun, ProtocolMismatch, compare
from ..statistics.gate import Verdict
from .model import Failure, FailureKind, GateReport
from .text import DEFAULT_WIDTH, Line, Sep, wrapped

__all__ = [
    "CandidatePerplexity",
    "ModelPerplexity",
    "PerplexitySection",
    "attach",
    "markdown_lines",
    "markdown_section",
    "section",
    "terminal_lines",
    "terminal_section",
]


@dataclass(frozen=True)
class ModelPerplexity:
    """One model's perplexity, or why it has none.

    Attributes:
        label: The model's label; role: ``reference`` or ``candidate``.
        run: Its run; None when it has none.
        error: Why it has none (one line), when it has none.
    """

    label: str
    role: str
    run: PerplexityRun | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.run is None:
            return {"label": self.label, "role": self.role, "error": self.error}
        run = self.run.to_dict()
        run.pop("windows")  # per window: in the model's facts (models[label]["perplexity"])
        return {"label": self.label, "role": self.role, **run}


@dataclass(frozen=True)
class CandidatePerplexity:
    """A candidate's perplexity against the reference's.

    Attributes:
        label: The candidate's label.
        comparison: The comparison; None when none could be made.
        not_compared: Why there is no comparison (one line), when there is none.
        loaded: Whether the candidate loaded (one that did not fails the run
            already: its perplexity adds no failure of its own).
    """

    label: str
    comparison: PerplexityComparison | None
    not_compared: str | None = None
    loaded: bool = True

    @property
    def verdict(self) -> Verdict | None:
        return None if self.comparison is None else self.comparison.verdict

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {"label": self.label, "not_compared": self.not_compared}
        if self.comparison is None:
            return {**base, "verdict": None}
        return {**base, **self.comparison.to_dict()}


@dataclass(frozen=True)
class PerplexitySection:
    """Every model's perplexity and every candidate's comparison.

    Attributes:
        corpus: The corpus file.
        tolerance: The ratio margin (``--quant-ppl-tolerance``); None: information only.
        alpha: The level of each one-sided bound.
        models: The reference first, then the candidates.
        candidates: One comparison per candidate, in the order given.
    """

    corpus: str
    tolerance: float | None
    alpha: float
    models: tuple[ModelPerplexity, ...]
    candidates: tuple[CandidatePerplexity, ...]

    def failure_lines(self, *, strict: bool) -> list[str]:
        """One line per candidate the ratio margin fails: REGRESSED, not compared, or INCONCLUSIVE
        under ``strict``. None without a margin: then perplexity is information only."""
        if self.tolerance is None:
            return []
        out = []
        for cand in self.candidates:
            if cand.comparison is None:
                if cand.loaded:
                    out.append(f"{cand.label}: perplexity not gated: {cand.not_compared}")
                continue
            verdict = cand.verdict
            if verdict is not None and verdict.fails(strict=strict):
                strict_note = " (--quant-strict)" if verdict is Verdict.INCONCLUSIVE else ""
                out.append(f"{cand.label}: perplexity {verdict}{strict_note}: {_ratio_text(cand.comparison)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "tolerance": self.tolerance,
            "alpha": self.alpha,
            "models": [m.to_dict() for m in self.models],
            "candidates": [c.to_dict() for c in self.candidates],
        }


def section(
    models: Mapping[str, Mapping[str, Any]],
    reference: str,
    candidates: tuple[str, ...],
    *,
    corpus: str,
    alpha: float,
    tolerance: float | None,
) -> PerplexitySection:
    """The section from the models' facts (``facts["perplexity"]``; ``load_error`` when not loaded)."""
    runs = {
        label: _model(label, "reference" if label == reference else "candidate", models.get(label, {}))
        for label in (reference, *candidates)
    }
    ref = runs[reference]
    compared = []
    for label in candidates:
        mine = runs[label]
        loaded = "load_error" not in models.get(label, {})
        if ref.run is None:
            why = f"the reference's perplexity was not measured: {ref.error}"
            compared.append(CandidatePerplexity(label, None, why, loaded))
        elif mine.run is None:
            compared.append(CandidatePerplexity(label, None, f"not measured: {mine.error}", loaded))
        else:
            try:
                comparison = compare(
                    ref.run, mine.run, alpha=alpha, tolerance=tolerance, labels=(reference, label)
                )
            except (ProtocolMismatch, ValueError) as exc:
                compared.append(CandidatePerplexity(label, None, str(exc), loaded))
                continue
            compared.append(CandidatePerplexity(label, comparison, None, loaded))
    return PerplexitySection(
        corpus=corpus,
        tolerance=tolerance,
        alpha=alpha,
        models=tuple(runs.values()),
        candidates=tuple(compared),
    )


def _model(label: str, role: str, facts: Mapping[str, Any]) -> ModelPerplexity:
    data = facts.get("perplexity")
    if "load_error" in facts:
        return ModelPerplexity(label, role, None, "not loaded")
    if not isinstance(data, Mapping):
        return ModelPerplexity(label, role, None, "not measured (the run was interrupted or stopped first)")
    if "error" in data:
        return ModelPerplexity(label, role, None, str(data["error"]))
    try:
        return ModelPerplexity(label, role, PerplexityRun.from_dict(dict(data)))
    except (KeyError, TypeError, ValueError) as exc:
        return ModelPerplexity(label, role, None, f"unreadable perplexity facts: {exc}")


def attach(report: GateReport) -> GateReport:
    """The report with its perplexity section and failures; unchanged without ``--quant-ppl-corpus``."""
    config = report.config
    settings = config.perplexity
    if settings is None or config.reference is None:
        return report
    found = section(
        report.models,
        config.reference.label,
        tuple(c.label for c in config.candidates),
        corpus=str(settings.corpus.path),
        alpha=config.alpha,
        tolerance=settings.tolerance,
    )
    failures = (
        ()
        if report.interrupted or report.reference_error is not None
        else tuple(
            Failure(FailureKind.PERPLEXITY, line) for line in found.failure_lines(strict=config.strict)
        )
    )
    return replace(report, perplexity=found, failures=(*report.failures, *failures))


# -- rendering -------------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _ratio_text(comparison: PerplexityComparison) -> str:
    """``ratio 1.083 [1.061, 1.106], margin 1.02`` (the bounds one-sided each), or the per-byte ratio."""
    paired = comparison.paired
    margin = "" if comparison.tolerance is None else f", margin {1 + comparison.tolerance:.4g}"
    if paired is None:
        return (
            f"bits per byte ratio {comparison.byte_ratio:.4f} (tokenizers differ: no paired interval){margin}"
        )
    bounds = (
        f" [{paired.ratio_lower:.4f}, {paired.ratio_upper:.4f}]"
        if paired.ratio_lower is not None and paired.ratio_upper is not None
        else " (one window: no interval)"
    )
    return f"ratio {paired.ratio:.4f}{bounds}{margin}"


_HEAD = ("model", "tokens", "PPL", "bits/byte", "ratio", "bounds", "ln ratio", "corr", "bpb ratio", "verdict")


def _rows(found: PerplexitySection) -> list[list[str]]:
    """The table's cells: a row per model, the reference first."""
    by_label = {c.label: c for c in found.candidates}
    rows = []
    for model in found.models:
        run = model.run
        cells = [model.label]
        if run is None:
            rows.append([*cells, "—", "—", "—", "—", "—", "—", "—", "—", "not measured"])
            continue
        cells += [f"{run.protocol.scored:,}", _number(run.ppl), _number(run.bits_per_byte)]
        cand = by_label.get(model.label)
        comparison = None if cand is None else cand.comparison
        if comparison is None:
            tail = "reference" if model.role == "reference" else "not compared"
            rows.append([*cells, "—", "—", "—", "—", "—", tail])
            continue
        paired = comparison.paired
        if paired is None:
            cells += ["refused", "—", "—", "—"]
        else:
            lower, upper = paired.ratio_lower, paired.ratio_upper
            bounds = "—" if lower is None or upper is None else f"[{lower:.4f}, {upper:.4f}]"
            corr = "—" if paired.correlation is None else f"{paired.correlation:.4f}"
            cells += [f"{paired.ratio:.4f}", bounds, f"{paired.ln_ratio:+.5f}", corr]
        verdict = "—" if comparison.verdict is None else comparison.verdict.value
        rows.append([*cells, f"{comparison.byte_ratio:.4f}", verdict])
    return rows


def _protocol_lines(found: PerplexitySection) -> Iterator[str]:
    """The protocol each distinct run was measured under, once per fingerprint."""
    seen: dict[str, list[str]] = {}
    for model in found.models:
        if model.run is not None:
            seen.setdefault(model.run.protocol.fingerprint, []).append(model.label)
    runs = {m.run.protocol.fingerprint: m.run for m in found.models if m.run is not None}
    for fingerprint, labels in seen.items():
        p = runs[fingerprint].protocol
        bos = (
            f"prefix {list(p.prefix)} (BOS) in every window" if p.prefix else "no BOS (first token unscored)"
        )
        documents = "1 document" if p.documents == 1 else f"{p.documents} documents joined by {p.separator!r}"
        yield (
            f"protocol {fingerprint} ({', '.join(labels)}): windows of {p.max_length} tokens, stride "
            f"{p.stride}, {bos}; {p.scored:,} of {p.tokens:,} tokens scored, {p.bytes:,} bytes; corpus "
            f"{p.corpus[:16]} ({documents}), tokenizer {p.tokenizer}, dtype {p.dtype}"
        )


def _notes(found: PerplexitySection) -> Iterator[str]:
    level = round(100 * (1 - found.alpha))
    yield (
        f"ratio = PPL(candidate)/PPL(reference), total NLL over tokens scored; bounds one-sided {level}% "
        f"each ({round(100 * (1 - 2 * found.alpha))}% together), from per-window NLL differences "
        "clustered by window, t reference; corr: of per-window log-PPL; bpb ratio: bits per UTF-8 byte, "
        "candidate's over reference's (a ratio of log-likelihoods, not of perplexities)"
    )
    if found.tolerance is not None:
        yield (
            f"margin {1 + found.tolerance:.4g} (--quant-ppl-tolerance {found.tolerance:g}): REGRESSED "
            "when the lower bound exceeds it, PASS when the upper bound is below it"
        )
    else:
        yield "information only: --quant-ppl-tolerance gates the ratio"
    for cand in found.candidates:
        if cand.comparison is None:
            yield f"{cand.label}: not compared: {cand.not_compared}"
        elif cand.comparison.refused:
            yield f"{cand.label}: token ratio refused: {cand.comparison.refused}"


#: Columns left out, in this order, while the table is wider than the terminal (the JSON has them all).
_DROPPED_FIRST = ("ln ratio", "corr", "bits/byte")


def _table_lines(found: PerplexitySection, width: int | None = None) -> Iterator[str]:
    """The table, whole; with ``width``, less the columns of :data:`_DROPPED_FIRST` that it takes
    to fit (as far as they go)."""
    table = [list(_HEAD), *_rows(found)]
    keep = list(range(len(_HEAD)))

    def render(columns: list[int]) -> list[str]:
        widths = {i: max(len(row[i]) for row in table) for i in columns}
        last = len(_HEAD) - 1
        return [
            "  ".join(
                row[i].ljust(widths[i]) if i in (0, last) else row[i].rjust(widths[i]) for i in columns
            ).rstrip()
            for row in table
        ]

    lines = render(keep)
    for name in _DROPPED_FIRST:
        if width is None or max(map(len, lines)) <= width:
            break
        keep.remove(_HEAD.index(name))
        lines = render(keep)
    yield from lines


def terminal_lines(found: PerplexitySection) -> Iterator[str]:
    """The section's lines, unwrapped: the table, the protocol of each run, the notes."""
    yield from _table_lines(found)
    yield from _protocol_lines(found)
    yield from _notes(found)


def markdown_lines(found: PerplexitySection) -> Iterator[str]:
    """The section in Markdown: a heading, the table, the protocol and the notes."""
    yield f"### Perplexity ({found.corpus.rsplit('/', 1)[-1]})"
    yield ""
    yield "| " + " | ".join(_HEAD) + " |"
    yield "|" + "|".join("---" if i in (0, len(_HEAD) - 1) else "---:" for i in range(len(_HEAD))) + "|"
    for row in _rows(found):
        yield "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
    yield ""
    for line in (*_protocol_lines(found), *_notes(found)):
        yield f"- {line}"


def terminal_section(report: GateReport, width: int = DEFAULT_WIDTH) -> Iterator[Line | Sep]:
    """The terminal's perplexity section (nothing without ``--quant-ppl-corpus``): the table whole,
    the protocol, notes and failures wrapped to ``width``."""
    found = report.perplexity
    if found is None:
        return
    failing = any(f.kind is FailureKind.PERPLEXITY for f in report.failures)
    yield Sep(f"quantgate: perplexity ({found.corpus.rsplit('/', 1)[-1]})", {"red": True} if failing else {})
    for line in _table_lines(found, width):
        yield [(line, {})]
    for line in (*_protocol_lines(found), *_notes(found)):
        yield from wrapped(line, width, {})
    for failure in report.failures:
        if failure.kind is FailureKind.PERPLEXITY:
            yield from wrapped(failure.message, width, {"red": True, "bold": True})


def markdown_section(report: GateReport) -> Iterator[str]:
    """The Markdown report's perplexity section (nothing without ``--quant-ppl-corpus``)."""
    if report.perplexity is None:
        return
    yield ""
    yield from markdown_lines(report.perplexity)
    for failure in report.failures:
        if failure.kind is FailureKind.PERPLEXITY:
            yield f"- **{failure.message}**"
