"""The process that reports (the only one without xdist, the controller with it).

:class:`GatePlugin` feeds every test report's case record to the
:class:`~..report.aggregator.Aggregator`, and at the end of the session has
it build the report, hands each gate test (``::quantgate::<candidate>::<row>``)
to pytest's reporters, sets the exit status from the report's failures and
writes the JSON report. With ``--quant-records`` it writes the shard's
records instead of gating them; with ``--quant-merge`` it is fed every
shard's records before the session starts (:mod:`.shards`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..core.config import GateConfig
from ..core.records import RECORD_KEY, CaseRecord
from ..report import html, json_report, markdown, perplexity, terminal
from ..report.aggregator import Aggregator
from ..report.model import GateReport, GateTest, parse_gate_test_id
from ..statistics.gate import SliceResult
from . import _compat
from .shards import SHARD_NARROWING, merge_shards, write_shard
from .worker import CasePlugin
from .xdist import add_facts

__all__ = ["GatePlugin", "record_of"]


def record_of(report: pytest.TestReport) -> CaseRecord | None:
    """The case record a test report carries, if it is a quant case's."""
    for name, value in getattr(report, "user_properties", ()):
        if name == RECORD_KEY:
            return CaseRecord.from_json(value)
    return None


class GatePlugin:
    """Gathers the records of every test report and gates them: the controller."""

    def __init__(self, config: pytest.Config, gate_config: GateConfig, cases: CasePlugin):
        self.config = config
        self.gate_config = gate_config
        self.aggregator = Aggregator(gate_config)
        self._cases = cases  # this process's own, when it runs tests too
        self.report: GateReport | None = None
        self.write_errors: list[str] = []  # report files that could not be written, one line each
        self.json_written: Path | None = None  # where the JSON report went, once it is written
        #: ``--quant-records``: where this shard's records went (it gates nothing itself).
        self.records_written: Path | None = None
        #: ``--quant-merge``: the shards' records are fed now, before any test could run; what
        #: narrowed them, and whether their selections were counted.
        self._merged = merge_shards(gate_config, self.aggregator) if gate_config.merging else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            record = record_of(report)
            if record is not None:
                self.aggregator.add(record)
        elif report.when == "setup" and report.skipped and "quant_case" in report.keywords:
            self.aggregator.add_skipped()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if self._merged is not None:  # a merge ran nothing: its exit status is the gate's
            narrowed_by, counted = self._merged
            if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
                session.exitstatus = pytest.ExitCode.OK
        else:
            add_facts(self.aggregator, self._cases.finish(interrupted=interrupted))  # this process's own
            self._measure_perplexity(interrupted)
            narrowed, uncounted = _narrowing(self.config)
            narrowed_by = [*narrowed, *self._cases.rerun.given]
            if self.gate_config.shard is not None:
                index, count = self.gate_config.shard
                narrowed_by.append(f"{SHARD_NARROWING} {index}/{count}")
            counted = not uncounted and not self._cases.rerun
        if self.gate_config.records_dir is not None:
            self._write_records(session, narrowed_by, counted)
            return
        self.report = self.aggregator.report(
            interrupted=interrupted,
            narrowed_by=narrowed_by,
            stopped=str(session.shouldstop or session.shouldfail or "") or None,
            counted=counted,
        )
        self.report = perplexity.attach(self.report)  # --quant-ppl-corpus: its section and failures
        for test in self.report.tests:
            self._log_gate_test(test)
        if self.report.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        path = self.gate_config.report_path
        if path is not None:
            # Always, even interrupted or with nothing run: a stale report
            # must never stand in for this run's.
            try:
                json_report.write(self.report, path)
                self.json_written = path
            except OSError as exc:  # checked up front, but the disk can still fill up
                # The error's own file name is the temporary file beside it: name the user's path.
                why = exc.strerror or type(exc).__name__
                self.write_errors.append(f"quantgate: could not write the JSON report to {path}: {why}")
        self._write_other_reports()
        if self.write_errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _measure_perplexity(self, interrupted: bool) -> None:
        """``--quant-ppl-corpus`` (issue 19): each model's perplexity, after the quality run.

        Here, in the process that reports, once: with xdist the workers have
        finished and the controller loads each model in turn (one in memory at
        a time), as the only process does without. Not after an interruption,
        nor in a shard that records (its merge has no models), and never for a
        model that failed to load elsewhere.
        """
        cfg = self.gate_config
        if cfg.perplexity is None or not cfg.enabled or interrupted or cfg.records_dir is not None:
            return
        measured = self._cases.executor.measure_perplexity(skip=set(self.aggregator.load_failures))
        self.aggregator.add_model_facts(measured)

    def _write_records(self, session: pytest.Session, narrowed_by: list[str], counted: bool) -> None:
        """``--quant-records``: this shard's records for ``--quant-merge``; the gate is the merge's."""
        try:
            self.records_written = write_shard(
                self.gate_config, self.aggregator, narrowed_by=narrowed_by, counted=counted
            )
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            self.write_errors.append(
                f"quantgate: could not write the shard's records to {self.gate_config.records_dir}: {why}"
            )
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_other_reports(self) -> None:
        """Markdown (--quant-markdown, and the job's step summary) and HTML (--quant-html)."""
        report = self.report
        assert report is not None
        cfg = self.gate_config
        writers: list[tuple[Path | None, str, Callable[[Path], None]]] = [
            (cfg.markdown_path, "Markdown", lambda p: markdown.write(report, p, cfg.report_path)),
            (cfg.step_summary, "Markdown", lambda p: markdown.append(report, p, cfg.report_path)),
            (cfg.html_path, "HTML", lambda p: html.write(report, p)),
        ]
        for path, kind, write in writers:
            if path is None:
                continue
            try:
                write(path)
            except OSError as exc:
                why = exc.strerror or type(exc).__name__
                self.write_errors.append(f"quantgate: could not write the {kind} report to {path}: {why}")

    def _log_gate_test(self, test: GateTest) -> None:
        """Hand a gate test to every reporter (JUnit, the --lf cache, ...) and the summary.

        A call report (failed or passed: a passing row clears its earlier
        failure from the --lf cache), then a teardown report, which is where
        JUnit writes a test's properties. The terminal reporter is left out
        of the hook call: its progress line is finished by then, and a stray
        ``F`` after ``[100%]`` reads badly. The test still counts in the
        summary line, failed or passed (as in JUnit), and a failure in the
        FAILURES section. JUnit gets the reports under the
        id without its leading ``::`` (:func:`~._compat.junit_writers`).
        """
        assert self.report is not None
        pm = self.config.pluginmanager
        tr = pm.get_plugin("terminalreporter")
        junit = _compat.junit_writers(self.config)
        log = pm.subset_hook_caller(
            "pytest_runtest_logreport", remove_plugins=[*junit, *([tr] if tr else [])]
        )
        call, teardown = _gate_reports(self.report, test, test.nodeid)
        log(report=call)
        log(report=teardown)
        for writer in junit:
            for report in _gate_reports(self.report, test, test.name_in_junit):
                writer.pytest_runtest_logreport(report)
            if test.row is not None:
                # The row's statistics at the test suite's level too: the JUnit schema pytest
                # writes by default (xunit2) has no properties per test case.
                writer.add_global_property(test.name_in_junit, _statistics(test.row))
        if tr is not None:
            _compat.count_in_summary(tr, call)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.gate_config.records_dir is not None:  # a shard that records gates nothing itself
            shard = self.gate_config.shard
            assert shard is not None
            for error in self.write_errors:
                terminalreporter.line(error, red=True)
            if self.records_written is not None:
                terminalreporter.line(
                    f"quantgate: shard {shard[0]}/{shard[1]}: {len(self.aggregator.records)} case records "
                    f"written to {self.records_written}; gate them with --quant-merge"
                )
            return
        if self.report is None:
            return
        width = _compat.terminal_width(terminalreporter)
        for line in terminal.summary(
            self.report, width=width, write_errors=self.write_errors, json_written=self.json_written
        ):
            if isinstance(line, terminal.Sep):
                terminalreporter.write_sep("=", line.title, **line.markup)
                continue
            for text, markup in line:
                terminalreporter.write(text, **markup)
            terminalreporter.line("")


