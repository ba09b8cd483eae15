"""Batched, step-synchronous execution of cases on one model.

The runner thinks in *rounds*: every live case has one pending prompt; a
round sends all pending prompts (grouped by generation settings, sorted by
length, cut into batches) and hands each reply back to its case's driver,
which returns the next prompt or ``None`` when the case is done. A single
prompt case is a one-round driver; multi-step trajectories are drivers with
more rounds, so step k of every live case shares one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..backends.base import Backend, GenerationRequest, refusals, rendered_text
from ..values.prompts import GenerationSettings, Prompt
from ..values.transcript import CaseRun, Turn
from .cases import CaseSpec
from .records import describe_exception
from .trajectory import StepFailed, TrajectoryDriver

__all__ = [
    "BatchSize",
    "Driver",
    "SinglePrompt",
    "driver_of",
    "is_out_of_memory",
    "run_cases",
    "truncate_at_stop",
]


class Driver(Protocol):
    """Produces a case's prompts, round after round.

    A driver that raises :class:`~.trajectory.StepFailed` from ``step`` says
    the model failed the case there; any other exception is an error of the
    case.

    Attributes:
        state: The case's state after the last step (None for a case without one).
    """

    state: Any

    def start(self) -> Prompt | None:
        """The first prompt (None: nothing to generate)."""
        ...

    def step(self, reply: str) -> Prompt | None:
        """Take the model's reply; return the next prompt, or None when done."""
        ...


@dataclass
class SinglePrompt:
    """A case of one prompt and one reply."""

    prompt: Prompt
    state: Any = None

    def start(self) -> Prompt | None:
        return self.prompt

    def step(self, reply: str) -> Prompt | None:
        return None


