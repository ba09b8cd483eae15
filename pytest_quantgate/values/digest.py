"""The one digest of a JSON-able value (cache keys, checkpoint keys, tokenizer fingerprints), and
library objects made JSON-able for reports."""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any

__all__ = ["json_digest", "jsonable"]


def json_digest(value: Any, length: int | None = None) -> str:
    """Hex sha256 of ``value`` written as JSON with sorted keys (its first ``length`` digits).

    Equal mappings give equal digests whatever their order. A value JSON
    cannot write is written by its type and repr: an address in a repr only
    ever makes a digest differ (a cache miss), never two values agree.
    """
    text = json.dumps(value, sort_keys=True, default=_fallback)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return digest if length is None else digest[:length]


def _fallback(value: Any) -> str:
    return f"{type(value).__qualname__}:{value!r}"


def jsonable(value: Any) -> Any:
    """``value`` as JSON builtins: enums by value, mappings with string keys, anything else by ``str``."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
