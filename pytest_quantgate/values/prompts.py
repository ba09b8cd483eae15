"""Prompts and how they are decoded: the values every layer passes around.

A prompt is plain text or chat messages; :class:`GenerationSettings` are the
knobs of greedy decoding. Nothing here imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GenerationSettings", "Prompt", "normalize_prompt", "prompt_messages"]

#: A prompt is plain text or a list of chat messages (``{"role", "content"}``).
Prompt = str | tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True)
class GenerationSettings:
    """How one case is decoded. Greedy always; these are the knobs."""

    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    chat_template: bool | None = None  # None: use it when the tokenizer has one

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "chat_template": self.chat_template,
        }


def normalize_prompt(value: Any) -> Prompt:
    """A prompt as the runner takes it: text, or chat messages made hashable.

    Raises:
        ValueError: when the value is neither text nor a list of messages.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, Mapping) for m in value):
        msgs = []
        for m in value:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError("chat messages need string 'role' and 'content'")
            msgs.append(tuple(sorted((str(k), str(v)) for k, v in m.items())))
        return tuple(msgs)
    raise ValueError(f"a prompt must be a string or a list of chat messages, got {type(value).__name__}")


def prompt_messages(prompt: Prompt) -> list[dict[str, str]] | None:
    """The chat messages of a prompt, or None for plain text."""
    if isinstance(prompt, str):
        return None
    return [dict(m) for m in prompt]
