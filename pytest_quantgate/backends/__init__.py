"""Model backends: the contract (:mod:`.base`), the loader registry (:mod:`.registry`), implementations.

To bring a backend of your own, subclass :class:`Backend` and register a
:class:`Scheme` whose ``loader`` makes it (see :mod:`.registry`).
"""

from __future__ import annotations

from ..values.specs import Scheme, register_scheme
from .base import Backend, BackendError, GenerationRequest, ScoreRequest, TokenScores
from .registry import load_backend

__all__ = [
    "Backend",
    "BackendError",
    "GenerationRequest",
    "Scheme",
    "ScoreRequest",
    "TokenScores",
    "load_backend",
    "register_scheme",
]
