"""The shipped tiny reference loads offline through from_pretrained and works."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from pytest_quantgate.backends.base import BackendError, GenerationRequest, ScoreRequest
from pytest_quantgate.backends.hf import HFBackend
from pytest_quantgate.core.runner import truncate_at_stop
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import parse_spec

SLICES = ("recall", "retention", "arith", "format")


@pytest.fixture(scope="module")
def backend(tiny_ref: Path) -> HFBackend:
    return HFBackend.load(parse_spec(f"ref={tiny_ref}"), "cpu", "auto")


def _rows(example_data: Path, name: str, k: int) -> list[dict]:
    lines = (example_data / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:k]]


def test_checkpoint_is_small_and_complete(tiny_ref: Path, backend: HFBackend) -> None:
    size = sum(p.stat().st_size for p in tiny_ref.iterdir())
    assert size < 8 * 2**20
    facts = backend.describe()
    assert facts["dtype"] == "float32" and facts["device"] == "cpu"
    assert 100_000 < facts["parameters"] < 2_000_000


@pytest.mark.parametrize("name", SLICES)
def test_reference_answers_eval_cases_batched(backend: HFBackend, example_data: Path, name: str) -> None:
    rows = _rows(example_data, name, 12)
    settings = GenerationSettings(max_new_tokens=24, stop=("\n",))
    requests = [GenerationRequest(r["prompt"], settings) for r in rows]
    batched = [truncate_at_stop(o, settings.stop) for o in backend.generate(requests)]
    correct = sum(o.strip() == r["expected"] for o, r in zip(batched, rows, strict=True))
    assert correct >= 10, list(zip(batched, [r["expected"] for r in rows], strict=True))
    # Left-padded batched greedy decoding gives what one prompt at a time gives.
    single = [truncate_at_stop(backend.generate([q])[0], settings.stop) for q in requests[:4]]
    assert single == batched[:4]


def test_token_logprobs_prefer_the_right_answer(backend: HFBackend, example_data: Path) -> None:
    row = _rows(example_data, "recall", 1)[0]
    wrong = str((int(row["expected"]) + 1) % 10)
    right_lp, wrong_lp = backend.token_logprobs([(row["prompt"], row["expected"]), (row["prompt"], wrong)])
    assert len(right_lp) == 1 and right_lp[0] > wrong_lp[0]


def test_score_gives_each_tokens_logprob_and_the_top_k(backend: HFBackend, example_data: Path) -> None:
    """Teacher forcing on the model's own greedy reply: its tokens are the top-1 at every position."""
    row = _rows(example_data, "arith", 1)[0]
    settings = GenerationSettings(max_new_tokens=5)
    reply = backend.generate([GenerationRequest(row["prompt"], settings)])[0]
    (scores,) = backend.score([ScoreRequest(row["prompt"], reply, top_k=3)])
    assert len(scores.tokens) == len(scores.logprobs) == len(scores.top) > 0
    for token, logprob, top in zip(scores.tokens, scores.logprobs, scores.top, strict=True):
        assert len(top) == 3 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert top[0] == (token, pytest.approx(logprob))
    assert backend.token_logprobs([(row["prompt"], reply)]) == [list(scores.logprobs)]


def test_context_is_the_smaller_of_the_model_and_tokenizer_limits(backend: HFBackend) -> None:
    # The tiny model has 128 positions; its tokenizer says 128 too.
    assert backend.context == 128 and backend.describe()["context"] == 128


def test_a_prompt_beyond_the_context_is_refused_before_generating(backend: HFBackend) -> None:
    settings = GenerationSettings(max_new_tokens=8)
    fits, too_long = backend.check_requests(
        [GenerationRequest("a=1 b=2 ; a?", settings), GenerationRequest("1 " * 200, settings)]
    )
    assert fits is None
    assert too_long is not None
    assert re.fullmatch(
        r"the prompt \(\d+ tokens\) \+ max_new_tokens \(8\) = \d+ tokens"
        r" exceeds the context of ref \(128 tokens\)",
        too_long,
    )


