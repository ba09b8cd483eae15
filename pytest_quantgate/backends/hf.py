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

import functools
import gc
import importlib
import inspect
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..values.digest import json_digest, jsonable
from ..values.prompts import GenerationSettings, Prompt, prompt_messages
from ..values.specs import ModelSpec
from .base import (
    Backend,
    BackendError,
    CorpusTokens,
    GenerationRequest,
    LoadPolicy,
    ScoreRequest,
    TokenScores,
    current_load_policy,
)
from .hf_gguf import (
    DEQUANTIZED_NOTE,
    GGUFFacts,
    gguf_dequantized,
    gguf_problem,
    pretrained_source,
    read_gguf,
)
from .hf_loading import (
    contained_environment,
    format_problem,
    library_log,
    load_error,
    pickle_problem,
    quantization_config,
    quantized_format_problem,
    quantized_on_the_fly,
    remote_code_problem,
)
from .hf_tokenizers import check_tokenizer, prepare_tokenizer, tokenizer_fingerprint
from .torch_device import resolve_device, resolve_dtype

__all__ = ["HFBackend", "context_length"]

#: Rendered prompts kept (:meth:`HFBackend.render`): a round's worth, at the largest batch sizes.
_RENDERED_KEPT = 4096
#: Most float32 logits one scoring forward pass may hold (rows x scored positions x vocabulary):
#: 2**27 values, 512 MiB.
SCORE_LOGIT_BUDGET = 2**27


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


