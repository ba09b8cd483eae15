"""The worker -> device plan: a pure function, table-driven, errors included."""

from __future__ import annotations

import doctest
import json

import pytest

from pytest_quantgate.core import devices
from pytest_quantgate.core.devices import DeviceError, WorkerDevices, describe_plan, plan_devices

C = "cpu"


def cuda(*indices: int) -> tuple[str, ...]:
    return tuple(f"cuda:{i}" for i in indices)


@pytest.mark.parametrize(
    ("workers", "gpus", "per", "shared", "cpus", "requested", "expected", "threads"),
    [
        # One GPU per worker: gwK -> cuda:K.
        (1, 1, 1, False, 8, "auto", {"gw0": cuda(0)}, None),
        (2, 2, 1, False, 8, "auto", {"gw0": cuda(0), "gw1": cuda(1)}, None),
        (2, 4, 1, False, 8, "auto", {"gw0": cuda(0), "gw1": cuda(1)}, None),
        (3, 3, 1, False, 8, "cuda", {"gw0": cuda(0), "gw1": cuda(1), "gw2": cuda(2)}, None),
        (2, 2, 1, False, 8, " CUDA ", {"gw0": cuda(0), "gw1": cuda(1)}, None),
        # Shared: K mod ngpu.
        (4, 2, 1, True, 8, "auto", {"gw0": cuda(0), "gw1": cuda(1), "gw2": cuda(0), "gw3": cuda(1)}, None),
        (3, 1, 1, True, 8, "cuda", {"gw0": cuda(0), "gw1": cuda(0), "gw2": cuda(0)}, None),
        (2, 2, 1, True, 8, "auto", {"gw0": cuda(0), "gw1": cuda(1)}, None),
        # Blocks of G GPUs: gwK -> cuda:(K*G) .. cuda:(K*G+G-1).
        (1, 2, 2, False, 8, "auto", {"gw0": cuda(0, 1)}, None),
        (2, 4, 2, False, 8, "auto", {"gw0": cuda(0, 1), "gw1": cuda(2, 3)}, None),
        (2, 8, 4, False, 8, "cuda", {"gw0": cuda(0, 1, 2, 3), "gw1": cuda(4, 5, 6, 7)}, None),
        (1, 5, 2, False, 8, "auto", {"gw0": cuda(0, 1)}, None),  # cuda:2-4 unused
        (2, 5, 2, False, 8, "auto", {"gw0": cuda(0, 1), "gw1": cuda(2, 3)}, None),  # cuda:4 unused
        (1, 3, 3, False, 8, "auto", {"gw0": cuda(0, 1, 2)}, None),
        # Shared blocks wrap modulo gpus // G.
        (3, 4, 2, True, 8, "auto", {"gw0": cuda(0, 1), "gw1": cuda(2, 3), "gw2": cuda(0, 1)}, None),
        (3, 5, 2, True, 8, "auto", {"gw0": cuda(0, 1), "gw1": cuda(2, 3), "gw2": cuda(0, 1)}, None),
        (2, 3, 2, True, 8, "auto", {"gw0": cuda(0, 1), "gw1": cuda(0, 1)}, None),
        # A fixed GPU: every worker on it.
        (1, 4, 1, False, 8, "cuda:2", {"gw0": cuda(2)}, None),
        (2, 4, 1, True, 8, "cuda:3", {"gw0": cuda(3), "gw1": cuda(3)}, None),
        # MPS: one device.
        (1, 0, 1, False, 8, "mps", {"gw0": ("mps",)}, None),
        (2, 0, 1, True, 8, "mps", {"gw0": ("mps",), "gw1": ("mps",)}, None),
        # CPU: threads divided, never oversubscribed, at least one.
        (1, 0, 1, False, 8, "auto", {"gw0": (C,)}, 8),
        (2, 0, 1, False, 8, "auto", {"gw0": (C,), "gw1": (C,)}, 4),
        (3, 0, 1, False, 8, "auto", {"gw0": (C,), "gw1": (C,), "gw2": (C,)}, 2),
        (2, 0, 1, False, 2, "auto", {"gw0": (C,), "gw1": (C,)}, 1),
        (4, 0, 1, False, 2, "auto", {f"gw{k}": (C,) for k in range(4)}, 1),
        (2, 0, 1, False, 1, "cpu", {"gw0": (C,), "gw1": (C,)}, 1),
        (2, 4, 1, False, 16, "cpu", {"gw0": (C,), "gw1": (C,)}, 8),  # cpu asked for despite GPUs
        (8, 2, 1, False, 16, "cpu", {f"gw{k}": (C,) for k in range(8)}, 2),  # no GPU sharing on the CPU
    ],
)
def test_plan(
    workers: int,
    gpus: int,
    per: int,
    shared: bool,
    cpus: int,
    requested: str,
    expected: dict[str, tuple[str, ...]],
    threads: int | None,
) -> None:
    plan = plan_devices(
        workers, gpus=gpus, gpus_per_worker=per, allow_shared=shared, cpus=cpus, requested=requested
    )
    assert list(plan) == [f"gw{k}" for k in range(workers)]
    assert {w: d.devices for w, d in plan.items()} == expected
    assert {d.threads for d in plan.values()} == {threads}
    assert all(d.worker == w for w, d in plan.items())
    assert all(d.block == (per > 1) for d in plan.values())


