"""pytest hooks: options, markers, collection, fixtures, report hooks.

Wiring only: every decision is made by the modules this one calls. Two
stateful plugin objects are registered from ``pytest_configure``:
:class:`CasePlugin` in every process that runs tests (it drives the
:class:`~.executor.Executor`), and :class:`GatePlugin` in the process that
reports (it feeds the :class:`~.aggregator.Aggregator` and writes the
reports) — both in one process without xdist, apart with it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from typing import Any

import pytest

from .aggregator import Aggregator
from .backends.base import Backend, load_backend
from .cases import (
    RECORD_KEY,
    CaseBuildError,
    CaseRecord,
    CaseSpec,
    Outcome,
    QuantCaseMarker,
    Turn,
    build_case,
    parse_quant_case,
    parse_slice_marker,
    run_check,
)
from .config import ConfigError, GateConfig
from .devices import DeviceError, WorkerDevices, describe_plan, plan_devices
from .executor import DEFAULT_GROUP, Check, Executor, ReferenceUnavailable
from .report import json_report, terminal
from .report.model import GateReport, GateTest, parse_gate_test_id
from .rerun import Rerun, split_gate_args
from .runner import CaseRun
from .sharding import ShardPlan, assign_shards, make_scheduler, shard_name
from .specs import SCHEMES, ModelSpec
from .trajectory import Trajectory

case_plugin_key = pytest.StashKey["CasePlugin"]()
_case_key = pytest.StashKey[CaseSpec]()
_case_error_key = pytest.StashKey[str]()
_shard_key = pytest.StashKey[str]()
_markers_key = pytest.StashKey[dict[str, QuantCaseMarker]]()
#: The workeroutput key of what a worker learnt: model facts, load failures, selection.
_FACTS_KEY = "quantgate_models"
#: The workerinput key of a worker's devices (:class:`~.devices.WorkerDevices` as builtins).
_DEVICES_KEY = "quantgate_devices"
#: The workerinput key of the shard plan's path (None: no sharding, each worker generates what it runs).
_SHARD_KEY = "quantgate_shard"
_NO_REFERENCE = "quantgate: no reference model given (--quant-reference)"
#: What the test body's check does with each pytest outcome exception.
_CHECK_EXCEPTIONS = {
    "fail_types": (AssertionError, pytest.fail.Exception),
    "skip_types": (pytest.skip.Exception,),
    "xfail_types": (pytest.xfail.Exception,),
    "passthrough": (pytest.exit.Exception,),
}
_SCHEME_LIST = ", ".join(s.usage or s.name for s in SCHEMES.values())

_MARKERS = (
    "quant_case(argnames, argvalues, *, ids=None, prompt='prompt', max_new_tokens=64, stop=None, "
    "chat_template=None, critical=False, cluster=None): parametrize a test over domain cases run "
    "on the reference and candidate models; the body checks `output`.",
    "slice(*names, tolerance=None): tag quant cases with slices the gate reports on.",
    "quant_cluster(name): the cluster of a quant case when quant_case has no cluster= "
    "(load_cases sets it from a data file's cluster column).",
)

_OPTIONS = (
    # flag, ini name, ini type, help
    (
        "--quant-reference",
        "quant_reference",
        "string",
        "reference model spec [LABEL=][SCHEME:]PATH, usually a local checkpoint "
        "(default: none; quant cases skip)",
    ),
    (
        "--quant-candidate",
        "quant_candidate",
        "linelist",
        f"candidate model spec [LABEL=][SCHEME:]PATH, repeatable; schemes: {_SCHEME_LIST} (default: none)",
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
        "margin of accuracy drop a slice may show, a fraction in [0, 1) (default: 0.02)",
    ),
    ("--quant-alpha", "quant_alpha", "string", "significance level of the gate (default: 0.05)"),
    ("--quant-report", "quant_report", "string", "write the gate as JSON to this path (default: none)"),
    (
        "--quant-calibration",
        "quant_calibration",
        "string",
        "the candidates' calibration texts (JSONL or text): the report counts eval cases found "
        "in them and warns above one in a hundred (default: none)",
    ),
    (
        "--quant-cache",
        "quant_cache",
        "string",
        "on, off or refresh: reuse the reference's results from the cache when nothing that could "
        "change them changed; refresh regenerates them (default: on)",
    ),
    (
        "--quant-cache-dir",
        "quant_cache_dir",
        "string",
        "where the reference cache lives (default: .quantgate under the rootdir)",
    ),
    (
        "--quant-batch-size",
        "quant_batch_size",
        "string",
        "prompts per generation batch, or auto: 64 on a GPU, halved while out of memory; "
        "16 on the CPU (default: auto)",
    ),
)

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
    group.addoption(
        "--quant-keep-loaded",
        action="store_true",
        dest="quant_keep_loaded",
        default=None,
        help="keep every model loaded for the whole session (default: one model in memory at a time)",
    )
    group.addoption(
        "--quant-gpus-per-worker",
        dest="quant_gpus_per_worker",
        default=None,
        help="with pytest -n N: GPUs per xdist worker, a model spread over its block (default: 1)",
    )
    group.addoption(
        "--quant-allow-shared-gpu",
        action="store_true",
        dest="quant_allow_shared_gpu",
        default=False,
        help="with pytest -n N: allow more workers than GPUs (several workers share one)",
    )
    parser.addini(
        "quant_keep_loaded",
        help="keep every model loaded for the whole session (default: false)",
        type="bool",
        default=False,
    )
    parser.addini(
        "quant_slice_tolerance",
        help="per-slice margins, one 'SLICE = TOLERANCE' per line (default: --quant-tolerance)",
        type="linelist",
    )
    # Safe loading: what a checkpoint may do while it loads (backends.base.LoadPolicy).
    for flag, name, help_text in (
        (
            "--quant-trust-remote-code",
            "quant_trust_remote_code",
            "run the code a checkpoint ships in its auto_map (default: such a checkpoint is refused)",
        ),
        (
            "--quant-allow-pickle",
            "quant_allow_pickle",
            "load pickled weights (pytorch_model.bin) of a checkpoint without safetensors "
            "(default: safetensors only)",
        ),
        (
            "--quant-allow-tokenizer-mismatch",
            "quant_allow_tokenizer_mismatch",
            "gate a candidate whose tokenizer differs from the reference's "
            "(default: such a candidate is refused)",
        ),
    ):
        group.addoption(flag, action="store_true", dest=name, default=None, help=help_text)
        ini_help = help_text.rsplit(" (default", 1)[0] + " (default: false)"
        parser.addini(name, help=ini_help, type="bool", default=False)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[_markers_key] = {}
    if config.option.help or config.option.version:
        return
    gate_config, rerun = _gate_config(config)
    gate_config = _place_workers(config, gate_config)
    cases = CasePlugin(config, gate_config, rerun)
    config.stash[case_plugin_key] = cases
    config.pluginmanager.register(cases, "quantgate-cases")
    if not hasattr(config, "workerinput"):  # reports are made by the controller only
        gate = GatePlugin(config, gate_config, cases)
        config.pluginmanager.register(gate, "quantgate-gate")
        if config.pluginmanager.hasplugin("xdist"):
            # -n N alone means --dist load: then each worker gets whole shards of
            # quant cases and generates only those (other --dist modes keep theirs).
            shard = gate_config.enabled and getattr(config.option, "dist", "no") == "load"
            config.pluginmanager.register(XdistHooks(config, gate.aggregator, shard), "quantgate-xdist")


def _gate_config(config: pytest.Config) -> tuple[GateConfig, Rerun]:
    """The validated configuration, and the gate tests asked for again on the command line.

    A gate test's id among the arguments is replaced by the path it leads
    to (:mod:`.rerun`), and only its candidate is kept.
    """
    config.args, rerun = split_gate_args(
        config.args,
        invocation_dir=config.invocation_params.dir,
        rootpath=config.rootpath,
        testpaths=config.getini("testpaths"),
    )
    try:
        gate_config = GateConfig.from_sources(
            option=config.getoption,
            ini=config.getini,
            cli_dir=config.invocation_params.dir,
            ini_dir=config.inipath.parent if config.inipath else config.rootpath,
        )
        return gate_config.only(rerun.rows), rerun
    except ConfigError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None


def _place_workers(config: pytest.Config, gate_config: GateConfig) -> GateConfig:
    """The device plan of xdist workers (controller), or this worker's place in it.

    The controller decides, before any worker starts, which devices each
    worker loads its models onto (:func:`~.devices.plan_devices`); a worker
    takes its own entry from ``workerinput``: the device, torch's thread count
    on the CPU, and ``CUDA_VISIBLE_DEVICES`` for a block of GPUs.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        mine = workerinput.get(_DEVICES_KEY)
        if not mine or not gate_config.enabled:
            return gate_config
        place = WorkerDevices.from_dict(mine)
        if place.threads:
            _set_threads(place.threads)
        if place.block:
            # The block is this worker's whole world: the model spreads over it.
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in place.gpu_indices)
            os.environ["QUANTGATE_DEVICE_MAP"] = "auto"
            return replace(gate_config, device="cuda")
        return replace(gate_config, device=place.device)
    workers = _xdist_workers(config)
    if not workers or not gate_config.enabled:
        return gate_config
    try:
        per_worker = int(config.getoption("quant_gpus_per_worker") or 1)
    except ValueError:
        raise pytest.UsageError(
            f"quantgate: --quant-gpus-per-worker must be a positive integer, "
            f"got {config.getoption('quant_gpus_per_worker')!r}"
        ) from None
    try:
        plan = plan_devices(
            workers,
            gpus=_visible_gpus(gate_config),
            gpus_per_worker=per_worker,
            allow_shared=bool(config.getoption("quant_allow_shared_gpu")),
            cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
            requested=gate_config.device,
        )
    except DeviceError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None
    return replace(gate_config, workers={k: v.to_dict() for k, v in plan.items()})


