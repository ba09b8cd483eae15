"""The plugin end to end with ``pytester``, on scripted ``fake:`` models.

Each test writes a generated suite and a script per model into a temporary
directory and runs pytest on it in-process. Every model's reply to every
prompt is decided by its script, so each scenario's statuses, verdicts and
generations are known in advance. Every script appends the prompts it
generates to one log, which counts what each model generated. The runs on the
real tiny model are in ``test_real_models.py``; bad input, faults and
interruptions in ``test_hardening.py``.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from .fakes import (
    LOG,
    XDIST_MODES,
    Case,
    Slice,
    answers,
    cases,
    gate_args,
    generated,
    model,
    prompts,
    read_report,
    spec,
    statuses,
    suite_source,
    summary_counts,
    table_rows,
    write_script,
)

ARITH = cases("arith", 60)
RECALL = cases("recall", 10)


# -- verdicts ----------------------------------------------------------------


# The counts of the summary line: the cases', and the gate's three tests (the candidate's load, its
# arith and ALL rows), which pass (3 more passed) unless the rows regressed (1 more, 2 failed).
@pytest.mark.parametrize(
    ("ref_wrong", "cand_wrong", "args", "verdict", "ret", "counts"),
    [
        pytest.param((), (), [], "INCONCLUSIVE", 0, {"passed": 63}, id="identical"),
        pytest.param((), (), ["--quant-tolerance=0.1"], "PASS", 0, {"passed": 63}, id="identical-tol10"),
        pytest.param(
            (), range(20), [], "REGRESSED", 1, {"passed": 41, "regressed": 20, "failed": 2}, id="regressed"
        ),
        pytest.param(range(20), (), [], "IMPROVED", 0, {"passed": 43, "improved": 20}, id="improved"),
        pytest.param(
            range(20), range(20), [], "INCONCLUSIVE", 0, {"passed": 43, "both-failed": 20}, id="both-failed"
        ),
    ],
)
def test_verdict_of_a_scripted_slice(
    pytester: pytest.Pytester,
    ref_wrong: Sequence[int],
    cand_wrong: Sequence[int],
    args: list[str],
    verdict: str,
    ret: int,
    counts: dict[str, int],
) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH, wrong=ref_wrong))
    cand = model(pytester, "cand", answers(ARITH, wrong=cand_wrong))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", *args)
    out = result.stdout.str()
    assert result.ret == ret, out
    # The gate's tests count: a REGRESSED row as a failed test, the others as passed ones.
    assert summary_counts(result) == counts, result.stdout.lines[-1]
    assert table_rows(out, "cand") == {"arith": verdict, "ALL": verdict}
    (row, total) = read_report(report)["candidates"][0]["slices"]
    assert row["slice"] == "arith" and row["n"] == 60 and row["verdict"] == verdict
    assert row["regressions"] == len(set(cand_wrong) - set(ref_wrong))
    assert row["improvements"] == len(set(ref_wrong) - set(cand_wrong))
    assert row["ref_accuracy"] == pytest.approx(1 - len(ref_wrong) / 60)
    assert row["cand_accuracy"] == pytest.approx(1 - len(cand_wrong) / 60)
    assert total["slice"] == "ALL" and total["verdict"] == verdict
    failed = [line for line in result.stdout.lines if line.startswith("FAILED ::quantgate::")]
    if verdict == "REGRESSED":
        assert [f.split(" - ")[0] for f in failed] == [
            "FAILED ::quantgate::cand::arith",
            "FAILED ::quantgate::cand::ALL",
        ]
    else:
        assert failed == []


def test_per_case_statuses(pytester: pytest.Pytester) -> None:
    """Every status once: passed, regressed, improved, both-failed, errors on either model."""
    mix, crit = cases("mix", 6), cases("crit", 2)
    pytester.makepyfile(test_suite=suite_source(Slice("mix", mix), Slice("crit", crit, critical=True)))
    ref = model(pytester, "ref", {**answers(mix, wrong=[2, 3]), **answers(crit)}, fail_on=[mix[5].prompt])
    cand = model(
        pytester, "cand", {**answers(mix, wrong=[1, 3]), **answers(crit, wrong=[1])}, fail_on=[mix[4].prompt]
    )
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}")
    assert result.ret == 1
    assert statuses(read_report(report), "cand") == {
        "mix-0": "passed",
        "mix-1": "regressed",
        "mix-2": "improved",
        "mix-3": "both-failed",
        "mix-4": "error",
        "mix-5": "error",
        "crit-0": "passed",
        "crit-1": "regressed",
    }
    # A critical regression fails its test; errors are errors; the rest pass in their own category.
    # (And the gate's passing tests: the candidate's load, its mix, crit and ALL rows.)
    assert summary_counts(result) == {
        "failed": 1,
        "passed": 2 + 4,
        "errors": 2,
        "regressed": 1,
        "improved": 1,
        "both-failed": 1,
    }
    result.stdout.re_match_lines([r"test_suite\.py \.RIbEE\.F\s+\[100%\]"])
    result.stdout.fnmatch_lines(
        [
            "FAILED test_suite.py::test_crit[[]crit-1[]] - Failed: quantgate: case regressed*",
            "ERROR test_suite.py::test_mix[[]mix-4[]] - *",
            "ERROR test_suite.py::test_mix[[]mix-5[]] - *",
        ]
    )
    result.stdout.fnmatch_lines(["*generation failed*cand: scripted failure on 'mix 4: 4+5='*"])
    # Errored cases are left out of the statistics.
    (row, _, total) = read_report(report)["candidates"][0]["slices"]
    assert (row["slice"], row["n"], total["n"]) == ("mix", 4, 6)
    result.stdout.fnmatch_lines(["2 case(s) with errors are left out of the statistics"])


def test_check_raising_other_exception_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["1+2=", "3+4="], max_new_tokens=3)
        def test_buggy_check(prompt, output):
            {}["missing"]
        """
    )
    replies = {"1+2=": "3", "3+4=": "7"}
    args = gate_args(model(pytester, "ref", replies), model(pytester, "same", replies))
    result = pytester.runpytest(*args, "-rp")
    assert result.ret == 1
    result.assert_outcomes(errors=2, passed=2)
    result.stdout.fnmatch_lines(["*ERROR*test_buggy_check*", "*KeyError*missing*"])
    # What passed is the gate's own tests, never a case whose check raised.
    passed = [line.split()[1] for line in result.stdout.lines if line.startswith("PASSED ")]
    assert passed == ["::quantgate::same::load", "::quantgate::same::ALL"]


