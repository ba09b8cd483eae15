"""The pytest11 entry point: quantgate's hook functions, each a few lines of wiring.

Two stateful plugins are registered from ``pytest_configure``: the worker
side (:class:`~.integration.worker.CasePlugin`) in every process that runs
tests, and the reporting side (:class:`~.integration.controller.GatePlugin`)
in the process that reports — one process without xdist, apart with it.
The fixtures live in :mod:`.integration.fixtures`, the options in
:mod:`.integration.options`, the xdist glue in :mod:`.integration.xdist`.
"""

from __future__ import annotations

from typing import Any

import pytest

from .core.devices import WorkerDevices, describe_plan
from .core.records import STATUS_KEY, Status
from .integration import collection, hookspecs, options, threads, xdist
from .integration.controller import GatePlugin
from .integration.fixtures import (
    final_state,
    output,
    quant_candidates,
    quant_config,
    quant_reference,
    transcript,
)
from .integration.worker import WORKER_KEY, CasePlugin
from .report import terminal

__all__ = [
    "final_state",
    "output",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_report_teststatus",
    "quant_candidates",
    "quant_config",
    "quant_reference",
    "transcript",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    for line in options.MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[collection.MARKERS_KEY] = {}
    if config.option.help or config.option.version:
        return
    gate_config, rerun = options.gate_config(config)
    plan = threads.configure(config, gate_config, workers=xdist.xdist_workers(config))
    gate_config = xdist.place(config, gate_config, plan.threads if plan else None)
    cases = CasePlugin(config, gate_config, rerun)
    config.stash[WORKER_KEY] = cases
    config.pluginmanager.register(cases, "quantgate-cases")
    if not hasattr(config, "workerinput"):  # reports are made by the controller only
        gate = GatePlugin(config, gate_config, cases)
        config.pluginmanager.register(gate, "quantgate-gate")
        if config.pluginmanager.hasplugin("xdist"):
            # -n N alone means --dist load: then each worker gets whole shards of
            # quant cases and generates only those (other --dist modes keep theirs).
            shard = gate_config.enabled and getattr(config.option, "dist", "no") == "load"
            hooks = xdist.XdistHooks(gate_config, gate.aggregator, shard)
            config.pluginmanager.register(hooks, "quantgate-xdist")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    cases = config.stash.get(WORKER_KEY, None)
    if cases is None or not cases.gate_config.enabled:
        return None
    lines = list(terminal.header_lines(cases.gate_config)) + threads.header_lines(config)
    if cases.gate_config.workers:
        lines += describe_plan({k: WorkerDevices.from_dict(v) for k, v in cases.gate_config.workers.items()})
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    collection.parametrize(metafunc)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.when != "call":
        return None
    status = next((v for k, v in getattr(report, "user_properties", ()) if k == STATUS_KEY), None)
    return None if status is None else terminal.teststatus(Status(status), failed=report.failed)
