"""Model backends behind one contract (:class:`~.base.Backend`)."""

from __future__ import annotations

from .base import Backend, BackendError, GenerationRequest, load_backend, register_backend

__all__ = ["Backend", "BackendError", "GenerationRequest", "load_backend", "register_backend"]
