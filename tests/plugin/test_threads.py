"""``--quant-threads``: validated up front, applied to torch in each process that generates, put back after.

A conftest in each run records, at session finish, what the process's
OpenMP variables and torch's thread count were then. It imports torch first
(when installed), as a suite's conftest may: the thread count must still
apply, through ``torch.set_num_threads``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .fakes import Slice, answers, cases, gate_args, model, suite_source

RECALL = cases("recall", 6)

RECORDER = """
import contextlib
import json
import os
import sys
from pathlib import Path

with contextlib.suppress(ImportError):
    import torch  # noqa: F401  (loaded before the plugin configures, as a suite's conftest may)


def pytest_sessionfinish(session):
    torch = sys.modules.get("torch")
    name = getattr(session.config, "workerinput", {}).get("workerid", "main")
    record = {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.get_num_threads() if torch is not None else None,
    }
    Path(str(session.config.rootpath), f"threads-{name}.json").write_text(json.dumps(record))
"""


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _omp_environ() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A gate on fake models, the recorder, and no OpenMP variable in the environment."""
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    replies = answers(RECALL)
    return gate_args(model(pytester, "ref", replies), model(pytester, "q", replies))


def _records(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    return {p.stem.split("-", 1)[1]: json.loads(p.read_text()) for p in pytester.path.glob("threads-*.json")}


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (["--quant-threads=0"], "--quant-threads must be a positive integer or auto, got '0'"),
        (["--quant-threads", "many"], "--quant-threads must be a positive integer or auto, got 'many'"),
        (["--quant-threads=1.5"], "--quant-threads must be a positive integer or auto, got '1.5'"),
        ([], "quant_threads must be a positive integer or auto, got '-2'"),  # from the ini file
    ],
)
def test_a_bad_value_is_a_one_line_usage_error(
    pytester: pytest.Pytester, suite: list[str], args: list[str], bad: str
) -> None:
    pytester.makeini("[pytest]\nquant_threads = -2\n" if not args else "[pytest]\n")
    result = pytester.runpytest(*suite, *args, "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == [f"ERROR: quantgate: {bad}"]
    assert _records(pytester) == {}  # stopped before any test ran


@pytest.mark.parametrize(
    ("environ", "ini", "args", "threads", "source"),
    [
        ({}, "", [], 1, "auto"),
        ({"OMP_NUM_THREADS": "2"}, "", [], 2, "OMP_NUM_THREADS"),  # the user's variable wins over auto
        ({"OMP_NUM_THREADS": "2"}, "", ["--quant-threads=3"], 3, "--quant-threads"),  # the flag over it
        ({}, "quant_threads = 2", [], 2, "--quant-threads"),
        ({}, "quant_threads = 2", ["--quant-threads=auto"], 1, "auto"),
    ],
)
def test_threads_are_applied_and_put_back(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    suite: list[str],
    environ: dict[str, str],
    ini: str,
    args: list[str],
    threads: int,
    source: str,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    pytester.makeini(f"[pytest]\n{ini}\n")
    before = (_omp_environ(), _torch_threads())
    result = pytester.runpytest(*suite, *args, "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"quantgate: torch threads {threads} ({source}), OMP_WAIT_POLICY=PASSIVE"])
    record = _records(pytester)["main"]
    assert record["OMP_NUM_THREADS"] == str(threads)
    assert record["OMP_WAIT_POLICY"] == "PASSIVE"
    assert record["torch"] in (None, threads)  # None: torch is not installed
    # This process (pytester runs pytest in it) has its variables and torch's threads back.
    assert (_omp_environ(), _torch_threads()) == before


def test_a_wait_policy_the_user_set_is_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, suite: list[str]
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    result = pytester.runpytest(*suite, "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"quantgate: torch threads {1} (auto)"])
    assert _records(pytester)["main"]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_without_a_reference_nothing_is_set(pytester: pytest.Pytester, suite: list[str]) -> None:
    result = pytester.runpytest("-p", "no:xdist")  # quant cases skip: no model loads
    assert result.ret == 0, result.stdout.str()
    assert _records(pytester)["main"]["OMP_NUM_THREADS"] is None
    assert "torch threads" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "threads"),
    [([], max(1, _cpus() // 2)), (["--quant-threads=3"], 3)],
)
def test_each_xdist_worker_gets_its_threads(
    pytester: pytest.Pytester, suite: list[str], args: list[str], threads: int
) -> None:
    pytest.importorskip("xdist")
    result = pytester.runpytest(*suite, *args, "-n", "2", "--quant-device=cpu")
    assert result.ret == 0, result.stdout.str()
    records = _records(pytester)
    assert sorted(records) == ["gw0", "gw1", "main"]
    for worker in ("gw0", "gw1"):
        assert records[worker]["OMP_NUM_THREADS"] == str(threads)
        assert records[worker]["OMP_WAIT_POLICY"] == "PASSIVE"  # inherited from the controller
        assert records[worker]["torch"] in (None, threads)
    noun = "thread" if threads == 1 else "threads"
    result.stdout.fnmatch_lines([f"quantgate: workers gw0-gw1 -> cpu ({threads} torch {noun} each)"])


def test_the_report_records_the_setting(pytester: pytest.Pytester, suite: list[str]) -> None:
    report = Path(pytester.path, "gate.json")
    result = pytester.runpytest(*suite, "--quant-threads=2", f"--quant-report={report}", "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str()
    assert json.loads(report.read_text())["config"]["threads"] == 2
