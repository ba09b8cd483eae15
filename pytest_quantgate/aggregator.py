"""The controller side of a session, without pytest: records -> gate -> report model.

:class:`Aggregator` lives in the process that reports (the only process
without xdist, the controller with it). It gathers the
:class:`~.cases.CaseRecord` of every test report, wherever the test ran,
and builds the :class:`~.report.model.GateReport` that every writer renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .cases import ALL, CaseRecord, Status, merge_tolerances
from .config import GateConfig
from .gate import GateSettings, SliceOutcomes, Verdict, evaluate, overall_verdict
from .report.model import CandidateGate, GateReport
from .specs import ModelSpec

__all__ = ["Aggregator", "gate_candidate"]


class Aggregator:
    """Records from test reports, and the report built from them."""

    def __init__(self, config: GateConfig):
        self.config = config
        self.records: list[CaseRecord] = []
        self.model_facts: dict[str, dict[str, Any]] = {}

    def add(self, record: CaseRecord) -> None:
        self.records.append(record)

    def add_model_facts(self, facts: Mapping[str, dict[str, Any]]) -> None:
        """Facts of loaded models (from this process or a worker); later ones win."""
        self.model_facts.update(facts)

    def report(self, *, complete: bool = True) -> GateReport | None:
        """The report model, or None when there is nothing to gate."""
        if self.config.reference is None or not self.records:
            return None
        # Slices are reported in the order their first case arrived.
        records = self.records
        tolerances = merge_tolerances(*(r.tolerances for r in records))
        candidates = tuple(
            gate_candidate(self.config, c, records, tolerances) for c in self.config.candidates
        )
        failures = tuple(
            (cand, row)
            for cand in candidates
            for row in cand.rows
            if complete and row.verdict.fails(strict=self.config.strict)
        )
        return GateReport(
            config=self.config,
            models=self._models(),
            candidates=candidates,
            records=tuple(sorted(records, key=lambda r: r.nodeid)),
            complete=complete,
            failed=any(r.verdict is Verdict.REGRESSED for c in candidates for r in c.rows),
            failures=failures,
            reference_passed=sum(r.outcomes[r.reference].outcome == "pass" for r in records),
        )

    def _models(self) -> dict[str, dict[str, Any]]:
        assert self.config.reference is not None
        out = {}
        for spec in (self.config.reference, *self.config.candidates):
            facts = self.model_facts.get(spec.label) or {
                "label": spec.label,
                "spec": spec.text,
                "path": spec.path,
            }
            role = "reference" if spec is self.config.reference else "candidate"
            out[spec.label] = {**facts, "role": role}
        return out


def gate_candidate(
    config: GateConfig,
    candidate: ModelSpec,
    records: Sequence[CaseRecord],
    marker_tolerances: Mapping[str, float],
) -> CandidateGate:
    """Per-slice statistics and verdicts of one candidate from the records.

    A slice's margin is its markers' (the stricter wins), else the ini
    table's, else the default. Cases that errored on either model are left
    out of the statistics and counted.
    """
    label = candidate.label
    ran = [r for r in records if label in r.outcomes]
    valid = [r for r in ran if r.status(label) is not Status.ERROR]
    slice_names = list(dict.fromkeys(s for r in valid for s in r.slices))
    slices = [
        _outcomes(
            name,
            [r for r in valid if name in r.slices],
            label,
            config.tolerance_for(name, marker_tolerances.get(name)),
        )
        for name in slice_names
    ]
    total = _outcomes(ALL, valid, label, config.tolerance)
    rows = tuple(evaluate(slices, total, GateSettings(alpha=config.alpha, tolerance=config.tolerance)))
    return CandidateGate(
        label=label,
        display=candidate.display,
        verdict=overall_verdict(rows),
        rows=rows,
        errors=len(ran) - len(valid),
        regressed=tuple(r for r in valid if r.status(label) is Status.REGRESSED),
        inconclusive=tuple(r.slice for r in rows if r.verdict is Verdict.INCONCLUSIVE),
    )


def _outcomes(name: str, records: Sequence[CaseRecord], cand: str, tolerance: float) -> SliceOutcomes:
    clusters = tuple(r.cluster for r in records)
    return SliceOutcomes(
        name=name,
        reference=tuple(r.outcomes[r.reference].outcome == "pass" for r in records),
        candidate=tuple(r.outcomes[cand].outcome == "pass" for r in records),
        clusters=clusters if any(c is not None for c in clusters) else None,
        tolerance=tolerance,
    )
