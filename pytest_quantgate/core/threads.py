"""How many CPU threads torch gets, and how OpenMP's idle threads wait: a pure decision.

torch's CPU build runs its operators on an OpenMP team of one thread per core
whose idle members spin (GNU OpenMP's default wait policy) between the many
small operators of a small model's generation. On a shared machine — a CI
runner, other jobs on the cores — the spinning team is what contention
punishes: the example gate took 29-52 s instead of about 11 in the issue
(issue 17, item 1), 21.3 s instead of 8.8 beside two busy loops here. The
measurements are in ``BENCHMARKS.md``, "CPU threads on a shared machine".

:func:`plan_threads` decides, from the ``--quant-threads`` setting, the
environment and the cores there are, what :mod:`..integration.threads`
applies before torch loads. Nothing here imports torch or pytest.

The rule, first match wins:

1. ``--quant-threads N`` / ``quant_threads = N``: N threads in every process
   that generates (each xdist worker too);
2. ``OMP_NUM_THREADS`` set in the environment (a positive integer; for a
   nested list such as ``4,2`` its first level): the user's choice, per
   process, as OpenMP itself reads it;
3. under ``pytest -n N``: each worker's share of the cores, ``cpus // N``
   (at least 1), so that N workers do not each start a thread per core;
4. otherwise :data:`AUTO_THREADS`: one thread. It was never the slow
   setting measured, on the tiny models a second thread gained nothing, and
   it holds where a wait policy cannot: after a conftest imported torch,
   ``torch.set_num_threads`` still applies, but OpenMP has read its wait
   policy already. A large model on a machine of one's own is faster with
   the cores: ``--quant-threads``.

Whatever the thread count, OpenMP's wait policy becomes ``PASSIVE`` (idle
threads sleep instead of spinning) unless ``OMP_WAIT_POLICY`` is set: it
matters wherever a process runs more than one thread (two threads beside
two busy loops: 21.3 s spinning, 15.9 s passive).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AUTO_THREADS", "AUTO_WAIT_POLICY", "ThreadPlan", "ThreadSource", "omp_threads", "plan_threads"]

#: Threads of a process without ``--quant-threads``, ``OMP_NUM_THREADS`` or xdist.
AUTO_THREADS = 1
#: OpenMP's wait policy when ``OMP_WAIT_POLICY`` is not set.
AUTO_WAIT_POLICY = "PASSIVE"


class ThreadSource(enum.Enum):
    """Where a process's thread count came from (shown in the report header)."""

    OPTION = "--quant-threads"
    ENVIRONMENT = "OMP_NUM_THREADS"
    SHARE = "xdist share"
    AUTO = "auto"


@dataclass(frozen=True)
class ThreadPlan:
    """torch's CPU threads in a process that generates, and OpenMP's wait policy.

    Attributes:
        threads: torch's intra-op threads (``OMP_NUM_THREADS``, ``torch.set_num_threads``).
        source: why that many.
        wait_policy: the ``OMP_WAIT_POLICY`` to set before torch loads; None
            leaves the environment's (the user set one).

    Example:
        >>> ThreadPlan(1, ThreadSource.AUTO, "PASSIVE").describe()
        'torch threads 1 (auto), OMP_WAIT_POLICY=PASSIVE'
    """

    threads: int
    source: ThreadSource
    wait_policy: str | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    def describe(self) -> str:
        """The report header's words for this plan."""
        policy = f", OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else ""
        return f"torch threads {self.threads} ({self.source.value}){policy}"


def omp_threads(value: str | None) -> int | None:
    """The thread count an ``OMP_NUM_THREADS`` value asks for, or None (unset, empty or not a count).

    OpenMP accepts a list, one count per nesting level; torch's operators
    run at the first level.

    >>> [omp_threads(v) for v in (None, "", "4", " 2 ", "4,2", "0", "-1", "many")]
    [None, None, 4, 2, 4, None, None, None]
    """
    text = (value or "").split(",")[0].strip()
    if not text.isdigit() or int(text) < 1:
        return None
    return int(text)


def plan_threads(
    requested: int | None,
    *,
    environ: Mapping[str, str],
    cpus: int,
    workers: int = 0,
) -> ThreadPlan:
    """The threads of each process that generates, by the rule in this module's docstring.

    Args:
        requested: ``--quant-threads`` (None: ``auto``).
        environ: the environment as the user set it (``os.environ`` before
            the plugin changed anything).
        cpus: the cores this process may use, at least 1.
        workers: the xdist workers that will generate (0: none, this process generates).

    Examples:
        >>> plan_threads(None, environ={}, cpus=2).describe()
        'torch threads 1 (auto), OMP_WAIT_POLICY=PASSIVE'
        >>> plan_threads(None, environ={"OMP_NUM_THREADS": "2"}, cpus=2).describe()
        'torch threads 2 (OMP_NUM_THREADS), OMP_WAIT_POLICY=PASSIVE'
        >>> plan_threads(3, environ={"OMP_WAIT_POLICY": "active"}, cpus=8, workers=2).describe()
        'torch threads 3 (--quant-threads)'
        >>> plan_threads(None, environ={}, cpus=8, workers=3).threads
        2
    """
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if workers < 0:
        raise ValueError(f"workers must not be negative, got {workers}")
    wait_policy = None if environ.get("OMP_WAIT_POLICY", "").strip() else AUTO_WAIT_POLICY
    from_env = omp_threads(environ.get("OMP_NUM_THREADS"))
    if requested is not None:
        if requested < 1:
            raise ValueError(f"requested threads must be at least 1, got {requested}")
        return ThreadPlan(requested, ThreadSource.OPTION, wait_policy)
    if from_env is not None:
        return ThreadPlan(from_env, ThreadSource.ENVIRONMENT, wait_policy)
    if workers:
        return ThreadPlan(max(1, cpus // workers), ThreadSource.SHARE, wait_policy)
    return ThreadPlan(AUTO_THREADS, ThreadSource.AUTO, wait_policy)
