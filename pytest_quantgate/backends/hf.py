"""The transformers backend: a local checkpoint through ``from_pretrained``.

Greedy decoding, left padding, batched, ``model.eval()`` and
``torch.inference_mode()``. Quantization schemes of :mod:`..specs` are
applied at load time. Loading is strict (:class:`LoadPolicy`): no hub; no
code shipped with a checkpoint unless ``--quant-trust-remote-code``;
safetensors only unless ``--quant-allow-pickle``; a candidate whose tokenizer
differs from the reference's is refused unless
``--quant-allow-tokenizer-mismatch``; and a checkpoint that leaves weights
newly initialized is an error, never a silently random candidate. A
checkpoint's own ``generation_config`` never reaches decoding: the case's
settings alone decide it.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gc
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cases import GenerationSettings, Prompt, prompt_messages
from ..config import device_problem
from ..specs import ON_THE_FLY
from .base import BackendError, GenerationRequest, LoadPolicy, current_load_policy, load_policy

if TYPE_CHECKING:
    from ..specs import ModelSpec

__all__ = [
    "HFBackend",
    "LoadPolicy",
    "context_length",
    "current_load_policy",
    "load_policy",
    "resolve_device",
    "tokenizer_differences",
    "tokenizer_fingerprint",
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


# -- tokenizers ----------------------------------------------------------------

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


#: Flags of an added token that change how text around it is split.
_ADDED_FLAGS = ("special", "normalized", "lstrip", "rstrip", "single_word")


def _prepare_tokenizer(tokenizer: Any, label: str) -> None:
    """Left padding, and eos as the pad token when there is none (done to both models alike)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise BackendError(f"{label}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _pipeline(tokenizer: Any) -> str | None:
    """A hash of how a fast tokenizer splits text (normalizer, pre-tokenizer, merges, post-processor)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        data = json.loads(backend.to_str())
    except Exception:
        return None
    model = dict(data.get("model") or {})
    if isinstance(model.get("vocab"), dict):
        model.pop("vocab")  # compared on its own, with a readable difference
    kept = {k: data.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}
    return _digest({**kept, "model": model})


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What a tokenizer does to text, as JSON builtins: compare two with :func:`tokenizer_differences`.

    The vocabulary, the special tokens (by role, and all of them with their
    ids), the chat template, the added tokens with their flags, and a hash of
    the rest of a fast tokenizer's pipeline (normalizer, pre-tokenizer,
    merges, post-processor): two models fed different token ids for the same
    prompt are not comparable, however close their accuracy.
    """
    special = {}
    for name in _SPECIAL_NAMES:
        token = getattr(tokenizer, name, None)
        if token is not None:
            special[name] = [str(token), getattr(tokenizer, f"{name}_id", None)]
    added = {
        str(i): {
            "content": str(getattr(t, "content", t)),
            **{k: bool(getattr(t, k, False)) for k in _ADDED_FLAGS},
        }
        for i, t in sorted(dict(getattr(tokenizer, "added_tokens_decoder", {}) or {}).items())
    }
    template = getattr(tokenizer, "chat_template", None)
    return {
        "vocab": {str(k): int(v) for k, v in tokenizer.get_vocab().items()},
        "special_tokens": special,
        "all_special_tokens": sorted(
            [str(t), int(i)]
            for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)
        ),
        "chat_template": _jsonable(template),
        "added_tokens": added,
        "pipeline": _pipeline(tokenizer),
    }


