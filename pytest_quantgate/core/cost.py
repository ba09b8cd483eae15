"""What a model costs to run, measured apart from the quality run (``--quant-cost``).

After warm-up, on a fixed sample of the suite's prompts, at batch sizes 1, 8
and the run's, every model generates exactly the same number of new tokens
(``min_new_tokens = max_new_tokens``, as optimum-benchmark does), timed with
the device synchronized (:meth:`~..backends.base.Backend.timed_generate`):

- time to first token: a batch generating one token (the prefill, and one step);
- decode tokens per second: the extra tokens of a full generation over the
  extra time it took, ``B·(T − 1) / (t_T − t_1)``;
- request latency p50 / p95: single requests (batch 1), each timed;
- peak memory: on a GPU the backend's peak since it loaded; on the CPU how far
  the process's resident set rose above where it stood when the measuring began
  (the high-water mark reset first, on Linux).

Medians of the repeats; nothing here decides a verdict.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..backends.base import Backend, GenerationRequest

__all__ = ["Cost", "CostAtBatch", "measure", "percentile"]

#: Repeats of each timing, after one warm-up run.
REPEATS = 3


@dataclass(frozen=True)
class CostAtBatch:
    """Timings of one batch size.

    Attributes:
        batch_size: Requests per batch.
        first_token_seconds: Median time for the batch to generate one token.
        batch_seconds: Median time for the batch to generate every token.
        decode_tokens_per_second: Tokens per second after the first, over the batch.
    """

    batch_size: int
    first_token_seconds: float
    batch_seconds: float
    decode_tokens_per_second: float


@dataclass(frozen=True)
class Cost:
    """One model's cost on the sample.

    Attributes:
        new_tokens: Tokens every request generated.
        prompts: Prompts in the sample.
        batches: One entry per batch size measured, smallest first.
        latency_p50: Median seconds of a single request (batch 1).
        latency_p95: 95th percentile of the same.
        peak_memory_bytes: Peak memory while measured (see the module), None when unknown.
        memory: What ``peak_memory_bytes`` is: ``"device"`` or ``"cpu rss rise"``.
    """

    new_tokens: int
    prompts: int
    batches: tuple[CostAtBatch, ...]
    latency_p50: float
    latency_p95: float
    peak_memory_bytes: int | None
    memory: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batches": [asdict(b) for b in self.batches]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        return cls(**{**data, "batches": tuple(CostAtBatch(**b) for b in data["batches"])})


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    at = q * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> int:
    """Start measuring the peak resident set afresh; the resident set now, in bytes.

    On Linux the high-water mark is reset (``/proc/self/clear_refs``), so each
    model's peak is its own, not the earlier models'; elsewhere the peak so far
    (``ru_maxrss``) stands in, and only a rise above it shows.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass
    now = _status_kib("VmRSS")
    return now * 1024 if now is not None else _peak_rss()


def _peak_rss() -> int:
    """The process's peak resident set since it was last reset, in bytes."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure(
    backend: Backend,
    requests: Sequence[GenerationRequest],
    *,
    batch_sizes: Sequence[int],
    new_tokens: int,
    repeats: int = REPEATS,
    timed: Callable[[Sequence[GenerationRequest], int], float] | None = None,
) -> Cost:
    """Measure ``backend`` on ``requests`` (see the module).

    Raises:
        ValueError: no request, or new_tokens below 2 (nothing to decode after the first).
    """
    if not requests or new_tokens < 2:
        raise ValueError("cost needs at least one prompt and at least 2 new tokens")
    run = timed or backend.timed_generate
    rss_before = _reset_peak_rss()
    run(list(requests[:1]), new_tokens)  # warm-up: kernels, caches, lazy imports
    sizes = sorted({min(b, len(requests)) for b in batch_sizes if b >= 1})
    batches = []
    for size in sizes:
        batch = list(requests[:size])
        first = statistics.median(run(batch, 1) for _ in range(repeats))
        full = statistics.median(run(batch, new_tokens) for _ in range(repeats))
        decode = size * (new_tokens - 1) / max(full - first, 1e-9)
        batches.append(CostAtBatch(size, first, full, decode))
    singles = [run([r], new_tokens) for r in requests for _ in range(max(1, repeats // 2))]
    device_peak = backend.peak_memory()
    return Cost(
        new_tokens=new_tokens,
        prompts=len(requests),
        batches=tuple(batches),
        latency_p50=percentile(singles, 0.5),
        latency_p95=percentile(singles, 0.95),
        peak_memory_bytes=device_peak if device_peak is not None else max(_peak_rss() - rss_before, 0),
        memory="device" if device_peak is not None else "cpu rss rise",
    )
