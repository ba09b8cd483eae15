"""Bad input, faults and interruptions: none may hide a regression, lose a report or end in a traceback.

Each test pins one behaviour of the README's "What happens when…" table, on
scripted ``fake:`` models (``fakes.py``) unless the model itself matters.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .fakes import (
    LOG,
    XDIST_MODES,
    Slice,
    answers,
    cases,
    gate_args,
    generated,
    model,
    prompts,
    read_report,
    statuses,
    suite_source,
    summary_counts,
    table_rows,
)

ARITH = cases("arith", 60)
RECALL = cases("recall", 10)


# -- a check cannot hide a regression ------------------------------------------

SKIPPING_SUITE = """
import pytest
from pytest_quantgate import quant_case, quant_slice

CASES = {cases!r}


@quant_slice("arith")
@quant_case("prompt, expected", CASES, max_new_tokens=8)
def test_arith(prompt, expected, output):
    if not output.strip().isdigit():
        pytest.{how}("not a number")  # decided from the output: means "wrong" here
    assert output.strip() == expected
"""


@pytest.mark.parametrize(
    ("how", "mode"),
    [("skip", "no-xdist"), ("xfail", "no-xdist"), ("skip", "n2")],
    ids=["skip", "xfail", "skip-n2"],
)
def test_a_skip_on_the_candidate_alone_is_its_failure(pytester: pytest.Pytester, how: str, mode: str) -> None:
    """A check that skips only on a wrong output once turned a 100 % regression into "N skipped"."""
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    items = cases("arith", 30)
    pytester.makepyfile(
        test_suite=SKIPPING_SUITE.format(cases=[(c.prompt, c.expected) for c in items], how=how)
    )
    ref = model(pytester, "ref", answers(items))
    cand = model(pytester, "cand", answers(items, wrong=range(30)))  # "wrong": not a number
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", *XDIST_MODES[mode])
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    # (Passed: the gate's load test; failed: its two REGRESSED rows.)
    assert summary_counts(result) == {"regressed": 30, "failed": 2, "passed": 1}
    data = read_report(report)
    assert set(statuses(data, "cand").values()) == {"regressed"}
    assert data["candidates"][0]["verdict"] == "REGRESSED"
    message = data["cases"][0]["outcomes"]["cand"]["message"]
    assert f"output-dependent {how} is treated as a failure (not a number)" in message


@pytest.mark.parametrize("how", ["skip", "xfail"])
def test_a_skip_on_the_reference_skips_the_case_for_every_model(pytester: pytest.Pytester, how: str) -> None:
    items = cases("arith", 30)
    pytester.makepyfile(
        test_suite=SKIPPING_SUITE.format(cases=[(c.prompt, c.expected) for c in items], how=how)
    )
    # The reference gives no number on the first 10 cases; the candidate answers all of them.
    ref = model(pytester, "ref", answers(items, wrong=range(10)))
    cand = model(pytester, "cand", answers(items))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "-ra")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    counted = "skipped" if how == "skip" else "xfailed"
    assert summary_counts(result) == {"passed": 20 + 3, counted: 10}  # + the gate's load and two rows
    if how == "skip":
        result.stdout.fnmatch_lines(["SKIPPED [[]10[]] test_suite.py:*: not a number"])
    data = read_report(report)
    assert list(statuses(data, "cand").values()).count("skipped") == 10
    (gate,) = data["candidates"]
    assert gate["skipped"] == 10 and gate["slices"][-1]["n"] == 20
    result.stdout.fnmatch_lines(["10 case(s) skipped by their check on the reference are left out"])
    # Every selected case ran on every model (the skipped ones too): the report is complete.
    assert data["complete"] is True


def test_a_report_is_written_when_every_case_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        import pytest
        from pytest_quantgate import quant_case

        @pytest.mark.skip(reason="not today")
        @quant_case("prompt", ["a", "b"])
        def test_skipped(prompt, output):
            pass
        """
    )
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", {}), model(pytester, "c", {})), f"--quant-report={report}"
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=2)
    data = read_report(report)
    assert data["cases"] == [] and data["selection"]["skipped"] == 2 and data["selection"]["ran"] == 0
    result.stdout.fnmatch_lines(["quantgate: JSON report (complete) written to *gate.json"])


