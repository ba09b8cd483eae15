"""torch's CPU threads in this process: the plan (:mod:`..core.threads`) applied at configure.

The plugin imports torch lazily, when a model loads, so the environment
variables set here at ``pytest_configure`` are read by OpenMP when torch
first loads. Where something imported torch earlier (a conftest may), the
thread count still applies through ``torch.set_num_threads``, but
``OMP_WAIT_POLICY`` does not: OpenMP reads it once, when its runtime
starts, and it cannot be changed afterwards.

Whatever this changes in the process (variables, torch's thread count) is
put back at ``pytest_unconfigure``: pytester's in-process runs, and any
host that runs pytest in its own process, get their settings back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from ..core.config import GateConfig
from ..core.threads import ThreadPlan, plan_threads

__all__ = ["THREADS_KEY", "apply", "available_cpus", "configure", "header_lines"]

#: The plan of this process (the controller's, under xdist: what each worker was given).
THREADS_KEY = pytest.StashKey[ThreadPlan]()


def available_cpus() -> int:
    """The cores this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def configure(config: pytest.Config, gate_config: GateConfig, *, workers: int) -> ThreadPlan | None:
    """Decide this session's threads and apply them to this process; None without a gate.

    An xdist worker decides nothing: the controller's plan reaches it through
    ``workerinput`` (:func:`.xdist.place`) and ``OMP_WAIT_POLICY`` through the
    environment it inherits.
    """
    if not gate_config.enabled or hasattr(config, "workerinput"):
        return None
    plan = plan_threads(gate_config.threads, environ=os.environ, cpus=available_cpus(), workers=workers)
    config.add_cleanup(apply(plan.threads, plan.wait_policy))
    config.stash[THREADS_KEY] = plan
    return plan


def apply(threads: int, wait_policy: str | None = None) -> Callable[[], None]:
    """Set ``OMP_NUM_THREADS`` (and ``OMP_WAIT_POLICY``), and torch's threads if torch is loaded.

    Returns:
        What puts the process back as it was.
    """
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if wait_policy is not None:
        # Read by OpenMP when torch first loads: too late if torch is loaded already (see above).
        os.environ["OMP_WAIT_POLICY"] = wait_policy
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)

    def undo() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)

    return undo


def header_lines(config: pytest.Config) -> list[str]:
    """The report header's line about threads (none without a gate)."""
    plan = config.stash.get(THREADS_KEY, None)
    if plan is None:
        return []
    return [f"quantgate: {plan.describe()}"]
