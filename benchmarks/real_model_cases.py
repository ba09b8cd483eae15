"""The chat suite's single-turn cases as ``bench_real_model.py``'s three sides read them (stdlib only).

The plain script (``real_model_plain.py``) and the lm-evaluation-harness side
(``real_model_lmeval.py``, run in its own virtualenv) import this file, not
the plugin: what they share with the plugin is written out here and kept to
what ``example_suites/chat/test_chat.py`` and the plugin's runner do.

- ``extract`` (``data/extract.jsonl``): a string prompt, wrapped in the chat
  template as one user message; at most 16 new tokens.
- ``lookup`` (``data/lookup.jsonl``): a list of chat messages; at most 10.

Both stop at the first ``.``; a case passes when its output contains the
expected value (``checks.contains``: both sides NFKC-normalised, stripped,
whitespace runs made one space). ``recall`` is left out: its three turns
carry the model's own replies, which no ``generate_until`` request does.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "smollm2-135m-instruct"
DATA = REPO / "example_suites" / "chat" / "data"

#: Slice -> (its data file's prompt column, max_new_tokens), as test_chat.py's quant_case says.
SLICES = {"extract": ("prompt", 16), "lookup": ("messages", 10)}
#: test_chat.py's STOP.
STOP = "."
#: example_suites/chat/pytest.ini's quant_batch_size.
BATCH_SIZE = 40


@dataclass(frozen=True)
class Case:
    """One case: its data id (the pytest id in brackets), slice, chat messages and check."""

    id: str
    slice: str
    messages: tuple[tuple[tuple[str, str], ...], ...]
    expected: str
    max_new_tokens: int

    def chat(self) -> list[dict[str, str]]:
        """The messages as ``apply_chat_template`` takes them."""
        return [dict(m) for m in self.messages]

    def prompt_length(self) -> int:
        """The plugin runner's sort key: characters of a string prompt, or of every message's values.

        An ``extract`` prompt is a string there; here it is already one user
        message, whose role ("user") the runner does not count.
        """
        if self.slice == "extract":
            return len(self.messages[0][0][1])
        return sum(len(v) for m in self.messages for _, v in m)


def load_cases(first: int | None = None) -> list[Case]:
    """Every single-turn case in the suite's order (extract, then lookup); the first N of each if given."""
    cases = []
    for name, (column, limit) in SLICES.items():
        rows = [
            json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines() if line.strip()
        ]
        for row in rows[:first]:
            value = row[column]
            chat = [{"role": "user", "content": value}] if isinstance(value, str) else value
            # (content, role): the plugin keeps a message's items sorted by key.
            messages = tuple(tuple(sorted(m.items())) for m in chat)
            cases.append(Case(row["id"], row["slice"], messages, row["expected"], limit))
    return cases


def batches(cases: Iterable[Case], size: int = BATCH_SIZE) -> list[list[Case]]:
    """The plugin runner's batches: cases grouped by settings (first seen first), each group
    longest prompt first (a stable sort: ties keep the suite's order), cut every ``size``."""
    groups: dict[int, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.max_new_tokens, []).append(case)
    out = []
    for group in groups.values():
        group.sort(key=lambda c: -c.prompt_length())
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def truncate_at_stop(text: str, stop: str = STOP) -> str:
    """Cut ``text`` before the first stop string, as the plugin's runner does."""
    at = text.find(stop)
    return text if at == -1 else text[:at]


def normalize(text: str) -> str:
    """``checks.normalize``: NFKC, stripped, every whitespace run one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def passes(case: Case, output: str) -> bool:
    """``checks.contains(output, expected)`` without raising."""
    return normalize(case.expected) in normalize(output)


def write_outputs(path: str | Path, outputs: dict[str, str], facts: dict[str, Any]) -> None:
    """One side's result: case id -> output, and what it ran with."""
    Path(path).write_text(json.dumps({"outputs": outputs, "facts": facts}, indent=1, sort_keys=True))