def _xdist_workers(config: pytest.Config) -> int:
    """How many xdist workers this run starts (0: no xdist)."""
    if not config.pluginmanager.hasplugin("xdist") or getattr(config.option, "dist", "no") == "no":
        return 0
    tx = getattr(config.option, "tx", None) or []
    numprocesses = getattr(config.option, "numprocesses", None)
    return int(numprocesses) if numprocesses else len(tx)


def _visible_gpus(gate_config: GateConfig) -> int:
    """CUDA devices torch sees, asked only when a model could use one (torch imported then)."""
    models = [gate_config.reference, *gate_config.candidates]
    if gate_config.device in ("cpu", "mps") or not any(
        m is not None and m.kind.backend == "hf" for m in models
    ):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _set_threads(threads: int) -> None:
    """This worker's share of the CPU: torch's threads, now or when torch is first imported."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    cases = config.stash.get(case_plugin_key, None)
    if cases is None or not cases.gate_config.enabled:
        return None
    lines = list(terminal.header_lines(cases.gate_config))
    if cases.gate_config.workers:
        plan = {k: WorkerDevices.from_dict(v) for k, v in cases.gate_config.workers.items()}
        lines += describe_plan(plan)
    return lines


# -- collection --------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("quant_case")
    if marker is None:
        return
    where = metafunc.definition.nodeid
    problem = None
    try:
        parsed = parse_quant_case(marker.args, marker.kwargs)
        for m in metafunc.definition.iter_markers("slice"):
            parse_slice_marker(m.args, m.kwargs)
        parsed.check_identities()
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        # Outside the except block: a failure raised inside it would be
        # printed after the ValueError's own traceback ("During handling ...").
        pytest.fail(f"{where}: {problem}", pytrace=False)
    if not any(name in metafunc.fixturenames for name in _RUN_ARGS):
        pytest.fail(
            f"{where}: a quant_case test must take the argument `output` (the model output it checks), "
            "or, for a Trajectory, `final_state` or `transcript`",
            pytrace=False,
        )
    metafunc.config.stash[_markers_key][where] = parsed
    # The argnames as written: a single name takes scalar values, a list tuples.
    metafunc.parametrize(marker.args[0], parsed.argvalues, ids=parsed.ids)


# -- fixtures ----------------------------------------------------------------


#: The arguments that carry one model's run of a case into the test body.
_RUN_ARGS = ("output", "final_state", "transcript")


def _run_placeholder(request: pytest.FixtureRequest, name: str) -> None:
    if _case_key not in request.node.stash and _case_error_key not in request.node.stash:
        pytest.fail(f"the `{name}` fixture is only given to @quant_case tests", pytrace=False)


@pytest.fixture
def output(request: pytest.FixtureRequest) -> str:
    """The model output a quant_case test checks: the (last) reply, set per model by the plugin."""
    _run_placeholder(request, "output")
    return ""


@pytest.fixture
def final_state(request: pytest.FixtureRequest) -> Any:
    """A Trajectory case's state after its last step, set per model by the plugin."""
    _run_placeholder(request, "final_state")
    return None


