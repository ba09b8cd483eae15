"""The reference cache: a model's results on cases, on disk, keyed by content.

A cached result is looked up by two fingerprints:

- the *run fingerprint* (:func:`run_fingerprint`): the model's files
  (:func:`model_fingerprint`), the load-time scheme and its options, the
  dtype, the device type, and the versions of the libraries and of
  quantgate's own generation code (:func:`environment_versions`);
- the *case fingerprint* (:func:`case_fingerprint`): the case key (test,
  parameters, prompt, generation settings), the settings and prompt again,
  and for a trajectory the source of its class and of the code it calls.

A model with other weights therefore never receives another model's results
(lm-evaluation-harness keys its request cache without any model identity:
swap the weights under the same name and it answers from the old model).
The rendered inputs are a function of the prompt, the tokenizer files and
the library versions, all in the key. The test body is not: checks run
again on cached outputs, so editing an assertion needs no regeneration.

Storage is one SQLite file (standard library, WAL mode) that several xdist
workers write at once; a case is one row written in one transaction, so it
is there whole or not at all, and every row carries a digest that is checked
on reading. A corrupted or foreign file is reported in one line and rebuilt:
never an exception, never a wrong hit.

Nothing here imports pytest or torch; the package's own modules are imported
inside the functions that need them.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import site
import sqlite3
import struct
import sys
import sysconfig
import threading
import time
import types
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cases import CaseSpec, Prompt
    from .runner import CaseRun
    from .specs import ModelSpec

__all__ = [
    "DB_NAME",
    "DEFAULT_BLOCKS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_DIR_NAME",
    "CacheMode",
    "CacheStats",
    "ResultCache",
    "case_fingerprint",
    "device_type",
    "environment_versions",
    "fingerprint_spec",
    "forget_fingerprints",
    "model_fingerprint",
    "parse_cache_mode",
    "payload_to_run",
    "run_fingerprint",
    "run_to_payload",
    "trajectory_source",
]

#: The cache directory's name under the rootdir (``--quant-cache-dir`` default).
DEFAULT_DIR_NAME = ".quantgate"
#: The database file inside the cache directory.
DB_NAME = "results.sqlite3"

# -- model fingerprint ---------------------------------------------------------

#: Bumped whenever what a fingerprint covers changes, so that old entries miss.
MODEL_FORMAT = "quantgate-model/1"
#: Evenly spaced blocks (first and last included) sampled from every weight file.
DEFAULT_BLOCKS = 64
#: Bytes per sampled block: one page, as cheap to read as one byte.
DEFAULT_BLOCK_SIZE = 4096
#: Any file up to this size is hashed whole, whatever it is.
WHOLE_LIMIT = 1 << 20
#: A file that is not a weight file (configs, tokenizers, templates) is hashed
#: whole up to this size: a one-merge edit of a tokenizer escapes any sampling.
TEXT_LIMIT = 64 << 20
#: Suffixes of weight files: sampled, never read whole.
WEIGHT_SUFFIXES = frozenset(
    {
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".gguf",
        ".ggml",
        ".h5",
        ".msgpack",
        ".onnx",
        ".npz",
        ".npy",
        ".pkl",
        ".pickle",
        ".ot",
        ".tflite",
    }
)
#: Files that a loader never reads: documentation and download bookkeeping.
#: Hidden names (``.git``, ``.gitattributes``, ``.cache``, ``.quantgate``) are skipped too.
_IGNORED = re.compile(r"(?i)^(.*\.md|license(\..*)?|notice(\..*)?|.*\.lock|__pycache__)$")
#: A huggingface_hub cache blob: named by its content's sha256 (LFS) or git sha1.
_BLOB_NAME = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
#: safetensors refuses headers above 100 MB; so do we.
_SAFETENSORS_MAX_HEADER = 100_000_000

#: (real path, stat identity, sampling) -> (how, digest) of one file, per process.
_FILE_MEMO: dict[tuple[Any, ...], tuple[str, str]] = {}


def forget_fingerprints() -> None:
    """Drop the per-process memo of file digests (see :func:`model_fingerprint`)."""
    _FILE_MEMO.clear()


def model_fingerprint(
    path: str | os.PathLike[str],
    *,
    blocks: int = DEFAULT_BLOCKS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> str:
    """A hex sha256 of the content of a checkpoint directory (or of one file).

    Every file under ``path`` (sorted by relative name; symlinked files and
    directories followed) is described by its relative name, its size and a
    digest. Skipped: hidden names (``.git*``, ``.cache``, ``.quantgate``),
    ``*.md``, ``LICENSE*``, ``NOTICE*``, ``*.lock``, ``__pycache__`` and any
    path in ``exclude`` (pass the cache directory when it lies inside).
    The location is not part of the fingerprint: a copy elsewhere has the same.

    Digests:

    - A file in a huggingface_hub snapshot (a symlink to ``../../blobs/<hash>``)
      is named by its blob, the hub's content hash; the blob is not read
      (a blob edited in place, against the hub's own rules, goes unseen).
    - Files up to 1 MiB, and any file that is not a weight file (configs,
      generation config, quantization config, tokenizer files, chat
      templates) up to 64 MiB: the whole content.
    - Weight files (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``, ...)
      and larger files: sampled, never read whole. The digest covers the
      first, last and ``blocks - 2`` evenly spaced blocks of ``block_size``
      bytes; for safetensors also the JSON header whole and one block in the
      middle of every tensor's data; for zip checkpoints (``torch.save``'s
      ``.bin``/``.pt``, ``.npz``) also the archive's directory, which holds a
      CRC32 of every tensor's whole data.

    Why that is enough: a training run, a LoRA merge, a re-quantization or a
    1.001 scaling changes essentially every element of every tensor it
    touches, and every safetensors tensor has a sampled block (of 1024
    float32 values, say) — such a change is caught with certainty unless the
    sampled values are all zero. Residual risk: an edit of a few weights
    outside the sampled blocks of a safetensors or GGUF file (a handful of
    embedding rows updated by a sparse optimizer, a hand-edited byte) keeps
    the fingerprint; ``--quant-cache=refresh`` regenerates then.

    Digests of files are memoized per process by real path, size, mtime,
    ctime and inode (:func:`forget_fingerprints` drops them).

    Raises:
        OSError: ``path`` does not exist or a file cannot be read.
    """
    if blocks < 2 or block_size < 1:
        raise ValueError(f"need blocks >= 2 and block_size >= 1, got {blocks} and {block_size}")
    root = Path(path)
    skip = {os.path.realpath(p) for p in exclude}
    if root.is_dir():
        files = sorted(_walk(root, skip), key=lambda item: item[0])
    else:
        root.stat()  # FileNotFoundError for a missing path
        files = [("", root)]
    entries = [_file_entry(file, rel, blocks, block_size) for rel, file in files]
    canonical = {"format": MODEL_FORMAT, "blocks": blocks, "block_size": block_size, "files": entries}
    return _sha256_json(canonical)


def _walk(root: Path, skip: set[str]) -> Iterator[tuple[str, Path]]:
    """(relative posix name, path) of every file under ``root``, following symlinks once."""
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        st = directory.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or the same directory twice
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if name.startswith(".") or _IGNORED.match(name) or os.path.realpath(entry.path) in skip:
                continue
            rel = f"{prefix}{name}"
            if entry.is_dir():  # follows symlinks
                stack.append((Path(entry.path), rel + "/"))
            elif entry.is_file():
                yield rel, Path(entry.path)


def _file_entry(file: Path, rel: str, blocks: int, block_size: int) -> dict[str, Any]:
    st = file.stat()
    blob = _hub_blob(file)
    if blob is not None:
        return {"name": rel, "size": st.st_size, "blob": blob}
    real = os.path.realpath(file)
    key = (real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, blocks, block_size)
    memo = _FILE_MEMO.get(key)
    if memo is None:
        # The kind of file is what its name in the checkpoint says (a symlink's target may be a bare hash).
        memo = _file_digest(Path(real), file.suffix.lower(), st.st_size, blocks, block_size)
        _FILE_MEMO[key] = memo
    how, digest = memo
    return {"name": rel, "size": st.st_size, how: digest}


def _hub_blob(file: Path) -> str | None:
    """The blob name of a huggingface_hub snapshot file, or None for any other file.

    The hub's cache is ``models--org--name/{blobs,snapshots/<rev>}``; a
    snapshot's files are symlinks into ``blobs/``, each named by its
    content's hash (sha256 for LFS files, the git blob sha1 for the rest).
    """
    if not file.is_symlink():
        return None
    target = Path(os.path.realpath(file))
    blobs = target.parent
    if blobs.name != "blobs" or not _BLOB_NAME.match(target.name):
        return None
    if not (blobs.parent / "snapshots").is_dir():
        return None
    return target.name


def _file_digest(file: Path, suffix: str, size: int, blocks: int, block_size: int) -> tuple[str, str]:
    """("sha256", hash of the whole file) or ("sampled", hash of its sampled blocks)."""
    weights = suffix in WEIGHT_SUFFIXES
    if size <= WHOLE_LIMIT or (not weights and size <= TEXT_LIMIT):
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256", h.hexdigest()
    h = hashlib.sha256()
    with open(file, "rb") as f:
        ranges = _block_ranges(size, blocks, block_size)
        if suffix == ".safetensors":
            ranges += _safetensors_ranges(f, size, block_size)
        for offset, length in _merged(ranges):
            f.seek(offset)
            data = f.read(length)
            if len(data) != length:
                raise OSError(f"{file} changed while it was read")
            h.update(struct.pack("<QQ", offset, length))
            h.update(data)
        directory = None if suffix == ".safetensors" else _zip_directory(f)
    if directory is not None:
        h.update(b"zip")
        h.update(json.dumps(directory).encode())
    return "sampled", h.hexdigest()


def _block_ranges(size: int, blocks: int, block_size: int) -> list[tuple[int, int]]:
    """The first, last and evenly spaced blocks of a file of ``size`` bytes."""
    if size <= blocks * block_size:
        return [(0, size)]
    span = size - block_size
    return [(i * span // (blocks - 1), block_size) for i in range(blocks)]


def _safetensors_ranges(f: IO[bytes], size: int, block_size: int) -> list[tuple[int, int]]:
    """The header whole and a block in the middle of every tensor; [] when it is not safetensors."""
    f.seek(0)
    head = f.read(8)
    if len(head) != 8:
        return []
    (n,) = struct.unpack("<Q", head)
    if not 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return []
    try:
        header = json.loads(f.read(n))
    except ValueError:
        return []
    if not isinstance(header, dict):
        return []
    ranges = [(0, 8 + n)]
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            continue
        begin, end = start + offsets[0], min(start + offsets[1], size)
        if begin >= end:
            continue
        length = min(end - begin, block_size)
        ranges.append((begin + (end - begin - length) // 2, length))
    return ranges


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ranges joined, in file order."""
    out: list[list[int]] = []
    for offset, length in sorted(ranges):
        if out and offset <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], offset + length - out[-1][0])
        else:
            out.append([offset, length])
    return [(o, n) for o, n in out]


