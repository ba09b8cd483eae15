"""Flags and specs that mislead, and a CI job that forgets them (issue 17, items 3 and 4).

A second ``--quant-reference``, a mistyped scheme or option, and a run with
no reference at all once went through quietly: the first gated the wrong
model, the second said a directory was missing, the third went green with
every quant case skipped. Each now says what happened in one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .fakes import (
    XDIST_MODES,
    Slice,
    answers,
    cases,
    gate_args,
    generated,
    model,
    suite_source,
    summary_counts,
)

RECALL = cases("recall", 10)

#: The summary's note when quant cases skipped for want of a reference.
NO_REFERENCE_NOTE = (
    "quantgate: no reference model given: 10 quant cases skipped; "
    "give --quant-reference (or quant_reference) to gate them"
)
#: The usage error of ``quant_require_reference = true`` without a reference.
REQUIRED = (
    "ERROR: quantgate: 10 quant cases collected but no reference model given, and "
    "quant_require_reference is true: give --quant-reference (or quant_reference)"
)


def _one_error_line(result: pytest.RunResult) -> list[str]:
    """The lines of stderr that say something: a usage error is exactly one."""
    return [line for line in result.stderr.lines if line.strip()]


def _checkpoint(pytester: pytest.Pytester, name: str) -> Path:
    """A directory that passes for a checkpoint (nothing loads it: specs fail before any model does)."""
    path = pytester.path / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


# -- a second --quant-reference ------------------------------------------------


def test_a_second_reference_is_a_usage_error_naming_both(pytester: pytest.Pytester) -> None:
    """tiny-ref was once gated against tiny-agent, the last flag given, and "improved"."""
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    first = model(pytester, "ref", answers(RECALL))
    second = model(pytester, "agent", answers(RECALL))
    cand = model(pytester, "cand", answers(RECALL))
    result = pytester.runpytest(f"--quant-reference={first}", *gate_args(second, cand))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    given = f"({first!r} and {second!r})"
    assert _one_error_line(result) == [
        f"ERROR: quantgate: --quant-reference given twice {given}: give one reference model"
    ]
    assert generated(pytester) == {}


def test_a_reference_in_addopts_and_on_the_command_line_is_two_flags(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    first = model(pytester, "ref", answers(RECALL))
    second = model(pytester, "agent", answers(RECALL))
    pytester.makeini(f"[pytest]\naddopts = --quant-reference={first}\n")
    result = pytester.runpytest(f"--quant-reference={second}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: quantgate: --quant-reference given twice (*ref.json* and *agent.json*)*"]
    )


def test_an_ini_reference_and_one_flag_is_fine_and_the_flag_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ini_ref = model(pytester, "ref", answers(RECALL))
    flag_ref = model(pytester, "agent", answers(RECALL))
    pytester.makeini(f"[pytest]\nquant_reference = {ini_ref}\n")
    result = pytester.runpytest(f"--quant-reference={flag_ref}", "-p", "no:xdist")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["quantgate: reference agent (fake:agent.json)"])
    assert set(generated(pytester)) == {"agent"}


# -- a spec's slip is named, not taken for a path ------------------------------


@pytest.mark.parametrize(
    ("flag", "spec", "message"),
    [
        (
            "--quant-candidate",
            "rtn2g128:models/tiny-ref?bitz=4",
            "scheme rtn2g128 takes no ?options ('bitz=4' in model spec 'rtn2g128:models/tiny-ref?bitz=4'; "
            "rtn's options are in its name: rtn<bits 1-8>[g<group>])",
        ),
        (
            "--quant-candidate",
            "BNB-NF4:models/tiny-ref",
            "unknown scheme 'BNB-NF4' in model spec 'BNB-NF4:models/tiny-ref' (did you mean 'bnb-nf4'?)",
        ),
        (
            "--quant-candidate",
            "gptq:models/tiny-ref?bitz=4",
            "option 'bitz=4' is not one of bits, group_size, sym, desc_act in model spec "
            "'gptq:models/tiny-ref?bitz=4' (did you mean 'bits'?)",
        ),
        (
            "--quant-reference",
            "Fake:ref.json",
            "unknown scheme 'Fake' in model spec 'Fake:ref.json' (did you mean 'fake'?)",
        ),
    ],
    ids=["option-on-rtn", "scheme-case", "option-name", "reference-scheme"],
)
def test_a_mistyped_scheme_or_option_is_named_with_its_close_match(
    pytester: pytest.Pytester, flag: str, spec: str, message: str
) -> None:
    """These once said "model directory not found: .../tiny-ref?bitz=4"."""
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    _checkpoint(pytester, "models/tiny-ref")
    ref = model(pytester, "ref", answers(RECALL))
    args = [f"--quant-reference={spec}"] if flag == "--quant-reference" else gate_args(ref, spec)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert _one_error_line(result) == [f"ERROR: quantgate: {message}"]
    assert "model directory not found" not in result.stderr.str()
    assert generated(pytester) == {}


# -- no reference: a note, or with quant_require_reference a usage error --------


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_without_a_reference_the_summary_says_the_cases_skipped(pytester: pytest.Pytester, mode: str) -> None:
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    result = pytester.runpytest(*XDIST_MODES[mode])
    assert result.ret == pytest.ExitCode.OK
    assert summary_counts(result) == {"skipped": 10}
    assert [line for line in result.stdout.lines if line.startswith("quantgate:")] == [NO_REFERENCE_NOTE]


@pytest.mark.parametrize("ini", ["", "quant_require_reference = false"])
def test_without_quant_cases_there_is_nothing_to_say(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest("-p", "no:xdist")
    assert result.ret == pytest.ExitCode.OK
    assert not [line for line in result.stdout.lines if line.startswith("quantgate:")]


@pytest.mark.parametrize("mode", ["no-xdist", "n0", "n2"])
def test_require_reference_makes_collected_quant_cases_a_usage_error(
    pytester: pytest.Pytester, mode: str
) -> None:
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    pytester.makepyfile(
        test_suite=suite_source(Slice("recall", RECALL)), test_plain="def test_plain():\n    pass\n"
    )
    pytester.makeini("[pytest]\nquant_require_reference = true\n")
    result = pytester.runpytest(*XDIST_MODES[mode])
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert _one_error_line(result) == [REQUIRED]
    assert "passed" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()


def test_require_reference_is_decided_on_the_quant_cases_collected(pytester: pytest.Pytester) -> None:
    """No quant case, none selected, or only listed: nothing would pass unchecked, so nothing is refused."""
    pytester.makepyfile(
        test_suite=suite_source(Slice("recall", RECALL)), test_plain="def test_plain():\n    pass\n"
    )
    pytester.makeini("[pytest]\nquant_require_reference = true\n")
    only_plain = pytester.runpytest("-p", "no:xdist", "test_plain.py")
    assert only_plain.ret == pytest.ExitCode.OK
    deselected = pytester.runpytest("-p", "no:xdist", "-k", "plain")
    assert deselected.ret == pytest.ExitCode.OK and summary_counts(deselected) == {
        "passed": 1,
        "deselected": 10,
    }
    listed = pytester.runpytest("-p", "no:xdist", "--collect-only", "-q")
    assert listed.ret == pytest.ExitCode.OK
    # With a reference the gate runs as usual.
    gated = pytester.runpytest("-p", "no:xdist", *gate_args(model(pytester, "ref", answers(RECALL))))
    assert gated.ret == pytest.ExitCode.OK and summary_counts(gated) == {"passed": 11}
