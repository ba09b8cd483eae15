"""The source a trajectory's behaviour depends on, and the cache key of a case.

A trajectory's results depend on its class's code and on the helpers that
code calls: :func:`trajectory_source` reads them (best effort, transitively),
so that an edit of ``apply`` — or of a ``parse_action()`` beside it —
misses the reference cache. :func:`case_fingerprint` puts that together with
the case's key, prompt and settings.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import inspect
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterator
from typing import Any

from ..values.digest import json_digest
from ..values.prompts import prompt_messages
from .cases import CaseSpec
from .identity import CaseIdentityError, stable_repr
from .trajectory import Trajectory

__all__ = ["case_fingerprint", "trajectory_source"]

# -- case fingerprint ------------------------------------------------------------

CASE_FORMAT = "quantgate-case/2"
#: Objects (classes, functions, constants) a trajectory's source may pull in.
_MAX_SOURCE_OBJECTS = 500
_SOURCE_MEMO: dict[type, str | None] = {}


def case_fingerprint(case: CaseSpec) -> str | None:
    """The case's part of a cache key (hex sha256), or None when it cannot be cached.

    Covers the case key (test id, parameters, prompt and settings), the
    generation settings and the prompt, and for a trajectory
    :func:`trajectory_source` of its class. None when that source cannot be
    read (a class made by ``exec`` or in a REPL): such a case is always
    generated, never cached.
    """
    source = None
    if case.trajectory is not None:
        source = trajectory_source(type(case.trajectory))
        if source is None:
            return None
    canonical = {
        "format": CASE_FORMAT,
        "key": case.key,
        "settings": case.settings.to_dict(),
        "prompt": case.prompt if isinstance(case.prompt, str) else prompt_messages(case.prompt),
        "trajectory": source,
    }
    return json_digest(canonical)


def trajectory_source(cls: type) -> str | None:
    """The source text that decides how a trajectory class behaves, or None when unreadable.

    The class and its bases up to :class:`~.trajectory.Trajectory` (which is
    quantgate's own, versioned with it), and — best effort — the module-level
    functions, classes and constants of user code that their methods name,
    followed transitively: an edit of a ``parse_action()`` helper beside the
    class misses like an edit of ``apply``. Functions and classes of the
    standard library and installed packages are named, not read. Not
    covered: values captured in closures, and objects reached other than by
    a global name.
    """
    if cls in _SOURCE_MEMO:
        return _SOURCE_MEMO[cls]
    home = cls.__module__
    # The class and its user-code bases must have source; helpers may go without (a namedtuple, an
    # exec'd function): those are described by their bytecode instead.
    required = {id(k) for k in cls.__mro__ if k is cls or not _is_library(k)}
    parts: list[str] = []
    seen: set[Any] = set()
    todo: list[Any] = list(reversed(cls.__mro__))  # a stack: the class itself first, then its bases
    result: str | None = None
    try:
        while todo and len(seen) < _MAX_SOURCE_OBJECTS:
            obj = todo.pop()
            key = ("constant", obj.name, id(obj.value)) if isinstance(obj, _Constant) else id(obj)
            if key in seen or obj is Trajectory or obj is object:
                continue
            seen.add(key)
            if isinstance(obj, _Constant):
                parts.append(_constant_text(obj))
                if not _is_library(type(obj.value)):
                    todo.append(type(obj.value))
                continue
            follow = id(obj) in required or getattr(obj, "__module__", None) == home
            part, more = _source_part(obj, follow=follow, required=id(obj) in required)
            parts.append(part)
            todo.extend(reversed(more))
        result = "\n".join(parts)
    except Exception:  # no source (exec, a REPL, a dynamic class), or a file that no longer parses
        result = None
    _SOURCE_MEMO[cls] = result
    return result


def _source_part(obj: Any, *, follow: bool, required: bool) -> tuple[str, list[Any]]:
    """One object's text and the objects its code names.

    Raises:
        OSError, TypeError: a ``required`` object whose source cannot be read.
    """
    qualname = getattr(obj, "__qualname__", "?")
    if not follow and _is_library(obj):
        return f"# library {getattr(obj, '__module__', '?')}.{qualname}", []
    functions: list[types.FunctionType] = []
    if isinstance(obj, type):
        for value in vars(obj).values():
            functions.extend(_functions_of(value))
    elif isinstance(obj, types.FunctionType):
        functions.append(obj)
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        if required:
            raise
        attributes = sorted(vars(obj)) if isinstance(obj, type) else []
        codes = [f"{f.__qualname__}:{_code_digest(f.__code__)}" for f in functions]
        source = f"<no source> attributes={attributes} code={codes}"
    more: list[Any] = []
    for function in functions:
        if _is_library(function):  # a method a library made (a namedtuple's _make): named above
            continue
        for global_name in dict.fromkeys(_code_names(function.__code__)):
            if global_name not in function.__globals__ or global_name.startswith("__"):
                continue
            value = function.__globals__[global_name]
            if isinstance(value, (type, types.FunctionType)):
                more.append(value)
            elif not isinstance(value, types.ModuleType):
                more.append(_Constant(global_name, value))
    return f"# {qualname}\n{source}", more


def _code_digest(code: types.CodeType) -> str:
    """A digest of what a code object does, for code without source text."""
    h = hashlib.sha256(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(_code_digest(const).encode())
        elif isinstance(const, frozenset):  # its repr's order varies with string hashing
            h.update(repr(sorted(repr(c) for c in const)).encode())
        else:
            h.update(repr(const).encode())
    return h.hexdigest()[:16]


class _Constant:
    """A module-level value a trajectory's code names, written by its repr."""

    def __init__(self, name: str, value: Any):
        self.name = name
        self.value = value


def _constant_text(constant: _Constant) -> str:
    try:
        text = stable_repr(constant.value)
    except CaseIdentityError:
        text = repr(constant.value)
        if " at 0x" in text:  # an address: the same value looks different in every process
            text = f"<{type(constant.value).__qualname__}>"
    return f"{constant.name} = {text}"


def _functions_of(value: Any) -> list[types.FunctionType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)]
    return [value] if isinstance(value, types.FunctionType) else []


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Global (and attribute) names a code object and its nested code use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _install_paths() -> tuple[str, ...]:
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(AttributeError):
        paths.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


_INSTALL_PATHS: tuple[str, ...] | None = None


def _is_library(obj: Any) -> bool:
    """Whether ``obj`` comes from the standard library or an installed package."""
    global _INSTALL_PATHS
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None:
        return False  # made by exec or in a REPL: user code, whose source may be missing
    if module is builtins:  # the builtins, and C types that call themselves builtin
        return True
    file = getattr(module, "__file__", None)
    if not file:
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        return origin in ("built-in", "frozen")
    if _INSTALL_PATHS is None:
        _INSTALL_PATHS = _install_paths()
    return os.path.realpath(file).startswith(_INSTALL_PATHS)
