"""Cases: the ``quant_case`` marker's arguments, case specs, checks, records.

Nothing here imports pytest. The plugin turns collected items into
:class:`CaseSpec` values, the runner turns those into transcripts, the check
of the test body turns transcripts into :class:`ModelOutcome` values, and a
:class:`CaseRecord` of builtins travels to the controller in
``item.user_properties``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

__all__ = [
    "ALL",
    "KEY_METHOD",
    "RECORD_KEY",
    "CaseBuildError",
    "CaseIdentityError",
    "CaseRecord",
    "CaseSpec",
    "GenerationSettings",
    "ModelOutcome",
    "Prompt",
    "QuantCaseMarker",
    "Status",
    "Turn",
    "build_case",
    "case_key",
    "check_tolerance",
    "classify",
    "divergence",
    "explicit_ids",
    "merge_tolerances",
    "own_status",
    "param_identities",
    "parse_quant_case",
    "parse_slice_marker",
    "resolve_skips",
    "run_check",
    "stable_repr",
    "worst_status",
]

#: Name of the user property that carries a :class:`CaseRecord` as JSON.
RECORD_KEY = "quantgate"
#: The name of the row (and pseudo-slice) of all cases together; no slice may take it.
ALL = "ALL"


class Status(str, enum.Enum):
    """What happened to one case, for one candidate; declared most severe first."""

    ERROR = "error"  # a check raised something other than a failure, or generation failed
    FAILED = "failed"  # no candidate was given and the reference failed
    REGRESSED = "regressed"  # the reference passes, the candidate fails
    IMPROVED = "improved"  # the reference fails, the candidate passes
    BOTH_FAILED = "both-failed"  # a weakness of the reference, not of quantization
    SKIPPED = "skipped"  # skipped (or xfailed) on the reference, or no candidate could be loaded
    PASSED = "passed"

    def __str__(self) -> str:
        return self.value

    @property
    def severity(self) -> int:
        """0 for the most severe status."""
        return _SEVERITY[self]

    def fails_test(self, *, critical: bool) -> bool:
        """Whether the case's own test fails: errors always, regressions when critical.

        A plain regression does not fail its test: whether a slice regressed
        is the gate's decision, made on all its cases together.
        """
        return self in (Status.ERROR, Status.FAILED) or (self is Status.REGRESSED and critical)


_SEVERITY = {s: i for i, s in enumerate(Status)}

#: How one model did on one case. ``skip`` and ``xfail``: the check called
#: ``pytest.skip()`` / ``pytest.xfail()`` on that model's output.
Outcome = Literal["pass", "fail", "error", "skip", "xfail"]
#: Outcomes of a check that skipped instead of deciding.
SKIPS: tuple[Outcome, ...] = ("skip", "xfail")
#: What a case's own test does: pass, fail, skip or xfail.
TestOutcome = Literal["pass", "fail", "skip", "xfail"]
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
    from .trajectory import Trajectory

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
    """Validate ``slice(*names, tolerance=None)`` -> (names, tolerance)."""
    unknown = sorted(set(kwargs) - {"tolerance"})
    if unknown:
        raise ValueError(f"slice got unknown argument(s) {', '.join(unknown)}; known: tolerance")
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


def merge_tolerances(*sources: Mapping[str, float]) -> dict[str, float]:
    """Per-slice margins from several markers or cases: the stricter margin wins."""
    out: dict[str, float] = {}
    for source in sources:
        for name, tol in source.items():
            out[name] = min(tol, out.get(name, tol))
    return out


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
    params: dict[str, str] = field(default_factory=dict)  # the other arguments, shortened, for reports
    trajectory: Any = None  # the case's Trajectory; ``prompt`` is then its first prompt

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (chat messages as JSON), for reports."""
        messages = prompt_messages(self.prompt)
        return self.prompt if isinstance(self.prompt, str) else json.dumps(messages)


#: Longest repr of an argument kept in a record (reports show arguments, not data sets).
PARAM_WIDTH = 200


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= PARAM_WIDTH else text[: PARAM_WIDTH - 1] + "…"


