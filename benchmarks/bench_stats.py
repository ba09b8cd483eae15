"""Time the gate's exact statistics on large slices (medians of several runs).

Prints a Markdown table for BENCHMARKS.md: the exact p-value of one slice
(REGRESSED and non-inferiority tails, memo cleared before each run), the
gate's nested p-value, and the exact upper bound, at n up to 100,000, and, for
scale, the same p-value by the normal approximation the gate used to switch
to above n = 2,000.

    python benchmarks/bench_stats.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_quantgate.statistics import stats

TABLES = [
    # (b, c, n, δ): a slice at the edge of its margin, and a clear one
    (2100, 1900, 100_000, 0.001),
    (5000, 3000, 100_000, 0.02),
    (260, 200, 10_000, 0.005),
    (51, 0, 2_000, 0.02),
]


def clear() -> None:
    # Every memo of the module (the first stage of the exact tail has its own).
    for name in dir(stats):
        cached = getattr(stats, name)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def median_ms(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        clear()
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} on {os.cpu_count()} cores; medians of {args.repeat} runs\n")
    print("| b, c, n, δ | exact p (ms) | nested p (ms) | exact bound (ms) | normal p (ms) | exact / normal |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, c, n, delta in TABLES:
        exact = median_ms(lambda: stats.regression_pvalue(b, c, n, delta, nested=False), args.repeat)  # noqa: B023
        nested = median_ms(lambda: stats.regression_pvalue(b, c, n, delta), args.repeat)  # noqa: B023
        bound = median_ms(lambda: stats.upper_bound(b, c, n, 0.05), args.repeat)  # noqa: B023
        normal = median_ms(
            lambda: stats.regression_pvalue(b, c, n, delta, method="normal"),  # noqa: B023
            args.repeat,
        )
        print(
            f"| {b}, {c}, {n:,}, {delta:g} | {exact:.1f} | {nested:.1f} | {bound:.0f} | {normal:.2f} "
            f"| {exact / normal:.0f}× |"
        )


if __name__ == "__main__":
    main()
