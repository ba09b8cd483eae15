"""The controller side of a session, without pytest: records -> gate -> report model.

:class:`Aggregator` lives in the process that reports (the only process
without xdist, the controller with it). It gathers the
:class:`~.cases.CaseRecord` of every test report, wherever the test ran,
and builds the :class:`~.report.model.GateReport` that every writer renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..core.config import GateConfig
from ..core.cost import Cost
from ..core.markers import merge_tolerances
from ..core.overlap import CalibrationOverlap, overlap
from ..core.records import CaseRecord, ModelOutcome, Status
from ..statistics.divergence import CaseDivergence, DivergenceSummary, summarize
from ..statistics.gate import (
    ALL,
    GateSettings,
    SliceOutcomes,
    SliceResult,
    Verdict,
    evaluate,
    overall_verdict,
)
from ..values.specs import ModelSpec
from .model import (
    CandidateGate,
    CostRow,
    DivergenceRow,
    Failure,
    FailureKind,
    GateReport,
    GateTest,
    NoiseFloor,
    NoiseRow,
    Selection,
)

__all__ = ["Aggregator", "gate_candidate"]


#: Facts of a model that are counts over every process (xdist workers add theirs up).
_SUMMED_FACTS = ("loads", "generated_cases", "cached_cases")


class Aggregator:
    """Records from test reports, and the report built from them."""

    def __init__(self, config: GateConfig):
        self.config = config
        self.records: list[CaseRecord] = []
        self.model_facts: dict[str, dict[str, Any]] = {}
        self.load_failures: dict[str, str] = {}
        self.collected: int | None = None
        self.selected: int | None = None
        self.skipped = 0
        #: Quant cases lost with a crashed xdist worker: node id -> what xdist said.
        self.lost: dict[str, str] = {}
        #: Cases generated but never checked (an interrupted run), with each model's outputs.
        self.unchecked: list[dict[str, Any]] = []
        #: ``--quant-shard``: every collected quant case's node id, in collection order, and their
        #: fingerprint (``core.records_file.suite_fingerprint``), as the process that collected says.
        self.suite: str | None = None
        self.suite_order: list[str] = []

    def add(self, record: CaseRecord) -> None:
        self.records.append(record)
        self.load_failures.update(record.unavailable)

    def add_skipped(self) -> None:
        """A selected quant case that was skipped before its check ran."""
        self.skipped += 1

    def add_model_facts(self, facts: Mapping[str, dict[str, Any]]) -> None:
        """Facts of loaded models (from this process or a worker); later ones win, but
        counts add up (:data:`_SUMMED_FACTS`): loads, generated and cached cases of every process."""
        for label, f in facts.items():
            earlier = self.model_facts.get(label, {})
            merged = {**earlier, **f}
            for key in _SUMMED_FACTS:
                if key in f or key in earlier:
                    merged[key] = earlier.get(key, 0) + f.get(key, 0)
            self.model_facts[label] = merged

    def add_unchecked(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Cases a process generated and never checked (its run was interrupted)."""
        self.unchecked.extend(dict(e) for e in entries)

    def add_lost(self, nodeid: str, why: str) -> None:
        """A quant case whose worker crashed while running it: no record will come."""
        self.lost[nodeid] = why

    def add_load_failures(self, failures: Mapping[str, str]) -> None:
        """Models a process could not load -> why."""
        self.load_failures.update(failures)

    def add_selection(self, collected: int, selected: int) -> None:
        """Quant cases a process collected and kept; every process collects the same."""
        self.collected = max(collected, self.collected or 0)
        self.selected = max(selected, self.selected or 0)

    def report(
        self,
        *,
        interrupted: bool = False,
        narrowed_by: Iterable[str] = (),
        stopped: str | None = None,
        counted: bool = True,
    ) -> GateReport:
        """The report model; with no reference given, an empty one.

        Args:
            interrupted: The session was interrupted: no gate test is reported.
            narrowed_by: The options that narrowed the run (for the report).
            stopped: Why the session stopped early, if it did.
            counted: False when an option narrowed collection itself, so
                that the collected count is not the whole suite's.
        """
        selection = Selection(
            collected=self.collected,
            selected=self.selected,
            ran=len(self.records),
            skipped=self.skipped,
            narrowed_by=tuple(narrowed_by),
            stopped=stopped,
            counted=counted,
        )
        reference = self.config.reference
        if reference is None:
            return GateReport(
                config=self.config,
                models={},
                candidates=(),
                records=(),
                complete=False,
                tests=(),
                reference_passed=0,
                interrupted=interrupted,
                selection=selection,
            )
        # Slices are reported in the order their first case arrived.
        records = self.records
        reference_error = self.load_failures.get(reference.label)
        tolerances = merge_tolerances(*(r.tolerances for r in records))
        lost = tuple(sorted(self.lost))
        # From the records (``--quant-merge`` reads them from shards run with the options).
        with_noise = self.config.noise_floor or any(r.noise is not None for r in records)
        noise = noise_floor(records, self.config.alpha) if with_noise else None
        candidates = tuple(
            _not_evaluated(c, self.load_failures[c.label])
            if c.label in self.load_failures
            else _not_evaluated(c, f"the reference {reference.label} could not be loaded")
            if reference_error is not None
            else _not_evaluated(c, _lost_message(lost), lost=lost)
            if lost
            else _not_evaluated(c, _nothing_checked(interrupted))
            if not any(c.label in r.outcomes for r in records)
            else gate_candidate(self.config, c, records, tolerances, noise=noise)
            for c in self.config.candidates
        )
        tests: list[GateTest] = []
        strict = self.config.strict
        if not interrupted and (records or self.load_failures):
            for cand in candidates:
                tests.append(GateTest(cand, None, failed=not cand.evaluated))
                tests.extend(
                    GateTest(cand, row, row.verdict.fails(strict=strict) or _kl_exceeds(cand, row))
                    for row in cand.rows
                )
        return GateReport(
            config=self.config,
            models=self._models(),
            candidates=candidates,
            records=tuple(sorted(records, key=lambda r: r.nodeid)),
            complete=not interrupted and selection.whole and not self.load_failures and not lost,
            tests=tuple(tests),
            failures=_failures(tests, records, reference.label, reference_error, strict=self.config.strict),
            reference_passed=sum(r.outcomes[r.reference].outcome == "pass" for r in records),
            interrupted=interrupted,
            selection=selection,
            reference_error=reference_error,
            calibration_overlap=self._calibration_overlap(records),
            unchecked=tuple(sorted(self.unchecked, key=lambda e: str(e.get("nodeid")))),
            cost=_cost_rows(self._models()),
            noise_floor=noise,
        )

    def _calibration_overlap(self, records: Sequence[CaseRecord]) -> CalibrationOverlap | None:
        calibration = self.config.calibration
        if calibration is None:
            return None
        return overlap({r.nodeid: r.prompt for r in records}, calibration.texts, str(calibration.path))

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
            if spec.label in self.load_failures:
                out[spec.label]["load_error"] = self.load_failures[spec.label]
        return out


