"""Which device each xdist worker loads its models onto: a pure plan made on the controller.

The controller calls :func:`plan_devices` once, with the number of workers and
what torch sees (GPUs, CPU cores), and sends each worker its
:class:`WorkerDevices` through ``workerinput`` (:meth:`WorkerDevices.to_dict`);
the worker rebuilds it with :meth:`WorkerDevices.from_dict`. Nothing here
imports torch or pytest, so the plan is decided, shown and tested without
either. :class:`DeviceError` carries a one-line message naming the flag; the
plugin turns it into a usage error before any model loads.

Placement (the xdist sharding issue, item 2):

- one GPU per worker: ``gwK`` -> ``cuda:(K mod ngpu)``;
- ``--quant-gpus-per-worker G``: ``gwK`` -> the contiguous block
  ``cuda:(K*G)`` .. ``cuda:(K*G+G-1)``, for a model spread with
  ``device_map="auto"`` over its block;
- more workers than GPUs (or blocks) is an error unless
  ``--quant-allow-shared-gpu``, then assignments wrap round;
- on the CPU every worker gets ``cpus // workers`` torch threads (at least
  one), so that n workers do not each start one thread per core.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .threads import plan_threads

__all__ = ["DeviceError", "WorkerDevices", "describe_plan", "plan_devices"]

_CUDA = re.compile(r"^cuda:(\d+)$")
_WORKER = re.compile(r"^gw(\d+)$")
_REQUESTS = "auto, cpu, cuda, cuda:N or mps"
#: Report header lines stay shorter than this.
_WIDTH = 100


class DeviceError(ValueError):
    """A worker/device combination that cannot run; the message is one line."""


@dataclass(frozen=True)
class WorkerDevices:
    """The devices of one xdist worker.

    Attributes:
        worker: the xdist worker id, ``"gw0"``.
        devices: one device (``("cuda:1",)``, ``("cpu",)``, ``("mps",)``) or a
            block of GPUs (``("cuda:2", "cuda:3")``).
        threads: torch threads for a CPU worker; None elsewhere (left to torch).

    Example:
        >>> wd = WorkerDevices("gw1", ("cuda:2", "cuda:3"), None)
        >>> wd.device, wd.block, wd.gpu_indices
        ('cuda:2', True, (2, 3))
    """

    worker: str
    devices: tuple[str, ...]
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError(f"worker {self.worker} has no device")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"worker {self.worker}: threads must be at least 1, got {self.threads}")

    @property
    def device(self) -> str:
        """The device a backend loads onto: the only one, or the first GPU of a block."""
        return self.devices[0]

    @property
    def block(self) -> bool:
        """Whether the worker spreads each model over several GPUs (``device_map="auto"``)."""
        return len(self.devices) > 1

    @property
    def gpu_indices(self) -> tuple[int, ...]:
        """The CUDA indices of the worker's GPUs (``()`` for cpu or mps), e.g. for ``max_memory``."""
        return tuple(int(m.group(1)) for m in map(_CUDA.match, self.devices) if m)

    def to_dict(self) -> dict[str, Any]:
        """Builtins only: it travels through xdist's ``workerinput`` and into the JSON report.

        >>> WorkerDevices("gw0", ("cpu",), 4).to_dict()
        {'worker': 'gw0', 'devices': ['cpu'], 'threads': 4}
        """
        return {"worker": self.worker, "devices": list(self.devices), "threads": self.threads}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerDevices:
        """The inverse of :meth:`to_dict`."""
        threads = data.get("threads")
        return cls(
            worker=str(data["worker"]),
            devices=tuple(str(d) for d in data["devices"]),
            threads=None if threads is None else int(threads),
        )