def test_critical_regression_fails_its_test(pytester: pytest.Pytester) -> None:
    crit = cases("crit", 10)
    pytester.makepyfile(test_suite=suite_source(Slice("crit", crit, critical=True), Slice("recall", RECALL)))
    ref = model(pytester, "ref", {**answers(crit), **answers(RECALL)})
    cand = model(pytester, "d", {**answers(crit, wrong=[3, 7]), **answers(RECALL, wrong=[0, 1, 2])})
    result = pytester.runpytest(*gate_args(ref, cand))
    assert result.ret == 1
    out = result.stdout.str()
    assert re.findall(r"^FAILED test_suite\.py::test_crit\[(crit-\d)\]", out, re.M) == ["crit-3", "crit-7"]
    # Non-critical regressions show as their own category, they do not fail.
    assert not re.search(r"FAILED test_suite\.py::test_recall\[", out)
    assert summary_counts(result)["regressed"] == 3
    result.stdout.fnmatch_lines(["*case regressed (critical)*"])


def test_strict_fails_inconclusive_slices(pytester: pytest.Pytester) -> None:
    # Five identical cases per slice cannot rule out a 2-point drop.
    arith, recall = cases("arith", 5), cases("recall", 5)
    pytester.makepyfile(test_suite=suite_source(Slice("arith", arith), Slice("recall", recall)))
    replies = {**answers(arith), **answers(recall)}
    args = gate_args(model(pytester, "ref", replies), model(pytester, "same", replies))
    lenient = pytester.runpytest(*args)
    assert lenient.ret == 0
    lenient.stdout.fnmatch_lines(["warning: INCONCLUSIVE (arith, recall, ALL)*"])
    strict = pytester.runpytest(*args, "--quant-strict")
    assert strict.ret == 1
    failed = sorted(line.split(" - ")[0] for line in strict.stdout.lines if line.startswith("FAILED "))
    assert failed == [
        "FAILED ::quantgate::same::ALL",
        "FAILED ::quantgate::same::arith",
        "FAILED ::quantgate::same::recall",
    ]
    # The ini key does the same.
    pytester.makeini("[pytest]\nquant_strict = true\n")
    assert pytester.runpytest(*args).ret == 1


def test_reference_alone_reports_its_own_outcomes(pytester: pytest.Pytester) -> None:
    recall = cases("recall", 3)
    pytester.makepyfile(test_suite=suite_source(Slice("recall", recall)))
    result = pytester.runpytest(*gate_args(model(pytester, "ref", answers(recall, wrong=[1]))))
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the reference fails this case*",
            "*quantgate: reference ref only*",
            "2/3 cases pass*",
            "FAILED test_suite.py::test_recall[[]recall-1[]]*",
        ]
    )


def test_without_reference_quant_cases_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    result = pytester.runpytest("-ra")
    assert result.ret == 0
    result.assert_outcomes(skipped=70)
    result.stdout.fnmatch_lines(["*no reference model given*"])
    assert "quantgate: loading" not in result.stdout.str()


# -- generation: once per model, only what is selected -----------------------


def _selection_suite(pytester: pytest.Pytester) -> tuple[list[Case], list[Case], list[Case], list[str]]:
    arith, recall, smoke = cases("arith", 12), cases("recall", 8), cases("smoke", 5)
    pytester.makeini("[pytest]\nmarkers =\n    smoke: quick cases\n")
    pytester.makepyfile(
        test_suite=suite_source(
            Slice("arith", arith),
            Slice("recall", recall),
            Slice("smoke", smoke, marks=("pytest.mark.smoke",)),
        )
    )
    replies = {**answers(arith), **answers(recall), **answers(smoke)}
    return arith, recall, smoke, gate_args(model(pytester, "ref", replies), model(pytester, "cand", replies))


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_k_generates_only_the_selected_slice(pytester: pytest.Pytester, mode: str) -> None:
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    _, recall, _, args = _selection_suite(pytester)
    result = pytester.runpytest(*args, "-k", "test_recall", *XDIST_MODES[mode])
    assert result.ret == 0, result.stdout.str()
    # (Workers deselect: the controller has no deselected count to show.)
    # (And the gate's three tests pass: the candidate's load, its recall and ALL rows.)
    result.assert_outcomes(passed=8 + 3, deselected=17 if mode == "no-xdist" else 0)
    runs = generated(pytester)
    assert set(runs) == {"ref", "cand"}
    if mode == "no-xdist":
        assert runs["ref"] == runs["cand"] == prompts(recall)
    else:
        # Each worker that runs a case generates every selected case (and nothing else).
        for counts in runs.values():
            assert set(counts) == set(prompts(recall))
            assert len(set(counts.values())) == 1 and set(counts.values()) <= {1, 2}


