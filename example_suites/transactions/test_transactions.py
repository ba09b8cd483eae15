"""The transactions gate: a rule stated at step one, then one decision per event.

A synthetic analogue of fraud flags (``transactions_env.py``). The first
prompt states the account's rule; then one event arrives per step and the
model answers ``ok`` or ``flag``; every later prompt is the whole stream so
far, with the model's own earlier decisions. A case passes when the model
flagged exactly the events that break the rule, over all 6-7 events.

- ``numeric``: ``limit 45`` -- flag a payment of more than 45 (two-digit
  amounts, half of them within 9 of the limit).
- ``temporal``: ``max 2/h`` -- flag an event that is more than the 2nd in its
  hour (every attempt counts).
"""

from __future__ import annotations

import pytest
from transactions_env import MAX_NEW_TOKENS, STOP, EventStream

from pytest_quantgate import Trajectory, load_cases, quant_case


class Transactions(EventStream, Trajectory):
    """The environment as a case the plugin can run (its methods are EventStream's)."""


def cases(name: str) -> list:
    """One slice's cases: ``task`` builds the stream, ``expected`` lists the events to flag."""
    return [
        pytest.param(Transactions(**p.values[0]), p.values[1], marks=p.marks, id=p.id)
        for p in load_cases(f"data/{name}.jsonl", ["task", "expected"])
    ]


@quant_case(
    "case, expected",
    cases("numeric") + cases("temporal"),
    prompt="case",
    max_new_tokens=MAX_NEW_TOKENS,
    stop=STOP,
)
def test_flags_exactly_the_violations(case: Transactions, expected: dict, final_state: dict) -> None:
    flagged = final_state["flagged"]
    missed = [case.events[i] for i in expected["flagged"] if i not in flagged]
    wrong = [case.events[i] for i in flagged if i not in expected["flagged"]]
    assert not missed and not wrong, f"under {case.rule!r}: missed {missed}, flagged wrongly {wrong}"