def plan_devices(
    workers: int,
    *,
    gpus: int,
    gpus_per_worker: int = 1,
    allow_shared: bool = False,
    cpus: int,
    requested: str = "auto",
    threads: int | None = None,
) -> dict[str, WorkerDevices]:
    """The devices of workers ``gw0`` .. ``gw{workers-1}``.

    Args:
        workers: the number of xdist workers, at least 1 (without xdist, or
            with ``-n 0``, the caller does not plan).
        gpus: the CUDA devices torch sees (``torch.cuda.device_count()``).
        gpus_per_worker: ``--quant-gpus-per-worker``: a contiguous block of
            GPUs per worker when above 1.
        allow_shared: ``--quant-allow-shared-gpu``: several workers may share
            a GPU (or a block, or the one ``cuda:N``/``mps`` device).
        cpus: the CPU cores this process may use, at least 1.
        requested: ``--quant-device``: ``auto`` (the GPUs when there are any,
            else the CPU), ``cpu``, ``cuda`` (all GPUs), ``cuda:N`` (every
            worker on GPU N) or ``mps``.
        threads: torch threads of each CPU worker, decided by the caller
            (:func:`~.threads.plan_threads`); None: that of an unset environment,
            ``cpus // workers``.

    Raises:
        DeviceError: a combination that cannot run, with a one-line message
            naming the flag to change.
        ValueError: ``workers``, ``gpus`` or ``cpus`` out of range (a caller's bug).

    Examples:
        >>> plan = plan_devices(2, gpus=2, cpus=8)
        >>> [(w, d.devices) for w, d in plan.items()]
        [('gw0', ('cuda:0',)), ('gw1', ('cuda:1',))]
        >>> plan_devices(2, gpus=4, gpus_per_worker=2, cpus=8)["gw1"].devices
        ('cuda:2', 'cuda:3')
        >>> plan_devices(3, gpus=0, cpus=8)["gw2"]
        WorkerDevices(worker='gw2', devices=('cpu',), threads=2)
    """
    if workers < 1:
        raise ValueError(f"plan_devices needs at least one worker, got {workers}")
    if gpus < 0:
        raise ValueError(f"gpus must not be negative, got {gpus}")
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if gpus_per_worker < 1:
        raise DeviceError(f"--quant-gpus-per-worker must be at least 1, got {gpus_per_worker}")
    device = str(requested).strip().lower()
    fixed = _CUDA.match(device)
    if device not in ("auto", "cpu", "cuda", "mps") and not fixed:
        raise DeviceError(f"--quant-device must be {_REQUESTS}, got {requested!r}")
    if device.startswith("cuda") and gpus == 0:
        raise DeviceError(f"--quant-device {device} was asked for, but torch sees no CUDA device")
    if gpus_per_worker > 1 and (device in ("cpu", "mps") or fixed):
        # A block is a range of GPUs chosen here; one named device cannot hold it.
        raise DeviceError(
            f"--quant-gpus-per-worker {gpus_per_worker} spreads a worker over several GPUs; "
            f"use --quant-device auto or cuda, not {device}"
        )
    names = [f"gw{k}" for k in range(workers)]

    if device == "cpu" or (device == "auto" and gpus == 0):
        if gpus_per_worker > 1:
            raise DeviceError(
                f"--quant-gpus-per-worker {gpus_per_worker} needs GPUs, but torch sees no CUDA device; "
                "drop it to run on the CPU"
            )
        # One thread per core in every worker would oversubscribe the cores n times.
        per_worker = (
            threads
            if threads is not None
            else plan_threads(None, environ={}, cpus=cpus, workers=workers).threads
        )
        return {w: WorkerDevices(w, ("cpu",), per_worker) for w in names}

    if device == "mps" or fixed:
        if fixed and int(fixed.group(1)) >= gpus:
            raise DeviceError(f"--quant-device {device} was asked for, but torch sees {gpus} CUDA device(s)")
        if workers > 1 and not allow_shared:
            raise DeviceError(
                f"-n {workers} puts {workers} workers on the one device {device} (--quant-device {device}); "
                "use -n 1, or --quant-allow-shared-gpu to share it"
            )
        return {w: WorkerDevices(w, (device,), None) for w in names}

    # auto with GPUs, or cuda: every GPU, one or a block per worker.
    per = gpus_per_worker
    if per > gpus:
        raise DeviceError(
            f"--quant-gpus-per-worker {per} needs {per} GPUs per worker but torch sees {gpus}; "
            f"use --quant-gpus-per-worker {gpus} or fewer"
        )
    blocks = gpus // per  # leftover GPUs (gpus % per) stay unused
    if workers > blocks and not allow_shared:
        if per == 1:
            raise DeviceError(
                f"-n {workers} needs {workers} GPUs (one per worker) but torch sees {gpus}; "
                f"use -n {gpus}, or --quant-allow-shared-gpu to put several workers on one GPU"
            )
        raise DeviceError(
            f"-n {workers} with --quant-gpus-per-worker {per} needs {workers * per} GPUs "
            f"but torch sees {gpus}; use -n {blocks}, or --quant-allow-shared-gpu "
            "to put several workers on one block"
        )
    return {
        w: WorkerDevices(w, tuple(f"cuda:{(k % blocks) * per + i}" for i in range(per)), None)
        for k, w in enumerate(names)
    }