# -- reports never lie about completeness --------------------------------------

INTERRUPTING_CONFTEST = """
from pytest_quantgate.backends import Backend


class Interrupting(Backend):
    def __init__(self, spec):
        self.label = spec.label

    def generate(self, requests):
        raise KeyboardInterrupt  # Ctrl-C while the model generates

    def describe(self):
        return {{"label": self.label}}


def pytest_quantgate_make_backend(spec, device, dtype):
    if spec.label == "cand":
        {action}
    return None
"""


@pytest.fixture
def stale_report(pytester: pytest.Pytester) -> Path:
    """The report a previous, complete run left behind."""
    path = pytester.path / "out" / "gate.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"complete": True, "stale": True}))
    return path


@pytest.mark.parametrize(
    "action",
    [
        pytest.param("raise KeyboardInterrupt", id="while-loading"),
        pytest.param("return Interrupting(spec)", id="while-generating"),
    ],
)
def test_an_interrupted_run_writes_what_it_has(
    pytester: pytest.Pytester, stale_report: Path, action: str
) -> None:
    pytester.makeconftest(INTERRUPTING_CONFTEST.format(action=action))
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ref = model(pytester, "ref", answers(RECALL))
    cand = model(pytester, "cand", answers(RECALL))  # the conftest's hook takes it over
    result = pytester.runpytest_inprocess(
        *gate_args(ref, cand), f"--quant-report={stale_report}", no_reraise_ctrlc=True
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    data = read_report(stale_report)
    assert "stale" not in data
    assert data["complete"] is False and data["interrupted"] is True
    assert data["selection"]["selected"] == 10 and data["selection"]["ran"] == 0
    assert generated(pytester) == {"ref": prompts(RECALL)}
    result.stdout.fnmatch_lines(["quantgate: JSON report (incomplete) written to *gate.json"])
    # No case was checked on the candidate: it is not evaluated (no verdict made of nothing).
    (cand_gate,) = data["candidates"]
    assert cand_gate["evaluated"] is False and cand_gate["verdict"] is None
    assert "interrupted before any case was checked" in cand_gate["not_evaluated"]
    # What the reference generated before Ctrl-C is kept, unchecked, with its outputs.
    assert len(data["unchecked"]) == len(RECALL)
    assert all(list(e["outputs"]) == ["ref"] for e in data["unchecked"])
    assert sorted(e["outputs"]["ref"]["output"] for e in data["unchecked"]) == sorted(
        c.expected for c in RECALL
    )


def test_an_interrupted_run_says_its_tables_are_partial(
    pytester: pytest.Pytester, stale_report: Path
) -> None:
    # Ctrl-C in the middle of the checks: the cases checked so far are reported, as such.
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", ARITH))
        + "\n\n@quant_case('prompt', ['stop'], max_new_tokens=4)\ndef test_zz_ctrl_c(prompt, output):\n"
        "    raise KeyboardInterrupt\n"
    )
    args = gate_args(
        model(pytester, "ref", answers(ARITH)), model(pytester, "cand", answers(ARITH, wrong=range(30)))
    )
    result = pytester.runpytest_inprocess(*args, f"--quant-report={stale_report}", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    data = read_report(stale_report)
    assert data["complete"] is False and data["interrupted"] is True
    assert data["selection"] == {**data["selection"], "collected": 61, "selected": 61, "ran": 60}
    assert len(data["cases"]) == 60
    # The rows are shown, marked as what they are, and fail nothing.
    result.stdout.fnmatch_lines(
        [
            "*quantgate: cand (fake:cand.json) vs reference ref: REGRESSED*",
            "interrupted: 60 quant case(s) ran *",
        ]
    )
    assert not any(line.startswith("FAILED ::quantgate") for line in result.stdout.lines)


def test_x_stops_early_and_the_report_says_so(pytester: pytest.Pytester) -> None:
    crit = cases("crit", 6)
    pytester.makepyfile(test_suite=suite_source(Slice("crit", crit, critical=True), Slice("recall", RECALL)))
    ref = model(pytester, "ref", {**answers(crit), **answers(RECALL)})
    cand = model(pytester, "cand", {**answers(crit, wrong=[1]), **answers(RECALL)})
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = read_report(report)
    assert data["complete"] is False
    assert data["selection"]["selected"] == 16 and data["selection"]["ran"] == 2
    assert "-x" in data["selection"]["narrowed_by"] and data["selection"]["stopped"]
    result.stdout.fnmatch_lines(["partial run: 2 quant case(s) ran of 16 collected; stopped early*"])


def test_lf_rerun_does_not_pass_for_the_whole_suite(pytester: pytest.Pytester) -> None:
    crit, recall = cases("crit", 6), cases("recall", 34)
    pytester.makepyfile(test_suite=suite_source(Slice("crit", crit, critical=True), Slice("recall", recall)))
    ref = model(pytester, "ref", {**answers(crit), **answers(recall)})
    cand = model(pytester, "cand", {**answers(crit, wrong=[2]), **answers(recall)})
    report = pytester.path / "gate.json"
    first = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}")
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    whole = read_report(report)
    assert whole["complete"] is True and len(whole["cases"]) == 40
    again = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "--lf")
    data = read_report(report)
    assert len(data["cases"]) == 1 and data["complete"] is False
    # --lf collects only what failed: the report does not take that for the suite.
    assert data["selection"] == {**data["selection"], "selected": 1, "ran": 1, "counted": False}
    assert data["selection"]["narrowed_by"] == ["--lf"]
    again.stdout.fnmatch_lines(["partial run: 1 quant case(s) ran, selected by --lf"])
    # Once nothing fails any more, --lf runs everything again: complete.
    fixed = model(pytester, "cand", {**answers(crit), **answers(recall)})
    assert pytester.runpytest(*gate_args(ref, fixed), f"--quant-report={report}").ret == 0
    pytester.runpytest(*gate_args(ref, fixed), f"--quant-report={report}", "--lf")
    assert read_report(report)["complete"] is True