@pytest.fixture
def transcript(request: pytest.FixtureRequest) -> list[Turn]:
    """A case's turns (prompt, reply; ``turn.rendered`` is what the model was fed), per model."""
    _run_placeholder(request, "transcript")
    return []


@pytest.fixture(scope="session")
def quant_config(pytestconfig: pytest.Config) -> GateConfig:
    """The session's validated quantgate configuration."""
    return pytestconfig.stash[case_plugin_key].gate_config


@pytest.fixture(scope="session")
def quant_reference(pytestconfig: pytest.Config) -> Backend:
    """The reference model, loaded once per session (per xdist worker)."""
    executor = pytestconfig.stash[case_plugin_key].executor
    if not executor.config.enabled:
        pytest.skip("quantgate: no reference model given (--quant-reference)")
    return executor.pool.get(executor.labels[0])


@pytest.fixture(scope="session")
def quant_candidates(pytestconfig: pytest.Config) -> dict[str, Backend]:
    """The candidate models by label, each loaded once per session."""
    executor = pytestconfig.stash[case_plugin_key].executor
    return (
        {label: executor.pool.get(label) for label in executor.labels[1:]} if executor.config.enabled else {}
    )


# -- reporting of single tests -----------------------------------------------


def _record_of(report: pytest.TestReport) -> CaseRecord | None:
    for name, value in getattr(report, "user_properties", ()):
        if name == RECORD_KEY:
            return CaseRecord.from_json(value)
    return None


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    record = _record_of(report) if report.when == "call" else None
    return None if record is None else terminal.teststatus(record, failed=report.failed)


