"""Which code loads a model spec: the loader its scheme names, imported on first use.

There is one way to add a backend: register a :class:`~..values.specs.Scheme`
whose ``loader`` is your factory (a callable, or its ``"module:attr"`` path,
imported when a spec of the scheme first loads), with
:func:`~..values.specs.register_scheme`. A ``conftest.py`` may instead take
over the loading of any spec with the ``pytest_quantgate_make_backend`` hook,
which is asked first.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..values.specs import Loader, ModelSpec
from .base import Backend, BackendError

__all__ = ["checked", "load_backend", "resolve_loader"]


def resolve_loader(loader: str | Loader) -> Loader:
    """The factory a scheme's ``loader`` names (``"module:attr.attr"`` is imported now).

    Raises:
        ImportError: its module (or a package it needs) cannot be imported.
        AttributeError: the module has no such attribute.
    """
    if not isinstance(loader, str):
        return loader
    module_name, _, attr = loader.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_backend(spec: ModelSpec, *, device: str, dtype: str) -> Backend:
    """Load the model a spec names with the loader its scheme names.

    Raises:
        BackendError: the loader's packages are missing, or the model cannot be loaded.
    """
    scheme = spec.kind
    try:
        factory = resolve_loader(scheme.loader)
    except ImportError as exc:
        extra = f": pip install 'pytest-quantgate[{scheme.extra}]'" if scheme.extra else ""
        raise BackendError(
            f"loading {spec.label} needs a missing package ({exc.name or exc}){extra}"
        ) from exc
    except AttributeError as exc:
        raise BackendError(
            f"the loader {scheme.loader!r} of scheme {scheme.name!r} does not exist: {exc}"
        ) from exc
    return checked(factory(spec, device, dtype), spec.label)


def checked(backend: Any, label: str) -> Backend:
    """``backend``, when it is one; a loader (or the hook) that made something else is an error.

    Raises:
        BackendError: naming what was made instead of a :class:`~.base.Backend`.
    """
    if not isinstance(backend, Backend):
        raise BackendError(
            f"the loader of {label} returned a {type(backend).__name__}, not a subclass of "
            "pytest_quantgate.backends.Backend"
        )
    return backend
