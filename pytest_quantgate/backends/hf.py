"""The transformers backend: a local checkpoint through ``from_pretrained``.

Greedy decoding, left padding, batched, ``model.eval()`` and
``torch.inference_mode()``. Quantization schemes of :mod:`..specs` are
applied at load time. Loading is strict: no remote code, no hub, and a
checkpoint that leaves weights newly initialized is an error, never a
silently random candidate.
"""

from __future__ import annotations

import enum
import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..cases import GenerationSettings, Prompt, prompt_messages
from ..config import device_problem
from .base import BackendError, GenerationRequest

if TYPE_CHECKING:
    from ..specs import ModelSpec

__all__ = ["HFBackend", "context_length", "resolve_device"]


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

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: str) -> HFBackend:
        """Load tokenizer and model; raise :class:`BackendError` on any problem."""
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # the plugin prints its own progress
        device = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        qconfig = _quantization_config(spec, torch_dtype)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "local_files_only": True,
            "trust_remote_code": False,
            "output_loading_info": True,
        }
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
            kwargs["device_map"] = device
        spread = device == "cuda" and os.environ.get("QUANTGATE_DEVICE_MAP") == "auto"
        if spread:  # an xdist worker given a block of GPUs (--quant-gpus-per-worker): spread over it
            kwargs["device_map"] = "auto"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                spec.path, local_files_only=True, trust_remote_code=False
            )
            loaded: Any = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
            model, info = loaded
        except Exception as exc:  # any failure here is this checkpoint's (safetensors raises its own)
            # The whole message: its first line is often a preamble
            # ("Couldn't instantiate the backend tokenizer from one of:").
            text = str(exc).strip() or type(exc).__name__
            raise BackendError(f"cannot load {spec.label} from {spec.path}: {text}") from exc
        missing = list(info.get("missing_keys") or [])
        if missing:
            shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            raise BackendError(
                f"{spec.label}: {len(missing)} weight(s) missing from the checkpoint at {spec.path} "
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
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise BackendError(f"{spec.label}: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        return cls(spec, model, tokenizer, device, time.perf_counter() - started)

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
        out: list[str | None] = []
        for req in requests:
            if self.context is None:
                out.append(None)
                continue
            try:
                text, special = self.render(req.prompt, req.settings)
            except BackendError as exc:  # no chat template: this case's error, found before generating
                out.append(str(exc))
                continue
            length = len(self.tokenizer(text, add_special_tokens=not special)["input_ids"])
            need = length + req.settings.max_new_tokens
            out.append(
                None
                if need <= self.context
                else f"the prompt ({length} tokens) + max_new_tokens ({req.settings.max_new_tokens}) "
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
        return {
            "label": self.label,
            "spec": self.spec.text,
            "path": self.spec.path,
            "scheme": self.spec.scheme,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "quantization": _jsonable(qconf),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "context": self.context,
            "load_seconds": round(self.load_seconds, 3),
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
        """Drop the model, so that the next one can take its memory."""
        self.model = None
        self.free_memory()


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