# -- the process that runs tests ---------------------------------------------


class CasePlugin:
    """Plans the collected cases, generates them, checks them: any process that runs tests."""

    def __init__(self, config: pytest.Config, gate_config: GateConfig, rerun: Rerun | None = None):
        self.config = config
        self.gate_config = gate_config
        self.rerun = rerun or Rerun()
        self.terminal = _Terminal(config)
        self.executor = Executor(gate_config, emit=self.terminal.emit, loader=self._load)
        self.executor.quiet = config.get_verbosity() < 0  # -q: only each model's last progress line
        self.deselected = 0  # quant cases deselected (-k, -m, --lf, --deselect, a gate row re-run)
        self.selected = 0
        self.collected = False  # whether this process collected (an xdist controller does not)

    def _load(self, spec: ModelSpec, *, device: str, dtype: str) -> Backend:
        made = self.config.hook.pytest_quantgate_make_backend(spec=spec, device=device, dtype=dtype)
        return made if made is not None else load_backend(spec, device=device, dtype=dtype)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if self.rerun:
            kept = [i for i in items if _is_quant_case(i) and self.rerun.keeps(_slices_of(i))]
            if len(kept) < len(items):
                config.hook.pytest_deselected(items=[i for i in items if i not in kept])
                items[:] = kept

    def _shard(self, items: list[pytest.Item]) -> None:
        """On an xdist worker told to shard: cut the quant cases into one shard per worker.

        Every worker computes the same shards (from the selected cases alone)
        and writes them where the controller's scheduler reads them, before
        xdist reports the collection; the scheduler then sends each shard
        whole to one worker, which generates it once per model.
        """
        workerinput = getattr(self.config, "workerinput", None)
        plan = workerinput.get(_SHARD_KEY) if workerinput else None
        workers = int(workerinput.get("workercount", 1)) if workerinput else 1
        if not plan or workers < 2 or not self.gate_config.enabled:
            return
        markers = self.config.stash[_markers_key]
        costs: dict[str, int] = {}
        for item in items:
            cost = _cost(item, markers)
            if cost is not None:
                costs[item.nodeid] = cost
        names = {nodeid: shard_name(k) for nodeid, k in assign_shards(costs, workers).items()}
        for item in items:
            if item.nodeid in names:
                item.stash[_shard_key] = names[item.nodeid]
        ShardPlan(plan).write(names)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += sum(map(_is_quant_case, items))

    @pytest.hookimpl(tryfirst=True)  # before xdist sends the collection to the controller
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # session.items is final here: -k, -m and --lf have deselected what
        # this process will not run, so nothing deselected is generated.
        self._shard(session.items)
        for item in session.items:
            self._plan(item)
            self._pin_fixture_models(item)
        self.selected = sum(map(_is_quant_case, session.items))
        self.collected = True

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
        if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):
            return
        test_id = f"{item.parent.nodeid if item.parent else ''}::{item.originalname}"
        marker = self.config.stash[_markers_key].get(test_id)
        if marker is None:
            return
        if not self.gate_config.enabled:
            item.add_marker(pytest.mark.skip(reason=_NO_REFERENCE))
            return
        try:
            case = build_case(
                marker,
                test_id=test_id,
                nodeid=item.nodeid,
                params=item.callspec.params,
                index=item.callspec.indices.get(marker.argnames[0]),
                slice_markers=[(m.args, m.kwargs) for m in item.iter_markers("slice")],
                cluster_mark=_cluster_mark(item),
            )
        except CaseBuildError as exc:
            item.stash[_case_error_key] = str(exc)
            return
        item.stash[_case_key] = case
        self.executor.plan(case, group=item.stash.get(_shard_key, DEFAULT_GROUP))

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if _case_error_key in pyfuncitem.stash:
            pytest.fail(pyfuncitem.stash[_case_error_key], pytrace=False)
        case = pyfuncitem.stash.get(_case_key, None)
        if case is None:
            return None
        generates = not self.executor.is_generated(case.key)
        try:
            record = self.executor.record(case, _body_check(pyfuncitem))
        except ReferenceUnavailable:
            # Nothing can be gated: stop the run (the summary shows the whole error).
            pytest.exit(f"quantgate: the reference {self.executor.labels[0]} could not be loaded")
        if generates:
            self.terminal.resume_progress_line(pyfuncitem.nodeid)
        pyfuncitem.user_properties.append((RECORD_KEY, record.to_json()))
        _end_test(record)
        return True

    @property
    def facts(self) -> dict[str, Any]:
        """What this process learnt, for the process that reports."""
        facts: dict[str, Any] = {
            "models": self.executor.pool.facts,
            "load_failures": self.executor.unavailable,
        }
        if self.collected:
            facts.update(collected=self.selected + self.deselected, selected=self.selected)
        return facts

    def pytest_sessionfinish(self) -> None:
        if hasattr(self.config, "workerinput"):
            self.config.workeroutput[_FACTS_KEY] = json.dumps(self.facts)  # type: ignore[attr-defined]

    def pytest_unconfigure(self) -> None:
        self.executor.close()


