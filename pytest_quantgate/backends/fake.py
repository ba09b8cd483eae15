"""A scripted model: replies read from a JSON file, deterministic and instant.

``fake:PATH`` loads the script at ``PATH``::

    {
      "replies": {"17+25=": "42", "3*4=": "12"},   # prompt -> reply
      "default": "",                # reply to any other prompt (default: "")
      "fail_on": ["bad prompt"],    # generating these raises: a per-case error
      "load_error": "message",      # loading fails with this message
      "log": "generated.jsonl",     # append one line per generated prompt
      "context": 2048,              # prompt + max_new_tokens beyond this many characters: refused
      "oom_above": 8,               # a batch of more requests raises OutOfMemoryError (0: every batch)
      "solo_replies": {"3*4=": "13"},  # replies when a batch holds one request (numerics that
                                    # depend on batch composition, as on a GPU)
      "perplexity": {"scale": 1.1}  # its corpus scores (--quant-ppl-corpus): scale, noise,
                                    # tokenizer (characters or bytes), bos (FakeBackend.window_logprobs)
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

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..values.prompts import Prompt, prompt_messages
from .base import Backend, BackendError, CorpusTokens, GenerationRequest, ScoreRequest, TokenScores

if TYPE_CHECKING:
    from ..values.specs import ModelSpec

__all__ = ["FakeBackend"]

#: The scripted model's vocabulary: character ids 0-255 (a character beyond is scored as "any other").
VOCAB = 256

_KEYS = {"replies", "default", "fail_on", "load_error", "log", "context", "oom_above", "solo_replies"}
_KEYS.add("perplexity")  # the scripted perplexity model (FakeBackend.window_logprobs)


def _scripted_logprob(token: int, *, scripted: int | None, on: float, off: float) -> float:
    return on if token == scripted else off


#: The scripted perplexity model's BOS id: beyond every code point and byte.
_BOS = 0x110000


class OutOfMemoryError(RuntimeError):
    """What a scripted model raises for a batch above its ``oom_above`` (named as torch's)."""


def _script_problem(script: Any) -> str | None:
    """What is wrong with a script's shape, or None."""
    if not isinstance(script, dict):
        return f"expected a JSON object, got {type(script).__name__}"
    unknown = sorted(set(script) - _KEYS)
    if unknown:
        return f"unknown keys {unknown} (known: {', '.join(sorted(_KEYS))})"
    for key in ("replies", "solo_replies"):
        replies = script.get(key, {})
        if not isinstance(replies, dict) or not all(isinstance(v, str) for v in replies.values()):
            return f'"{key}" must map prompts to reply strings'
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
        self.solo_replies: dict[str, str] = dict(script.get("solo_replies") or {})
        self.fail_on = set(script.get("fail_on") or ())
        log = script.get("log")
        self.log = (Path(spec.path).parent / log) if log else None
        self.context: int | None = script.get("context")
        self.oom_above: int | None = script.get("oom_above")
        self.perplexity: Any = script.get("perplexity") or {}
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
        replies = {**self.replies, **self.solo_replies} if len(requests) == 1 else self.replies
        return [
            replies.get(t, self.default)[: r.settings.max_new_tokens]
            for t, r in zip(texts, requests, strict=True)
        ]

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        """Teacher-forced scores under a scripted distribution over :data:`VOCAB` character ids.

        A character is a token (its id is its code point). At a position
        within the scripted reply the model puts ½ on the scripted character
        and spreads the other ½ evenly over the rest of the vocabulary;
        beyond the reply's end every id is equally likely. The top-k lists
        the scripted character first, then the lowest other ids.
        """
        return [self._score_one(req) for req in requests]

    def _distribution(self, reply: str, position: int) -> tuple[int | None, float, float]:
        """The scripted id at ``position`` (None past the reply), its log p, and every other id's."""
        if position < len(reply):
            return ord(reply[position]), math.log(0.5), math.log(0.5 / (VOCAB - 1))
        return None, -math.log(VOCAB), -math.log(VOCAB)

    def _score_one(self, req: ScoreRequest) -> TokenScores:
        reply = self.replies.get(self.prompt_text(req.prompt), self.default)
        tokens = tuple(map(ord, req.continuation))
        logprobs, top, at, rest = [], [], [], []
        for i, token in enumerate(tokens):
            scripted, on, off = self._distribution(reply, i)
            lp = functools.partial(_scripted_logprob, scripted=scripted, on=on, off=off)
            logprobs.append(lp(token))
            order = ([scripted] if scripted is not None else []) + [t for t in range(VOCAB) if t != scripted]
            shown = order[: req.top_k]
            top.append(tuple((t, lp(t)) for t in shown))
            asked = set(req.ids[i]) if i < len(req.ids) else set()
            if req.ids:
                at.append(tuple(lp(t) for t in (req.ids[i] if i < len(req.ids) else ())))
            outside = set(range(VOCAB)) - (asked if req.ids else set(shown))
            if req.ids or req.top_k:
                mass = sum(math.exp(lp(t)) for t in outside)
                rest.append(math.log(mass) if mass > 0 else -math.inf)
        return TokenScores(
            tokens,
            tuple(logprobs),
            tuple(top) if req.top_k else (),
            tuple(at),
            tuple(rest),
        )

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

    # -- perplexity (--quant-ppl-corpus) ------------------------------------------

    def _perplexity_model(self) -> tuple[str, bool, float, float]:
        """The script's ``perplexity`` object: ``tokenizer`` (``characters``, the default, or
        ``bytes``), ``bos`` (true), ``scale`` (1.0: every NLL multiplied) and ``noise`` (0.0)."""
        model = self.perplexity
        known = {"tokenizer", "bos", "scale", "noise"}
        if not isinstance(model, dict) or set(model) - known:
            raise BackendError(f'{self.label}: "perplexity" must be an object with keys {sorted(known)}')
        tokenizer = model.get("tokenizer", "characters")
        bos, scale, noise = model.get("bos", True), model.get("scale", 1.0), model.get("noise", 0.0)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (scale, noise))
        if tokenizer not in ("characters", "bytes") or not isinstance(bos, bool):
            raise BackendError(f'{self.label}: "perplexity": tokenizer is characters or bytes, bos a bool')
        if not numbers or scale <= 0:
            raise BackendError(f'{self.label}: "perplexity": scale must be a positive number, noise a number')
        return tokenizer, bos, float(scale), float(noise)

    def encode_corpus(self, text: str) -> CorpusTokens:
        """A character is a token (its code point), or a UTF-8 byte with ``"tokenizer": "bytes"``;
        the BOS is id 0x110000 (beyond Unicode), or none with ``"bos": false``."""
        tokenizer, bos, _, _ = self._perplexity_model()
        ids = tuple(text.encode("utf-8")) if tokenizer == "bytes" else tuple(map(ord, text))
        first = 0 if not text else 1 if tokenizer == "bytes" else len(text[0].encode("utf-8"))
        return CorpusTokens(ids, (_BOS,) if bos else (), f"fake-{tokenizer}-bos{int(bos)}", first)

    def window_logprobs(
        self, windows: Sequence[Sequence[int]], first_scored: Sequence[int]
    ) -> list[list[float]]:
        """A deterministic, context-dependent NLL per token: a function of the token, the one
        before it and how many tokens precede it in the window (fewer: higher), times ``scale``,
        plus ``noise`` times a pseudo-random term of the token and its position."""
        _, _, scale, noise = self._perplexity_model()
        if self.oom_above is not None and len(windows) > self.oom_above:
            self._event("oom", size=len(windows))
            raise OutOfMemoryError(f"{self.label}: scripted out of memory at {len(windows)} windows")
        self._event("windows", size=len(windows))
        out = []
        for window, first in zip(windows, first_scored, strict=True):
            if not 1 <= first <= len(window):
                raise BackendError(f"{self.label}: a window must have context before the tokens it scores")
            out.append(
                [
                    -(
                        scale * (1.0 + ((t * 7 + window[i - 1] * 13) % 10) / 10) * (1 + 1 / (i + 1))
                        + noise * (((t * 31 + i * 17) % 11) - 5) / 5
                    )
                    for i, t in ((i, window[i]) for i in range(first, len(window)))
                ]
            )
        return out