def test_m_generates_only_the_marked_cases(pytester: pytest.Pytester) -> None:
    arith, recall, smoke, args = _selection_suite(pytester)
    result = pytester.runpytest(*args, "-m", "smoke")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=5 + 3, deselected=20)  # + the gate's load, smoke and ALL rows
    assert generated(pytester) == {"ref": prompts(smoke), "cand": prompts(smoke)}
    (pytester.path / LOG).unlink()
    result = pytester.runpytest(*args, "-m", "not smoke")
    result.assert_outcomes(passed=20 + 4, deselected=5)  # + the gate's load, arith, recall and ALL rows
    assert generated(pytester) == {"ref": prompts(arith, recall), "cand": prompts(arith, recall)}


def test_collect_only_generates_nothing(pytester: pytest.Pytester) -> None:
    _, _, _, args = _selection_suite(pytester)
    result = pytester.runpytest(*args, "--collect-only", "-q")
    assert result.ret == 0
    assert generated(pytester) == {}
    assert "quantgate: loading" not in result.stdout.str()


def test_lf_generates_only_the_failed_cases(pytester: pytest.Pytester) -> None:
    crit, recall = cases("crit", 6), cases("recall", 10)
    pytester.makepyfile(test_suite=suite_source(Slice("crit", crit, critical=True), Slice("recall", recall)))
    ref = model(pytester, "ref", {**answers(crit), **answers(recall)})
    cand = model(pytester, "cand", {**answers(crit, wrong=[1, 4]), **answers(recall)})
    first = pytester.runpytest(*gate_args(ref, cand))
    assert first.ret == 1
    first.assert_outcomes(passed=14 + 4, failed=2)  # + the gate's load, crit, recall and ALL rows
    assert generated(pytester) == {"ref": prompts(crit, recall), "cand": prompts(crit, recall)}
    (pytester.path / LOG).unlink()
    again = pytester.runpytest(*gate_args(ref, cand), "--lf")
    again.assert_outcomes(failed=2, passed=3)  # passed: the gate's load, crit and ALL rows of this run
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures*"])
    failed_prompts = prompts([crit[1], crit[4]])
    assert generated(pytester) == {"ref": failed_prompts, "cand": failed_prompts}


def test_progress_lines_once_per_model(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    replies = {**answers(ARITH), **answers(RECALL)}
    ref, cand = model(pytester, "ref", replies), model(pytester, "cand", replies)
    result = pytester.runpytest(*gate_args(ref, cand))
    assert result.ret == 0
    lines = [line for line in result.stdout.lines if line.startswith("quantgate: ")]
    for label in ("ref", "cand"):
        assert [line for line in lines if line.startswith(f"quantgate: loading {label} ")] == [
            f"quantgate: loading {label} (fake:{label}.json) ..."
        ]
        done = [line for line in lines if re.match(rf"quantgate: {label}: 70 cases generated in ", line)]
        assert len(done) == 1, lines
    # The reference loads and generates first.
    assert lines.index("quantgate: loading ref (fake:ref.json) ...") < lines.index(
        "quantgate: loading cand (fake:cand.json) ..."
    )
    assert generated(pytester) == {"ref": prompts(ARITH, RECALL), "cand": prompts(ARITH, RECALL)}


# -- models that cannot load, backends from a conftest ------------------------


BROKEN_CONFTEST = """
from pytest_quantgate.backends.base import BackendError

def pytest_quantgate_make_backend(spec, device, dtype):
    if spec.label == "broken":
        raise BackendError("weights missing")
    return None
"""


@pytest.mark.parametrize("how", ["script", "hook"])
def test_candidate_that_cannot_load_fails_the_run_once(pytester: pytest.Pytester, how: str) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ref = model(pytester, "ref", answers(RECALL))
    message = "weights missing\nmodel.safetensors: header too small (truncated?)"
    if how == "script":
        broken = model(pytester, "broken", answers(RECALL), load_error=message)
    else:
        pytester.makeconftest(BROKEN_CONFTEST)
        broken = model(pytester, "broken", answers(RECALL))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, broken), f"--quant-report={report}", "-ra")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # Not ten identical errors: the cases have nothing to compare and skip, saying why;
    # the load fails once, as the candidate's own test.
    assert summary_counts(result) == {"failed": 1, "skipped": 10}
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]10[]] test_suite.py:*: quantgate: nothing to compare: candidate broken could not be*"]
    )
    result.stdout.fnmatch_lines(["FAILED ::quantgate::broken::load - broken (fake:broken.json) could not*"])
    # Loaded (and failed) once, not once per case.
    assert result.stdout.str().count("quantgate: could not load broken: weights missing") == 1
    # The whole message, with the path, in the failure and the summary (not only its first line).
    whole = "weights missing"
    if how == "script":
        whole += "\n  model.safetensors: header too small (truncated?)"
    block = f"broken (fake:broken.json) could not be loaded from {pytester.path / 'broken.json'}:\n  {whole}"
    # Counted above pytest's short summary, which cuts long lines except under CI=true.
    assert result.stdout.str().split("short test summary info")[0].count(block) == 2
    result.stdout.fnmatch_lines(["*= quantgate: broken (fake:broken.json): NOT EVALUATED =*"])
    assert "passing for now" not in result.stdout.str()
    assert generated(pytester) == {"ref": prompts(RECALL)}
    data = read_report(report)
    assert data["complete"] is False
    (gate,) = data["candidates"]
    assert gate["evaluated"] is False and gate["verdict"] is None and gate["slices"] == []
    assert gate["not_evaluated"] == data["models"]["broken"]["load_error"] == whole.replace("\n  ", "\n")
    assert {c["outcomes"]["ref"]["outcome"] for c in data["cases"]} == {"pass"}
    assert all(c["unavailable"] == {"broken": gate["not_evaluated"]} for c in data["cases"])


