"""Scoring the reference's transcripts on every model, for token divergence (``--quant-divergence``).

The reference scores its own replies once (teacher forcing), keeping at each
position its top :data:`TOP_K` tokens and the mass outside them; those scores
are what the reference cache keeps, so that a warm run scores candidates
without loading the reference. Each candidate then scores the same replies
after the same prompts, asked for its log-probabilities of the reference's
top-k ids there (:mod:`..statistics.divergence` turns the pair into KL, top-1
agreement and Δp).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..backends.base import Backend, ScoreRequest, TokenScores
from ..statistics.divergence import CaseDivergence, case_divergence
from ..values.transcript import CaseRun
from .cases import CaseSpec
from .records import Outcome, describe_exception
from .runner import BatchSize, run_cases

__all__ = [
    "TOP_K",
    "Scoring",
    "candidate_divergences",
    "payload_to_scores",
    "reference_scores",
    "scores_to_payload",
]

#: The reference's tokens kept per position: KL is taken over them plus one tail bucket.
TOP_K = 32

#: Case key -> what a model's divergence on it is: the case's divergence, or why there is none.
Divergences = dict[str, "CaseDivergence | str"]


def _scorable(run: CaseRun | None) -> bool:
    return run is not None and run.error is None and bool(run.turns)


def _score_all(
    backend: Backend, requests: list[ScoreRequest], batch_size: int, on_batch: Callable[[int], None]
) -> list[TokenScores]:
    out: list[TokenScores] = []
    for at in range(0, len(requests), max(1, batch_size)):
        chunk = requests[at : at + max(1, batch_size)]
        scores = list(backend.score(chunk))
        if len(scores) != len(chunk):
            raise ValueError(f"{backend.label}: score returned {len(scores)} answers for {len(chunk)}")
        out.extend(scores)
        on_batch(len(out))
    return out


def reference_scores(
    backend: Backend,
    cases: Sequence[CaseSpec],
    runs: dict[str, CaseRun],
    *,
    batch_size: int,
    on_batch: Callable[[int], None] = lambda done: None,
) -> dict[str, list[TokenScores]]:
    """The reference's scores of its own replies, per case key, one entry per step.

    Cases whose run ended in an error, or has no step, are left out.
    Exceptions of the backend propagate (the caller says why divergence is
    not available).
    """
    todo = [c for c in cases if _scorable(runs.get(c.key))]
    requests: list[ScoreRequest] = []
    owners: list[str] = []
    for case in todo:
        for turn in runs[case.key].turns:
            requests.append(ScoreRequest(turn.prompt, turn.reply, top_k=TOP_K, settings=case.settings))
            owners.append(case.key)
    scores = _score_all(backend, requests, batch_size, on_batch)
    out: dict[str, list[TokenScores]] = {}
    for key, score in zip(owners, scores, strict=True):
        out.setdefault(key, []).append(score)
    return out


def candidate_divergences(
    backend: Backend,
    cases: Sequence[CaseSpec],
    runs: dict[str, CaseRun],
    reference: dict[str, list[TokenScores]],
    *,
    batch_size: int,
    reverse: bool = False,
    on_batch: Callable[[int], None] = lambda done: None,
) -> Divergences:
    """Each case's divergence of ``backend`` from the reference, on the reference's transcript.

    ``runs`` are the reference's runs, ``reference`` its scores
    (:func:`reference_scores`). A case the reference has no scores for is
    left out; one whose tokens the candidate splits differently gets the
    reason instead of a divergence. ``reverse`` scores the cases in the
    opposite order (the noise floor: the reference again, batched otherwise).
    """
    todo = [c for c in cases if c.key in reference and _scorable(runs.get(c.key))]
    if reverse:
        todo.reverse()
    requests: list[ScoreRequest] = []
    owners: list[str] = []
    for case in todo:
        for turn, ref in zip(runs[case.key].turns, reference[case.key], strict=True):
            ids = tuple(tuple(t for t, _ in position) for position in ref.top)
            requests.append(ScoreRequest(turn.prompt, turn.reply, top_k=1, settings=case.settings, ids=ids))
            owners.append(case.key)
    scores = _score_all(backend, requests, batch_size, on_batch)
    mine: dict[str, list[TokenScores]] = {}
    for key, score in zip(owners, scores, strict=True):
        mine.setdefault(key, []).append(score)
    out: Divergences = {}
    for case in todo:
        try:
            out[case.key] = case_divergence(reference[case.key], mine.get(case.key, []))
        except ValueError as exc:
            out[case.key] = str(exc)
    return out


def scores_to_payload(scores: Sequence[TokenScores]) -> dict[str, Any]:
    """A case's reference scores as builtins, for the reference cache (see :func:`payload_to_scores`)."""
    return {
        "k": TOP_K,
        "steps": [
            {
                "tokens": list(s.tokens),
                "logprobs": [_finite(x) for x in s.logprobs],
                "top": [[[t, _finite(lp)] for t, lp in position] for position in s.top],
                "rest": [_finite(x) for x in s.rest],
            }
            for s in scores
        ],
    }


def _finite(x: float) -> float | None:
    """A log-probability for JSON: -inf (no mass) as null."""
    return x if math.isfinite(x) else None


def _number(x: Any) -> float:
    return -math.inf if x is None else float(x)


