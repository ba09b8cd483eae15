"""The backend contract: what the runner asks of a model.

A backend (:class:`Backend`) generates greedy continuations for a batch of
requests and scores given continuations token by token (teacher forcing,
for divergence and perplexity metrics). Heavy libraries are imported only
inside the backend that needs them; :mod:`.registry` loads the backend a
spec's scheme names. :class:`LoadPolicy` is what a checkpoint may do while
it loads.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..values.calibration import Calibration
from ..values.prompts import GenerationSettings, Prompt
from ..values.specs import ModelSpec

__all__ = [
    "Backend",
    "BackendError",
    "CorpusTokens",
    "GenerationRequest",
    "LoadPolicy",
    "ScoreRequest",
    "TokenScores",
    "current_load_policy",
    "load_policy",
    "refusals",
    "rendered_text",
]


class BackendError(RuntimeError):
    """A model that cannot be loaded or used; the message says why and what to do."""


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to continue greedily."""

    prompt: Prompt
    settings: GenerationSettings


@dataclass(frozen=True)
class ScoreRequest:
    """A continuation to score after a prompt (teacher forcing): divergence and perplexity metrics.

    Attributes:
        prompt: The prompt, rendered as for generation (chat template per ``settings``).
        continuation: The text whose tokens are scored, as they follow the prompt.
        top_k: How many of the most likely tokens to report at each position (0: none).
        settings: How the prompt is rendered (only ``chat_template`` matters here).
        ids: Per continuation position, token ids whose log-probabilities to
            report (another model's top-k there, for a divergence against it);
            empty: none.
    """

    prompt: Prompt
    continuation: str
    top_k: int = 0
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    ids: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class TokenScores:
    """The scores of one continuation, one entry per continuation token.

    Attributes:
        tokens: The continuation's token ids (a backend without ids numbers its own units).
        logprobs: log p of each token given the prompt and the tokens before it.
        top: Per position, the ``top_k`` most likely tokens as ``(id, logprob)``,
            most likely first; empty when ``top_k`` was 0.
        at: Per position, the log-probabilities of the request's ``ids`` there,
            in their order; empty when the request gave none.
        rest: Per position, the log of the probability left outside the
            reported tokens — outside ``ids`` when the request gave them, else
            outside the top-k — computed over the full vocabulary (a
            log-sum-exp of the others, not ``log(1 - sum)``), ``-inf`` when
            nothing is left; empty when neither was asked.
    """

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[int, float], ...], ...] = ()
    at: tuple[tuple[float, ...], ...] = ()
    rest: tuple[float, ...] = ()