def _narrowing(config: pytest.Config) -> tuple[list[str], bool]:
    """The options that narrow the quant cases a run selects (or can stop it early).

    Returns:
        The options as written, and whether one of them narrowed what was
        collected in the first place (``--lf`` with earlier test failures,
        ``--sw``, node ids): the deselections of ``-k``, ``-m`` and
        ``--deselect`` are counted, those are not.
    """
    opt = config.option
    out: list[str] = []
    uncounted = False
    if getattr(opt, "keyword", ""):
        out.append(f"-k {opt.keyword}")
    if getattr(opt, "markexpr", ""):
        out.append(f"-m {opt.markexpr}")
    if getattr(opt, "deselect", None):
        out.append("--deselect")
    # --lf whose earlier failures are all among other tests runs everything it collected:
    # then it narrowed nothing, and the run is whole if everything ran.
    if (
        getattr(opt, "lf", False)
        and _earlier_test_failures(config)
        and _compat.lf_narrowed(config) is not False
    ):
        out.append("--lf")
        uncounted = True
    if getattr(opt, "stepwise", False):
        out.append("--sw")
        uncounted = True
    maxfail = getattr(opt, "maxfail", 0) or 0
    if maxfail:
        out.append("-x" if maxfail == 1 else f"--maxfail={maxfail}")
    node_ids = [a for a in config.args if "::" in a]
    out.extend(node_ids)
    return out, uncounted or bool(node_ids)


