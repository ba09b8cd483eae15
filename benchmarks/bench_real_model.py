"""The real model three ways: the plugin, a plain batched script, lm-evaluation-harness (run by hand).

The chat suite's single-turn cases (``extract`` and ``lookup``, 80 each;
``real_model_cases.py``) on SmolLM2-135M-Instruct's float32 checkpoint,
reference only, CPU, each side in a fresh process timed from start to exit:

* ``plugin``: ``pytest example_suites/chat -k 'test_ticket_number_copied or
  test_city_looked_up' -o quant_candidate= --quant-cache=off`` (every case
  generated, no candidate), its outputs read from the JSON report;
* ``plain``: ``real_model_plain.py``, the same generation written out with
  transformers alone (same batches, greedy settings, max_new_tokens, stops);
* ``lm-eval``: ``real_model_lmeval.py``, ``HFLM.generate_until`` on the same
  chat-templated prompts with the same ``until``, ``max_gen_toks`` and batch
  size, run by the Python of a separate virtualenv (``--lmeval-python``).

Every process gets ``OMP_NUM_THREADS=1`` (one torch thread each) and
``HF_HUB_OFFLINE=1``. Rounds run the three in turn, the order rotated each
round, so that drift in the machine's load spreads over all three; the
1-minute load average is recorded before and after each run, and the run's
CPU time (user + system, ``getrusage`` of the child): on a shared machine the
wall-clock time says how long one waited, the CPU time what work was done.
The figures are the median wall-clock and CPU times of each side and the
medians of the per-round ratios plugin ÷ plain and plugin ÷ lm-eval (runs of
one round are minutes apart at most). Outputs are compared string for string, case by case, and
each side's per-slice accuracy (``checks.contains``) is given.

    python benchmarks/bench_real_model.py [--repeat 3] [--cases N] [--lmeval-python PATH] [--out DIR]

Needs ``python tools/fetch_real_model.py`` first, and lm-evaluation-harness in
its own virtualenv (BENCHMARKS.md says how it was made).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import real_model_cases as rmc

HERE = Path(__file__).resolve().parent
SIDES = ("plugin", "plain", "lm-eval")
#: No single run may take longer.
RUN_TIMEOUT = 900.0
#: The data id in a case's node id: test_chat.py::test_city_looked_up[lookup-1cf6505812b6].
NODE_ID = re.compile(r"\[([^\]]+)\]$")


@dataclass
class Run:
    """One side's run: wall-clock seconds, CPU seconds, load averages around it, what it reported."""

    side: str
    round: int
    seconds: float
    #: User + system CPU time of the process (and its children): the work done, whatever the load.
    cpu_seconds: float
    load_before: float
    load_after: float
    facts: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def command(side: str, out: Path, cases: int | None, lmeval_python: str) -> list[str]:
    """The command line of one side's run, writing its outputs to ``out``."""
    limit = [] if cases is None else [f"--cases={cases}"]
    if side == "plugin":
        return [
            sys.executable,
            "-m",
            "pytest",
            "example_suites/chat",
            "-q",
            "-p",
            "no:randomly",
            "-k",
            "test_ticket_number_copied or test_city_looked_up",
            "-o",
            "quant_candidate=",
            "--quant-cache=off",
            f"--quant-report={out}",
        ]
    if side == "plain":
        return [sys.executable, str(HERE / "real_model_plain.py"), str(out), *limit]
    return [lmeval_python, str(HERE / "real_model_lmeval.py"), str(out), *limit]