def _end_test(record: CaseRecord) -> None:
    """Fail, skip or xfail the running test as its record says (:attr:`~.cases.CaseRecord.test_outcome`)."""
    outcome, reason = record.test_outcome
    if outcome == "fail":
        pytest.fail("\n".join(terminal.case_lines(record)), pytrace=False)
    if outcome == "skip":
        _skip_at_item(reason or "")
    if outcome == "xfail":
        pytest.xfail(reason or "")


def _skip_at_item(reason: str) -> None:
    """Skip the running test, reported at the test's own line, not at this module's.

    The second private pytest API used here (``_use_item_location``, which
    pytest's skip markers use): without it, the summary would place every
    skip in plugin.py. Should it go, the skip still happens, placed here.
    """
    try:
        exc = pytest.skip.Exception(reason, pytrace=False, _use_item_location=True)
    except TypeError:
        exc = pytest.skip.Exception(reason, pytrace=False)
    raise exc


def _is_quant_case(item: pytest.Item) -> bool:
    return item.get_closest_marker("quant_case") is not None


def _slices_of(item: pytest.Item) -> list[str]:
    return [str(name) for m in item.iter_markers("slice") for name in m.args]


def _cost(item: pytest.Item, markers: dict[str, QuantCaseMarker]) -> int | None:
    """A quant case's estimated generation cost (steps × max_new_tokens); None for other tests."""
    if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):
        return None
    marker = markers.get(f"{item.parent.nodeid if item.parent else ''}::{item.originalname}")
    if marker is None:
        return None
    steps = 1
    if isinstance(marker.prompt, str):
        value = item.callspec.params.get(marker.prompt)
        if isinstance(value, Trajectory):
            steps = max(1, int(getattr(value, "max_steps", 1) or 1))
    return steps * marker.settings.max_new_tokens


