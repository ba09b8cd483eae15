"""Multi-step Trajectory cases end to end, with ``pytester`` on scripted ``fake:`` models.

The suite is the issue's own example: ``Echo`` shows the model the text so
far and appends the first two characters of each reply. A script maps each
text the model is shown to its reply, so where a candidate's path parts from
the reference's is decided in advance.
"""

from __future__ import annotations

import json

import pytest

from .fakes import gate_args, model, read_report, statuses, summary_counts

ECHO = """
import pytest
from pytest_quantgate import Trajectory, quant_case, quant_slice


class Echo(Trajectory):
    max_steps = 4
    def __init__(self, start): self.start = start
    def initial_state(self): return {"text": self.start, "got": []}
    def render(self, state): return state["text"]
    def apply(self, state, reply):
        return {"text": state["text"] + reply[:2], "got": state["got"] + [reply[:2]]}
    def done(self, state): return len(state["got"]) >= 4
"""

CHAIN = (
    ECHO
    + """

@quant_slice("chain")
@quant_case("case, expected", [(Echo("ab"), ["cd", "ef", "gh", "ij"])], prompt="case", max_new_tokens=3)
def test_chain(case, expected, final_state, transcript):
    assert final_state["got"] == expected
"""
)

#: The reference's path: every text it is shown -> its reply.
REFERENCE = {"ab": "cd", "abcd": "ef", "abcdef": "gh", "abcdefgh": "ij"}
#: A candidate whose path parts at step 3 ("xx" instead of "gh").
PARTS_AT_3 = {**REFERENCE, "abcdef": "xx", "abcdefxx": "yy"}


def test_the_issue_example_runs_and_shows_where_the_paths_parted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_chain=CHAIN)
    report = pytester.path / "gate.json"
    ref, cand = model(pytester, "ref", REFERENCE), model(pytester, "q", PARTS_AT_3, default="zz")
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "-p", "no:xdist")
    data = read_report(report)
    assert statuses(data, "q") == {"case0-expected0": "regressed"}
    (case,) = data["cases"]
    assert case["trajectory"] is True
    assert case["divergence"] == {"q": {"step": 3, "reference": "gh", "candidate": "xx", "same_input": True}}
    ref_out, cand_out = case["outcomes"]["ref"], case["outcomes"]["q"]
    assert ref_out["final_state"] == {"text": "abcdefghij", "got": ["cd", "ef", "gh", "ij"]}
    assert cand_out["final_state"]["got"] == ["cd", "ef", "xx", "yy"]
    assert [t["prompt"] for t in ref_out["transcript"]] == ["ab", "abcd", "abcdef", "abcdefgh"]
    assert [t["reply"] for t in cand_out["transcript"]] == ["cd", "ef", "xx", "yy"]
    assert ref_out["output"] == "ij" and cand_out["output"] == "yy"
    # The summary's regressed case leads with where the candidate left the reference's path.
    result.stdout.fnmatch_lines(
        [
            "  R test_chain.py::test_chain[[]case0-expected0[]]",
            "      parted at step 3 of 4:",
            "      prompt    'abcdef'",
            "      ref       'gh'",
            "      q         'xx'",
        ],
        consecutive=True,
    )


def test_the_body_gets_output_transcript_and_final_state(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_body=ECHO
        + """

@quant_case("case", [Echo("ab")], max_new_tokens=3)
def test_body(case, output, transcript, final_state):
    assert output == "ij"
    pairs = [(p, r) for p, r in transcript]
    assert pairs == [("ab", "cd"), ("abcd", "ef"), ("abcdef", "gh"), ("abcdefgh", "ij")]
    assert transcript[0].prompt == "ab" and transcript[-1].reply == "ij"
    assert final_state == {"text": "abcdefghij", "got": ["cd", "ef", "gh", "ij"]}
"""
    )
    ref = model(pytester, "ref", REFERENCE)
    result = pytester.runpytest(*gate_args(ref, model(pytester, "same", REFERENCE)), "-p", "no:xdist")
    result.assert_outcomes(passed=1 + 2)  # and the gate's tests: the candidate's load, its ALL row


