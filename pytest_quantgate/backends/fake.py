"""A scripted model: replies read from a JSON file, deterministic and instant.

``fake:PATH`` loads the script at ``PATH``::

    {
      "replies": {"17+25=": "42", "3*4=": "12"},   # prompt -> reply
      "default": "",                # reply to any other prompt (default: "")
      "fail_on": ["bad prompt"],    # generating these raises: a per-case error
      "load_error": "message",      # loading fails with this message
      "log": "generated.jsonl",     # append one line per generated prompt
      "context": 2048,              # prompt + max_new_tokens beyond this many characters: refused
      "oom_above": 8                # a batch of more requests raises OutOfMemoryError (0: every batch)
    }

A chat prompt is looked up by the JSON text of its message list. A reply is
cut at ``max_new_tokens`` characters (a character stands for a token), as a
real model stops at its budget; likewise ``context`` is a context length in
characters, checked as a real model's is in tokens. ``log`` is relative to the script; each line
is ``{"model": label, "prompt": prompt}`` for a generated prompt, or
``{"model": label, "event": "load" | "close" | "batch" | "oom", "size": n}``
(``size`` for batches), written with a single append so that xdist workers
can share one log.

It exists to test suites and the plugin itself without a model: the plugin's
own tests run on it, and a suite's checks can be tried on canned outputs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..values.prompts import Prompt, prompt_messages
from .base import Backend, BackendError, GenerationRequest, ScoreRequest, TokenScores

if TYPE_CHECKING:
    from ..values.specs import ModelSpec

__all__ = ["FakeBackend"]

_KEYS = {"replies", "default", "fail_on", "load_error", "log", "context", "oom_above"}


class OutOfMemoryError(RuntimeError):
    """What a scripted model raises for a batch above its ``oom_above`` (named as torch's)."""


def _script_problem(script: Any) -> str | None:
    """What is wrong with a script's shape, or None."""
    if not isinstance(script, dict):
        return f"expected a JSON object, got {type(script).__name__}"
    unknown = sorted(set(script) - _KEYS)
    if unknown:
        return f"unknown keys {unknown} (known: {', '.join(sorted(_KEYS))})"
    replies = script.get("replies", {})
    if not isinstance(replies, dict) or not all(isinstance(v, str) for v in replies.values()):
        return '"replies" must map prompts to reply strings'
    fail_on = script.get("fail_on", [])
    if not isinstance(fail_on, list) or not all(isinstance(v, str) for v in fail_on):
        return '"fail_on" must be a list of prompts'
    for key in ("default", "load_error", "log"):
        if script.get(key) is not None and not isinstance(script[key], str):
            return f'"{key}" must be a string'
    for key, least, unit in (("context", 1, "characters"), ("oom_above", 0, "requests")):
        value = script.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            return f'"{key}" must be an integer of at least {least} ({unit})'
    return None


class FakeBackend(Backend):
    """Replies from a script; see the module docstring for the format."""

    def __init__(self, spec: ModelSpec, script: dict[str, Any], load_seconds: float):
        self.spec = spec
        self.label = spec.label
        self.replies: dict[str, str] = dict(script.get("replies") or {})
        self.default = str(script.get("default", ""))
        self.fail_on = set(script.get("fail_on") or ())
        log = script.get("log")
        self.log = (Path(spec.path).parent / log) if log else None
        self.context: int | None = script.get("context")
        self.oom_above: int | None = script.get("oom_above")
        self.load_seconds = load_seconds
        self._event("load")

    def _event(self, event: str, **extra: int) -> None:
        self._append([{"model": self.label, "event": event, **extra}])

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Append log lines in one write (xdist workers share the log)."""
        if self.log is None:
            return
        lines = "".join(json.dumps(e) + "\n" for e in entries)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: str) -> FakeBackend:
        started = time.perf_counter()
        try:
            script = json.loads(Path(spec.path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read the script of {spec.label} at {spec.path}: {exc}") from exc
        problem = _script_problem(script)
        if problem:
            raise BackendError(f"bad script for {spec.label} at {spec.path}: {problem}")
        if script.get("load_error"):
            raise BackendError(str(script["load_error"]))
        return cls(spec, script, time.perf_counter() - started)

    @staticmethod
    def prompt_text(prompt: Prompt) -> str:
        """The script key of a prompt: the text, or the JSON of the chat messages."""
        messages = prompt_messages(prompt)
        return prompt if isinstance(prompt, str) else json.dumps(messages, sort_keys=True)

    def render_text(self, request: GenerationRequest) -> str:
        """The script key of the request's prompt: what the fake model "sees"."""
        return self.prompt_text(request.prompt)

    def check_requests(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Refuse a prompt whose characters plus ``max_new_tokens`` exceed ``context``."""
        out: list[str | None] = []
        for r in requests:
            length = len(self.prompt_text(r.prompt))
            need = length + r.settings.max_new_tokens
            out.append(
                None
                if self.context is None or need <= self.context
                else f"the prompt ({length} characters) + max_new_tokens ({r.settings.max_new_tokens}) "
                f"= {need} exceeds the context of {self.label} ({self.context} characters)"
            )
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        texts = [self.prompt_text(r.prompt) for r in requests]
        bad = [t for t in texts if t in self.fail_on]
        if bad:
            raise BackendError(f"{self.label}: scripted failure on {bad[0]!r}")
        if self.oom_above is not None and len(requests) > self.oom_above:
            self._event("oom", size=len(requests))
            raise OutOfMemoryError(
                f"{self.label}: scripted out of memory at {len(requests)} requests "
                f"(oom_above {self.oom_above})"
            )
        self._append(
            [
                {"model": self.label, "event": "batch", "size": len(texts)},
                *({"model": self.label, "prompt": t} for t in texts),
            ]
        )
        return [
            self.replies.get(t, self.default)[: r.settings.max_new_tokens]
            for t, r in zip(texts, requests, strict=True)
        ]

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        """A character is a token: log p 0 where the continuation is the scripted reply, log ½ elsewhere.

        The top-k alternatives are the scripted character (log ½ where it is
        not the continuation's) and nothing else.
        """
        out = []
        for req in requests:
            reply = self.replies.get(self.prompt_text(req.prompt), self.default)
            logprobs = tuple(
                0.0 if reply[i : i + 1] == ch else math.log(0.5) for i, ch in enumerate(req.continuation)
            )
            top = tuple(
                ((ord(reply[i]), lp if reply[i] == ch else math.log(0.5)),)[: req.top_k]
                if i < len(reply)
                else ()
                for i, (ch, lp) in enumerate(zip(req.continuation, logprobs, strict=True))
            )
            out.append(TokenScores(tuple(map(ord, req.continuation)), logprobs, top if req.top_k else ()))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "spec": self.spec.text,
            "path": self.spec.path,
            "scheme": self.spec.scheme,
            "device": "cpu",
            "dtype": "none",
            "quantization": None,
            "context": self.context,
            "load_seconds": round(self.load_seconds, 3),
            "pid": os.getpid(),
        }

    def close(self) -> None:
        self.replies = {}
        self._event("close")
