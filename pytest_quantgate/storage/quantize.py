"""GPTQ and AWQ with gptqmodel: ``gptq:PATH`` / ``awq:PATH`` on the fly, and the shipped checkpoints.

``gptq:models/llama?bits=4&group_size=128`` quantizes the checkpoint at
``PATH`` with gptqmodel, calibrated on the texts of ``--quant-calibration
FILE``, and gates the result. The quantized checkpoint is stored under the
cache directory (``<cache dir>/quantized/<key>/``), content-addressed by
everything that changes it — the source model's fingerprint
(:func:`.cache.model_fingerprint`), the method and its options, a hash of
the calibration texts, the gptqmodel version — and the next run reuses it
(``--quant-cache=refresh`` quantizes again, ``off`` quantizes into a
temporary directory that goes at the end of the session).

Quantizing runs in a child process (``python -m pytest_quantgate.storage.quantize``)
in a scratch directory: gptqmodel sets environment variables when it is
imported, writes a ``logs/`` folder into the working directory, starts
worker pools and holds the whole model in memory; none of that reaches the
test session or the user's tree. What it gets wrong for a gate is fixed
here, measured with gptqmodel 7.6 on the CPU:

- ``quantize(calibration_data_min_length=...)`` is not passed on, so texts
  of 10 tokens or fewer were silently dropped: ``prepare_dataset`` is given
  the value, and every text is used.
- On a 2-core machine its CPU pool asks for more workers than it has unless
  ``GPTQMODEL_CPU_WORKERS`` is set (set here, unless the caller did).
- AWQ without CUDA needs the torch kernel (``BACKEND.AWQ_TORCH``), which
  runs in float16/bfloat16 only: an AWQ checkpoint of a float32 model is
  made in bfloat16.
- A saved checkpoint gets ``do_sample: true`` in its generation config, the
  tokenizer config rewritten, a ``quant_log.csv`` with timings and, unless
  loaded at the source's dtype, its unquantized weights in bfloat16. The
  source's generation config and tokenizer files are copied back; every
  unquantized tensor that is only the source's rounded to a lower precision
  is restored to the source's exact values; tensors the method changed
  (AWQ folds its scales into the norms) are kept, in the source's dtype.
- It offloads finished modules to a temporary directory by default, which
  made quantizing the tiny model four times slower: off here. Its default
  CPU packer is a C++ extension compiled on first use into
  ``~/.cache/gptqmodel`` (about 30 s, and a compiler needed): the plain
  torch packer is used instead without CUDA.

The same child, run by hand, makes the shipped checkpoints
(``tools/build_quantized.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..values.calibration import Calibration, read_calibration
from ..values.digest import json_digest
from ..values.files import file_lock
from .fingerprint import model_fingerprint

__all__ = [
    "METHODS",
    "QuantizeError",
    "Recipe",
    "gptqmodel_version",
    "quantize_checkpoint",
    "quantized_checkpoint",
    "store_key",
]

#: The methods gptqmodel quantizes with, as spec schemes.
METHODS = ("gptq", "awq")
#: The child's output, in its scratch directory while it runs (named on the "quantizing" line).
LOG_NAME = "quantize.log"
#: The name of the provenance file written into every stored checkpoint.
PROVENANCE = "quantgate-quantized.json"
STORE_FORMAT = "quantgate-quantized/1"
#: Tokenizer files copied back from the source (gptqmodel rewrites some).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


class QuantizeError(RuntimeError):
    """Quantizing failed; the message is one line (with where the full log is)."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to quantize: the method and its options (``?bits=4&group_size=128&sym=true&desc_act=false``)."""

    method: str
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False

    @classmethod
    def of(cls, method: str, options: Mapping[str, Any]) -> Recipe:
        """The recipe of a spec's scheme and options (checked by :func:`.specs.parse_spec`)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"method"}
        return cls(method, **{k: v for k, v in options.items() if k in known})

    def describe(self) -> str:
        groups = "per channel" if self.group_size == -1 else f"groups of {self.group_size}"
        symmetry = "symmetric" if self.sym else "asymmetric"
        extra = ", act-order" if self.desc_act else ""
        return f"{self.method.upper()} {self.bits}-bit, {groups}, {symmetry}{extra}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def argv(self) -> list[str]:
        """The child's command-line options for this recipe."""
        return [
            f"--method={self.method}",
            f"--bits={self.bits}",
            f"--group-size={self.group_size}",
            "--sym" if self.sym else "--no-sym",
            *(["--desc-act"] if self.desc_act else []),
        ]