def _failures(
    tests: Sequence[GateTest],
    records: Sequence[CaseRecord],
    reference: str,
    reference_error: str | None,
    *,
    strict: bool,
) -> tuple[Failure, ...]:
    """Why the run fails: the reference's load, each failing gate test, quant cases whose test failed."""
    out: list[Failure] = []
    if reference_error is not None:
        first = reference_error.strip().splitlines()[0] if reference_error.strip() else "no reason given"
        out.append(Failure(FailureKind.REFERENCE, f"the reference {reference} could not be loaded: {first}"))
    for test in tests:
        if not test.failed:
            continue
        label = test.candidate.label
        if test.row is None:
            why = (test.candidate.not_evaluated or "").strip().splitlines()
            message = f"{label}: not evaluated: {why[0] if why else 'no reason given'}"
            out.append(Failure(FailureKind.NOT_EVALUATED, message, test))
        else:
            row = "ALL" if test.row.is_total else f"slice {test.row.slice!r}"
            if test.row.verdict.fails(strict=strict):
                flag = " (--quant-strict)" if test.row.verdict is Verdict.INCONCLUSIVE else ""
                out.append(Failure(FailureKind.ROW, f"{label}: {row} {test.row.verdict}{flag}", test))
            divergence = test.candidate.divergence_of(test.row.slice)
            if divergence is not None and divergence.exceeds and divergence.summary is not None:
                summary = divergence.summary
                out.append(
                    Failure(
                        FailureKind.DIVERGENCE,
                        f"{label}: {row} mean token KL {summary.mean_kl:.4g} (lower bound {summary.low:.4g}) "
                        f"above its max_kl {summary.threshold:g}",
                        test,
                    )
                )
    failing = [r for r in records if r.fails_test]
    if failing:
        errors = sum(r.worst is Status.ERROR for r in failing)
        out.append(
            Failure(
                FailureKind.CASE_TESTS,
                f"{len(failing)} quant case test(s) failed ({errors} errored; the rest regressed on a "
                "critical case, or failed on the reference with no candidate)",
            )
        )
    return tuple(out)


