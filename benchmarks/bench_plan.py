"""Time the plan of INCONCLUSIVE rows: the detectable drop and the cases a verdict needs.

Each row is gated with ``GateSettings(plan=True)`` (detectable_drop and
cases_needed, exact power) and without the plan; the difference is the
plan's cost. Two ways: every row with the memos cleared first (the cost of a
row on its own), and all rows in one process, memos kept (a run with many
INCONCLUSIVE slices and candidates). The rows on their own are timed twice:
with independent cases and in clusters of CLUSTER cases. Then detectable_drop
and cases_needed alone at SETTINGS random settings (seeded: the same in every
run), memos cleared before each. Prints CPU seconds (the machine is shared:
wall time would measure the other jobs too), medians, the load average and
the numbers each row reports, so that runs of two versions can be compared
number for number.

    python benchmarks/bench_plan.py [--root PATH]   # PATH: the tree whose pytest_quantgate to time
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import statistics
import sys
import time
import types
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
#: Random settings of the third pass.
SETTINGS = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    from pytest_quantgate.statistics import gate, stats

    # The plan has its own module since the batched boundaries; before, it was in stats.
    try:
        plan: types.ModuleType = importlib.import_module("pytest_quantgate.statistics.power")
    except ImportError:
        plan = stats

    def clear() -> None:
        for module in {stats, plan}:
            for name in dir(module):
                cached = getattr(module, name)
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
    # Settings a gate meets: slice sizes, discordance, margins, Holm-corrected levels, true drops.
    rng = random.Random(11)
    print(f"\n{SETTINGS} random settings: detectable_drop and cases_needed alone, memos cleared before each")
    print("| n, ψ, margin, α, drop | mdd | n needed | plan (s) |")
    print("|---|---:|---:|---:|")
    times = []
    for _ in range(SETTINGS):
        n = rng.choice([20, 40, 80, 120, 200, 340, 500, 900, 1500])
        psi = rng.choice([0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
        margin = rng.choice([0.01, 0.02, 0.05])
        alpha = rng.choice([0.05, 0.0125, 0.05 / 7])
        drop = rng.choice([0.0, 0.0, margin / 2, margin * 1.5, margin * 3])
        clear()
        took, (mdd, needed) = cpu(
            lambda: (
                plan.detectable_drop(n, psi, margin, alpha, 0.8),  # noqa: B023
                plan.cases_needed(drop, max(psi, 0.01), margin, alpha, 0.8, at_least=n + 1),  # noqa: B023
            )
        )
        times.append(took)
        setting = f"{n}, {psi}, {margin}, {alpha:.4g}, {drop:.4g}"
        print(f"| {setting} | {mdd:.3f} | {needed} | {took:.3f} |", flush=True)
    print(
        f"\nrandom settings: median {statistics.median(times):.3f} s, max {max(times):.3f} s, "
        f"total {sum(times):.2f} s over {SETTINGS}"
    )


if __name__ == "__main__":
    main()
