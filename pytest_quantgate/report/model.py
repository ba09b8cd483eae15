"""The report model: everything a writer renders, decided once.

:func:`~..aggregator.Aggregator.report` builds a :class:`GateReport` from the
records; the terminal, JSON and JUnit writers render it and recompute
nothing (no verdict, count or filter is derived in a writer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cases import CaseRecord
    from ..config import GateConfig
    from ..gate import SliceResult, Verdict

__all__ = [
    "LOAD",
    "CandidateGate",
    "GateReport",
    "GateTest",
    "Selection",
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

    @property
    def evaluated(self) -> bool:
        return self.not_evaluated is None

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
        }


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
        failed: Whether any row REGRESSED.
        tests: The gate's own tests (each candidate's load, then its rows),
            failed or passed; none when interrupted, since an interrupted
            run's rows are not the gate's verdict.
        reference_passed: Cases the reference passes (for a reference-only run).
        selection: Which cases were asked for and which ran.
        reference_error: Why the reference could not be loaded, if it could not.
    """

    config: GateConfig
    models: dict[str, dict[str, Any]]
    candidates: tuple[CandidateGate, ...]
    records: tuple[CaseRecord, ...]
    complete: bool
    failed: bool
    tests: tuple[GateTest, ...]
    reference_passed: int
    interrupted: bool = False
    selection: Selection = field(default_factory=Selection)
    reference_error: str | None = None

    @property
    def failures(self) -> tuple[GateTest, ...]:
        """The gate tests that fail the run."""
        return tuple(t for t in self.tests if t.failed)

    @property
    def has_results(self) -> bool:
        """Whether there is anything to show: a case ran, or a model failed to load."""
        return (
            bool(self.records)
            or self.reference_error is not None
            or any(not c.evaluated for c in self.candidates)
        )
