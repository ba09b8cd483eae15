"""The calibration texts of ``--quant-calibration``: read once, with their digest.

Quantizing on the fly (``gptq:``, ``awq:``) calibrates on them, the cache
keys such a candidate's results by their digest, and the report counts eval
cases found in them; all three take the one :class:`Calibration` the
configuration read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import jsonl_rows

__all__ = ["Calibration", "calibration_digest", "read_calibration"]


@dataclass(frozen=True)
class Calibration:
    """A calibration file and its texts, in order.

    Attributes:
        path: The file (absolute).
        texts: Its texts (:func:`read_calibration`).
        digest: :func:`calibration_digest` of the texts.
    """

    path: Path
    texts: tuple[str, ...] = field(repr=False)
    digest: str

    @classmethod
    def read(cls, path: Path) -> Calibration:
        """Read ``path`` once.

        Raises:
            ValueError: the file cannot be read; one line naming it.
        """
        texts = tuple(read_calibration(path))
        return cls(path=path, texts=texts, digest=calibration_digest(texts))


def read_calibration(path: Path) -> list[str]:
    """The calibration texts of a file: JSONL (a ``text`` field, else every string value) or plain text.

    Raises:
        ValueError: the file cannot be read; one line naming it.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the calibration file {path}: {exc}") from None
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        return [line for line in raw.splitlines() if line.strip()]
    texts: list[str] = []
    for _, row in jsonl_rows(path, raw):
        texts.extend(_strings(row.get("text", row) if isinstance(row, dict) else row))
    return texts


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def calibration_digest(texts: Sequence[str]) -> str:
    """A hash of the calibration texts, in order (the file's layout does not matter)."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()