def test_a_step_apply_rejects_fails_the_model_there_and_other_exceptions_are_errors(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_steps=ECHO
        + """

class Strict(Echo):
    def apply(self, state, reply):
        if reply == "!!":
            raise RuntimeError("environment broke")
        assert reply[:2].isalpha(), f"not letters: {reply!r}"
        return super().apply(state, reply)


@quant_case("case", [pytest.param(Strict("ab"), id="strict"), pytest.param(Strict("mn"), id="broken")],
            max_new_tokens=3)
def test_steps(case, final_state):
    assert len(final_state["got"]) == 4
"""
    )
    replies = {**REFERENCE, "mn": "op", "mnop": "qr", "mnopqr": "st", "mnopqrst": "uv"}
    cand = {**replies, "abcd": "12", "mnop": "!!"}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", cand)),
        f"--quant-report={report}",
        "-p",
        "no:xdist",
    )
    data = read_report(report)
    assert statuses(data, "q") == {"strict": "regressed", "broken": "error"}
    outcomes = {c["nodeid"].split("[")[1][:-1]: c["outcomes"]["q"] for c in data["cases"]}
    assert outcomes["strict"]["outcome"] == "fail"
    assert outcomes["strict"]["message"] == "step 2: not letters: '12'"
    assert outcomes["strict"]["final_state"] == {"text": "abcd", "got": ["cd"]}  # before the rejected step
    assert outcomes["broken"]["outcome"] == "error"
    assert "RuntimeError: environment broke" in outcomes["broken"]["message"]
    assert summary_counts(result) == {"regressed": 1, "errors": 1, "passed": 2}  # the gate's load, ALL


def test_a_state_that_is_not_json_is_one_clear_error_naming_the_case(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sets=ECHO
        + """

class Sets(Echo):
    def apply(self, state, reply):
        return {"text": state["text"] + reply, "got": state["got"] + [reply], "seen": {reply}}


class BadStart(Echo):
    def initial_state(self):
        return {"text": self.start, "got": [], "when": object()}


@quant_case("case", [pytest.param(Sets("ab"), id="sets")], max_new_tokens=3)
def test_sets(case, final_state):
    pass


@quant_case("case", [pytest.param(BadStart("ab"), id="start")], max_new_tokens=3)
def test_start(case, final_state):
    pass
"""
    )
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", REFERENCE), model(pytester, "q", REFERENCE)), "-p", "no:xdist"
    )
    result.assert_outcomes(failed=1, errors=1, passed=2)  # passed: the gate's load and ALL row
    result.stdout.fnmatch_lines(
        [
            "*test_sets.py::test_sets[[]sets[]]*",
            "*TypeError: the state after step 1 is not JSON-serialisable*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "test_sets.py::test_start[[]start[]]: cannot build the quant case: "
            "TypeError: the state of initial_state() is not JSON-serialisable*"
        ]
    )


def test_a_trajectory_is_found_without_prompt_and_a_plain_test_keeps_working(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_mixed=ECHO
        + """

@quant_slice("chain")
@quant_case("case, expected", [(Echo("ab"), "ij")], max_new_tokens=3)
def test_chain(case, expected, output):
    assert output == expected


@quant_slice("plain")
@quant_case("prompt, expected", [("2+2=", "4")], max_new_tokens=3)
def test_plain(prompt, expected, output):
    assert output == expected
"""
    )
    replies = {**REFERENCE, "2+2=": "4"}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        f"--quant-report={report}",
        "-p",
        "no:xdist",
    )
    result.assert_outcomes(passed=2 + 4)  # and the gate's: the load, the chain, plain and ALL rows
    data = read_report(report)
    kinds = {c["nodeid"].split("::")[1].split("[")[0]: c.get("trajectory", False) for c in data["cases"]}
    assert kinds == {"test_chain": True, "test_plain": False}
    plain = next(c for c in data["cases"] if not c.get("trajectory"))
    assert "final_state" not in plain["outcomes"]["ref"]


def test_chat_message_trajectories_record_what_each_model_was_fed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_chat="""
from pytest_quantgate import Trajectory, quant_case


class Chat(Trajectory):
    max_steps = 2
    def initial_state(self): return {"messages": [{"role": "user", "content": "hi"}]}
    def render(self, state): return state["messages"]
    def apply(self, state, reply):
        return {"messages": state["messages"] + [{"role": "assistant", "content": reply},
                                                 {"role": "user", "content": "again"}]}


@quant_case("case", [Chat()], max_new_tokens=5)
def test_chat(case, transcript):
    assert [r for _, r in transcript] == ["hello", "bye"]
"""
    )
    first = [{"content": "hi", "role": "user"}]
    second = [*first, {"content": "hello", "role": "assistant"}, {"content": "again", "role": "user"}]
    replies = {json.dumps(first, sort_keys=True): "hello", json.dumps(second, sort_keys=True): "bye"}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", replies), model(pytester, "q", replies)),
        f"--quant-report={report}",
        "-p",
        "no:xdist",
    )
    result.assert_outcomes(passed=1 + 2)  # and the gate's tests: the candidate's load, its ALL row
    (case,) = read_report(report)["cases"]
    fed = {label: [t["rendered"] for t in o["transcript"]] for label, o in case["outcomes"].items()}
    assert fed["ref"] == fed["q"] == [json.dumps(first, sort_keys=True), json.dumps(second, sort_keys=True)]
    assert case["outcomes"]["ref"]["transcript"][1]["prompt"] == second
