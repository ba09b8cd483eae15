"""CPU thread policies for the example gate, quiet and with a core busy (run by hand, never a timed test).

Each run is ``pytest example_suites/tiny -p no:cacheprovider --quant-cache=off -q``
(every run generates: no reference cache) in a fresh process, timed from start
to exit, under one *setting* (torch's threads and OpenMP's wait policy, given
through the environment or a plugin flag) and one *condition*:

* ``quiet``: nothing else started by this script;
* ``busy``: a child process spinning on one core (a pure-Python busy loop,
  bounded in time, killed after the run and on any error), as on a shared
  CI runner where another job holds a core;
* ``busy2`` (``--conditions``): two such children, every core of a 2-core
  machine taken by another job.

Rounds alternate settings and conditions so that drift in the machine's load
spreads over every cell; a cell's figure is the median of its runs. Each run
also records the 1-minute load average at its end and the CPU time that
*other* processes used during it (the machine's busy time from
``/proc/stat`` minus this run's pytest and busy loop), in cores: the noise
that the condition did not put there.

    python benchmarks/bench_threads.py [--repeat 3] [--max-repeat 5] [--budget 840]
                                       [--settings NAME ...] [--conditions quiet busy busy2]
    python benchmarks/bench_threads.py --big 16 --settings flag-1-thread flag-2-threads

``--big N`` gates N prompts on a random-init model of ~100 M parameters
instead (``bench_run.py``'s), where generation, not start-up, is the work:
what one thread costs against two when a model is large enough to use them.

``--repeat`` rounds always run; further rounds, up to ``--max-repeat``, start
only while the mean round so far fits in what is left of ``--budget``
seconds. ``plugin-default`` strips every OpenMP variable and passes no flag:
what a user who never heard of OpenMP gets.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import bench_run  # the sibling script: its ~100 M-parameter model and prompts (--big)

REPO = Path(__file__).resolve().parents[1]
SUITE = "example_suites/tiny"
#: The variables a setting controls; removed from the environment before each run.
OPENMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
#: No single run may take longer (the contended default took 52 s in the issue).
RUN_TIMEOUT = 240.0
#: The busy loop ends by itself after this long even if nothing kills it.
BUSY_LIMIT = RUN_TIMEOUT + 30.0
BUSY_LOOP = f"import time\nend = time.monotonic() + {BUSY_LIMIT}\nwhile time.monotonic() < end:\n    pass\n"


@dataclass(frozen=True)
class Setting:
    """One way to run the gate: environment variables and plugin flags."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()