def test_other_candidates_are_still_gated_when_one_cannot_load(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH))
    broken = model(pytester, "broken", {}, load_error="out of memory")
    bad = model(pytester, "bad", answers(ARITH, wrong=range(20)))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, broken, bad), f"--quant-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # Passed: the cases', and bad's load; failed: broken's load and bad's two rows.
    assert summary_counts(result) == {"passed": 40 + 1, "regressed": 20, "failed": 3}
    failed = sorted(line.split(" - ")[0] for line in result.stdout.lines if line.startswith("FAILED "))
    assert failed == [
        "FAILED ::quantgate::bad::ALL",
        "FAILED ::quantgate::bad::arith",
        "FAILED ::quantgate::broken::load",
    ]
    assert table_rows(result.stdout.str(), "bad") == {"arith": "REGRESSED", "ALL": "REGRESSED"}
    data = read_report(report)
    assert [(c["label"], c["evaluated"], c["verdict"]) for c in data["candidates"]] == [
        ("broken", False, None),
        ("bad", True, "REGRESSED"),
    ]
    assert data["complete"] is False


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_reference_that_cannot_load_stops_the_run(pytester: pytest.Pytester, mode: str) -> None:
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    cause = "Couldn't instantiate the backend tokenizer from one of:\n(1) a file"
    ref = model(pytester, "ref", {}, load_error=cause)
    cand = model(pytester, "cand", answers(RECALL))
    report = pytester.path / "out" / "gate.json"
    report.parent.mkdir()
    report.write_text('{"complete": true, "stale": true}')
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", *XDIST_MODES[mode])
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    out = result.stdout.str()
    # One clear block with the whole cause and the path; no candidate is loaded, nothing generated.
    result.stdout.fnmatch_lines(
        [
            "*= quantgate: reference ref could not be loaded =*",
            f"ref (fake:ref.json) could not be loaded from {pytester.path / 'ref.json'}:",
            "  Couldn't instantiate the backend tokenizer from one of:",
            "  (1) a file",
            "nothing was gated: the run stops",
        ]
    )
    assert "loading cand" not in out and generated(pytester) == {}
    if mode == "no-xdist":
        result.stdout.fnmatch_lines(["*quantgate: the reference ref could not be loaded*"])
    # The report is still written, says it is incomplete, and that the run failed, as its exit status does.
    data = read_report(report)
    assert data["complete"] is False and "stale" not in data and data["failed"] is True
    assert data["models"]["ref"]["load_error"].startswith("Couldn't instantiate")
    assert data["candidates"][0]["evaluated"] is False


CUSTOM_CONFTEST = """
import json
from pathlib import Path

from pytest_quantgate.backends import Backend


class AdderBackend(Backend):
    '''Adds the two numbers of a prompt, off by the offset in its config.json.'''

    def __init__(self, spec, device, dtype):
        self.label = spec.label
        self.spec = spec
        self.device, self.dtype = device, dtype
        self.offset = json.loads((Path(spec.path) / "config.json").read_text())["offset"]

    def generate(self, requests):
        out = []
        for r in requests:
            a, b = r.prompt.split(": ")[1].rstrip("=").split("+")
            out.append(str(int(a) + int(b) + self.offset))
        return out

    def describe(self):
        return {"label": self.label, "backend": "adder", "device": self.device, "dtype": self.dtype,
                "offset": self.offset}


def pytest_quantgate_make_backend(spec, device, dtype):
    if spec.label != "custom":
        return None  # the reference is left to the built-in fake backend
    return AdderBackend(spec, device, dtype)
"""