def _broken_copy(tiny_ref: Path, tmp_path: Path, what: str) -> Path:
    copy = tmp_path / what
    shutil.copytree(tiny_ref, copy)
    if what == "truncated":
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100_000])
    else:
        (copy / "tokenizer.json").unlink()
    return copy


@pytest.mark.parametrize(
    ("what", "cause"),
    [
        ("truncated", "Error while deserializing header"),
        # The first line alone ("... from one of:") says nothing: the whole message is kept.
        ("no-tokenizer", "Couldn't instantiate the backend tokenizer from one of: \n(1) a `tokenizers`"),
    ],
)
def test_a_broken_checkpoint_is_one_error_with_the_whole_cause(
    tiny_ref: Path, tmp_path: Path, what: str, cause: str
) -> None:
    path = _broken_copy(tiny_ref, tmp_path, what)
    with pytest.raises(BackendError) as info:
        HFBackend.load(parse_spec(f"cand={path}"), "cpu", "auto")
    assert str(info.value).startswith(f"cannot load cand from {path}: ")
    assert cause in str(info.value)
    if what == "no-tokenizer":
        assert "(3) an equivalent slow tokenizer class" in str(info.value)


def test_chat_trajectories_are_rendered_with_the_template_identically_for_both_models(
    tiny_ref: Path, tmp_path: Path
) -> None:
    """A tokenizer with a chat template: every step is fed through ``apply_chat_template``
    with the generation prompt, and the record holds the exact text each model saw."""
    from pytest_quantgate.core.cases import CaseSpec
    from pytest_quantgate.core.runner import run_cases
    from pytest_quantgate.core.trajectory import Trajectory

    chat = tmp_path / "chat"
    shutil.copytree(tiny_ref, chat)
    config_path = chat / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    config_path.write_text(json.dumps(config))

    class Chat(Trajectory):
        max_steps = 2

        def initial_state(self) -> dict:
            return {"messages": [{"role": "user", "content": "k=7 ; k?"}]}

        def render(self, state: dict) -> list:
            return state["messages"]

        def apply(self, state: dict, reply: str) -> dict:
            more = [{"role": "assistant", "content": reply}, {"role": "user", "content": "again?"}]
            return {"messages": state["messages"] + more}

    case = CaseSpec("c", "t.py::c", "", GenerationSettings(max_new_tokens=3), trajectory=Chat())
    rendered = {}
    for label, spec in (("ref", f"ref={chat}"), ("q", f"q=rtn4g32:{chat}")):
        backend = HFBackend.load(parse_spec(spec), "cpu", "auto")
        (run,) = run_cases(backend, [case]).values()
        assert run.error is None and len(run.turns) == 2
        rendered[label] = [t.rendered for t in run.turns]
    first = rendered["ref"][0]
    assert first == "<user>k=7 ; k?\n<assistant>"
    assert rendered["ref"][1] is not None and rendered["ref"][1].startswith(first)
    assert rendered["ref"][1].endswith("<user>again?\n<assistant>")
    # Until the replies part, both models are fed byte-identical text.
    assert rendered["q"][0] == first


def test_outcomes_do_not_depend_on_the_batch_size(backend: HFBackend, example_data: Path) -> None:
    """Batch 1 and batch 32 give the same outputs (left padding, greedy): a back-off after an
    out-of-memory error, or another --quant-batch-size, cannot change a verdict."""
    from pytest_quantgate.core.cases import CaseSpec
    from pytest_quantgate.core.runner import run_cases

    settings = GenerationSettings(max_new_tokens=5, stop=("\n",))
    rows = _rows(example_data, "arith", 16) + _rows(example_data, "recall", 16)
    cases = [CaseSpec(r["id"], f"t.py::{r['id']}", r["prompt"], settings) for r in rows]
    one = run_cases(backend, cases, batch_size=1)
    all_at_once = run_cases(backend, cases, batch_size=32)
    assert {k: r.output for k, r in one.items()} == {k: r.output for k, r in all_at_once.items()}
