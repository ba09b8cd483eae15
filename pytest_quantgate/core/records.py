"""What happened to a case: each model's outcome, the case's status per candidate, its record.

A :class:`CaseRecord` is made once, on the process that ran the case, with
its statuses and divergences computed there; it travels as builtins to the
process that reports, which reads them back and never derives them again.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import numbers
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "RECORD_KEY",
    "STATUS_KEY",
    "CaseRecord",
    "CheckResult",
    "ModelOutcome",
    "Outcome",
    "Status",
    "check_location",
    "classify",
    "describe_exception",
    "divergence",
    "graded_score",
    "own_status",
    "resolve_skips",
    "run_check",
    "worst_status",
]

#: Name of the user property that carries a :class:`CaseRecord` as JSON.
RECORD_KEY = "quantgate"
#: Name of the user property that carries the case's status (across candidates), flat, for the
#: terminal's letter: the report hook reads it without parsing the record.
STATUS_KEY = "quantgate_status"


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


@dataclass(frozen=True)
class ModelOutcome:
    """How one model did on one case."""

    outcome: Outcome
    output: str = ""
    message: str | None = None
    transcript: tuple[dict[str, Any], ...] = ()
    final_state: Any = None  # a trajectory's state after its last step
    #: A graded check's score in [0, 1] (the check returned a number); None for pass/fail.
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "outcome": self.outcome,
            "output": self.output,
            "message": self.message,
            "transcript": list(self.transcript),
        }
        if self.final_state is not None:
            out["final_state"] = self.final_state
        return {**out, "score": self.score} if self.score is not None else out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelOutcome:
        return cls(
            outcome=data["outcome"],
            output=data.get("output", ""),
            message=data.get("message"),
            transcript=tuple(data.get("transcript") or ()),
            final_state=data.get("final_state"),
            score=None if data.get("score") is None else float(data["score"]),
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
    """Everything the controller needs about one case, as builtins.

    ``statuses`` and ``divergences`` are computed once, when the record is
    made on the process that ran the case (left out, they are derived from
    the outcomes then); a record read back with :meth:`from_dict` carries
    the ones it was written with, so the process that reports never
    classifies a case again.
    """

    key: str
    nodeid: str
    slices: tuple[str, ...]
    cluster: str | None
    critical: bool
    reference: str  # label
    outcomes: dict[str, ModelOutcome]  # label -> outcome, reference included
    tolerances: dict[str, float] = field(default_factory=dict)  # set by slice markers
    prompt: str = ""  # the (first) prompt, chat messages as JSON
    params: dict[str, Any] = field(default_factory=dict)  # the other arguments: JSON values, else text
    #: Candidates that could not be loaded -> why; they have no outcome.
    unavailable: dict[str, str] = field(default_factory=dict)
    trajectory: bool = False  # a multi-step case
    #: Candidate -> the case's status for it (:func:`classify`).
    statuses: dict[str, Status] = field(default_factory=dict)
    #: Candidate -> where its run parted from the reference's (:func:`divergence`); trajectories only.
    divergences: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: ``--quant-divergence``: candidate -> its token divergence on the reference's transcript
    #: (``statistics.divergence.CaseDivergence.to_dict()``), or ``{"unavailable": why}``.
    token_divergences: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Slice -> its ``slice(max_kl=...)`` threshold.
    max_kl: dict[str, float] = field(default_factory=dict)
    #: ``--quant-noise-floor``: the reference's second run — its ``outcome``, whether its
    #: ``output`` was the same, and its token ``divergence`` from the first run (when scored).
    noise: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        ref = self.outcomes[self.reference]
        if not self.statuses:
            self.statuses.update(
                {c: classify(ref.outcome, self.outcomes[c].outcome) for c in self.candidates}
            )
        if self.trajectory and not self.divergences:
            self.divergences.update(
                {c: divergence(ref.transcript, self.outcomes[c].transcript) for c in self.candidates}
            )

    def divergence(self, candidate: str) -> dict[str, Any] | None:
        """Where a trajectory's run on ``candidate`` parted from the reference's (:func:`divergence`)."""
        return self.divergences.get(candidate)

    @property
    def candidates(self) -> list[str]:
        """The candidates that ran the case (not those that failed to load)."""
        return [label for label in self.outcomes if label != self.reference]

    def status(self, candidate: str) -> Status:
        return self.statuses[candidate]

    @property
    def worst(self) -> Status:
        """The case's status across candidates; with none given, the reference's own.

        When candidates were given but none could be loaded, there is
        nothing to compare: the case is skipped (an error of the reference
        stays an error).
        """
        if not self.statuses:
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
            **({"trajectory": True, "divergence": dict(self.divergences)} if self.trajectory else {}),
            **({"token_divergence": dict(self.token_divergences)} if self.token_divergences else {}),
            **({"max_kl": dict(self.max_kl)} if self.max_kl else {}),
            **({"noise": dict(self.noise)} if self.noise is not None else {}),
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
            statuses={k: Status(v) for k, v in (data.get("status") or {}).items()},
            divergences=dict(data.get("divergence") or {}),
            token_divergences=dict(data.get("token_divergence") or {}),
            max_kl={k: float(v) for k, v in (data.get("max_kl") or {}).items()},
            noise=dict(data["noise"]) if data.get("noise") is not None else None,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaseRecord:
        return cls.from_dict(json.loads(text))


class CheckResult(tuple[Outcome, "str | None"]):
    """``(outcome, message)`` of a check, with the graded ``score`` it returned (None if none)."""

    score: float | None

    def __new__(cls, outcome: Outcome, message: str | None, score: float | None = None) -> CheckResult:
        self = super().__new__(cls, (outcome, message))
        self.score = score
        return self


def graded_score(value: Any) -> tuple[float | None, str | None]:
    """A check's return value as a graded score: ``(score, None)``, ``(None, why)`` or ``(None, None)``.

    A real number (not a bool) is a score and must lie in [0, 1]; NaN or a
    number outside is a mistake of the check, and ``why`` says so in one
    line. Anything else (None, a bool, other objects) is no score: the
    check passed or failed by its assertions, as before.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's bool is no Real either
        return None, None
    score = float(value)
    if not 0.0 <= score <= 1.0:  # NaN fails both comparisons
        return None, f"the check returned {value!r}: a graded score must be a number in [0, 1]"
    return score, None