def gptqmodel_version() -> str | None:
    """The installed gptqmodel's version (from its metadata: nothing is imported), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("gptqmodel")
    except importlib.metadata.PackageNotFoundError:
        return None


def store_key(source_fingerprint: str, recipe: Recipe, calibration: str, version: str) -> str:
    """The content address of a quantized checkpoint: what, how, on what, by which gptqmodel."""
    canonical = {
        "format": STORE_FORMAT,
        "source": source_fingerprint,
        "recipe": recipe.to_dict(),
        "calibration": calibration,
        "gptqmodel": version,
    }
    return json_digest(canonical)


# -- the stored checkpoint -----------------------------------------------------

#: Directories of quantized checkpoints made with ``--quant-cache=off``, removed at exit.
_SCRATCH: list[str] = []


def _remove_scratch() -> None:
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


def quantized_checkpoint(
    source: str | os.PathLike[str],
    recipe: Recipe,
    calibration: Calibration,
    *,
    store: Path | None,
    refresh: bool = False,
    label: str = "",
    emit: Callable[[str], None] = lambda line: None,
) -> Path:
    """The directory of ``source`` quantized by ``recipe``: stored earlier, or quantized now.

    Args:
        source: the checkpoint directory to quantize.
        recipe: method and options.
        calibration: the calibration texts (``--quant-calibration``, read once).
        store: the cache directory (the checkpoint goes to
            ``store/quantized/<key>``); None: a temporary directory removed at exit.
        refresh: quantize again even when a stored checkpoint exists, unless it
            was stored while this call waited for the lock (by another xdist
            worker refreshing it for the same session).
        label: the model's label, for the lines emitted.
        emit: where to say what happened (quantized or reused, and how long it took).

    Raises:
        QuantizeError: gptqmodel is not installed, the calibration file has
            no text, or quantizing failed (the message names the log).
    """
    version = gptqmodel_version()
    if version is None:
        raise QuantizeError(
            f"{recipe.method}: quantizing needs gptqmodel: pip install 'pytest-quantgate[{recipe.method}]'"
        )
    texts = calibration.texts
    if not texts:
        raise QuantizeError(
            f"the calibration file {calibration.path} has no text to calibrate {recipe.method} on"
        )
    source_path = Path(source)
    key = store_key(model_fingerprint(source_path), recipe, calibration.digest, version)
    name = label or recipe.method
    if store is None:
        import atexit

        if not _SCRATCH:
            atexit.register(_remove_scratch)
        _SCRATCH.append(tempfile.mkdtemp(prefix="quantgate-quantized-"))
        root = Path(_SCRATCH[-1])
    else:
        root = Path(store) / "quantized"
    final = root / key[:32]
    asked = time.time()
    with file_lock(root / f"{key[:32]}.lock"):
        made = _provenance(final)
        # Made while this call waited for the lock: another xdist worker's refresh, not an old one.
        fresh = made is not None and float(made.get("stored_at", 0.0)) >= asked
        if made is not None and (not refresh or fresh):
            emit(
                f"quantgate: {name}: reusing the {recipe.describe()} checkpoint of {source_path.name} "
                f"stored {made.get('created', 'earlier')} ({final})"
            )
            return final
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=_mkdir(root)))
        emit(
            f"quantgate: {name}: quantizing {source_path.name} ({recipe.describe()}) with gptqmodel "
            f"{version} on {len(texts)} calibration texts (its log: {work / LOG_NAME}) ..."
        )
        try:
            _run_child(source_path, recipe, calibration.path, work)
            provenance = {
                "format": STORE_FORMAT,
                "source": str(source_path),
                "recipe": recipe.to_dict(),
                "calibration": {
                    "file": str(calibration.path),
                    "texts": len(texts),
                    "sha256": calibration.digest,
                },
                "gptqmodel": version,
                "key": key,
                "seconds": round(time.perf_counter() - started, 1),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            out = work / "checkpoint"
            provenance["stored_at"] = time.time()
            (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    emit(f"quantgate: {name}: quantized in {provenance['seconds']:.1f}s, stored in {final}")
    return final


def _provenance(stored: Path) -> dict[str, Any] | None:
    """What a stored checkpoint says of itself; None when it is incomplete or unreadable (made again)."""
    try:
        made = json.loads((stored / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return made if isinstance(made, dict) and (stored / "config.json").is_file() else None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_child(source: Path, recipe: Recipe, calibration: Path, work: Path) -> None:
    """Quantize in a child process whose working directory is ``work`` (gptqmodel's ``logs/`` go there)."""
    log = work / LOG_NAME
    command = [
        sys.executable,
        "-m",
        "pytest_quantgate.storage.quantize",
        f"--source={source}",
        f"--out={work / 'checkpoint'}",
        f"--calibration={calibration.resolve()}",
        *recipe.argv(),
    ]
    with open(log, "wb") as fh:
        code = subprocess.call(command, cwd=work, stdout=fh, stderr=subprocess.STDOUT)
    if code == 0 and (work / "checkpoint" / "config.json").is_file():
        return
    kept = Path(tempfile.gettempdir()) / f"quantgate-quantize-{int(time.time())}.log"
    shutil.copyfile(log, kept)
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {code}"
    raise QuantizeError(f"quantizing {source.name} with gptqmodel failed: {last} (full log: {kept})")


# -- in the child: quantize and tidy ----------------------------------------------


def _source_dtype(source: Path) -> str:
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def quantize_checkpoint(
    source: Path, out: Path, recipe: Recipe, texts: Sequence[str], *, seed: int = 0
) -> None:
    """Quantize ``source`` into ``out`` with gptqmodel, in this process (the child's work).

    Seeded, and deterministic on the CPU (the same bytes on every run with
    the same inputs and versions). See the module's docstring for what is
    fixed on the way.
    """
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    import functools
    import random

    import numpy as np
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dtype_name = _source_dtype(source)
    dtype = getattr(torch, dtype_name)
    awq = recipe.method == "awq"
    if awq and dtype == torch.float32 and not torch.cuda.is_available():
        dtype = torch.bfloat16  # gptqmodel's AWQ torch kernel runs in float16/bfloat16 only
    options: dict[str, Any] = {
        "bits": recipe.bits,
        "group_size": recipe.group_size,
        "sym": recipe.sym,
        "desc_act": recipe.desc_act,
        "offload_to_disk": False,
        # Its default CPU packer is a C++ extension compiled on first use (half a minute, and a
        # compiler needed); the original packer is plain torch and packs the same bits.
        "pack_impl": "gpu" if torch.cuda.is_available() else "original",
    }
    if awq:
        options["quant_method"] = "awq"
    model = GPTQModel.load(str(source), QuantizeConfig(**options), dtype=dtype)
    # quantize() does not pass calibration_data_min_length on: without this, short texts are dropped.
    model.prepare_dataset = functools.partial(model.prepare_dataset, calibration_data_min_length=0)
    kwargs: dict[str, Any] = {"batch_size": 1}
    if awq and not torch.cuda.is_available():
        kwargs["backend"] = BACKEND.AWQ_TORCH
    model.quantize(list(texts), **kwargs)
    model.save(str(out))
    tidy_checkpoint(source, out, dtype_name)


def tidy_checkpoint(source: Path, out: Path, dtype_name: str) -> None:
    """Undo what gptqmodel changes beyond the quantized layers (see the module's docstring)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    for name in ("generation_config.json", *TOKENIZER_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
        elif name == "generation_config.json":
            (out / name).unlink(missing_ok=True)
    (out / "quant_log.csv").unlink(missing_ok=True)
    originals: dict[str, Path] = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            originals.update(dict.fromkeys(f.keys(), file))
    target = getattr(torch, dtype_name)
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        for key, tensor in tensors.items():
            if key not in originals or not tensor.is_floating_point():
                continue  # a quantized layer's packed weights, zeros, scales
            with safe_open(str(originals[key]), "pt") as f:
                original = f.get_tensor(key)
            if original.shape != tensor.shape:
                continue
            if torch.equal(original.to(tensor.dtype), tensor):
                tensors[key] = original  # only rounded: the source's exact values
            elif tensor.dtype != target:
                tensors[key] = tensor.to(target)  # changed by the method (AWQ's scaled norms)
        save_file(tensors, str(file), metadata=metadata or {"format": "pt"})
        file.chmod(0o644)  # a checkpoint to share, like the source's files
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = dtype_name
    config.pop("torch_dtype", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_quantgate.storage.quantize",
        description="Quantize a checkpoint with gptqmodel (GPTQ or AWQ), as gptq:/awq: specs do.",
    )
    parser.add_argument("--source", type=Path, required=True, help="the checkpoint directory to quantize")
    parser.add_argument("--out", type=Path, required=True, help="where to write the quantized checkpoint")
    parser.add_argument(
        "--calibration", type=Path, required=True, help="JSONL (a text field) or one text per line"
    )
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--desc-act", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    recipe = Recipe(args.method, args.bits, args.group_size, args.sym, args.desc_act)
    texts = read_calibration(args.calibration)
    if not texts:
        parser.error(f"no calibration text in {args.calibration}")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new directory")
    quantize_checkpoint(args.source, args.out, recipe, texts, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
