"""The runner and case records, with a scripted in-memory backend."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.base import Backend, GenerationRequest
from pytest_quantgate.core.cases import CaseSpec
from pytest_quantgate.core.identity import case_key
from pytest_quantgate.core.markers import parse_quant_case, parse_slice_marker
from pytest_quantgate.core.records import (
    CaseRecord,
    ModelOutcome,
    Status,
    check_location,
    classify,
    resolve_skips,
    run_check,
    worst_status,
)
from pytest_quantgate.core.runner import run_cases, truncate_at_stop
from pytest_quantgate.values.prompts import GenerationSettings, normalize_prompt


@dataclass
class ScriptedBackend(Backend):
    """Replies from a dict; records the batches it was given."""

    replies: dict[str, str]
    label: str = "scripted"
    fail_on: set[str] = field(default_factory=set)
    batches: list[list[str]] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        prompts = [str(r.prompt) for r in requests]
        self.batches.append(prompts)
        if any(p in self.fail_on for p in prompts):
            raise ValueError(f"cannot tokenize {prompts}")
        return [self.replies.get(p, "?") for p in prompts]

    def describe(self) -> dict[str, Any]:
        return {"label": self.label}


def _case(prompt: str, **settings: Any) -> CaseSpec:
    gs = GenerationSettings(**settings)
    return CaseSpec(
        key=case_key("t.py::test", {"p": prompt}, prompt, gs),
        nodeid=f"t.py::test[{prompt}]",
        prompt=prompt,
        settings=gs,
    )


def test_batches_group_settings_and_sort_by_length() -> None:
    backend = ScriptedBackend({"a": "1\nx", "bbb": "2", "cc": "3"})
    cases = [_case("a", stop=("\n",)), _case("bbb", stop=("\n",)), _case("cc", max_new_tokens=3)]
    runs = run_cases(backend, cases, batch_size=8)
    assert sorted(backend.batches) == sorted([["bbb", "a"], ["cc"]])
    assert runs[cases[0].key].output == "1"  # truncated at the stop string
    assert runs[cases[1].key].output == "2"
    assert all(r.error is None for r in runs.values())


def test_batch_size_is_respected_and_progress_reaches_total() -> None:
    backend = ScriptedBackend({})
    cases = [_case("x" * i) for i in range(1, 8)]
    seen: list[tuple[int, int]] = []
    run_cases(backend, cases, batch_size=3, on_progress=lambda d, t, step: seen.append((d, t)))
    assert [len(b) for b in backend.batches] == [3, 3, 1]
    assert seen[-1] == (7, 7)


@dataclass
class ShortContextBackend(ScriptedBackend):
    """Takes prompts of at most ``limit`` characters, ``max_new_tokens`` included."""

    limit: int = 10

    def check_requests(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        return [
            None if len(str(r.prompt)) + r.settings.max_new_tokens <= self.limit else f"{r.prompt} too long"
            for r in requests
        ]


def test_a_refused_request_is_its_case_error_and_never_generated() -> None:
    backend = ShortContextBackend({"short": "ok"})
    cases = [_case("short", max_new_tokens=4), _case("x" * 50, max_new_tokens=4)]
    runs = run_cases(backend, cases)
    assert runs[cases[0].key].output == "ok" and runs[cases[0].key].error is None
    assert runs[cases[1].key].error == f"{'x' * 50} too long" and not runs[cases[1].key].turns
    assert backend.batches == [["short"]]


def test_an_interrupt_is_never_a_case_error() -> None:
    class Interrupted(ScriptedBackend):
        def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cases(Interrupted({}), [_case("a"), _case("b")])


def test_one_bad_prompt_errors_only_its_case() -> None:
    backend = ScriptedBackend({"good": "ok"}, fail_on={"bad"})
    cases = [_case("good"), _case("bad")]
    runs = run_cases(backend, cases, batch_size=4)
    assert runs[cases[0].key].output == "ok" and runs[cases[0].key].error is None
    assert "cannot tokenize" in (runs[cases[1].key].error or "")


def test_multi_round_driver_is_step_synchronous() -> None:
    @dataclass
    class Twice:
        prompt: str
        step_no: int = 0
        state: Any = None

        def start(self) -> str:
            return self.prompt

        def step(self, reply: str) -> str | None:
            self.step_no += 1
            return None if self.step_no == 2 else self.prompt + reply

    backend = ScriptedBackend({"a": "1", "b": "2", "a1": "3", "b2": "4"})
    cases = [_case("a"), _case("b")]
    runs = run_cases(backend, cases, make_driver=lambda c: Twice(str(c.prompt)))
    assert backend.batches == [["a", "b"], ["a1", "b2"]]
    assert [t.reply for t in runs[cases[0].key].turns] == ["1", "3"]


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [("42\nfoo", ("\n",), "42"), ("abc", (), "abc"), ("a;b\nc", ("\n", ";"), "a"), ("", ("x",), "")],
)
def test_truncate_at_stop(text: str, stop: tuple[str, ...], expected: str) -> None:
    assert truncate_at_stop(text, stop) == expected


@pytest.mark.parametrize(
    ("ref", "cand", "status"),
    [
        ("pass", "pass", "passed"),
        ("pass", "fail", "regressed"),
        ("fail", "pass", "improved"),
        ("fail", "fail", "both-failed"),
        ("error", "pass", "error"),
        ("pass", "error", "error"),
        # A check that skipped on the reference skips the case, whatever the candidate did.
        ("skip", "pass", "skipped"),
        ("xfail", "fail", "skipped"),
        ("skip", "error", "skipped"),
    ],
)
def test_classify(ref: Any, cand: Any, status: str) -> None:
    assert classify(ref, cand) == status


def test_worst_status_orders_by_severity() -> None:
    assert worst_status([Status.PASSED, Status.IMPROVED, Status.REGRESSED]) is Status.REGRESSED
    assert worst_status([Status.PASSED, Status.ERROR]) is Status.ERROR
    assert worst_status([]) is Status.PASSED


@pytest.mark.parametrize(
    ("status", "critical", "fails"),
    [
        (Status.ERROR, False, True),
        (Status.FAILED, False, True),
        (Status.REGRESSED, False, False),
        (Status.REGRESSED, True, True),
        (Status.IMPROVED, True, False),
        (Status.BOTH_FAILED, True, False),
        (Status.PASSED, True, False),
    ],
)
def test_which_statuses_fail_the_case_test(status: Status, critical: bool, fails: bool) -> None:
    assert status.fails_test(critical=critical) is fails


def test_run_check_outcomes() -> None:
    def check(output: str) -> None:
        if output == "boom":
            raise KeyError("missing")
        assert output == "42", "wrong answer"

    assert run_check(check, {"output": "42"}) == ("pass", None)
    assert run_check(check, {"output": "41"})[0] == "fail"
    outcome, message = run_check(check, {"output": "boom"})
    assert outcome == "error" and "KeyError" in (message or "")


class _Skipped(Exception):
    pass


class _XFailed(AssertionError):  # as pytest's: an xfail is a kind of failure
    pass


def _line_of(marker: str) -> int:
    """The line of this file that ends with ``# marker``."""
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# {marker}"))


