"""The process that runs tests (the only one without xdist, each worker with it).

:class:`CasePlugin` plans the collected quant cases once collection is
final, has the :class:`~..core.executor.Executor` generate them, runs each
test body once per model as the check, and puts the case's record into the
test's ``user_properties`` (with its status beside it, flat), whence it
reaches the process that reports, with or without xdist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..backends.base import Backend
from ..backends.registry import checked, load_backend
from ..core.cases import CaseBuildError, CaseSpec
from ..core.config import GateConfig
from ..core.executor import DEFAULT_GROUP, Executor, ReferenceUnavailable
from ..core.records import RECORD_KEY, STATUS_KEY, CaseRecord
from ..core.records_file import suite_fingerprint
from ..core.sharding import ShardPlan, assign_shards, shard_name
from ..report import terminal
from ..values.specs import ModelSpec
from . import _compat
from .collection import body_check, case_of, cost_of, is_quant_case, run_arg_problem, slices_of
from .progress import ProgressWriter
from .rerun import Rerun
from .xdist import FACTS_KEY, SHARD_KEY

__all__ = ["CASE_ERROR_KEY", "CASE_KEY", "WORKER_KEY", "CasePlugin"]

#: The session's :class:`CasePlugin`.
WORKER_KEY = pytest.StashKey["CasePlugin"]()
#: An item's case, once planned.
CASE_KEY = pytest.StashKey[CaseSpec]()
#: Why an item's case could not be built (its test then fails with this line).
CASE_ERROR_KEY = pytest.StashKey[str]()
_SHARD_ITEM_KEY = pytest.StashKey[str]()
NO_REFERENCE = "quantgate: no reference model given (--quant-reference)"


class CasePlugin:
    """Plans the collected cases, generates them, checks them: any process that runs tests."""

    def __init__(self, config: pytest.Config, gate_config: GateConfig, rerun: Rerun | None = None):
        self.config = config
        self.gate_config = gate_config
        self.rerun = rerun or Rerun()
        self.terminal = ProgressWriter(config)
        self.executor = Executor(gate_config, emit=self.terminal.emit, loader=self._load)
        self.executor.quiet = config.get_verbosity() < 0  # -q: only each model's last progress line
        self.deselected = 0  # quant cases deselected (-k, -m, --lf, --deselect, a gate row re-run)
        self.selected = 0
        self.collected = False  # whether this process collected (an xdist controller does not)
        self._cost_measured = False
        #: Why this process refused to run what it collected (an xdist controller raises it again).
        self.usage_error: str | None = None
        #: ``--quant-shard``: the fingerprint of every quant case collected (:func:`suite_fingerprint`).
        self.suite: str | None = None
        self.suite_order: list[str] = []  # their node ids in collection order (a merge's record order)

    def _load(self, spec: ModelSpec, *, device: str, dtype: str) -> Backend:
        made = self.config.hook.pytest_quantgate_make_backend(spec=spec, device=device, dtype=dtype)
        return (
            checked(made, spec.label) if made is not None else load_backend(spec, device=device, dtype=dtype)
        )

    def pytest_ignore_collect(self) -> bool | None:
        # --quant-merge gates records written elsewhere: it collects nothing, runs nothing.
        return True if self.gate_config.merging else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if self.rerun:
            kept = [i for i in items if is_quant_case(i) and self.rerun.keeps(slices_of(i))]
            if len(kept) < len(items):
                config.hook.pytest_deselected(items=[i for i in items if i not in kept])
                items[:] = kept
        if self.gate_config.shard is not None:
            self._keep_shard(config, items)

    def _keep_shard(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """``--quant-shard=K/N``: deselect the quant cases of the other shards (issue 21).

        Cut from every collected quant case (before ``-k``/``-m``), so that
        every machine of the matrix cuts the same shards. Other tests run in
        shard 1 only: N machines need not run them N times.
        """
        assert self.gate_config.shard is not None
        index, count = self.gate_config.shard
        quant = [i for i in items if is_quant_case(i)]
        self.suite = suite_fingerprint({i.nodeid: _key_of(i) for i in quant})
        self.suite_order = [i.nodeid for i in quant]
        costs = {i.nodeid: cost for i in quant if (cost := cost_of(i)) is not None}
        mine = {nodeid for nodeid, k in assign_shards(costs, count).items() if k == index - 1}
        keep = [i.nodeid in mine or (not is_quant_case(i) and index == 1) for i in items]
        if not all(keep):
            config.hook.pytest_deselected(items=[i for i, k in zip(items, keep, strict=True) if not k])
            items[:] = [i for i, k in zip(items, keep, strict=True) if k]

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(map(is_quant_case, items))

    @pytest.hookimpl(tryfirst=True)  # before xdist sends the collection to the controller
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # session.items is final here: -k, -m and --lf have deselected what
        # this process will not run, so nothing deselected is generated.
        self._shard(session.items)
        for item in session.items:
            self._plan(item)
            self._pin_fixture_models(item)
        self.selected = sum(map(is_quant_case, session.items))
        self.collected = True
        if (
            self.selected
            and not self.gate_config.enabled
            and self.gate_config.require_reference
            and not self.config.option.collectonly  # runs nothing: nothing can pass unchecked
        ):
            cases = "quant case" if self.selected == 1 else "quant cases"
            self.usage_error = (
                f"quantgate: {self.selected} {cases} collected but no reference model given, and "
                "quant_require_reference is true: give --quant-reference (or quant_reference)"
            )
            raise pytest.UsageError(self.usage_error)

    def _shard(self, items: list[pytest.Item]) -> None:
        """On an xdist worker told to shard: cut the quant cases into one shard per worker.

        Every worker computes the same shards (from the selected cases alone)
        and writes them where the controller's scheduler reads them, before
        xdist reports the collection; the scheduler then sends each shard
        whole to one worker, which generates it once per model.
        """
        workerinput = getattr(self.config, "workerinput", None)
        plan = workerinput.get(SHARD_KEY) if workerinput else None
        workers = int(workerinput.get("workercount", 1)) if workerinput else 1
        if not plan or workers < 2 or not self.gate_config.enabled:
            return
        costs = {item.nodeid: cost for item in items if (cost := cost_of(item)) is not None}
        names = {nodeid: shard_name(k) for nodeid, k in assign_shards(costs, workers).items()}
        for item in items:
            if item.nodeid in names:
                item.stash[_SHARD_ITEM_KEY] = names[item.nodeid]
        ShardPlan(plan).write(names)

    def _pin_fixture_models(self, item: pytest.Item) -> None:
        """Models a test takes as fixtures stay loaded once loaded: freed, they would load twice."""
        names = getattr(item, "fixturenames", ())
        if not self.gate_config.enabled:
            return
        if "quant_reference" in names:
            self.executor.pool.pin(self.executor.labels[0])
        if "quant_candidates" in names:
            for label in self.executor.labels[1:]:
                self.executor.pool.pin(label)

    def _plan(self, item: pytest.Item) -> None:
        if not is_quant_case(item):
            return
        if not self.gate_config.enabled:
            if isinstance(item, pytest.Function) and hasattr(item, "callspec"):
                item.add_marker(pytest.mark.skip(reason=NO_REFERENCE))
            return
        problem = run_arg_problem(item)
        if problem is not None:
            item.stash[CASE_ERROR_KEY] = problem
            return
        case = _case_once(item)
        if case is None:
            return
        self.executor.plan(case, group=item.stash.get(_SHARD_ITEM_KEY, DEFAULT_GROUP))

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if CASE_ERROR_KEY in pyfuncitem.stash:
            pytest.fail(pyfuncitem.stash[CASE_ERROR_KEY], pytrace=False)
        case = pyfuncitem.stash.get(CASE_KEY, None)
        if case is None:
            return None
        generates = not self.executor.is_generated(case.key)
        try:
            record = self.executor.record(case, body_check(pyfuncitem))
        except ReferenceUnavailable:
            # Nothing can be gated: stop the run (the summary shows the whole error).
            pytest.exit(f"quantgate: the reference {self.executor.labels[0]} could not be loaded")
        if generates:
            self.terminal.resume_progress_line(pyfuncitem.nodeid)
        pyfuncitem.user_properties.append((RECORD_KEY, record.to_json()))
        pyfuncitem.user_properties.append((STATUS_KEY, record.worst.value))
        _end_test(record)
        return True

    def finish(self, *, interrupted: bool) -> dict[str, Any]:
        """At the end of the session: measure the models' cost when asked (once, in one process,
        never after an interruption), then what this process learnt (:meth:`facts`)."""
        first = getattr(self.config, "workerinput", {}).get("workerid", "gw0") == "gw0"
        asked = self.gate_config.cost and self.gate_config.enabled and self.collected
        if asked and first and not interrupted and not self._cost_measured:
            self._cost_measured = True
            self.executor.measure_cost()
        return self.facts(interrupted=interrupted)

    def facts(self, *, interrupted: bool = False) -> dict[str, Any]:
        """What this process learnt, for the process that reports; when the run was interrupted,
        also the cases generated but never checked (:meth:`~..core.executor.Executor.unchecked`)."""
        facts: dict[str, Any] = {
            "models": self.executor.pool.facts,
            "load_failures": self.executor.unavailable,
        }
        if self.collected:
            facts.update(collected=self.selected + self.deselected, selected=self.selected)
        if interrupted and self.gate_config.enabled:
            facts["unchecked"] = self.executor.unchecked()
        if self.usage_error is not None:
            facts["usage_error"] = self.usage_error
        if self.suite is not None:
            facts.update(suite=self.suite, suite_order=self.suite_order)
        return facts

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput"):
            facts = self.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
            self.config.workeroutput[FACTS_KEY] = json.dumps(facts)  # type: ignore[attr-defined]

    def pytest_unconfigure(self) -> None:
        self.executor.close()


def _case_once(item: pytest.Item) -> CaseSpec | None:
    """The item's case, built once (a trajectory begins when its case is built) and kept in its
    stash; None when it is not a quant case or cannot be built (the error is kept instead)."""
    if CASE_KEY in item.stash:
        return item.stash[CASE_KEY]
    if CASE_ERROR_KEY in item.stash:
        return None
    try:
        case = case_of(item)
    except CaseBuildError as exc:
        item.stash[CASE_ERROR_KEY] = str(exc)
        return None
    if case is not None:
        item.stash[CASE_KEY] = case
    return case


def _key_of(item: pytest.Item) -> str:
    """A quant case's key for the suite fingerprint; why it has none, when its case cannot be built."""
    case = _case_once(item)
    if case is None:
        return f"error: {item.stash.get(CASE_ERROR_KEY, '')}"
    return case.key


def _end_test(record: CaseRecord) -> None:
    """Fail, skip or xfail the running test as its record's ``test_outcome`` says."""
    outcome, reason = record.test_outcome
    if outcome == "fail":
        pytest.fail("\n".join(terminal.case_lines(record)), pytrace=False)
    if outcome == "skip":
        _compat.skip_at_item(reason or "")
    if outcome == "xfail":
        pytest.xfail(reason or "")