SETTINGS = {
    s.name: s
    for s in (
        Setting("torch-default"),
        Setting("1-thread", {"OMP_NUM_THREADS": "1"}),
        Setting("default+passive", {"OMP_WAIT_POLICY": "PASSIVE"}),
        Setting("1-thread+passive", {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
        # What the plugin does by itself (after the thread policy landed): no variable, no flag.
        Setting("plugin-default"),
        # The plugin's flag, for a torch-default comparison once the plugin sets threads itself.
        Setting("flag-2-threads", flags=("--quant-threads=2",)),
        Setting("flag-1-thread", flags=("--quant-threads=1",)),
    )
}
DEFAULT_SETTINGS = ("torch-default", "1-thread", "default+passive", "1-thread+passive")
#: Condition -> how many busy-loop children run beside the gate.
CONDITIONS = {"quiet": 0, "busy": 1, "busy2": 2}
#: A run is "clean" when other processes used at most this many cores during it on average.
CLEAN = 0.25


@dataclass
class Run:
    seconds: float
    load: float  # 1-minute load average at the end of the run
    others: float  # cores used by processes other than this run's, on average


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (Linux ``/proc/stat``), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU seconds of every child this process has waited for (the runs and busy loops)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` busy-loop children for the duration of the block.

    Each ends by itself after :data:`BUSY_LIMIT` seconds, and is killed and
    waited for on the way out of the block, whatever happened inside it.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_once(setting: Setting, busy: int, report: Path, target: list[str], cwd: Path) -> Run:
    """One gate run of ``target`` (pytest arguments) under ``setting``, beside ``busy`` busy loops."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS and k != "CI"}
    env.update(setting.env)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    command = [
        sys.executable,
        "-m",
        "pytest",
        *target,
        "-p",
        "no:cacheprovider",
        "--quant-cache=off",
        "-q",
        f"--quant-report={report}",  # not the suite's out/tiny-gate.json
        *setting.flags,
    ]
    machine_before, ours_before = _cpu_busy_seconds(), _children_cpu_seconds()
    window_start = time.perf_counter()
    with busy_cores(busy):
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{setting.name}: over {RUN_TIMEOUT:.0f} s, stopped") from None
        finally:
            if proc.poll() is None:  # timed out, or this script was stopped: the run goes too
                proc.kill()
                proc.communicate()
        elapsed = time.perf_counter() - started
    window = time.perf_counter() - window_start
    machine_after, ours_after = _cpu_busy_seconds(), _children_cpu_seconds()
    if proc.returncode not in (0, 1):  # 1: the gate fails the damaged candidate, on purpose
        raise SystemExit(f"{setting.name}: exited {proc.returncode}:\n{out.decode()[-3000:]}")
    others = float("nan")
    if machine_before is not None and machine_after is not None:
        # The machine's busy time over the window, less what this run and its busy loop used.
        theirs = (machine_after - machine_before) - (ours_after - ours_before)
        others = max(0.0, theirs / window)
    return Run(elapsed, os.getloadavg()[0], others)


def big_suite(work: Path, cases: int) -> list[str]:
    """pytest arguments of a gate where generation dominates: ``cases`` prompts on a ~100 M model.

    The model (random-init, float32) and prompts are ``bench_run``'s; the candidate is ``rtn4g32``.
    """
    big = work / "big"
    bench_run.make_big_model(big)
    prompts = work / "prompts.jsonl"
    bench_run.make_prompts(prompts, cases)
    fill = {"prompts": str(prompts), "tokens": bench_run.MAX_NEW_TOKENS}
    (work / "test_big.py").write_text(bench_run.SUITE.format(**fill))
    return [
        "test_big.py",
        f"--quant-reference=ref={big}",
        f"--quant-candidate=q={bench_run.CANDIDATE}:{big}",
        "--quant-device=cpu",
    ]


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that every ``finally`` (the busy loop's kill) runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def table(results: Mapping[tuple[str, str], list[Run]], names: list[str], conditions: list[str]) -> list[str]:
    """The Markdown tables: median seconds per setting and condition with the runs; then load and noise."""
    head = "| setting | " + " | ".join(f"{c}: median s | {c}: runs (s)" for c in conditions) + " |"
    lines = [head, "|---|" + "---:|---|" * len(conditions)]
    for name in names:
        cells: list[str] = []
        for condition in conditions:
            runs = results.get((name, condition), [])
            med = f"{statistics.median(r.seconds for r in runs):.1f}" if runs else "–"
            cells += [med, ", ".join(f"{r.seconds:.1f}" for r in runs) or "–"]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "| setting | condition | load avg at end (median) | other processes, cores (median, max) "
        f"| median of runs with others ≤ {CLEAN} cores (runs) |",
        "|---|---|---:|---:|---:|",
    ]
    for name in names:
        for condition in conditions:
            runs = results.get((name, condition), [])
            if runs:
                loads = statistics.median(r.load for r in runs)
                others = [r.others for r in runs]
                clean = [r.seconds for r in runs if r.others <= CLEAN]
                clean_text = f"{statistics.median(clean):.1f} ({len(clean)})" if clean else "– (0)"
                lines.append(
                    f"| {name} | {condition} | {loads:.2f} | "
                    f"{statistics.median(others):.2f}, {max(others):.2f} | {clean_text} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds (runs per cell), at least")
    parser.add_argument("--max-repeat", type=int, default=0, help="rounds at most (0: --repeat)")
    parser.add_argument("--budget", type=float, default=840.0, help="seconds of wall time for all rounds")
    parser.add_argument(
        "--big", type=int, default=0, help="N prompts on a ~100 M-parameter model instead of the example gate"
    )
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=sorted(SETTINGS))
    parser.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=list(CONDITIONS))
    args = parser.parse_args()
    _stop_on_sigterm()
    names: list[str] = args.settings
    conditions: list[str] = args.conditions
    most = max(args.repeat, args.max_repeat)
    what = SUITE if not args.big else f"{args.big} prompts, ~100 M-parameter model + {bench_run.CANDIDATE}"
    print(
        f"{what}: {', '.join(names)} × {', '.join(conditions)}; "
        f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
        flush=True,
    )
    results: dict[tuple[str, str], list[Run]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "gate.json"
        target, cwd = ([SUITE], REPO) if not args.big else (big_suite(Path(tmp), args.big), Path(tmp))
        for k in range(most):
            spent = time.monotonic() - started
            if k >= args.repeat and k and spent / k > args.budget - spent:
                break
            # Alternate the order each round: neither condition always follows the other.
            order = [(n, c) for n in names for c in conditions]
            for name, condition in order if k % 2 == 0 else order[::-1]:
                r = run_once(SETTINGS[name], CONDITIONS[condition], report, target, cwd)
                results.setdefault((name, condition), []).append(r)
                print(
                    f"round {k + 1}: {name:18} {condition:5} {r.seconds:6.1f} s  "
                    f"load {r.load:4.2f}  others {r.others:4.2f} cores",
                    flush=True,
                )
    print(f"\n{time.monotonic() - started:.0f} s in all\n")
    print("\n".join(table(results, names, conditions)))


if __name__ == "__main__":
    main()
