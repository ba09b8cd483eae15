"""Time the plan of INCONCLUSIVE rows: the detectable drop and the cases a verdict needs.

Each row is gated with ``GateSettings(plan=True)`` (stats.detectable_drop and
stats.cases_needed, exact power) and without the plan; the difference is the
plan's cost. Two ways: every row with the memos cleared first (the cost of a
row on its own), and all rows in one process, memos kept (a run with many
INCONCLUSIVE slices and candidates). The rows on their own are timed twice:
with independent cases and in clusters of CLUSTER cases. Prints CPU seconds (the machine is
shared: wall time would measure the other jobs too), medians over rows, the
load average and the numbers each row reports, so that runs of two versions
can be compared number for number.

    python benchmarks/bench_plan.py [--root PATH]   # PATH: the tree whose pytest_quantgate to time
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROWS = [
    # (b, c, n): INCONCLUSIVE slices at the default margin (2 points), small to the seed size
    (5, 5, 100),
    (3, 2, 60),
    (8, 3, 200),
    (12, 12, 340),
    (10, 6, 340),
    (20, 14, 340),
    (2, 1, 150),
    (9, 6, 250),
    (15, 15, 300),
    (4, 0, 120),
    (9, 9, 180),
    (1, 1, 80),
]
#: Cases per cluster in the second pass (clustered slices plan with n / design effect cases).
CLUSTER = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    from pytest_quantgate.statistics import gate, stats

    def clear() -> None:
        for name in dir(stats):
            cached = getattr(stats, name)
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()
        getattr(stats, "_PEAK_HINT", {}).clear()  # where the last table's tail peaked: a hint

    def slice_of(b: int, c: int, n: int, size: int = 0) -> gate.SliceOutcomes:
        both = n - b - c
        clusters = tuple(f"t{i // size}" for i in range(n)) if size else None
        return gate.SliceOutcomes(
            "s", (True,) * (b + both) + (False,) * c, (False,) * b + (True,) * (both + c), clusters=clusters
        )

    def cpu(work: Callable[[], Any]) -> tuple[float, Any]:
        started = time.process_time()
        out = work()
        return time.process_time() - started, out

    # The first plan of a process pays for imports and first calls: not a row's cost.
    gate.evaluate([slice_of(3, 3, 50)], None, gate.GateSettings())
    print(f"{stats.__file__}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; CPU seconds\n")
    for size in (0, CLUSTER):
        print("independent cases" if not size else f"\nthe same rows in clusters of {size} cases (row order)")
        print("| b, c, n | verdict | mdd | n needed | plan alone (s) |")
        print("|---|---|---:|---:|---:|")
        alone = []
        for b, c, n in ROWS:
            outcomes = slice_of(b, c, n, size)
            clear()
            bare, _ = cpu(lambda: gate.evaluate([outcomes], None, gate.GateSettings(plan=False)))  # noqa: B023
            clear()
            full, rows = cpu(lambda: gate.evaluate([outcomes], None, gate.GateSettings()))  # noqa: B023
            row: gate.SliceResult = rows[0]
            alone.append(full - bare)
            mdd = "–" if row.mdd is None else f"{row.mdd:.3f}"
            print(
                f"| {b}, {c}, {n} | {row.verdict} | {mdd} | {row.n_needed} | {full - bare:.3f} |", flush=True
            )
        print(
            f"\nplan alone: median {statistics.median(alone):.3f} s, "
            f"max {max(alone):.3f} s over {len(ROWS)} rows"
        )
    # One run: three candidates that each leave every slice INCONCLUSIVE, memos kept across rows.
    clear()
    run, _ = cpu(
        lambda: [
            gate.evaluate([slice_of(b + k, c, n) for b, c, n in ROWS], None, gate.GateSettings())
            for k in range(3)
        ]
    )
    clear()
    bare_run, _ = cpu(
        lambda: [
            gate.evaluate([slice_of(b + k, c, n) for b, c, n in ROWS], None, gate.GateSettings(plan=False))
            for k in range(3)
        ]
    )
    print(
        f"one run of 3 candidates × {len(ROWS)} slices: {run:.2f} s with the plan, {bare_run:.2f} s without; "
        f"{(run - bare_run) / (3 * len(ROWS)) * 1000:.0f} ms of plan per row"
    )


if __name__ == "__main__":
    main()