def _zip_directory(f: IO[bytes]) -> list[list[Any]] | None:
    """(name, CRC32, size) of every member of a zip file (read from its end), or None."""
    try:
        f.seek(0)
        if not zipfile.is_zipfile(f):
            return None
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            return [[i.filename, i.CRC, i.file_size, i.compress_type] for i in archive.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


# -- run fingerprint -------------------------------------------------------------

RUN_FORMAT = "quantgate-run/1"

#: Libraries whose version can change what a model generates (absent ones read "-").
DEFAULT_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "bitsandbytes",
    "torchao",
    "gptqmodel",
    "optimum",
    "compressed-tensors",
    "pytest-quantgate",
)
#: quantgate's own modules on the path from a case to its transcript: an edit
#: of the generation code in a development checkout (same version) must miss.
DEFAULT_MODULES = (
    "pytest_quantgate.runner",
    "pytest_quantgate.trajectory",
    "pytest_quantgate.backends.base",
    "pytest_quantgate.backends.hf",
    "pytest_quantgate.backends.rtn",
    "pytest_quantgate.backends.fake",
)

_VERSIONS_MEMO: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, str]] = {}


def environment_versions(
    packages: Iterable[str] = DEFAULT_PACKAGES, modules: Iterable[str] = DEFAULT_MODULES
) -> dict[str, str]:
    """Versions of ``packages`` and a hash of the source files of ``modules``.

    Read from the installed metadata and the files themselves: no model
    library is imported (torch included), so a run whose results are all
    cached never pays for importing one. A key ``"source"`` holds the hash
    of the modules' files together. Memoized per process.
    """
    memo_key = (tuple(packages), tuple(modules))
    if memo_key in _VERSIONS_MEMO:
        return dict(_VERSIONS_MEMO[memo_key])
    packages, modules = memo_key
    out: dict[str, str] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    h = hashlib.sha256()
    for module in modules:
        h.update(module.encode() + b"\0")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if origin and os.path.isfile(origin):
            with open(origin, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        else:
            h.update(b"-")
    out["source"] = h.hexdigest()[:16]
    _VERSIONS_MEMO[memo_key] = out
    return dict(out)


def device_type(device: str) -> str:
    """The device type of a resolved device: ``cuda:1`` -> ``cuda``, ``cpu`` -> ``cpu``.

    Raises:
        ValueError: for ``auto``, which must be resolved first (it means
            another device on another machine).
    """
    kind = device.strip().lower().split(":", 1)[0]
    if not kind or kind == "auto":
        raise ValueError(f"resolve the device {device!r} before fingerprinting a run")
    return kind


def run_fingerprint(
    model_fp: str,
    *,
    scheme: str | None,
    options: Mapping[str, Any],
    dtype: str,
    device_type: str,
    versions: Mapping[str, str],
) -> str:
    """The identity of "this model, loaded this way, by this software" (hex sha256).

    ``device_type`` is the type (``cuda``), not the device (``cuda:1``): an
    index does not change results. Options and versions are compared as
    mappings (their order does not matter). Put anything else that may
    change results into ``versions`` (a GPU's name, a CUDA version).
    """
    canonical = {
        "format": RUN_FORMAT,
        "model": model_fp,
        "scheme": scheme or "",
        "options": dict(options),
        "dtype": str(dtype),
        "device_type": device_type.strip().lower().split(":", 1)[0],
        "versions": {str(k): str(v) for k, v in versions.items()},
    }
    return _sha256_json(canonical)


def fingerprint_spec(
    spec: ModelSpec,
    *,
    dtype: str,
    device: str,
    versions: Mapping[str, str] | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> str | None:
    """:func:`run_fingerprint` of a model spec, or None when it cannot be cached.

    None for a URL target (a served model can change behind its URL) and
    for a path that cannot be read (loading it will say why).
    ``versions`` defaults to :func:`environment_versions`; ``device`` must be
    resolved (``cuda:0``, not ``auto``).
    """
    if spec.kind.target == "url":
        return None
    try:
        model_fp = model_fingerprint(spec.path, exclude=exclude)
    except OSError:
        return None
    return run_fingerprint(
        model_fp,
        scheme=spec.scheme,
        options=spec.options,
        dtype=dtype,
        device_type=device_type(device),
        versions=environment_versions() if versions is None else versions,
    )


# -- case fingerprint ------------------------------------------------------------

CASE_FORMAT = "quantgate-case/1"
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
        "prompt": _prompt_to_json(case.prompt),
        "trajectory": source,
    }
    return _sha256_json(canonical)


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
    from .trajectory import Trajectory

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
    from .cases import CaseIdentityError, stable_repr

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


# -- payloads --------------------------------------------------------------------


def _prompt_to_json(prompt: Prompt) -> Any:
    """Text as it is; chat messages (tuples of (key, value) pairs) as ``{"messages": [...]}``."""
    if isinstance(prompt, str):
        return prompt
    return {"messages": [[[k, v] for k, v in message] for message in prompt]}


def _prompt_from_json(value: Any) -> Prompt:
    if isinstance(value, str):
        return value
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(messages, list):
        raise ValueError("a prompt must be text or {'messages': [...]}")
    out = []
    for message in messages:
        if not isinstance(message, list):
            raise ValueError("a chat message must be a list of pairs")
        pairs = []
        for pair in message:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise ValueError("a chat message's items must be [key, value] strings")
            pairs.append((pair[0], pair[1]))
        out.append(tuple(pairs))
    return tuple(out)


def run_to_payload(run: CaseRun) -> dict[str, Any]:
    """A case's transcript as builtins (see :func:`payload_to_run`)."""
    return {
        "turns": [
            {"prompt": _prompt_to_json(t.prompt), "reply": t.reply, "rendered": t.rendered} for t in run.turns
        ],
        "error": run.error,
        "failure": run.failure,
        "state": run.state,
    }


def payload_to_run(key: str, payload: Mapping[str, Any]) -> CaseRun:
    """The :class:`~.runner.CaseRun` of a payload; equal to the run it was made from.

    Raises:
        ValueError: the payload is not one :func:`run_to_payload` makes.
    """
    from .cases import Turn
    from .runner import CaseRun

    turns = payload.get("turns")
    if not isinstance(turns, list):
        raise ValueError("a payload needs a list of turns")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("reply"), str):
            raise ValueError("a turn needs a reply")
        rendered = turn.get("rendered")
        if rendered is not None and not isinstance(rendered, str):
            raise ValueError("a turn's rendered text must be a string")
        out.append(Turn(_prompt_from_json(turn.get("prompt")), turn["reply"], rendered))
    error, failure = payload.get("error"), payload.get("failure")
    for value in (error, failure):
        if value is not None and not isinstance(value, str):
            raise ValueError("error and failure must be strings or null")
    return CaseRun(key=key, turns=out, error=error, failure=failure, state=payload.get("state"))


