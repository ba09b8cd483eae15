"""Sharding under pytest-xdist: each case generated once per model across all workers.

Scripted ``fake:`` models log every prompt they generate (one shared log for
all workers), so "each case once" is counted, not assumed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from .fakes import (
    Slice,
    answers,
    cases,
    events,
    gate_args,
    generated,
    model,
    prompts,
    read_report,
    suite_source,
)

pytest.importorskip("xdist")

ARITH = cases("arith", 30)
RECALL = cases("recall", 12)


@pytest.mark.parametrize("workers", [2, 3])
def test_each_worker_generates_only_its_shard(pytester: pytest.Pytester, workers: int) -> None:
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL, max_new_tokens=4))
    )
    replies = {**answers(ARITH), **answers(RECALL)}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        "-n",
        str(workers),
        f"--quant-report={report}",
    )
    assert result.ret == 0, result.stdout.str()
    # Every case once per model, across all workers together.
    assert generated(pytester) == {"ref": prompts(ARITH, RECALL), "q": prompts(ARITH, RECALL)}
    models = read_report(report)["models"]
    assert models["ref"]["generated_cases"] == models["q"]["generated_cases"] == len(ARITH) + len(RECALL)
    # Each worker loaded each model once: as many loads as workers.
    loads = Counter(label for label, event, _ in events(pytester) if event == "load")
    assert loads == {"ref": workers, "q": workers}


def test_another_dist_mode_keeps_its_scheduling(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    replies = answers(ARITH)
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        "-n",
        "2",
        "--dist",
        "loadfile",
    )
    assert result.ret == 0
    # One file, one worker: loadfile sends it whole to one worker, which generates it.
    assert generated(pytester) == {"ref": prompts(ARITH), "q": prompts(ARITH)}


KILLER = """
import os, signal
import pytest
from pytest_quantgate import quant_case, quant_slice

CASES = [(f"arith {i}: {i}+1=", str(i + 1)) for i in range(12)]


@quant_slice("arith")
@quant_case("prompt, expected", CASES, max_new_tokens=4)
def test_arith(prompt, expected, output):
    if prompt.startswith("arith 5:") and os.environ.get("PYTEST_XDIST_WORKER"):
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of its shard
    assert output == expected
"""


def test_a_worker_that_dies_fails_the_run_and_names_the_lost_case(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_killer=KILLER)
    replies = {f"arith {i}: {i}+1=": str(i + 1) for i in range(12)}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        "-n",
        "2",
        "--max-worker-restart=0",  # no replacement worker: the crash alone is what is tested
        f"--quant-report={report}",
    )
    assert result.ret != 0
    out = result.stdout.str()
    assert "test_killer.py::test_arith[arith 5: 5+1=-6]" in out
    result.stdout.fnmatch_lines(["*1 quant case(s) lost: an xdist worker crashed while running them*"])
    data = read_report(report)
    (candidate,) = data["candidates"]
    assert candidate["evaluated"] is False and candidate["slices"] == []
    assert candidate["lost"] == ["test_killer.py::test_arith[arith 5: 5+1=-6]"]
    assert data["complete"] is False


def test_workers_get_their_devices_from_the_controller(pytester: pytest.Pytester) -> None:
    items = cases("arith", 4)
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", items)) + "\n\nimport os, pathlib\n\ndef test_threads():\n"
        "    pathlib.Path('threads.txt').write_text(os.environ.get('OMP_NUM_THREADS', ''))\n"
    )
    report = pytester.path / "gate.json"
    replies = answers(items)
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        "-n",
        "2",
        f"--quant-report={report}",
    )
    assert result.ret == 0
    workers = read_report(report)["config"]["workers"]
    assert sorted(workers) == ["gw0", "gw1"]
    assert {w["devices"][0] for w in workers.values()} == {"cpu"}
    threads = workers["gw0"]["threads"]
    assert (pytester.path / "threads.txt").read_text() == str(threads)  # what the worker set for torch
    result.stdout.fnmatch_lines([f"quantgate: workers gw0-gw1 -> cpu ({threads} torch thread*each)"])


def test_gpus_per_worker_without_a_gpu_is_a_usage_error(pytester: pytest.Pytester, tiny_ref: object) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", cases("arith", 2))))
    result = pytester.runpytest(f"--quant-reference={tiny_ref}", "-n", "2", "--quant-gpus-per-worker=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: quantgate: --quant-gpus-per-worker 2 needs GPUs*"])