def _fields(text: str) -> dict[str, str]:
    return dict(part.split("=") for part in text.split(","))  # in-helper


def test_an_error_of_a_check_names_its_innermost_line_in_the_checks_file() -> None:
    def check(output: str) -> None:
        got = _fields(output)
        json.loads(got["json"])  # in-library
        assert got["total"] == "3"  # in-check

    assert run_check(check, {"output": "json=1"}) == ("error", f"KeyError: 'total'{_at('in-check')}")
    # Raised in a helper of the same file: the helper's line, the innermost of the file.
    outcome, message = run_check(check, {"output": "x"})
    assert outcome == "error" and message == f"ValueError: {_error_of(_fields, 'x')}{_at('in-helper')}"
    # Raised inside a library: the check's line that called it.
    outcome, message = run_check(check, {"output": "json={"})
    assert outcome == "error" and "JSONDecodeError: Expecting" in (message or "")
    assert (message or "").endswith(_at("in-library"))


def test_a_check_is_looked_through_its_decorators_and_a_check_with_no_code_has_no_location() -> None:
    def check(text: str) -> None:
        _fields(text)

    wrapped = functools.wraps(check)(functools.partial(check))  # no code of its own, __wrapped__ has
    assert run_check(wrapped, {"text": "x"})[1] == f"ValueError: {_error_of(_fields, 'x')}{_at('in-helper')}"
    assert check_location(functools.partial(check), ValueError()) is None
    assert run_check(functools.partial(_fields), {"text": "x"})[1] == f"ValueError: {_error_of(_fields, 'x')}"


def _at(marker: str) -> str:
    """`` (test_runner_cases.py:N)``: the location of the line marked ``# marker``."""
    return f" ({Path(__file__).name}:{_line_of(marker)})"


def _error_of(function: Callable[..., Any], *args: Any) -> str:
    try:
        function(*args)
    except Exception as exc:
        return str(exc)
    raise AssertionError("it did not raise")


def test_run_check_reports_skips_and_xfails() -> None:
    def check(output: str) -> None:
        if output == "skip":
            raise _Skipped("not for this output")
        if output == "xfail":
            raise _XFailed("known bad")
        assert output == "42"

    kinds = {"skip_types": (_Skipped,), "xfail_types": (_XFailed,)}
    assert run_check(check, {"output": "skip"}, **kinds) == ("skip", "not for this output")
    assert run_check(check, {"output": "xfail"}, **kinds) == ("xfail", "known bad")
    assert run_check(check, {"output": "41"}, **kinds)[0] == "fail"


