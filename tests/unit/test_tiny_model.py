"""The shipped tiny reference loads offline through from_pretrained and works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from pytest_quantgate.backends.base import GenerationRequest
from pytest_quantgate.backends.hf import HFBackend
from pytest_quantgate.cases import GenerationSettings
from pytest_quantgate.runner import truncate_at_stop
from pytest_quantgate.specs import parse_spec

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
