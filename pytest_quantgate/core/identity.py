"""Case identity: which case is which, the same in every process and run.

A case's key is a hash of its test, its parameters (written out by
:func:`stable_repr`), its prompt and its generation settings; xdist workers,
the controller and two runs sharing a cache all compute the same key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ..values.prompts import GenerationSettings, Prompt

__all__ = [
    "KEY_METHOD",
    "CaseIdentityError",
    "DeclaredId",
    "case_key",
    "param_identities",
    "stable_repr",
]


class CaseIdentityError(ValueError):
    """A case parameter whose identity cannot be written down the same way twice."""


#: The method a class defines to declare the identity of its instances as builtins.
KEY_METHOD = "quantgate_key"


def stable_repr(value: Any) -> str:
    """Text that names ``value`` the same in every process and every run.

    Builtins are written out (mappings sorted); dataclass instances by their
    class and compared fields; enum members by name; module-level functions
    and classes by qualified name; any object by what its ``quantgate_key()``
    method returns. Anything else (an object whose only name is its memory
    address) raises :class:`CaseIdentityError`.
    """
    if hasattr(type(value), KEY_METHOD) and not isinstance(value, type):
        return f"{_qualname(type(value))}<{stable_repr(getattr(value, KEY_METHOD)())}>"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ", ".join(f"{stable_repr(k)}: {stable_repr(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(stable_repr(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(stable_repr(v) for v in value)) + "}"
    if isinstance(value, (str, int, float, bool, bytes, type(None))):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{_qualname(type(value))}.{value.name}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(
            f"{f.name}={stable_repr(getattr(value, f.name))}" for f in dataclasses.fields(value) if f.compare
        )
        return f"{_qualname(type(value))}({fields})"
    if isinstance(value, PurePath):
        return f"{type(value).__name__}({str(value)!r})"
    if callable(value) and hasattr(value, "__qualname__") and "<" not in value.__qualname__:
        return _qualname(value)  # a module-level function or class
    raise CaseIdentityError(
        f"its value, of type {type(value).__qualname__}, has no stable identity "
        "(its repr is not the same in every process); "
        f"make it a dataclass, give its class a {KEY_METHOD}() method returning builtins, "
        "or give the case an explicit id with pytest.param(..., id=...)"
    )


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def case_key(test_id: str, params: Mapping[str, Any], prompt: Prompt, settings: GenerationSettings) -> str:
    """A stable key of a case: the test, its parameters, prompt and settings.

    The same case gets the same key in every process and run (xdist workers
    and the controller, two runs sharing a cache). The parametrize id is left
    out on purpose: reordering cases or renaming ids must not change which
    case is which — unless an id is what names a parameter (see
    :func:`param_identities`).

    Raises:
        CaseIdentityError: naming the parameter that has no stable identity.
    """
    payload = json.dumps(
        [test_id, _params_repr(params), stable_repr(prompt), settings.to_dict()],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _params_repr(params: Mapping[str, Any]) -> str:
    parts = []
    for name, value in sorted(params.items()):
        try:
            text = value.text if isinstance(value, DeclaredId) else stable_repr(value)
        except CaseIdentityError as exc:
            raise CaseIdentityError(f"argument {name!r}: {exc}") from None
        parts.append(f"{name!r}: {text}")
    return "{" + ", ".join(parts) + "}"


@dataclass(frozen=True)
class DeclaredId:
    """A parameter that is named by its case's explicit id instead of its value."""

    text: str


def param_identities(params: Mapping[str, Any], explicit_id: str | None) -> dict[str, Any]:
    """The parameters as :func:`case_key` takes them.

    A parameter without a stable identity is replaced by the case's explicit
    id when it has one; without one, :class:`CaseIdentityError` names it.
    """
    out: dict[str, Any] = {}
    for name, value in params.items():
        try:
            stable_repr(value)
        except CaseIdentityError as exc:
            if explicit_id is None:
                raise CaseIdentityError(f"argument {name!r}: {exc}") from None
            value = DeclaredId(f"id:{explicit_id}")
        out[name] = value
    return out