def test_lf_that_selects_every_case_is_a_complete_run(pytester: pytest.Pytester) -> None:
    """--lf whose known failures are elsewhere runs every case: complete, decided by what ran."""
    pytester.makepyfile(test_other="def test_flaky():\n    assert False\n")
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    args = gate_args(model(pytester, "ref", answers(RECALL)), model(pytester, "c", answers(RECALL)))
    report = pytester.path / "gate.json"
    assert pytester.runpytest(*args, f"--quant-report={report}").ret == pytest.ExitCode.TESTS_FAILED
    result = pytester.runpytest("test_suite.py", *args, f"--quant-report={report}", "--lf")
    result.stdout.fnmatch_lines(["run-last-failure: 1 known failures not in selected tests"])
    data = read_report(report)
    n = len(RECALL)
    assert data["selection"] == {**data["selection"], "collected": n, "selected": n, "ran": n}
    assert data["selection"]["narrowed_by"] == [] and data["complete"] is True


def test_dict_and_list_arguments_are_json_in_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        class Opaque:
            def quantgate_key(self):
                return "opaque"

        @quant_case(
            "prompt, state, steps, other",
            [("1+1=", {"store": {"a": 1}}, [1, 2], Opaque())],
            max_new_tokens=2,
        )
        def test_sum(prompt, state, steps, other, output):
            assert output == "2"
        """
    )
    report = pytester.path / "gate.json"
    replies = {"1+1=": "2"}
    pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "c", replies)), f"--quant-report={report}"
    )
    (case,) = read_report(report)["cases"]
    assert case["params"]["state"] == {"store": {"a": 1}} and case["params"]["steps"] == [1, 2]
    assert case["params"]["other"].startswith(
        "<test_dict_and_list_arguments_are_json_in_the_report.Opaque object"
    )


def test_report_gets_the_users_umask(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    args = gate_args(model(pytester, "ref", answers(RECALL)), model(pytester, "c", answers(RECALL)))
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            pytester.runpytest(*args, f"--quant-report={pytester.path / f'{umask}.json'}")
        finally:
            os.umask(old)
        assert (pytester.path / f"{umask}.json").stat().st_mode & 0o777 == mode


def test_a_report_that_cannot_be_written_is_one_clear_error(pytester: pytest.Pytester) -> None:
    # Checked up front, the path can still break during the run: that is an error, not a traceback.
    pytester.makepyfile(
        test_suite=suite_source(Slice("recall", RECALL))
        + "\n\ndef test_zz_breaks_the_report_dir():\n"
        + "    import pathlib\n    pathlib.Path('out').write_text('')\n"
    )
    args = gate_args(model(pytester, "ref", answers(RECALL)), model(pytester, "c", answers(RECALL)))
    result = pytester.runpytest(*args, "--quant-report=out/gate.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["quantgate: could not write the JSON report to *out/gate.json: *"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


# -- validate up front -----------------------------------------------------------


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("quant_tolerance = 1", "ERROR: quantgate: quant_tolerance must be a number in [[]0, 1), got 1 *"),
        ("quant_alpha = x", "ERROR: quantgate: quant_alpha must be a number, got 'x'"),
        ("quant_batch_size = 0", "ERROR: quantgate: quant_batch_size must be at least 1 (or auto), got 0"),
        ("quant_report = .", "ERROR: quantgate: quant_report must name a file, but * is a directory"),
        ("quant_slice_tolerance = arith = 1", "ERROR: quantgate: quant_slice_tolerance: tolerance of slice*"),
    ],
)
def test_bad_ini_values_name_their_key(pytester: pytest.Pytester, ini: str, message: str) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest(*gate_args(model(pytester, "ref", answers(RECALL))))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == result.stderr.lines[:1]
    result.stderr.fnmatch_lines([message])
    assert generated(pytester) == {}


def test_report_path_that_is_a_directory_stops_before_loading(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    pytester.mkdir("out")
    result = pytester.runpytest(*gate_args(model(pytester, "ref", answers(RECALL))), "--quant-report=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: quantgate: --quant-report must name a file, but */out is a directory"]
    )
    assert generated(pytester) == {}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc file system")
def test_a_directory_that_refuses_files_stops_before_loading_naming_the_users_path(
    pytester: pytest.Pytester,
) -> None:
    """/proc passes every permission check for root, yet refuses a new file: probed by making one."""
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", answers(RECALL))), "--quant-report=/proc/x.json"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: quantgate: --quant-report: cannot write /proc/x.json: *"])
    assert ".tmp" not in result.stderr.str() and generated(pytester) == {}


def test_a_device_torch_cannot_use_stops_before_loading(pytester: pytest.Pytester, tiny_ref: Path) -> None:
    torch = pytest.importorskip("torch")
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    device = f"cuda:{torch.cuda.device_count()}"  # one more than there is, on any machine
    result = pytester.runpytest(f"--quant-reference={tiny_ref}", f"--quant-device={device}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: quantgate: --quant-device: device {device} was asked for, but torch sees*"]
    )
    assert "loading" not in result.stdout.str()


def test_automatic_labels_are_short_and_must_differ(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ref = model(pytester, "ref", answers(RECALL))
    a, b = model(pytester, "a", {}).split("=", 1)[1], model(pytester, "b", {}).split("=", 1)[1]
    result = pytester.runpytest(*gate_args(ref, a, b))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: quantgate: two candidates are labelled 'fake': name them with LABEL=SPEC"]
    )
    ok = pytester.runpytest(*gate_args(ref, a))
    ok.stdout.fnmatch_lines(
        ["quantgate: candidates fake:a.json", "*= quantgate: fake:a.json vs reference ref: *"]
    )


# -- prompts beyond the context --------------------------------------------------


def test_a_prompt_beyond_the_context_is_an_error_of_its_case(pytester: pytest.Pytester) -> None:
    long_case = cases("long", 1)[0]
    long_prompt = long_case.prompt + " " * 50_000
    pytester.makepyfile(
        test_suite=suite_source(Slice("recall", RECALL))
        + "\n\n@quant_case('prompt', ["
        + repr(long_prompt)
        + "], max_new_tokens=8)\n"
        "def test_long(prompt, output):\n    pass\n"
    )
    replies = answers(RECALL)
    ref = model(pytester, "ref", replies, context=2048)
    cand = model(pytester, "cand", replies, context=2048)
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary_counts(result) == {"passed": 10 + 3, "errors": 1}  # + the gate's load and two rows
    result.stdout.fnmatch_lines(
        [
            f"*the prompt ({len(long_prompt)} characters) + max_new_tokens (8) = *"
            " exceeds the context of ref (2048*"
        ]
    )
    # Never sent to the model.
    assert generated(pytester) == {"ref": prompts(RECALL), "cand": prompts(RECALL)}
    data = read_report(report)
    assert data["candidates"][0]["errors"] == 1


# -- errors at collection are one line; gate tests can be re-run ---------------------


@pytest.mark.parametrize(
    "decorator",
    ['@quant_slice("s", tolerance=5)', '@quant_slice("s", tolerance=1)', '@quant_slice("ALL")'],
)
def test_marker_errors_are_one_line(pytester: pytest.Pytester, decorator: str) -> None:
    pytester.makepyfile(
        test_x=f"""
        from pytest_quantgate import quant_case, quant_slice

        {decorator}
        @quant_case("prompt", ["a"])
        def test_bad(prompt, output):
            pass
        """
    )
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {})))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "During handling of the above exception" not in out and "Traceback" not in out
    errors = out.split("ERROR collecting test_x.py")[1].split("=== short test summary")[0]
    body = [line for line in errors.splitlines()[1:] if line.strip() and not line.startswith("=")]
    assert len(body) == 1 and body[0].startswith("test_x.py::test_bad: "), errors


def _failed_ids(result: pytest.RunResult) -> list[str]:
    # pytest before 9 prints a path that ends in "/" before "::" ("../::quantgate::..."); both re-run.
    return [
        line.split(" - ")[0].removeprefix("FAILED ").replace("/::", "::")
        for line in result.stdout.lines
        if line.startswith("FAILED ")
    ]


@pytest.mark.parametrize("where", ["rootdir", "subdir"])
def test_a_gate_test_id_is_re_runnable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The id printed for a failed gate row, pasted back, re-runs that row's cases on that candidate."""
    pytester.makeini("[pytest]\n")  # the rootdir, wherever pytest is run from
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    replies = {**answers(ARITH), **answers(RECALL)}
    ref = model(pytester, "ref", replies)
    bad = model(pytester, "bad", {**replies, **answers(ARITH, wrong=range(20))})
    same = model(pytester, "same", replies)
    args = gate_args(ref, bad, same)
    if where == "subdir":
        monkeypatch.chdir(pytester.mkdir("sub"))
    first = pytester.runpytest(*args, str(pytester.path))
    prefix = "" if where == "rootdir" else ".."
    assert _failed_ids(first) == [f"{prefix}::quantgate::bad::arith", f"{prefix}::quantgate::bad::ALL"]
    (pytester.path / LOG).unlink()
    again = pytester.runpytest(*args, _failed_ids(first)[0], f"--quant-report={pytester.path / 'gate.json'}")
    assert again.ret == pytest.ExitCode.TESTS_FAILED, again.stdout.str()
    # Only the arith cases, only on the reference and that candidate.
    assert generated(pytester) == {"ref": prompts(ARITH), "bad": prompts(ARITH)}
    assert _failed_ids(again) == [f"{prefix}::quantgate::bad::arith", f"{prefix}::quantgate::bad::ALL"]
    data = read_report(pytester.path / "gate.json")
    assert [c["label"] for c in data["candidates"]] == ["bad"] and data["complete"] is False
    assert data["selection"]["narrowed_by"] == [_failed_ids(first)[0]]
    # A label that is not a candidate is a usage error.
    wrong = pytester.runpytest(*args, "::quantgate::nope::arith")
    assert wrong.ret == pytest.ExitCode.USAGE_ERROR
    wrong.stderr.fnmatch_lines(
        ["ERROR: quantgate: ::quantgate::nope::... names no candidate (candidates: bad, same)"]
    )


