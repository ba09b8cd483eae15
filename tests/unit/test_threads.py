"""torch's CPU threads: the pure decision (``core.threads``) and the ``--quant-threads`` parser."""

from __future__ import annotations

import doctest

import pytest

from pytest_quantgate.core import threads
from pytest_quantgate.core.config import ConfigError, parse_threads
from pytest_quantgate.core.devices import plan_devices
from pytest_quantgate.core.threads import ThreadPlan, ThreadSource, plan_threads

OPTION, ENV = ThreadSource.OPTION, ThreadSource.ENVIRONMENT
SHARE, AUTO = ThreadSource.SHARE, ThreadSource.AUTO
PASSIVE = "PASSIVE"


@pytest.mark.parametrize(
    ("requested", "environ", "cpus", "workers", "expected"),
    [
        # Nothing set: one thread, whatever the cores (the measured default, BENCHMARKS.md).
        (None, {}, 2, 0, ThreadPlan(1, AUTO, PASSIVE)),
        (None, {}, 64, 0, ThreadPlan(1, AUTO, PASSIVE)),
        (None, {}, 1, 0, ThreadPlan(1, AUTO, PASSIVE)),
        # The user's OMP_NUM_THREADS wins over auto, per process, with or without xdist.
        (None, {"OMP_NUM_THREADS": "2"}, 2, 0, ThreadPlan(2, ENV, PASSIVE)),
        (None, {"OMP_NUM_THREADS": "8"}, 2, 0, ThreadPlan(8, ENV, PASSIVE)),  # more than the cores: asked for
        (None, {"OMP_NUM_THREADS": " 3 "}, 8, 2, ThreadPlan(3, ENV, PASSIVE)),
        (None, {"OMP_NUM_THREADS": "4,2"}, 8, 0, ThreadPlan(4, ENV, PASSIVE)),  # nested levels: the first
        # An OMP_NUM_THREADS that is no count is ignored, as if unset.
        (None, {"OMP_NUM_THREADS": ""}, 2, 0, ThreadPlan(1, AUTO, PASSIVE)),
        (None, {"OMP_NUM_THREADS": "0"}, 2, 0, ThreadPlan(1, AUTO, PASSIVE)),
        (None, {"OMP_NUM_THREADS": "all"}, 8, 2, ThreadPlan(4, SHARE, PASSIVE)),
        # --quant-threads wins over everything, in every process.
        (3, {"OMP_NUM_THREADS": "2"}, 2, 0, ThreadPlan(3, OPTION, PASSIVE)),
        (1, {}, 16, 0, ThreadPlan(1, OPTION, PASSIVE)),
        (4, {}, 8, 4, ThreadPlan(4, OPTION, PASSIVE)),
        # Under xdist, auto is each worker's share of the cores, at least one.
        (None, {}, 8, 2, ThreadPlan(4, SHARE, PASSIVE)),
        (None, {}, 8, 3, ThreadPlan(2, SHARE, PASSIVE)),
        (None, {}, 2, 2, ThreadPlan(1, SHARE, PASSIVE)),
        (None, {}, 2, 4, ThreadPlan(1, SHARE, PASSIVE)),
        # A wait policy the user set is left alone (any value, even one OpenMP rejects).
        (None, {"OMP_WAIT_POLICY": "ACTIVE"}, 2, 0, ThreadPlan(1, AUTO, None)),
        (None, {"OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "2"}, 2, 0, ThreadPlan(2, ENV, None)),
        (2, {"OMP_WAIT_POLICY": "bogus"}, 2, 0, ThreadPlan(2, OPTION, None)),
        # ... but an empty one is unset.
        (None, {"OMP_WAIT_POLICY": " "}, 2, 0, ThreadPlan(1, AUTO, PASSIVE)),
    ],
)
def test_plan_threads(
    requested: int | None, environ: dict[str, str], cpus: int, workers: int, expected: ThreadPlan
) -> None:
    assert plan_threads(requested, environ=environ, cpus=cpus, workers=workers) == expected


@pytest.mark.parametrize(
    "call",
    [
        lambda: plan_threads(None, environ={}, cpus=0),
        lambda: plan_threads(None, environ={}, cpus=2, workers=-1),
        lambda: plan_threads(0, environ={}, cpus=2),
        lambda: ThreadPlan(0, ThreadSource.AUTO),
    ],
)
def test_out_of_range_is_a_callers_bug(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (ThreadPlan(1, AUTO, PASSIVE), "torch threads 1 (auto), OMP_WAIT_POLICY=PASSIVE"),
        (ThreadPlan(2, ENV, None), "torch threads 2 (OMP_NUM_THREADS)"),
        (ThreadPlan(4, OPTION, PASSIVE), "torch threads 4 (--quant-threads), OMP_WAIT_POLICY=PASSIVE"),
        (ThreadPlan(1, SHARE, PASSIVE), "torch threads 1 (xdist share), OMP_WAIT_POLICY=PASSIVE"),
    ],
)
def test_describe(plan: ThreadPlan, words: str) -> None:
    assert plan.describe() == words


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("auto", None), (" AUTO ", None), ("1", 1), (" 4 ", 4), (8, 8)],
)
def test_parse_threads(value: str | int | None, expected: int | None) -> None:
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many", "", "2 threads", 0])
def test_parse_threads_refuses_in_one_line(value: str | int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threads(value, "quant_threads")
    assert str(info.value) == f"quant_threads must be a positive integer or auto, got {value!r}"


@pytest.mark.parametrize(
    ("threads", "cpus", "workers", "expected"),
    [(None, 8, 2, 4), (None, 2, 4, 1), (3, 8, 2, 3), (1, 16, 2, 1)],
)
def test_cpu_workers_get_the_planned_threads(
    threads: int | None, cpus: int, workers: int, expected: int
) -> None:
    plan = plan_devices(workers, gpus=0, cpus=cpus, threads=threads)
    assert {w.threads for w in plan.values()} == {expected}


def test_gpu_workers_leave_threads_to_the_environment() -> None:
    plan = plan_devices(2, gpus=2, cpus=8, threads=3)
    assert {w.threads for w in plan.values()} == {None}


def test_doctests() -> None:
    result = doctest.testmod(threads)
    assert result.failed == 0 and result.attempted > 0