def run_check(
    check: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    fail_types: tuple[type[BaseException], ...] = (AssertionError,),
    skip_types: tuple[type[BaseException], ...] = (),
    xfail_types: tuple[type[BaseException], ...] = (),
    passthrough: tuple[type[BaseException], ...] = (),
) -> CheckResult:
    """Run a test body as the check of one model's output.

    ``fail_types`` mean the model failed the case; ``skip_types`` and
    ``xfail_types`` that the check skipped (or xfailed) on this output —
    what that means is decided across models by :func:`resolve_skips`, so
    a skip can never hide a regression; ``passthrough`` exceptions (an exit,
    an interrupt) propagate; anything else is an error of the case, never a
    pass. ``xfail_types`` are tried before ``fail_types`` (pytest's xfail
    exception is a kind of failure).

    A check that returns a number in [0, 1] is graded (:func:`graded_score`):
    the result carries the score, and the outcome is ``"pass"`` for full
    marks (1.0) and ``"fail"`` below, for the case's own status; the gate
    tests the scores. A number outside [0, 1], or NaN, is an error.
    """
    try:
        returned = check(**kwargs)
    except passthrough:
        raise
    except xfail_types as exc:
        return CheckResult("xfail", str(exc).strip() or None)
    except skip_types as exc:
        return CheckResult("skip", str(exc).strip() or None)
    except fail_types as exc:
        return CheckResult("fail", _short_message(exc))
    except Exception as exc:
        return CheckResult("error", _located(describe_exception(exc), check_location(check, exc)))
    score, problem = graded_score(returned)
    if problem is not None:
        return CheckResult("error", problem)
    if score is None:
        return CheckResult("pass", None)
    if score == 1.0:
        return CheckResult("pass", None, score)
    return CheckResult("fail", f"graded score {score:g}", score)


def check_location(check: Callable[..., Any], exc: BaseException) -> str | None:
    """``file.py:42``: the innermost frame of ``exc``'s traceback in the check's own file.

    What a reader needs to find the line of the check that raised (a
    ``KeyError`` says which key, not where); frames in libraries the check
    called are passed over. None when no frame of the traceback is in that
    file, or the check is no Python function.
    """
    code = getattr(inspect.unwrap(check), "__code__", None)
    if code is None:
        return None
    lines = [n for f, n in traceback.walk_tb(exc.__traceback__) if f.f_code.co_filename == code.co_filename]
    return f"{os.path.basename(code.co_filename)}:{lines[-1]}" if lines else None


def _located(message: str, location: str | None) -> str:
    """``message`` with `` (file.py:42)`` after its first line."""
    if location is None:
        return message
    first, newline, rest = message.partition("\n")
    return f"{first} ({location}){newline}{rest}"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of an exception, as Python prints its last line (no traceback)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _short_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
