"""The tiny agent's tasks: the suites' environments, the eval files and their disjointness from training.

Pure Python (``tools/agent_tasks.py`` and the environments beside the
suites import no torch), so these run without the model stack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import agent_tasks  # noqa: E402  (tools/ is not a package)
import transactions_env  # noqa: E402  (put on sys.path by agent_tasks, as pytest does for the suites)
import workflow_env  # noqa: E402
from agent_tasks import SLICES, AgentCase  # noqa: E402

# --------------------------------------------------------------------------
# workflow_env


@pytest.mark.parametrize(
    ("reply", "action"),
    [
        ("put a3", {"op": "put", "key": "a", "value": "3"}),
        (" put z0 ", {"op": "put", "key": "z", "value": "0"}),
        ("drop b", {"op": "drop", "key": "b"}),
        ("deny q", {"op": "deny", "key": "q"}),
    ],
)
def test_actions_parse(reply: str, action: dict[str, str]) -> None:
    assert workflow_env.parse_action(reply) == action


@pytest.mark.parametrize(
    "reply", ["", "put a", "put a 3", "put a33", "PUT a3", "drop 3", "deny a3", "deny Q", "put a3 ok", "ok"]
)
def test_a_malformed_action_is_the_models_failure(reply: str) -> None:
    with pytest.raises(AssertionError, match="not an action"):
        workflow_env.parse_action(reply)


def test_workflow_renders_the_conversation_and_applies_actions() -> None:
    task = workflow_env.KeyValueTask(5, ["set a3", "set b7", "del a", "set c5"])
    state = task.initial_state()
    assert task.render(state) == "cap 5\nset a3>"
    state = task.apply(state, "put a3")
    state = task.apply(state, "deny b")
    assert task.render(state) == "cap 5\nset a3>put a3\nset b7>deny b\ndel a>"
    state = task.apply(state, "drop a")
    assert not task.done(state)
    state = task.apply(state, "put c5")
    assert task.done(state)
    assert state == {
        "history": [["set a3", "put a3"], ["set b7", "deny b"], ["del a", "drop a"], ["set c5", "put c5"]],
        "store": {"c": 5},
        "denied": ["b"],
    }
    json.dumps(state)  # states are recorded in the report


def test_workflow_applies_a_wrong_but_wellformed_action() -> None:
    # Storing a value above the cap is the model's mistake, not the environment's: it shows in the state.
    task = workflow_env.KeyValueTask(5, ["set q7"])
    state = task.apply(task.initial_state(), "put q7")
    assert state["store"] == {"q": 7}
    case = AgentCase("short", {"cap": 5, "requests": ["set q7"]}, {"store": {}})
    assert not agent_tasks.check(case, agent_tasks.Played(["put q7"], state))
    assert agent_tasks.check(case, agent_tasks.Played(["deny q"], task.apply(task.initial_state(), "deny q")))


def test_workflow_apply_does_not_mutate_the_state() -> None:
    task = workflow_env.KeyValueTask(5, ["set a3"])
    state = task.initial_state()
    task.apply(state, "put a3")
    assert state == task.initial_state()


# --------------------------------------------------------------------------
# transactions_env


@pytest.mark.parametrize(
    ("rule", "events", "flags"),
    [
        ("limit 45", ["pay 44", "pay 45", "pay 46", "pay 90", "pay 10"], [False, False, True, True, False]),
        ("max 1/h", ["h1", "h1", "h2", "h4", "h4", "h4"], [False, True, False, False, True, True]),
        ("max 2/h", ["h1", "h1", "h1", "h1", "h2"], [False, False, True, True, False]),
        ("max 3/h", ["h0", "h0", "h0", "h0"], [False, False, False, True]),
    ],
)
def test_violations(rule: str, events: list[str], flags: list[bool]) -> None:
    assert [transactions_env.violates(rule, events, i) for i in range(len(events))] == flags


@pytest.mark.parametrize(
    ("rule", "event"), [("limit 45", "h3"), ("max 2/h", "pay 4"), ("limit x", "pay 4"), ("cap 3", "pay 1")]
)
def test_a_malformed_rule_or_event_is_an_error_of_the_data(rule: str, event: str) -> None:
    with pytest.raises(ValueError):
        transactions_env.violates(rule, [event], 0)


def test_transactions_render_and_apply() -> None:
    stream = transactions_env.EventStream("max 1/h", ["h2", "h2"])
    state = stream.apply(stream.initial_state(), "ok")
    assert stream.render(state) == "max 1/h\nh2>ok\nh2>"
    state = stream.apply(state, "flag\n")
    assert stream.done(state)
    assert state == {"history": [["h2", "ok"], ["h2", "flag"]], "flagged": [1]}


@pytest.mark.parametrize("reply", ["", "yes", "flagged", "OK", "ok flag"])
def test_a_decision_other_than_ok_or_flag_fails_the_step(reply: str) -> None:
    stream = transactions_env.EventStream("limit 45", ["pay 50"])
    with pytest.raises(AssertionError, match="not a decision"):
        stream.apply(stream.initial_state(), reply)


# --------------------------------------------------------------------------
# Eval sets, transcripts, checks


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[AgentCase]]:
    return {name: agent_tasks.read_jsonl(agent_tasks.data_path(name)) for name in SLICES}


def test_eval_files_are_what_the_build_script_draws(shipped: dict[str, list[AgentCase]]) -> None:
    # tools/build_agent_model.py draws them with seed 0 + 1000; drawing again gives the same files.
    assert agent_tasks.eval_sets(1000) == shipped
    for name, cases in shipped.items():
        assert len(cases) == agent_tasks.EVAL_SIZES[name] >= 300
        assert len({c.key for c in cases}) == len(cases)


def test_slices_have_their_horizons(shipped: dict[str, list[AgentCase]]) -> None:
    def steps(case: AgentCase) -> int:
        return len(case.task.get("requests") or case.task["events"])

    assert {steps(c) for c in shipped["short"]} == {1, 2}
    assert {steps(c) for c in shipped["long"]} == {6, 7}
    for case in shipped["constraint-retention"]:
        cap, requests = case.task["cap"], case.task["requests"]
        # Only the last request asks for a value above the cap.
        over = [r for r in requests if r.startswith("set ") and int(r[-1]) > cap]
        assert over == [requests[-1]]


def test_eval_cases_never_appear_in_training(shipped: dict[str, list[AgentCase]]) -> None:
    banned = {c.key for cases in shipped.values() for c in cases}
    stream = agent_tasks.training_stream(0, exclude=banned)
    drawn = [next(stream) for _ in range(3000)]
    assert not banned.intersection(k for case in drawn for k in agent_tasks.prefix_keys(case))
    # Without the exclusion the same stream does hit eval cases (the short space is small),
    # so the assertion above is not vacuous.
    unfiltered = agent_tasks.training_stream(0)
    assert banned.intersection(k for _ in range(3000) for k in agent_tasks.prefix_keys(next(unfiltered)))


def test_training_stream_is_reproducible() -> None:
    a, b = agent_tasks.training_stream(7), agent_tasks.training_stream(7)
    assert [next(a) for _ in range(50)] == [next(b) for _ in range(50)]


def test_prefix_keys_cover_every_prefix() -> None:
    case = AgentCase("long", {"cap": 5, "requests": ["set a1", "del a"]}, {})
    short = AgentCase("short", {"cap": 5, "requests": ["set a1"]}, {})
    assert agent_tasks.prefix_keys(case) == [short.key, case.key]


def test_rows_round_trip_and_ids_are_checked(shipped: dict[str, list[AgentCase]]) -> None:
    for cases in shipped.values():
        assert AgentCase.from_row(cases[0].to_row()) == cases[0]
    row = shipped["long"][0].to_row()
    row["task"] = {**row["task"], "cap": 9}  # the id is a hash of the task
    with pytest.raises(ValueError, match="does not match content"):
        AgentCase.from_row(row)


def _oracle(shipped: dict[str, list[AgentCase]]) -> agent_tasks.GenerateFn:
    """A perfect model: every step prompt of every eval case -> its right reply (and a stop)."""
    replies: dict[str, str] = {}
    for cases in shipped.values():
        for case in cases:
            t = agent_tasks.transcript(case)
            replies.update(zip(t.prompts, t.replies, strict=True))

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        out = [replies[p] + "\nmore" for p in prompts]
        assert all(len(o.split("\n")[0]) < max_new_tokens for o in out)
        return out

    return generate


def test_a_perfect_model_completes_every_case(shipped: dict[str, list[AgentCase]]) -> None:
    cases = [c for cs in shipped.values() for c in cs]
    played = agent_tasks.play(cases, _oracle(shipped))
    assert all(agent_tasks.check(c, p) for c, p in zip(cases, played, strict=True))
    # Play is step-synchronous and stops each case at its own horizon.
    assert [len(p.replies) for p in played[:3]] == [len(agent_tasks.transcript(c).replies) for c in cases[:3]]


def test_an_unparseable_reply_ends_the_case_at_that_step(shipped: dict[str, list[AgentCase]]) -> None:
    case = shipped["long"][0]
    good = _oracle(shipped)

    def broken_at_3(prompts: list[str], max_new_tokens: int) -> list[str]:
        replies = good(prompts, max_new_tokens)
        return ["put" if p.count("\n") == 3 else r for p, r in zip(prompts, replies, strict=True)]

    (played,) = agent_tasks.play([case], broken_at_3)
    assert played.failed_step == 3 and len(played.replies) == 3
    assert not agent_tasks.check(case, played)


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ('{"id":4,"ok":true}', True),
        ('{"ok":true,"id":4}', True),  # key order is free
        ('{"id":4,"ok":1}', False),  # 1 is not true
        ('{"id":"4","ok":true}', False),
        ('{"id":4}', False),
        ('{"id":4,"ok":true', False),
    ],
)
def test_structured_check_compares_json_values_with_types(output: str, ok: bool) -> None:
    case = AgentCase("flat", {"prompt": "json id=4 ok=y ->"}, {"value": {"id": 4, "ok": True}, "schema": {}})
    assert agent_tasks.check(case, agent_tasks.Played([output])) is ok


def test_structured_cases_carry_a_schema_their_value_matches(shipped: dict[str, list[AgentCase]]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for name in ("flat", "nested"):
        for case in shipped[name][:50]:
            jsonschema.validate(case.expected["value"], case.expected["schema"])
    nested: Any = shipped["nested"][0].expected["schema"]
    assert any(p.get("type") == "object" for p in nested["properties"].values())


def test_transcripts_fit_the_models_context(shipped: dict[str, list[AgentCase]]) -> None:
    # models/tiny-agent has 192 positions: <bos>, the longest prompt and its reply budget must fit.
    longest = max(len(p) for cs in shipped.values() for c in cs for p in agent_tasks.transcript(c).prompts)
    assert 1 + longest + agent_tasks.STRUCTURED_MAX_NEW_TOKENS <= 192
