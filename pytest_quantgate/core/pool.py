"""The models of a session, and the progress of their generation.

:class:`ModelPool` loads each model once, lazily, under the session's load
policy, and remembers which could not be loaded; :class:`Progress` writes a
model's generation progress as log lines. The :class:`~.executor.Executor`
holds one pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..backends.base import Backend, BackendError, load_policy
from ..backends.registry import load_backend
from .config import GateConfig

__all__ = ["Emit", "ModelPool", "Progress", "ReferenceUnavailable", "token_counter"]

Emit = Callable[[str], None]


class ReferenceUnavailable(BackendError):
    """The reference model could not be loaded: there is nothing to gate against."""


class ModelPool:
    """Loads each model once, lazily, and remembers load failures.

    Attributes:
        facts: label -> ``describe()`` of each loaded model.
        failures: label -> the whole message of each model that failed to
            load (it is tried once).
    """

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self._emit = emit or (lambda line: None)
        self._loader = loader
        self._models: dict[str, Backend] = {}
        self._errors: dict[str, BackendError] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        self.loads: dict[str, int] = {}
        self.pinned: set[str] = set()
        #: label -> the warnings its libraries logged as it loaded, until the executor's line shows them.
        self.library_messages: dict[str, list[str]] = {}

    @property
    def specs(self) -> dict[str, Any]:
        assert self.config.reference is not None
        return {s.label: s for s in (self.config.reference, *self.config.candidates)}

    def get(self, label: str) -> Backend:
        """The loaded model, loading it on first use; raises BackendError."""
        if label in self._models:
            return self._models[label]
        if label in self._errors:
            raise self._errors[label]
        spec = self.specs[label]
        self._emit(f"quantgate: loading {spec.display} ...")
        try:
            # The safe-loading flags (backends.base), and where a loader says what takes long.
            with load_policy(self.config.load_policy(notify=self._emit)):
                model = self._loader(spec, device=self.config.device, dtype=self.config.dtype)
        except BackendError as exc:
            self._fail(label, exc)
            raise
        except Exception as exc:  # an unexpected failure is still this model's failure
            err = BackendError(f"cannot load {spec.label}: {type(exc).__name__}: {exc}")
            self._fail(label, err)
            raise err from exc
        self._models[label] = model
        self.library_messages[label] = list(model.library_messages)
        self.loads[label] = self.loads.get(label, 0) + 1
        self.facts[label] = {**self.facts.get(label, {}), **model.describe(), "loads": self.loads[label]}
        f = self.facts[label]
        self._emit(
            f"quantgate: loaded {label} on {f.get('device')} ({f.get('dtype')}) "
            f"in {f.get('load_seconds', 0):.1f}s"
        )
        return model

    def _fail(self, label: str, exc: BackendError) -> None:
        self._errors[label] = exc
        self.failures[label] = str(exc).strip() or type(exc).__name__
        self._emit(f"quantgate: could not load {label}: {self.failures[label]}")

    def pin(self, label: str) -> None:
        """Keep a model loaded once it is, for the rest of the session (a fixture hands it out)."""
        self.pinned.add(label)

    def is_loaded(self, label: str) -> bool:
        return label in self._models

    def release(self, label: str) -> None:
        """Free a loaded model unless it is pinned; the next :meth:`get` loads it again."""
        if label in self.pinned:
            return
        model = self._models.pop(label, None)
        if model is not None:
            model.close()

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()


class Progress:
    """Progress of one model's generation: a line every few seconds, and one at the end.

    Lines, never carriage returns (they must read well in a CI log)::

        quantgate: ref: generating 120/340 cases (step 3), 41s, 212 tok/s, ~75s left
        quantgate: ref: 340 cases generated in 118.2s (2.9 cases/s, 215 tok/s, up to 6 steps)

    ``every`` seconds between updates (fewer on CI); ``quiet`` keeps only the
    last line (``-q``). Tokens per second appear when the backend counts its
    generated tokens (``generated_tokens``).
    """

    def __init__(
        self,
        emit: Emit,
        label: str,
        total: int,
        *,
        every: float = 5.0,
        quiet: bool = False,
        tokens: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.emit, self.label, self.total, self.every = emit, label, total, every
        self.quiet, self.tokens, self.clock = quiet, tokens, clock
        self.started = self.last = clock()
        self.tokens_at_start = tokens()
        self.steps = 1
        self.finished = False

    def _rate(self, elapsed: float) -> str:
        now, start = self.tokens(), self.tokens_at_start
        if now is None or start is None or elapsed <= 0:
            return ""
        return f", {(now - start) / elapsed:.0f} tok/s"

    def __call__(self, done: int, total: int, step: int = 1) -> None:
        now = self.clock()
        self.steps = max(self.steps, step)
        if self.finished or (done < total and (self.quiet or now - self.last < self.every)):
            return
        self.finished = done >= total
        self.last = now
        elapsed = now - self.started
        if done >= total:
            rate = f"{total / elapsed:.1f} cases/s" if elapsed > 0 else ""
            extra = ", ".join(x for x in (rate, self._rate(elapsed).lstrip(", ")) if x)
            steps = f", up to {self.steps} steps" if self.steps > 1 else ""
            detail = f" ({extra}{steps})" if extra or steps else ""
            self.emit(f"quantgate: {self.label}: {total} cases generated in {elapsed:.1f}s{detail}")
        else:
            at = f" (step {step})" if step > 1 else ""
            eta = f", ~{elapsed / done * (total - done):.0f}s left" if done else ""
            self.emit(
                f"quantgate: {self.label}: generating {done}/{total} cases{at}, "
                f"{elapsed:.0f}s{self._rate(elapsed)}{eta}"
            )


def token_counter(backend: Backend) -> Callable[[], int | None]:
    """Reads the backend's count of generated tokens (None when it keeps none)."""
    return lambda: backend.generated_tokens