# -- storage ---------------------------------------------------------------------


class CacheMode(str, enum.Enum):
    """``--quant-cache``: use the cache, ignore it, or regenerate and overwrite it."""

    ON = "on"  # read hits, write misses
    OFF = "off"  # neither read nor write; no file is created
    REFRESH = "refresh"  # read nothing, write everything generated

    def __str__(self) -> str:
        return self.value

    @property
    def reads(self) -> bool:
        return self is CacheMode.ON

    @property
    def writes(self) -> bool:
        return self is not CacheMode.OFF


def parse_cache_mode(text: str) -> CacheMode:
    """``on``, ``off`` or ``refresh`` (any case).

    Raises:
        ValueError: one line naming the allowed values.
    """
    try:
        return CacheMode(str(text).strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in CacheMode)
        raise ValueError(f"--quant-cache must be one of {allowed}, got {text!r}") from None


@dataclass
class CacheStats:
    """What the cache did in this process.

    Attributes:
        hits: Cases answered from the cache.
        misses: Cases asked for and not found (or not cacheable, or not read).
        writes: Cases written.
        skipped: Cases not written: errors, uncacheable cases, states
            that do not survive JSON.
    """

    hits: int = 0
    misses: int = 0
    writes: int = 0
    skipped: int = 0


#: ``PRAGMA application_id`` of a quantgate cache ("QGC1"): anything else is foreign.
APPLICATION_ID = 0x51474331
#: ``PRAGMA user_version``: bumped when the table or the payloads change.
SCHEMA_VERSION = 1
#: Writers wait this long for another process's transaction instead of failing.
BUSY_TIMEOUT_S = 60.0
#: Files up to this size get a structural check (``PRAGMA quick_check``) on opening.
QUICK_CHECK_LIMIT = 256 << 20
_COLUMNS = ["run", "case_fp", "payload", "digest", "written"]
_CREATE = """
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL,
    case_fp TEXT NOT NULL,
    payload TEXT NOT NULL,
    digest TEXT NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (run, case_fp)
) WITHOUT ROWID
"""
#: The key of a model's facts under ``<run>/facts`` (:meth:`ResultCache.put_facts`).
FACTS_KEY = "model-facts"
#: Largest number of keys in one ``IN (...)`` (SQLite's old limit is 999 parameters).
_CHUNK = 500


