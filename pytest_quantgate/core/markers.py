"""The ``quant_case`` and ``slice`` markers' arguments, validated.

Nothing here imports pytest: the markers' ``args`` and ``kwargs`` come in as
plain values, and every problem is a ``ValueError`` of one line that the
collection hook shows at the test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..statistics.gate import ALL
from ..values.prompts import GenerationSettings
from .identity import CaseIdentityError, param_identities
from .trajectory import Trajectory

__all__ = [
    "QuantCaseMarker",
    "check_tolerance",
    "explicit_ids",
    "merge_tolerances",
    "parse_quant_case",
    "parse_slice_marker",
    "slice_max_kl",
]


@dataclass(frozen=True)
class QuantCaseMarker:
    """The validated arguments of ``@quant_case(...)``."""

    argnames: tuple[str, ...]
    argvalues: list[Any]
    ids: Any = None
    prompt: str | Callable[..., Any] = "prompt"
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    critical: bool = False
    cluster: str | Callable[..., Any] | None = None
    explicit_ids: tuple[str | None, ...] = ()  # per parameter set, see explicit_ids()

    def check_identities(self) -> None:
        """Every parameter set's values have a stable identity, or an explicit id.

        Raises:
            CaseIdentityError: naming the case and the argument.
        """
        for i, value in enumerate(self.argvalues):
            if _is_param_set(value):
                values = tuple(value.values)
            else:
                values = (value,) if len(self.argnames) == 1 else tuple(value)
            named = dict(zip(self.argnames, values, strict=False))
            try:
                param_identities(named, self.explicit_ids[i] if i < len(self.explicit_ids) else None)
            except CaseIdentityError as exc:
                raise CaseIdentityError(f"case #{i}: {exc}") from None


def check_tolerance(value: Any, name: str) -> float:
    """A tolerance margin: a number in [0, 1), a fraction of accuracy (``0.02`` = 2 points).

    The one rule for every source of a margin (``--quant-tolerance``, the
    ini keys, ``slice(tolerance=...)``), and the range the gate accepts: a
    margin of a whole 100 points cannot be exceeded, so no test of it means
    anything.

    Raises:
        ValueError: one line naming ``name``.
    """
    shown = value if isinstance(value, str) else repr(value)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in [0, 1), got {shown}")
    try:
        tol = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {shown}") from None
    if not 0.0 <= tol < 1.0:  # also false for NaN
        hint = " (a fraction: 0.02 means 2 points)" if 1.0 <= tol <= 100.0 else ""
        raise ValueError(f"{name} must be a number in [0, 1), got {shown}{hint}")
    return tol


_QUANT_CASE_KWARGS = ("ids", "prompt", "max_new_tokens", "stop", "chat_template", "critical", "cluster")


def parse_quant_case(args: Sequence[Any], kwargs: Mapping[str, Any]) -> QuantCaseMarker:
    """Validate ``quant_case(argnames, argvalues, **settings)``.

    Raises:
        ValueError: one line saying which argument is wrong and why.
    """
    if len(args) != 2:
        raise ValueError(
            "quant_case takes two positional arguments, argnames and argvalues "
            f"(like pytest.mark.parametrize), got {len(args)}"
        )
    unknown = sorted(set(kwargs) - set(_QUANT_CASE_KWARGS))
    if unknown:
        raise ValueError(
            f"quant_case got unknown argument(s) {', '.join(unknown)}; known: {', '.join(_QUANT_CASE_KWARGS)}"
        )
    raw_names, argvalues = args
    if isinstance(raw_names, str):
        argnames = tuple(n.strip() for n in raw_names.split(",") if n.strip())
    elif isinstance(raw_names, (list, tuple)) and all(isinstance(n, str) for n in raw_names):
        argnames = tuple(raw_names)
    else:
        raise ValueError(f"quant_case argnames must be a string or a list of strings, got {raw_names!r}")
    if not argnames:
        raise ValueError("quant_case needs at least one argument name")
    try:
        values = list(argvalues)
    except TypeError:
        raise ValueError(f"quant_case argvalues must be iterable, got {argvalues!r}") from None
    prompt = kwargs.get("prompt")
    if prompt is None:
        prompt = _default_prompt(argnames, values)
    if isinstance(prompt, str):
        if prompt not in argnames:
            raise ValueError(
                f"quant_case: the prompt argument {prompt!r} is not among the argnames "
                f"{', '.join(argnames)} (name it with prompt=...)"
            )
    elif not callable(prompt):
        raise ValueError("quant_case prompt= must be an argument name or a callable")
    max_new_tokens = kwargs.get("max_new_tokens", 64)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"quant_case max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    stop = kwargs.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"quant_case stop must be a string or a list of non-empty strings, got {stop!r}")
    chat = kwargs.get("chat_template")
    if chat not in (None, True, False):
        raise ValueError(f"quant_case chat_template must be True, False or None, got {chat!r}")
    critical = kwargs.get("critical", False)
    if not isinstance(critical, bool):
        raise ValueError(f"quant_case critical must be True or False, got {critical!r}")
    cluster = kwargs.get("cluster")
    if isinstance(cluster, str):
        if cluster not in argnames:
            raise ValueError(
                f"quant_case cluster={cluster!r} is not among the argnames {', '.join(argnames)}"
            )
    elif cluster is not None and not callable(cluster):
        raise ValueError("quant_case cluster= must be an argument name or a callable")
    return QuantCaseMarker(
        argnames=argnames,
        argvalues=values,
        ids=kwargs.get("ids"),
        explicit_ids=explicit_ids(values, kwargs.get("ids")),
        prompt=prompt,
        settings=GenerationSettings(max_new_tokens, tuple(stop), chat),
        critical=critical,
        cluster=cluster,
    )


def _default_prompt(argnames: tuple[str, ...], values: Sequence[Any]) -> str:
    """The prompt argument when ``prompt=`` is not given.

    ``prompt`` when an argument has that name; otherwise the one argument
    that holds a :class:`~.trajectory.Trajectory`.

    Raises:
        ValueError: no such argument, or several hold trajectories.
    """
    if "prompt" in argnames:
        return "prompt"

    holders = []
    for i, name in enumerate(argnames):
        for value in values:
            row = tuple(value.values) if _is_param_set(value) else (value,) if len(argnames) == 1 else value
            if isinstance(row, tuple) and i < len(row) and isinstance(row[i], Trajectory):
                holders.append(name)
                break
    if len(holders) == 1:
        return holders[0]
    if holders:
        raise ValueError(
            f"quant_case: several arguments hold a Trajectory ({', '.join(holders)}); "
            "name the one to run with prompt=..."
        )
    raise ValueError(
        f"quant_case: the prompt argument 'prompt' is not among the argnames {', '.join(argnames)} "
        "and none holds a Trajectory (name it with prompt=...)"
    )


def parse_slice_marker(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[str, ...], float | None]:
    """Validate ``slice(*names, tolerance=None, max_kl=None)`` -> (names, tolerance).

    ``max_kl`` is validated here and read with :func:`slice_max_kl`.
    """
    unknown = sorted(set(kwargs) - {"tolerance", "max_kl"})
    if unknown:
        raise ValueError(f"slice got unknown argument(s) {', '.join(unknown)}; known: tolerance, max_kl")
    slice_max_kl(kwargs)
    if not args:
        raise ValueError("slice needs at least one slice name")
    for name in args:
        if not isinstance(name, str) or not name.strip() or name == ALL:
            raise ValueError(f"slice names must be non-empty strings other than 'ALL', got {name!r}")
    tol = kwargs.get("tolerance")
    if tol is not None:
        if not isinstance(tol, (int, float)):
            raise ValueError(f"slice tolerance must be a number in [0, 1), got {tol!r}")
        tol = check_tolerance(tol, "slice tolerance")
    return tuple(args), tol


def slice_max_kl(kwargs: Mapping[str, Any]) -> float | None:
    """A slice marker's ``max_kl``: a positive number of nats per token, or None.

    Raises:
        ValueError: it is not a finite number above 0.
    """
    value = kwargs.get("max_kl")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"slice max_kl must be a number above 0 (nats per token), got {value!r}")
    return float(value)


def explicit_ids(argvalues: Sequence[Any], ids: Any) -> tuple[str | None, ...]:
    """The id the user gave each parameter set, or None where pytest makes one up.

    ``pytest.param(..., id=...)`` and a list ``ids=`` name a set explicitly;
    ``ids=callable`` does too where it returns a string.
    """
    out: list[str | None] = []
    for i, value in enumerate(argvalues):
        given: Any = None
        if _is_param_set(value):
            given = value.id
            values = value.values
        else:
            values = value if isinstance(value, tuple) else (value,)
        if given is None and isinstance(ids, (list, tuple)) and i < len(ids):
            given = ids[i]
        if given is None and callable(ids):
            named = [ids(v) for v in values]
            given = "-".join(named) if named and all(isinstance(x, str) for x in named) else None
        out.append(None if given is None else str(given))
    return tuple(out)


def _is_param_set(value: Any) -> bool:
    # pytest.param() returns a ParameterSet, a NamedTuple (values, marks, id);
    # the type is not part of pytest's public API, its fields are.
    return isinstance(value, tuple) and getattr(type(value), "_fields", None) == ("values", "marks", "id")


def merge_tolerances(*sources: Mapping[str, float]) -> dict[str, float]:
    """Per-slice margins from several markers or cases: the stricter margin wins."""
    out: dict[str, float] = {}
    for source in sources:
        for name, tol in source.items():
            out[name] = min(tol, out.get(name, tol))
    return out