def test_conftest_hook_provides_a_backend(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CUSTOM_CONFTEST)
    pytester.mkdir("adder")
    (pytester.path / "adder" / "config.json").write_text('{"offset": 0}')
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH, wrong=range(30)))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(ref, "custom=./adder"),
        "--quant-device=cpu",
        "--quant-dtype=bfloat16",
        f"--quant-report={report}",
    )
    assert result.ret == 0, result.stdout.str()
    data = read_report(report)
    # Its outputs are the cases' outputs...
    assert {c["outcomes"]["custom"]["output"] for c in data["cases"]} == {c.expected for c in ARITH}
    assert Counter(statuses(data, "custom").values()) == {"improved": 30, "passed": 30}
    assert data["candidates"][0]["verdict"] == "IMPROVED"
    # ... and its describe() is the model's facts, with the device and dtype it was given.
    assert {k: v for k, v in data["models"]["custom"].items() if k != "generate_seconds"} == {
        "label": "custom",
        "backend": "adder",
        "device": "cpu",
        "dtype": "bfloat16",
        "offset": 0,
        "role": "candidate",
        "loads": 1,
        "batch_size": 16,
        "generated_cases": 60,
    }
    assert data["models"]["ref"]["scheme"] == "fake"
    # The reference went through the built-in backend, the custom model did not.
    assert generated(pytester) == {"ref": prompts(ARITH)}


def test_fixtures_give_the_loaded_models(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_models(quant_reference, quant_candidates, quant_config):
            assert type(quant_reference).__name__ == "FakeBackend"
            assert quant_reference.label == "ref"
            assert list(quant_candidates) == ["cand"]
            assert quant_config.tolerance == 0.05
            assert quant_candidates["cand"].replies == {"q": "cand says"}
        """
    )
    ref, cand = model(pytester, "ref", {"q": "ref says"}), model(pytester, "cand", {"q": "cand says"})
    result = pytester.runpytest(*gate_args(ref, cand), "--quant-tolerance=0.05")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "quantgate: reference ref (fake:ref.json)",
            "quantgate: candidates cand (fake:cand.json)",
            "quantgate: tolerance 5.0 pts, alpha 0.05, device auto, dtype auto, batch auto",
        ]
    )


def test_output_fixture_outside_a_quant_case_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(output):\n    pass\n")
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {})))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the `output` fixture is only given to @quant_case tests*"])


# -- options -------------------------------------------------------------------


def test_ini_options_and_relative_paths(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ini paths are relative to the ini file, command-line paths to the current directory."""
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    replies = {**answers(ARITH), **answers(RECALL)}
    write_script(pytester.path / "models" / "ref.json", replies)
    write_script(pytester.path / "models" / "cand.json", {**replies, **answers(RECALL, wrong=[0])})
    pytester.makeini(
        """
        [pytest]
        quant_reference = ref=fake:models/ref.json
        quant_candidate =
            cand=fake:models/cand.json
        quant_tolerance = 0.5
        quant_alpha = 0.1
        quant_batch_size = 7
        quant_report = out/gate.json
        quant_slice_tolerance =
            arith = 0.0
        """
    )
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = pytester.runpytest(str(pytester.path), "--quant-candidate=again=fake:../models/cand.json")
    assert result.ret == 0, result.stdout.str()
    data = read_report(pytester.path / "out" / "gate.json")
    config = data["config"]
    assert config["reference"]["path"] == str(pytester.path / "models" / "ref.json")
    # The command line's candidates replace the ini file's.
    assert [c["label"] for c in config["candidates"]] == ["again"]
    assert (config["tolerance"], config["alpha"], config["batch_size"]) == (0.5, 0.1, 7)
    assert config["slice_tolerances"] == {"arith": 0.0}
    rows = {r["slice"]: r for r in data["candidates"][0]["slices"]}
    assert {s: r["tolerance"] for s, r in rows.items()} == {"arith": 0.0, "recall": 0.5, "ALL": 0.5}
    assert rows["recall"]["regressions"] == 1


def test_marker_tolerance_wins_over_the_ini_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH, tolerance=0.6)))
    pytester.makeini("[pytest]\nquant_slice_tolerance = arith = 0.0\n")
    args = gate_args(
        model(pytester, "ref", answers(ARITH)), model(pytester, "cand", answers(ARITH, wrong=range(20)))
    )
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*args, "--quant-tolerance=0.5", f"--quant-report={report}")
    # A third of the cases regress: beyond 0 points, within 50 (its drop≤ is 44.6).
    assert result.ret == 0, result.stdout.str()
    (row, total) = read_report(report)["candidates"][0]["slices"]
    assert (row["tolerance"], row["verdict"]) == (0.6, "PASS")
    assert (total["tolerance"], total["verdict"]) == (0.5, "PASS")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quant-tolerance=2"], "ERROR: quantgate: --quant-tolerance must be a number in [[]0, 1), got 2*"),
        # 1 passed the option check once, and crashed the gate after all generation.
        (
            ["--quant-tolerance=1"],
            "ERROR: quantgate: --quant-tolerance must be a number in [[]0, 1), got 1 (*",
        ),
        (["--quant-alpha=0.9"], "ERROR: quantgate: --quant-alpha must be in (0, 0.5], got 0.9"),
        (
            ["--quant-batch-size=0"],
            "ERROR: quantgate: --quant-batch-size must be at least 1 (or auto), got 0",
        ),
        (["--quant-candidate=onnx:{ref}"], "ERROR: quantgate: unknown scheme 'onnx' in model spec*"),
        (["--quant-device=tpu"], "ERROR: quantgate: --quant-device must be*"),
        (["--quant-dtype=int4"], "ERROR: quantgate: --quant-dtype must be one of*"),
        (["--quant-candidate=nf4=bnb-nf4:./no/such/model"], "ERROR: quantgate: model directory not found*"),
        (["--quant-candidate=c=fake:./no/such.json"], "ERROR: quantgate: file not found*no/such.json*"),
        (["--quant-candidate=x=fake:{ref}"] * 2, "ERROR: quantgate: two candidates are labelled 'x'*"),
        (["--quant-candidate=ref=fake:{ref}"], "ERROR: quantgate: candidate label 'ref' is the reference's*"),
    ],
)
def test_bad_options_stop_before_loading(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ref = write_script(pytester.path / "ref.json", answers(RECALL), log=LOG)
    result = pytester.runpytest(f"--quant-reference=ref=fake:{ref}", *(a.format(ref=ref) for a in args))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, result.stderr.str()
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "loading" not in result.stdout.str()
    assert generated(pytester) == {}


@pytest.mark.parametrize("where", ["flag", "ini"])
def test_candidate_without_reference_is_a_usage_error(pytester: pytest.Pytester, where: str) -> None:
    # Every case would skip and the run pass: a gate that checks nothing.
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    cand = model(pytester, "cand", {})
    if where == "ini":
        pytester.makeini(f"[pytest]\nquant_candidate = {cand}\n")
    result = pytester.runpytest(*([f"--quant-candidate={cand}"] if where == "flag" else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    source = "--quant-candidate" if where == "flag" else "quant_candidate"
    result.stderr.fnmatch_lines([f"ERROR: quantgate: {source} given without --quant-reference*"])
    assert [line for line in result.stderr.lines if line.strip()] == result.stderr.lines[:1]


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        (
            '@quant_case("prompt", ["a"], max_tokens=3)',
            "*test_x.py::test_bad: quant_case got unknown argument(s) max_tokens*",
        ),
        (
            '@quant_case("question", ["a"])',
            "*test_bad: quant_case: the prompt argument 'prompt' is not among*",
        ),
        (
            '@quant_slice("s", tolerance=5)\n@quant_case("prompt", ["a"])',
            "*test_bad: slice tolerance must be*",
        ),
        (
            '@quant_slice("ALL")\n@quant_case("prompt", ["a"])',
            "*test_bad: slice names must be non-empty strings other than 'ALL'*",
        ),
        (
            '@quant_case("prompt", ["a"], max_new_tokens=0)',
            "*test_bad: quant_case max_new_tokens must be a positive integer, got 0*",
        ),
    ],
)
def test_bad_marker_arguments_fail_collection(
    pytester: pytest.Pytester, decorator: str, message: str
) -> None:
    pytester.makepyfile(
        test_x=f"""
        from pytest_quantgate import quant_case, quant_slice

        {decorator}
        def test_bad(output, **kw):
            pass
        """.replace("\n        ", "\n")
    )
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {})))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([message])
    assert generated(pytester) == {}


