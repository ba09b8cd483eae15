"""The backend contract: what the runner asks of a model.

A backend generates greedy continuations for a batch of requests and scores
given continuations token by token (teacher forcing, for divergence and
perplexity metrics). Heavy libraries are imported only inside the backend
that needs them; :func:`load_backend` is a registry of lazy factories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..cases import GenerationSettings, Prompt

if TYPE_CHECKING:
    from ..specs import ModelSpec

__all__ = ["Backend", "BackendError", "GenerationRequest", "load_backend", "register_backend"]


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


Factory = Callable[["ModelSpec", str, str], Backend]
_FACTORIES: dict[str, Callable[[], Factory]] = {}


def register_backend(kind: str, factory: Callable[[], Factory]) -> None:
    """Register a lazy factory: ``factory()`` imports and returns the loader."""
    _FACTORIES[kind] = factory


def _hf() -> Factory:
    from .hf import HFBackend

    return HFBackend.load


register_backend("hf", _hf)


def load_backend(spec: ModelSpec, *, device: str, dtype: str, kind: str = "hf") -> Backend:
    """Load the model a spec names with the backend ``kind``."""
    try:
        factory = _FACTORIES[kind]()
    except KeyError:
        raise BackendError(f"unknown backend {kind!r}; known: {', '.join(_FACTORIES)}") from None
    except ImportError as exc:
        raise BackendError(
            f"the {kind} backend needs extra packages ({exc.name or exc}): pip install 'pytest-quantgate[hf]'"
        ) from exc
    return factory(spec, device, dtype)
