"""The transactions environment: a stream of events, one decision per event.

A synthetic analogue of fraud flags. The first prompt states the account's
rule; then one event arrives per step and the model answers ``ok`` or
``flag``; every later prompt is the whole stream so far with the model's own
decisions. Two kinds of rule:

* numeric -- ``limit 45``: flag a payment of more than 45 (``pay 37`` is
  ``ok``, ``pay 52`` is ``flag``, ``pay 45`` is ``ok``);
* temporal -- ``max 2/h``: flag an event when it is more than the 2nd in its
  hour (events carry their hour, ``h3``, in order; every event counts,
  flagged or not, as velocity rules count attempts).

A step's prompt, here the fourth of a temporal case::

    max 2/h
    h1>ok
    h3>ok
    h3>ok
    h3>

The model replies ``flag``. Anything but ``ok`` or ``flag`` is the model
failing the case at that step (``AssertionError``).

Plain Python: the suite binds :class:`EventStream` to the plugin's
``Trajectory``; ``tools/agent_tasks.py`` renders the training transcripts
with the same code and decides the expected flags with :func:`violates`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["DECISIONS", "MAX_NEW_TOKENS", "STOP", "EventStream", "violates"]

STOP = "\n"
#: Replies are ``ok`` or ``flag``; one token per character.
MAX_NEW_TOKENS = 6
DECISIONS = ("ok", "flag")

_LIMIT = re.compile(r"limit (\d+)")
_VELOCITY = re.compile(r"max (\d+)/h")
_PAY = re.compile(r"pay (\d+)")
_HOUR = re.compile(r"h(\d)")


def violates(rule: str, events: list[str], index: int) -> bool:
    """Whether ``events[index]`` breaks ``rule`` (given the events before it)."""
    limit = _LIMIT.fullmatch(rule)
    if limit:
        pay = _PAY.fullmatch(events[index])
        if pay is None:
            raise ValueError(f"event {events[index]!r} is not 'pay N' under rule {rule!r}")
        return int(pay[1]) > int(limit[1])
    velocity = _VELOCITY.fullmatch(rule)
    if velocity:
        hours = []
        for event in events[: index + 1]:
            hour = _HOUR.fullmatch(event)
            if hour is None:
                raise ValueError(f"event {event!r} is not 'hN' under rule {rule!r}")
            hours.append(hour[1])
        return hours.count(hours[index]) > int(velocity[1])
    raise ValueError(f"unknown rule {rule!r}")


class EventStream:
    """One account: a rule stated at step one, then one event per step.

    Args:
        rule: ``limit N`` or ``max N/h``.
        events: The events, in order (``pay N`` or ``hH``).

    The state is ``{"history": [[event, decision], ...], "flagged": [index, ...]}``.
    """

    max_steps = 8

    def __init__(self, rule: str, events: list[str]) -> None:
        self.rule = rule
        self.events = list(events)

    def initial_state(self) -> dict[str, Any]:
        return {"history": [], "flagged": []}

    def render(self, state: dict[str, Any]) -> str:
        lines = [self.rule]
        lines += [f"{event}>{decision}" for event, decision in state["history"]]
        lines.append(f"{self.events[len(state['history'])]}>")
        return "\n".join(lines)

    def apply(self, state: dict[str, Any], reply: str) -> dict[str, Any]:
        decision = reply.strip()
        assert decision in DECISIONS, f"not a decision: {decision!r} (expected 'ok' or 'flag')"
        index = len(state["history"])
        flagged = [*state["flagged"], index] if decision == "flag" else list(state["flagged"])
        return {"history": [*state["history"], [self.events[index], decision]], "flagged": flagged}

    def done(self, state: dict[str, Any]) -> bool:
        return len(state["history"]) >= len(self.events)