def test_quant_case_without_output_argument_fails_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_x="""
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["a"])
        def test_no_output(prompt):
            pass
        """
    )
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {})))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*test_no_output: a quant_case test must take the argument `output`*"])


def test_help_lists_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["quantgate: gate quantized LLMs*", "*--quant-reference=*", "*--quant-tolerance=*"]
    )


def test_help_needs_only_the_core(pytester: pytest.Pytester) -> None:
    """`pytest --help`, the statistics and a gate on fake models work without torch or transformers."""
    recall = cases("recall", 4)
    pytester.makepyfile(test_suite=suite_source(Slice("recall", recall)))
    ref = write_script(pytester.path / "ref.json", answers(recall))
    cand = write_script(pytester.path / "cand.json", answers(recall, wrong=[2]))
    script = f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {{"torch", "transformers", "bitsandbytes", "accelerate", "tokenizers"}}:
            raise ImportError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import pytest
from pytest_quantgate.statistics import stats
assert stats.holm([0.01, 0.04]) == [0.02, 0.04]
assert pytest.main(["--help"]) == 0
code = pytest.main([{str(pytester.path)!r}, "-p", "no:cacheprovider",
                    "--quant-reference=ref=fake:{ref}", "--quant-candidate=cand=fake:{cand}"])
assert not any(m.partition(".")[0] == "torch" for m in sys.modules)
sys.exit(code)
"""
    result = pytester.run(sys.executable, "-c", script)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(
        [
            "quantgate: gate quantized LLMs*",
            "*--quant-candidate=*",
            "*quantgate: cand (fake:cand.json) vs reference ref: INCONCLUSIVE*",
            "*6 passed*1 regressed*",  # 3 cases, and the gate's load, recall and ALL
        ]
    )


# -- reports -------------------------------------------------------------------


def _regressed_run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    """60 arithmetic cases (the candidate gets 20 wrong) and 10 recall cases (all right)."""
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    ref = model(pytester, "ref", {**answers(ARITH), **answers(RECALL)})
    cand = model(pytester, "cand", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    report = pytester.path / "out" / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", *args)
    return result, read_report(report)


def test_json_report(pytester: pytest.Pytester) -> None:
    result, data = _regressed_run(pytester)
    assert result.ret == 1
    assert data["schema"] == "pytest-quantgate/report" and data["schema_version"] == 2
    assert data["complete"] is True and data["failed"] is True
    assert data["config"]["reference"]["label"] == "ref"
    assert [c["label"] for c in data["config"]["candidates"]] == ["cand"]
    # The models' facts are their backends' describe().
    for label, role in (("ref", "reference"), ("cand", "candidate")):
        facts = data["models"][label]
        assert facts["role"] == role and facts["scheme"] == "fake" and facts["quantization"] is None
        assert facts["path"] == str(pytester.path / f"{label}.json")
        assert facts["spec"] == f"{label}=fake:{pytester.path / f'{label}.json'}"
        assert (facts["device"], facts["dtype"]) == ("cpu", "none")
    (cand,) = data["candidates"]
    assert cand["label"] == "cand" and cand["verdict"] == "REGRESSED" and cand["errors"] == 0
    rows = {r["slice"]: r for r in cand["slices"]}
    assert list(rows) == ["arith", "recall", "ALL"]
    assert {s: (r["n"], r["regressions"], r["verdict"]) for s, r in rows.items()} == {
        "arith": (60, 20, "REGRESSED"),
        "recall": (10, 0, "INCONCLUSIVE"),
        "ALL": (70, 20, "REGRESSED"),
    }
    # Every case, with both outputs and transcripts.
    assert len(data["cases"]) == 70
    by_id = {c["nodeid"]: c for c in data["cases"]}
    first = by_id["test_suite.py::test_arith[arith-0]"]
    assert first["slices"] == ["arith"] and first["status"] == {"cand": "regressed"}
    assert first["outcomes"]["ref"]["transcript"] == [{"prompt": ARITH[0].prompt, "reply": "1"}]
    assert first["outcomes"]["cand"]["output"] == "wrong"
    assert first["outcomes"]["cand"]["message"] == "AssertionError: assert 'wrong' == '1'"
    assert Counter(c["status"]["cand"] for c in data["cases"]) == {"regressed": 20, "passed": 50}
    # The terminal names the report and lists ten of the twenty regressions.
    result.stdout.fnmatch_lines(
        [
            "regressed cases (20):",
            "  R test_suite.py::test_arith[[]arith-0[]]",
            "  ... and 10 more (all in *)",
        ]
    )
    result.stdout.fnmatch_lines(
        [f"quantgate: JSON report (complete) written to {pytester.path / 'out' / 'gate.json'}"]
    )


def _junit(pytester: pytest.Pytester) -> tuple[pytest.RunResult, ET.Element, dict[str, ET.Element]]:
    result, _ = _regressed_run(pytester, "--junitxml=junit.xml")
    root = ET.parse(pytester.path / "junit.xml").getroot()
    testcases = {f"{tc.get('classname')}::{tc.get('name')}": tc for tc in root.iter("testcase")}
    return result, root, testcases


def test_junit_report(pytester: pytest.Pytester) -> None:
    result, root, testcases = _junit(pytester)
    assert result.ret == 1
    # The gate's tests are test cases named ::quantgate::<candidate>::<row> (JUnit writes
    # the node id's path and class as a dotted classname): failed where they fail the run.
    gate = {k: tc for k, tc in testcases.items() if k.startswith("quantgate.")}
    assert sorted(gate) == [
        "quantgate.cand::ALL",
        "quantgate.cand::arith",
        "quantgate.cand::load",
        "quantgate.cand::recall",
    ]
    assert {k for k, tc in gate.items() if tc.find("failure") is not None} == {
        "quantgate.cand::ALL",
        "quantgate.cand::arith",
    }
    failure = gate["quantgate.cand::arith"].find("failure")
    assert failure is not None and failure.text is not None
    assert "slice 'arith' of candidate cand (fake:cand.json): REGRESSED" in failure.text
    assert "20 regressed, 0 improved\n  (regressed cases: see the quantgate summary" in failure.text
    (suite,) = root.iter("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("74", "2", "0")
    # Each case carries its record as a property; regressions pass their test.
    cases_ = {k: tc for k, tc in testcases.items() if k.startswith("test_suite::")}
    assert len(cases_) == 70
    for key, tc in cases_.items():
        assert tc.find("failure") is None and tc.find("error") is None, key
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        assert set(props) == {"quantgate", "quantgate_status"}
        record = json.loads(props["quantgate"] or "")
        assert key.endswith(record["nodeid"].split("::")[1])
        index = int(record["nodeid"].split("-")[-1].rstrip("]"))
        wrong = record["nodeid"].startswith("test_suite.py::test_arith[") and index < 20
        assert record["status"] == {"cand": "regressed" if wrong else "passed"}
        assert props["quantgate_status"] == record["status"]["cand"]
        assert record["outcomes"]["cand"]["output"] == (
            "wrong" if wrong else record["outcomes"]["ref"]["output"]
        )


def test_junit_gate_failure_carries_its_slice_row(pytester: pytest.Pytester) -> None:
    _, _, testcases = _junit(pytester)
    props = {p.get("name"): p.get("value") for p in testcases["quantgate.cand::arith"].iter("property")}
    assert json.loads(props["quantgate_slice"] or "")["verdict"] == "REGRESSED"
    passing = {p.get("name"): p.get("value") for p in testcases["quantgate.cand::recall"].iter("property")}
    assert json.loads(passing["quantgate_slice"] or "")["verdict"] == "INCONCLUSIVE"


def test_junit_statistics_are_read_by_a_junit_consumer(pytester: pytest.Pytester) -> None:
    """Parsed with junitparser, as a CI system would: rows as test cases, their statistics as the
    suite's properties (valid in pytest's default xunit2 schema), each case's status per case."""
    junitparser = pytest.importorskip("junitparser")
    _regressed_run(pytester, "--junitxml=junit.xml")
    xml = junitparser.JUnitXml.fromfile(str(pytester.path / "junit.xml"))
    (suite,) = list(xml)
    stats = {p.name: json.loads(p.value) for p in suite.properties()}
    assert set(stats) == {"quantgate::cand::arith", "quantgate::cand::recall", "quantgate::cand::ALL"}
    arith = stats["quantgate::cand::arith"]
    assert arith["verdict"] == "REGRESSED" and arith["n"] == 60 and arith["drop"] == pytest.approx(20 / 60)
    assert arith["ref_accuracy"] == 1.0 and arith["cand_accuracy"] == pytest.approx(40 / 60)
    assert {"upper", "tolerance", "p_adjusted"} <= set(arith)
    cases_ = {(c.classname, c.name): c for c in suite}
    failed = cases_[("quantgate.cand", "arith")]
    assert failed.result and "REGRESSED" in failed.result[0].message
    statuses = {
        name: {p.name: p.value for ps in case.iterchildren(junitparser.Properties) for p in ps}.get(
            "quantgate_status"
        )
        for (classname, name), case in cases_.items()
        if classname == "test_suite"
    }
    assert statuses["test_arith[arith-0]"] == "regressed" and statuses["test_arith[arith-59]"] == "passed"