# -- what the terminal shows -----------------------------------------------------


def _summary_section(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.match(r"^=+ quantgate: ", line))
    end = next((i for i, line in enumerate(lines) if "short test summary info" in line), len(lines) - 1)
    return lines[start:end]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_summary_fits_the_terminal(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    long_slice = Slice("constraint_retention_long_name", cases("constraint_retention_long_name", 8))
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL), long_slice))
    replies = {**answers(ARITH), **answers(RECALL), **answers(long_slice.items)}
    cand = {**replies, **answers(ARITH, wrong=range(20))}
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "cand", cand)), "-ra"
    )
    section = _summary_section(result)
    assert section and max(len(line) for line in section) <= columns, "\n".join(section)
    rows = table_rows(result.stdout.str(), "cand")
    (long_name,) = set(rows) - {"arith", "recall", "ALL"}
    # A name too long for 80 columns is cut, visibly.
    assert long_name == "constraint_retention_long_name" if columns == 120 else long_name.endswith("…")
    assert rows == {
        "arith": "REGRESSED",
        "recall": "INCONCLUSIVE",
        long_name: "INCONCLUSIVE",
        "ALL": "REGRESSED",
    }
    header = next(line for line in section if line.startswith("slice "))
    # At 120 columns everything; at 80 the least needed columns go first.
    assert header.split() == (
        ["slice", "n", "ref", "cand", "Δ", "pts", "SE", "drop≤", "tol", "−/+", "p", "verdict"]
        if columns == 120
        else ["slice", "n", "ref", "cand", "Δ", "pts", "drop≤", "tol", "−/+", "verdict"]
    )