def driver_of(case: CaseSpec) -> Driver:
    """A fresh driver of a case: its trajectory's, or a single prompt's."""
    if case.trajectory is not None:
        return TrajectoryDriver(case.trajectory, case.started)
    return SinglePrompt(case.prompt)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` before the earliest stop string, if any occurs."""
    cut = len(text)
    for s in stop:
        at = text.find(s)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def _prompt_length(prompt: Prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(v) for m in prompt for _, v in m)


class BatchSize:
    """The batch size of one model's run, halved on out-of-memory errors and kept.

    Attributes:
        size: The size of the next batch.
        backoffs: How many times it was halved.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a batch size must be at least 1, got {size}")
        self.size = size
        self.backoffs = 0

    def halve(self, failed: int) -> bool:
        """After a batch of ``failed`` requests ran out of memory: a smaller size; False at 1."""
        if failed <= 1:
            return False
        self.size = max(1, min(self.size, failed) // 2)
        self.backoffs += 1
        return True


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA, MPS, or a backend's own).

    Recognised by name, so that torch need not be imported:
    ``torch.cuda.OutOfMemoryError`` and anything else called
    ``OutOfMemoryError``, or a ``RuntimeError`` saying "out of memory"
    (older torch, MPS).
    """
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _groups(pending: dict[str, tuple[Prompt, GenerationSettings]]) -> Iterable[list[str]]:
    """Keys of pending cases by settings, each group longest prompt first.

    Sorting by length keeps padding low; longest first means an
    out-of-memory error shows up in the first batch, not the last.
    """
    groups: dict[GenerationSettings, list[str]] = {}
    for key, (_, settings) in pending.items():
        groups.setdefault(settings, []).append(key)
    for keys in groups.values():
        keys.sort(key=lambda k: -_prompt_length(pending[k][0]))
        yield keys


def run_cases(
    backend: Backend,
    cases: Sequence[CaseSpec],
    *,
    batch_size: int | BatchSize = 16,
    make_driver: Callable[[CaseSpec], Driver] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> dict[str, CaseRun]:
    """Run every case to completion on ``backend``; keyed by case key.

    Each round's requests are first put to the backend's
    ``check_requests`` (:func:`~.backends.base.refusals`): one it refuses,
    a prompt beyond the model's context say, becomes its case's error and is
    never generated. A batch that raises is retried one request at a time so
    that one bad case (a prompt the tokenizer rejects, say) becomes that
    case's error instead of the whole batch's — except an out-of-memory
    error (:func:`is_out_of_memory`): then the batch size is halved and the
    same cases are tried again, down to 1, and the smaller size is kept for
    the rest of the run (pass a :class:`BatchSize` to keep it across runs).
    No case is lost or generated twice. Only exceptions are caught: a
    ``KeyboardInterrupt`` stops the run at once.
    """
    sizer = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    make = make_driver or driver_of
    specs = {c.key: c for c in cases}
    runs = {c.key: CaseRun(c.key) for c in cases}
    drivers: dict[str, Driver] = {}
    pending: dict[str, tuple[Prompt, GenerationSettings]] = {}
    done = 0
    total = len(specs)
    round_no = 1  # the step every live case is at

    def finish(key: str) -> None:
        nonlocal done
        pending.pop(key, None)
        runs[key].state = drivers[key].state if key in drivers else None
        done += 1
        if on_progress is not None:
            on_progress(done, total, round_no)

    def step(keys: list[str], requests: list[GenerationRequest], replies: list[str | BaseException]) -> None:
        """Hand each reply of a batch to its case's driver; queue its next prompt."""
        for key, req, reply in zip(keys, requests, replies, strict=True):
            if isinstance(reply, BaseException):
                runs[key].error = f"generation failed: {describe_exception(reply)}"
                finish(key)
                continue
            text = truncate_at_stop(reply, req.settings.stop)
            runs[key].turns.append(Turn(req.prompt, text, rendered_text(backend, req)))
            try:
                nxt = drivers[key].step(text)
            except StepFailed as exc:
                runs[key].failure = str(exc)
                nxt = None
            except Exception as exc:
                runs[key].error = describe_exception(exc)
                nxt = None
            if nxt is None:
                finish(key)
            else:
                pending[key] = (nxt, specs[key].settings)

    for key, case in specs.items():
        try:
            drivers[key] = make(case)
            first = drivers[key].start()
        except Exception as exc:
            runs[key].error = describe_exception(exc)
            first = None
        if first is None:
            runs[key].state = drivers[key].state if key in drivers else None
            done += 1
        else:
            pending[key] = (first, case.settings)
    if on_progress is not None:
        on_progress(done, total, round_no)

    while pending:
        round_items = dict(pending)
        keys = list(round_items)
        try:
            refused = refusals(backend, [GenerationRequest(*round_items[k]) for k in keys])
        except Exception as exc:
            refused = [f"cannot check the request: {describe_exception(exc)}"] * len(keys)
        for key, problem in zip(keys, refused, strict=True):
            if problem is not None:
                runs[key].error = problem
                del round_items[key]
                finish(key)
        for group in _groups(round_items):
            at = 0
            while at < len(group):
                keys = group[at : at + sizer.size]
                requests = [GenerationRequest(round_items[k][0], round_items[k][1]) for k in keys]
                replies = _generate(backend, requests, sizer)
                if replies is None:  # out of memory: the same cases again, in smaller batches
                    continue
                at += len(keys)
                step(keys, requests, replies)
                if on_progress is not None:
                    on_progress(done, total, round_no)
        round_no += 1
    return runs


def _generate(
    backend: Backend, requests: list[GenerationRequest], sizer: BatchSize
) -> list[str | BaseException] | None:
    """Replies to one batch; None when it ran out of memory and the size was halved.

    Any other failure of the batch is retried one request at a time, so
    that a bad request fails alone.
    """
    try:
        return list(backend.generate(requests))
    except Exception as exc:
        if is_out_of_memory(exc):
            _free(backend)
            if sizer.halve(len(requests)):
                return None
            return [exc]  # a single request that does not fit
    replies: list[str | BaseException] = []
    for req in requests:
        try:
            replies.append(backend.generate([req])[0])
        except Exception as exc:
            replies.append(exc)
    return replies


def _free(backend: Backend) -> None:
    """Let the backend release cached memory after an out-of-memory error."""
    backend.free_memory()
