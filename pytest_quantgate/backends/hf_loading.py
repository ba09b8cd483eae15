"""What loading a transformers checkpoint may do, and how it is quantized at load time.

Everything the load policy (:class:`~.base.LoadPolicy`) refuses is found
here before any weight is read: code shipped with a checkpoint, pickled
weights, a quantized format whose package is missing. The load-time
quantization configs (bitsandbytes, torchao) are built here from the
scheme's ``load_config``; ``gptq:``/``awq:`` checkpoints are made by
:mod:`..storage.quantize`. What the model libraries log while a checkpoint
loads is held here (:func:`library_log`), not printed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..storage.quantize import QuantizeError, Recipe, quantized_checkpoint
from ..values.specs import ModelSpec
from .base import BackendError, LoadPolicy

__all__ = [
    "contained_environment",
    "format_problem",
    "group_problem",
    "library_log",
    "load_error",
    "pickle_problem",
    "quantization_config",
    "quantized_format_problem",
    "quantized_on_the_fly",
    "remote_code_problem",
]


# -- what a checkpoint may do while it loads -----------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: transformers says what is wrong with it


def remote_code_problem(spec: ModelSpec, policy: LoadPolicy) -> str | None:
    """Why the checkpoint may not load: it ships code (``auto_map``) and the flag is off."""
    if policy.trust_remote_code:
        return None
    for name in ("config.json", "tokenizer_config.json"):
        data = _read_json(Path(spec.path) / name)
        if isinstance(data, dict) and data.get("auto_map"):
            return (
                f"{spec.label}: the checkpoint at {spec.path} ships its own code (auto_map in {name}); "
                "refusing to run it without --quant-trust-remote-code"
            )
    return None


#: Pickled weights that ``from_pretrained`` would load (``torch.load``).
_PICKLED_WEIGHTS = re.compile(r"^pytorch_model.*\.bin(\.index\.json)?$")


def pickle_problem(spec: ModelSpec, policy: LoadPolicy) -> str | None:
    """Why the checkpoint may not load: it has only pickled weights and the flag is off."""
    directory = Path(spec.path)
    if policy.allow_pickle or not directory.is_dir():
        return None
    names = sorted(p.name for p in directory.iterdir())
    if any(n.endswith(".safetensors") for n in names):
        return None
    pickled = [n for n in names if _PICKLED_WEIGHTS.match(n)]
    if not pickled:
        return None  # no weights at all: transformers says so
    return (
        f"{spec.label}: the checkpoint at {spec.path} has only pickled weights ({', '.join(pickled)}), "
        "which can run code when loaded; convert it to safetensors or pass --quant-allow-pickle"
    )


# -- quantization at load time -------------------------------------------------


def bnb_nf4(torch_dtype: Any) -> Any:
    import bitsandbytes  # noqa: F401  (fail here, with the extra named, not inside transformers)
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def bnb_int8(torch_dtype: Any) -> Any:
    import bitsandbytes  # noqa: F401
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def torchao_int8(torch_dtype: Any) -> Any:
    import torchao.quantization as tq
    from transformers import TorchAoConfig

    return TorchAoConfig(tq.Int8WeightOnlyConfig())


def torchao_int4(torch_dtype: Any) -> Any:
    import torch
    import torchao.quantization as tq
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    # Int4WeightOnlyConfig has no CPU kernel; the Intx config does.
    return TorchAoConfig(
        tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))  # type: ignore[attr-defined]
    )


def quantization_config(spec: ModelSpec, torch_dtype: Any) -> Any:
    """The transformers quantization config the spec's scheme builds at load time (its
    ``load_config``), or None."""
    scheme = spec.kind
    if scheme.load_config is None:
        return None
    module, _, name = scheme.load_config.partition(":")
    try:
        return getattr(importlib.import_module(module), name)(torch_dtype)
    except ImportError as exc:
        raise BackendError(
            f"spec {spec.text!r} needs {exc.name or 'a missing package'}: "
            f"pip install 'pytest-quantgate[{scheme.extra}]'"
        ) from exc


#: What loading a checkpoint of each quantization format needs: (import name, pip extra).
_FORMAT_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "gptq": (("gptqmodel", "gptq"), ("optimum", "gptq")),
    "awq": (("gptqmodel", "awq"),),
    "bitsandbytes": (("bitsandbytes", "bnb"),),
    "torchao": (("torchao", "torchao"),),
}


def format_problem(label: str, method: str) -> str | None:
    """A package that loading a checkpoint quantized by ``method`` needs and that is missing, in one
    line naming the extra; None when nothing is missing (or the method is not known here)."""
    for module, extra in _FORMAT_NEEDS.get(method.lower(), ()):
        if importlib.util.find_spec(module) is None:
            return (
                f"{label}: loading a {method.upper()} checkpoint needs {module}: "
                f"pip install 'pytest-quantgate[{extra}]'"
            )
    return None


def quantized_format_problem(spec: ModelSpec, where: Path) -> str | None:
    """:func:`format_problem` of the checkpoint at ``where``, by its ``quantization_config``.

    Asked before transformers is, whose own message would come from deep
    inside a loader.
    """
    config = _read_json(where / "config.json")
    qconfig = config.get("quantization_config") if isinstance(config, dict) else None
    method = str(qconfig.get("quant_method", "")) if isinstance(qconfig, dict) else ""
    return format_problem(spec.label, method)


@contextlib.contextmanager
def contained_environment() -> Iterator[None]:
    """Undo what a loader does to ``os.environ`` (gptqmodel sets allocator and device-order variables
    when it is imported); the session's environment stays the user's."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def quantized_on_the_fly(spec: ModelSpec, policy: LoadPolicy) -> Path:
    """The checkpoint of a ``gptq:``/``awq:`` spec: stored earlier, or quantized now (:mod:`..quantize`)."""
    if policy.calibration is None or spec.kind.quantizer is None:
        raise BackendError(f"{spec.label}: {spec.scheme}: quantizing needs --quant-calibration FILE")
    recipe = Recipe.of(spec.kind.quantizer, spec.options)
    problem = group_problem(spec, recipe.group_size)  # before minutes of quantizing
    if problem:
        raise BackendError(problem)
    try:
        return quantized_checkpoint(
            spec.path,
            recipe,
            policy.calibration,
            store=policy.store,
            refresh=policy.refresh,
            label=spec.label,
            emit=policy.notify or (lambda line: None),
        )
    except QuantizeError as exc:
        raise BackendError(f"{spec.label}: {exc}") from exc