class ResultCache:
    """The on-disk cache of results, shared by the processes of a session.

    Open it with :meth:`open`. Reads and writes never raise for a problem of
    the file: a corrupted or foreign database is rebuilt on opening, a
    failure later disables the cache for the rest of the process; either
    leaves one line in :attr:`warnings`.

    Attributes:
        path: The database file (None in mode ``off``).
        mode: The :class:`CacheMode`.
        stats: Hits, misses, writes, skips in this process.
        warnings: One-line messages to show, in order.
    """

    def __init__(self, path: Path | None, mode: CacheMode):
        self.path = path
        self.mode = mode
        self.stats = CacheStats()
        self.warnings: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inherited: list[sqlite3.Connection] = []

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], mode: CacheMode | str = CacheMode.ON) -> ResultCache:
        """The cache in ``directory`` (``<directory>/results.sqlite3``).

        Creates the directory with a ``.gitignore`` of ``*`` (the cache is
        never committed) and the database, or checks the one there: a file
        that is not a database, another application's database, another
        schema version or a damaged one is set aside as ``results.sqlite3.bad``
        and rebuilt, with one line in :attr:`warnings`. In mode ``off``
        nothing is touched. Never raises for a problem of the file or the
        directory: the cache is then off, and :attr:`warnings` says why.
        """
        mode = parse_cache_mode(mode) if not isinstance(mode, CacheMode) else mode
        if mode is CacheMode.OFF:
            return cls(None, mode)
        directory = Path(directory)
        cache = cls(directory / DB_NAME, mode)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            ignore = directory / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# pytest-quantgate's result cache: never committed\n*\n")
        except OSError as exc:
            cache._disable(f"cannot be created ({exc.strerror or exc})")
            return cache
        try:
            with _file_lock(directory / (DB_NAME + ".lock")):
                cache._conn = cache._open_checked()
        except (sqlite3.Error, OSError) as exc:
            cache._disable(f"cannot be opened ({_reason(exc)})")
        return cache

    def _open_checked(self) -> sqlite3.Connection:
        """A connection to a valid cache, rebuilding the file when it is not one."""
        assert self.path is not None
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(self.path)
            problem = _problem(conn, self.path)
        except sqlite3.OperationalError:  # locked, unopenable, I/O: not the file's content
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as exc:  # not a database, or a malformed one
            problem = f"unreadable ({_reason(exc)})"
        if problem == "":  # a valid cache
            assert conn is not None
            return conn
        if problem is not None:
            if conn is not None:
                conn.close()
            _set_aside(self.path)
            self.warnings.append(f"quantgate: cache {_shown(self.path)} was {problem}; rebuilt it")
            conn = _connect(self.path)
        assert conn is not None
        try:  # a new file, an empty one, or the one just set aside: give it the schema
            _create(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- reading and writing ---------------------------------------------------

    def get_many(self, run: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored payloads of the case fingerprints ``keys`` under the run ``run``.

        Only in mode ``on``; a row whose digest does not match is ignored
        (a miss) and reported once.
        """
        wanted = list(dict.fromkeys(keys))
        found = self._fetch(run, wanted)
        self.stats.hits += len(found)
        self.stats.misses += len(wanted) - len(found)
        return found

    def put_many(self, run: str, items: Mapping[str, Mapping[str, Any]]) -> int:
        """Store payloads by case fingerprint under the run ``run``; the number written.

        One transaction: all of them or none (a crash never leaves half a
        case). Existing rows are replaced. A payload with an ``error`` is not
        stored (a transient failure, an out-of-memory say, must not stick),
        nor one that is not JSON; both count as skipped. Nothing is written
        in mode ``off``.
        """
        if not self.mode.writes:
            return 0
        now = time.time()
        rows = []
        for case_fp, payload in items.items():
            if payload.get("error") is not None:
                self.stats.skipped += 1
                continue
            try:
                text = _dumps(payload)
            except (TypeError, ValueError):
                self.stats.skipped += 1
                continue
            rows.append((run, case_fp, text, _row_digest(run, case_fp, text), now))
        if not self._insert(rows):
            return 0
        self.stats.writes += len(rows)
        return len(rows)

    def _insert(self, rows: Sequence[tuple[str, str, str, str, float]]) -> bool:
        """Insert or replace ``rows`` in one transaction; False when nothing was written."""
        if not rows or self._connection() is None:
            return False
        try:
            with self._lock:
                conn = self._connection()
                if conn is None:
                    return False
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._disable(f"cannot be written ({_reason(exc)})", running=True)
            return False
        return True

    def put_facts(self, run: str | None, facts: Mapping[str, Any]) -> bool:
        """Store what a model is (weights, dtype, device, ...) beside its results.

        A run whose results all come from the cache never loads the model;
        its report still shows them. Kept under ``<run>/facts``, apart from
        the cases (not counted in :attr:`stats`).
        """
        if not self.mode.writes or run is None:
            return False
        try:
            text = _dumps(dict(facts))
        except (TypeError, ValueError):
            return False
        key = f"{run}/facts"
        return self._insert([(key, FACTS_KEY, text, _row_digest(key, FACTS_KEY, text), time.time())])

    def get_facts(self, run: str | None) -> dict[str, Any] | None:
        """The facts :meth:`put_facts` stored for ``run`` (mode ``on`` only), or None."""
        if run is None:
            return None
        return self._fetch(f"{run}/facts", [FACTS_KEY]).get(FACTS_KEY)

    def get_runs(self, run: str | None, cases: Iterable[CaseSpec]) -> dict[str, CaseRun]:
        """Cached transcripts of ``cases`` on the run ``run``, by case key.

        ``run`` None (a model that cannot be fingerprinted) and uncacheable
        cases (:func:`case_fingerprint` None) are misses.
        """
        cases = list(cases)
        if run is None:
            self.stats.misses += len(cases)
            return {}
        by_fp: dict[str, str] = {}
        for case in cases:
            fp = case_fingerprint(case)
            if fp is not None:
                by_fp[fp] = case.key
        found = self._fetch(run, list(by_fp))
        out: dict[str, CaseRun] = {}
        damaged = 0
        for fp, payload in found.items():
            try:
                out[by_fp[fp]] = payload_to_run(by_fp[fp], payload)
            except (ValueError, TypeError, AttributeError):
                damaged += 1
        if damaged:
            self._warn_damaged(damaged)
        self.stats.hits += len(out)
        self.stats.misses += len(cases) - len(out)
        return out

    def put_runs(self, run: str | None, cases: Iterable[CaseSpec], runs: Mapping[str, CaseRun]) -> int:
        """Store the transcripts ``runs`` (by case key) of ``cases``; the number written.

        Skipped (and counted): runs that ended in an error (see
        :meth:`put_many`), uncacheable cases, and runs that would not come
        back equal (a state that JSON changes: tuples, non-string keys).
        Nothing is written when ``run`` is None.
        """
        if not self.mode.writes or run is None:
            return 0
        items: dict[str, dict[str, Any]] = {}
        for case in cases:
            result = runs.get(case.key)
            if result is None:
                continue
            fp = case_fingerprint(case) if result.error is None else None
            if fp is None:
                self.stats.skipped += 1
                continue
            payload = run_to_payload(result)
            try:
                same = payload_to_run(case.key, json.loads(_dumps(payload))) == result
            except (TypeError, ValueError):
                same = False
            if not same:
                self.stats.skipped += 1
                continue
            items[fp] = payload
        return self.put_many(run, items)

    def count(self, run: str | None = None) -> int:
        """Rows stored (under ``run``, or all); 0 when the cache is unusable."""
        conn = self._connection()
        if conn is None:
            return 0
        try:
            with self._lock:
                if run is None:
                    row = conn.execute("SELECT count(*) FROM results").fetchone()
                else:
                    row = conn.execute("SELECT count(*) FROM results WHERE run = ?", (run,)).fetchone()
        except sqlite3.Error as exc:
            self._disable(f"cannot be read ({_reason(exc)})", running=True)
            return 0
        return int(row[0])

    @property
    def warning(self) -> str | None:
        """The first warning line, or None."""
        return self.warnings[0] if self.warnings else None

    @property
    def usable(self) -> bool:
        """Whether the cache has a working database (never in mode ``off``)."""
        return self._conn is not None

    def close(self) -> None:
        """Close the database; the cache reads and writes nothing afterwards."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _fetch(self, run: str, wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not self.mode.reads or not wanted or self._connection() is None:
            return {}
        found: dict[str, dict[str, Any]] = {}
        damaged = 0
        try:
            with self._lock:
                conn = self._connection()
                if conn is None:
                    return {}
                for i in range(0, len(wanted), _CHUNK):
                    chunk = wanted[i : i + _CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    query = (
                        f"SELECT case_fp, payload, digest FROM results WHERE run = ? AND case_fp IN ({marks})"
                    )
                    rows = conn.execute(query, (run, *chunk)).fetchall()
                    for case_fp, text, digest in rows:
                        payload = _checked_payload(run, case_fp, text, digest)
                        if payload is None:
                            damaged += 1
                        else:
                            found[case_fp] = payload
        except sqlite3.Error as exc:
            self._disable(f"cannot be read ({_reason(exc)})", running=True)
            return {}
        if damaged:
            self._warn_damaged(damaged)
        return found

    def _connection(self) -> sqlite3.Connection | None:
        """The connection, reopened in a forked child (a connection must not cross a fork)."""
        if self._conn is not None and self._pid != os.getpid():
            assert self.path is not None
            self._inherited.append(self._conn)  # never closed here: it is the parent's
            self._pid = os.getpid()
            try:
                self._conn = _connect(self.path)
            except sqlite3.Error as exc:
                self._conn = None
                self._disable(f"cannot be opened ({_reason(exc)})", running=True)
        return self._conn

    def _disable(self, why: str, *, running: bool = False) -> None:
        where = _shown(self.path) if self.path is not None else "?"
        rest = "running without it from here" if running else "running without it"
        self.warnings.append(f"quantgate: cache {where} {why}; {rest}")
        if self._conn is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None

    def _warn_damaged(self, count: int) -> None:
        where = _shown(self.path) if self.path is not None else "?"
        entries = "entry" if count == 1 else "entries"
        self.warnings.append(f"quantgate: cache {where}: ignored {count} damaged {entries}; regenerating")


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): transactions are explicit, writers
    # take the write lock up front (BEGIN IMMEDIATE) and wait for it.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode: a crash loses no committed case
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _problem(conn: sqlite3.Connection, path: Path) -> str | None:
    """What is wrong with the database: "" nothing, None empty (create it), else one phrase.

    Raises:
        sqlite3.DatabaseError: the file is not a database or is malformed.
    """
    app = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if app == 0 and version == 0 and not tables:
        return None
    if app != APPLICATION_ID:
        shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
        return f"another application's database (tables: {shown or 'none'})"
    if version != SCHEMA_VERSION:
        return f"written by another version of quantgate (schema {version}, this one uses {SCHEMA_VERSION})"
    columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    if columns != _COLUMNS:
        return "damaged (its results table is not quantgate's)"
    if path.stat().st_size <= QUICK_CHECK_LIMIT:
        verdict = conn.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            return f"damaged ({verdict[0][0] if verdict else 'no verdict'})"
    return ""


def _create(conn: sqlite3.Connection) -> None:
    """Give an empty database quantgate's schema (a no-op on one that has it)."""
    conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer; persistent
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(_CREATE)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _set_aside(path: Path) -> None:
    """Move a bad database to ``<name>.bad`` (one slot) and drop its journal files."""
    try:
        os.replace(path, path.with_name(path.name + ".bad"))
    except FileNotFoundError:
        pass
    except OSError:
        path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        # A journal left beside a new database would be replayed into it.
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes while a database is checked or rebuilt.

    Without it two workers that both find a damaged file would each
    rebuild it, the second deleting the first's fresh database.
    """
    with open(path, "a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
            except OSError:  # gave up after its retries: go on unlocked rather than fail
                yield
                return
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _checked_payload(run: str, case_fp: Any, text: Any, digest: Any) -> dict[str, Any] | None:
    """The payload of a row, or None when the row is damaged."""
    if not (isinstance(case_fp, str) and isinstance(text, str) and isinstance(digest, str)):
        return None
    if digest != _row_digest(run, case_fp, text):
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _row_digest(run: str, case_fp: str, text: str) -> str:
    return hashlib.sha256(f"{run}\0{case_fp}\0{text}".encode()).hexdigest()[:32]


def _dumps(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_fallback)
    return hashlib.sha256(text.encode()).hexdigest()


def _fallback(value: Any) -> str:
    # Options are builtins in practice; anything else by type and repr (an
    # address in a repr only ever causes a miss, never a wrong hit).
    return f"{type(value).__qualname__}:{value!r}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
