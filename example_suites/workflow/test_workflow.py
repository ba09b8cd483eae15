"""The workflow gate: an agent's tool calls over conversations of 1 to 7 steps.

Each case is a conversation with a key-value store (``workflow_env.py``):
the first prompt states a constraint (``cap 5``: no value above 5 may be
stored), then the user asks one thing per step -- ``set a3``, ``del a`` --
and the model answers each with a tool call that the environment applies:
``put a3``, ``drop a``, or ``deny b`` for ``set b7``, a value above the cap.
The plugin plays all cases step-synchronously on every model and calls the
test body once per model with the final state.

The slices tell the FP16-to-INT4 story: single-turn accuracy can hold while
task completion over many steps, and the retention of a constraint stated at
step one, fall.

- ``short``: 1-2 steps.
- ``long``: 6-7 steps.
- ``constraint-retention``: 6-7 steps, and only the last request is above
  the cap: the constraint, said once at the top of the conversation, alone
  decides the last action.
"""

from __future__ import annotations

import pytest
from workflow_env import MAX_NEW_TOKENS, STOP, KeyValueTask

from pytest_quantgate import Trajectory, load_cases, quant_case


class Workflow(KeyValueTask, Trajectory):
    """The environment as a case the plugin can run (its methods are KeyValueTask's)."""


def cases(name: str) -> list:
    """One slice's cases: a ``task`` column builds the trajectory, ``expected`` is the outcome."""
    return [
        pytest.param(Workflow(**p.values[0]), p.values[1], marks=p.marks, id=p.id)
        for p in load_cases(f"data/{name}.jsonl", ["task", "expected"])
    ]


def check_outcome(case: Workflow, expected: dict, final_state: dict) -> None:
    store = final_state["store"]
    # The constraint stated at step one holds at the end: nothing above the cap was stored.
    over = {k: v for k, v in store.items() if v > case.cap}
    assert not over, f"stored {over} above the cap {case.cap}"
    assert store == expected["store"], f"store {store}, expected {expected['store']}"


@quant_case(
    "case, expected",
    cases("short") + cases("long"),
    prompt="case",
    max_new_tokens=MAX_NEW_TOKENS,
    stop=STOP,
)
def test_task_completed(case: Workflow, expected: dict, final_state: dict) -> None:
    check_outcome(case, expected, final_state)


@quant_case(
    "case, expected",
    cases("constraint-retention"),
    prompt="case",
    max_new_tokens=MAX_NEW_TOKENS,
    stop=STOP,
)
def test_cap_from_step_one_holds_at_the_last_step(case: Workflow, expected: dict, final_state: dict) -> None:
    check_outcome(case, expected, final_state)