def plugin_outputs(report: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Case id -> the reference's output, and the reference's facts, from the plugin's JSON report."""
    (label,) = report["models"]
    outputs = {}
    for case in report["cases"]:
        match = NODE_ID.search(case["nodeid"])
        if match is None:
            raise ValueError(f"no case id in {case['nodeid']!r}")
        outputs[match.group(1)] = case["outcomes"][label]["output"]
    facts = report["models"][label]
    kept = ("torch", "transformers", "load_seconds", "generate_seconds", "batch_size")
    return outputs, {"side": "plugin", **{k: facts.get(k) for k in kept}}


def run_side(side: str, round_no: int, workdir: Path, cases: int | None, lmeval_python: str) -> Run:
    """Run one side in a fresh process; its wall-clock time from start to exit, and its outputs."""
    out = workdir / f"{side}-{round_no}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    if cases is not None:
        env["CHAT_SUITE_CASES"] = str(cases)
    argv = command(side, out, cases, lmeval_python)
    before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=rmc.REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime
    after = os.getloadavg()[0]
    # pytest exits 1 when a reference case fails (a plain run's failures are failed tests).
    if done.returncode not in (0, 1) or not out.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise SystemExit(
            f"{side} failed (exit status {done.returncode}): {' '.join(argv)}\n" + "\n".join(tail)
        )
    data = json.loads(out.read_text())
    if side == "plugin":
        outputs, facts = plugin_outputs(data)
    else:
        outputs, facts = data["outputs"], data["facts"]
    return Run(side, round_no, seconds, cpu, before, after, facts, outputs)


def compare(cases: Sequence[rmc.Case], a: dict[str, str], b: dict[str, str]) -> list[rmc.Case]:
    """The cases whose outputs differ between two sides (a case missing from one side differs)."""
    return [c for c in cases if a.get(c.id) != b.get(c.id)]


def accuracy(cases: Sequence[rmc.Case], outputs: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Slice -> (cases passed, cases) under ``checks.contains``."""
    out: dict[str, tuple[int, int]] = {}
    for case in cases:
        passed, n = out.get(case.slice, (0, 0))
        out[case.slice] = (passed + rmc.passes(case, outputs.get(case.id, "")), n + 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three sides (default 3)")
    parser.add_argument(
        "--cases", type=int, default=None, help="the first N cases of each slice (default all)"
    )
    parser.add_argument(
        "--lmeval-python",
        default=str(rmc.REPO / ".venv-lmeval" / "bin" / "python"),
        help="the Python of the virtualenv lm-evaluation-harness is installed in (default .venv-lmeval)",
    )
    parser.add_argument(
        "--out", type=Path, default=rmc.REPO / "out" / "bench-real-model", help="results here"
    )
    args = parser.parse_args(argv)
    if not (rmc.MODEL / "FETCHED.json").is_file():
        parser.error(f"the model is missing ({rmc.MODEL}): run `python tools/fetch_real_model.py` first")
    if not Path(args.lmeval_python).is_file():
        parser.error(
            f"no Python at {args.lmeval_python}: make lm-eval's virtualenv (BENCHMARKS.md) or name it"
        )
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = rmc.load_cases(args.cases)

    runs: list[Run] = []
    for round_no in range(args.repeat):
        order = SIDES[round_no % 3 :] + SIDES[: round_no % 3]
        for side in order:
            run = run_side(side, round_no, args.out, args.cases, args.lmeval_python)
            runs.append(run)
            print(
                f"round {round_no + 1} {side:8s} {run.seconds:7.1f} s  CPU {run.cpu_seconds:6.1f} s  "
                f"load {run.load_before:.2f} -> "
                f"{run.load_after:.2f}  (load {run.facts.get('load_seconds')} s, "
                f"generate {run.facts.get('generate_seconds')} s)",
                flush=True,
            )

    by_side = {s: [r for r in runs if r.side == s] for s in SIDES}
    # The outputs must not change from one round to the next (greedy, same batches).
    for side, side_runs in by_side.items():
        for run in side_runs[1:]:
            changed = compare(cases, side_runs[0].outputs, run.outputs)
            if changed:
                print(f"warning: {side}'s outputs changed in round {run.round + 1} on {len(changed)} case(s)")
    outputs = {s: by_side[s][0].outputs for s in SIDES}
    for side in SIDES:
        missing = [c.id for c in cases if c.id not in outputs[side]]
        if missing:
            print(f"warning: {side} has no output for {len(missing)} case(s), e.g. {missing[0]}")

    print(f"\n{len(cases)} cases ({', '.join(rmc.SLICES)}), {args.repeat} rounds, OMP_NUM_THREADS=1")
    print("\n| side | median s | runs (s) | median CPU s | CPU (s) | load averages (before→after) |")
    print("|---|---:|---|---:|---|---|")
    medians = {}
    cpu_medians = {}
    for side in SIDES:
        times = [r.seconds for r in by_side[side]]
        cpus = [r.cpu_seconds for r in by_side[side]]
        medians[side] = statistics.median(times)
        cpu_medians[side] = statistics.median(cpus)
        loads = ", ".join(f"{r.load_before:.2f}→{r.load_after:.2f}" for r in by_side[side])
        print(
            f"| {side} | {medians[side]:.1f} | {', '.join(f'{t:.1f}' for t in times)} | "
            f"{cpu_medians[side]:.1f} | {', '.join(f'{t:.1f}' for t in cpus)} | {loads} |"
        )
    ratios = {}
    cpu_ratios = {}
    for other in ("plain", "lm-eval"):
        pairs = list(zip(by_side["plugin"], by_side[other], strict=True))
        per_round = ratios[other] = [p.seconds / o.seconds for p, o in pairs]
        cpu_round = cpu_ratios[other] = [p.cpu_seconds / o.cpu_seconds for p, o in pairs]
        print(
            f"\nplugin ÷ {other}: median of per-round ratios {statistics.median(per_round):.2f} "
            f"({', '.join(f'{x:.2f}' for x in per_round)}); ratio of medians "
            f"{medians['plugin'] / medians[other]:.2f}; CPU time: median of per-round ratios "
            f"{statistics.median(cpu_round):.2f} ({', '.join(f'{x:.2f}' for x in cpu_round)})"
        )

    print("\n| slice | " + " | ".join(SIDES) + " |")
    print("|---|" + "---:|" * len(SIDES))
    accuracies = {s: accuracy(cases, outputs[s]) for s in SIDES}
    for name in rmc.SLICES:
        cells = []
        for side in SIDES:
            passed, n = accuracies[side][name]
            cells.append(f"{100 * passed / n:.1f} % ({passed}/{n})")
        print(f"| {name} | " + " | ".join(cells) + " |")

    differences = {}
    for other in ("plain", "lm-eval"):
        differ = compare(cases, outputs["plugin"], outputs[other])
        differences[other] = [
            {"id": c.id, "plugin": outputs["plugin"].get(c.id), other: outputs[other].get(c.id)}
            for c in differ
        ]
        print(f"\nplugin vs {other}: {len(differ)} of {len(cases)} outputs differ")
        for row in differences[other]:
            print(f"  {row['id']}: plugin {row['plugin']!r}  {other} {row[other]!r}")

    result = {
        "cases": len(cases),
        "repeat": args.repeat,
        "runs": [
            {k: v for k, v in r.__dict__.items() if k != "outputs"}
            | {"outputs_file": f"{r.side}-{r.round}.json"}
            for r in runs
        ],
        "medians": medians,
        "cpu_medians": cpu_medians,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "accuracy": accuracies,
        "differences": differences,
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    print(f"\nresults: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
