"""The ``openai:`` backend on a stub server: specs, retries, concurrency, errors, scores, cache identity.

The real server (``transformers serve``) runs in ``tests/plugin/test_served_plugin.py``; here a
small in-test HTTP server answers what it does not: errors on demand, and completions with
``echo`` and ``logprobs`` as vLLM gives them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from served_proxy import Answer, Stub

from pytest_quantgate.backends.base import BackendError, GenerationRequest, ScoreRequest
from pytest_quantgate.backends.served import ServedBackend, gateway_of, retry_after_seconds
from pytest_quantgate.storage.fingerprint import served_fingerprint
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import SpecError, parse_spec

pytest.importorskip("openai")


def completion(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "text_completion",
        "created": 0,
        "model": "served-model",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", **extra}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chat(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def plain(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
    """A server without a chat template and without log-probabilities: replies ``<prompt>!``."""
    if path.endswith("/chat/completions"):
        return 400, {}, {"error": {"message": "no chat template"}}
    return 200, {}, completion(body["prompt"] + "!")


def load(url: str, options: str = "") -> ServedBackend:
    spec = parse_spec(f"m=openai:{url}?model=org/m&backoff=0.01{options}")
    return ServedBackend.load(spec, "cpu", "auto")


def req(prompt: Any, max_new_tokens: int = 8, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(prompt, GenerationSettings(max_new_tokens, stop))


# -- specs ---------------------------------------------------------------------------------------


def test_spec_options_are_parsed() -> None:
    spec = parse_spec("fp16=openai:http://127.0.0.1:8000/v1?model=org/model-fp16&concurrency=4&revision=abc")
    assert (spec.label, spec.path, spec.scheme) == ("fp16", "http://127.0.0.1:8000/v1", "openai")
    assert spec.options == {"model": "org/model-fp16", "concurrency": 4, "revision": "abc"}
    assert parse_spec("openai:https://gw.example/v1?model=7").options["model"] == "7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("openai:http://h:8000/v1", "needs ?model=NAME"),
        ("openai:ftp://h/v1?model=m", "http:// or https://"),
        ("openai:http://h:8000/v1?model=m&concurrency=0", "concurrency=0: an integer of at least 1"),
        ("openai:http://h:8000/v1?model=m&timeout=-1", "timeout=-1: a positive number"),
        ("openai:http://h:8000/v1?model=m&endpoint=responses", "auto, chat or completions"),
        ("openai:http://h:8000/v1?model=m&api_key_env=1X", "the name of an environment variable"),
        ("openai:http://h:8000/v1?model=m&modle=x", "did you mean 'model'?"),
        ("openai:http://h:99999/v1?model=m", "bad port"),
    ],
)
def test_bad_specs_stop_with_one_line(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("?", r"\?")) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text", ["openai:http://h/v1?model=m&api_key=sk-SECRET", "openai:http://u:sk-SECRET@h/v1?model=m"]
)
def test_a_key_in_a_spec_is_refused_without_being_repeated(text: str) -> None:
    with pytest.raises(SpecError, match="api_key_env=NAME") as info:
        parse_spec(text)
    assert "SECRET" not in str(info.value)


def test_gateway_and_retry_after() -> None:
    assert gateway_of("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000"
    assert gateway_of("https://gw.example/openai/v1") == "https://gw.example:443"
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < (retry_after_seconds(format_datetime(later, usegmt=True)) or 0) <= 30


def test_cache_identity_needs_a_pinned_revision() -> None:
    base = "openai:http://127.0.0.1:8000/v1?model=org/m"
    assert served_fingerprint(parse_spec(base)) is None
    pinned = served_fingerprint(parse_spec(base + "&revision=r1"))
    assert pinned is not None
    # How requests travel changes nothing; the revision, the model and the URL do.
    assert served_fingerprint(parse_spec(base + "&revision=r1&concurrency=2&api_key_env=K")) == pinned
    assert served_fingerprint(parse_spec(base + "&revision=r2")) != pinned
    assert served_fingerprint(parse_spec(base.replace("org/m", "org/n") + "&revision=r1")) != pinned
    assert served_fingerprint(parse_spec(base.replace("8000", "8001") + "&revision=r1")) != pinned


# -- the backend on a stub -----------------------------------------------------------------------


def test_routes_text_to_completions_without_a_chat_template() -> None:
    with Stub(plain) as stub:
        backend = load(stub.url)
        try:
            assert backend.generate([req("17+8="), req("3+4=", 5, ("\n",))]) == ["17+8=!", "3+4=!"]
            facts = backend.describe()
            served = facts["served"]
            assert served["text_endpoint"] == "completions" and "HTTP 400" in served["chat_endpoint"]
            assert served["scoring"].startswith("not available from this server")
            assert served["usage"]["server_model"] == "served-model"
            assert facts["device"] == served["gateway"] == gateway_of(stub.url)
            # Greedy, with the case's budget and stop strings.
            body = stub.seen[-1][1]
            assert body["temperature"] == 0 and body["max_tokens"] == 5 and body["stop"] == ["\n"]
            assert body["seed"] == 0 and body["model"] == "org/m"
            # A message prompt needs the chat endpoint, which failed: refused before generating.
            (problem,) = backend.check_requests([req(({"role": "user", "content": "x"},))])
            assert problem is not None and "chat completions" in problem
            with pytest.raises(BackendError, match="not available from this server"):
                backend.score([ScoreRequest("17+8=", "25")])
            with pytest.raises(BackendError, match="not available from this server"):
                backend.encode_corpus("a corpus")
            with pytest.raises(BackendError, match="not available from this server"):
                backend.window_logprobs([[1, 2, 3]], [1])
        finally:
            backend.close()


def test_routes_text_to_chat_where_the_server_has_a_template() -> None:
    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.endswith("/chat/completions"):
            return 200, {}, chat("chat:" + body["messages"][-1]["content"])
        return 200, {}, completion("text")

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            assert backend.generate([req("hi")]) == ["chat:hi"]
            assert stub.seen[-1][1]["messages"] == [{"role": "user", "content": "hi"}]
            assert backend.describe()["served"]["text_endpoint"] == "chat"
        finally:
            backend.close()


def test_429_waits_for_retry_after_and_5xx_are_retried() -> None:
    faults = ["429", "502", "503", "504"]

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if body.get("prompt") == "go" and faults:
            status = int(faults.pop(0))
            return status, {"retry-after": "0.5"} if status == 429 else {}, {"error": {"message": "busy"}}
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            started = time.perf_counter()
            assert backend.generate([req("go")]) == ["go!"]
            assert time.perf_counter() - started >= 0.5  # the Retry-After, not the 0.01 s backoff
            assert backend.describe()["served"]["usage"]["retries"] == 4
        finally:
            backend.close()


def test_other_statuses_fail_at_once_naming_endpoint_and_status() -> None:
    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if body.get("prompt") == "bad":
            return 401, {}, {"error": {"message": "invalid key"}}
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            with pytest.raises(BackendError) as info:
                backend.generate([req("bad")])
            assert str(info.value) == f"m: {stub.url}/completions answered HTTP 401: invalid key"
            assert sum(1 for _, b, _ in stub.seen if b.get("prompt") == "bad") == 1
        finally:
            backend.close()


def test_gives_up_after_the_retries_with_the_last_failure() -> None:
    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if body.get("prompt") == "down":
            return 503, {}, {"error": {"message": "down"}}
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url, "&retries=2")
        try:
            with pytest.raises(BackendError, match=r"completions failed 3 times; the last: HTTP 503: down"):
                backend.generate([req("down")])
        finally:
            backend.close()


def test_a_failed_batch_never_sends_an_answered_request_again() -> None:
    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if body.get("prompt") == "bad":
            return 400, {}, {"error": {"message": "bad prompt"}}
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            with pytest.raises(BackendError, match="HTTP 400"):
                backend.generate([req("a"), req("bad"), req("b")])
            sent = len(stub.seen)
            # The runner asks again one request at a time: the answers already given are kept.
            assert backend.generate([req("a")]) == ["a!"] and backend.generate([req("b")]) == ["b!"]
            assert len(stub.seen) == sent
        finally:
            backend.close()


def test_at_most_concurrency_requests_are_in_flight() -> None:
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if not body.get("prompt", "").startswith("p"):
            return plain(path, headers, body)
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.1)
        with lock:
            now[0] -= 1
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url, "&concurrency=3")
        try:
            started = time.perf_counter()
            replies = backend.generate([req(f"p{i}") for i in range(9)])
            assert replies == [f"p{i}!" for i in range(9)]
            assert peak[0] == 3 and time.perf_counter() - started < 0.9 - 0.05
        finally:
            backend.close()


def test_dropped_connections_and_timeouts_are_retried() -> None:
    faults = ["drop", "stall"]

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if body.get("prompt") == "go" and faults:
            if faults.pop(0) == "stall":
                time.sleep(1.0)
            return None
        return plain(path, headers, body)

    with Stub(handler) as stub:
        backend = load(stub.url, "&timeout=0.3")
        try:
            assert backend.generate([req("go")]) == ["go!"]
            assert backend.describe()["served"]["usage"]["retries"] == 2
        finally:
            backend.close()


def test_scores_from_echoed_logprobs() -> None:
    """Completions with echo and logprobs, as vLLM answers: the continuation's tokens are picked."""

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.endswith("/chat/completions"):
            return 400, {}, {"error": {"message": "no template"}}
        if not body.get("echo"):
            return 200, {}, completion("x")
        text = body["prompt"]
        # Tokens: the prompt's characters one by one, then the generated "!".
        tokens = [*text, "!"]
        logprobs = {
            "tokens": tokens,
            "text_offset": list(range(len(tokens))),
            "token_logprobs": [None] + [-0.1 * i for i in range(1, len(tokens))],
            "top_logprobs": [None] + [{t: -0.1 * i, "#": -5.0} for i, t in enumerate(tokens) if i],
        }
        return 200, {}, completion(text + "!", logprobs=logprobs)

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            assert backend.describe()["served"]["scoring"].startswith("available")
            (scores,) = backend.score([ScoreRequest("ab", "cd", top_k=2)])
            assert scores.logprobs == pytest.approx((-0.2, -0.3))
            assert len(scores.tokens) == 2 and len(scores.top) == 2
            assert [v for _, v in scores.top[0]] == pytest.approx([-0.2, -5.0])
            assert scores.top[0][0][0] == scores.tokens[0]  # the same token, the same id
            sent = stub.seen[-1][1]
            assert sent["echo"] is True and sent["logprobs"] == 2 and sent["prompt"] == "abcd"
            with pytest.raises(BackendError, match="not available from this server"):
                backend.score([ScoreRequest("ab", "cd", ids=((1, 2), (3, 4)))])
        finally:
            backend.close()