def _cluster_mark(item: pytest.Item) -> Any:
    marker = item.get_closest_marker("quant_cluster")
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        raise CaseBuildError(f"{item.nodeid}: quant_cluster takes one argument, the cluster's name")
    return marker.args[0]


def _body_check(item: pytest.Function) -> Check:
    """The test body as a check of one model's run of the case."""
    names = _test_argnames(item)
    kwargs = {name: item.funcargs[name] for name in names}

    def check(run: CaseRun) -> tuple[Outcome, str | None]:
        given = {"output": run.output, "final_state": run.state, "transcript": list(run.turns)}
        return run_check(
            item.obj, {**kwargs, **{k: v for k, v in given.items() if k in names}}, **_CHECK_EXCEPTIONS
        )

    return check


def _test_argnames(item: pytest.Function) -> list[str]:
    """The arguments the test function takes, as pytest passes them (no defaults)."""
    params = inspect.signature(item.obj).parameters.values()
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name in item.funcargs
    ]


# -- the process that reports --------------------------------------------------


class GatePlugin:
    """Gathers the records of every test report and gates them: the controller."""

    def __init__(self, config: pytest.Config, gate_config: GateConfig, cases: CasePlugin):
        self.config = config
        self.gate_config = gate_config
        self.aggregator = Aggregator(gate_config)
        self._cases = cases  # this process's own, when it runs tests too
        self.report: GateReport | None = None
        self.write_error: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            record = _record_of(report)
            if record is not None:
                self.aggregator.add(record)
        elif report.when == "setup" and report.skipped and "quant_case" in report.keywords:
            self.aggregator.add_skipped()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        _add_facts(self.aggregator, self._cases.facts)  # this process's own, if it ran tests
        narrowed_by, uncounted = _narrowing(self.config)
        self.report = self.aggregator.report(
            interrupted=exitstatus == pytest.ExitCode.INTERRUPTED,
            narrowed_by=[*narrowed_by, *self._cases.rerun.given],
            stopped=str(session.shouldstop or session.shouldfail or "") or None,
            counted=not uncounted and not self._cases.rerun,
        )
        for test in self.report.tests:
            self._log_gate_test(test)
        if self.report.failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        path = self.gate_config.report_path
        if path is not None:
            # Always, even interrupted or with nothing run: a stale report
            # must never stand in for this run's.
            try:
                json_report.write(self.report, path)
            except OSError as exc:  # checked up front, but the disk can still fill up
                self.write_error = f"quantgate: could not write the JSON report to {path}: {exc}"
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _log_gate_test(self, test: GateTest) -> None:
        """Hand a gate test to every reporter (JUnit, the --lf cache, ...) and the summary.

        A call report (failed or passed: a passing row clears its earlier
        failure from the --lf cache), then a teardown report, which is where
        JUnit writes a test's properties. The terminal reporter is left out
        of the hook call: its progress line is finished by then, and a stray
        ``F`` after ``[100%]`` reads badly. A failure still counts in the
        summary line and FAILURES section.
        """
        pm = self.config.pluginmanager
        tr = pm.get_plugin("terminalreporter")
        log = pm.subset_hook_caller("pytest_runtest_logreport", remove_plugins=[tr] if tr else [])
        call, teardown = _gate_reports(self.report, test)  # type: ignore[arg-type]
        log(report=call)
        log(report=teardown)
        if tr is not None and test.failed:
            _count_as_failed(tr, call)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.report is None:
            return
        lines = terminal.summary(self.report, width=_width(terminalreporter), write_error=self.write_error)
        for line in lines:
            if isinstance(line, terminal.Sep):
                terminalreporter.write_sep("=", line.title, **line.markup)
                continue
            for text, markup in line:
                terminalreporter.write(text, **markup)
            terminalreporter.line("")