def group_problem(spec: ModelSpec, group_size: int) -> str | None:
    """Why quantizing in groups of ``group_size`` input columns cannot work for this model, or None.

    A group must divide every linear layer's input width (the hidden size,
    the attention output's and the MLP's intermediate size, from
    ``config.json``): SmolLM2-135M's hidden size of 576 is not a multiple of
    128, and its GPTQ checkpoint then quantized and failed on every case on
    the CPU (``expect K to be divisible by qGroupSize``).
    """
    config = _read_json(Path(spec.path) / "config.json")
    if group_size <= 0 or not isinstance(config, dict):
        return None
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = {
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "num_attention_heads x head_dim": heads * head_dim
        if isinstance(heads, int) and isinstance(head_dim, int)
        else None,
    }
    known = {name: w for name, w in widths.items() if isinstance(w, int) and w > 0}
    bad = [f"{name} {w}" for name, w in known.items() if w % group_size]
    if not bad:
        return None
    fits = [g for g in (256, 128, 64, 32, 16) if g < group_size and all(w % g == 0 for w in known.values())]
    hint = f"; group_size={fits[0]} fits" if fits else ""
    return (
        f"{spec.label}: group_size={group_size} does not divide the model's {', '.join(bad)}: "
        f"such a checkpoint fails on every case{hint} ({spec.text!r})"
    )


