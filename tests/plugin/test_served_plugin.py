"""``openai:`` specs end to end, through a real ``transformers serve`` holding two models by name.

One server per module (started once, stopped whatever happens) serves the
shipped tiny reference and a copy of it that has a chat template, by their
paths, as one gateway serves several models: plain-text prompts reach the
first through completions and the second through chat completions. The gate
runs through it (in-process ``pytester`` runs) and must give every case the
output the local backend gives it; a proxy in front of it injects faults, and
a key in the environment must appear nowhere the run writes.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from served_proxy import Answer, FaultProxy, Stub, free_port, transformers_serve

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")

SUITE = """
import json
from pathlib import Path

import pytest
from pytest_quantgate import Trajectory, quant_case, quant_slice

DATA = Path({data!r})


def cases(name, limit={limit}):
    rows = [json.loads(line) for line in (DATA / f"{{name}}.jsonl").read_text().splitlines() if line.strip()]
    return [pytest.param(r["prompt"], r["expected"], id=r["id"]) for r in rows[:limit]]


@quant_slice("arith")
@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\\n")
def test_arith(prompt, expected, output):
    assert output.strip() == expected


@quant_slice("recall")
@quant_case("prompt, expected", cases("recall"), max_new_tokens=4, stop="\\n")
def test_recall(prompt, expected, output):
    assert output.strip() == expected


class Tally(Trajectory):
    max_steps = 3

    def __init__(self, start, digits):
        self.start, self.digits = start, digits

    def initial_state(self):
        return {{"total": self.start, "step": 0, "replies": []}}

    def render(self, state):
        return f"{{state['total']}}+{{self.digits[state['step']]}}="

    def apply(self, state, reply):
        digits = "".join(c for c in reply if c.isdigit())
        total = int(digits) if digits else -1
        return {{"total": total, "step": state["step"] + 1, "replies": state["replies"] + [reply]}}

    def done(self, state):
        return state["step"] == len(self.digits) or state["total"] < 0


@quant_slice("tally")
@quant_case(
    "case", [Tally(12, [5, 7, 3]), Tally(31, [4, 9, 6]), Tally(8, [8, 2, 5])], max_new_tokens=4, stop="\\n"
)
def test_tally(case, final_state):
    assert final_state["total"] == case.start + sum(case.digits)