def _add_facts(aggregator: Aggregator, facts: dict[str, Any]) -> None:
    aggregator.add_model_facts(facts.get("models") or {})
    aggregator.add_load_failures(facts.get("load_failures") or {})
    if "collected" in facts:
        aggregator.add_selection(int(facts["collected"]), int(facts["selected"]))


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
    if getattr(opt, "lf", False) and _earlier_test_failures(config):
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


def _width(tr: pytest.TerminalReporter) -> int:
    tw = getattr(tr, "_tw", None)  # pytest's writer knows the width it wraps at
    return int(getattr(tw, "fullwidth", 0) or shutil.get_terminal_size().columns)


def _gate_reports(report: GateReport, test: GateTest) -> tuple[pytest.TestReport, pytest.TestReport]:
    """The call and teardown reports of a gate test ``::quantgate::<candidate>::<row>``."""
    if test.row is not None:
        props = [("quantgate_slice", json.dumps(test.row.to_dict(), sort_keys=True))]
    else:
        gate = test.candidate
        load = {"label": gate.label, "evaluated": gate.evaluated, "not_evaluated": gate.not_evaluated}
        props = [("quantgate_load", json.dumps(load, sort_keys=True))]
    common: dict[str, Any] = {
        "nodeid": test.nodeid,
        "location": ("quantgate", None, test.nodeid),
        "keywords": {"quantgate": 1},
        "user_properties": props,
    }
    call = pytest.TestReport(
        outcome="failed" if test.failed else "passed",
        longrepr="\n".join(terminal.gate_test_lines(report, test)) if test.failed else None,
        when="call",
        **common,
    )
    return call, pytest.TestReport(outcome="passed", longrepr=None, when="teardown", **common)


def _count_as_failed(tr: pytest.TerminalReporter, report: pytest.TestReport) -> None:
    """Count a report as failed in the terminal's summary line and FAILURES section.

    A private pytest API (one of two; see also _skip_at_item): ``TerminalReporter._add_stats``
    also marks the summary colour as stale, so the final line turns red. If a
    pytest release renames it, the fallback still counts the failure (and the
    exit status is unaffected); only the colour of the last line may stay green.
    """
    add = getattr(tr, "_add_stats", None)
    if add is not None:
        add("failed", [report])
    else:
        tr.stats.setdefault("failed", []).append(report)


class XdistHooks:
    """Controller-side hooks that exist only when pytest-xdist is active."""

    def __init__(self, config: pytest.Config, aggregator: Aggregator, shard: bool):
        self.config = config
        self.aggregator = aggregator
        self._dir = tempfile.mkdtemp(prefix="quantgate-shards-") if shard else None
        self.plan = ShardPlan(os.path.join(self._dir, "plan.json")) if self._dir else None

    def pytest_configure_node(self, node: Any) -> None:
        """What each worker is told before it starts: where to write the shard plan, its devices."""
        node.workerinput[_SHARD_KEY] = str(self.plan.path) if self.plan else None
        workers = self.config.stash[case_plugin_key].gate_config.workers
        node.workerinput[_DEVICES_KEY] = workers.get(node.workerinput.get("workerid", ""))

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        return make_scheduler(config, log, self.plan) if self.plan else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A worker crashed while running this test: if it was a quant case, its record is lost.
        if report.when == "???" and self.plan is not None and report.nodeid in self.plan.shards:
            self.aggregator.add_lost(report.nodeid, str(report.longrepr))

    def pytest_unconfigure(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        facts = getattr(node, "workeroutput", {}).get(_FACTS_KEY)
        if facts:
            _add_facts(self.aggregator, json.loads(facts))


class _Terminal:
    """Progress lines from inside a test's call, where output is captured."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def _parts(self) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        # Generation runs inside a test's call: progress must reach the
        # terminal anyway, as live logging does.
        return tr, capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()

    def emit(self, line: str) -> None:
        tr, uncaptured = self._parts()
        if tr is None:
            return
        with uncaptured:
            tr.ensure_newline()
            tr.write_line(line, cyan=True)

    def resume_progress_line(self, nodeid: str) -> None:
        """Re-open the file's progress line that the generation lines broke."""
        tr, uncaptured = self._parts()
        if tr is None or tr.verbosity > 0:
            return
        with uncaptured:
            tr.write_fspath_result(nodeid, "")
