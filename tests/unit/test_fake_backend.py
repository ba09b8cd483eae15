"""The scripted ``fake:`` backend on its own: script format, replies, failures, log."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.base import Backend, BackendError, GenerationRequest, ScoreRequest
from pytest_quantgate.backends.fake import FakeBackend
from pytest_quantgate.backends.registry import load_backend
from pytest_quantgate.values.prompts import GenerationSettings, Prompt, normalize_prompt
from pytest_quantgate.values.specs import ModelSpec, parse_spec


def script_spec(tmp_path: Path, script: Any, label: str = "m") -> ModelSpec:
    path = tmp_path / f"{label}.json"
    path.write_text(script if isinstance(script, str) else json.dumps(script), encoding="utf-8")
    return parse_spec(f"{label}=fake:{path}")


def load(tmp_path: Path, script: Any, label: str = "m") -> FakeBackend:
    return FakeBackend.load(script_spec(tmp_path, script, label), "auto", "auto")


def requests(*prompts: Prompt, max_new_tokens: int = 64) -> list[GenerationRequest]:
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return [GenerationRequest(p, settings) for p in prompts]


def test_replies_and_default(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"1+1=": "2", "2+2=": "4"}, "default": "?"})
    assert backend.generate(requests("2+2=", "9+9=", "1+1=")) == ["4", "?", "2"]


def test_default_is_empty_without_one(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"a": "b"}})
    assert backend.generate(requests("a", "unknown")) == ["b", ""]


def test_an_empty_script_is_a_model_that_says_nothing(tmp_path: Path) -> None:
    assert load(tmp_path, {}).generate(requests("a")) == [""]


def test_reply_is_cut_at_max_new_tokens(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"count": "123456789"}, "default": "abcdef"})
    assert backend.generate(requests("count", "other", max_new_tokens=4)) == ["1234", "abcd"]
    assert backend.generate(requests("count", max_new_tokens=9)) == ["123456789"]
    assert backend.generate(requests("count", max_new_tokens=1)) == ["1"]


def test_fail_on_raises_and_logs_nothing(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"ok": "fine"}, "fail_on": ["boom"], "log": "log.jsonl"})
    with pytest.raises(BackendError, match=r"^m: scripted failure on 'boom'$"):
        backend.generate(requests("ok", "boom"))
    assert _logged(tmp_path / "log.jsonl") == [{"model": "m", "event": "load"}]
    # The other prompts still generate on their own.
    assert backend.generate(requests("ok")) == ["fine"]


def test_load_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"^CUDA out of memory$"):
        load(tmp_path, {"replies": {"a": "b"}, "load_error": "CUDA out of memory"})


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("{not json", r"cannot read the script of m at .*m\.json: Expecting property name"),
        ('["replies"]', r"bad script for m at .*m\.json: expected a JSON object, got list"),
        ("42", r"bad script for m at .*m\.json: expected a JSON object, got int"),
        ({"replies": {}, "reply": {}}, r"bad script for m at .*m\.json: unknown keys \['reply'\]"),
    ],
)
def test_bad_script_is_a_one_line_backend_error(tmp_path: Path, script: Any, message: str) -> None:
    with pytest.raises(BackendError, match=message) as info:
        load(tmp_path, script)
    assert "\n" not in str(info.value)


def test_missing_script_is_a_backend_error(tmp_path: Path) -> None:
    spec = parse_spec(f"m=fake:{tmp_path / 'absent.json'}", check_path=False)
    with pytest.raises(BackendError, match=r"^cannot read the script of m at .*absent\.json: ") as info:
        FakeBackend.load(spec, "auto", "auto")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"replies": ["a", "b"]}, '"replies" must map prompts to reply strings'),
        ({"replies": "ab"}, '"replies" must map prompts to reply strings'),
        ({"replies": {"a": 1}}, '"replies" must map prompts to reply strings'),
        ({"fail_on": "abc"}, '"fail_on" must be a list of prompts'),
        ({"log": 5}, '"log" must be a string'),
    ],
    ids=["replies-list", "replies-str", "reply-int", "fail-on-str", "log-int"],
)
def test_mistyped_script_is_a_backend_error(tmp_path: Path, script: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendError, match=message) as info:
        load(tmp_path, script)
    assert "\n" not in str(info.value)


def test_log_lines(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"a": "1"}, "log": "logs/gen.jsonl"}, label="ref")
    backend.generate(requests("a", "b"))
    backend.generate(requests("a"))
    backend.close()
    assert _logged(tmp_path / "logs" / "gen.jsonl") == [
        {"model": "ref", "event": "load"},
        {"model": "ref", "event": "batch", "size": 2},
        {"model": "ref", "prompt": "a"},
        {"model": "ref", "prompt": "b"},
        {"model": "ref", "event": "batch", "size": 1},
        {"model": "ref", "prompt": "a"},
        {"model": "ref", "event": "close"},
    ]


def test_oom_above_raises_an_out_of_memory_error_for_larger_batches(tmp_path: Path) -> None:
    from pytest_quantgate.core.runner import is_out_of_memory

    backend = load(tmp_path, {"replies": {"a": "1"}, "oom_above": 2, "log": "log.jsonl"})
    assert backend.generate(requests("a", "a")) == ["1", "1"]
    with pytest.raises(RuntimeError, match="scripted out of memory at 3 requests") as info:
        backend.generate(requests("a", "a", "a"))
    assert is_out_of_memory(info.value)
    assert _logged(tmp_path / "log.jsonl")[-1] == {"model": "m", "event": "oom", "size": 3}


def _logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_models_share_one_log(tmp_path: Path) -> None:
    ref = load(tmp_path, {"log": "shared.jsonl"}, label="ref")
    cand = load(tmp_path, {"log": "shared.jsonl"}, label="cand")
    ref.generate(requests("x"))
    cand.generate(requests("y", "z"))
    entries = [e for e in _logged(tmp_path / "shared.jsonl") if "prompt" in e]
    assert [(e["model"], e["prompt"]) for e in entries] == [("ref", "x"), ("cand", "y"), ("cand", "z")]


def test_no_log_without_the_key(tmp_path: Path) -> None:
    load(tmp_path, {"replies": {"a": "b"}}).generate(requests("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_chat_prompt_is_keyed_by_the_json_of_its_messages(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    key = json.dumps(messages, sort_keys=True)
    backend = load(tmp_path, {"replies": {key: "4", "2+2?": "plain"}, "log": "log.jsonl"})
    prompt = normalize_prompt(messages)
    assert FakeBackend.prompt_text(prompt) == key
    assert backend.generate(requests(prompt, "2+2?")) == ["4", "plain"]
    # The order of keys within a message does not matter.
    reordered = normalize_prompt([{"content": m["content"], "role": m["role"]} for m in messages])
    assert backend.generate(requests(reordered)) == ["4"]
    logged = [e["prompt"] for e in _logged(tmp_path / "log.jsonl") if "prompt" in e]
    assert logged == [key, "2+2?", key]


def test_token_logprobs(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"p": "abc"}})
    # 1/2 on the scripted character, the other 1/2 spread over the other 255 ids; past the
    # scripted reply, every id equally likely.
    half, other, uniform = math.log(0.5), math.log(0.5 / 255), math.log(1 / 256)
    assert backend.token_logprobs([("p", "abc"), ("p", "abx"), ("p", "abcd"), ("q", "a")]) == [
        [half, half, half],
        [half, half, other],
        [half, half, half, uniform],
        [uniform],
    ]


def test_scores_are_a_distribution_with_top_k_ids_and_the_rest(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"p": "ab"}})
    (top,) = backend.score([ScoreRequest("p", "ab", top_k=3)])
    assert top.top[0] == ((ord("a"), math.log(0.5)), (0, math.log(0.5 / 255)), (1, math.log(0.5 / 255)))
    assert math.exp(top.rest[0]) == pytest.approx(1 - 0.5 - 2 * 0.5 / 255)
    (asked,) = backend.score([ScoreRequest("p", "ab", ids=((ord("a"), 5), ()))])
    assert asked.at == ((math.log(0.5), math.log(0.5 / 255)), ())
    assert math.exp(asked.rest[0]) == pytest.approx(1 - 0.5 - 0.5 / 255)
    assert asked.rest[1] == pytest.approx(0.0, abs=1e-12)


def test_solo_replies_answer_a_batch_of_one(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"p": "1", "q": "2"}, "solo_replies": {"p": "9"}})
    settings = GenerationSettings(8)
    both = [GenerationRequest("p", settings), GenerationRequest("q", settings)]
    assert backend.generate(both) == ["1", "2"]
    assert backend.generate(both[:1]) == ["9"] and backend.generate(both[1:]) == ["2"]


def test_describe(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {}}, label="cand")
    facts = backend.describe()
    load_seconds = facts.pop("load_seconds")
    assert isinstance(load_seconds, float) and load_seconds >= 0
    assert facts == {
        "label": "cand",
        "spec": f"cand=fake:{tmp_path / 'cand.json'}",
        "path": str(tmp_path / "cand.json"),
        "scheme": "fake",
        "device": "cpu",
        "dtype": "none",
        "quantization": None,
        "context": None,
        "pid": os.getpid(),
    }
    json.dumps(facts)  # JSON-safe, for the report


def test_context_refuses_long_prompts(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"abcd": "x"}, "context": 10})
    ok, too_long = backend.check_requests(requests("abcd", "abcdefgh", max_new_tokens=4))
    assert ok is None
    assert too_long == (
        "the prompt (8 characters) + max_new_tokens (4) = 12 exceeds the context of m (10 characters)"
    )
    assert backend.describe()["context"] == 10
    # Without the key, any length goes.
    assert load(tmp_path, {}).check_requests(requests("a" * 10_000)) == [None]
    with pytest.raises(BackendError, match='"context" must be an integer of at least 1'):
        load(tmp_path, {"context": 0})


def test_loaded_through_the_registry(tmp_path: Path) -> None:
    spec = script_spec(tmp_path, {"replies": {"a": "b"}})
    backend = load_backend(spec, device="cpu", dtype="float32")
    assert isinstance(backend, FakeBackend) and isinstance(backend, Backend)
    assert backend.label == "m"
    assert backend.generate(requests("a")) == ["b"]


def test_close_forgets_the_replies(tmp_path: Path) -> None:
    backend = load(tmp_path, {"replies": {"a": "b"}, "default": "d"})
    backend.close()
    assert backend.generate(requests("a")) == ["d"]