def _some(items: Sequence[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def tokenizer_differences(reference: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """How the candidate's tokenizer differs from the reference's: short phrases, none when equal."""
    out: list[str] = []
    ref_vocab, cand_vocab = reference["vocab"], candidate["vocab"]
    if ref_vocab != cand_vocab:
        changed = sorted(
            f"{tok!r}: {ref_vocab.get(tok, 'absent')} vs {cand_vocab.get(tok, 'absent')}"
            for tok in set(ref_vocab) | set(cand_vocab)
            if ref_vocab.get(tok) != cand_vocab.get(tok)
        )
        out.append(
            f"vocabulary of {len(ref_vocab)} vs {len(cand_vocab)} tokens, {len(changed)} differ "
            f"({_some(changed)})"
        )
    ref_special, cand_special = reference["special_tokens"], candidate["special_tokens"]
    for name in _SPECIAL_NAMES:
        a, b = ref_special.get(name), cand_special.get(name)
        if a != b:
            show = [f"{x[0]!r} ({x[1]})" if x else "none" for x in (a, b)]
            out.append(f"{name} {show[0]} vs {show[1]}")
    ref_all = {tuple(x) for x in reference["all_special_tokens"]}
    cand_all = {tuple(x) for x in candidate["all_special_tokens"]}
    if ref_all != cand_all:
        only = [
            f"only the {who}'s: " + _some([f"{t!r} ({i})" for t, i in sorted(side)])
            for who, side in (("reference", ref_all - cand_all), ("candidate", cand_all - ref_all))
            if side
        ]
        out.append(f"special tokens ({'; '.join(only)})")
    ref_tpl, cand_tpl = reference["chat_template"], candidate["chat_template"]
    if ref_tpl != cand_tpl:
        has = ["one" if t is not None else "none" for t in (ref_tpl, cand_tpl)]
        out.append(
            "chat template differs" if has == ["one", "one"] else f"chat template: {has[0]} vs {has[1]}"
        )
    ref_added, cand_added = reference["added_tokens"], candidate["added_tokens"]
    if ref_added != cand_added:
        ids = sorted(set(ref_added) | set(cand_added), key=int)
        changed = [
            f"{i}: {_added(ref_added.get(i))} vs {_added(cand_added.get(i))}"
            for i in ids
            if ref_added.get(i) != cand_added.get(i)
        ]
        out.append(f"added tokens, {len(changed)} differ ({_some(changed)})")
    if reference["pipeline"] != candidate["pipeline"]:
        out.append("how text is split (normalizer, pre-tokenizer, merges or post-processor)")
    return out


def _added(token: dict[str, Any] | None) -> str:
    if token is None:
        return "absent"
    flags = [k for k in _ADDED_FLAGS if token[k]]
    return f"{token['content']!r}" + (f" [{','.join(flags)}]" if flags else "")


def _tokenizer_files(path: str) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of the files in a checkpoint directory: the key of a cached fingerprint."""
    directory = Path(path)
    if not directory.is_dir():
        return ()
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix != ".safetensors"]
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=8)
def _fingerprint_at(path: str, trust_remote_code: bool, files: tuple[tuple[str, int, int], ...]) -> str:
    """The fingerprint (as JSON) of the tokenizer in a checkpoint directory, without loading its model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )
    _prepare_tokenizer(tokenizer, path)
    return json.dumps(tokenizer_fingerprint(tokenizer))


def reference_fingerprint(policy: LoadPolicy) -> dict[str, Any] | None:
    """The fingerprint of the reference's tokenizer, read from its directory (it need not be loaded:
    its results may come from the cache); None when the reference is not a transformers checkpoint.

    Raises:
        BackendError: its tokenizer cannot be read.
    """
    ref = policy.reference
    if ref is None or ref.kind.backend != "hf" or ref.kind.target != "checkpoint":
        return None
    problem = remote_code_problem(ref, policy)
    if problem:
        raise BackendError(problem)
    try:
        found = _fingerprint_at(ref.path, policy.trust_remote_code, _tokenizer_files(ref.path))
    except BackendError:
        raise
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        raise BackendError(f"cannot read the tokenizer of the reference {ref.label}: {text}") from exc
    return dict(json.loads(found))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks the rest."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    problem = device_problem(device)  # the same rule the configuration checks up front
    if problem:
        raise BackendError(problem)
    return device


#: ``model_max_length`` of a tokenizer that sets none (transformers' VERY_LARGE_INTEGER).
_UNSET_LENGTH = 10**9


def context_length(model_config: Any, tokenizer: Any) -> int | None:
    """Tokens the model can attend to: ``max_position_embeddings``, or the tokenizer's
    ``model_max_length`` when that is smaller; None when neither says.
    """
    limits = [
        int(v)
        for v in (
            getattr(model_config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        )
        if isinstance(v, int) and 0 < v < _UNSET_LENGTH
    ]
    return min(limits) if limits else None


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # Half precision on the CPU is slow and, for tiny models, numerically
        # worse than the checkpoint; on a GPU keep the checkpoint's dtype.
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


# -- quantization at load time -------------------------------------------------


def _bnb_nf4(torch_dtype: Any) -> Any:
    import bitsandbytes  # noqa: F401  (fail here, with the extra named, not inside transformers)
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def _bnb_int8(torch_dtype: Any) -> Any:
    import bitsandbytes  # noqa: F401
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _torchao_int8(torch_dtype: Any) -> Any:
    import torchao.quantization as tq
    from transformers import TorchAoConfig

    return TorchAoConfig(tq.Int8WeightOnlyConfig())


def _torchao_int4(torch_dtype: Any) -> Any:
    import torch
    import torchao.quantization as tq
    from torchao.quantization.granularity import PerGroup
    from transformers import TorchAoConfig

    # Int4WeightOnlyConfig has no CPU kernel; the Intx config does.
    return TorchAoConfig(
        tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))  # type: ignore[attr-defined]
    )


#: Schemes quantized by transformers at load time -> their quantization config.
LOAD_TIME_CONFIGS: dict[str, Callable[[Any], Any]] = {
    "bnb-nf4": _bnb_nf4,
    "bnb-int8": _bnb_int8,
    "torchao-int8": _torchao_int8,
    "torchao-int4": _torchao_int4,
}


def _quantization_config(spec: ModelSpec, torch_dtype: Any) -> Any:
    """The transformers quantization config of a load-time scheme, or None."""
    scheme = spec.kind
    build = LOAD_TIME_CONFIGS.get(scheme.name)
    if build is None:
        return None
    try:
        return build(torch_dtype)
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
    import importlib.util

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


def _quantized_on_the_fly(spec: ModelSpec, policy: LoadPolicy) -> Path:
    """The checkpoint of a ``gptq:``/``awq:`` spec: stored earlier, or quantized now (:mod:`..quantize`)."""
    from ..quantize import QuantizeError, Recipe, quantized_checkpoint

    if policy.calibration is None:
        raise BackendError(f"{spec.label}: {spec.scheme}: quantizing needs --quant-calibration FILE")
    try:
        return quantized_checkpoint(
            spec.path,
            Recipe.of(str(spec.scheme), spec.options),
            policy.calibration,
            store=policy.store,
            refresh=policy.refresh,
            label=spec.label,
            emit=policy.notify or (lambda line: None),
        )
    except QuantizeError as exc:
        raise BackendError(f"{spec.label}: {exc}") from exc


def _load_error(spec: ModelSpec, exc: Exception) -> BackendError:
    # The whole message: its first line is often a preamble
    # ("Couldn't instantiate the backend tokenizer from one of:").
    text = str(exc).strip() or type(exc).__name__
    return BackendError(f"cannot load {spec.label} from {spec.path}: {text}")


def _tokenizer_check(spec: ModelSpec, policy: LoadPolicy, fingerprint: dict[str, Any]) -> list[str]:
    """How this model's tokenizer differs from the reference's; refused unless the policy allows it.

    The reference's tokenizer is read from its directory, not from a loaded
    model: its results may come from the cache. Nothing is compared for the
    reference itself, for a candidate of the same directory, or when the
    reference is not a transformers checkpoint.

    Raises:
        BackendError: they differ and ``--quant-allow-tokenizer-mismatch`` was not given.
    """
    ref = policy.reference
    if ref is None or ref.label == spec.label or Path(ref.path) == Path(spec.path):
        return []
    reference = reference_fingerprint(policy)
    differences = tokenizer_differences(reference, fingerprint) if reference is not None else []
    if differences and not policy.allow_tokenizer_mismatch:
        raise BackendError(
            f"{spec.label}: its tokenizer differs from the reference {ref.label}'s: "
            f"{'; '.join(differences)}; the same prompts would be different token ids, "
            "so the comparison would be meaningless (pass --quant-allow-tokenizer-mismatch to gate it anyway)"
        )
    return differences


#: Kept from a checkpoint's generation_config: which tokens start, pad and end a sequence.
_KEPT_GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _neutral_generation_config(model: Any) -> dict[str, Any]:
    """Replace the model's generation_config by one that decides nothing; return what it said.

    ``generate`` fills every field a request leaves unset from
    ``model.generation_config`` (the checkpoint's ``generation_config.json``):
    sampling, temperature, ``max_new_tokens``, ``repetition_penalty``, beams
    would change decoding behind the case's back, and differently for each
    checkpoint (lm-evaluation-harness lets a checkpoint's ``max_new_tokens=24``
    override its own limit). Only the special token ids are kept: they say
    where a sequence ends. What the checkpoint asked for goes to the model's
    facts (``checkpoint_generation_config``).
    """
    from transformers import GenerationConfig

    current = getattr(model, "generation_config", None)
    said: dict[str, Any] = {}
    if current is not None:
        said = {k: v for k, v in current.to_diff_dict().items() if k != "transformers_version"}
    kept = {k: said[k] for k in _KEPT_GENERATION_KEYS if said.get(k) is not None}
    model.generation_config = GenerationConfig(**kept)
    return said


class HFBackend:
    """A causal LM and its tokenizer, loaded from a local directory."""

    def __init__(self, spec: ModelSpec, model: Any, tokenizer: Any, device: str, load_seconds: float):
        self.spec = spec
        self.label = spec.label
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.load_seconds = load_seconds
        self.context = context_length(model.config, tokenizer)
        #: Tokens generated so far (padding not counted), for tokens-per-second progress.
        self.generated_tokens = 0
        #: What the checkpoint's generation_config said; ignored (:func:`_neutral_generation_config`).
        self.checkpoint_generation_config: dict[str, Any] = {}
        #: The directory loaded: the spec's path, or where a gptq:/awq: spec's quantized checkpoint is.
        self.checkpoint = spec.path
        #: How its tokenizer differs from the reference's (only with --quant-allow-tokenizer-mismatch).
        self.tokenizer_differences: list[str] = []
        self._tokenizer_fp: dict[str, Any] | None = None

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: str, policy: LoadPolicy | None = None) -> HFBackend:
        """Load tokenizer and model; raise :class:`BackendError` on any problem.

        ``policy`` defaults to the one the model pool set (:func:`load_policy`),
        else the strict default. Everything the policy refuses is refused
        before any weight is read.
        """
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        policy = policy if policy is not None else current_load_policy()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # the plugin prints its own progress
        for problem in (remote_code_problem(spec, policy), pickle_problem(spec, policy)):
            if problem:
                raise BackendError(problem)
        device = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        qconfig = _quantization_config(spec, torch_dtype)
        where = Path(spec.path)
        if spec.kind.name in ON_THE_FLY:
            lacking = format_problem(spec.label, spec.kind.name)  # before minutes of quantizing
            if lacking:
                raise BackendError(lacking)
            where = _quantized_on_the_fly(spec, policy)
        problem = quantized_format_problem(spec, where)
        if problem:
            raise BackendError(problem)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "local_files_only": True,
            "trust_remote_code": policy.trust_remote_code,
            "output_loading_info": True,
        }
        if not policy.allow_pickle:
            kwargs["use_safetensors"] = True
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
            kwargs["device_map"] = device
        spread = device == "cuda" and os.environ.get("QUANTGATE_DEVICE_MAP") == "auto"
        if spread:  # an xdist worker given a block of GPUs (--quant-gpus-per-worker): spread over it
            kwargs["device_map"] = "auto"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                where, local_files_only=True, trust_remote_code=policy.trust_remote_code
            )
        except Exception as exc:
            raise _load_error(spec, exc) from exc
        _prepare_tokenizer(tokenizer, spec.label)
        fingerprint = tokenizer_fingerprint(tokenizer)
        # Before the weights: a refused candidate costs no load.
        differences = _tokenizer_check(spec, policy, fingerprint)
        try:
            with contained_environment():
                loaded: Any = AutoModelForCausalLM.from_pretrained(where, **kwargs)
            model, info = loaded
        except Exception as exc:  # any failure here is this checkpoint's (safetensors raises its own)
            raise _load_error(spec, exc) from exc
        missing = list(info.get("missing_keys") or [])
        if missing:
            shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            raise BackendError(
                f"{spec.label}: {len(missing)} weight(s) missing from the checkpoint at {where} "
                f"would be randomly initialized ({shown}); refusing to gate a random model"
            )
        if qconfig is None and not spread:
            model.to(device)
        if device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(device)  # peak_memory() is this model's, not the last one's
        if spec.kind.name == "rtn":
            from .rtn import rtn_quantize_

            rtn_quantize_(model, spec.options["bits"], spec.options["group_size"])
        model.eval()
        checkpoint_generation = _neutral_generation_config(model)
        backend = cls(spec, model, tokenizer, device, time.perf_counter() - started)
        backend.checkpoint = str(where)
        backend.checkpoint_generation_config = checkpoint_generation
        backend.tokenizer_differences = differences
        backend._tokenizer_fp = fingerprint
        return backend

    def tokenizer_facts(self) -> dict[str, Any]:
        """The fingerprint of this model's tokenizer (:func:`tokenizer_fingerprint`)."""
        if self._tokenizer_fp is None:
            self._tokenizer_fp = tokenizer_fingerprint(self.tokenizer)
        return self._tokenizer_fp

    # -- prompts -------------------------------------------------------------

    def render(self, prompt: Prompt, settings: GenerationSettings) -> tuple[str, bool]:
        """The text fed to the model, and whether it already has special tokens."""
        messages = prompt_messages(prompt)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        use_template = settings.chat_template if settings.chat_template is not None else has_template
        if use_template:
            if not has_template:
                raise BackendError(f"{self.label}: chat_template=True but the tokenizer has no chat template")
            if messages is None:
                messages = [{"role": "user", "content": str(prompt)}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return str(text), True
        if messages is not None:
            raise BackendError(
                f"{self.label}: a chat-message prompt needs a chat template, and the tokenizer has none"
            )
        return str(prompt), False

    def render_text(self, request: GenerationRequest) -> str:
        """The text the model is fed for ``request`` (see :meth:`render`)."""
        return self.render(request.prompt, request.settings)[0]

    def check_requests(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Refuse a request whose prompt tokens + ``max_new_tokens`` exceed the context.

        Measured on the rendered prompt (chat template included), before
        anything is generated: past its context a model either fails
        deep inside generation or, worse, runs on silently; and a huge
        prompt in a batch can exhaust memory before it fails.
        """
        out: list[str | None] = [None] * len(requests)
        if self.context is None:
            return out
        # One tokenizer call per special-tokens flag: a fast tokenizer encodes a batch in one go.
        groups: dict[bool, list[tuple[int, str]]] = {}
        for i, req in enumerate(requests):
            try:
                text, special = self.render(req.prompt, req.settings)
            except BackendError as exc:  # no chat template: this case's error, found before generating
                out[i] = str(exc)
                continue
            groups.setdefault(special, []).append((i, text))
        for special, items in groups.items():
            encoded = self.tokenizer([t for _, t in items], add_special_tokens=not special)["input_ids"]
            for (i, _), ids in zip(items, encoded, strict=True):
                length, limit = len(ids), requests[i].settings.max_new_tokens
                need = length + limit
                if need > self.context:
                    out[i] = (
                        f"the prompt ({length} tokens) + max_new_tokens ({limit}) "
                        f"= {need} tokens exceeds the context of {self.label} ({self.context} tokens)"
                    )
        return out

    # -- generation ----------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy continuations of a batch of requests, in order."""
        import torch

        out: list[str] = [""] * len(requests)
        groups: dict[tuple[GenerationSettings, bool], list[tuple[int, str]]] = {}
        for i, req in enumerate(requests):
            text, special = self.render(req.prompt, req.settings)
            groups.setdefault((req.settings, special), []).append((i, text))
        with torch.inference_mode():
            for (settings, special), items in groups.items():
                replies = self._generate_texts([t for _, t in items], settings, special)
                for (i, _), reply in zip(items, replies, strict=True):
                    out[i] = reply
        return out

    def _generate_texts(self, texts: list[str], settings: GenerationSettings, special: bool) -> list[str]:
        from transformers import GenerationConfig

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not special).to(
            self.model.device
        )
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
        )
        extra: dict[str, Any] = {}
        if settings.stop:
            # Stops each row early; the runner still truncates at the stop
            # string, so the result does not depend on this optimisation.
            config.stop_strings = list(settings.stop)
            extra["tokenizer"] = self.tokenizer
        generated = self.model.generate(**enc, generation_config=config, **extra)
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        self.generated_tokens += int((new_tokens != self.tokenizer.pad_token_id).sum())
        return [str(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # -- scoring -------------------------------------------------------------

    def token_logprobs(self, pairs: Sequence[tuple[Prompt, str]]) -> list[list[float]]:
        """Per-token log-probabilities of each continuation (teacher forcing)."""
        import torch

        settings = GenerationSettings()
        results: list[list[float]] = []
        with torch.inference_mode():
            for prompt, continuation in pairs:
                text, special = self.render(prompt, settings)
                prefix = self.tokenizer(text, add_special_tokens=not special)["input_ids"]
                cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
                if not cont:
                    results.append([])
                    continue
                ids = torch.tensor([prefix + cont], device=self.model.device)
                logits = self.model(input_ids=ids).logits[0, len(prefix) - 1 : -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                picked = logp.gather(1, torch.tensor(cont, device=logp.device)[:, None])[:, 0]
                results.append([float(x) for x in picked.cpu()])
        return results

    # -- facts ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        qconf = getattr(self.model.config, "quantization_config", None)
        if qconf is not None and not isinstance(qconf, dict):
            qconf = qconf.to_dict() if hasattr(qconf, "to_dict") else repr(qconf)
        if self.spec.kind.name == "rtn":
            qconf = {"quant_method": "rtn", **self.spec.options}
        mismatch = {"tokenizer_differences": list(self.tokenizer_differences)}
        return {
            "label": self.label,
            "spec": self.spec.text,
            "path": self.spec.path,
            "scheme": self.spec.scheme,
            **({"checkpoint": self.checkpoint} if self.checkpoint != self.spec.path else {}),
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "quantization": _jsonable(qconf),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "weight_bytes": _weight_bytes(self.model),
            "context": self.context,
            "load_seconds": round(self.load_seconds, 3),
            "tokenizer": _digest(self.tokenizer_facts()),
            **(mismatch if self.tokenizer_differences else {}),
            "checkpoint_generation_config": _jsonable(self.checkpoint_generation_config),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pid": os.getpid(),
        }

    def peak_memory(self) -> int | None:
        """Peak bytes allocated on this model's CUDA device since it loaded; None on other devices."""
        import torch

        if self.model is None or self.model.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.model.device))

    def free_memory(self) -> None:
        """Return cached device memory after an out-of-memory error (the runner then halves the batch)."""
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Drop the model, so that the next one can take its memory.

        On the CPU dropping the last reference frees the weights (reference
        counting); a full ``gc.collect()`` costs about 0.3 s per call in a
        process that has imported transformers, so it runs only where cached
        device memory must be handed back (CUDA).
        """
        on_gpu = self.model is not None and self.model.device.type == "cuda"
        self.model = None
        if on_gpu:
            self.free_memory()


def _weight_bytes(model: Any) -> int:
    """Bytes the model's weights take: every parameter and persistent buffer, each tensor once.

    Packed quantized weights count at their real size: GPTQ's and AWQ's
    int32 ``qweight``/``qzeros``/``scales`` are buffers, not parameters;
    bitsandbytes keeps 4-bit weights as uint8 parameters with their scales
    in ``quant_state`` (8-bit ones in ``SCB``); torchao's are tensor
    subclasses whose inner tensors hold the data. Tied weights count once
    (by storage address). Buffers left out of the checkpoint
    (``persistent=False``: rotary ``inv_freq``, masks) are derived, not weights.
    """
    import torch

    def held(t: Any) -> Iterator[Any]:
        if not isinstance(t, torch.Tensor):
            return
        flatten = getattr(type(t), "__tensor_flatten__", None)
        if flatten is not None:  # a wrapper subclass: count what it wraps
            for name in flatten(t)[0]:
                yield from held(getattr(t, name))
            return
        yield t
        scb = getattr(t, "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb
        state = getattr(t, "quant_state", None)
        while state is not None:  # nested (double-quantized) statistics live in state2
            yield from (v for v in vars(state).values() if isinstance(v, torch.Tensor))
            state = getattr(state, "state2", None)

    def kept(module: Any) -> Iterator[Any]:
        yield from module.parameters(recurse=False)
        skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
        yield from (b for name, b in module.named_buffers(recurse=False) if name not in skip)

    sizes: dict[Any, int] = {}
    for module in model.modules():
        for tensor in kept(module):
            for t in held(tensor):
                try:
                    ptr = t.data_ptr()
                except RuntimeError:  # a tensor subclass with no storage of its own
                    ptr = 0
                key = (str(t.device), ptr) if ptr else id(t)  # meta and empty tensors have no address
                sizes[key] = max(sizes.get(key, 0), t.numel() * t.element_size())
    return sum(sizes.values())


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
