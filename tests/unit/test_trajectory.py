"""Trajectories: the step-synchronous runner, state checks, identity, divergence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pytest_quantgate.backends.base import Backend, GenerationRequest
from pytest_quantgate.core.cases import CaseSpec, build_case
from pytest_quantgate.core.identity import stable_repr
from pytest_quantgate.core.markers import parse_quant_case
from pytest_quantgate.core.records import CaseRecord, ModelOutcome, divergence
from pytest_quantgate.core.runner import run_cases
from pytest_quantgate.core.trajectory import Trajectory, TrajectoryDriver
from pytest_quantgate.values.prompts import GenerationSettings


class Count(Trajectory):
    """Asks for the next number ``steps`` times; the model must reply ``n+1``."""

    max_steps = 8

    def __init__(self, name: str, steps: int, strict: bool = False):
        self.name = name
        self.steps = steps
        self.strict = strict

    def initial_state(self) -> dict[str, Any]:
        return {"n": 0, "said": []}

    def render(self, state: Any) -> str:
        return f"{self.name}:{state['n']}"

    def apply(self, state: Any, reply: str) -> Any:
        if self.strict:
            assert reply == str(state["n"] + 1), f"expected {state['n'] + 1}, got {reply!r}"
        state["said"].append(reply)  # in place on purpose: the runner must isolate states
        state["n"] += 1
        return state

    def done(self, state: Any) -> bool:
        return bool(state["n"] >= self.steps)


class Recorder(Backend):
    """A backend that records every batch and replies by a rule."""

    label = "rec"

    def __init__(self, reply: Callable[[str], str] = lambda p: str(int(p.split(":")[1]) + 1)):
        self.batches: list[list[str]] = []
        self.reply = reply

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        prompts = [str(r.prompt) for r in requests]
        self.batches.append(prompts)
        return [self.reply(p) for p in prompts]

    def describe(self) -> dict[str, Any]:
        return {}


def spec(key: str, trajectory: Trajectory) -> CaseSpec:
    first = TrajectoryDriver(trajectory).start()
    return CaseSpec(key, f"t.py::{key}", first or "", GenerationSettings(), trajectory=trajectory)


def test_step_k_of_every_live_case_is_one_batch_and_finished_cases_leave() -> None:
    backend = Recorder()
    cases = [spec("a", Count("a", 1)), spec("b", Count("b", 3)), spec("c", Count("c", 2))]
    runs = run_cases(backend, cases, batch_size=16)
    assert [sorted(b) for b in backend.batches] == [["a:0", "b:0", "c:0"], ["b:1", "c:1"], ["b:2"]]
    assert [t.reply for t in runs["b"].turns] == ["1", "2", "3"]
    assert [t.prompt for t in runs["b"].turns] == ["b:0", "b:1", "b:2"]
    assert runs["b"].state == {"n": 3, "said": ["1", "2", "3"]}
    assert runs["a"].state == {"n": 1, "said": ["1"]}
    assert all(r.error is None and r.failure is None for r in runs.values())


def test_a_round_is_cut_into_batches_of_batch_size() -> None:
    backend = Recorder()
    cases = [spec(f"k{i}", Count(f"k{i}", 2)) for i in range(5)]
    run_cases(backend, cases, batch_size=2)
    assert [len(b) for b in backend.batches] == [2, 2, 1, 2, 2, 1]
    assert all(p.endswith(":0") for b in backend.batches[:3] for p in b)
    assert all(p.endswith(":1") for b in backend.batches[3:] for p in b)


def test_max_steps_caps_a_trajectory_that_is_never_done() -> None:
    class Forever(Count):
        max_steps = 3

        def done(self, state: Any) -> bool:
            return False

    runs = run_cases(Recorder(), [spec("f", Forever("f", 0))])
    assert len(runs["f"].turns) == 3
    assert runs["f"].state["n"] == 3


def test_done_at_the_start_generates_nothing() -> None:
    backend = Recorder()
    runs = run_cases(backend, [spec("z", Count("z", 0))])
    assert backend.batches == []
    assert runs["z"].turns == [] and runs["z"].state == {"n": 0, "said": []}
    assert runs["z"].error is None


def test_an_assertion_in_apply_is_that_case_failing_at_that_step_alone() -> None:
    backend = Recorder(reply=lambda p: "9" if p == "s:1" else str(int(p.split(":")[1]) + 1))
    runs = run_cases(backend, [spec("s", Count("s", 4, strict=True)), spec("t", Count("t", 4, strict=True))])
    assert runs["s"].failure == "step 2: expected 2, got '9'"
    assert runs["s"].error is None
    assert len(runs["s"].turns) == 2
    assert runs["s"].state == {"n": 1, "said": ["1"]}  # the state before the rejected step
    assert runs["t"].failure is None and len(runs["t"].turns) == 4


def test_another_exception_in_apply_is_an_error_of_that_case_alone() -> None:
    class Broken(Count):
        def apply(self, state: Any, reply: str) -> Any:
            if state["n"] == 1:
                raise KeyError("oops")
            return super().apply(state, reply)

    runs = run_cases(Recorder(), [spec("b", Broken("b", 3)), spec("ok", Count("ok", 3))])
    assert runs["b"].error == "KeyError: 'oops'"
    assert runs["b"].failure is None
    assert runs["ok"].error is None and len(runs["ok"].turns) == 3


def test_a_state_that_is_not_json_is_an_error_naming_the_step() -> None:
    class Sets(Count):
        def apply(self, state: Any, reply: str) -> Any:
            return {"n": state["n"] + 1, "seen": {reply}}

    runs = run_cases(Recorder(), [spec("s", Count("s", 1)), spec("x", Sets("x", 3))])
    assert runs["x"].error is not None
    assert "TypeError: the state after step 1 is not JSON-serialisable" in runs["x"].error


def test_an_initial_state_that_is_not_json_is_refused() -> None:
    class Bad(Count):
        def initial_state(self) -> Any:
            return {"obj": object()}

    with pytest.raises(TypeError, match="the state of initial_state"):
        TrajectoryDriver(Bad("b", 1)).start()


def test_each_model_starts_from_a_fresh_state() -> None:
    trajectory = Count("a", 2)
    case = spec("a", trajectory)
    first = run_cases(Recorder(), [case])["a"].state
    second = run_cases(Recorder(), [case])["a"].state
    assert first == second == {"n": 2, "said": ["1", "2"]}


def test_initial_state_runs_once_per_case_whatever_the_models() -> None:
    """The case is begun once, when it is built; every model's run starts from a copy of that."""
    calls: list[str] = []

    class Counted(Count):
        def initial_state(self) -> Any:
            calls.append(self.name)
            return super().initial_state()

    case = build_case(
        parse_quant_case(("case", [Counted("a", 2)]), {}),
        test_id="t.py::test",
        nodeid="t.py::test[a]",
        params={"case": Counted("a", 2)},
        index=0,
        slice_markers=[],
    )
    assert calls == ["a"] and case.prompt == "a:0"
    runs = [run_cases(Recorder(), [case])[case.key] for _ in range(3)]  # the reference, two candidates
    assert calls == ["a"]
    assert [r.state for r in runs] == [{"n": 2, "said": ["1", "2"]}] * 3
    assert [t.prompt for t in runs[0].turns] == ["a:0", "a:1"]