def load_error(spec: ModelSpec, exc: Exception) -> BackendError:
    # The whole message: its first line is often a preamble
    # ("Couldn't instantiate the backend tokenizer from one of:").
    text = str(exc).strip() or type(exc).__name__
    return BackendError(f"cannot load {spec.label} from {spec.path}: {text}")


# -- what the model libraries log while a checkpoint loads ------------------------

#: The loggers held while a model loads: the libraries whose import logs warnings at everyone.
LIBRARY_LOGGERS = ("torch", "torchao", "bitsandbytes")

#: Warnings those libraries log when they are imported, known to be harmless: (logger, what the
#: message says, harmless on the CPU only). Dropped; any other warning is summarised.
_HARMLESS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    # torchao's compiled CUDA kernels (mxfp8, the sm90a cutlass ones) cannot load without CUDA;
    # its CPU paths do not use them.
    ("torchao", re.compile(r"^Failed to load \S*torchao\S*_C\S*\.so\b"), True),
    # Triton compiles GPU kernels only.
    ("torchao.kernel", re.compile(r"Detected no triton"), True),
    # An optional faster CPU kernel fetched with the `kernels` package; bitsandbytes uses its own.
    ("bitsandbytes", re.compile(r"^Failed to load CPU gemm_4bit_forward from kernels-community"), False),
    # torch deprecating what torchao calls (register_constant on its enums): a note to torchao.
    ("torch.utils._pytree", re.compile(r"is an Enum subclass and is now natively supported"), False),
)


class _Held(logging.Handler):
    """Keeps the records it is handed, to be sorted out when the load is over."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _harmless(record: logging.LogRecord, message: str, device: str) -> bool:
    return record.levelno == logging.WARNING and any(
        (record.name == name or record.name.startswith(name + "."))
        and pattern.search(message)
        and (device == "cpu" or not cpu_only)
        for name, pattern, cpu_only in _HARMLESS
    )


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a library's malformed call: its format string says enough
        return str(record.msg)


@contextlib.contextmanager
def library_log(device: str) -> Iterator[list[str]]:
    """Hold what torch, torchao and bitsandbytes log inside the block (a model's load).

    Importing them logs warnings about kernels that cannot load where they
    are not needed (``Failed to load ..._C_mxfp8...so`` on a CPU) and about
    deprecations meant for other libraries' authors; printed raw they read
    as a broken install, at the start of a run or under whichever test
    happened to load a model. Here the known-harmless ones
    (:data:`_HARMLESS`) are dropped and every other warning becomes one
    line, ``logger: message``, in the list yielded (filled when the block
    ends), for the one line of library warnings the run prints. Nothing
    else is hidden: records above WARNING, those below it that a logger
    was set to let through, and every other record held when the block
    raises (a failed load, which they may explain) go on to the loggers'
    own handlers when the block ends, as if never held.

    Args:
        device: The resolved device of the load (``cpu``, ``cuda:0``): some
            warnings are harmless on the CPU only.
    """
    held = _Held()
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for handler in saved[-1][1]:
            logger.removeHandler(handler)
        logger.addHandler(held)
        logger.propagate = False
    lines: list[str] = []
    raised = True
    try:
        yield lines
        raised = False
    finally:
        for logger, handlers, propagate in saved:
            logger.removeHandler(held)
            for handler in handlers:
                logger.addHandler(handler)  # beside any the library set up meanwhile
            logger.propagate = propagate
        for record in held.records:
            message = _message(record)
            if _harmless(record, message, device):
                continue
            if raised or record.levelno != logging.WARNING:
                logging.getLogger(record.name).handle(record)
            else:
                first = message.strip().splitlines()[0] if message.strip() else ""
                lines.append(f"{record.name}: {first}")