def _kl_exceeds(candidate: CandidateGate, row: SliceResult) -> bool:
    """Whether a row's slice has a ``max_kl`` that its mean token KL is significantly above."""
    divergence = candidate.divergence_of(row.slice)
    return divergence is not None and divergence.exceeds


def _divergence_rows(
    config: GateConfig,
    label: str,
    records: Sequence[CaseRecord],
    rows: Sequence[SliceResult],
    noise: NoiseFloor | None,
) -> tuple[DivergenceRow, ...]:
    """Each row's token divergence (``--quant-divergence``), from the records' per-case figures."""
    thresholds = merge_tolerances(*(r.max_kl for r in records))
    out = []
    for row in rows:
        name = row.slice
        members = records if row.is_total else [r for r in records if name in r.slices]
        items: list[tuple[str, Any, CaseDivergence]] = []
        why: str | None = None
        for r in members:
            d = r.token_divergences.get(label)
            if d is None or "unavailable" in d:
                why = why or (d or {}).get("unavailable") or "the reference's run of the case was not scored"
                continue
            items.append((r.nodeid, r.cluster, CaseDivergence.from_dict(d)))
        threshold = None if row.is_total else thresholds.get(name)
        summary = summarize(items, alpha=config.alpha, threshold=threshold)
        floor_row = noise.row(name) if noise is not None else None
        measured = floor_row is not None and floor_row.divergence is not None
        floor = floor_row.divergence.mean_kl if floor_row is not None and floor_row.divergence else 0.0
        out.append(
            DivergenceRow(
                slice=name,
                summary=summary,
                unavailable=why,
                missing=len(members) - len(items),
                flips=(row.regressions + row.improvements) / row.n if row.n else None,
                floor=floor,
                floor_measured=measured,
                unseen_damage=row.verdict is Verdict.INCONCLUSIVE
                and summary is not None
                and summary.above(floor),
            )
        )
    return tuple(out)


def noise_floor(records: Sequence[CaseRecord], alpha: float) -> NoiseFloor:
    """The reference against itself (``--quant-noise-floor``), per slice in order of arrival, then ALL."""
    ran = [r for r in records if r.noise is not None]
    names = list(dict.fromkeys(s for r in ran for s in r.slices))

    def row(name: str, members: Sequence[CaseRecord]) -> NoiseRow:
        flips = changed = 0
        items: list[tuple[str, Any, CaseDivergence]] = []
        for r in members:
            assert r.noise is not None
            first = r.outcomes[r.reference].outcome == "pass"
            flips += first != (r.noise.get("outcome") == "pass")
            changed += not r.noise.get("same_output", True)
            if r.noise.get("divergence"):
                items.append((r.nodeid, r.cluster, CaseDivergence.from_dict(r.noise["divergence"])))
        summary: DivergenceSummary | None = summarize(items, alpha=alpha)
        return NoiseRow(slice=name, cases=len(members), flips=flips, changed=changed, divergence=summary)

    return NoiseFloor(
        rows=(*(row(n, [r for r in ran if n in r.slices]) for n in names), row(ALL, ran)),
    )