class CaseBuildError(ValueError):
    """A collected case that cannot become a :class:`CaseSpec`; one line."""


def build_case(
    marker: QuantCaseMarker,
    *,
    test_id: str,
    nodeid: str,
    params: Mapping[str, Any],
    index: int | None,
    slice_markers: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    cluster_mark: Any = None,
) -> CaseSpec:
    """The case of one collected item.

    Args:
        marker: the test's parsed ``quant_case``.
        test_id: the test's node id without its parameters.
        nodeid: the item's node id.
        params: every parameter of the item (``callspec.params``).
        index: the item's position in ``marker.argvalues``.
        slice_markers: ``(args, kwargs)`` of the ``slice`` markers, closest first.
        cluster_mark: the item's ``quant_cluster`` marker value, the cluster
            when the marker has no ``cluster=`` (set by :func:`~.loaders.load_cases`).

    Raises:
        CaseBuildError: the prompt or cluster cannot be built, or a parameter
            has no stable identity.
    """
    from .trajectory import Trajectory, TrajectoryDriver

    own = {n: params[n] for n in marker.argnames}
    trajectory = None
    try:
        raw_prompt = params[marker.prompt] if isinstance(marker.prompt, str) else marker.prompt(**own)
        if isinstance(raw_prompt, Trajectory):
            trajectory = raw_prompt
            first = TrajectoryDriver(trajectory).start()
            prompt = "" if first is None else first
        else:
            prompt = normalize_prompt(raw_prompt)
        cluster = None
        if marker.cluster is not None:
            value = params[marker.cluster] if isinstance(marker.cluster, str) else marker.cluster(**own)
            cluster = None if value is None else str(value)
        elif cluster_mark is not None:
            cluster = str(cluster_mark)
        explicit = (
            marker.explicit_ids[index] if index is not None and index < len(marker.explicit_ids) else None
        )
        key = case_key(test_id, param_identities(params, explicit), prompt, marker.settings)
    except CaseIdentityError as exc:
        raise CaseBuildError(f"{nodeid}: {exc}") from None
    except Exception as exc:  # the user's prompt= or cluster= callable, or a missing argument
        raise CaseBuildError(f"{nodeid}: cannot build the quant case: {_describe(exc)}") from exc
    slices: list[str] = []
    tolerances: list[dict[str, float]] = []
    for args, kwargs in slice_markers:
        names, tol = parse_slice_marker(args, kwargs)
        slices.extend(n for n in names if n not in slices)
        if tol is not None:
            tolerances.append(dict.fromkeys(names, tol))
    return CaseSpec(
        key=key,
        nodeid=nodeid,
        prompt=prompt,
        settings=marker.settings,
        slices=tuple(slices),
        cluster=cluster,
        critical=marker.critical,
        tolerances=merge_tolerances(*tolerances),
        params={n: _shown(v) for n, v in own.items() if n != marker.prompt},
        trajectory=trajectory,
    )


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


@dataclass(frozen=True)
class Turn:
    """One step of a case: the prompt sent and the reply received.

    Attributes:
        prompt: What the case asked (text, or chat messages).
        reply: The model's reply, cut at the first stop string.
        rendered: The exact text the model was fed (chat template applied),
            when the backend says; recorded where it differs from ``prompt``.
    """

    prompt: Prompt
    reply: str
    rendered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        messages = prompt_messages(self.prompt)
        out: dict[str, Any] = {"prompt": self.prompt if messages is None else messages, "reply": self.reply}
        if self.rendered is not None and self.rendered != self.prompt:
            out["rendered"] = self.rendered
        return out

    def __iter__(self) -> Iterator[Any]:
        """``prompt, reply = turn``."""
        return iter(
            (self.prompt if isinstance(self.prompt, str) else prompt_messages(self.prompt), self.reply)
        )


