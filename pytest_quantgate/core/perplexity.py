"""Perplexity under one recorded protocol (``--quant-ppl-corpus``; issue 19).

A corpus is read once (:class:`Corpus`: a text file is one document, a
JSONL file one document per row's ``text``), joined with
:data:`SEPARATOR` between documents as Hugging Face's recipe joins
WikiText (windows cross documents, as there and in llama.cpp), and
tokenized once per model. Sliding windows of at most ``max_length`` tokens
advance by ``stride``; each window scores only the tokens new to it, with
everything before them in the window as context (:func:`plan_windows`).
Every window begins with the same special tokens, those the tokenizer puts
before any text (its BOS; none for a tokenizer that adds none): a window
never sees a BOS in one place and not in another. Without a BOS the
corpus's first token has no context and is not scored.

Perplexity is ``exp(total NLL / tokens scored)`` — not a mean of window
means — and bits per byte ``total NLL / ln 2 / bytes of text scored``, the
figure a change of tokenizer cannot game. The :class:`Protocol` (tokenizer
digest, corpus digest, documents, separator, prefix, max length, stride,
tokens and bytes scored, the run's dtype) is recorded beside the numbers,
and :func:`compare` refuses two runs of different protocols in one line
(:class:`ProtocolMismatch`); two tokenizers make the token ratio
meaningless, so only the per-byte ratio is given then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, BackendError
from ..statistics.gate import Verdict
from ..statistics.perplexity import PairedRatio, paired_ratio
from ..values.digest import json_digest
from ..values.files import jsonl_rows
from .runner import BatchSize, is_out_of_memory

__all__ = [
    "AUTO_MAX_LENGTH",
    "SEPARATOR",
    "Corpus",
    "PerplexityComparison",
    "PerplexityRun",
    "PerplexitySettings",
    "Protocol",
    "ProtocolMismatch",
    "compare",
    "measure",
    "plan_windows",
    "resolve_lengths",
    "window_inputs",
    "windows_per_batch",
]

#: Between the documents of a JSONL corpus (what Hugging Face's recipe joins WikiText's rows with).
SEPARATOR = "\n\n"
#: ``--quant-ppl-max-length=auto``: the reference's context, at most this many tokens.
AUTO_MAX_LENGTH = 1024
_JSONL = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Corpus:
    """The perplexity corpus, read once.

    Attributes:
        path: The file (absolute).
        documents: Its documents, in order.
        digest: sha256 of the text the models score (documents and separators).
    """

    path: Path
    documents: tuple[str, ...] = field(repr=False)
    digest: str

    @property
    def text(self) -> str:
        """What the models tokenize: the documents joined with :data:`SEPARATOR`."""
        return SEPARATOR.join(self.documents)

    @classmethod
    def read(cls, path: Path) -> Corpus:
        """Read ``path``: JSONL (``.jsonl``, ``.ndjson``) with a ``text`` field per row, else plain text.

        Raises:
            ValueError: the file cannot be read, a row is not JSON or has no
                string ``text``, or there is no text at all; one line naming it.
        """
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the perplexity corpus {path}: {exc}") from None
        if path.suffix.lower() in _JSONL:
            documents: list[str] = []
            for number, row in jsonl_rows(path, raw):
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise ValueError(f"{path}: line {number}: no string 'text' field")
                if text:
                    documents.append(text)
        else:
            documents = [raw] if raw else []
        if not any(d.strip() for d in documents):
            raise ValueError(f"the perplexity corpus {path} holds no text")
        text = SEPARATOR.join(documents)
        return cls(path=path, documents=tuple(documents), digest=json_digest(text))


@dataclass(frozen=True)
class PerplexitySettings:
    """``--quant-ppl-*``: the corpus and how it is windowed.

    Attributes:
        corpus: The corpus.
        max_length: Tokens per window, special tokens included; None: auto
            (the reference's context, at most :data:`AUTO_MAX_LENGTH`).
        stride: Tokens a window advances by; None: auto (half the max length).
        tolerance: Margin of the ratio ``PPL_candidate / PPL_reference`` above
            1 (``0.02``: 2 %); None: perplexity is information only.
    """

    corpus: Corpus
    max_length: int | None = None
    stride: int | None = None
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": str(self.corpus.path),
            "max_length": "auto" if self.max_length is None else self.max_length,
            "stride": "auto" if self.stride is None else self.stride,
            "tolerance": self.tolerance,
        }


def resolve_lengths(settings: PerplexitySettings, context: int | None) -> tuple[int, int]:
    """``(max_length, stride)``: auto resolved from the reference's ``context`` (None: unknown).

    Raises:
        ValueError: the stride exceeds the max length (tokens would go unscored).
    """
    length = settings.max_length
    if length is None:
        length = min(context, AUTO_MAX_LENGTH) if context else AUTO_MAX_LENGTH
    stride = settings.stride if settings.stride is not None else max(1, length // 2)
    if stride > length:
        raise ValueError(
            f"--quant-ppl-stride {stride} exceeds the max length {length}: tokens would go unscored"
        )
    return length, stride


def plan_windows(tokens: int, prefix: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over ``tokens`` corpus tokens: ``(begin, end, first_scored)`` each.

    A window holds the ``prefix`` special tokens, then corpus tokens
    ``[begin, end)``, at most ``max_length`` in all; windows begin every
    ``stride`` tokens, and each scores only the tokens no earlier window
    scored — from corpus position ``first_scored`` on, with every token
    before it in the window as context (Hugging Face's "perplexity of
    fixed-length models" recipe). Without a prefix, corpus token 0 has no
    context and is never scored.

    Raises:
        ValueError: a window has no room for context before its new tokens
            (with this prefix and stride), or the corpus has nothing to score.
    """
    room = max_length - prefix
    if room < 1 or (prefix == 0 and room < 2):
        raise ValueError(
            f"a max length of {max_length} leaves no room for the corpus after {prefix} special token(s)"
        )
    if stride > room - (prefix == 0):
        # Without a BOS a window's first token has no context: windows must overlap by one.
        raise ValueError(
            f"--quant-ppl-stride {stride} leaves tokens without context: at most {room - (prefix == 0)} "
            f"with a max length of {max_length} and {prefix} special token(s) before each window"
        )
    done = 0 if prefix else 1
    if tokens <= done:
        raise ValueError(f"the corpus is {tokens} token(s) long: nothing to score")
    out: list[tuple[int, int, int]] = []
    begin = 0
    while True:
        end = min(begin + room, tokens)
        if end > done:
            out.append((begin, end, done))
        done = end
        if end >= tokens:
            return out
        begin += stride


@dataclass(frozen=True)
class Protocol:
    """What a perplexity number depends on; two numbers compare only under equal protocols.

    Attributes:
        tokenizer: The tokenizer's digest (:attr:`~..backends.base.CorpusTokens.tokenizer`).
        corpus: The corpus's digest; documents: how many; separator: what joins them.
        prefix: The special tokens before every window (its BOS).
        max_length: Tokens per window, the prefix included; stride: tokens a window advances by.
        tokens: Corpus tokens; scored: those scored; bytes: UTF-8 bytes of the text scored.
        dtype: The run's ``--quant-dtype``.
    """

    tokenizer: str
    corpus: str
    documents: int
    separator: str
    prefix: tuple[int, ...]
    max_length: int
    stride: int
    tokens: int
    scored: int
    bytes: int
    dtype: str

    @property
    def fingerprint(self) -> str:
        """A digest of every field: a different stride, corpus, tokenizer ... is a different protocol."""
        return json_digest(self.to_dict(), 16)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "corpus": self.corpus,
            "documents": self.documents,
            "separator": self.separator,
            "prefix": list(self.prefix),
            "max_length": self.max_length,
            "stride": self.stride,
            "tokens": self.tokens,
            "scored": self.scored,
            "bytes": self.bytes,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(**{**data, "prefix": tuple(data["prefix"])})

    def differences(self, other: Protocol, *, tokenizer: bool = True) -> list[str]:
        """``name mine vs theirs`` for each field that differs (the tokenizer's and what follows
        from it — prefix, tokens, scored, bytes — left out unless ``tokenizer``)."""
        derived = {"tokenizer", "prefix", "tokens", "scored", "bytes"}
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{k} {mine[k]!r} vs {theirs[k]!r}"
            for k in mine
            if mine[k] != theirs[k] and (tokenizer or k not in derived)
        ]