def test_fixed_regression_leaves_no_failure_in_the_cache(pytester: pytest.Pytester) -> None:
    _regressed_run(pytester)
    cache = pytester.path / ".pytest_cache" / "v" / "cache" / "lastfailed"
    assert set(json.loads(cache.read_text())) == {"::quantgate::cand::arith", "::quantgate::cand::ALL"}
    # The candidate is fixed: nothing fails any more.
    fixed = model(pytester, "cand", {**answers(ARITH), **answers(RECALL)})
    result = pytester.runpytest(*gate_args(spec("ref", pytester.path / "ref.json"), fixed))
    assert result.ret == 0, result.stdout.str()
    assert not cache.exists() or json.loads(cache.read_text()) == {}


# -- xdist ---------------------------------------------------------------------


#: Model facts that differ between runs: timings, the process, and loads (every xdist worker loads
#: each model once, for its own shard).
TIMING_FACTS = ("pid", "load_seconds", "loads", "generate_seconds", "tokens_per_second")


def _without_process_facts(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        label: {k: v for k, v in facts.items() if k not in TIMING_FACTS} for label, facts in models.items()
    }


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_same_gate_with_and_without_xdist(pytester: pytest.Pytester, mode: str) -> None:
    """The gate is computed from test reports, so sharding cannot change it.

    (Three workers, each generating only its shard: test_sharding_plugin.py.)
    """
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    mix = cases("mix", 8)
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", ARITH), Slice("mix", mix), Slice("recall", RECALL))
    )
    ref = model(pytester, "ref", {**answers(ARITH), **answers(mix, wrong=[2, 3]), **answers(RECALL)})
    cand = model(
        pytester,
        "cand",
        {**answers(ARITH, wrong=range(20)), **answers(mix, wrong=[1, 3]), **answers(RECALL)},
        fail_on=[mix[7].prompt],
    )
    args = [*gate_args(ref, cand), f"--quant-report={pytester.path / 'gate.json'}"]
    result = pytester.runpytest(*args, *XDIST_MODES[mode])
    assert result.ret == 1, result.stdout.str()
    data = read_report(pytester.path / "gate.json")
    # What the scripts decide, whatever the mode.
    assert len(data["cases"]) == 78
    assert {k: v for k, v in statuses(data, "cand").items() if k.startswith("mix")} == {
        "mix-0": "passed",
        "mix-1": "regressed",
        "mix-2": "improved",
        "mix-3": "both-failed",
        "mix-4": "passed",
        "mix-5": "passed",
        "mix-6": "passed",
        "mix-7": "error",
    }
    assert {r["slice"]: r["verdict"] for r in data["candidates"][0]["slices"]} == {
        "arith": "REGRESSED",
        "mix": "INCONCLUSIVE",
        "recall": "INCONCLUSIVE",
        "ALL": "REGRESSED",
    }
    assert summary_counts(result) == {
        "failed": 2,
        "passed": 54 + 3,  # and the gate's passing tests: the load, the mix and recall rows
        "errors": 1,
        "regressed": 21,
        "improved": 1,
        "both-failed": 1,
    }
    if mode == "no-xdist":
        return
    # The whole report is the one of a run without xdist, process facts aside.
    baseline = pytester.runpytest(
        *gate_args(ref, cand), f"--quant-report={pytester.path / 'base.json'}", *XDIST_MODES["no-xdist"]
    )
    assert baseline.ret == result.ret
    base = read_report(pytester.path / "base.json")
    assert data["candidates"] == base["candidates"]
    assert data["cases"] == base["cases"]
    assert _without_process_facts(data["models"]) == _without_process_facts(base["models"])
    # The per-worker devices are the only configuration xdist adds.
    workers = {"n0": 0, "n2": 2, "n3": 3}[mode]
    assert sorted(data["config"]["workers"]) == [f"gw{i}" for i in range(workers)]
    assert {k: v for k, v in data["config"].items() if k not in ("report_path", "workers")} == {
        k: v for k, v in base["config"].items() if k not in ("report_path", "workers")
    }
