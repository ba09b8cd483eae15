"""The report model: everything a writer renders, decided once.

:func:`~..aggregator.Aggregator.report` builds a :class:`GateReport` from the
records; the terminal, JSON and JUnit writers render it and recompute
nothing (no verdict, count or filter is derived in a writer).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..statistics.gate import ALL

if TYPE_CHECKING:
    from ..core.config import GateConfig
    from ..core.overlap import CalibrationOverlap
    from ..core.records import CaseRecord
    from ..statistics.divergence import DivergenceSummary
    from ..statistics.gate import SliceResult, Verdict
    from .perplexity import PerplexitySection

__all__ = [
    "LOAD",
    "CandidateGate",
    "CostRow",
    "DivergenceRow",
    "Failure",
    "FailureKind",
    "GateReport",
    "GateTest",
    "Matrix",
    "MatrixCandidate",
    "MatrixCell",
    "NoiseFloor",
    "NoiseRow",
    "Selection",
    "Unevaluated",
    "gate_test_id",
    "parse_gate_test_id",
]

#: The name of a candidate's gate test that fails when it cannot be loaded.
LOAD = "load"


@dataclass(frozen=True)
class CandidateGate:
    """The gate of one candidate.

    Attributes:
        label: The candidate's label.
        display: ``label (scheme:dir)`` for headings.
        verdict: The candidate's overall verdict (:func:`~..gate.overall_verdict`);
            None when it was not evaluated.
        rows: One row per slice, then the ALL row (none when not evaluated).
        errors: Cases left out of the statistics because they errored.
        regressed: The regressed cases, by node id.
        inconclusive: Names of the INCONCLUSIVE rows.
        skipped: Cases left out because the check skipped on the reference.
        not_evaluated: Why the candidate has no gate, when it has none: its
            load error (the whole message), or the reference's.
        path: Where the candidate is loaded from.
        lost: Quant cases lost when an xdist worker crashed (then there is
            no gate: ``not_evaluated`` says so).
    """

    label: str
    display: str
    verdict: Verdict | None
    rows: tuple[SliceResult, ...]
    errors: int
    regressed: tuple[CaseRecord, ...]
    inconclusive: tuple[str, ...]
    skipped: int = 0
    not_evaluated: str | None = None
    path: str = ""
    lost: tuple[str, ...] = ()  # quant cases lost with a crashed worker: why there is no gate
    improved: tuple[CaseRecord, ...] = ()  # the cases the candidate passes and the reference fails
    #: ``--quant-divergence``: one row per slice, then ALL (none without the option).
    divergence: tuple[DivergenceRow, ...] = ()

    @property
    def evaluated(self) -> bool:
        return self.not_evaluated is None

    def divergence_of(self, name: str) -> DivergenceRow | None:
        """The divergence row of a slice (or ALL), if there is one."""
        return next((d for d in self.divergence if d.slice == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "display": self.display,
            "evaluated": self.evaluated,
            "not_evaluated": self.not_evaluated,
            "lost": list(self.lost),
            "verdict": None if self.verdict is None else self.verdict.value,
            "errors": self.errors,
            "skipped": self.skipped,
            "slices": [r.to_dict() for r in self.rows],
            **({"divergence": [d.to_dict() for d in self.divergence]} if self.divergence else {}),
        }


@dataclass(frozen=True)
class DivergenceRow:
    """A slice's token divergence on one candidate, beside its accuracy row.

    Attributes:
        slice: The slice's name (or ALL).
        summary: The statistics (:class:`~..statistics.divergence.DivergenceSummary`);
            None when nothing was scored.
        unavailable: Why there is no divergence for some of the slice's
            cases (the first reason met), else None.
        missing: Cases of the slice without a divergence.
        flips: The candidate's discordant cases over all cases (b + c) / n.
        floor: The noise floor's mean KL on the slice (0 when not measured).
        floor_measured: Whether ``floor`` was measured (``--quant-noise-floor``).
        unseen_damage: Accuracy is INCONCLUSIVE while the mean KL is
            significantly above the noise floor: divergence sees damage that
            accuracy cannot yet show.
    """

    slice: str
    summary: DivergenceSummary | None
    unavailable: str | None = None
    missing: int = 0
    flips: float | None = None
    floor: float = 0.0
    floor_measured: bool = False
    unseen_damage: bool = False

    @property
    def exceeds(self) -> bool:
        """Whether the slice's ``max_kl`` fails the run (:attr:`DivergenceSummary.exceeds`)."""
        return self.summary is not None and self.summary.exceeds

    def to_dict(self) -> dict[str, Any]:
        return {
            "slice": self.slice,
            **(self.summary.to_dict() if self.summary is not None else {"cases": 0, "tokens": 0}),
            "unavailable": self.unavailable,
            "missing": self.missing,
            "flips": self.flips,
            "noise_floor_kl": self.floor if self.floor_measured else None,
            "unseen_damage": self.unseen_damage,
        }


