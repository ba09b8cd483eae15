"""Multi-step cases: a :class:`Trajectory` and the runner's driver of it.

A trajectory is a small environment written in Python. The model is shown
``render(state)``; its reply goes to ``apply(state, reply)``, which returns
the next state; this repeats until ``done(state)`` or ``max_steps`` replies.
The test body then checks the final state in code. Nothing here imports
pytest or a model library.

States must be JSON-serialisable: they are recorded per model in the report
(and will be cached). Each state is passed through a JSON round trip as it is
made, so a trajectory that mutates its state in place cannot leak one model's
state into another's, and a state that could not be recorded is an error of
the case the moment it appears, naming the step.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..values.prompts import Prompt, normalize_prompt

__all__ = ["DEFAULT_MAX_STEPS", "Started", "StepFailed", "Trajectory", "TrajectoryDriver", "checked_state"]

#: Replies a trajectory may take when its class does not say.
DEFAULT_MAX_STEPS = 8


class Trajectory:
    """Base class of a multi-step case; subclass it and pass instances to ``quant_case``.

    Example::

        class Echo(Trajectory):
            max_steps = 4
            def __init__(self, start): self.start = start
            def initial_state(self): return {"text": self.start, "got": []}
            def render(self, state): return state["text"]
            def apply(self, state, reply):
                return {"text": state["text"] + reply[:2], "got": state["got"] + [reply[:2]]}
            def done(self, state): return len(state["got"]) >= 4

    ``apply`` raising ``AssertionError`` means the model failed the case at
    that step (an action that does not parse, say); any other exception is
    an error of the case.

    The case's identity (which case is which across processes and runs) is
    the class and the instance's attributes; override :meth:`quantgate_key`
    when an attribute has no stable value of its own.
    """

    #: The most replies one run of the case takes.
    max_steps: ClassVar[int] = DEFAULT_MAX_STEPS

    def initial_state(self) -> Any:
        """The state before the first step (JSON-serialisable)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define initial_state()")

    def render(self, state: Any) -> Any:
        """What the model is shown in ``state``: text, or a list of chat messages."""
        raise NotImplementedError(f"{type(self).__qualname__} must define render(state)")

    def apply(self, state: Any, reply: str) -> Any:
        """The state after the model replied ``reply``; raise AssertionError for a failed step."""
        raise NotImplementedError(f"{type(self).__qualname__} must define apply(state, reply)")

    def done(self, state: Any) -> bool:
        """Whether the case is over in ``state`` (default: never; ``max_steps`` ends it)."""
        return False

    def quantgate_key(self) -> Any:
        """The case's identity: its class's step cap and the instance's attributes."""
        return {"max_steps": type(self).max_steps, "attributes": dict(vars(self))}


class StepFailed(AssertionError):
    """``apply`` rejected the model's reply: the model failed the case at this step."""


def checked_state(state: Any, where: str) -> Any:
    """``state`` after a JSON round trip.

    Raises:
        TypeError: the state cannot be written as JSON; the message names ``where``.
    """
    try:
        return json.loads(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the state {where} is not JSON-serialisable ({exc}); states are recorded") from None


def max_steps_of(trajectory: Trajectory) -> int:
    """The trajectory's step cap, checked."""
    cap = getattr(trajectory, "max_steps", DEFAULT_MAX_STEPS)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"{type(trajectory).__qualname__}.max_steps must be a positive integer, got {cap!r}")
    return cap


#: How a trajectory began: its first prompt (None: done at once) and its initial state.
Started = tuple["Prompt | None", Any]


class TrajectoryDriver:
    """Runs one trajectory on one model for the runner (a :class:`~.runner.Driver`).

    Attributes:
        state: The current state; after the run, the final state.
        steps: Replies applied so far.
    """

    def __init__(self, trajectory: Trajectory, started: Started | None = None):
        """``started``: how the case began when it was collected (:meth:`start` of a first driver);
        given, the trajectory's ``initial_state``, ``done`` and ``render`` are not asked again."""
        self.trajectory = trajectory
        self.cap = max_steps_of(trajectory)
        self.steps = 0
        self.state: Any = None
        self._started = started

    def start(self) -> Prompt | None:
        """The first prompt; None when the initial state is already done."""
        if self._started is not None:
            first, state = self._started
            self.state = checked_state(state, "of initial_state()")  # each model's own copy
            return first
        self.state = checked_state(self.trajectory.initial_state(), "of initial_state()")
        return self._next()

    def step(self, reply: str) -> Prompt | None:
        """Apply the reply; the next prompt, or None when the case is over.

        Raises:
            StepFailed: ``apply`` raised AssertionError (the model failed here).
        """
        self.steps += 1
        try:
            new = self.trajectory.apply(self.state, reply)
        except AssertionError as exc:
            lines = str(exc).strip().splitlines()  # the first line, as a failed check's
            raise StepFailed(
                f"step {self.steps}: {lines[0] if lines else 'apply() rejected the reply'}"
            ) from exc
        self.state = checked_state(new, f"after step {self.steps}")
        return None if self.steps >= self.cap else self._next()

    def _next(self) -> Prompt | None:
        if self.trajectory.done(self.state):
            return None
        return normalize_prompt(self.trajectory.render(self.state))
