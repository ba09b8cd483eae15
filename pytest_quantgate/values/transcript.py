"""A case's transcript on one model, and its one encoding as builtins.

:class:`Turn` is one step (prompt, reply, the text the model was fed);
:class:`CaseRun` is every step of a case on one model. Both are written as
builtins in one way only — :meth:`Turn.to_dict` and :func:`run_to_payload` —
which the JSON report and the reference cache share, and read back by
:meth:`Turn.from_dict` and :func:`payload_to_run` into equal values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .prompts import Prompt, normalize_prompt, prompt_messages

__all__ = ["CaseRun", "Turn", "payload_to_run", "run_to_payload"]


@dataclass(frozen=True)
class Turn:
    """One step of a case: the prompt sent and the reply received.

    Attributes:
        prompt: What the case asked (text, or chat messages).
        reply: The model's reply, cut at the first stop string.
        rendered: The exact text the model was fed (chat template applied),
            when the backend says and it differs from ``prompt``; None
            otherwise (a rendering equal to the prompt is not kept twice).
    """

    prompt: Prompt
    reply: str
    rendered: str | None = None

    def __post_init__(self) -> None:
        if self.rendered is not None and self.rendered == self.prompt:
            object.__setattr__(self, "rendered", None)

    def to_dict(self) -> dict[str, Any]:
        """The turn as builtins: chat messages as a list of dicts, ``rendered`` only when kept."""
        messages = prompt_messages(self.prompt)
        out: dict[str, Any] = {"prompt": self.prompt if messages is None else messages, "reply": self.reply}
        if self.rendered is not None:
            out["rendered"] = self.rendered
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Turn:
        """The turn :meth:`to_dict` wrote.

        Raises:
            ValueError: ``data`` is not what :meth:`to_dict` writes.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("reply"), str):
            raise ValueError("a turn needs a reply")
        rendered = data.get("rendered")
        if rendered is not None and not isinstance(rendered, str):
            raise ValueError("a turn's rendered text must be a string")
        return cls(normalize_prompt(data.get("prompt")), data["reply"], rendered)

    def __iter__(self) -> Iterator[Any]:
        """``prompt, reply = turn``."""
        return iter(
            (self.prompt if isinstance(self.prompt, str) else prompt_messages(self.prompt), self.reply)
        )


@dataclass
class CaseRun:
    """The transcript of one case on one model.

    Attributes:
        turns: Prompt and reply of every step, in order.
        error: Why the case could not be run (an error of the case).
        failure: Why the model failed the case before its end (a step
            its trajectory rejected); the test body is not asked then.
        state: A trajectory's state after its last step (None otherwise).
    """

    key: str
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None
    failure: str | None = None
    state: Any = None

    @property
    def output(self) -> str:
        """The last reply (the output a single-prompt check receives)."""
        return self.turns[-1].reply if self.turns else ""


def run_to_payload(run: CaseRun) -> dict[str, Any]:
    """A case's transcript as builtins (see :func:`payload_to_run`)."""
    return {
        "turns": [t.to_dict() for t in run.turns],
        "error": run.error,
        "failure": run.failure,
        "state": run.state,
    }


def payload_to_run(key: str, payload: Mapping[str, Any]) -> CaseRun:
    """The :class:`CaseRun` of a payload; equal to the run it was made from.

    Raises:
        ValueError: the payload is not one :func:`run_to_payload` makes.
    """
    turns = payload.get("turns")
    if not isinstance(turns, list):
        raise ValueError("a payload needs a list of turns")
    error, failure = payload.get("error"), payload.get("failure")
    for value in (error, failure):
        if value is not None and not isinstance(value, str):
            raise ValueError("error and failure must be strings or null")
    return CaseRun(
        key=key,
        turns=[Turn.from_dict(t) for t in turns],
        error=error,
        failure=failure,
        state=payload.get("state"),
    )
