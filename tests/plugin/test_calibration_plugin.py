"""--quant-calibration: eval cases found in the candidates' calibration texts are reported."""

from __future__ import annotations

import json

import pytest

from .fakes import Slice, answers, cases, gate_args, model, read_report, suite_source

ARITH = cases("arith", 40)


def test_cases_in_the_calibration_file_are_counted_and_warned_about(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    calibration = pytester.path / "calib.jsonl"
    leaked = [ARITH[3].prompt + " " + ARITH[3].expected, "an unrelated text about something else"]
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in leaked))
    report = pytester.path / "gate.json"
    replies = answers(ARITH)
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        f"--quant-calibration={calibration}",
        f"--quant-report={report}",
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "warning: 1 of 40 cases (2.5%) appear in the calibration file *",
            "  file: *calib.jsonl",
            "  test_suite.py::test_arith[[]arith-3[]]",
        ]
    )
    found = read_report(report)["calibration_overlap"]
    assert (found["overlapping"], found["cases"]) == (1, 40)
    assert found["cases_overlapping"] == ["test_suite.py::test_arith[arith-3]"]


def test_a_missing_calibration_file_stops_the_run_before_any_model_loads(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH[:2])))
    ref = model(pytester, "ref", answers(ARITH))
    result = pytester.runpytest(*gate_args(ref), "--quant-calibration=nowhere.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: quantgate: --quant-calibration: no such file: *nowhere.jsonl"])
