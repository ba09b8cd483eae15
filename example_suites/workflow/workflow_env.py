"""The workflow environment: a key-value store driven by an agent's tool calls.

The first prompt states the task's constraint (``cap 5``: no value above 5
may be stored) and the user's first request; every later prompt is the whole
conversation so far, so the constraint stays where it was said, at the top,
and moves further back with each step. Requests and the actions that answer
them:

=============  =============  =================================================
request        action         what the environment does
=============  =============  =================================================
``set a3``     ``put a3``     stores 3 under ``a`` (3 is within the cap)
``set a7``     ``deny a``     (7 is above the cap) records the refusal
``del a``      ``drop a``     removes ``a`` from the store
=============  =============  =================================================

A step's prompt, here the third of a case::

    cap 5
    set a3>put a3
    del a>drop a
    set b7>

The model replies ``deny b``. An action that does not parse is the model
failing the case at that step (``AssertionError``); a well-formed but wrong
action is applied like any other and shows in the final state (a ``put``
above the cap breaks the constraint; a ``put`` of another key or value, or a
missing ``drop``, leaves the wrong store).

The format is shaped for a model of half a million parameters: each decision
needs the current request and the one digit stated at step one, nothing in
between. An earlier design (a locked key, ``lock q``, and ``get`` requests
answered from values stored steps before) trained for ten minutes never
learned to deny a key, and recalled 64 % of values.

This module is plain Python: the suite binds :class:`KeyValueTask` to the
plugin's ``Trajectory``, and ``tools/agent_tasks.py`` uses the same code to
render the training transcripts, so training and evaluation cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_NEW_TOKENS", "STOP", "KeyValueTask", "parse_action"]

#: Every reply ends with this in training; the suite stops generation on it.
STOP = "\n"
#: The longest actions (``put a3``, ``deny a``, ``drop a``) are 6 characters; one token per character.
MAX_NEW_TOKENS = 8

_ACTION = re.compile(r"put (?P<key>[a-z])(?P<value>\d)|(?P<op>deny|drop) (?P<other>[a-z])")


def parse_action(reply: str) -> dict[str, str]:
    """``"put a3"`` -> ``{"op": "put", "key": "a", "value": "3"}``.

    Raises:
        AssertionError: the reply is not one well-formed action (the model's failure).
    """
    text = reply.strip()
    m = _ACTION.fullmatch(text)
    assert m is not None, f"not an action: {text!r} (expected 'put KV', 'deny K' or 'drop K')"
    if m["op"] is None:
        return {"op": "put", "key": m["key"], "value": m["value"]}
    return {"op": m["op"], "key": m["other"]}


class KeyValueTask:
    """One scripted conversation: a cap on values, then one request per step.

    Args:
        cap: The largest value that may be stored (stated at step one).
        requests: The user's requests, one per step (``set KV`` or ``del K``).

    The state is ``{"history": [[request, action], ...], "store": {key: value},
    "denied": [key, ...]}``: the conversation so far and what the actions did.
    """

    max_steps = 8

    def __init__(self, cap: int, requests: list[str]) -> None:
        self.cap = cap
        self.requests = list(requests)

    def initial_state(self) -> dict[str, Any]:
        return {"history": [], "store": {}, "denied": []}

    def render(self, state: dict[str, Any]) -> str:
        lines = [f"cap {self.cap}"]
        lines += [f"{request}>{action}" for request, action in state["history"]]
        lines.append(f"{self.requests[len(state['history'])]}>")
        return "\n".join(lines)

    def apply(self, state: dict[str, Any], reply: str) -> dict[str, Any]:
        action = parse_action(reply)
        request = self.requests[len(state["history"])]
        store, denied = dict(state["store"]), list(state["denied"])
        if action["op"] == "put":
            store[action["key"]] = int(action["value"])
        elif action["op"] == "drop":
            store.pop(action["key"], None)
        else:
            denied.append(action["key"])
        return {"history": [*state["history"], [request, reply.strip()]], "store": store, "denied": denied}

    def done(self, state: dict[str, Any]) -> bool:
        return len(state["history"]) >= len(self.requests)