@dataclass(frozen=True)
class NoiseRow:
    """The reference against itself on one slice (``--quant-noise-floor``).

    Attributes:
        slice: The slice (or ALL).
        cases: Cases run twice.
        flips: Cases whose pass/fail outcome differs between the two runs.
        changed: Cases whose output differs between the two runs.
        divergence: Its token divergence from itself, when scored.
    """

    slice: str
    cases: int
    flips: int
    changed: int
    divergence: DivergenceSummary | None = None

    @property
    def flip_rate(self) -> float:
        return self.flips / self.cases if self.cases else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "slice": self.slice,
            "cases": self.cases,
            "flips": self.flips,
            "changed_outputs": self.changed,
            "flip_rate": self.flip_rate,
            "divergence": None if self.divergence is None else self.divergence.to_dict(),
        }


#: A reference that disagrees with itself on more than this fraction of cases (outputs that
#: change with batching) draws a warning: greedy decoding is not stable on this hardware.
NOISE_WARN_FRACTION = 0.01


@dataclass(frozen=True)
class NoiseFloor:
    """The reference run a second time with batch size 1 in reverse order: per slice, then ALL.

    Attributes:
        rows: One per slice, then ALL.
        unstable: Whether the outputs changed on more than
            :data:`NOISE_WARN_FRACTION` of the cases (the run warns).
    """

    rows: tuple[NoiseRow, ...]

    @property
    def total(self) -> NoiseRow | None:
        return next((r for r in self.rows if r.slice == ALL), None)

    @property
    def unstable(self) -> bool:
        total = self.total
        return total is not None and total.cases > 0 and total.changed / total.cases > NOISE_WARN_FRACTION

    def row(self, name: str) -> NoiseRow | None:
        return next((r for r in self.rows if r.slice == name), None)

    def warning(self) -> str | None:
        """One line when greedy decoding was not stable here, else None."""
        total = self.total
        if total is None or not self.unstable:
            return None
        return (
            f"the reference changed its output on {total.changed} of {total.cases} cases when run again "
            f"at batch size 1 in another order (more than {NOISE_WARN_FRACTION:.0%}): greedy decoding "
            "is not stable here, and flips at that rate are numerics, not quantization"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "warn_fraction": NOISE_WARN_FRACTION,
            "unstable": self.unstable,
            "warning": self.warning(),
            "slices": [r.to_dict() for r in self.rows],
        }


class FailureKind(str, enum.Enum):
    """Why a run fails, as the report lists it."""

    ROW = "row"  # a slice (or ALL) row: REGRESSED, or INCONCLUSIVE under --quant-strict
    NOT_EVALUATED = "not evaluated"  # a candidate with no gate (not loaded, cases lost)
    REFERENCE = "reference"  # the reference could not be loaded: nothing was gated
    CASE_TESTS = "case tests"  # quant cases whose own test failed (errors, critical regressions)
    DIVERGENCE = "divergence"  # a slice's mean token KL significantly above its max_kl
    PERPLEXITY = "perplexity"  # a candidate's perplexity ratio above --quant-ppl-tolerance, or ungated

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Failure:
    """One reason the run fails.

    Attributes:
        kind: What failed.
        message: One line saying so.
        test: The gate test that reports it, where one does.
    """

    kind: FailureKind
    message: str
    test: GateTest | None = None


