"""pytest hooks: options, markers, collection, fixtures, report hooks.

Wiring only: every decision is made by the modules this one calls. The
stateful part is :class:`QuantGatePlugin`, registered from
``pytest_configure`` and kept in ``config.stash``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from .backends.base import Backend
from .cases import (
    RECORD_KEY,
    CaseRecord,
    CaseSpec,
    ModelOutcome,
    QuantCaseMarker,
    case_key,
    normalize_prompt,
    parse_quant_case,
    parse_slice_marker,
    run_check,
)
from .config import ConfigError, GateConfig
from .gate import SliceResult
from .report import json_report, terminal
from .session import CandidateGate, QuantSession

plugin_key = pytest.StashKey["QuantGatePlugin"]()
_case_key = pytest.StashKey[CaseSpec]()
_case_error_key = pytest.StashKey[str]()
_markers_key = pytest.StashKey[dict[str, QuantCaseMarker]]()

_OPTIONS = (
    # flag, ini name, ini type, help
    (
        "--quant-reference",
        "quant_reference",
        "string",
        "reference model: [LABEL=]PATH to a local checkpoint (default: none; quant cases skip)",
    ),
    (
        "--quant-candidate",
        "quant_candidate",
        "linelist",
        "candidate model spec [LABEL=][SCHEME:]PATH, repeatable; schemes: bnb-nf4, bnb-int8, "
        "torchao-int8, torchao-int4, rtn<bits>[g<group>] (default: none)",
    ),
    (
        "--quant-device",
        "quant_device",
        "string",
        "auto, cpu, cuda, cuda:N or mps; auto means cuda when available (default: auto)",
    ),
    (
        "--quant-dtype",
        "quant_dtype",
        "string",
        "auto, float32, float16 or bfloat16; auto is float32 on the CPU, "
        "the checkpoint's dtype on a GPU (default: auto)",
    ),
    (
        "--quant-tolerance",
        "quant_tolerance",
        "string",
        "margin of accuracy drop a slice may show, a fraction in [0, 1] (default: 0.02)",
    ),
    ("--quant-alpha", "quant_alpha", "string", "significance level of the gate (default: 0.05)"),
    ("--quant-report", "quant_report", "string", "write the gate as JSON to this path (default: none)"),
    ("--quant-batch-size", "quant_batch_size", "string", "prompts per generation batch (default: 16)"),
)

_STATUS_DISPLAY = {
    "regressed": ("R", "REGRESSED", {"yellow": True, "bold": True}),
    "improved": ("I", "IMPROVED", {"green": True}),
    "both-failed": ("b", "BOTH-FAILED", {"yellow": True}),
}


# -- options and configuration ---------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantgate", "quantgate: gate quantized LLMs on domain test cases")
    for flag, name, ini_type, help_text in _OPTIONS:
        action = "append" if name == "quant_candidate" else "store"
        group.addoption(flag, action=action, dest=name, default=None, help=help_text)
        parser.addini(name, help=help_text, type=ini_type)  # type: ignore[arg-type]
    group.addoption(
        "--quant-strict",
        action="store_true",
        dest="quant_strict",
        default=None,
        help="fail INCONCLUSIVE slices too (default: they only warn)",
    )
    parser.addini(
        "quant_strict", help="fail INCONCLUSIVE slices too (default: false)", type="bool", default=False
    )
    parser.addini(
        "quant_slice_tolerance",
        help="per-slice margins, one 'SLICE = TOLERANCE' per line (default: --quant-tolerance)",
        type="linelist",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "quant_case(argnames, argvalues, *, ids=None, prompt='prompt', max_new_tokens=64, stop=None, "
        "chat_template=None, critical=False, cluster=None): parametrize a test over domain cases run "
        "on the reference and candidate models; the body checks `output`.",
    )
    config.addinivalue_line(
        "markers", "slice(*names, tolerance=None): tag quant cases with slices the gate reports on."
    )
    config.stash[_markers_key] = {}
    if config.option.help or config.option.version:
        return
    try:
        gate_config = GateConfig.from_sources(
            option=config.getoption,
            ini=config.getini,
            cli_dir=config.invocation_params.dir,
            ini_dir=config.inipath.parent if config.inipath else config.rootpath,
        )
    except ConfigError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None
    plugin = QuantGatePlugin(config, gate_config)
    config.stash[plugin_key] = plugin
    config.pluginmanager.register(plugin, "quantgate-session")
    if config.pluginmanager.hasplugin("xdist") and not plugin.is_worker:
        config.pluginmanager.register(XdistHooks(plugin), "quantgate-xdist")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    plugin = config.stash.get(plugin_key, None)
    if plugin is None or not plugin.gate_config.enabled:
        return None
    return list(terminal.header_lines(plugin.gate_config))


# -- collection --------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("quant_case")
    if marker is None:
        return
    where = metafunc.definition.nodeid
    try:
        parsed = parse_quant_case(marker.args, marker.kwargs)
        for m in metafunc.definition.iter_markers("slice"):
            parse_slice_marker(m.args, m.kwargs)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}", pytrace=False)
    if "output" not in metafunc.fixturenames:
        pytest.fail(
            f"{where}: a quant_case test must take the argument `output` (the model output it checks)",
            pytrace=False,
        )
    metafunc.config.stash[_markers_key][where] = parsed
    # The argnames as written: a single name takes scalar values, a list tuples.
    metafunc.parametrize(marker.args[0], parsed.argvalues, ids=parsed.ids)


def _build_case(item: pytest.Item, marker: QuantCaseMarker, base_id: str) -> CaseSpec:
    params: dict[str, Any] = dict(item.callspec.params)  # type: ignore[attr-defined]
    own = {n: params[n] for n in marker.argnames}
    raw_prompt = params[marker.prompt] if isinstance(marker.prompt, str) else marker.prompt(**own)
    prompt = normalize_prompt(raw_prompt)
    slices: list[str] = []
    tolerances: dict[str, float] = {}
    for m in item.iter_markers("slice"):
        names, tol = parse_slice_marker(m.args, m.kwargs)
        for name in names:
            if name not in slices:
                slices.append(name)
            if tol is not None:
                tolerances[name] = min(tol, tolerances.get(name, tol))
    cluster = None
    if marker.cluster is not None:
        value = params[marker.cluster] if isinstance(marker.cluster, str) else marker.cluster(**own)
        cluster = None if value is None else str(value)
    return CaseSpec(
        key=case_key(base_id, params, prompt, marker.settings),
        nodeid=item.nodeid,
        prompt=prompt,
        settings=marker.settings,
        slices=tuple(slices),
        cluster=cluster,
        critical=marker.critical,
        tolerances=tolerances,
    )


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def output(request: pytest.FixtureRequest) -> str:
    """The model output a quant_case test checks (set per model by the plugin)."""
    if _case_key not in request.node.stash:
        pytest.fail("the `output` fixture is only given to @quant_case tests", pytrace=False)
    return ""


@pytest.fixture(scope="session")
def quant_config(pytestconfig: pytest.Config) -> GateConfig:
    """The session's validated quantgate configuration."""
    return _plugin(pytestconfig).gate_config