def _cost_rows(models: Mapping[str, Mapping[str, Any]]) -> tuple[CostRow, ...]:
    """Each measured model's cost (:mod:`..core.cost`), with its ratios to the reference's."""
    rows: list[CostRow] = []
    for label, facts in models.items():
        if not facts.get("cost"):
            continue
        cost = Cost.from_dict(facts["cost"])
        largest = cost.batches[-1]
        weights = facts.get("weight_bytes")
        rows.append(
            CostRow(
                label=label,
                role=str(facts.get("role", "")),
                new_tokens=cost.new_tokens,
                prompts=cost.prompts,
                batch_size=largest.batch_size,
                tokens_per_second=largest.decode_tokens_per_second,
                first_token_seconds=cost.batches[0].first_token_seconds,
                latency_p50=cost.latency_p50,
                latency_p95=cost.latency_p95,
                peak_memory_bytes=cost.peak_memory_bytes,
                memory=cost.memory,
                weight_bytes=weights if isinstance(weights, int) else None,
            )
        )
    ref = next((r for r in rows if r.role == "reference"), None)
    if ref is None:
        return tuple(rows)

    def ratio(mine: float | None, theirs: float | None) -> float | None:
        return None if mine is None or not theirs else mine / theirs

    return tuple(
        sorted(
            (
                replace(
                    r,
                    speed_ratio=ratio(r.tokens_per_second, ref.tokens_per_second),
                    latency_ratio=ratio(r.latency_p50, ref.latency_p50),
                    memory_ratio=ratio(r.peak_memory_bytes, ref.peak_memory_bytes),
                    weight_ratio=ratio(r.weight_bytes, ref.weight_bytes),
                )
                for r in rows
            ),
            key=lambda r: r.role != "reference",
        )
    )


def _nothing_checked(interrupted: bool) -> str:
    if interrupted:
        return "the run was interrupted before any case was checked on it"
    return "no case was checked on it (every quant case was skipped or deselected)"


def _lost_message(lost: Sequence[str]) -> str:
    return (
        f"{len(lost)} quant case(s) lost: an xdist worker crashed while running them, and a gate "
        "computed on the remaining cases could pass what the whole suite fails"
    )


def _not_evaluated(candidate: ModelSpec, why: str, lost: tuple[str, ...] = ()) -> CandidateGate:
    return CandidateGate(
        label=candidate.label,
        display=candidate.display,
        verdict=None,
        rows=(),
        errors=0,
        regressed=(),
        inconclusive=(),
        not_evaluated=why,
        path=candidate.path,
        lost=lost,
    )


def gate_candidate(
    config: GateConfig,
    candidate: ModelSpec,
    records: Sequence[CaseRecord],
    marker_tolerances: Mapping[str, float],
    *,
    noise: NoiseFloor | None = None,
) -> CandidateGate:
    """Per-slice statistics and verdicts of one candidate from the records.

    A slice's margin is its markers' (the stricter wins), else the ini
    table's, else the default. Cases that errored on either model, or that
    the check skipped on the reference, are left out of the statistics and
    counted.
    """
    label = candidate.label
    ran = [r for r in records if label in r.outcomes]
    skipped = [r for r in ran if r.status(label) is Status.SKIPPED]
    errored = [r for r in ran if r.status(label) is Status.ERROR]
    valid = [r for r in ran if r.status(label) not in (Status.ERROR, Status.SKIPPED)]
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
        errors=len(errored),
        regressed=tuple(r for r in valid if r.status(label) is Status.REGRESSED),
        improved=tuple(r for r in valid if r.status(label) is Status.IMPROVED),
        inconclusive=tuple(r.slice for r in rows if r.verdict is Verdict.INCONCLUSIVE),
        skipped=len(skipped),
        path=candidate.path,
        divergence=_divergence_rows(config, label, valid, rows, noise)
        if config.divergence or any(label in r.token_divergences for r in valid)
        else (),
    )


def _outcomes(name: str, records: Sequence[CaseRecord], cand: str, tolerance: float) -> SliceOutcomes:
    clusters = tuple(r.cluster for r in records)
    pairs = [(r.outcomes[r.reference], r.outcomes[cand]) for r in records]
    # Graded checks return scores; a slice holding any is gated on scores, a
    # pass/fail case of it scoring 1 or 0 (SliceOutcomes.graded).
    graded = any(o.score is not None for pair in pairs for o in pair)
    return SliceOutcomes(
        name=name,
        reference=tuple(ref.outcome == "pass" for ref, _ in pairs),
        candidate=tuple(got.outcome == "pass" for _, got in pairs),
        clusters=clusters if any(c is not None for c in clusters) else None,
        tolerance=tolerance,
        reference_scores=tuple(_score(ref) for ref, _ in pairs) if graded else None,
        candidate_scores=tuple(_score(got) for _, got in pairs) if graded else None,
    )


def _score(outcome: ModelOutcome) -> float:
    """A graded check's score; 1.0 or 0.0 for a pass/fail outcome."""
    if outcome.score is not None:
        return outcome.score
    return 1.0 if outcome.outcome == "pass" else 0.0
