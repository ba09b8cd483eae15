"""The chat gate: a real instruct model, through its chat template.

The reference is SmolLM2-135M-Instruct in float32; a 135 M model is weak, so
every task is one it does reliably -- copying a value stated in the
conversation -- and is checked by code. Each data file's ``slice`` column names the case's slice:

- ``extract``: the ticket number in a quoted customer message (a string
  prompt, which the plugin wraps in the tokenizer's chat template).
- ``lookup``: the city a person lives in, said in the same turn (a prompt of
  chat messages).
- ``recall``: three user turns, each answered by the model -- a ticket
  number (or where someone lives) to give, a turn about something else, then
  the first question again: a ``Trajectory`` whose messages, the model's own
  replies included, carry the conversation, checked on its final state.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pytest_quantgate import Trajectory, checks, load_cases, quant_case

#: The first N cases of each slice only, when set: CI's short real-model gate (``.ci/run``).
#: Cases left out are never collected, so the report of such a run is still complete.
FIRST = int(os.environ.get("CHAT_SUITE_CASES", "0")) or None

#: Replies are short sentences ("The ticket number is 27611."); the values have no dots.
STOP = "."


class Recall(Trajectory):
    """A conversation of user turns, each followed by the model's reply; the last reply is the answer."""

    max_steps = 4

    def __init__(self, turns: list[str]) -> None:
        self.turns = list(turns)

    def initial_state(self) -> dict[str, Any]:
        return {"messages": []}

    def render(self, state: dict[str, Any]) -> list[dict[str, str]]:
        step = len(state["messages"]) // 2
        return [*state["messages"], {"role": "user", "content": self.turns[step]}]

    def apply(self, state: dict[str, Any], reply: str) -> dict[str, Any]:
        return {"messages": [*self.render(state), {"role": "assistant", "content": reply.strip()}]}

    def done(self, state: dict[str, Any]) -> bool:
        return len(state["messages"]) == 2 * len(self.turns)


@quant_case(
    "prompt, expected",
    load_cases("data/extract.jsonl", "prompt, expected")[:FIRST],
    max_new_tokens=16,
    stop=STOP,
)
def test_ticket_number_copied(prompt: str, expected: str, output: str) -> None:
    # 'Message: "Omar here, my ticket is #27611, please help."\nWhat is the ticket number?'
    checks.contains(output, expected)


@quant_case(
    "messages, expected",
    load_cases("data/lookup.jsonl", "messages, expected")[:FIRST],
    prompt="messages",
    max_new_tokens=10,
    stop=STOP,
)
def test_city_looked_up(messages: list[dict[str, str]], expected: str, output: str) -> None:
    # "Lena lives in Nairobi. In which city does Lena live? Answer with the city name only."
    checks.contains(output, expected)


def recall_cases() -> list:
    """A ``turns`` column builds the trajectory; its ``slice`` column tags the case, as for the others."""
    return [
        pytest.param(Recall(p.values[0]), p.values[1], marks=p.marks, id=p.id)
        for p in load_cases("data/recall.jsonl", "turns, expected")[:FIRST]
    ]


@quant_case("case, expected", recall_cases(), prompt="case", max_new_tokens=16, stop=STOP)
def test_first_answer_given_again_two_turns_later(
    case: Recall, expected: str, final_state: dict[str, Any]
) -> None:
    checks.contains(final_state["messages"][-1]["content"], expected)
