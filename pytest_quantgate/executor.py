"""The worker side of a session, without pytest: models, plan, generation, checks.

:class:`Executor` lives in every process that runs tests (the only process
without xdist, each worker with it). It owns the :class:`ModelPool`, the plan
of cases in groups, and their transcripts on every model, and turns a test
body's verdict on each model's output into a :class:`~.cases.CaseRecord`.
The controller's side — records to gate to report — is
:mod:`.aggregator`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from .backends.base import Backend, BackendError, load_backend
from .cases import CaseRecord, CaseSpec, ModelOutcome, Outcome, resolve_skips
from .config import GateConfig
from .runner import CaseRun, run_cases

__all__ = ["DEFAULT_GROUP", "Executor", "ModelPool", "ReferenceUnavailable"]

Emit = Callable[[str], None]


class ReferenceUnavailable(BackendError):
    """The reference model could not be loaded: there is nothing to gate against."""


class ModelPool:
    """Loads each model once, lazily, and remembers load failures.

    Attributes:
        facts: label -> ``describe()`` of each loaded model.
        failures: label -> the whole message of each model that failed to
            load (it is tried once).
    """

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self._emit = emit or (lambda line: None)
        self._loader = loader
        self._models: dict[str, Backend] = {}
        self._errors: dict[str, BackendError] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}

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
            self._fail(label, exc)
            raise
        except Exception as exc:  # an unexpected failure is still this model's failure
            err = BackendError(f"cannot load {spec.label}: {type(exc).__name__}: {exc}")
            self._fail(label, err)
            raise err from exc
        self._models[label] = model
        self.facts[label] = model.describe()
        f = self.facts[label]
        self._emit(
            f"quantgate: loaded {label} on {f.get('device')} ({f.get('dtype')}) "
            f"in {f.get('load_seconds', 0):.1f}s"
        )
        return model

    def _fail(self, label: str, exc: BackendError) -> None:
        self._errors[label] = exc
        self.failures[label] = str(exc).strip() or type(exc).__name__
        self._emit(f"quantgate: could not load {label}: {self.failures[label]}")

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


#: The group of cases generated together when nothing divides them.
DEFAULT_GROUP = "session"

#: A check of one model's run of a case: ``check(run) -> (outcome, message)``.
Check = Callable[[CaseRun], tuple[Outcome, "str | None"]]


class Executor:
    """Generates cases on every model, a group at a time, and checks them.

    Cases are planned into groups before any test runs; the first case
    asked for in a group generates the whole group on every model (batched,
    one model after another), so a group is the unit of batching — the
    whole session by default, a worker's shard under xdist.
    """

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self.emit: Emit = emit or (lambda line: None)
        self.pool = ModelPool(config, self.emit, loader)
        self._groups: dict[str, dict[str, CaseSpec]] = {}
        self._group_of: dict[str, str] = {}
        self._generated: set[str] = set()
        self._runs: dict[str, dict[str, CaseRun]] = {}

    @property
    def labels(self) -> list[str]:
        """The reference's label, then the candidates'."""
        assert self.config.reference is not None
        return [self.config.reference.label, *(c.label for c in self.config.candidates)]

    def plan(self, case: CaseSpec, group: str = DEFAULT_GROUP) -> None:
        """Add a case to a group; a case already planned keeps its group."""
        if case.key in self._group_of:
            return
        self._group_of[case.key] = group
        self._groups.setdefault(group, {})[case.key] = case

    def is_generated(self, key: str) -> bool:
        """Whether the group of the case ``key`` has been generated."""
        return self._group_of[key] in self._generated

    @property
    def unavailable(self) -> dict[str, str]:
        """Models that could not be loaded -> why."""
        return dict(self.pool.failures)

    def generate(self, group: str) -> None:
        """Run every case of ``group`` on every model, one model after another.

        The reference first: when it cannot be loaded, nothing can be gated
        and :class:`ReferenceUnavailable` stops here, before any candidate
        loads. A candidate that cannot be loaded is left out (once; see
        :attr:`unavailable`) and the others run.

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        cases = list(self._groups.get(group, {}).values())
        self._generated.add(group)
        reference = self.labels[0]
        if reference in self.pool.failures:
            raise ReferenceUnavailable(self.pool.failures[reference])
        for label in self.labels:
            if label in self.pool.failures:
                continue
            with self._library_warnings(label):
                try:
                    backend = self.pool.get(label)
                except BackendError as exc:
                    if label == reference:
                        raise ReferenceUnavailable(self.pool.failures[label]) from exc
                    continue
                progress = _Progress(self.emit, label, len(cases))
                runs = run_cases(backend, cases, batch_size=self.config.batch_size, on_progress=progress)
            self._runs.setdefault(label, {}).update(runs)

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

    def run_of(self, label: str, key: str) -> CaseRun | None:
        """The transcript of a planned case on a model (generating its group first).

        None for a candidate that could not be loaded.

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        group = self._group_of[key]
        if group not in self._generated:
            self.generate(group)
        if label in self.pool.failures:
            if label == self.labels[0]:
                raise ReferenceUnavailable(self.pool.failures[label])
            return None
        return self._runs[label][key]

    def record(self, case: CaseSpec, check: Check) -> CaseRecord:
        """Check a planned case's output on every model; the record the controller gates.

        A candidate that could not be loaded has no outcome: the record
        lists it as unavailable. Skips are resolved across models
        (:func:`~.cases.resolve_skips`).

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        outcomes: dict[str, ModelOutcome] = {}
        unavailable: dict[str, str] = {}
        for label in self.labels:
            run = self.run_of(label, case.key)
            if run is None:
                unavailable[label] = self.pool.failures[label]
                continue
            transcript = tuple(t.to_dict() for t in run.turns)
            result: Outcome
            message: str | None
            if run.error is not None:
                result, message = "error", run.error
            elif run.failure is not None:  # a step the trajectory rejected: the body is not asked
                result, message = "fail", run.failure
            else:
                result, message = check(run)
            outcomes[label] = ModelOutcome(result, run.output, message, transcript, run.state)
        return CaseRecord(
            key=case.key,
            nodeid=case.nodeid,
            slices=case.slices,
            cluster=case.cluster,
            critical=case.critical,
            reference=self.labels[0],
            outcomes=resolve_skips(outcomes, self.labels[0]),
            tolerances=case.tolerances,
            prompt=case.prompt_text,
            params=case.params,
            unavailable=unavailable,
            trajectory=case.trajectory is not None,
        )

    def close(self) -> None:
        self.pool.close()
