"""The report model: everything a writer renders, decided once.

:func:`~..aggregator.Aggregator.report` builds a :class:`GateReport` from the
records; the terminal, JSON and JUnit writers render it and recompute
nothing (no verdict, count or filter is derived in a writer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cases import CaseRecord
    from ..config import GateConfig
    from ..gate import SliceResult, Verdict

__all__ = ["CandidateGate", "GateReport"]


@dataclass(frozen=True)
class CandidateGate:
    """The gate of one candidate.

    Attributes:
        label: The candidate's label.
        display: ``label (scheme:dir)`` for headings.
        verdict: The candidate's overall verdict (:func:`~..gate.overall_verdict`).
        rows: One row per slice, then the ALL row.
        errors: Cases left out of the statistics because they errored.
        regressed: The regressed cases, by node id.
        inconclusive: Names of the INCONCLUSIVE rows.
    """

    label: str
    display: str
    verdict: Verdict
    rows: tuple[SliceResult, ...]
    errors: int
    regressed: tuple[CaseRecord, ...]
    inconclusive: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "display": self.display,
            "verdict": self.verdict.value,
            "errors": self.errors,
            "slices": [r.to_dict() for r in self.rows],
        }


@dataclass(frozen=True)
class GateReport:
    """Everything a report writer needs.

    Attributes:
        config: The session's configuration.
        models: Facts per model label (path, device, dtype, quantization, role).
        candidates: The gate of each candidate, in the order given.
        records: Every case's record, by node id.
        complete: False when the session was interrupted.
        failed: Whether any row REGRESSED.
        failures: The rows that fail the run (REGRESSED, or INCONCLUSIVE
            under strict), each with its candidate; none when incomplete,
            since an interrupted run's rows are not the gate's verdict.
        reference_passed: Cases the reference passes (for a reference-only run).
    """

    config: GateConfig
    models: dict[str, dict[str, Any]]
    candidates: tuple[CandidateGate, ...]
    records: tuple[CaseRecord, ...]
    complete: bool
    failed: bool
    failures: tuple[tuple[CandidateGate, SliceResult], ...]
    reference_passed: int
