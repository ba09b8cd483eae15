"""The reference cache end to end: a warm run does not load the reference and gates the same.

The fingerprint and the store themselves are tested in ``tests/unit/test_cache.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from .fakes import LOG, Slice, answers, cases, events, gate_args, generated, model, read_report, suite_source

ARITH = cases("arith", 40)
ON = "--quant-cache=on"


def _gate(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates' gates: verdicts and statistics, nothing about timing."""
    return report["candidates"]


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    (pytester.path / LOG).unlink(missing_ok=True)
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*args, f"--quant-report={report}", "-p", "no:xdist")
    return result, read_report(report)


@pytest.fixture
def specs(pytester: pytest.Pytester) -> list[str]:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    return gate_args(
        model(pytester, "ref", answers(ARITH)), model(pytester, "q", answers(ARITH, wrong=[1, 2]))
    )


def test_a_second_run_takes_the_reference_from_the_cache_without_loading_it(
    pytester: pytest.Pytester, specs: list[str]
) -> None:
    first, cold = _run(pytester, *specs, ON)
    assert generated(pytester)["ref"] == Counter(c.prompt for c in ARITH)
    second, warm = _run(pytester, *specs, ON)
    assert second.ret == first.ret == 0
    assert "ref" not in generated(pytester)
    assert [label for label, event, _ in events(pytester) if event == "load"] == ["q"]
    second.stdout.fnmatch_lines(
        ["quantgate: ref: 40/40 cases from the cache; nothing to generate, the model is not loaded"]
    )
    assert (warm["models"]["ref"]["loads"], warm["models"]["ref"]["cached_cases"]) == (0, 40)
    assert (cold["models"]["ref"]["loads"], cold["models"]["ref"]["cached_cases"]) == (1, 0)
    # What the reference is comes from the run that made the results: the report still says it.
    for key in ("device", "dtype", "context"):
        assert warm["models"]["ref"][key] == cold["models"]["ref"][key], key
    assert "pid" not in warm["models"]["ref"] and "load_seconds" not in warm["models"]["ref"]
    assert _gate(warm) == _gate(cold)
    assert [c["outcomes"] for c in warm["cases"]] == [c["outcomes"] for c in cold["cases"]]
    assert (pytester.path / ".quantgate" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_checks_run_again_on_cached_outputs(pytester: pytest.Pytester, specs: list[str]) -> None:
    _run(pytester, *specs, ON)
    # The same prompts and settings, a stricter check: nothing is generated again for the reference.
    source = (pytester.path / "test_suite.py").read_text()
    (pytester.path / "test_suite.py").write_text(source.replace("== expected", "== expected + '!'"))
    _result, report = _run(pytester, *specs, ON)
    assert "ref" not in generated(pytester)
    assert {c["outcomes"]["ref"]["outcome"] for c in report["cases"]} == {"fail"}


def test_another_reference_gets_nothing_from_the_cache(pytester: pytest.Pytester, specs: list[str]) -> None:
    _run(pytester, *specs, ON)
    script = pytester.path / "ref.json"
    data = json.loads(script.read_text())
    data["replies"][ARITH[0].prompt] = "changed"
    script.write_text(json.dumps(data))
    _result, report = _run(pytester, *specs, ON)
    assert generated(pytester)["ref"] == Counter(c.prompt for c in ARITH)
    assert report["models"]["ref"]["cached_cases"] == 0
    assert report["cases"][0]["outcomes"]["ref"]["output"] == "changed"


def test_refresh_regenerates_and_off_neither_reads_nor_writes(
    pytester: pytest.Pytester, specs: list[str]
) -> None:
    _run(pytester, *specs, "--quant-cache=off")
    assert not (pytester.path / ".quantgate").exists()
    _run(pytester, *specs, ON)
    _run(pytester, *specs, "--quant-cache=refresh")
    assert generated(pytester)["ref"] == Counter(c.prompt for c in ARITH)
    _run(pytester, *specs, "--quant-cache=off")
    assert generated(pytester)["ref"] == Counter(c.prompt for c in ARITH)
    _, report = _run(pytester, *specs, ON)
    assert "ref" not in generated(pytester) and report["models"]["ref"]["loads"] == 0


def test_a_corrupted_cache_is_one_warning_and_a_full_run(pytester: pytest.Pytester, specs: list[str]) -> None:
    _run(pytester, *specs, ON)
    (pytester.path / ".quantgate" / "results.sqlite3").write_bytes(b"not a database at all" * 100)
    result, _report = _run(pytester, *specs, ON)
    assert result.ret == 0
    warnings = [line for line in result.stdout.lines if "cache" in line and "rebuilt" in line]
    assert len(warnings) == 1, result.stdout.lines
    assert generated(pytester)["ref"] == Counter(c.prompt for c in ARITH)
    _, again = _run(pytester, *specs, ON)
    assert again["models"]["ref"]["loads"] == 0


def test_xdist_workers_fill_one_cache(pytester: pytest.Pytester, specs: list[str]) -> None:
    pytest.importorskip("xdist")
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*specs, ON, "-n", "2", f"--quant-report={report}")
    assert result.ret == 0
    cold = read_report(report)
    _, warm = _run(pytester, *specs, ON)
    assert "ref" not in generated(pytester)
    assert _gate(warm) == _gate(cold)