@pytest.mark.parametrize(
    ("workers", "gpus", "per", "shared", "requested", "message"),
    [
        # More workers than GPUs.
        (
            4,
            2,
            1,
            False,
            "auto",
            "-n 4 needs 4 GPUs (one per worker) but torch sees 2; use -n 2, "
            "or --quant-allow-shared-gpu to put several workers on one GPU",
        ),
        (2, 1, 1, False, "cuda", "-n 2 needs 2 GPUs (one per worker) but torch sees 1; use -n 1, or"),
        # Blocks: workers * G > gpus.
        (
            3,
            4,
            2,
            False,
            "auto",
            "-n 3 with --quant-gpus-per-worker 2 needs 6 GPUs but torch sees 4; use -n 2, "
            "or --quant-allow-shared-gpu to put several workers on one block",
        ),
        (
            2,
            5,
            3,
            False,
            "cuda",
            "-n 2 with --quant-gpus-per-worker 3 needs 6 GPUs but torch sees 5; use -n 1",
        ),
        # G > gpus: an error even when sharing.
        (
            1,
            2,
            4,
            False,
            "auto",
            "--quant-gpus-per-worker 4 needs 4 GPUs per worker but torch sees 2; "
            "use --quant-gpus-per-worker 2 or fewer",
        ),
        (2, 2, 3, True, "cuda", "--quant-gpus-per-worker 3 needs 3 GPUs per worker but torch sees 2"),
        (
            1,
            0,
            2,
            False,
            "auto",
            "--quant-gpus-per-worker 2 needs GPUs, but torch sees no CUDA device; drop it to run on the CPU",
        ),
        # G < 1.
        (1, 2, 0, False, "auto", "--quant-gpus-per-worker must be at least 1, got 0"),
        (1, 0, -1, True, "cpu", "--quant-gpus-per-worker must be at least 1, got -1"),
        # G with a single named device.
        (
            1,
            4,
            2,
            False,
            "cpu",
            "--quant-gpus-per-worker 2 spreads a worker over several GPUs; "
            "use --quant-device auto or cuda, not cpu",
        ),
        (1, 4, 2, False, "cuda:1", "use --quant-device auto or cuda, not cuda:1"),
        (1, 0, 2, True, "mps", "use --quant-device auto or cuda, not mps"),
        # CUDA asked for on a machine without it.
        (1, 0, 1, False, "cuda", "--quant-device cuda was asked for, but torch sees no CUDA device"),
        (1, 0, 1, True, "cuda:0", "--quant-device cuda:0 was asked for, but torch sees no CUDA device"),
        (1, 2, 1, False, "cuda:2", "--quant-device cuda:2 was asked for, but torch sees 2 CUDA device(s)"),
        # One named device, several workers.
        (
            2,
            4,
            1,
            False,
            "cuda:1",
            "-n 2 puts 2 workers on the one device cuda:1 (--quant-device cuda:1); "
            "use -n 1, or --quant-allow-shared-gpu to share it",
        ),
        (3, 0, 1, False, "mps", "-n 3 puts 3 workers on the one device mps (--quant-device mps)"),
        # Not a device.
        (1, 1, 1, False, "tpu", "--quant-device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (1, 1, 1, False, "cuda:x", "--quant-device must be auto, cpu, cuda, cuda:N or mps, got 'cuda:x'"),
    ],
)
def test_plan_errors(workers: int, gpus: int, per: int, shared: bool, requested: str, message: str) -> None:
    with pytest.raises(DeviceError) as info:
        plan_devices(
            workers, gpus=gpus, gpus_per_worker=per, allow_shared=shared, cpus=8, requested=requested
        )
    text = str(info.value)
    assert message in text
    assert "\n" not in text and len(text) < 200


@pytest.mark.parametrize(
    ("workers", "gpus", "cpus", "message"),
    [
        (0, 2, 8, "at least one worker, got 0"),
        (-1, 2, 8, "at least one worker, got -1"),
        (1, -1, 8, "gpus must not be negative"),
        (1, 0, 0, "cpus must be at least 1"),
    ],
)
def test_caller_bugs_are_value_errors_not_device_errors(
    workers: int, gpus: int, cpus: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        plan_devices(workers, gpus=gpus, cpus=cpus)
    assert not isinstance(info.value, DeviceError)


def test_device_error_is_a_value_error() -> None:
    assert issubclass(DeviceError, ValueError)


@pytest.mark.parametrize(
    ("wd", "device", "block", "indices"),
    [
        (WorkerDevices("gw0", ("cuda:1",)), "cuda:1", False, (1,)),
        (WorkerDevices("gw1", ("cuda:2", "cuda:3")), "cuda:2", True, (2, 3)),
        (WorkerDevices("gw0", ("cpu",), 4), "cpu", False, ()),
        (WorkerDevices("gw0", ("mps",)), "mps", False, ()),
    ],
)
def test_worker_devices_properties(
    wd: WorkerDevices, device: str, block: bool, indices: tuple[int, ...]
) -> None:
    assert (wd.device, wd.block, wd.gpu_indices) == (device, block, indices)


@pytest.mark.parametrize(
    "wd",
    [
        WorkerDevices("gw0", ("cuda:0",), None),
        WorkerDevices("gw3", ("cuda:4", "cuda:5", "cuda:6"), None),
        WorkerDevices("gw1", ("cpu",), 3),
        WorkerDevices("gw0", ("mps",)),
    ],
)
def test_to_dict_round_trips_through_json(wd: WorkerDevices) -> None:
    data = json.loads(json.dumps(wd.to_dict()))
    assert data == wd.to_dict()
    assert WorkerDevices.from_dict(data) == wd


def test_to_dict_is_builtins() -> None:
    assert WorkerDevices("gw1", ("cuda:2", "cuda:3")).to_dict() == {
        "worker": "gw1",
        "devices": ["cuda:2", "cuda:3"],
        "threads": None,
    }


def test_from_dict_without_threads() -> None:
    assert WorkerDevices.from_dict({"worker": "gw0", "devices": ["cuda:0"]}) == WorkerDevices(
        "gw0", ("cuda:0",)
    )


@pytest.mark.parametrize(
    ("devices", "threads", "message"),
    [((), None, "gw0 has no device"), (("cpu",), 0, "threads must be at least 1, got 0")],
)
def test_worker_devices_rejects_nonsense(devices: tuple[str, ...], threads: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerDevices("gw0", devices, threads)


@pytest.mark.parametrize(
    ("workers", "gpus", "per", "shared", "cpus", "lines"),
    [
        (1, 1, 1, False, 8, ["quantgate: workers gw0 -> cuda:0"]),
        (2, 2, 1, False, 8, ["quantgate: workers gw0 -> cuda:0, gw1 -> cuda:1"]),
        (4, 0, 1, False, 2, ["quantgate: workers gw0-gw3 -> cpu (1 torch thread each)"]),
        (2, 0, 1, False, 8, ["quantgate: workers gw0-gw1 -> cpu (4 torch threads each)"]),
        (1, 0, 1, False, 8, ["quantgate: workers gw0 -> cpu (8 torch threads)"]),
        (1, 0, 1, False, 1, ["quantgate: workers gw0 -> cpu (1 torch thread)"]),
        (4, 2, 1, True, 8, ["quantgate: workers gw0,gw2 -> cuda:0, gw1,gw3 -> cuda:1"]),
        (3, 1, 1, True, 8, ["quantgate: workers gw0-gw2 -> cuda:0"]),
        (2, 4, 2, False, 8, ["quantgate: workers gw0 -> cuda:0-1, gw1 -> cuda:2-3"]),
        (3, 4, 2, True, 8, ["quantgate: workers gw0,gw2 -> cuda:0-1, gw1 -> cuda:2-3"]),
        (
            12,
            8,
            1,
            True,
            8,
            [
                "quantgate: workers gw0,gw8 -> cuda:0, gw1,gw9 -> cuda:1, gw2,gw10 -> cuda:2, "
                "gw3,gw11 -> cuda:3,",
                "                   gw4 -> cuda:4, gw5 -> cuda:5, gw6 -> cuda:6, gw7 -> cuda:7",
            ],
        ),
    ],
)
def test_describe_plan(workers: int, gpus: int, per: int, shared: bool, cpus: int, lines: list[str]) -> None:
    plan = plan_devices(workers, gpus=gpus, gpus_per_worker=per, allow_shared=shared, cpus=cpus)
    assert describe_plan(plan) == lines


def test_describe_plan_wraps_many_workers_under_100_characters() -> None:
    lines = describe_plan(plan_devices(64, gpus=64, cpus=8))
    assert len(lines) > 1
    assert all(len(line) < 100 for line in lines)
    assert lines[0].startswith("quantgate: workers gw0 -> cuda:0, ")
    assert lines[-1].endswith("gw63 -> cuda:63")
    assert sum(line.count(" -> ") for line in lines) == 64


def test_describe_plan_orders_workers_numerically_and_groups_runs() -> None:
    plan = {
        w: WorkerDevices(w, ("cuda:0",) if w != "gw3" else ("cuda:1",))
        for w in ("gw10", "gw2", "gw0", "gw1", "gw3", "gw11")
    }
    assert describe_plan(plan) == ["quantgate: workers gw0-gw2,gw10-gw11 -> cuda:0, gw3 -> cuda:1"]


def test_describe_empty_plan() -> None:
    assert describe_plan({}) == []


def test_docstring_examples() -> None:
    result = doctest.testmod(devices, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