def test_echo_without_prompt_logprobs_is_not_a_score() -> None:
    """A server that echoes the prompt but scores only what it generated: scoring is unavailable."""

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.endswith("/chat/completions"):
            return 400, {}, {"error": {"message": "no template"}}
        text = body["prompt"]
        logprobs = {"tokens": ["!"], "text_offset": [len(text)], "token_logprobs": [-0.5], "top_logprobs": []}
        return 200, {}, completion(text + "!" if body.get("echo") else "!", logprobs=logprobs)

    with Stub(handler) as stub:
        backend = load(stub.url)
        try:
            scoring = backend.describe()["served"]["scoring"]
            assert scoring.startswith("not available from this server") and "ignores echo" in scoring
            with pytest.raises(BackendError, match="not available from this server"):
                backend.score([ScoreRequest("ab", "cd")])
        finally:
            backend.close()


def test_an_identity_the_server_reports_is_recorded_and_keys_the_cache() -> None:
    models = [{"id": "other", "object": "model"}, {"id": "org/m", "object": "model", "digest": "sha256:ab12"}]
    with Stub(plain, models=models) as stub:
        backend = load(stub.url)
        try:
            assert backend.describe()["identity"] == "digest=sha256:ab12"
        finally:
            backend.close()
    with Stub(plain, models=[{"id": "org/m", "object": "model"}]) as stub:
        backend = load(stub.url)
        try:
            assert backend.describe()["identity"] is None  # a list of names: nothing to key on
        finally:
            backend.close()
    spec = parse_spec("openai:http://127.0.0.1:8000/v1?model=org/m")
    reported = served_fingerprint(spec, "digest=sha256:ab12")
    assert reported is not None and reported != served_fingerprint(spec, "digest=sha256:cd34")
    # A pinned revision wins over what the server says.
    pinned = parse_spec("openai:http://127.0.0.1:8000/v1?model=org/m&revision=r1")
    assert served_fingerprint(pinned, "digest=sha256:ab12") == served_fingerprint(pinned)


def test_the_key_comes_from_the_named_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QG_UNIT_KEY", "sk-unit-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    with Stub(plain) as stub:
        backend = load(stub.url, "&api_key_env=QG_UNIT_KEY")
        try:
            backend.generate([req("a")])
            assert {h.get("authorization") for _, _, h in stub.seen} == {"Bearer sk-unit-secret"}
            assert "sk-unit-secret" not in json.dumps(backend.describe())
        finally:
            backend.close()
    monkeypatch.delenv("QG_UNIT_KEY")
    with pytest.raises(BackendError, match=r"QG_UNIT_KEY .* is not set"):
        load("http://127.0.0.1:9/v1", "&api_key_env=QG_UNIT_KEY")


def test_without_openai_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(
        BackendError, match=r"needs the openai package: pip install 'pytest-quantgate\[serve\]'"
    ):
        load("http://127.0.0.1:9/v1")
