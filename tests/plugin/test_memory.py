"""One model in memory at a time, --quant-keep-loaded, and out-of-memory back-off.

Scripted ``fake:`` models log every load, close and batch, so the order of
phases and the number of resident models can be read back exactly.
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
    statuses,
    suite_source,
)

ARITH = cases("arith", 40)


def _resident(log: list[tuple[str, str, int | None]]) -> int:
    """The most models loaded at once over the run."""
    now = peak = 0
    for _, event, _ in log:
        now += {"load": 1, "close": -1}.get(event, 0)
        peak = max(peak, now)
    return peak


def _phases(log: list[tuple[str, str, int | None]]) -> list[tuple[str, str]]:
    """Loads and closes in order, batches collapsed into one "generate" per stretch."""
    out: list[tuple[str, str]] = []
    for label, event, _ in log:
        step = (label, "generate" if event in ("batch", "oom") else event)
        if not out or out[-1] != step:
            out.append(step)
    return out


@pytest.fixture
def suite(pytester: pytest.Pytester) -> tuple[str, str, str]:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH))
    return ref, model(pytester, "a", answers(ARITH, wrong=[0])), model(pytester, "b", answers(ARITH))


def test_models_run_one_after_another_each_freed_before_the_next_loads(
    pytester: pytest.Pytester, suite: tuple[str, str, str]
) -> None:
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(*suite), f"--quant-report={report}", "-p", "no:xdist")
    assert result.ret == 0
    log = events(pytester)
    assert _phases(log) == [
        ("ref", "load"),
        ("ref", "generate"),
        ("ref", "close"),
        ("a", "load"),
        ("a", "generate"),
        ("a", "close"),
        ("b", "load"),
        ("b", "generate"),
        ("b", "close"),
    ]
    assert _resident(log) == 1
    models = read_report(report)["models"]
    assert {label: m["loads"] for label, m in models.items()} == {"ref": 1, "a": 1, "b": 1}


def test_keep_loaded_keeps_every_model_resident(
    pytester: pytest.Pytester, suite: tuple[str, str, str]
) -> None:
    result = pytester.runpytest(*gate_args(*suite), "--quant-keep-loaded", "-p", "no:xdist")
    assert result.ret == 0
    log = events(pytester)
    assert _resident(log) == 3
    assert [e for _, e, _ in log if e != "batch"] == ["load"] * 3 + ["close"] * 3  # closed at the end
    result.stdout.fnmatch_lines(["quantgate: * batch auto, keep-loaded"])


def test_a_model_a_test_takes_as_a_fixture_is_loaded_once(pytester: pytest.Pytester) -> None:
    items = cases("arith", 3)
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", items))
        + "\n\ndef test_zz_uses_the_reference(quant_reference):\n    assert quant_reference.label == 'ref'\n"
    )
    report = pytester.path / "gate.json"
    ref, cand = model(pytester, "ref", answers(items)), model(pytester, "c", answers(items))
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "-p", "no:xdist")
    assert result.ret == 0
    assert {label: m["loads"] for label, m in read_report(report)["models"].items()} == {"ref": 1, "c": 1}
    assert Counter(e for label, e, _ in events(pytester) if label == "ref")["load"] == 1


def test_out_of_memory_halves_the_batch_keeps_the_size_and_loses_no_case(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH), oom_above=5)
    cand = model(pytester, "c", answers(ARITH, wrong=[3]))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(ref, cand), "--quant-batch-size=16", f"--quant-report={report}", "-p", "no:xdist"
    )
    assert result.ret == 0
    ref_batches = [(e, n) for label, e, n in events(pytester) if label == "ref" and e in ("batch", "oom")]
    # 16 fails, 8 fails, then 4 works and is kept for every later batch.
    assert ref_batches[:3] == [("oom", 16), ("oom", 8), ("batch", 4)]
    assert {n for e, n in ref_batches[2:]} == {4} and all(e == "batch" for e, _ in ref_batches[2:])
    assert generated(pytester) == {"ref": prompts(ARITH), "c": prompts(ARITH)}  # each case once per model
    assert [n for label, e, n in events(pytester) if label == "c" and e == "batch"] == [16, 16, 8]
    result.stdout.fnmatch_lines(["quantgate: ref: out of memory at batch 16; continued at 4"])
    assert Counter(statuses(read_report(report), "c").values()) == {"passed": 39, "regressed": 1}


def test_out_of_memory_at_batch_one_is_that_case_s_error(pytester: pytest.Pytester) -> None:
    items = cases("arith", 3)
    pytester.makepyfile(test_suite=suite_source(Slice("arith", items)))
    ref = model(pytester, "ref", answers(items))
    cand = model(pytester, "c", answers(items), oom_above=0)  # not even one request fits
    result = pytester.runpytest(*gate_args(ref, cand), "-p", "no:xdist")
    assert result.ret == 1
    result.assert_outcomes(errors=3, passed=2)  # passed: the gate's own tests (the load, a row of no cases)
    assert [n for label, e, n in events(pytester) if label == "c"] == [None, 3, 1, 1, 1, None]
    result.stdout.fnmatch_lines(["*generation failed: *OutOfMemoryError: c: scripted out of memory at 1*"])
