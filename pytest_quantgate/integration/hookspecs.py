"""Hooks that other plugins and ``conftest.py`` files can implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..values.specs import ModelSpec


@pytest.hookspec(firstresult=True)
def pytest_quantgate_make_backend(spec: ModelSpec, device: str, dtype: str) -> Backend | None:
    """Load the model ``spec`` names, or return None to leave it to the next implementation.

    Called once per model and process, before the built-in backends (chosen
    by the spec's scheme) are tried. Return any object with the
    :class:`~pytest_quantgate.backends.base.Backend` methods; raise
    :class:`~pytest_quantgate.backends.base.BackendError` with a one-line
    message when the model cannot be loaded.

    A new scheme (``myapi:http://...``) is made known to the spec parser with
    :func:`pytest_quantgate.specs.register_scheme`, called when the plugin or
    conftest is imported.

    Args:
        spec: the parsed ``--quant-reference`` / ``--quant-candidate`` spec.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
    """