@dataclass(frozen=True)
class PerplexityRun:
    """One model's perplexity on the corpus.

    Attributes:
        protocol: How it was measured.
        nll: Per window, the summed negative log-likelihood (nats) of its scored tokens.
        tokens: Per window, the tokens it scored.
        seconds: Tokenizing and scoring, the model already loaded.
    """

    protocol: Protocol
    nll: tuple[float, ...]
    tokens: tuple[int, ...]
    seconds: float = 0.0

    @property
    def total_nll(self) -> float:
        return math.fsum(self.nll)

    @property
    def log_ppl(self) -> float:
        """Total NLL over tokens scored."""
        return self.total_nll / self.protocol.scored

    @property
    def ppl(self) -> float:
        """``exp(log_ppl)``; inf beyond a float's range."""
        return math.exp(self.log_ppl) if self.log_ppl < 709 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.total_nll / math.log(2) / self.protocol.bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "ppl": self.ppl if math.isfinite(self.ppl) else None,
            "log_ppl": self.log_ppl,
            "bits_per_byte": self.bits_per_byte,
            "nll": self.total_nll,
            "fingerprint": self.protocol.fingerprint,
            "protocol": self.protocol.to_dict(),
            "seconds": round(self.seconds, 3),
            "windows": {"nll": list(self.nll), "tokens": list(self.tokens)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerplexityRun:
        """Read back :meth:`to_dict`.

        Raises:
            ValueError: the recorded fingerprint is not its protocol's (edited or from another version).
        """
        protocol = Protocol.from_dict(data["protocol"])
        if data.get("fingerprint") != protocol.fingerprint:
            raise ValueError(
                f"perplexity fingerprint {data.get('fingerprint')!r} is not that of its protocol "
                f"({protocol.fingerprint})"
            )
        windows = data["windows"]
        return cls(
            protocol,
            tuple(float(x) for x in windows["nll"]),
            tuple(int(x) for x in windows["tokens"]),
            float(data.get("seconds", 0.0)),
        )


def measure(
    backend: Backend,
    corpus: Corpus,
    *,
    max_length: int,
    stride: int,
    dtype: str,
    context: int | None = None,
    batch: BatchSize | None = None,
) -> PerplexityRun:
    """One model's :class:`PerplexityRun`: the corpus tokenized once, windows scored in batches.

    ``batch`` windows go to :meth:`~..backends.base.Backend.window_logprobs`
    at a time; out of memory, the batch is halved (down to one window).

    Raises:
        BackendError: the model cannot score, or its context is shorter than
            ``max_length``; ValueError: the windows cannot be planned.
    """
    if context is not None and max_length > context:
        raise BackendError(
            f"{backend.label}: --quant-ppl-max-length {max_length} exceeds its context ({context} tokens)"
        )
    started = time.perf_counter()
    text = corpus.text
    encoded = backend.encode_corpus(text)
    ids, prefix = list(encoded.ids), list(encoded.prefix)
    plan = plan_windows(len(ids), len(prefix), max_length, stride)
    sizer = batch or BatchSize(16)
    nll: list[float] = []
    counts: list[int] = []
    at = 0
    while at < len(plan):
        chunk = plan[at : at + sizer.size]
        windows = window_inputs(ids, prefix, chunk)
        first = [len(prefix) + done - begin for begin, _, done in chunk]
        try:
            scored = backend.window_logprobs(windows, first)
        except Exception as exc:
            if is_out_of_memory(exc):
                backend.free_memory()
                if sizer.halve(len(chunk)):
                    continue
            if isinstance(exc, BackendError):
                raise
            raise BackendError(
                f"{backend.label}: scoring the corpus failed: {type(exc).__name__}: {exc}"
            ) from exc
        for (_, end, done), logprobs in zip(chunk, scored, strict=True):
            if len(logprobs) != end - done:
                raise BackendError(
                    f"{backend.label}: window_logprobs gave {len(logprobs)} values for {end - done} tokens"
                )
            nll.append(-math.fsum(logprobs))
            counts.append(end - done)
        at += len(chunk)
    scored_tokens = sum(counts)
    unscored_bytes = 0 if prefix else encoded.first_bytes
    protocol = Protocol(
        tokenizer=encoded.tokenizer,
        corpus=corpus.digest,
        documents=len(corpus.documents),
        separator=SEPARATOR,
        prefix=tuple(prefix),
        max_length=max_length,
        stride=stride,
        tokens=len(ids),
        scored=scored_tokens,
        bytes=len(text.encode("utf-8")) - unscored_bytes,
        dtype=dtype,
    )
    return PerplexityRun(protocol, tuple(nll), tuple(counts), time.perf_counter() - started)


class ProtocolMismatch(ValueError):
    """Two perplexity runs measured under different protocols: never compared."""


@dataclass(frozen=True)
class PerplexityComparison:
    """A candidate's perplexity against the reference's.

    Attributes:
        reference: The reference's run; candidate: the candidate's.
        paired: The paired ratio and its bounds (same tokenizer); None when
            the tokenizers differ: then ``refused`` says why in one line.
        byte_ratio: Candidate's bits per byte over the reference's.
        verdict: Against ``tolerance``; None when no tolerance was given.
        tolerance: The ratio margin (``--quant-ppl-tolerance``), or None.
        refused: Why the token-level ratio is not given, or None.
    """

    reference: PerplexityRun
    candidate: PerplexityRun
    paired: PairedRatio | None
    byte_ratio: float
    verdict: Verdict | None
    tolerance: float | None
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": None if self.paired is None else self.paired.to_dict(),
            "bits_per_byte_ratio": self.byte_ratio,
            "verdict": None if self.verdict is None else self.verdict.value,
            "tolerance": self.tolerance,
            "refused": self.refused,
        }


