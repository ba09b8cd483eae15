"""GGUF files (llama.cpp's format) through transformers: what a file holds, and how it is read.

transformers reads a GGUF file with the ``gguf`` package and dequantizes
its weights into an ordinary model, which then runs in the run's dtype:
what a ``gguf:`` spec measures is the quality of the quantized weights, not
of llama.cpp's kernels (which also quantize activations). :func:`read_gguf`
reads the file's header (its architecture and tensor types) with
``gguf.GGUFReader``, before any weight is read; :func:`gguf_problem` refuses
an architecture transformers cannot load, and a file that lies beside a
checkpoint's ``tokenizer.json``, in one line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..values.specs import ModelSpec
from .base import BackendError

__all__ = [
    "DEQUANTIZED_NOTE",
    "GGUFFacts",
    "beside_tokenizer_problem",
    "gguf_dequantized",
    "gguf_problem",
    "pretrained_source",
    "read_gguf",
]

#: What a GGUF model's facts say about what was measured.
DEQUANTIZED_NOTE = (
    "weights dequantized from GGUF by transformers and run in {dtype}: this measures the quality of the "
    "quantized weights, not of llama.cpp's kernels (which also quantize activations); for those, point a "
    "served-models backend (not built yet) at a llama.cpp server behind an OpenAI-compatible endpoint"
)

#: Architectures whose GGUF name transformers' loader renames before it looks the name up.
_RENAMED = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
}


@dataclass(frozen=True)
class GGUFFacts:
    """What a GGUF file's header says: its architecture and how its tensors are stored."""

    architecture: str
    #: Tensor type name (``Q8_0``, ``F32``) -> how many of the file's tensors have it.
    tensor_types: dict[str, int] = field(default_factory=dict)
    #: llama.cpp's ``general.file_type`` by name (``MOSTLY_Q8_0``), None when the file does not say.
    file_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "tensor_types": dict(self.tensor_types),
            "file_type": self.file_type,
        }


def read_gguf(path: str | Path, label: str) -> GGUFFacts:
    """The architecture and tensor types of the GGUF file at ``path`` (its header only).

    Raises:
        BackendError: ``gguf`` is not installed, or the file is not a GGUF file.
    """
    try:
        import gguf
    except ImportError as exc:
        raise BackendError(
            f"{label}: loading a GGUF file needs gguf: pip install 'pytest-quantgate[hf]'"
        ) from exc
    try:
        reader = gguf.GGUFReader(str(path))
        arch_field = reader.fields.get("general.architecture")
        if arch_field is None:
            raise ValueError("no general.architecture in its metadata")
        architecture = str(arch_field.contents())
        types = Counter(gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors)
        type_field = reader.fields.get("general.file_type")
        file_type = None
        if type_field is not None:
            code = int(type_field.contents())
            known = {int(v): v.name for v in gguf.LlamaFileType}
            file_type = known.get(code, str(code))
    except BackendError:
        raise
    except Exception as exc:  # gguf raises ValueError, struct.error, OSError, ... on a file that is not GGUF
        text = str(exc).strip() or type(exc).__name__
        raise BackendError(f"{label}: cannot read the GGUF file {path}: {text}") from exc
    return GGUFFacts(architecture, dict(sorted(types.items())), file_type)


def loadable_architectures() -> frozenset[str]:
    """The GGUF architectures this transformers loads (``GGUF_CONFIG_MAPPING`` and its newer loader's)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    names = set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}
    try:  # transformers' newer GGUF loader (5.2x) handles a few architectures of its own
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return frozenset(names)


#: The file transformers reads a GGUF's tokenizer from instead of the GGUF, when it lies beside it.
_FAST_TOKENIZER_FILE = "tokenizer.json"

#: A checkpoint's tokenizer files, named in the refusal when they lie beside a GGUF file.
_TOKENIZER_FILES = (
    _FAST_TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def beside_tokenizer_problem(spec: ModelSpec) -> str | None:
    """Why a GGUF file cannot be loaded from its folder: a checkpoint's ``tokenizer.json`` lies beside it.

    ``from_pretrained(folder, gguf_file=...)`` then builds the tokenizer from
    ``tokenizer.json`` and never applies the GGUF's own tokenizer settings:
    transformers 5.24 gives a tokenizer with no eos, bos or pad token and no
    chat template (the shipped tiny GGUF beside ``models/tiny-ref``'s files;
    SmolLM2-135M-Instruct's beside its checkpoint's), so generation would not
    stop. None when nothing is in the way.
    """
    folder = Path(spec.path).parent
    if not (folder / _FAST_TOKENIZER_FILE).is_file():
        return None
    beside = ", ".join(name for name in _TOKENIZER_FILES if (folder / name).is_file())
    return (
        f"{spec.label}: the GGUF file {spec.path} lies beside a checkpoint's tokenizer files ({beside}), "
        "which transformers would read instead of the file's own tokenizer (losing its eos token: "
        "generation would not stop); move the GGUF file into a folder of its own"
    )


def gguf_problem(spec: ModelSpec, facts: GGUFFacts) -> str | None:
    """Why transformers cannot load the file: tokenizer files beside it (:func:`beside_tokenizer_problem`),
    or an architecture it has no GGUF mapping for; else None."""
    import transformers

    beside = beside_tokenizer_problem(spec)
    if beside:
        return beside
    arch = facts.architecture
    known = loadable_architectures()
    if arch in known or _RENAMED.get(arch) in known:
        return None
    return (
        f"{spec.label}: the GGUF file {spec.path} is of architecture {arch!r}, which transformers "
        f"{transformers.__version__} cannot load (it loads {', '.join(sorted(known))})"
    )


def pretrained_source(spec: ModelSpec) -> tuple[Path, dict[str, Any]]:
    """Where ``from_pretrained`` reads a spec from, and the keywords that say how.

    A checkpoint directory is itself; a GGUF file is its directory, and ``gguf_file=`` the file's
    absolute path (a bare name is looked up in the current directory first).
    """
    path = Path(spec.path)
    if spec.kind.gguf:
        return path.parent, {"gguf_file": str(path)}
    return path, {}


def gguf_dequantized() -> Any:
    """The quantization config that makes transformers dequantize every weight of a GGUF file.

    transformers 5.2x can keep a few architectures' weights packed when a
    kernel for them is installed; a gate states what it measured, so here
    every weight is dequantized, always. None where transformers has no such
    choice (it always dequantizes).
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=True)