def payload_to_scores(payload: Any) -> list[TokenScores] | None:
    """The scores :func:`scores_to_payload` wrote; None for anything else (another k, a damaged row)."""
    try:
        if payload.get("k") != TOP_K:
            return None
        return [
            TokenScores(
                tuple(int(t) for t in step["tokens"]),
                tuple(_number(x) for x in step["logprobs"]),
                tuple(tuple((int(t), _number(lp)) for t, lp in position) for position in step["top"]),
                (),
                tuple(_number(x) for x in step["rest"]),
            )
            for step in payload["steps"]
        ]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class Scoring:
    """What ``--quant-divergence`` and ``--quant-noise-floor`` keep over a session, on one process.

    The reference's scores of its replies (computed, or read from the
    cache), each candidate's divergence per case, the models whose
    divergence is not available and why, and the reference's second run for
    the noise floor with its divergence from the first. The executor calls
    it while each model is loaded, and asks it for a case's figures when it
    makes the case's record.
    """

    def __init__(
        self, labels: Sequence[str], *, divergence: bool, noise_floor: bool, emit: Callable[[str], None]
    ):
        self.reference, self.candidates = labels[0], list(labels[1:])
        self.divergence, self.noise_floor, self.emit = divergence, noise_floor, emit
        self.reference_scores: dict[str, list[TokenScores]] = {}
        self.divergences: dict[str, Divergences] = {}
        #: Models whose divergence is not available -> why (a backend that cannot score, say).
        self.off: dict[str, str] = {}
        self.noise_runs: dict[str, CaseRun] = {}
        self.noise_divergences: Divergences = {}

    def needs_model(self, label: str, cases: Sequence[CaseSpec]) -> bool:
        """Whether ``label`` must load though every case's run came from the cache.

        The reference must, to run again for the noise floor, or to score
        replies whose scores the cache does not hold.
        """
        if label != self.reference:
            return False
        return self.noise_floor or (
            self.divergence and any(c.key not in self.reference_scores for c in cases)
        )

    def score(
        self,
        label: str,
        backend: Backend,
        cases: Sequence[CaseSpec],
        runs: dict[str, CaseRun],
        *,
        batch_size: int,
    ) -> dict[str, list[TokenScores]]:
        """Score ``label``'s side while it is loaded; the reference's new scores (for the cache).

        ``runs`` are the reference's. A backend that cannot score turns
        divergence off for that model (for every model, when it is the
        reference), with one line saying why.
        """
        if not self.divergence or label in self.off:
            return {}
        try:
            if label != self.reference:
                self.divergences.setdefault(label, {}).update(
                    candidate_divergences(backend, cases, runs, self.reference_scores, batch_size=batch_size)
                )
                return {}
            missing = [c for c in cases if c.key not in self.reference_scores]
            if not missing:
                return {}
            self.emit(f"quantgate: {label}: scoring its replies to {len(missing)} cases ...")
            scores = reference_scores(backend, missing, runs, batch_size=batch_size)
            self.reference_scores.update(scores)
            return scores
        except Exception as exc:
            why = f"{label} cannot score replies: {describe_exception(exc).splitlines()[0]}"
            self.off[label] = why
            self.emit(f"quantgate: divergence not available: {why}")
            if label == self.reference:
                self.off.update(dict.fromkeys(self.candidates, why))
            return {}

    def run_noise_floor(self, backend: Backend, cases: Sequence[CaseSpec], runs: dict[str, CaseRun]) -> None:
        """The reference again, at batch size 1 in reverse order; scored against its first run too."""
        self.emit(
            f"quantgate: {self.reference}: noise floor: generating {len(cases)} cases again at batch size 1"
        )
        self.noise_runs.update(run_cases(backend, list(reversed(cases)), batch_size=BatchSize(1)))
        if self.divergence and self.reference not in self.off:
            try:
                self.noise_divergences.update(
                    candidate_divergences(
                        backend, cases, runs, self.reference_scores, batch_size=1, reverse=True
                    )
                )
            except Exception as exc:
                self.emit(f"quantgate: noise floor: cannot score: {describe_exception(exc)}")

    def of_case(self, key: str, candidates: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each candidate's divergence on a case, for its record, or why it has none."""
        out: dict[str, dict[str, Any]] = {}
        for label in candidates:
            value = self.off.get(label) or self.divergences.get(label, {}).get(key)
            if isinstance(value, CaseDivergence):
                out[label] = value.to_dict()
            elif value is not None:
                out[label] = {"unavailable": value}
        return out

    def noise_of(
        self, key: str, reference: CaseRun, check: Callable[[CaseRun], tuple[Outcome, str | None]]
    ) -> dict[str, Any] | None:
        """The reference's second run of a case: its outcome, whether it said the same, its divergence."""
        run = self.noise_runs.get(key)
        if run is None:
            return None
        result: Outcome
        if run.error is not None:
            result = "error"
        elif run.failure is not None:
            result = "fail"
        else:
            result, _ = check(run)
        out: dict[str, Any] = {
            "outcome": result,
            "same_output": [t.reply for t in run.turns] == [t.reply for t in reference.turns],
        }
        divergence = self.noise_divergences.get(key)
        if isinstance(divergence, CaseDivergence):
            out["divergence"] = divergence.to_dict()
        return out