@pytest.fixture(scope="session")
def quant_reference(pytestconfig: pytest.Config) -> Backend:
    """The reference model, loaded once per session (per xdist worker)."""
    plugin = _plugin(pytestconfig)
    if not plugin.gate_config.enabled:
        pytest.skip("quantgate: no reference model given (--quant-reference)")
    return plugin.session.pool.get(plugin.session.labels[0])


@pytest.fixture(scope="session")
def quant_candidates(pytestconfig: pytest.Config) -> dict[str, Backend]:
    """The candidate models by label, each loaded once per session."""
    plugin = _plugin(pytestconfig)
    return {c.label: plugin.session.pool.get(c.label) for c in plugin.gate_config.candidates}


def _plugin(config: pytest.Config) -> QuantGatePlugin:
    return config.stash[plugin_key]


# -- reporting of single tests -----------------------------------------------


def _record_of(report: pytest.TestReport) -> CaseRecord | None:
    for name, value in getattr(report, "user_properties", ()):
        if name == RECORD_KEY:
            return CaseRecord.from_json(value)
    return None


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.when != "call":
        return None
    record = _record_of(report)
    if record is None:
        return None
    status = record.worst
    if status == "error":
        return "error", "E", ("ERROR", {"red": True})
    if report.failed or status not in _STATUS_DISPLAY:
        return None
    letter, word, markup = _STATUS_DISPLAY[status]
    return status, letter, (word, markup)


