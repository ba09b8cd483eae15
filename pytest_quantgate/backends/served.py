"""Models behind an OpenAI-compatible endpoint: ``openai:`` specs (vLLM, TGI, llama.cpp's server,
``transformers serve``, a gateway in front of several of them).

A spec names the endpoint's base URL and the model it serves::

    fp16=openai:http://127.0.0.1:8000/v1?model=org/model-fp16&concurrency=8&revision=3f2a9c1

Options (:data:`~..values.specs.SERVED_OPTIONS`): ``model`` (required: the name the server knows it
by), ``concurrency`` (requests in flight, default 8), ``timeout`` (seconds per
request, 120), ``retries`` (tries after the first, 6), ``backoff`` (seconds
before the first retry, doubled at each, 0.5), ``api_key_env`` (the
environment variable that holds the key; the key itself is never written in a
spec, a report, a log or the cache), ``revision`` (an identity of the weights
behind the name, which turns the reference cache on; without it, an identity
the server reports in its model list does, see
:func:`~..storage.fingerprint.served_fingerprint`), ``endpoint`` (``auto``,
``chat`` or ``completions``) and ``seed`` (0).

Requests go through the ``openai`` package's asyncio client, at most
``concurrency`` at a time, greedily (``temperature`` 0 and ``seed``), with each
case's ``max_new_tokens`` and ``stop``. Message prompts go to chat
completions; a plain-text prompt goes to chat completions when the server has
a chat template for the model (``endpoint=auto`` asks it once, at load) or the
case sets ``chat_template=True``, and to completions otherwise — as the local
backend applies a tokenizer's chat template when it has one. A 429 is retried
after its ``Retry-After``; 502, 503, 504, timeouts and dropped connections
after an exponential backoff; any other answer is an error naming the endpoint
and the status.

Scoring (:meth:`ServedBackend.score`, for divergence) needs the server's
log-probabilities of a given text: completions with ``echo`` and ``logprobs``,
as vLLM answers. Whether the server gives them is asked once, at load; a
server that does not (``transformers serve`` 5.24, for one) makes ``score``
raise a :class:`~.base.BackendError` saying "not available from this server"
— never a made-up or empty score. Perplexity over token windows needs a
tokenizer, which the API does not expose: not available from any server.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..values.prompts import Prompt, prompt_messages
from .base import Backend, BackendError, CorpusTokens, GenerationRequest, ScoreRequest, TokenScores

if TYPE_CHECKING:
    from ..values.specs import ModelSpec

__all__ = ["RetryPolicy", "ServedBackend", "gateway_of", "retry_after_seconds"]

#: Statuses worth another try: rate limited, and a gateway whose upstream is down or slow.
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
#: The longest wait a ``Retry-After`` gets (a server asking for an hour is not waited for).
MAX_RETRY_AFTER = 120.0
#: The longest exponential backoff between two tries.
MAX_BACKOFF = 30.0
#: The text the chat and scoring probes send at load.
_PROBE = "Hello"
#: Fields of a model's entry in ``GET /models`` that name the weights behind it, as some servers
#: and gateways report them: the first one present is the model's reported identity.
IDENTITY_FIELDS = ("revision", "sha", "model_sha", "digest", "checksum")


def gateway_of(base_url: str) -> str:
    """``scheme://host:port`` of a base URL (the default port written out): what one gateway is."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are tried again.

    Attributes:
        retries: Tries after the first.
        backoff: Seconds before the first retry; doubled at each (with up
            to half of it added at random, so that concurrent requests do
            not come back together), at most :data:`MAX_BACKOFF`.
    """

    retries: int = 6
    backoff: float = 0.5

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        base = min(self.backoff * 2**attempt, MAX_BACKOFF)
        return base + rng.uniform(0, base / 2)


class _Retryable(Exception):
    """One try that failed in a way worth another (the message says how)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ServedBackend(Backend):
    """A model served behind an OpenAI-compatible endpoint; see the module docstring."""

    def __init__(self, spec: ModelSpec, *, api_key: str | None, client_factory: Callable[[], Any]):
        options = spec.options
        self.spec = spec
        self.label = spec.label
        self.base_url = spec.path.rstrip("/")
        self.gateway = gateway_of(self.base_url)
        self.model = str(options["model"])
        self.concurrency = int(options.get("concurrency", 8))
        self.timeout = float(options.get("timeout", 120))
        self.policy = RetryPolicy(int(options.get("retries", 6)), float(options.get("backoff", 0.5)))
        self.endpoint = str(options.get("endpoint", "auto"))
        self.seed = options.get("seed", 0)
        self.revision = None if options.get("revision") is None else str(options["revision"])
        #: What the server says the weights behind the name are (``GET /models``), or None.
        self.reported_identity: str | None = None
        self.generated_tokens = 0
        self._api_key = api_key
        self._client_factory = client_factory
        self._client: Any = None
        self._loop = asyncio.new_event_loop()
        self._rng = random.Random(0)
        #: Replies of a batch in which another request failed, handed out when the runner asks
        #: again one request at a time: a case the server answered is never sent twice.
        self._answered: dict[GenerationRequest, str] = {}
        #: Whether plain-text prompts go to chat completions (decided at load).
        self.chat_for_text = self.endpoint == "chat"
        #: Why chat completions cannot be used for this model, when they cannot.
        self.chat_problem: str | None = None
        #: Why the server cannot score continuations, when it cannot.
        self.score_problem: str | None = "not asked"
        # What the report shows; the counters are live, so the facts read at load stay current.
        self._usage: dict[str, Any] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "server_model": None,
            "system_fingerprint": None,
        }
        self.load_seconds = 0.0

    # -- loading ------------------------------------------------------------

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: str) -> ServedBackend:
        """Connect to the endpoint and ask it what it can do (the scheme's loader).

        ``device`` and ``dtype`` are the server's business and are ignored.

        Raises:
            BackendError: the ``openai`` package is missing, the key's
                environment variable is unset, or the server does not answer
                for the model.
        """
        try:
            import openai
        except ImportError as exc:
            raise BackendError(
                f"loading {spec.label} needs the openai package: pip install 'pytest-quantgate[serve]'"
            ) from exc
        key_env = spec.options.get("api_key_env")
        api_key = None
        if key_env is not None:
            api_key = os.environ.get(str(key_env))
            if not api_key:
                raise BackendError(
                    f"{spec.label}: the environment variable {key_env} (?api_key_env=) is not set or empty"
                )
        base_url = spec.path.rstrip("/")
        timeout = float(spec.options.get("timeout", 120))

        def client() -> Any:
            # The key is passed explicitly, never read from OPENAI_API_KEY, and the client's own
            # retries are off: this backend's policy decides what is retried, and counts it.
            return openai.AsyncOpenAI(
                api_key=api_key or "none", base_url=base_url, timeout=timeout, max_retries=0
            )

        backend = cls(spec, api_key=api_key, client_factory=client)
        started = time.perf_counter()
        try:
            backend._run(backend._probe())
        except BaseException:
            backend.close()
            raise
        backend.load_seconds = time.perf_counter() - started
        return backend

    async def _probe(self) -> None:
        """Ask the server, once, which endpoint plain text goes to and whether it can score."""
        if self.endpoint in ("auto", "chat"):
            try:
                await self._call("chat", self._chat_body([{"role": "user", "content": _PROBE}], 1, ()))
                self.chat_for_text = True
            except BackendError as exc:
                if self.endpoint == "chat":
                    raise
                self.chat_problem = self._redact(str(exc)).removeprefix(f"{self.label}: ")
        if not self.chat_for_text:
            # Completions must work: the model answers nothing otherwise.
            await self._call("completions", self._completion_body(_PROBE, 1, ()))
        self.reported_identity = await self._reported_identity()
        try:
            await self._echo_scores(_PROBE, " world", 1)
            self.score_problem = None
        except BackendError as exc:
            self.score_problem = self._redact(str(exc)).removeprefix(f"{self.label}: ")

    async def _reported_identity(self) -> str | None:
        """``field=value`` of the first of :data:`IDENTITY_FIELDS` in the model's ``GET /models``
        entry, or None (no entry, no such field, or no list at all: most servers list names only)."""
        import openai

        try:
            async for entry in self.client.models.list():
                if str(getattr(entry, "id", "")) != self.model:
                    continue
                extra = entry.model_extra or {}
                for name in IDENTITY_FIELDS:
                    value = extra.get(name)
                    if isinstance(value, (str, int)) and str(value).strip():
                        return f"{name}={str(value).strip()}"
                return None
        except (openai.APIError, ValueError, TypeError):
            return None
        return None

    # -- the event loop and the client ------------------------------------------

    def _run(self, work: Awaitable[Any]) -> Any:
        """Run a coroutine on this backend's own loop (the client lives on it)."""
        return self._loop.run_until_complete(work)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _redact(self, text: str) -> str:
        """``text`` without the key, should a server have echoed it."""
        return text.replace(self._api_key, "[key]") if self._api_key else text

    def _url(self, kind: str) -> str:
        return f"{self.base_url}/{'chat/completions' if kind == 'chat' else 'completions'}"

    async def _call(self, kind: str, body: dict[str, Any]) -> Any:
        """One request, tried again per :attr:`policy`; the parsed response.

        Raises:
            BackendError: a status that is not retried (naming the endpoint and
                the status), or the last failure once the tries are spent.
        """
        tries = self.policy.retries + 1
        for attempt in range(tries):
            try:
                return await self._once(kind, body)
            except _Retryable as exc:
                if attempt + 1 == tries:
                    raise BackendError(
                        f"{self.label}: {self._url(kind)} failed {tries} times; the last: {exc}"
                    ) from None
                self._usage["retries"] += 1
                await asyncio.sleep(self.policy.delay(attempt, exc.retry_after, self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, kind: str, body: dict[str, Any]) -> Any:
        import openai

        create = self.client.chat.completions.create if kind == "chat" else self.client.completions.create
        self._usage["requests"] += 1
        try:
            response = await create(**body)
        except openai.APIStatusError as exc:
            status = exc.status_code
            detail = self._redact(_detail(exc))
            if status in RETRIED_STATUSES:
                after = retry_after_seconds(exc.response.headers.get("retry-after"))
                raise _Retryable(f"HTTP {status}{detail}", after if status in (429, 503) else None) from None
            raise BackendError(f"{self.label}: {self._url(kind)} answered HTTP {status}{detail}") from None
        except openai.APITimeoutError:
            raise _Retryable(f"no answer within {self.timeout:g}s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection failed ({self._redact(str(exc.__cause__ or exc))})") from None
        usage = getattr(response, "usage", None)
        if usage is not None:
            self._usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
            completion = int(getattr(usage, "completion_tokens", 0) or 0)
            self._usage["completion_tokens"] += completion
            self.generated_tokens = (self.generated_tokens or 0) + completion
        if getattr(response, "model", None):
            self._usage["server_model"] = str(response.model)
        if getattr(response, "system_fingerprint", None):
            self._usage["system_fingerprint"] = str(response.system_fingerprint)
        if not getattr(response, "choices", None):
            raise BackendError(f"{self.label}: {self._url(kind)} answered without choices")
        return response

    # -- request bodies ---------------------------------------------------------

    def _greedy(self, max_tokens: int, stop: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0}
        if self.seed is not None:
            body["seed"] = self.seed
        if stop:
            # The OpenAI API takes at most 4; the runner cuts at every stop string anyway, so the
            # first 4 only end generation early and never change a result.
            body["stop"] = list(stop[:4])
        return body

    def _chat_body(
        self, messages: list[dict[str, str]], max_tokens: int, stop: Sequence[str]
    ) -> dict[str, Any]:
        return {**self._greedy(max_tokens, stop), "messages": messages}

    def _completion_body(self, prompt: str, max_tokens: int, stop: Sequence[str]) -> dict[str, Any]:
        return {**self._greedy(max_tokens, stop), "prompt": prompt}

    def route(self, prompt: Prompt, chat_template: bool | None) -> str:
        """``"chat"`` or ``"completions"``: where a prompt goes.

        Raises:
            BackendError: a message prompt that only completions could take.
        """
        if prompt_messages(prompt) is not None:
            if chat_template is False or self.endpoint == "completions":
                raise BackendError(
                    f"{self.label}: a chat-message prompt needs chat completions "
                    f"({'chat_template=False' if chat_template is False else '?endpoint=completions'})"
                )
            if self.chat_problem is not None:
                raise BackendError(
                    f"{self.label}: a chat-message prompt needs chat completions, which failed at load: "
                    f"{self.chat_problem}"
                )
            return "chat"
        if chat_template is True:
            return "chat"
        if chat_template is False:
            return "completions"
        return "chat" if self.chat_for_text else "completions"

    # -- the contract -------------------------------------------------------------

    def check_requests(self, requests: Sequence[GenerationRequest]) -> list[str | None]:
        """Refuse a message prompt that cannot go to chat completions (see :meth:`route`)."""
        out: list[str | None] = []
        for req in requests:
            try:
                self.route(req.prompt, req.settings.chat_template)
                out.append(None)
            except BackendError as exc:
                out.append(str(exc))
        return out

    def render_text(self, request: GenerationRequest) -> str | None:
        """The prompt as sent to completions; None for chat, whose template the server applies."""
        try:
            kind = self.route(request.prompt, request.settings.chat_template)
        except BackendError:
            return None
        return str(request.prompt) if kind == "completions" else None

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy replies, at most ``concurrency`` requests in flight.

        Raises:
            BackendError: a request failed for good; the replies the others
                got are kept and handed out when they are asked for again.
        """
        replies: list[str | BaseException] = self._run(self._generate_all(list(requests)))
        failed = next((r for r in replies if isinstance(r, BaseException)), None)
        if failed is None:
            return [str(r) for r in replies]
        for req, reply in zip(requests, replies, strict=True):
            if isinstance(reply, str):
                self._answered[req] = reply
        raise failed

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[str | BaseException]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(req: GenerationRequest) -> str:
            if req in self._answered:
                return self._answered.pop(req)
            async with gate:
                return await self._generate_one(req)

        results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # KeyboardInterrupt, cancellation: stop at once
        return list(results)

    async def _generate_one(self, req: GenerationRequest) -> str:
        settings = req.settings
        kind = self.route(req.prompt, settings.chat_template)
        if kind == "chat":
            messages = prompt_messages(req.prompt) or [{"role": "user", "content": str(req.prompt)}]
            response = await self._call(
                "chat", self._chat_body(messages, settings.max_new_tokens, settings.stop)
            )
            return str(response.choices[0].message.content or "")
        response = await self._call(
            "completions", self._completion_body(str(req.prompt), settings.max_new_tokens, settings.stop)
        )
        return str(response.choices[0].text or "")

    def score(self, requests: Sequence[ScoreRequest]) -> list[TokenScores]:
        """Log-probabilities of each continuation from completions with ``echo`` and ``logprobs``.

        Token ids are not part of the OpenAI API: a position's ``top`` names
        its tokens by a stable hash of their text, so that two models behind
        servers with the same tokenizer name the same token alike.

        Raises:
            BackendError: the server gives no log-probabilities of a given
                text ("not available from this server"), the prompt is a chat
                prompt (its template is applied by the server), or the
                request asks for the log-probabilities of given token ids.
        """
        if self.score_problem is not None:
            raise BackendError(
                f"{self.label}: log-probabilities of a given text are not available from this server "
                f"({self.score_problem})"
            )
        out: list[TokenScores] = []
        for req in requests:
            if req.ids:
                raise BackendError(
                    f"{self.label}: log-probabilities of given token ids are not available from this server"
                )
            if self.route(req.prompt, req.settings.chat_template) != "completions":
                raise BackendError(
                    f"{self.label}: scores of a chat prompt are not available from this server "
                    "(it applies the chat template itself)"
                )
            if not req.continuation:
                out.append(TokenScores((), (), ()))
                continue
            out.append(self._run(self._echo_scores(str(req.prompt), req.continuation, req.top_k)))
        return out

    async def _echo_scores(self, prompt: str, continuation: str, top_k: int) -> TokenScores:
        """The scores of ``continuation`` after ``prompt`` from one echoed completion.

        Raises:
            BackendError: the answer has no log-probabilities of the prompt,
                or the continuation does not start at a token boundary.
        """
        body = {
            **self._completion_body(prompt + continuation, 1, ()),
            "echo": True,
            "logprobs": max(top_k, 1),
        }
        response = await self._call("completions", body)
        choice = response.choices[0]
        lp = getattr(choice, "logprobs", None)
        tokens = list(getattr(lp, "tokens", None) or [])
        values = list(getattr(lp, "token_logprobs", None) or [])
        offsets = list(getattr(lp, "text_offset", None) or [])
        tops = list(getattr(lp, "top_logprobs", None) or [])
        text = str(getattr(choice, "text", "") or "")
        if not text.startswith(prompt + continuation) or not tokens or len(offsets) != len(tokens):
            raise BackendError(
                f"{self._url('completions')} ignores echo/logprobs: it returns no log-probabilities "
                "of the prompt"
            )
        start, end = len(prompt), len(prompt) + len(continuation)
        picked = [i for i, at in enumerate(offsets) if start <= at < end]
        if not picked or (start > 0 and offsets[0] >= start):  # of generated tokens only
            raise BackendError(
                f"{self._url('completions')} ignores echo: it returns no log-probabilities of the prompt"
            )
        if picked[0] > 0 and offsets[picked[0] - 1] + len(tokens[picked[0] - 1]) > start:
            raise BackendError(
                f"{self.label}: the continuation {continuation!r} does not start at a token boundary "
                "on this server"
            )
        logprobs = []
        for i in picked:
            value = values[i] if i < len(values) else None
            if value is None or not math.isfinite(float(value)):
                raise BackendError(f"{self._url('completions')} gave no log-probability for token {i}")
            logprobs.append(float(value))
        top: tuple[tuple[tuple[int, float], ...], ...] = ()
        if top_k:
            top = tuple(
                tuple(
                    (token_id(t), float(v))
                    for t, v in sorted((tops[i] or {}).items(), key=lambda kv: -kv[1])[:top_k]
                )
                if i < len(tops)
                else ()
                for i in picked
            )
        return TokenScores(tuple(token_id(tokens[i]) for i in picked), tuple(logprobs), top)

    def encode_corpus(self, text: str) -> CorpusTokens:
        """Perplexity over token windows needs the model's tokenizer, which the API does not expose.

        Raises:
            BackendError: always ("not available from this server").
        """
        raise BackendError(
            f"{self.label}: perplexity over token windows is not available from this server "
            "(an OpenAI-compatible endpoint exposes no tokenizer)"
        )

    def window_logprobs(
        self, windows: Sequence[Sequence[int]], first_scored: Sequence[int]
    ) -> list[list[float]]:
        """See :meth:`encode_corpus`.

        Raises:
            BackendError: always ("not available from this server").
        """
        raise BackendError(
            f"{self.label}: log-probabilities of token windows are not available from this server"
        )

    def describe(self) -> dict[str, Any]:
        """Facts for the report: where the model is served and what the server can do (no key)."""
        return {
            "label": self.label,
            "spec": self.spec.text,
            "path": self.base_url,
            "scheme": self.spec.scheme,
            # The device is the gateway, so that the load line and the report show which
            # specs came through the same one.
            "device": self.gateway,
            "dtype": "as served",
            "load_seconds": round(self.load_seconds, 3),
            # What the server reports the weights are: with it, the reference cache can key the
            # model's results (storage.fingerprint.served_fingerprint); None: it reports nothing.
            "identity": self.reported_identity,
            "served": {
                "base_url": self.base_url,
                "gateway": self.gateway,
                "model": self.model,
                "revision": self.revision,
                "text_endpoint": "chat" if self.chat_for_text else "completions",
                "chat_endpoint": "available" if self.chat_problem is None else self.chat_problem,
                "scoring": (
                    "available (completions with echo and logprobs)"
                    if self.score_problem is None
                    else f"not available from this server: {self.score_problem}"
                ),
                "concurrency": self.concurrency,
                "timeout_seconds": self.timeout,
                "retries": self.policy.retries,
                "api_key_env": self.spec.options.get("api_key_env"),
                "usage": self._usage,
            },
        }

    def close(self) -> None:
        """Close the client and the loop (once)."""
        if self._loop.is_closed():
            return
        if self._client is not None:
            self._loop.run_until_complete(self._client.close())
            self._client = None
        self._loop.close()


def token_id(text: str) -> int:
    """A stable id for a token known by its text (63 bits of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _detail(exc: Any) -> str:
    """``: <the server's message>`` of an error answer, short; empty when it said nothing."""
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
    if message is None:
        message = getattr(exc, "message", None)
    text = " ".join(str(message or "").split())
    return f": {text[:200]}" if text else ""
