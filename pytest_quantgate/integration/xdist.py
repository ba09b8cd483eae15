"""pytest-xdist: where each worker runs its models, which shard it generates, what it reports back.

:func:`place` runs in every process at configure: the controller plans the
workers' devices before any starts (:func:`~..core.devices.plan_devices`),
a worker takes its own entry from ``workerinput``. :class:`XdistHooks` are
the controller's hooks that exist only when xdist is active (so that
``-p no:xdist`` still works).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from ..core.config import GateConfig
from ..core.devices import DeviceError, WorkerDevices, plan_devices
from ..core.sharding import ShardPlan
from ..report.aggregator import Aggregator
from . import _compat
from .threads import apply as apply_threads
from .threads import available_cpus

__all__ = ["DEVICES_KEY", "FACTS_KEY", "SHARD_KEY", "XdistHooks", "add_facts", "place"]

#: The workeroutput key of what a worker learnt: model facts, load failures, selection.
FACTS_KEY = "quantgate_models"
#: The workerinput key of a worker's devices (:class:`~..core.devices.WorkerDevices` as builtins).
DEVICES_KEY = "quantgate_devices"
#: The workerinput key of the shard plan's path (None: no sharding, each worker generates what it runs).
SHARD_KEY = "quantgate_shard"


def place(config: pytest.Config, gate_config: GateConfig, threads: int | None = None) -> GateConfig:
    """The device plan of xdist workers (controller), or this worker's place in it.

    A worker takes its own entry from ``workerinput``: the device, torch's
    thread count on the CPU, and ``CUDA_VISIBLE_DEVICES`` for a block of GPUs.
    ``threads`` is the controller's plan of each worker's torch threads
    (:func:`.threads.configure`; None: the cores divided among the workers).

    Raises:
        pytest.UsageError: the workers cannot be placed on the devices there are.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        mine = workerinput.get(DEVICES_KEY)
        if not mine or not gate_config.enabled:
            return gate_config
        where = WorkerDevices.from_dict(mine)
        if where.threads:
            apply_threads(where.threads)  # the process ends with the worker: nothing to undo
        if where.block:
            # The block is this worker's whole world: the model spreads over it.
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in where.gpu_indices)
            os.environ["QUANTGATE_DEVICE_MAP"] = "auto"
            return replace(gate_config, device="cuda")
        return replace(gate_config, device=where.device)
    workers = xdist_workers(config)
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
            cpus=available_cpus(),
            requested=gate_config.device,
            threads=threads,
        )
    except DeviceError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None
    return replace(gate_config, workers={k: v.to_dict() for k, v in plan.items()})


def xdist_workers(config: pytest.Config) -> int:
    """How many xdist workers this run starts (0: no xdist)."""
    if not config.pluginmanager.hasplugin("xdist") or getattr(config.option, "dist", "no") == "no":
        return 0
    tx = getattr(config.option, "tx", None) or []
    numprocesses = getattr(config.option, "numprocesses", None)
    return int(numprocesses) if numprocesses else len(tx)


def _visible_gpus(gate_config: GateConfig) -> int:
    """CUDA devices torch sees, asked only when a model could use one (torch imported then)."""
    models = [gate_config.reference, *gate_config.candidates]
    if gate_config.device in ("cpu", "mps") or not any(m is not None and m.kind.device for m in models):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def add_facts(aggregator: Aggregator, facts: dict[str, Any]) -> None:
    """What a process learnt (:meth:`~.worker.CasePlugin.facts`), into the aggregator."""
    aggregator.add_model_facts(facts.get("models") or {})
    aggregator.add_load_failures(facts.get("load_failures") or {})
    if "collected" in facts:
        aggregator.add_selection(int(facts["collected"]), int(facts["selected"]))
    aggregator.add_unchecked(facts.get("unchecked") or [])
    if facts.get("suite"):
        aggregator.suite = str(facts["suite"])
        aggregator.suite_order = list(facts.get("suite_order") or [])


class XdistHooks:
    """Controller-side hooks that exist only when pytest-xdist is active."""

    def __init__(self, gate_config: GateConfig, aggregator: Aggregator, shard: bool):
        self.gate_config = gate_config
        self.aggregator = aggregator
        self._dir = tempfile.mkdtemp(prefix="quantgate-shards-") if shard else None
        self.plan = ShardPlan(os.path.join(self._dir, "plan.json")) if self._dir else None

    def pytest_configure_node(self, node: Any) -> None:
        """What each worker is told before it starts: where to write the shard plan, its devices."""
        node.workerinput[SHARD_KEY] = str(self.plan.path) if self.plan else None
        node.workerinput[DEVICES_KEY] = self.gate_config.workers.get(node.workerinput.get("workerid", ""))

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if self.plan is None:
            return None
        plan = self.plan
        scope_of: Callable[[str], str] = lambda nodeid: plan.shards.get(nodeid, nodeid)  # noqa: E731
        return _compat.shard_scheduler(config, log, scope_of)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A worker crashed while running this test: if it was a quant case, its record is lost.
        if _compat.is_crash_report(report) and self.plan is not None and report.nodeid in self.plan.shards:
            self.aggregator.add_lost(report.nodeid, str(report.longrepr))

    def pytest_unconfigure(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        facts = getattr(node, "workeroutput", {}).get(FACTS_KEY)
        if facts:
            learnt = json.loads(facts)
            add_facts(self.aggregator, learnt)
            refused = learnt.get("usage_error")
            if refused:
                # A worker refused what it collected (quant_require_reference): the run's usage error.
                raise pytest.UsageError(refused)
