"""Cases: the ``quant_case`` marker's arguments, case specs, checks, records.

Nothing here imports pytest. The plugin turns collected items into
:class:`CaseSpec` values, the runner turns those into transcripts, the check
of the test body turns transcripts into :class:`ModelOutcome` values, and a
:class:`CaseRecord` of builtins travels to the controller in
``item.user_properties``.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "RECORD_KEY",
    "STATUSES",
    "CaseRecord",
    "CaseSpec",
    "GenerationSettings",
    "ModelOutcome",
    "Prompt",
    "QuantCaseMarker",
    "Turn",
    "case_key",
    "classify",
    "parse_quant_case",
    "parse_slice_marker",
    "run_check",
    "stable_repr",
    "worst_status",
]

#: Name of the user property that carries a :class:`CaseRecord` as JSON.
RECORD_KEY = "quantgate"
#: Per-case statuses, most severe first ("failed": the reference alone ran and failed).
STATUSES = ("error", "failed", "regressed", "improved", "both-failed", "passed")

Outcome = Literal["pass", "fail", "error"]
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSettings:
        return cls(
            max_new_tokens=int(data["max_new_tokens"]),
            stop=tuple(data.get("stop") or ()),
            chat_template=data.get("chat_template"),
        )


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
    prompt = kwargs.get("prompt", "prompt")
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
        prompt=prompt,
        settings=GenerationSettings(max_new_tokens, tuple(stop), chat),
        critical=critical,
        cluster=cluster,
    )


def parse_slice_marker(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[tuple[str, ...], float | None]:
    """Validate ``slice(*names, tolerance=None)`` -> (names, tolerance)."""
    unknown = sorted(set(kwargs) - {"tolerance"})
    if unknown:
        raise ValueError(f"slice got unknown argument(s) {', '.join(unknown)}; known: tolerance")
    if not args:
        raise ValueError("slice needs at least one slice name")
    for name in args:
        if not isinstance(name, str) or not name.strip() or name == "ALL":
            raise ValueError(f"slice names must be non-empty strings other than 'ALL', got {name!r}")
    tol = kwargs.get("tolerance")
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= tol <= 1.0:
            raise ValueError(f"slice tolerance must be a number in [0, 1], got {tol!r}")
        tol = float(tol)
    return tuple(args), tol


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


def stable_repr(value: Any) -> str:
    """A repr that does not change between runs (no ids, sorted mappings)."""
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(
                f"{stable_repr(k)}: {stable_repr(v)}"
                for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))
            )
            + "}"
        )
    if isinstance(value, (list, tuple)):
        inner = ", ".join(stable_repr(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


def case_key(test_id: str, params: Mapping[str, Any], prompt: Prompt, settings: GenerationSettings) -> str:
    """A stable key of a case: the test, its parameters, prompt and settings.

    The parametrize id is left out on purpose: reordering cases or renaming
    ids must not change which case is which.
    """
    payload = json.dumps(
        [test_id, stable_repr(dict(params)), stable_repr(prompt), settings.to_dict()],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CaseSpec:
    """What the runner needs to produce one case's transcript."""

    key: str
    nodeid: str
    prompt: Prompt
    settings: GenerationSettings
    slices: tuple[str, ...] = ()
    cluster: str | None = None
    critical: bool = False
    tolerances: dict[str, float] = field(default_factory=dict)  # set by slice markers


@dataclass(frozen=True)
class Turn:
    """One round of a case: the prompt sent and the reply received."""

    prompt: Prompt
    reply: str

    def to_dict(self) -> dict[str, Any]:
        messages = prompt_messages(self.prompt)
        return {"prompt": self.prompt if messages is None else messages, "reply": self.reply}


@dataclass(frozen=True)
class ModelOutcome:
    """How one model did on one case."""

    outcome: Outcome
    output: str = ""
    message: str | None = None
    transcript: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "output": self.output,
            "message": self.message,
            "transcript": list(self.transcript),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelOutcome:
        return cls(
            outcome=data["outcome"],
            output=data.get("output", ""),
            message=data.get("message"),
            transcript=tuple(data.get("transcript") or ()),
        )


def classify(reference: Outcome, candidate: Outcome) -> str:
    """Status of a case for one candidate, from both models' outcomes."""
    if "error" in (reference, candidate):
        return "error"
    if reference == "pass":
        return "passed" if candidate == "pass" else "regressed"
    return "improved" if candidate == "pass" else "both-failed"


def worst_status(statuses: Sequence[str]) -> str:
    """The most severe of several statuses (one per candidate)."""
    return min(statuses, key=STATUSES.index) if statuses else "passed"


@dataclass(frozen=True)
class CaseRecord:
    """Everything the controller needs about one case, as builtins."""

    key: str
    nodeid: str
    slices: tuple[str, ...]
    cluster: str | None
    critical: bool
    reference: str  # label
    outcomes: dict[str, ModelOutcome]  # label -> outcome, reference included
    tolerances: dict[str, float] = field(default_factory=dict)  # set by slice markers

    @property
    def candidates(self) -> list[str]:
        return [label for label in self.outcomes if label != self.reference]

    def status(self, candidate: str) -> str:
        return classify(self.outcomes[self.reference].outcome, self.outcomes[candidate].outcome)

    @property
    def statuses(self) -> dict[str, str]:
        return {c: self.status(c) for c in self.candidates}

    @property
    def worst(self) -> str:
        """The case's status across candidates; with none, the reference's own."""
        if not self.candidates:
            return {"pass": "passed", "fail": "failed", "error": "error"}[
                self.outcomes[self.reference].outcome
            ]
        return worst_status(list(self.statuses.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "nodeid": self.nodeid,
            "slices": list(self.slices),
            "cluster": self.cluster,
            "critical": self.critical,
            "reference": self.reference,
            "outcomes": {k: v.to_dict() for k, v in self.outcomes.items()},
            "tolerances": dict(self.tolerances),
            "status": self.statuses,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseRecord:
        return cls(
            key=data["key"],
            nodeid=data["nodeid"],
            slices=tuple(data["slices"]),
            cluster=data.get("cluster"),
            critical=bool(data.get("critical")),
            reference=data["reference"],
            outcomes={k: ModelOutcome.from_dict(v) for k, v in data["outcomes"].items()},
            tolerances={k: float(v) for k, v in (data.get("tolerances") or {}).items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaseRecord:
        return cls.from_dict(json.loads(text))


def run_check(
    check: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    fail_types: tuple[type[BaseException], ...] = (AssertionError,),
    passthrough: tuple[type[BaseException], ...] = (),
) -> tuple[Outcome, str | None]:
    """Run a test body as the check of one model's output.

    ``fail_types`` mean the model failed the case; ``passthrough`` exceptions
    (skips, interrupts) propagate; anything else is an error of the case,
    never a pass.
    """
    try:
        check(**kwargs)
    except passthrough:
        raise
    except fail_types as exc:
        return "fail", _short_message(exc)
    except Exception as exc:
        return "error", "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "pass", None


def _short_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