def compare(
    reference: PerplexityRun,
    candidate: PerplexityRun,
    *,
    alpha: float = 0.05,
    tolerance: float | None = None,
    labels: tuple[str, str] = ("reference", "candidate"),
) -> PerplexityComparison:
    """The candidate's perplexity against the reference's, paired by window.

    With different tokenizers the windows hold other tokens: the token
    ratio is refused (in ``refused``) and only bits per byte compare; the
    verdict is then INCONCLUSIVE (no paired interval exists).

    Raises:
        ProtocolMismatch: the runs differ in corpus, separator, max length,
            stride or dtype; one line naming the differences.
    """
    differs = reference.protocol.differences(candidate.protocol, tokenizer=False)
    if differs:
        raise ProtocolMismatch(
            f"perplexity of {labels[1]} (protocol {candidate.protocol.fingerprint}) and {labels[0]} "
            f"(protocol {reference.protocol.fingerprint}) were measured under different protocols "
            f"({'; '.join(differs)}): not compared"
        )
    byte_ratio = candidate.bits_per_byte / reference.bits_per_byte
    if reference.protocol.tokenizer != candidate.protocol.tokenizer:
        refused = (
            f"{labels[1]}'s tokenizer is not {labels[0]}'s: its windows hold other tokens, so the "
            "token perplexities are not comparable; compare bits per byte"
        )
        verdict = None if tolerance is None else Verdict.INCONCLUSIVE
        return PerplexityComparison(reference, candidate, None, byte_ratio, verdict, tolerance, refused)
    if reference.tokens != candidate.tokens:  # same tokenizer and protocol: the same windows
        raise ProtocolMismatch(
            f"perplexity of {labels[1]} and {labels[0]}: one protocol, different windows: not compared"
        )
    paired = paired_ratio(reference.nll, candidate.nll, reference.tokens, alpha)
    verdict = None if tolerance is None else paired.verdict(tolerance)
    return PerplexityComparison(reference, candidate, paired, byte_ratio, verdict, tolerance)


def window_inputs(
    ids: Sequence[int], prefix: Sequence[int], plan: Sequence[tuple[int, int, int]]
) -> list[list[int]]:
    """The token windows of a plan (:func:`plan_windows`), the prefix before each."""
    return [list(prefix) + list(ids[begin:end]) for begin, end, _ in plan]


#: Tokens per batch of windows (:func:`windows_per_batch`): the logits of a batch take
#: tokens × vocabulary × 4 bytes (a 50k vocabulary: 0.4 GB at 2,048 tokens).
TOKENS_PER_BATCH_CPU = 2048
TOKENS_PER_BATCH_GPU = 16384


def windows_per_batch(max_length: int, device: str) -> int:
    """Windows scored per forward pass: a budget of tokens (:data:`TOKENS_PER_BATCH_CPU`, or the
    GPU's), whatever ``--quant-batch-size`` says of prompts; out of memory, it is halved."""
    budget = TOKENS_PER_BATCH_CPU if device.split(":")[0] == "cpu" else TOKENS_PER_BATCH_GPU
    return max(1, budget // max(1, max_length))
