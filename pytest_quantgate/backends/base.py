"""The backend contract: what the runner asks of a model.

A backend generates greedy continuations for a batch of requests and scores
given continuations token by token (teacher forcing, for divergence and
perplexity metrics). Heavy libraries are imported only inside the backend
that needs them; :func:`load_backend` picks the backend by the spec's scheme
from a registry of lazily imported factories.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from ..cases import GenerationSettings, Prompt

if TYPE_CHECKING:
    from ..config import GateConfig
    from ..specs import ModelSpec

__all__ = [
    "Backend",
    "BackendError",
    "GenerationRequest",
    "LoadPolicy",
    "current_load_policy",
    "load_backend",
    "load_policy",
    "refusals",
    "register_backend",
    "rendered_text",
]


class BackendError(RuntimeError):
    """A model that cannot be loaded or used; the message says why and what to do."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to continue greedily."""

    prompt: Prompt
    settings: GenerationSettings


@runtime_checkable
class Backend(Protocol):
    """A loaded model."""

    label: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy continuations, one per request, in order, untruncated."""
        ...

    def token_logprobs(self, pairs: Sequence[tuple[Prompt, str]]) -> list[list[float]]:
        """Log-probability of each token of ``continuation`` after ``prompt``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the report: path, dtype, device, quantization config."""
        ...

    def close(self) -> None:
        """Release memory held by the model."""
        ...


def refusals(backend: Backend, requests: Sequence[GenerationRequest]) -> list[str | None]:
    """Per request, why the model cannot take it (a prompt beyond its context), or None.

    Asked before generating, so that a request the model cannot take becomes
    an error of its case rather than a silent overrun or a memory blow-up.
    A backend opts in with a ``check_requests(requests)`` method returning
    that list; one without it takes every request.
    """
    check = getattr(backend, "check_requests", None)
    if check is None:
        return [None] * len(requests)
    problems = list(check(requests))
    if len(problems) != len(requests):
        raise BackendError(
            f"{backend.label}: check_requests returned {len(problems)} answers for {len(requests)}"
        )
    return problems


def rendered_text(backend: Backend, request: GenerationRequest) -> str | None:
    """The exact text the model is fed for a request (chat template applied), or None.

    Recorded with every turn, so that a report shows that the reference and
    a candidate saw byte-identical inputs up to where their replies parted.
    A backend opts in with a ``render_text(request)`` method; one without it,
    or one that cannot render the request, gives None.
    """
    render = getattr(backend, "render_text", None)
    if render is None:
        return None
    try:
        return str(render(request))
    except Exception:
        return None


@dataclass(frozen=True)
class LoadPolicy:
    """What the session lets a checkpoint do while it loads: the ``--quant-*`` safety flags.

    Attributes:
        trust_remote_code: run the code a checkpoint ships (an ``auto_map``).
        allow_pickle: load pickled weights (``pytorch_model.bin``) when a
            checkpoint has no safetensors; unpickling can run code.
        allow_tokenizer_mismatch: gate a candidate whose tokenizer differs
            from the reference's (the differences go to its facts).
        reference: the session's reference, whose tokenizer a candidate's is
            compared with; None compares nothing.
        calibration: the calibration file of ``gptq:``/``awq:`` specs.
        store: where quantized checkpoints are kept (the cache directory);
            None: a temporary directory (``--quant-cache=off``).
        refresh: quantize again even when a stored checkpoint exists.
        notify: where a loader says what it did that takes time (quantizing).
    """

    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_tokenizer_mismatch: bool = False
    reference: ModelSpec | None = None
    calibration: Path | None = None
    store: Path | None = None
    refresh: bool = False
    notify: Callable[[str], None] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, config: GateConfig, notify: Callable[[str], None] | None = None) -> LoadPolicy:
        """The policy a session's configuration asks for."""
        return cls(
            trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle,
            allow_tokenizer_mismatch=config.allow_tokenizer_mismatch,
            reference=config.reference,
            calibration=config.calibration,
            store=config.cache_dir if config.cache_mode != "off" else None,
            refresh=config.cache_mode == "refresh",
            notify=notify,
        )


# The policy reaches a backend's loader (``HFBackend.load``) through a context variable rather
# than an argument: loaders are called as ``loader(spec, device=, dtype=)`` by
# the model pool, the plugin's hook and ``load_backend``, and that signature is
# public (``pytest_quantgate_make_backend``). The pool sets it around each load
# (``with load_policy(...)``); outside one, the strict default applies.
_POLICY: contextvars.ContextVar[LoadPolicy] = contextvars.ContextVar("quantgate_load_policy")
_STRICT = LoadPolicy()


@contextlib.contextmanager
def load_policy(policy: LoadPolicy) -> Iterator[LoadPolicy]:
    """Load models under ``policy`` inside the block (the strict default outside)."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def current_load_policy() -> LoadPolicy:
    """The policy loads run under now (a backend of a plugin may honour it too)."""
    return _POLICY.get(_STRICT)


#: A loader: ``factory(spec, device, dtype)`` returns a loaded :class:`Backend`.
Factory = Callable[["ModelSpec", str, str], Backend]
#: Backend kind -> "module:attribute" of its factory, imported on first use.
_FACTORIES: dict[str, str | Factory] = {
    "hf": "pytest_quantgate.backends.hf:HFBackend.load",
    "fake": "pytest_quantgate.backends.fake:FakeBackend.load",
}


def register_backend(kind: str, factory: str | Factory) -> None:
    """Make a backend kind loadable: a factory, or its ``"module:attr"`` path (imported lazily).

    A scheme names its backend kind (:class:`~..specs.Scheme`); a plugin that
    brings a new kind registers it here, or implements the
    ``pytest_quantgate_make_backend`` hook instead.
    """
    _FACTORIES[kind] = factory


def _resolve(kind: str) -> Factory:
    target = _FACTORIES[kind]
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return cast(Factory, obj)


def load_backend(spec: ModelSpec, *, device: str, dtype: str) -> Backend:
    """Load the model a spec names with the backend its scheme asks for.

    Raises:
        BackendError: the kind is unknown, its packages are missing, or the
            model cannot be loaded.
    """
    scheme = spec.kind
    try:
        factory = _resolve(scheme.backend)
    except KeyError:
        raise BackendError(
            f"no backend {scheme.backend!r} for {spec.label}; known: {', '.join(_FACTORIES)}"
        ) from None
    except ImportError as exc:
        extra = f": pip install 'pytest-quantgate[{scheme.extra}]'" if scheme.extra else ""
        raise BackendError(
            f"the {scheme.backend} backend needs a missing package ({exc.name or exc}){extra}"
        ) from exc
    return factory(spec, device, dtype)