def test_bounds_and_notes_say_what_they_mean(pytester: pytest.Pytester) -> None:
    few = cases("few", 3)
    fmt = cases("format", 60)
    pytester.makepyfile(test_suite=suite_source(Slice("few", few), Slice("format", fmt, tolerance=0.0)))
    replies = {**answers(few), **answers(fmt)}
    cand = {**replies, **answers(fmt, wrong=range(5))}
    report = pytester.path / "gate.json"
    args = gate_args(model(pytester, "ref", replies), model(pytester, "cand", cand))
    result = pytester.runpytest(*args, f"--quant-report={report}")
    out = result.stdout.str()
    rows = {r["slice"]: r for r in read_report(report)["candidates"][0]["slices"]}
    # The bound is printed without a sign, rounded up.
    bound = re.search(r"^format\s+60\s+\S+\s+\S+\s+-8\.3\s+\S+\s+(\S+)\s+0\.0\s", out, re.M)
    assert bound is not None and not bound.group(1).startswith("+")
    assert float(bound.group(1)) >= 100 * rows["format"]["upper"]
    text = " ".join(line.strip() for line in _summary_section(result))

    def detects(row: dict) -> str:
        # A slice too small to detect anything says so, not "detects drops ≥ inf" (JSON: null).
        mdd = row["mdd"]
        return "too few cases to detect any drop" if mdd is None else f"detects drops ≥ {100 * mdd:.1f} pts"

    assert "inf" not in out
    few, fmt = rows["few"], rows["format"]
    assert f"few: {detects(few)}; ~{few['n_needed']} cases would show the drop < 2.0 pts" in text
    # A drop beyond the margin: the n would confirm it, not show the slice within it.
    assert fmt["n_needed_for"] == "REGRESSED"
    assert f"format: {detects(fmt)}; ~{fmt['n_needed']} cases would confirm a drop > 0.0 pts" in text


def test_each_regressed_case_is_shown_once_with_its_prompt(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    cand = answers(ARITH, wrong=range(20))
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", answers(ARITH)), model(pytester, "cand", cand))
    )
    out = result.stdout.str()
    # Listed once (not under each failed row too), with the prompt, the arguments and both outputs.
    assert out.count("test_suite.py::test_arith[arith-0]") == 1
    result.stdout.fnmatch_lines(
        [
            "  R test_suite.py::test_arith[[]arith-0[]]",
            f"      prompt    {ARITH[0].prompt!r}",
            "      expected  '1'",
            "      ref       '1'",
            "      cand      'wrong'",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "  20 regressed, 0 improved",
            "  (regressed cases: see the quantgate summary, with prompts and outputs)",
        ]
    )