@dataclass(frozen=True)
class ModelOutcome:
    """How one model did on one case."""

    outcome: Outcome
    output: str = ""
    message: str | None = None
    transcript: tuple[dict[str, Any], ...] = ()
    final_state: Any = None  # a trajectory's state after its last step

    def to_dict(self) -> dict[str, Any]:
        out = {
            "outcome": self.outcome,
            "output": self.output,
            "message": self.message,
            "transcript": list(self.transcript),
        }
        if self.final_state is not None:
            out["final_state"] = self.final_state
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelOutcome:
        return cls(
            outcome=data["outcome"],
            output=data.get("output", ""),
            message=data.get("message"),
            transcript=tuple(data.get("transcript") or ()),
            final_state=data.get("final_state"),
        )


def divergence(
    reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Where two transcripts of one case part: the first step whose replies differ.

    Returns None when they are the same. Otherwise ``step`` (1-based), both
    replies there (None for a model whose run had already ended), and
    ``same_input``: whether both were fed byte-identical text at that step —
    always true for a deterministic trajectory, since every earlier reply
    was the same.
    """
    for i in range(max(len(reference), len(candidate))):
        ref = reference[i] if i < len(reference) else None
        cand = candidate[i] if i < len(candidate) else None
        if ref is not None and cand is not None and ref.get("reply") == cand.get("reply"):
            continue

        def fed(turn: Mapping[str, Any] | None) -> Any:
            return None if turn is None else turn.get("rendered", turn.get("prompt"))

        return {
            "step": i + 1,
            "reference": None if ref is None else ref.get("reply"),
            "candidate": None if cand is None else cand.get("reply"),
            "same_input": ref is not None and cand is not None and fed(ref) == fed(cand),
        }
    return None


def classify(reference: Outcome, candidate: Outcome) -> Status:
    """Status of a case for one candidate, from both models' outcomes.

    A case the check skipped on the reference is skipped for every
    candidate; a skip on a candidate alone counts as its failure (see
    :func:`resolve_skips`).
    """
    if reference in SKIPS:
        return Status.SKIPPED
    if "error" in (reference, candidate):
        return Status.ERROR
    if reference == "pass":
        return Status.PASSED if candidate == "pass" else Status.REGRESSED
    return Status.IMPROVED if candidate == "pass" else Status.BOTH_FAILED


def own_status(reference: Outcome) -> Status:
    """Status of a case run on the reference alone (no candidate given)."""
    return {
        "pass": Status.PASSED,
        "fail": Status.FAILED,
        "error": Status.ERROR,
        "skip": Status.SKIPPED,
        "xfail": Status.SKIPPED,
    }[reference]


def resolve_skips(outcomes: Mapping[str, ModelOutcome], reference: str) -> dict[str, ModelOutcome]:
    """A skip means the same for every model: what the reference's outcome says.

    A check that skips (or xfails) on the reference skips the case for
    every model. One that skips on a candidate's output but not on the
    reference's decided from that output: a skip there would hide exactly
    the regressions the gate exists to find, so it counts as the
    candidate's failure, with a message that says so.
    """
    if outcomes[reference].outcome in SKIPS:
        return dict(outcomes)
    out = {}
    for label, o in outcomes.items():
        if label != reference and o.outcome in SKIPS:
            verb = "skipped" if o.outcome == "skip" else "xfailed"
            o = dataclasses.replace(
                o,
                outcome="fail",
                message=f"the check {verb} on this output but not on the reference's: "
                f"an output-dependent {o.outcome} is treated as a failure ({o.message or 'no reason'})",
            )
        out[label] = o
    return out


def worst_status(statuses: Sequence[Status]) -> Status:
    """The most severe of several statuses (one per candidate)."""
    return min(statuses, key=lambda s: s.severity) if statuses else Status.PASSED


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
    prompt: str = ""  # the (first) prompt, chat messages as JSON
    params: dict[str, str] = field(default_factory=dict)  # the other arguments, as reprs
    #: Candidates that could not be loaded -> why; they have no outcome.
    unavailable: dict[str, str] = field(default_factory=dict)
    trajectory: bool = False  # a multi-step case

    def divergence(self, candidate: str) -> dict[str, Any] | None:
        """Where a trajectory's run on ``candidate`` parted from the reference's (:func:`divergence`)."""
        if not self.trajectory or candidate not in self.outcomes:
            return None
        return divergence(self.outcomes[self.reference].transcript, self.outcomes[candidate].transcript)

    @property
    def candidates(self) -> list[str]:
        """The candidates that ran the case (not those that failed to load)."""
        return [label for label in self.outcomes if label != self.reference]

    def status(self, candidate: str) -> Status:
        return classify(self.outcomes[self.reference].outcome, self.outcomes[candidate].outcome)

    @property
    def statuses(self) -> dict[str, Status]:
        return {c: self.status(c) for c in self.candidates}

    @property
    def worst(self) -> Status:
        """The case's status across candidates; with none given, the reference's own.

        When candidates were given but none could be loaded, there is
        nothing to compare: the case is skipped (an error of the reference
        stays an error).
        """
        if not self.candidates:
            own = own_status(self.outcomes[self.reference].outcome)
            if self.unavailable and own is not Status.ERROR:
                return Status.SKIPPED
            return own
        return worst_status(list(self.statuses.values()))

    @property
    def fails_test(self) -> bool:
        """Whether the case's own test fails (see :meth:`Status.fails_test`)."""
        return self.worst.fails_test(critical=self.critical)

    @property
    def test_outcome(self) -> tuple[TestOutcome, str | None]:
        """What the case's own test does, and the reason of a skip or xfail.

        Fails as :meth:`Status.fails_test` says; skips (or xfails) when the
        check skipped (or xfailed) on the reference, or when no candidate
        could be loaded; passes otherwise.
        """
        if self.fails_test:
            return "fail", None
        if self.worst is not Status.SKIPPED:
            return "pass", None
        ref = self.outcomes[self.reference]
        if ref.outcome == "xfail":
            return "xfail", ref.message
        if ref.outcome == "skip":
            return "skip", ref.message
        names = ", ".join(sorted(self.unavailable))
        return "skip", f"quantgate: nothing to compare: candidate {names} could not be loaded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "nodeid": self.nodeid,
            "slices": list(self.slices),
            "cluster": self.cluster,
            "critical": self.critical,
            "prompt": self.prompt,
            "params": dict(self.params),
            "reference": self.reference,
            "outcomes": {k: v.to_dict() for k, v in self.outcomes.items()},
            "unavailable": dict(self.unavailable),
            "tolerances": dict(self.tolerances),
            "status": {label: status.value for label, status in self.statuses.items()},
            **(
                {"trajectory": True, "divergence": {c: self.divergence(c) for c in self.candidates}}
                if self.trajectory
                else {}
            ),
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
            prompt=data.get("prompt", ""),
            params=dict(data.get("params") or {}),
            unavailable=dict(data.get("unavailable") or {}),
            trajectory=bool(data.get("trajectory")),
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
    skip_types: tuple[type[BaseException], ...] = (),
    xfail_types: tuple[type[BaseException], ...] = (),
    passthrough: tuple[type[BaseException], ...] = (),
) -> tuple[Outcome, str | None]:
    """Run a test body as the check of one model's output.

    ``fail_types`` mean the model failed the case; ``skip_types`` and
    ``xfail_types`` that the check skipped (or xfailed) on this output —
    what that means is decided across models by :func:`resolve_skips`, so
    a skip can never hide a regression; ``passthrough`` exceptions (an exit,
    an interrupt) propagate; anything else is an error of the case, never a
    pass. ``xfail_types`` are tried before ``fail_types`` (pytest's xfail
    exception is a kind of failure).
    """
    try:
        check(**kwargs)
    except passthrough:
        raise
    except xfail_types as exc:
        return "xfail", str(exc).strip() or None
    except skip_types as exc:
        return "skip", str(exc).strip() or None
    except fail_types as exc:
        return "fail", _short_message(exc)
    except Exception as exc:
        return "error", "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return "pass", None


def _short_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