class Backend(abc.ABC):
    """A loaded model: everything the runner, the executor and the report ask of one.

    Two methods are required (:meth:`generate`, :meth:`describe`); every
    other member has a documented default, so a caller never asks whether a
    backend has it. Subclass this for a backend of your own (the README shows
    one) and return it from a registered factory or from the
    ``pytest_quantgate_make_backend`` hook.

    Attributes:
        label: The model's label in reports (the spec's).
        generated_tokens: Tokens generated so far (padding not counted), for
            tokens-per-second figures; None when the backend does not count.
        library_messages: Warnings its libraries logged while it loaded, one
            line each, held back from the terminal: the run shows them in its
            one line of library warnings.
    """

    label: str
    generated_tokens: int | None = None
    library_messages: tuple[str, ...] = ()

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy continuations, one per request, in order, untruncated."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Facts for the report: path, dtype, device, quantization config."""

    def check_requests(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Per request, why the model cannot take it (a prompt beyond its context), or None.

        Asked before generating, so that a request the model cannot take
        becomes an error of its case rather than a silent overrun or a memory
        blow-up. Default: every request is taken.
        """
        return [None] * len(requests)

    def render_text(self, request: GenerationRequest) -> str | None:
        """The exact text the model is fed for a request (chat template applied).

        Recorded with every turn, so that a report shows that the reference
        and a candidate saw byte-identical inputs up to where their replies
        parted. Default: None (the backend does not say).
        """
        return None

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        """Per-position log-probabilities (and the top-k alternatives) of each continuation.

        Default: the backend cannot score.

        Raises:
            BackendError: the backend cannot score continuations.
        """
        raise BackendError(f"{self.label}: this backend cannot score continuations")

    def token_logprobs(self, pairs: Sequence[tuple[Prompt, str]]) -> list[list[float]]:
        """log p of each token of ``continuation`` after ``prompt``, per pair (from :meth:`score`)."""
        return [list(s.logprobs) for s in self.score([ScoreRequest(p, c) for p, c in pairs])]

    def timed_generate(self, requests: Sequence[GenerationRequest], new_tokens: int) -> float:
        """Seconds to generate ``new_tokens`` tokens for every request of one batch.

        For cost measurements (``--quant-cost``), never for results: a backend
        that can should generate exactly ``new_tokens`` (no early stop at an
        end-of-sequence token, no stop string), so that every model is timed
        on the same work, and wait for its device before the clock stops.
        Default: ``generate`` with each request's ``max_new_tokens`` set to
        ``new_tokens`` and no stop strings, timed as it runs.
        """
        batch = [
            GenerationRequest(r.prompt, GenerationSettings(new_tokens, (), r.settings.chat_template))
            for r in requests
        ]
        started = time.perf_counter()
        self.generate(batch)
        return time.perf_counter() - started

    def peak_memory(self) -> int | None:
        """Peak bytes the model held on its device since it loaded; default None (not measured)."""
        return None

    def free_memory(self) -> None:  # noqa: B027  (optional, with a default: not abstract)
        """Hand back cached device memory after an out-of-memory error; default: nothing to do."""

    def close(self) -> None:  # noqa: B027  (optional, with a default: not abstract)
        """Release the model's memory; default: nothing to release."""

    # -- perplexity (``--quant-ppl-corpus``) ----------------------------------------------------

    def encode_corpus(self, text: str) -> CorpusTokens:
        """The tokens of a whole corpus, and what the tokenizer puts before any text (its BOS).

        Default: the backend cannot tokenize.

        Raises:
            BackendError: the backend cannot score a corpus.
        """
        raise BackendError(f"{self.label}: this backend cannot score a corpus (no tokenizer to encode it)")

    def window_logprobs(
        self, windows: Sequence[Sequence[int]], first_scored: Sequence[int]
    ) -> list[list[float]]:
        """log p of each token of a window from index ``first_scored[i]`` on, given the tokens before it.

        Teacher forcing over token windows, batched: window ``i`` yields
        ``len(windows[i]) - first_scored[i]`` log-probabilities. Default: the
        backend cannot score.

        Raises:
            BackendError: the backend cannot score token windows.
        """
        raise BackendError(f"{self.label}: this backend cannot score token windows")


@dataclass(frozen=True)
class CorpusTokens:
    """A corpus as one model's tokenizer encodes it (:meth:`Backend.encode_corpus`).

    Attributes:
        ids: The text's tokens, without special tokens.
        prefix: The special tokens the tokenizer puts before a text (a BOS), () when none.
        tokenizer: A digest of the tokenizer: two models with the same one score the same tokens.
        first_bytes: UTF-8 bytes of the text that ``ids[0]`` stands for (unscored without a prefix).
    """

    ids: tuple[int, ...]
    prefix: tuple[int, ...]
    tokenizer: str
    first_bytes: int = 0


def refusals(backend: Backend, requests: Sequence[GenerationRequest]) -> list[str | None]:
    """:meth:`Backend.check_requests`, checked to answer every request."""
    problems = list(backend.check_requests(requests))
    if len(problems) != len(requests):
        raise BackendError(
            f"{backend.label}: check_requests returned {len(problems)} answers for {len(requests)}"
        )
    return problems


def rendered_text(backend: Backend, request: GenerationRequest) -> str | None:
    """:meth:`Backend.render_text`, None when the backend cannot render the request."""
    try:
        text = backend.render_text(request)
    except Exception:
        return None
    return None if text is None else str(text)


@dataclass(frozen=True)
class LoadPolicy:
    """What the session lets a checkpoint do while it loads: the ``--quant-*`` safety flags.

    Attributes:
        trust_remote_code: run the code a checkpoint ships (an ``auto_map``).
        allow_pickle: load pickled weights (``pytorch_model.bin``) when a
            checkpoint has no safetensors; unpickling can run code.
        allow_tokenizer_mismatch: gate a candidate whose tokenizer differs
            from the reference's (the differences go to its facts).
        reference: the session's reference, whose tokenizer a candidate's is
            compared with; None compares nothing.
        calibration: the calibration texts of ``gptq:``/``awq:`` specs.
        store: where quantized checkpoints are kept (the cache directory);
            None: a temporary directory (``--quant-cache=off``).
        refresh: quantize again even when a stored checkpoint exists.
        notify: where a loader says what it did that takes time (quantizing).
    """

    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_tokenizer_mismatch: bool = False
    reference: ModelSpec | None = None
    calibration: Calibration | None = None
    store: Path | None = None
    refresh: bool = False
    notify: Callable[[str], None] | None = field(default=None, compare=False)


# The policy reaches a backend's loader (``HFBackend.load``) through a context variable rather
# than an argument: loaders are called as ``loader(spec, device, dtype)`` by
# the model pool, the plugin's hook and ``load_backend``, and that signature is
# public (``pytest_quantgate_make_backend``). The pool sets it around each load
# (``with load_policy(...)``); outside one, the strict default applies.
_POLICY: contextvars.ContextVar[LoadPolicy] = contextvars.ContextVar("quantgate_load_policy")
_STRICT = LoadPolicy()


@contextlib.contextmanager
def load_policy(policy: LoadPolicy) -> Iterator[LoadPolicy]:
    """Load models under ``policy`` inside the block (the strict default outside)."""
    token = _POLICY.set(policy)
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def current_load_policy() -> LoadPolicy:
    """The policy loads run under now (a backend of a plugin may honour it too)."""
    return _POLICY.get(_STRICT)