class QuantGatePlugin:
    """The session's stateful hooks; one instance per pytest process."""

    def __init__(self, config: pytest.Config, gate_config: GateConfig):
        self.config = config
        self.gate_config = gate_config
        self.session = QuantSession(gate_config, emit=self._emit)
        self.gates: list[CandidateGate] | None = None
        self.is_worker = hasattr(config, "workerinput")

    def _emit(self, line: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        # Generation runs inside a test's call, where output is captured:
        # progress must reach the terminal, as live logging does.
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            tr.ensure_newline()
            tr.write_line(line, cyan=True)

    def _resume_progress_line(self, nodeid: str) -> None:
        """Re-open the file's progress line that the generation lines broke."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if tr is None or tr.verbosity > 0:
            return
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            tr.write_fspath_result(nodeid, "")

    def _log_gate_report(self, report: pytest.TestReport) -> None:
        """Hand a gate failure to every reporter (JUnit, ...) and the summary.

        The terminal reporter is left out of the hook call: its progress line
        is finished by then, and a stray ``F`` after ``[100%]`` reads badly.
        The report still counts in the summary line and FAILURES section.
        """
        pm = self.config.pluginmanager
        tr = pm.get_plugin("terminalreporter")
        pm.subset_hook_caller("pytest_runtest_logreport", remove_plugins=[tr] if tr else [])(report=report)
        if tr is not None:
            add = getattr(tr, "_add_stats", None)  # keeps the summary colour right
            if add is not None:
                add("failed", [report])
            else:
                tr.stats.setdefault("failed", []).append(report)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        markers = self.config.stash[_markers_key]
        for item in items:
            base_id = item.nodeid.partition("[")[0]
            marker = markers.get(base_id)
            if marker is None or not hasattr(item, "callspec"):
                continue
            if not self.gate_config.enabled:
                item.add_marker(
                    pytest.mark.skip(reason="quantgate: no reference model given (--quant-reference)")
                )
                continue
            try:
                case = _build_case(item, marker, base_id)
            except (ValueError, KeyError, TypeError) as exc:
                item.stash[_case_error_key] = f"{item.nodeid}: cannot build the quant case: {exc}"
                continue
            item.stash[_case_key] = case
            self.session.add_case(case)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if _case_error_key in pyfuncitem.stash:
            pytest.fail(pyfuncitem.stash[_case_error_key], pytrace=False)
        case = pyfuncitem.stash.get(_case_key, None)
        if case is None:
            return None
        if not self.session.generated:
            self.session.generate()
            self._resume_progress_line(pyfuncitem.nodeid)
        kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        outcomes: dict[str, ModelOutcome] = {}
        for label in self.session.labels:
            run = self.session.run_of(label, case.key)
            transcript = tuple(t.to_dict() for t in run.turns)
            if run.error is not None:
                outcomes[label] = ModelOutcome("error", run.output, run.error, transcript)
                continue
            kwargs["output"] = run.output
            result, message = run_check(
                pyfuncitem.obj,
                kwargs,
                fail_types=(AssertionError, pytest.fail.Exception),
                passthrough=(pytest.skip.Exception, pytest.xfail.Exception, pytest.exit.Exception),
            )
            outcomes[label] = ModelOutcome(result, run.output, message, transcript)
        record = CaseRecord(
            key=case.key,
            nodeid=case.nodeid,
            slices=case.slices,
            cluster=case.cluster,
            critical=case.critical,
            reference=self.session.labels[0],
            outcomes=outcomes,
            tolerances=case.tolerances,
        )
        pyfuncitem.user_properties.append((RECORD_KEY, record.to_json()))
        status = record.worst
        if status in ("error", "failed") or (status == "regressed" and case.critical):
            pytest.fail("\n".join(terminal.case_lines(record)), pytrace=False)
        return True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        record = _record_of(report)
        if record is not None:
            self.session.add_record(record)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.config.workeroutput["quantgate_models"] = json.dumps(self.session.pool.facts)  # type: ignore[attr-defined]
            return
        if not self.gate_config.enabled or not self.session.records:
            return
        self.gates = self.session.gate()
        complete = exitstatus != pytest.ExitCode.INTERRUPTED
        failing = False
        for gate in self.gates:
            for row in gate.rows:
                fails = terminal.row_fails(row, strict=self.gate_config.strict)
                if not fails or not complete:
                    continue
                failing = True
                self._log_gate_report(_gate_report(gate, row))
        if failing and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.gate_config.report_path is not None:
            report = self.session.report(self.gates, complete=complete)
            json_report.write(report, self.gate_config.report_path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or self.gates is None:
            return
        report = self.session.report(self.gates)
        for line in terminal.summary(report):
            if isinstance(line, terminal.Sep):
                terminalreporter.write_sep("=", line.title, **line.markup)
                continue
            for text, markup in line:
                terminalreporter.write(text, **markup)
            terminalreporter.line("")

    def pytest_unconfigure(self) -> None:
        self.session.pool.close()


def _gate_report(gate: CandidateGate, row: SliceResult) -> pytest.TestReport:
    """A failed test report named ``quantgate::<candidate>::<slice>``."""
    nodeid = f"quantgate::{gate.label}::{row.slice}"
    return pytest.TestReport(
        nodeid=nodeid,
        location=("quantgate", None, nodeid),
        keywords={"quantgate": 1},
        outcome="failed",
        longrepr="\n".join(terminal.row_failure_lines(gate, row)),
        when="call",
        user_properties=[("quantgate_slice", json.dumps(row.to_dict(), sort_keys=True))],
    )


class XdistHooks:
    """Controller-side hooks that exist only when pytest-xdist is active."""

    def __init__(self, plugin: QuantGatePlugin):
        self.plugin = plugin

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        facts = getattr(node, "workeroutput", {}).get("quantgate_models")
        if facts:
            self.plugin.session.worker_facts.update(json.loads(facts))
