"""Cases per second through ``transformers serve`` at several concurrencies, against the local backend.

The example gate's cases (every slice, ``--cases`` of them, single prompts with
their own ``max_new_tokens`` and stop) are run by the plugin's runner
(:func:`pytest_quantgate.core.runner.run_cases`) on the shipped tiny reference
three ways in each round:

* ``local``: the transformers backend in this process (batch 32, one torch thread);
* ``served cN``: an ``openai:`` spec with ``concurrency=N`` for each N of
  ``--concurrency``, through one ``transformers serve`` on 127.0.0.1 (its own
  process, one torch thread, started once and warmed up; batch 64, the
  served backend's automatic size, so that N requests can be in flight).

Only generation is timed (models loaded before the clock starts). Rounds rotate
the order of the sides; the 1-minute load average is recorded at each round.
Each served side's outputs are compared case by case with the local ones.

    python benchmarks/bench_served.py [--repeat 5] [--cases 120] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
# The server starter the tests use (it starts, waits for and always stops the server).
sys.path.insert(0, str(REPO / "tests"))

from served_proxy import transformers_serve  # noqa: E402

from pytest_quantgate.backends.base import Backend  # noqa: E402
from pytest_quantgate.backends.registry import load_backend  # noqa: E402
from pytest_quantgate.core.cases import CaseSpec  # noqa: E402
from pytest_quantgate.core.identity import case_key  # noqa: E402
from pytest_quantgate.core.runner import run_cases  # noqa: E402
from pytest_quantgate.values.prompts import GenerationSettings  # noqa: E402
from pytest_quantgate.values.specs import parse_spec  # noqa: E402

TINY = REPO / "models" / "tiny-ref"
DATA = REPO / "example_suites" / "tiny" / "data"
#: The example suite's settings per slice (example_suites/tiny/test_tiny_tasks.py).
SLICES = {"recall": 4, "retention": 4, "arith": 5, "format": 44}


def cases(limit: int) -> list[CaseSpec]:
    """``limit`` cases, taken in turn from each slice of the example data."""
    per_slice: list[list[CaseSpec]] = []
    for name, budget in SLICES.items():
        settings = GenerationSettings(budget, ("\n",))
        rows = [json.loads(x) for x in (DATA / f"{name}.jsonl").read_text().splitlines() if x.strip()]
        per_slice.append(
            [
                CaseSpec(
                    key=case_key(f"bench::{name}", {"id": r["id"]}, r["prompt"], settings),
                    nodeid=f"bench::{name}[{r['id']}]",
                    prompt=r["prompt"],
                    settings=settings,
                )
                for r in rows
            ]
        )
    mixed = [c for group in zip(*per_slice, strict=False) for c in group]
    return mixed[:limit]


def timed(backend: Backend, todo: list[CaseSpec], batch: int) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    runs = run_cases(backend, todo, batch_size=batch)
    seconds = time.perf_counter() - started
    bad = [k for k, r in runs.items() if r.error]
    if bad:
        raise SystemExit(f"{len(bad)} cases failed, e.g. {runs[bad[0]].error}")
    return seconds, {k: r.turns[-1].reply for k, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--log", type=Path, default=Path("/tmp/bench_served_serve.log"))
    args = parser.parse_args()
    todo = cases(args.cases)
    local = load_backend(parse_spec(str(TINY)), device="cpu", dtype="float32")
    seconds: dict[str, list[float]] = {}
    loads: list[float] = []
    with transformers_serve(args.log) as url:
        served = {
            f"served c{n}": load_backend(
                parse_spec(f"c{n}=openai:{url}?model={TINY}&concurrency={n}"), device="cpu", dtype="auto"
            )
            for n in args.concurrency
        }
        sides: dict[str, tuple[Backend, int]] = {
            "local": (local, 32),
            **{k: (b, 64) for k, b in served.items()},
        }
        want: dict[str, str] | None = None
        for backend, batch in sides.values():  # warm-up: every side once, untimed
            timed(backend, todo, batch)
        mismatches: dict[str, int] = {}
        for round_no in range(args.repeat):
            loads.append(os.getloadavg()[0])
            order = list(sides)[round_no % len(sides) :] + list(sides)[: round_no % len(sides)]
            for name in order:
                backend, batch = sides[name]
                took, replies = timed(backend, todo, batch)
                seconds.setdefault(name, []).append(took)
                if name == "local":
                    want = replies
                elif want is not None:
                    mismatches[name] = sum(replies[k] != want[k] for k in want)
        for backend in served.values():
            backend.close()
    local.close()
    base = statistics.median(seconds["local"])
    print(f"{len(todo)} cases, {args.repeat} rounds, load average {min(loads):.1f}-{max(loads):.1f}")
    print("| side | median s | cases/s | cases/s ÷ local | outputs ≠ local |")
    print("|---|---:|---:|---:|---:|")
    for name, values in seconds.items():
        median = statistics.median(values)
        rate = len(todo) / median
        differ: Any = "-" if name == "local" else mismatches.get(name, "?")
        print(f"| {name} | {median:.2f} | {rate:.1f} | {base / median:.2f} | {differ} |")


if __name__ == "__main__":
    main()
