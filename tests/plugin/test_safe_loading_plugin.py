"""Safe loading end to end: the ``--quant-*`` flags (or their ini keys) reach the loader.

A few pytester runs on the tiny shipped model. In the first, every unsafe or
broken candidate is refused in one line naming what to do, with no
traceback, and the others are still gated; in the second, the flags let the
same candidates through; in the third, the reference's results come from the
cache and a candidate's tokenizer is still compared with its. Every refusal
but a missing weight comes before any weight is read.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

SUITE = """
import json
from pathlib import Path

from pytest_quantgate import quant_case, quant_slice

ROWS = [json.loads(line) for line in Path({data!r}).read_text().splitlines()[:8]]


@quant_slice("format")
@quant_case("prompt, expected", [(r["prompt"], r["expected"]) for r in ROWS], max_new_tokens=24, stop="\\n")
def test_format(prompt, expected, output):
    assert output.strip() == expected
"""


def _copy(tiny_ref: Path, where: Path, name: str) -> Path:
    target = where / name
    shutil.copytree(tiny_ref, target)
    return target


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def checkpoints(tiny_ref: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of the tiny model, each unsafe or broken in one way."""
    import torch
    from safetensors.torch import load_file, save_file

    remote = _copy(tiny_ref, tmp_path, "remote")
    _edit(remote / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    pickled = _copy(tiny_ref, tmp_path, "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    chatty = _copy(tiny_ref, tmp_path, "chatty")
    _edit(chatty / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    holed = _copy(tiny_ref, tmp_path, "holed")
    weights = load_file(holed / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, holed / "model.safetensors", metadata={"format": "pt"})
    return {"remote": remote, "pickled": pickled, "chatty": chatty, "holed": holed}


def _report(path: Path) -> dict:
    return dict(json.loads(path.read_text()))


def test_unsafe_candidates_are_refused_in_one_line_each(
    pytester: pytest.Pytester,
    tiny_ref: Path,
    example_data: Path,
    checkpoints: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # the [bnb] extra is not installed
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data / "format.jsonl")))
    # The same tokenizer in another directory, and nothing unsafe: gated as usual.
    same = _copy(tiny_ref, pytester.path, "same")
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        *(f"--quant-candidate={label}={path}" for label, path in checkpoints.items()),
        f"--quant-candidate=nf4=bnb-nf4:{tiny_ref}",
        f"--quant-candidate=same={same}",
        f"--quant-report={report}",
        "-p",
        "no:xdist",
    )
    out = result.stdout.str()
    assert "Traceback" not in out, out
    p = checkpoints
    expected = {
        "remote": f"remote: the checkpoint at {p['remote']} ships its own code (auto_map in config.json); "
        "refusing to run it without --quant-trust-remote-code",
        "pickled": f"pickled: the checkpoint at {p['pickled']} has only pickled weights (pytorch_model.bin), "
        "which can run code when loaded; convert it to safetensors or pass --quant-allow-pickle",
        "chatty": "chatty: its tokenizer differs from the reference ref's: chat template: none vs one; "
        "the same prompts would be different token ids, so the comparison would be meaningless "
        "(pass --quant-allow-tokenizer-mismatch to gate it anyway)",
        "holed": f"holed: 1 weight(s) missing from the checkpoint at {p['holed']} would be randomly "
        "initialized (model.norm.weight); refusing to gate a random model",
        "nf4": f"spec 'nf4=bnb-nf4:{tiny_ref}' needs bitsandbytes: pip install 'pytest-quantgate[bnb]'",
    }
    for label, message in expected.items():
        assert f"quantgate: could not load {label}: {message}\n" in out, (label, out)
    data = _report(report)
    evaluated = {c["label"]: c["evaluated"] for c in data["candidates"]}
    assert evaluated == {**dict.fromkeys(expected, False), "same": True}, evaluated
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # an incomplete gate never passes
    config = data["config"]
    assert [config[k] for k in ("trust_remote_code", "allow_pickle", "allow_tokenizer_mismatch")] == [
        False,
        False,
        False,
    ]


def test_the_flags_let_them_through(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path, checkpoints: dict[str, Path]
) -> None:
    """Pickled weights by the ini key, another tokenizer by the flag: both gated, the difference reported."""
    pytester.makeini("[pytest]\nquant_allow_pickle = true\n")
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data / "format.jsonl")))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=pickled={checkpoints['pickled']}",
        f"--quant-candidate=chatty={checkpoints['chatty']}",
        "--quant-allow-tokenizer-mismatch",
        f"--quant-report={report}",
        "-p",
        "no:xdist",
    )
    out = result.stdout.str()
    data = _report(report)
    assert {c["label"]: c["evaluated"] for c in data["candidates"]} == {"pickled": True, "chatty": True}
    verdicts = {c["label"]: c["verdict"] for c in data["candidates"]}
    assert verdicts["pickled"] != "REGRESSED", out
    # Gated, and what the refusal warned of: its chat template wraps every prompt, so the
    # candidate answers other inputs than the reference did.
    assert verdicts["chatty"] == "REGRESSED", out
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert data["config"]["allow_pickle"] and data["config"]["allow_tokenizer_mismatch"]
    assert not data["config"]["trust_remote_code"]
    models = data["models"]
    assert models["chatty"]["tokenizer_differences"] == ["chat template: none vs one"]
    assert "tokenizer_differences" not in models["pickled"]
    assert models["pickled"]["tokenizer"] == models["ref"]["tokenizer"]
    # The shipped model's generation_config says max_new_tokens=24: recorded, not obeyed.
    assert models["ref"]["checkpoint_generation_config"]["max_new_tokens"] == 24


def test_a_tokenizer_mismatch_is_found_when_the_reference_comes_from_the_cache(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path, checkpoints: dict[str, Path]
) -> None:
    """The reference's tokenizer is read from its directory: a warm run never loads the reference."""
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data / "format.jsonl")))
    args = [
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=chatty={checkpoints['chatty']}",
        "--quant-cache=on",
        f"--quant-cache-dir={pytester.path / 'cache'}",
        "-p",
        "no:xdist",
    ]
    refusal = "quantgate: could not load chatty: chatty: its tokenizer differs from the reference ref's: "
    cold = pytester.runpytest(*args)
    assert refusal in cold.stdout.str()
    warm = pytester.runpytest(*args)
    out = warm.stdout.str()
    assert "ref: 8/8 cases from the cache; nothing to generate, the model is not loaded" in out, out
    assert "quantgate: loading ref" not in out and "quantgate: loading chatty" in out
    assert refusal in out