def test_a_bad_max_steps_is_an_error_of_the_case() -> None:
    class Zero(Count):
        max_steps = 0

    runs = run_cases(
        Recorder(), [CaseSpec("z", "t.py::z", "", GenerationSettings(), trajectory=Zero("z", 1))]
    )
    assert runs["z"].error is not None and "max_steps must be a positive integer" in runs["z"].error


def test_a_trajectory_has_a_stable_identity_from_its_attributes() -> None:
    assert stable_repr(Count("a", 2)) == stable_repr(Count("a", 2))
    assert stable_repr(Count("a", 2)) != stable_repr(Count("a", 3))
    code = (
        "import sys; sys.path.insert(0, 'tests/unit'); "
        "from test_trajectory import Count; from pytest_quantgate.core.identity import stable_repr; "
        "print(stable_repr(Count('a', 2)))"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in "12"}
    assert len(outs) == 1 and "'name': 'a'" in outs.pop()


def test_the_trajectory_argument_is_found_without_prompt() -> None:
    marker = parse_quant_case(("case, expected", [(Count("a", 1), 1)]), {})
    assert marker.prompt == "case"
    with pytest.raises(ValueError, match=r"several arguments hold a Trajectory \(a, b\)"):
        parse_quant_case(("a, b", [(Count("a", 1), Count("b", 1))]), {})


@pytest.mark.parametrize(
    ("ref", "cand", "expected"),
    [
        (["a", "b"], ["a", "b"], None),
        (
            ["a", "b", "c"],
            ["a", "x", "c"],
            {"step": 2, "reference": "b", "candidate": "x", "same_input": True},
        ),
        (["a", "b"], ["a"], {"step": 2, "reference": "b", "candidate": None, "same_input": False}),
        ([], ["a"], {"step": 1, "reference": None, "candidate": "a", "same_input": False}),
    ],
)
def test_divergence_is_the_first_step_whose_replies_differ(
    ref: list[str], cand: list[str], expected: dict[str, Any] | None
) -> None:
    def turns(replies: list[str]) -> list[dict[str, Any]]:
        return [{"prompt": f"p{i}", "reply": r} for i, r in enumerate(replies)]

    assert divergence(turns(ref), turns(cand)) == expected


def test_different_inputs_at_the_parting_step_are_reported() -> None:
    ref = [{"prompt": "p", "rendered": "<s>p", "reply": "a"}]
    cand = [{"prompt": "p", "rendered": "<s> p", "reply": "b"}]
    assert divergence(ref, cand) == {"step": 1, "reference": "a", "candidate": "b", "same_input": False}


def test_a_trajectory_record_round_trips_with_states_and_divergence() -> None:
    turns = ({"prompt": "x", "reply": "1"}, {"prompt": "y", "reply": "2"})
    bad = ({"prompt": "x", "reply": "1"}, {"prompt": "y", "reply": "9"})
    record = CaseRecord(
        key="k",
        nodeid="t.py::k",
        slices=("long",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes={
            "ref": ModelOutcome("pass", "2", None, turns, {"n": 2}),
            "q": ModelOutcome("fail", "9", "AssertionError: no", bad, {"n": 9}),
        },
        trajectory=True,
    )
    data = json.loads(record.to_json())
    assert data["divergence"] == {"q": {"step": 2, "reference": "2", "candidate": "9", "same_input": True}}
    assert data["outcomes"]["q"]["final_state"] == {"n": 9}
    assert CaseRecord.from_json(record.to_json()) == record