@dataclass(frozen=True)
class GateTest:
    """One test the gate adds to the run: a row of a candidate, or its load.

    Attributes:
        candidate: The candidate's gate.
        row: The slice (or ALL) row; None for the candidate's load test.
        failed: Whether it fails the run.
    """

    candidate: CandidateGate
    row: SliceResult | None
    failed: bool

    @property
    def name(self) -> str:
        return LOAD if self.row is None else self.row.slice

    @property
    def nodeid(self) -> str:
        return gate_test_id(self.candidate.label, self.name)

    @property
    def name_in_junit(self) -> str:
        """The id JUnit gets: ``quantgate::<candidate>::<row>``, so that its classname is
        ``quantgate.<candidate>`` (the printed id's leading ``::`` would make it ``.quantgate...``)."""
        return self.nodeid.removeprefix("::")


#: Gate tests hang off the root directory: ``::quantgate::<candidate>::<row>``.
#: The empty path part is what makes the id a real path wherever pytest
#: prints it (``suite::quantgate::rtn2::arith`` from outside the rootdir), so
#: it can be pasted back on the command line to re-run that row.
#: ``quantgate::...`` without the leading ``::`` is taken too (as typed from the docs).
_GATE_ID = re.compile(r"^(?:(?P<path>(?:(?!::).)*)::)?quantgate::(?P<label>(?:(?!::).)+)::(?P<row>.+)$")


def gate_test_id(label: str, name: str) -> str:
    """The node id of a gate test: ``::quantgate::<candidate>::<row>``."""
    return f"::quantgate::{label}::{name}"


def parse_gate_test_id(arg: str) -> tuple[str, str, str] | None:
    """``(path, label, row)`` of a gate test id as printed (``[PATH]::quantgate::LABEL::ROW``), or None."""
    m = _GATE_ID.match(arg)
    return (m.group("path") or "", m.group("label"), m.group("row")) if m else None


@dataclass(frozen=True)
class Selection:
    """Which quant cases the run was asked for, and which it ran.

    Attributes:
        collected: Quant cases collected; None when no process reported it
            (an interrupted xdist worker).
        selected: Those left after deselection (``-k``, ``-m``, ``--lf``,
            ``--deselect``).
        ran: Cases checked on the models (a record arrived for each).
        skipped: Selected cases skipped before their check ran (markers,
            fixtures).
        narrowed_by: The options that narrowed or could stop the run
            (``-k EXPR``, ``-m EXPR``, ``--lf``, ``-x``, node ids, ...).
        stopped: Why the session stopped early, if it did.
        counted: False when an option narrowed what was collected in the
            first place (``--lf``, ``--sw``, node ids), so that ``collected``
            is not the whole suite.
    """

    collected: int | None = None
    selected: int | None = None
    ran: int = 0
    skipped: int = 0
    narrowed_by: tuple[str, ...] = ()
    stopped: str | None = None
    counted: bool = True

    @property
    def whole(self) -> bool:
        """Every case of the suite was selected, and every selected one ran or was skipped."""
        return (
            self.counted
            and self.collected is not None
            and self.selected == self.collected
            and self.ran + self.skipped == self.selected
            and self.stopped is None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "collected": self.collected,
            "selected": self.selected,
            "ran": self.ran,
            "skipped": self.skipped,
            "narrowed_by": list(self.narrowed_by),
            "stopped": self.stopped,
            "counted": self.counted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Selection:
        return cls(
            collected=data.get("collected"),
            selected=data.get("selected"),
            ran=int(data.get("ran") or 0),
            skipped=int(data.get("skipped") or 0),
            narrowed_by=tuple(data.get("narrowed_by") or ()),
            stopped=data.get("stopped"),
            counted=bool(data.get("counted", True)),
        )


class Unevaluated(str, enum.Enum):
    """Why a candidate has no gate, in the few words a matrix column's heading has room for.

    :attr:`CandidateGate.not_evaluated` holds the whole message.
    """

    NOT_LOADED = "not loaded"
    REFERENCE_NOT_LOADED = "reference not loaded"
    CASES_LOST = "cases lost"
    NOTHING_CHECKED = "nothing checked"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MatrixCell:
    """One candidate's row of one slice, as the matrix shows it.

    Attributes:
        drop: The row's drop (:attr:`~..gate.SliceResult.drop`): positive
            means the candidate is worse; NaN for a row with no cases.
        verdict: The row's verdict.
        n: Paired cases of the row.
    """

    drop: float
    verdict: Verdict
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop": self.drop if math.isfinite(self.drop) else None,
            "verdict": self.verdict.value,
            "n": self.n,
        }