def describe_plan(plan: Mapping[str, WorkerDevices], width: int = _WIDTH) -> list[str]:
    """Report header lines: which worker loads onto which devices.

    Workers with the same assignment are grouped; the line wraps before
    ``width`` characters.

    Examples:
        >>> describe_plan(plan_devices(2, gpus=2, cpus=8))
        ['quantgate: workers gw0 -> cuda:0, gw1 -> cuda:1']
        >>> describe_plan(plan_devices(4, gpus=0, cpus=4))
        ['quantgate: workers gw0-gw3 -> cpu (1 torch thread each)']
        >>> describe_plan(plan_devices(4, gpus=2, allow_shared=True, cpus=8))
        ['quantgate: workers gw0,gw2 -> cuda:0, gw1,gw3 -> cuda:1']
    """
    groups: dict[tuple[tuple[str, ...], int | None], list[str]] = {}
    for name in sorted(plan, key=_worker_key):
        wd = plan[name]
        groups.setdefault((wd.devices, wd.threads), []).append(name)
    items = [
        f"{_workers_text(names)} -> {_devices_text(devices)}{_threads_text(threads, len(names))}"
        for (devices, threads), names in groups.items()
    ]
    head = "quantgate: workers "
    lines: list[str] = []
    line = head
    for item in items:
        if line == head:
            line += item
        elif len(line) + 2 + len(item) < width:
            line += ", " + item
        else:
            lines.append(line + ",")
            line = " " * len(head) + item
    if items:
        lines.append(line)
    return lines


def _worker_key(name: str) -> tuple[int, int, str]:
    m = _WORKER.match(name)
    return (0, int(m.group(1)), "") if m else (1, 0, name)


def _workers_text(names: Iterable[str]) -> str:
    """``gw0-gw3``, ``gw0,gw2``, ``gw0-gw2,gw5``: runs of consecutive ``gwN`` shortened."""
    parts: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            parts.append(f"gw{run[0]}" if len(run) == 1 else f"gw{run[0]}-gw{run[-1]}")
            run.clear()

    for name in names:
        m = _WORKER.match(name)
        if m is None:
            flush()
            parts.append(name)
            continue
        k = int(m.group(1))
        if run and k != run[-1] + 1:
            flush()
        run.append(k)
    flush()
    return ",".join(parts)


def _devices_text(devices: tuple[str, ...]) -> str:
    """``cuda:1``; a contiguous block ``cuda:2-3``; anything else joined with commas."""
    indices = [int(m.group(1)) for m in map(_CUDA.match, devices) if m]
    if (
        len(devices) > 1
        and len(indices) == len(devices)
        and indices == list(range(indices[0], indices[-1] + 1))
    ):
        return f"cuda:{indices[0]}-{indices[-1]}"
    return ",".join(devices)


def _threads_text(threads: int | None, workers: int) -> str:
    if threads is None:
        return ""
    noun = "thread" if threads == 1 else "threads"
    return f" ({threads} torch {noun}{' each' if workers > 1 else ''})"
