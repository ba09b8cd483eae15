"""The state of one gating session, without pytest.

:class:`QuantSession` owns the model pool, the plan of cases, their
transcripts on every model, and — on the controller — the records gathered
from test reports, the gate and the reports. The plugin keeps one in
``config.stash`` and calls it from its hooks.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Backend, BackendError, load_backend
from .cases import CaseRecord, CaseSpec
from .config import GateConfig
from .gate import GateSettings, SliceOutcomes, SliceResult, Verdict, evaluate, overall_verdict
from .runner import CaseRun, run_cases

__all__ = ["CandidateGate", "GateReport", "ModelPool", "QuantSession"]

Emit = Callable[[str], None]


class ModelPool:
    """Loads each model once, lazily, and remembers load failures."""

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self._emit = emit or (lambda line: None)
        self._loader = loader
        self._models: dict[str, Backend] = {}
        self._errors: dict[str, BackendError] = {}
        self.facts: dict[str, dict[str, Any]] = {}

    @property
    def specs(self) -> dict[str, Any]:
        assert self.config.reference is not None
        return {s.label: s for s in (self.config.reference, *self.config.candidates)}

    def get(self, label: str) -> Backend:
        """The loaded model, loading it on first use; raises BackendError."""
        if label in self._models:
            return self._models[label]
        if label in self._errors:
            raise self._errors[label]
        spec = self.specs[label]
        self._emit(f"quantgate: loading {spec.display} ...")
        try:
            model = self._loader(spec, device=self.config.device, dtype=self.config.dtype)
        except BackendError as exc:
            self._errors[label] = exc
            self._emit(f"quantgate: could not load {spec.label}: {exc}")
            raise
        except Exception as exc:  # an unexpected failure is still this model's failure
            err = BackendError(f"cannot load {spec.label}: {type(exc).__name__}: {exc}")
            self._errors[label] = err
            self._emit(f"quantgate: could not load {spec.label}: {err}")
            raise err from exc
        self._models[label] = model
        self.facts[label] = model.describe()
        f = self.facts[label]
        self._emit(
            f"quantgate: loaded {label} on {f.get('device')} ({f.get('dtype')}) "
            f"in {f.get('load_seconds', 0):.1f}s"
        )
        return model

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()


class _Progress:
    """Progress lines for long generation: at most one every few seconds."""

    def __init__(self, emit: Emit, label: str, total: int, every: float = 5.0):
        self.emit, self.label, self.total, self.every = emit, label, total, every
        self.started = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        if done >= total:
            rate = f", {total / elapsed:.1f} cases/s" if elapsed > 0 else ""
            self.emit(f"quantgate: {self.label}: {total} cases generated in {elapsed:.1f}s{rate}")
        else:
            eta = elapsed / done * (total - done) if done else float("nan")
            self.emit(f"quantgate: {self.label}: {done}/{total} cases, {elapsed:.0f}s, ~{eta:.0f}s left")


@dataclass
class CandidateGate:
    """The gate of one candidate: slice rows, then the ALL row."""

    label: str
    display: str
    rows: list[SliceResult]
    errors: int = 0
    regressed: list[CaseRecord] = field(default_factory=list)
    improved: list[CaseRecord] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        return overall_verdict(self.rows)

    @property
    def failing_rows(self) -> list[SliceResult]:
        return [r for r in self.rows if r.verdict is Verdict.REGRESSED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "display": self.display,
            "verdict": self.verdict.value,
            "errors": self.errors,
            "slices": [r.to_dict() for r in self.rows],
        }


@dataclass
class GateReport:
    """Everything a report writer needs."""

    config: GateConfig
    models: dict[str, dict[str, Any]]
    candidates: list[CandidateGate]
    records: list[CaseRecord]
    complete: bool = True

    @property
    def failed(self) -> bool:
        return any(c.failing_rows for c in self.candidates)


class QuantSession:
    """One session's cases, transcripts, records and gate."""

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self.emit: Emit = emit or (lambda line: None)
        self.pool = ModelPool(config, self.emit, loader)
        self.plan: dict[str, CaseSpec] = {}
        self.runs: dict[str, dict[str, CaseRun]] = {}
        self.load_errors: dict[str, str] = {}
        self.records: list[CaseRecord] = []
        self.worker_facts: dict[str, dict[str, Any]] = {}

    @property
    def labels(self) -> list[str]:
        assert self.config.reference is not None
        return [self.config.reference.label, *(c.label for c in self.config.candidates)]

    # -- execution (any process that runs tests) ------------------------------

    def add_case(self, case: CaseSpec) -> None:
        self.plan.setdefault(case.key, case)

    @property
    def generated(self) -> bool:
        return bool(self.runs) or bool(self.load_errors)

    def generate(self) -> None:
        """Run every planned case on every model, one model after another."""
        cases = list(self.plan.values())
        for label in self.labels:
            if label in self.runs or label in self.load_errors:
                continue
            with self._library_warnings(label):
                try:
                    backend = self.pool.get(label)
                except BackendError as exc:
                    self.load_errors[label] = str(exc)
                    continue
                progress = _Progress(self.emit, label, len(cases))
                self.runs[label] = run_cases(
                    backend, cases, batch_size=self.config.batch_size, on_progress=progress
                )

    @contextlib.contextmanager
    def _library_warnings(self, label: str) -> Iterator[None]:
        """Collect warnings that model libraries raise while loading/generating.

        They are not the suite's warnings: under ``filterwarnings = error``
        they would fail whichever test happened to trigger generation. They
        are summarised in one line instead.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        seen = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
        if seen:
            more = f" (+{len(seen) - 1} more)" if len(seen) > 1 else ""
            self.emit(f"quantgate: {label}: library warning {seen[0]}{more}")

    def run_of(self, label: str, key: str) -> CaseRun:
        """The transcript of a case on a model (generating on first call)."""
        if not self.generated:
            self.generate()
        if label in self.load_errors:
            return CaseRun(key, error=f"model {label} failed to load: {self.load_errors[label]}")
        return self.runs[label][key]

    # -- aggregation (the controller) -----------------------------------------

    def add_record(self, record: CaseRecord) -> None:
        self.records.append(record)

    def gate(self, slice_tolerances: dict[str, float] | None = None) -> list[CandidateGate]:
        """Per candidate × slice statistics and verdicts from the records."""
        settings = GateSettings(alpha=self.config.alpha, tolerance=self.config.tolerance)
        marker_tols = dict(slice_tolerances or {})
        for rec in self.records:
            for name, tol in rec.tolerances.items():
                # Two markers disagreeing: the stricter margin wins.
                marker_tols[name] = min(tol, marker_tols.get(name, tol))
        out = []
        for cand in self.config.candidates:
            valid = [r for r in self.records if cand.label in r.outcomes and r.status(cand.label) != "error"]
            errors = sum(
                1 for r in self.records if cand.label in r.outcomes and r.status(cand.label) == "error"
            )
            slice_names: list[str] = []
            for r in valid:
                for s in r.slices:
                    if s not in slice_names:
                        slice_names.append(s)
            slices = [
                _outcomes(
                    name,
                    [r for r in valid if name in r.slices],
                    cand.label,
                    self.config.tolerance_for(name, marker_tols.get(name)),
                )
                for name in slice_names
            ]
            total = _outcomes("ALL", valid, cand.label, self.config.tolerance)
            rows = evaluate(slices, total, settings)
            out.append(
                CandidateGate(
                    label=cand.label,
                    display=cand.display,
                    rows=rows,
                    errors=errors,
                    regressed=[r for r in valid if r.status(cand.label) == "regressed"],
                    improved=[r for r in valid if r.status(cand.label) == "improved"],
                )
            )
        return out

    def report(self, gates: Sequence[CandidateGate], *, complete: bool = True) -> GateReport:
        known = {**self.worker_facts, **self.pool.facts}
        models = {}
        for label, spec in self.pool.specs.items():
            facts = known.get(label) or {"label": label, "spec": spec.text, "path": spec.path}
            models[label] = {**facts, "role": "reference" if label == self.labels[0] else "candidate"}
        return GateReport(self.config, models, list(gates), list(self.records), complete)


def _outcomes(name: str, records: Sequence[CaseRecord], cand: str, tolerance: float) -> SliceOutcomes:
    clusters = tuple(r.cluster for r in records)
    return SliceOutcomes(
        name=name,
        reference=tuple(r.outcomes[r.reference].outcome == "pass" for r in records),
        candidate=tuple(r.outcomes[cand].outcome == "pass" for r in records),
        clusters=clusters if any(c is not None for c in clusters) else None,
        tolerance=tolerance,
    )