def _earlier_test_failures(config: pytest.Config) -> bool:
    """Whether the --lf cache holds failures of tests (not only of gate rows), which --lf re-runs alone."""
    cache = getattr(config, "cache", None)
    lastfailed = cache.get("cache/lastfailed", {}) if cache is not None else {}
    return any(parse_gate_test_id(str(k)) is None for k in lastfailed)


def _statistics(row: SliceResult) -> str:
    """A row's statistics as one line of JSON (fractions; ``drop`` > 0: the candidate is worse)."""
    keys = ("n", "ref_accuracy", "cand_accuracy", "drop", "upper", "tolerance", "p_adjusted", "verdict")
    data = row.to_dict()
    return json.dumps({k: data[k] for k in keys}, sort_keys=True)


def _gate_reports(
    report: GateReport, test: GateTest, nodeid: str
) -> tuple[pytest.TestReport, pytest.TestReport]:
    """The call and teardown reports of a gate test, under ``nodeid``."""
    if test.row is not None:
        props = [("quantgate_slice", json.dumps(test.row.to_dict(), sort_keys=True))]
    else:
        gate = test.candidate
        load = {"label": gate.label, "evaluated": gate.evaluated, "not_evaluated": gate.not_evaluated}
        props = [("quantgate_load", json.dumps(load, sort_keys=True))]
    common: dict[str, Any] = {
        "nodeid": nodeid,
        "location": ("quantgate", None, test.nodeid),
        "keywords": {"quantgate": 1},
        "user_properties": props,
    }
    call = pytest.TestReport(
        outcome="failed" if test.failed else "passed",
        longrepr=(
            _compat.FailureText("\n".join(terminal.gate_test_lines(report, test)), test.nodeid)
            if test.failed
            else None
        ),
        when="call",
        **common,
    )
    return call, pytest.TestReport(outcome="passed", longrepr=None, when="teardown", **common)