def test_a_skip_means_the_same_for_every_model() -> None:
    ref_ok = {"ref": ModelOutcome("pass", "42"), "c": ModelOutcome("skip", "?", "not an answer")}
    resolved = resolve_skips(ref_ok, "ref")
    # Skipped on a candidate only: a failure of that candidate, saying why.
    assert resolved["c"].outcome == "fail" and resolved["c"].output == "?"
    assert "output-dependent skip is treated as a failure (not an answer)" in (resolved["c"].message or "")
    xfail = resolve_skips({"ref": ModelOutcome("fail"), "c": ModelOutcome("xfail", "", "r")}, "ref")
    assert xfail["c"].outcome == "fail" and "xfail" in (xfail["c"].message or "")
    # Skipped on the reference: left as it is, and the case is skipped for everyone.
    ref_skip = {"ref": ModelOutcome("skip", "", "why"), "c": ModelOutcome("pass")}
    assert resolve_skips(ref_skip, "ref") == ref_skip


def _record(ref: Any, cands: dict[str, Any], unavailable: dict[str, str] | None = None) -> CaseRecord:
    return CaseRecord(
        key="k",
        nodeid="t.py::test[1]",
        slices=("s",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes={"ref": ModelOutcome(*ref), **{k: ModelOutcome(*v) for k, v in cands.items()}},
        unavailable=unavailable or {},
    )


@pytest.mark.parametrize(
    ("record", "outcome"),
    [
        (_record(("pass",), {"c": ("fail",)}), ("pass", None)),
        (_record(("error", "", "boom"), {"c": ("pass",)}), ("fail", None)),
        (_record(("skip", "", "why"), {"c": ("fail",)}), ("skip", "why")),
        (_record(("xfail", "", "known"), {"c": ("pass",)}), ("xfail", "known")),
        (_record(("fail",), {}), ("fail", None)),  # the reference alone: its own outcome
        # Candidates given, none loaded: nothing to compare, whatever the reference did.
        (_record(("fail",), {}, {"c": "oom"}), ("skip", "quantgate: nothing to compare: candidate c ...")),
        (_record(("error", "", "x"), {}, {"c": "oom"}), ("fail", None)),
        # One of two loaded: the case is judged on that one.
        (_record(("pass",), {"c": ("pass",)}, {"d": "oom"}), ("pass", None)),
    ],
)
def test_what_the_case_test_does(record: CaseRecord, outcome: tuple[str, str | None]) -> None:
    got = record.test_outcome
    if outcome[1] and outcome[1].endswith("..."):
        assert got[0] == outcome[0] and (got[1] or "").startswith(outcome[1][:-3])
    else:
        assert got == outcome


def test_record_round_trips_through_json() -> None:
    rec = CaseRecord(
        key="k",
        nodeid="t.py::test[1]",
        slices=("arith",),
        cluster="c1",
        critical=True,
        reference="ref",
        outcomes={"ref": ModelOutcome("pass", "42"), "nf4": ModelOutcome("fail", "41", "AssertionError")},
        tolerances={"arith": 0.0},
        prompt="6*7=",
        params={"expected": "'42'"},
        unavailable={"bad": "cannot load bad from /m:\nsecond line"},
    )
    back = CaseRecord.from_json(rec.to_json())
    assert back == rec
    assert back.statuses == {"nf4": "regressed"} and back.worst == "regressed"


def test_case_key_ignores_ids_but_not_content() -> None:
    gs = GenerationSettings()
    k = case_key("t.py::test", {"p": "x"}, "x", gs)
    assert k == case_key("t.py::test", {"p": "x"}, "x", gs)
    assert k != case_key("t.py::test", {"p": "y"}, "y", gs)
    assert k != case_key("t.py::test", {"p": "x"}, "x", GenerationSettings(max_new_tokens=3))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("prompt",), {}, "two positional arguments"),
        (("prompt", ["a"]), {"max_tokens": 3}, "unknown argument"),
        (("question", ["a"]), {}, "prompt argument 'prompt' is not among"),
        (("prompt", ["a"]), {"max_new_tokens": 0}, "positive integer"),
        (("prompt", ["a"]), {"stop": [""]}, "non-empty strings"),
        (("prompt", ["a"]), {"critical": "yes"}, "True or False"),
        (("prompt", ["a"]), {"cluster": "nope"}, "cluster='nope'"),
    ],
)
def test_parse_quant_case_rejects(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_quant_case(args, kwargs)


def test_parse_quant_case_accepts() -> None:
    m = parse_quant_case(("prompt, expected", iter([("1+1=", "2")])), {"stop": "\n", "max_new_tokens": 4})
    assert m.argnames == ("prompt", "expected") and m.argvalues == [("1+1=", "2")]
    assert m.settings == GenerationSettings(4, ("\n",), None)


def test_slice_marker_and_prompts() -> None:
    assert parse_slice_marker(("a", "b"), {"tolerance": 0}) == (("a", "b"), 0.0)
    bad: list[tuple[tuple[str, ...], dict[str, float]]] = [
        ((), {}),
        (("ALL",), {}),
        (("a",), {"tolerance": 2}),
        (("a",), {"tol": 0.1}),
    ]
    for args, kwargs in bad:
        with pytest.raises(ValueError):
            parse_slice_marker(args, kwargs)
    assert normalize_prompt("hi") == "hi"
    msgs = normalize_prompt([{"role": "user", "content": "hi"}])
    assert isinstance(msgs, tuple)
    with pytest.raises(ValueError):
        normalize_prompt(3)