"""

#: A chat template under which the tiny model sees exactly the text of the last message.
TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory, tiny_ref: Path) -> Path:
    """The tiny reference with a chat template: the same weights, reached through chat completions."""
    path = tmp_path_factory.mktemp("served") / "tiny-chat"
    path.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        (path / name).symlink_to(tiny_ref / name)
    config = json.loads((tiny_ref / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text(TEMPLATE)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_ref: Path, chat_model: Path) -> Iterator[str]:
    """``transformers serve`` for this module, both models loaded; stopped when the module ends,
    also when a test failed."""
    log = tmp_path_factory.mktemp("served-log") / "serve.log"
    with transformers_serve(log) as url:
        for model in (tiny_ref, chat_model):  # loaded now, so that no test times out on a load
            body = json.dumps({"model": str(model), "prompt": "1+1=", "max_tokens": 1}).encode()
            request = urllib.request.Request(f"{url}/completions", body, {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.status == 200
        yield url


def specs(url: str, ref: Path, chat: Path, extra: str = "") -> list[str]:
    """The two served models on one gateway, differing only in ``model=``."""
    return [
        f"--quant-reference=ref=openai:{url}?model={ref}{extra}",
        f"--quant-candidate=chat=openai:{url}?model={chat}{extra}",
    ]


def outputs(report: Path) -> dict[tuple[str, str], Any]:
    """(case id, model) -> its output, or its final state for a trajectory."""
    data = json.loads(report.read_text())
    out = {}
    for case in data["cases"]:
        name = case["nodeid"].split("::")[-1]
        for label, outcome in case["outcomes"].items():
            out[(name, label)] = outcome.get("final_state") or outcome["output"]
    return out


@pytest.mark.slow
def test_served_equals_local_through_one_gateway(
    pytester: pytest.Pytester, server: str, tiny_ref: Path, chat_model: Path, example_data: Path
) -> None:
    """Both models through one server equal the local backend on every case, trajectories included."""
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=6))
    served, local = pytester.path / "served.json", pytester.path / "local.json"
    cache = ["--quant-cache=on", f"--quant-cache-dir={pytester.path / 'cache'}"]
    result = pytester.runpytest(*specs(server, tiny_ref, chat_model), f"--quant-report={served}", *cache)
    out = result.stdout.str()
    assert result.ret in (0, 1), out
    # The two specs came through one gateway: the load lines and the report say so.
    gateway = server.removesuffix("/v1")
    result.stdout.fnmatch_lines([f"*loaded ref on {gateway} *", f"*loaded chat on {gateway} *"])
    assert "quantgate: ref: reference cache off for this served model" in out
    models = json.loads(served.read_text())["models"]
    assert models["ref"]["served"]["gateway"] == models["chat"]["served"]["gateway"] == gateway
    assert models["ref"]["served"]["text_endpoint"] == "completions"
    assert models["chat"]["served"]["text_endpoint"] == "chat"
    assert models["ref"]["served"]["usage"]["server_model"] == str(tiny_ref)
    assert models["chat"]["served"]["scoring"].startswith("not available from this server")
    assert models["ref"]["generated_tokens"] > 0

    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=chat={chat_model}",
        "--quant-allow-tokenizer-mismatch",  # the copy's chat template is its only difference
        f"--quant-report={local}",
    )
    assert result.ret in (0, 1), result.stdout.str()
    want, got = outputs(local), outputs(served)
    assert len(want) == 2 * (6 + 6 + 3)
    assert got == want


@pytest.mark.slow
def test_faults_keys_and_the_cache(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    tiny_ref: Path,
    chat_model: Path,
    example_data: Path,
) -> None:
    """Through a proxy: a clean run, a run under faults, and a run from the cache, with a key.

    The faulty run answers every case as the clean one did, and the server
    answered the same requests exactly once each; the key reaches the server
    and appears in nothing the runs print or write; the revision pinned in the
    specs makes the third run take the reference's results from the cache.
    """
    key = "sk-quantgate-test-5f1e2d"
    monkeypatch.setenv("QG_SERVED_KEY", key)
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=4))
    # A timeout well above any answer's time here, so that a loaded machine makes no retry of its
    # own (the client's timeout is tested on a stub, tests/unit/test_served.py); a stall is then
    # an answer that never comes: the connection closes after a while.
    options = "&timeout=20&backoff=0.05&concurrency=4&api_key_env=QG_SERVED_KEY&revision=tiny-v1"
    faults = ["429", "503", "drop", "slow", "stall", "503", "drop"]
    runs = {}
    port = free_port()  # one URL for the three runs: the URL is part of a served model's cache identity
    for name, injected, cache in (("clean", [], "on"), ("faulty", faults, "off"), ("cached", [], "on")):
        with FaultProxy(server, injected, stall=0.5, port=port) as proxy:
            report = pytester.path / f"{name}.json"
            result = pytester.runpytest(
                *specs(proxy.url, tiny_ref, chat_model, options),
                f"--quant-cache={cache}",
                f"--quant-report={report}",
                f"--quant-markdown={pytester.path / name}.md",
                f"--quant-html={pytester.path / name}.html",
                "-rA",
            )
            out = result.stdout.str() + result.stderr.str()
            assert result.ret in (0, 1), out
            assert key not in out
            assert not proxy.faults  # every fault was served
            assert {h.get("authorization") for _, _, h in proxy.seen} == {f"Bearer {key}"}
            runs[name] = (outputs(report), dict(proxy.answered), result)
    clean, faulty, cached = runs["clean"], runs["faulty"], runs["cached"]
    assert faulty[0] == clean[0] == cached[0]
    # Nothing lost, nothing answered twice: the same requests got exactly one answer each.
    assert faulty[1] == clean[1] and set(faulty[1].values()) == {1}
    models = json.loads((pytester.path / "faulty.json").read_text())["models"]
    assert sum(m["served"]["usage"]["retries"] for m in models.values()) >= len(faults) - 1  # "slow" passes
    # The revision pins an identity: the third run takes the reference's results from the cache.
    assert "reference cache off" not in clean[2].stdout.str()
    cached[2].stdout.fnmatch_lines(["*quantgate: ref: 11/11 cases from the cache; nothing to generate*"])
    assert not any(k.startswith(f'["{tiny_ref}"') for k in cached[1])
    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite3" for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path


def test_an_identity_the_server_reports_keys_the_reference_cache(pytester: pytest.Pytester) -> None:
    """A server whose model list names the weights (``digest``): cached while it says the same."""

    def handler(path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        if path.endswith("/chat/completions"):
            return 400, {}, {"error": {"message": "no chat template"}}
        reply = body["prompt"][::-1]
        return (
            200,
            {},
            {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}],
            },
        )

    pytester.makepyfile(
        test_echo="""
from pytest_quantgate import quant_case

@quant_case("prompt", ["abc", "xyz", "pqr"], max_new_tokens=4)
def test_reversed(prompt, output):
    assert output == prompt[::-1]
"""
    )
    with Stub(handler, models=[{"id": "m", "object": "model", "digest": "sha256:1"}]) as stub:
        args = [f"--quant-reference=ref=openai:{stub.url}?model=m", "--quant-cache=on"]
        first, second = pytester.runpytest(*args), pytester.runpytest(*args)
        assert stub.models is not None
        stub.models[0]["digest"] = "sha256:2"  # other weights behind the same name
        third = pytester.runpytest(*args)
    for result in (first, second, third):
        assert result.ret == 0, result.stdout.str()
        assert "reference cache off" not in result.stdout.str()
    second.stdout.fnmatch_lines(["quantgate: ref: 3/3 cases from the cache; nothing to generate"])
    assert "from the cache" not in first.stdout.str() + third.stdout.str()