@dataclass(frozen=True)
class MatrixCandidate:
    """A column of the matrix: one candidate.

    Attributes:
        label: The candidate's label.
        verdict: Its overall verdict; None when it was not evaluated.
        unevaluated: Why it was not evaluated, in short; None when it was.
        weight_bytes: Its weights' footprint in bytes (the model facts'
            ``weight_bytes``), None when its backend did not say.
    """

    label: str
    verdict: Verdict | None
    unevaluated: Unevaluated | None
    weight_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "verdict": None if self.verdict is None else self.verdict.value,
            "not_evaluated": None if self.unevaluated is None else self.unevaluated.value,
            "weight_bytes": self.weight_bytes,
        }


@dataclass(frozen=True)
class Matrix:
    """Every candidate's rows side by side: slices × candidates.

    Attributes:
        reference: The reference's label (None when no reference was given).
        reference_weight_bytes: The reference's footprint in bytes, if known.
        slices: The slices, in the order of the candidates' rows (the first
            evaluated candidate's, then any slice only a later one has), the
            ALL row last.
        candidates: One column per candidate, in the order given.
        cells: ``cells[i][j]``: slice ``i`` of candidate ``j``; None where
            the candidate has no such row (not evaluated, or every case of
            the slice errored on it).
    """

    reference: str | None
    reference_weight_bytes: int | None
    slices: tuple[str, ...]
    candidates: tuple[MatrixCandidate, ...]
    cells: tuple[tuple[MatrixCell | None, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": {"label": self.reference, "weight_bytes": self.reference_weight_bytes},
            "slices": list(self.slices),
            "candidates": [c.to_dict() for c in self.candidates],
            "cells": [[None if c is None else c.to_dict() for c in row] for row in self.cells],
        }


def _weight_bytes(facts: Mapping[str, Any] | None) -> int | None:
    """A model's ``weight_bytes`` fact, if its backend gave a whole number of bytes."""
    value = (facts or {}).get("weight_bytes")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class CostRow:
    """One model's cost as the reports show it, with its ratios to the reference's.

    Attributes:
        label: The model's label; role: ``reference`` or ``candidate``.
        new_tokens: Tokens each request generated; prompts: the sample's size.
        batch_size: The largest batch measured; ``tokens_per_second`` is the
            decode rate there.
        first_token_seconds: Time to first token of a single request.
        latency_p50, latency_p95: Seconds of a single request.
        peak_memory_bytes: Peak memory while measured (``memory`` says which).
        weight_bytes: The weights' footprint.
        speed_ratio, latency_ratio, memory_ratio, weight_ratio: this model's
            over the reference's (None where either is unknown); a speed ratio
            above 1 is faster, the others below 1 are cheaper.
    """

    label: str
    role: str
    new_tokens: int
    prompts: int
    batch_size: int
    tokens_per_second: float
    first_token_seconds: float
    latency_p50: float
    latency_p95: float
    peak_memory_bytes: int | None
    memory: str
    weight_bytes: int | None
    speed_ratio: float | None = None
    latency_ratio: float | None = None
    memory_ratio: float | None = None
    weight_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class GateReport:
    """Everything a report writer needs.

    Attributes:
        config: The session's configuration.
        models: Facts per model label (path, device, dtype, quantization,
            role; ``load_error`` for one that could not be loaded).
        candidates: The gate of each candidate, in the order given.
        records: Every case's record, by node id.
        complete: True only when the run was not interrupted, every
            collected quant case was selected and ran, and every model
            loaded: the gate of the whole suite.
        interrupted: The session was interrupted (Ctrl-C, ``pytest.exit``).
        failures: Why the run fails, each reason once (:class:`Failure`); the
            exit status and the JSON's ``failed`` follow from it.
        tests: The gate's own tests (each candidate's load, then its rows),
            failed or passed; none when interrupted, since an interrupted
            run's rows are not the gate's verdict.
        reference_passed: Cases the reference passes (for a reference-only run).
        selection: Which cases were asked for and which ran.
        reference_error: Why the reference could not be loaded, if it could not.
        calibration_overlap: Eval cases found in the calibration file, when one was given.
        unchecked: Cases generated but never checked because the run was
            interrupted, each with what every model that finished it replied
            (node id, key, slices, outputs); empty otherwise.
    """

    config: GateConfig
    models: dict[str, dict[str, Any]]
    candidates: tuple[CandidateGate, ...]
    records: tuple[CaseRecord, ...]
    complete: bool
    tests: tuple[GateTest, ...]
    reference_passed: int
    failures: tuple[Failure, ...] = ()
    interrupted: bool = False
    selection: Selection = field(default_factory=Selection)
    reference_error: str | None = None
    calibration_overlap: CalibrationOverlap | None = None
    unchecked: tuple[dict[str, Any], ...] = ()
    cost: tuple[CostRow, ...] = ()  # --quant-cost: every model measured, the reference first
    noise_floor: NoiseFloor | None = None  # --quant-noise-floor
    perplexity: PerplexitySection | None = None  # --quant-ppl-corpus (.perplexity)

    @property
    def failed(self) -> bool:
        """Whether the run fails: some reason is listed in :attr:`failures`."""
        return bool(self.failures)

    @property
    def has_results(self) -> bool:
        """Whether there is anything to show: a case ran or was generated, or a model failed to load."""
        return (
            bool(self.records or self.unchecked)
            or self.reference_error is not None
            or any(self._unevaluated(c) not in (None, Unevaluated.NOTHING_CHECKED) for c in self.candidates)
        )

    def matrix(self) -> Matrix:
        """The candidates side by side, as the terminal's matrix and the JSON's ``"matrix"`` show them."""
        reference = None if self.config.reference is None else self.config.reference.label
        slices = list(dict.fromkeys(r.slice for c in self.candidates for r in c.rows if not r.is_total))
        if any(r.is_total for c in self.candidates for r in c.rows):
            slices.append(ALL)
        rows = [{r.slice: r for r in c.rows} for c in self.candidates]
        return Matrix(
            reference=reference,
            reference_weight_bytes=None if reference is None else _weight_bytes(self.models.get(reference)),
            slices=tuple(slices),
            candidates=tuple(
                MatrixCandidate(
                    label=c.label,
                    verdict=c.verdict,
                    unevaluated=self._unevaluated(c),
                    weight_bytes=_weight_bytes(self.models.get(c.label)),
                )
                for c in self.candidates
            ),
            cells=tuple(
                tuple(
                    None if (row := by_slice.get(name)) is None else MatrixCell(row.drop, row.verdict, row.n)
                    for by_slice in rows
                )
                for name in slices
            ),
        )

    def _unevaluated(self, gate: CandidateGate) -> Unevaluated | None:
        if gate.evaluated:
            return None
        if gate.lost:
            return Unevaluated.CASES_LOST
        if "load_error" in self.models.get(gate.label, {}):
            return Unevaluated.NOT_LOADED
        if self.reference_error is not None:
            return Unevaluated.REFERENCE_NOT_LOADED
        return Unevaluated.NOTHING_CHECKED