class HFBackend(Backend):
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
        #: A GGUF file's header (architecture, tensor types), read before loading; None for a checkpoint.
        self.gguf: GGUFFacts | None = None
        self._tokenizer_fp: dict[str, Any] | None = None
        #: (prompt, chat_template) -> what :meth:`render` made of it.
        self._rendered: dict[tuple[Prompt, bool | None], tuple[str, bool]] = {}

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: str, policy: LoadPolicy | None = None) -> HFBackend:
        """Load tokenizer and model; raise :class:`BackendError` on any problem.

        ``policy`` defaults to the one the model pool set (:func:`load_policy`),
        else the strict default. Everything the policy refuses is refused
        before any weight is read. What torch, torchao and bitsandbytes log
        meanwhile is held (:func:`~.hf_loading.library_log`): its warnings
        become the backend's :attr:`library_messages`.
        """
        device = resolve_device(device)  # torch imported, its loggers set up, before they are held
        with library_log(device) as logged:
            backend = cls._load(spec, device, dtype, policy)
        backend.library_messages = tuple(logged)
        return backend

    @classmethod
    def _load(cls, spec: ModelSpec, device: str, dtype: str, policy: LoadPolicy | None) -> HFBackend:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        policy = policy if policy is not None else current_load_policy()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # the plugin prints its own progress
        for problem in (remote_code_problem(spec, policy), pickle_problem(spec, policy)):
            if problem:
                raise BackendError(problem)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        qconfig = quantization_config(spec, torch_dtype)
        where, source = pretrained_source(spec)
        gguf = None
        if spec.kind.gguf:  # the header first: an architecture transformers cannot load costs no load
            gguf = read_gguf(spec.path, spec.label)
            problem = gguf_problem(spec, gguf)
        else:
            if spec.kind.quantizer is not None:
                lacking = format_problem(spec.label, spec.kind.quantizer)  # before minutes of quantizing
                if lacking:
                    raise BackendError(lacking)
                where = quantized_on_the_fly(spec, policy)
            problem = quantized_format_problem(spec, where)
        if problem:
            raise BackendError(problem)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "local_files_only": True,
            "trust_remote_code": policy.trust_remote_code,
            "output_loading_info": True,
            **source,
        }
        if not policy.allow_pickle and gguf is None:  # a GGUF file holds no pickle
            kwargs["use_safetensors"] = True
        if gguf is not None:
            qconfig = gguf_dequantized()
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
            kwargs["device_map"] = device
        spread = device == "cuda" and os.environ.get("QUANTGATE_DEVICE_MAP") == "auto"
        if spread:  # an xdist worker given a block of GPUs (--quant-gpus-per-worker): spread over it
            kwargs["device_map"] = "auto"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                where, local_files_only=True, trust_remote_code=policy.trust_remote_code, **source
            )
        except Exception as exc:
            raise load_error(spec, exc) from exc
        prepare_tokenizer(tokenizer, spec.label)
        fingerprint = tokenizer_fingerprint(tokenizer)
        # Before the weights: a refused candidate costs no load.
        differences = check_tokenizer(spec, policy, fingerprint)
        try:
            with contained_environment():
                loaded: Any = AutoModelForCausalLM.from_pretrained(where, **kwargs)
            model, info = loaded
        except Exception as exc:  # any failure here is this checkpoint's (safetensors raises its own)
            raise load_error(spec, exc) from exc
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
        if spec.kind.transform is not None:  # fake quantization of the loaded weights (rtn)
            module, _, name = spec.kind.transform.partition(":")
            getattr(importlib.import_module(module), name)(model, **spec.options)
        model.eval()
        checkpoint_generation = _neutral_generation_config(model)
        backend = cls(spec, model, tokenizer, device, time.perf_counter() - started)
        backend.checkpoint = spec.path if gguf is not None else str(where)
        backend.gguf = gguf
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
        """The text fed to the model, and whether it already has special tokens.

        Each prompt is rendered once: a request is checked, generated and
        recorded (:meth:`check_requests`, :meth:`generate`, :meth:`render_text`),
        and a chat template is a Jinja program, not free.
        """
        key = (prompt, settings.chat_template)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = self._render(prompt, settings.chat_template)
            if len(self._rendered) > _RENDERED_KEPT:  # a round's prompts are what is asked again
                del self._rendered[next(iter(self._rendered))]
        return rendered

    def _render(self, prompt: Prompt, chat_template: bool | None) -> tuple[str, bool]:
        messages = prompt_messages(prompt)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        use_template = chat_template if chat_template is not None else has_template
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

    def timed_generate(self, requests: Sequence[GenerationRequest], new_tokens: int) -> float:
        """Seconds to generate exactly ``new_tokens`` tokens per request in one batch (``min_new_tokens``
        too, no stop strings), the device synchronized before the clock stops."""
        import torch

        texts = [self.render(r.prompt, r.settings) for r in requests]
        special = {s for _, s in texts}
        settings = GenerationSettings(new_tokens)
        on_gpu = self.model.device.type == "cuda"
        with torch.inference_mode():
            if on_gpu:
                torch.cuda.synchronize(self.model.device)
            started = time.perf_counter()
            for flag in special:  # one batch per special-tokens flag (one in practice)
                self._generate_texts([t for t, s in texts if s == flag], settings, flag, exact=True)
            if on_gpu:
                torch.cuda.synchronize(self.model.device)
            return time.perf_counter() - started

    def _generate_texts(
        self, texts: list[str], settings: GenerationSettings, special: bool, *, exact: bool = False
    ) -> list[str]:
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
        if exact:  # every row generates max_new_tokens tokens: the same work for every model
            config.min_new_tokens = settings.max_new_tokens
        extra: dict[str, Any] = {}
        if settings.stop:
            # Stops each row early; the runner still truncates at the stop
            # string, so the result does not depend on this optimisation.
            config.stop_strings = list(settings.stop)
            extra["tokenizer"] = self.tokenizer
        generated = self.model.generate(**enc, generation_config=config, **extra)
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        self.generated_tokens = (self.generated_tokens or 0) + int(
            (new_tokens != self.tokenizer.pad_token_id).sum()
        )
        return [str(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # -- scoring -------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        """Per-token log-probabilities of each continuation (teacher forcing), the top-k, ``ids``, the rest.

        The prompt is rendered as for generation; the continuation is
        tokenized on its own and appended, so every model with the same
        tokenizer scores exactly the same tokens. Full-vocabulary log-softmax
        in float32, no clamping of logits. Requests run in left-padded
        batches (position ids from the attention mask, so a row scores as it
        would alone), as many per batch as keep the float32 logits of the
        scored positions under :data:`SCORE_LOGIT_BUDGET` values.
        """
        import torch

        encoded: list[tuple[list[int], list[int]]] = []
        for req in requests:
            text, special = self.render(req.prompt, req.settings)
            prefix = list(self.tokenizer(text, add_special_tokens=not special)["input_ids"])
            cont = list(self.tokenizer(req.continuation, add_special_tokens=False)["input_ids"])
            for i, ids in enumerate(req.ids[: len(cont)]):
                if any(not 0 <= t < self.vocab_size for t in ids):
                    raise BackendError(f"{self.label}: token ids beyond the vocabulary at position {i}")
            encoded.append((prefix, cont))
        results: list[TokenScores | None] = [None] * len(requests)
        order = [i for i, (_, cont) in enumerate(encoded) if cont]
        for i, (_, cont) in enumerate(encoded):
            if not cont:
                results[i] = TokenScores((), ())
        vocab = max(1, self.vocab_size)
        batch: list[int] = []
        with torch.inference_mode():
            for i in order:
                batch.append(i)
                widest = max(len(encoded[j][1]) for j in batch) + 1
                if len(batch) > 1 and len(batch) * widest * vocab > SCORE_LOGIT_BUDGET:
                    batch.pop()
                    self._score_batch(requests, encoded, batch, results)
                    batch = [i]
            if batch:
                self._score_batch(requests, encoded, batch, results)
        return [r for r in results if r is not None]

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (the ids a log-softmax runs over)."""
        out = self.model.get_output_embeddings()
        weight = getattr(out, "weight", None)
        return int(weight.shape[0]) if weight is not None else int(self.model.config.vocab_size)

    def _score_batch(
        self,
        requests: Sequence[ScoreRequest],
        encoded: list[tuple[list[int], list[int]]],
        rows: list[int],
        results: list[TokenScores | None],
    ) -> None:
        """Score the requests ``rows`` in one forward pass (:meth:`_teacher_forced`), into ``results``."""
        import torch

        seqs = [encoded[i][0] + encoded[i][1] for i in rows]
        for i, logp in zip(rows, self._teacher_forced(seqs, [len(encoded[i][1]) for i in rows]), strict=True):
            req = requests[i]
            cont = encoded[i][1]
            picked = logp.gather(1, torch.tensor(cont, device=logp.device)[:, None])[:, 0]
            top: tuple[tuple[tuple[int, float], ...], ...] = ()
            at: tuple[tuple[float, ...], ...] = ()
            rest: tuple[float, ...] = ()
            if req.top_k > 0:
                values, indices = logp.topk(min(req.top_k, logp.shape[-1]), dim=-1)
                top = tuple(
                    tuple((int(t), float(v)) for t, v in zip(row_i, row_v, strict=True))
                    for row_i, row_v in zip(indices.cpu().tolist(), values.cpu().tolist(), strict=True)
                )
                if not req.ids:
                    rest = _rest(logp, indices)
            if req.ids:
                asked = [list(req.ids[p]) if p < len(req.ids) else [] for p in range(len(cont))]
                width_k = max(1, max(map(len, asked)))
                # Rows padded with their own first id (or the scored token): a repeat changes no mass.
                padded = [a + [(a or [cont[p]])[0]] * (width_k - len(a)) for p, a in enumerate(asked)]
                index = torch.tensor(padded, dtype=torch.long, device=logp.device)
                gathered = logp.gather(1, index).cpu().tolist()
                at = tuple(tuple(v[: len(a)]) for v, a in zip(gathered, asked, strict=True))
                empty = [p for p, a in enumerate(asked) if not a]
                rest = _rest(logp, index, keep_rows=empty)
            results[i] = TokenScores(tuple(cont), tuple(float(x) for x in picked.cpu()), top, at, rest)

    def _teacher_forced(self, seqs: Sequence[Sequence[int]], scored: Sequence[int]) -> list[Any]:
        """Per sequence, the float32 log-softmax over the full vocabulary that predicts its last
        ``scored`` tokens, each given every token before it: one forward pass.

        Left-padded, with position ids from the attention mask, so a row
        scores as it would alone; only the last ``max(scored) + 1`` positions'
        logits are computed where the model can (``logits_to_keep``). No logit
        is clamped. What scoring continuations and perplexity windows share.
        """
        import torch

        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        width = max(map(len, seqs))
        device = self.model.device
        ids = torch.tensor([[pad] * (width - len(q)) + list(q) for q in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(scored) + 1
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits[:, -keep:]
        # The logits that predict a row's scored tokens: from the token before the first of them.
        return [
            torch.log_softmax(logits[row, keep - n - 1 : keep - 1].float(), dim=-1)
            for row, n in enumerate(scored)
        ]

    @functools.cached_property
    def _takes_logits_to_keep(self) -> bool:
        """Whether the model's forward computes the logits of the last positions only."""
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    # -- facts ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        qconf = getattr(self.model.config, "quantization_config", None)
        if qconf is not None and not isinstance(qconf, dict):
            qconf = qconf.to_dict() if hasattr(qconf, "to_dict") else repr(qconf)
        if self.spec.kind.transform is not None:  # not transformers': the scheme's own
            qconf = {"quant_method": self.spec.kind.name, **self.spec.options}
        dtype = str(self.model.dtype).replace("torch.", "")
        if self.gguf is not None:  # what the file held, and what was run instead
            qconf = {
                "quant_method": "gguf",
                **self.gguf.to_dict(),
                "note": DEQUANTIZED_NOTE.format(dtype=dtype),
            }
        mismatch = {"tokenizer_differences": list(self.tokenizer_differences)}
        return {
            "label": self.label,
            "spec": self.spec.text,
            "path": self.spec.path,
            "scheme": self.spec.scheme,
            **({"checkpoint": self.checkpoint} if self.checkpoint != self.spec.path else {}),
            "device": str(self.model.device),
            "dtype": dtype,
            "quantization": jsonable(qconf),
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "weight_bytes": _weight_bytes(self.model),
            "context": self.context,
            "load_seconds": round(self.load_seconds, 3),
            "tokenizer": json_digest(self.tokenizer_facts(), 16),
            **(mismatch if self.tokenizer_differences else {}),
            "checkpoint_generation_config": jsonable(self.checkpoint_generation_config),
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

    # -- perplexity (--quant-ppl-corpus) ------------------------------------------

    def encode_corpus(self, text: str) -> CorpusTokens:
        """The corpus's tokens (no special tokens), what the tokenizer puts before a text, its digest.

        The prefix is found by encoding a word with and without special
        tokens: a tokenizer that adds a BOS (Llama's) gives it, one that
        adds none (GPT-2's, SmolLM2's) gives nothing.
        """
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
        ids = [int(i) for i in encoded["input_ids"]]
        plain = list(self.tokenizer("a", add_special_tokens=False)["input_ids"])
        special = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        starts = [i for i in range(len(special) - len(plain) + 1) if special[i : i + len(plain)] == plain]
        prefix = tuple(int(t) for t in special[: starts[0]]) if starts else ()
        first_bytes = 0
        if ids:
            offsets = encoded.get("offset_mapping")
            first_text = text[: offsets[0][1]] if offsets else self.tokenizer.decode(ids[:1])
            first_bytes = len(first_text.encode("utf-8"))
        return CorpusTokens(tuple(ids), prefix, json_digest(self.tokenizer_facts(), 16), first_bytes)

    def window_logprobs(
        self, windows: Sequence[Sequence[int]], first_scored: Sequence[int]
    ) -> list[list[float]]:
        """log p of each window's tokens from ``first_scored`` on (teacher forcing), in one batch.

        One forward pass of :meth:`_teacher_forced`: every real token keeps
        its position and sees exactly the tokens before it in its window.
        """
        import torch

        if self.model is None:
            raise BackendError(f"{self.label}: the model was closed")
        if len(windows) != len(first_scored) or any(
            not 1 <= f <= len(w) for w, f in zip(windows, first_scored, strict=False)
        ):
            raise BackendError(f"{self.label}: a window must have a token of context before those it scores")
        if not windows:
            return []
        out: list[list[float]] = []
        with torch.inference_mode():
            scored = [len(w) - f for w, f in zip(windows, first_scored, strict=True)]
            for window, first, logp in zip(
                windows, first_scored, self._teacher_forced(windows, scored), strict=True
            ):
                target = torch.tensor(list(window[first:]), dtype=torch.long, device=logp.device)
                out.append([float(v) for v in logp.gather(1, target[:, None])[:, 0].cpu()])
        return out


def _rest(logp: Any, excluded: Any, keep_rows: Sequence[int] = ()) -> tuple[float, ...]:
    """Per row of ``logp``, the log of the probability outside the ids ``excluded`` holds for it.

    A log-sum-exp of the other entries, exact where ``1 - sum(p)`` would
    cancel; ``-inf`` when nothing is left. Rows in ``keep_rows`` exclude
    nothing (their whole mass, log 1 = 0).
    """
    import torch

    masked = logp.scatter(1, excluded, float("-inf"))
    out = torch.logsumexp(masked, dim=-1)
    for row in keep_rows:
        out[row] = 0.0
    return tuple(float(v) for v in out.cpu())


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
