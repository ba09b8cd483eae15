"""Fingerprints of a model run: its files, how it is loaded, and the software that runs it.

- the *model fingerprint* (:func:`model_fingerprint`): a digest of the files
  of a checkpoint directory (weight files sampled, everything else whole),
  also the source key of quantized checkpoints (:mod:`.quantize`);
- the *run fingerprint* (:func:`run_fingerprint`): that, plus the load-time
  scheme and its options, the dtype, the device type, and the versions of
  the libraries and of quantgate's own generation code
  (:func:`environment_versions`).

A model with other weights therefore never receives another model's cached
results. Nothing here imports pytest or torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..values.digest import json_digest
from ..values.specs import ModelSpec

__all__ = [
    "DEFAULT_BLOCKS",
    "DEFAULT_BLOCK_SIZE",
    "device_type",
    "environment_versions",
    "fingerprint_spec",
    "forget_fingerprints",
    "model_fingerprint",
    "run_fingerprint",
    "served_fingerprint",
]

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
      middle of every tensor's data; for GGUF the same (its header holds the
      metadata, the tokenizer and chat template included, and the tensor
      table); for zip checkpoints (``torch.save``'s
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
    return json_digest(canonical)


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
        elif suffix == ".gguf":
            ranges += _gguf_ranges(f, size, block_size)
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


#: Sizes of GGUF's scalar metadata value types (uint8 ... float64, bool); 8 is a string, 9 an array.
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: A GGUF header larger than this is not read (a 256k-token vocabulary takes a few MB).
_GGUF_MAX_HEADER = 1 << 30


def _gguf_ranges(f: IO[bytes], size: int, block_size: int) -> list[tuple[int, int]]:
    """The header whole (metadata, tensor table) and a block in the middle of every tensor of a GGUF
    file (llama.cpp's format: ``GGUF``, version, counts, key-value pairs, tensor infos, aligned data);
    [] when it is not one. Parsed here, without the ``gguf`` package, which need not be installed."""

    def read(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n or f.tell() > _GGUF_MAX_HEADER:
            raise ValueError("truncated")
        return data

    def number(fmt: str) -> int:
        return int(struct.unpack("<" + fmt, read(struct.calcsize(fmt)))[0])

    def string() -> bytes:
        return read(number("Q"))

    def skip_value(kind: int) -> None:
        if kind in _GGUF_SCALARS:
            f.seek(_GGUF_SCALARS[kind], os.SEEK_CUR)
        elif kind == 8:
            f.seek(number("Q"), os.SEEK_CUR)
        elif kind == 9:
            item, count = number("I"), number("Q")
            if item in _GGUF_SCALARS:
                f.seek(_GGUF_SCALARS[item] * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    skip_value(item)
        else:
            raise ValueError(f"unknown value type {kind}")

    try:
        f.seek(0)
        if read(4) != b"GGUF" or number("I") not in (2, 3):
            return []
        tensors, pairs = number("Q"), number("Q")
        alignment = 32
        for _ in range(pairs):
            key, kind = string(), number("I")
            if key == b"general.alignment" and kind == 4:
                alignment = number("I") or 32
            else:
                skip_value(kind)
        offsets = []
        for _ in range(tensors):
            string()
            f.seek(8 * number("I"), os.SEEK_CUR)  # the dimensions
            number("I")  # the type
            offsets.append(number("Q"))
        header = f.tell()
    except (ValueError, struct.error, OSError, OverflowError):
        return []
    start = -(-header // alignment) * alignment  # the tensor data begins at the next multiple
    ranges = [(0, min(header, size))]
    # A tensor's data runs from its offset to the next tensor's (or the file's end).
    bounds = [*sorted({o for o in offsets if 0 <= o < size - start}), size - start]
    for here, after in itertools.pairwise(bounds):
        length = min(after - here, block_size)
        ranges.append((start + here + (after - here - length) // 2, length))
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
    "gguf",
    "pytest-quantgate",
)
#: quantgate's own modules on the path from a case to its transcript: an edit
#: of the generation code in a development checkout (same version) must miss.
DEFAULT_MODULES = (
    "pytest_quantgate.core.runner",
    "pytest_quantgate.core.trajectory",
    "pytest_quantgate.values.prompts",
    "pytest_quantgate.values.transcript",
    "pytest_quantgate.backends.base",
    "pytest_quantgate.backends.hf",
    "pytest_quantgate.backends.hf_gguf",
    "pytest_quantgate.backends.hf_loading",
    "pytest_quantgate.backends.hf_tokenizers",
    "pytest_quantgate.backends.torch_device",
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
    return json_digest(canonical)


def fingerprint_spec(
    spec: ModelSpec,
    *,
    dtype: str,
    device: str,
    versions: Mapping[str, str] | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
    identity: str | None = None,
) -> str | None:
    """:func:`run_fingerprint` of a model spec, or None when it cannot be cached.

    For a URL target (a served model, whose weights cannot be read and can
    change behind its name), :func:`served_fingerprint`: None unless the spec
    pins an identity with ``?revision=`` or its server reported one
    (``identity``, from the loaded model's facts). None also for a path that
    cannot be read (loading it will say why).
    ``versions`` defaults to :func:`environment_versions`; ``device`` must be
    resolved (``cuda:0``, not ``auto``).
    """
    if spec.kind.target == "url":
        return served_fingerprint(spec, identity)
    try:
        model_fp = model_fingerprint(spec.path, exclude=exclude)
    except OSError:
        return None
    return run_fingerprint(
        model_fp,
        scheme=spec.scheme or spec.kind.name or None,  # a path ending in .gguf is a gguf: spec
        options=spec.options,
        dtype=dtype,
        device_type=device_type(device),
        versions=environment_versions() if versions is None else versions,
    )


#: Options of a served spec that change how requests travel, never what a model answers.
TRANSPORT_OPTIONS = frozenset({"concurrency", "timeout", "retries", "backoff", "api_key_env"})
#: What a served model's results depend on here: the request code, not torch or transformers.
SERVED_PACKAGES = ("openai", "pytest-quantgate")
SERVED_MODULES = (
    "pytest_quantgate.core.runner",
    "pytest_quantgate.core.trajectory",
    "pytest_quantgate.values.prompts",
    "pytest_quantgate.values.transcript",
    "pytest_quantgate.backends.base",
    "pytest_quantgate.backends.served",
)


def served_fingerprint(spec: ModelSpec, identity: str | None = None) -> str | None:
    """The identity of a served model's results, or None when it has none (the cache is off for it).

    A model behind a URL cannot be fingerprinted: a name such as
    ``org/model-fp16`` keeps answering while the weights behind it change,
    and a cache keyed on the name would hand back the old weights' results.
    So a served spec is cacheable only when it pins an identity with
    ``?revision=`` (a commit, a checksum, a deployment id: whatever changes
    when the weights do), or when the server reported one that the backend
    recorded (``identity``, such as ``digest=sha256:...`` from its model
    list). The key covers the URL, the model name, the revision or the
    reported identity, and the options that change answers (``seed``,
    ``endpoint``); not those that only change how requests travel
    (:data:`TRANSPORT_OPTIONS`).
    """
    pinned = spec.options.get("revision") not in (None, "")
    if not pinned and not identity:
        return None
    options = {k: v for k, v in spec.options.items() if k not in TRANSPORT_OPTIONS}
    reported = None if pinned else identity
    url = spec.path.rstrip("/")
    canonical = {"format": "quantgate-served/1", "url": url, "options": options, "reported": reported}
    served = json_digest(canonical)
    return run_fingerprint(
        served,
        scheme=spec.scheme or spec.kind.name,
        options=options,
        dtype="served",
        device_type="server",
        versions=environment_versions(SERVED_PACKAGES, SERVED_MODULES),
    )
