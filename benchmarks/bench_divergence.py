"""What ``--quant-divergence`` costs beside generation (run by hand, never a timed test).

Runs an example suite's gate in fresh processes, alternating without and
with ``--quant-divergence`` (``--quant-cache=off``: every run generates and
scores), and reports two figures:

* the whole run's wall time with divergence over without (medians);
* inside the runs with divergence, per model, the seconds spent scoring
  (``score_seconds``: teacher-forced forward passes over the reference's
  replies) over the seconds spent generating (``generate_seconds``), read
  from the JSON report: what divergence adds to the model work itself,
  free of pytest's start-up.

    OMP_NUM_THREADS=1 python benchmarks/bench_divergence.py [--suite example_suites/tiny] [--repeat 3]
    OMP_NUM_THREADS=1 CHAT_SUITE_CASES=20 python benchmarks/bench_divergence.py --suite example_suites/chat
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(suite: str, divergence: bool, report: Path) -> float:
    args = [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:xdist", "--quant-cache=off"]
    args += [f"--quant-report={report}"] + (["--quant-divergence"] if divergence else [])
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1) or not report.exists():
        sys.exit(f"the run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="example_suites/tiny")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    walls: dict[bool, list[float]] = {False: [], True: []}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.repeat):
            for divergence in (False, True) if i % 2 == 0 else (True, False):
                report = Path(tmp) / f"r{i}-{int(divergence)}.json"
                walls[divergence].append(run(opts.suite, divergence, report))
                if divergence:
                    for label, facts in json.loads(report.read_text())["models"].items():
                        if facts.get("generate_seconds"):
                            share = facts.get("score_seconds", 0.0) / facts["generate_seconds"]
                            ratios.setdefault(label, []).append(share)
                print(f"round {i + 1}: divergence={divergence}: {walls[divergence][-1]:.2f} s", flush=True)
    load = os.getloadavg()[0]
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"\n{opts.suite}, {opts.repeat} runs each, load average {load:.2f} at the end")
    print(f"whole run: without {off:.2f} s, with {on:.2f} s: ratio {on / off:.2f}")
    print(f"  without: {', '.join(f'{x:.2f}' for x in walls[False])}")
    print(f"  with:    {', '.join(f'{x:.2f}' for x in walls[True])}")
    for label, values in ratios.items():
        print(
            f"{label}: scoring / generating = {statistics.median(values):.2f} (runs: "
            f"{', '.join(f'{x:.2f}' for x in values)})"
        )


if __name__ == "__main__":
    main()
