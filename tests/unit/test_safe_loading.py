"""Safe loading of transformers checkpoints: what a checkpoint may not do unless a flag allows it.

No code shipped with a checkpoint (``--quant-trust-remote-code``), no pickled
weights (``--quant-allow-pickle``), no candidate with another tokenizer than
the reference's (``--quant-allow-tokenizer-mismatch``), no weight left
randomly initialized, no missing extra ending in a traceback, and nothing
from a checkpoint's ``generation_config.json`` in the decoding. Each refusal
is one line naming what to do. The tiny shipped model is loaded a handful of
times; every refusal happens before its weights are read.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from pytest_quantgate.backends.base import (
    BackendError,
    GenerationRequest,
    LoadPolicy,
    current_load_policy,
    load_policy,
)
from pytest_quantgate.backends.hf import HFBackend
from pytest_quantgate.backends.hf_tokenizers import reference_fingerprint, tokenizer_differences
from pytest_quantgate.backends.registry import load_backend
from pytest_quantgate.core.config import ConfigError, GateConfig
from pytest_quantgate.core.pool import ModelPool
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import ModelSpec, parse_spec

#: A checkpoint's generation_config that would change every output if it reached decoding.
HOSTILE_GENERATION = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
    "do_sample": True,
    "temperature": 5.0,
    "top_k": 0,
    "max_new_tokens": 24,
    "num_beams": 3,
    "repetition_penalty": 2.0,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 30,
}
#: A prompt on which the tiny model never stops: it fills any max_new_tokens.
LONG_PROMPT = "1 2 3 4 5 6 7 8"


def copy_checkpoint(tiny_ref: Path, where: Path, name: str) -> Path:
    """A copy of the tiny checkpoint to damage."""
    target = where / name
    shutil.copytree(tiny_ref, target)
    return target


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def one_line_error(spec: str, policy: LoadPolicy | None = None) -> str:
    with pytest.raises(BackendError) as info:
        HFBackend.load(parse_spec(spec), "cpu", "auto", policy)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def ref_spec(tiny_ref: Path) -> ModelSpec:
    return parse_spec(f"ref={tiny_ref}")


@pytest.fixture(scope="module")
def reference(ref_spec: ModelSpec) -> HFBackend:
    return HFBackend.load(ref_spec, "cpu", "auto")


# -- the flags: configuration and how they reach the loader ----------------------------


def _config(tiny_ref: Path, cli: dict[str, Any], ini: dict[str, Any]) -> GateConfig:
    return GateConfig.from_sources(
        option=lambda name: {"quant_reference": str(tiny_ref), **cli}.get(name),
        ini=lambda name: ini.get(name, [] if name in ("quant_candidate", "quant_slice_tolerance") else ""),
        cli_dir=tiny_ref.parent,
        ini_dir=tiny_ref.parent,
    )


FLAGS = ("quant_trust_remote_code", "quant_allow_pickle", "quant_allow_tokenizer_mismatch")


@pytest.mark.parametrize(
    ("cli", "ini", "expected"),
    [
        ({}, {}, (False, False, False)),
        ({"quant_trust_remote_code": True}, {}, (True, False, False)),
        ({}, {"quant_allow_pickle": True}, (False, True, False)),
        ({}, {"quant_allow_tokenizer_mismatch": "yes"}, (False, False, True)),
        ({"quant_allow_pickle": True}, {"quant_trust_remote_code": "false"}, (False, True, False)),
    ],
)
def test_the_flags_come_from_the_command_line_or_the_ini_file(
    tiny_ref: Path, cli: dict[str, Any], ini: dict[str, Any], expected: tuple[bool, bool, bool]
) -> None:
    cfg = _config(tiny_ref, cli, ini)
    assert (cfg.trust_remote_code, cfg.allow_pickle, cfg.allow_tokenizer_mismatch) == expected
    assert [
        cfg.to_dict()[k] for k in ("trust_remote_code", "allow_pickle", "allow_tokenizer_mismatch")
    ] == list(expected)
    policy = cfg.load_policy()
    assert (policy.trust_remote_code, policy.allow_pickle, policy.allow_tokenizer_mismatch) == expected
    assert policy.reference == cfg.reference


@pytest.mark.parametrize("name", FLAGS)
def test_a_bad_ini_value_is_a_config_error_naming_the_key(tiny_ref: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be true or false, got 'maybe'$"):
        _config(tiny_ref, {}, {name: "maybe"})


def test_the_model_pool_loads_under_the_sessions_policy(tiny_ref: Path) -> None:
    """Loaders keep their signature ``(spec, device=, dtype=)``: the policy is set around the call."""
    cfg = _config(tiny_ref, {"quant_allow_pickle": True}, {})
    seen: list[LoadPolicy] = []

    def loader(spec: ModelSpec, *, device: str, dtype: str) -> Any:
        seen.append(current_load_policy())
        raise BackendError("stop here")

    with pytest.raises(BackendError):
        ModelPool(cfg, loader=loader).get("tiny-ref")
    assert seen == [cfg.load_policy()]
    assert current_load_policy() == LoadPolicy()  # strict again outside the load
    with load_policy(LoadPolicy(allow_pickle=True)):
        assert current_load_policy().allow_pickle
    assert not current_load_policy().allow_pickle


# -- remote code --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_a_checkpoint_with_its_own_code_is_refused_without_the_flag(
    tiny_ref: Path, tmp_path: Path, where: str
) -> None:
    path = copy_checkpoint(tiny_ref, tmp_path, "remote")
    edit_json(path / where, lambda d: d.update(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}))
    assert one_line_error(f"remote={path}") == (
        f"remote: the checkpoint at {path} ships its own code (auto_map in {where}); "
        "refusing to run it without --quant-trust-remote-code"
    )


@pytest.mark.parametrize(
    ("policy", "trusted", "safetensors_only"),
    [(LoadPolicy(), False, True), (LoadPolicy(trust_remote_code=True, allow_pickle=True), True, None)],
    ids=["default", "flags"],
)
def test_the_flags_reach_both_from_pretrained_calls(
    tiny_ref: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: LoadPolicy,
    trusted: bool,
    safetensors_only: bool | None,
) -> None:
    import transformers

    calls: dict[str, dict[str, Any]] = {}
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def tokenizer(path: str, **kwargs: Any) -> Any:
        calls["tokenizer"] = kwargs
        return real_tokenizer(path, **kwargs)

    def model(path: str, **kwargs: Any) -> Any:
        calls["model"] = kwargs
        raise RuntimeError("not loading the weights")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    with load_policy(policy), pytest.raises(BackendError, match="not loading the weights"):
        HFBackend.load(parse_spec(str(tiny_ref)), "cpu", "auto")
    assert calls["tokenizer"]["trust_remote_code"] is trusted
    assert calls["model"]["trust_remote_code"] is trusted
    assert calls["model"].get("use_safetensors") is safetensors_only
    assert calls["model"]["local_files_only"] and calls["tokenizer"]["local_files_only"]


# -- pickled weights ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pickled(tiny_ref: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its weights as ``pytorch_model.bin`` and no safetensors."""
    import torch
    from safetensors.torch import load_file

    path = copy_checkpoint(tiny_ref, tmp_path_factory.mktemp("pickle"), "pickled")
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def test_a_pickle_only_checkpoint_is_refused_without_the_flag(pickled: Path) -> None:
    assert one_line_error(f"p={pickled}") == (
        f"p: the checkpoint at {pickled} has only pickled weights (pytorch_model.bin), which can run code "
        "when loaded; convert it to safetensors or pass --quant-allow-pickle"
    )


def test_a_pickle_only_checkpoint_loads_with_the_flag(pickled: Path, reference: HFBackend) -> None:
    backend = HFBackend.load(parse_spec(f"p={pickled}"), "cpu", "auto", LoadPolicy(allow_pickle=True))
    requests = [GenerationRequest(LONG_PROMPT, GenerationSettings(max_new_tokens=8))]
    assert backend.generate(requests) == reference.generate(requests)


# -- missing weights, missing extras ---------------------------------------------------------


def test_a_checkpoint_with_a_tensor_removed_is_one_line_naming_it(tiny_ref: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = copy_checkpoint(tiny_ref, tmp_path, "holed")
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    assert one_line_error(f"holed={path}") == (
        f"holed: 1 weight(s) missing from the checkpoint at {path} would be randomly initialized "
        "(model.layers.1.mlp.down_proj.weight); refusing to gate a random model"
    )


@pytest.mark.parametrize("scheme", ["bnb-nf4", "bnb-int8"])
def test_a_missing_extra_is_one_line_naming_it(
    tiny_ref: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(BackendError) as info:
        load_backend(parse_spec(f"{scheme}:{tiny_ref}"), device="cpu", dtype="auto")
    assert str(info.value) == (
        f"spec '{scheme}:{tiny_ref}' needs bitsandbytes: pip install 'pytest-quantgate[bnb]'"
    )


# -- tokenizers --------------------------------------------------------------------


def _changed(fingerprint: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    other = copy.deepcopy(fingerprint)
    change(other)
    return other


def _add_token(fp: dict[str, Any]) -> None:
    fp["vocab"]["<tool>"] = 259
    fp["added_tokens"]["259"] = {
        "content": "<tool>",
        "special": True,
        "normalized": False,
        "lstrip": False,
        "rstrip": False,
        "single_word": False,
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda fp: None, []),
        (
            lambda fp: fp["vocab"].update({"a": fp["vocab"]["b"], "b": fp["vocab"]["a"]}),
            ["vocabulary of 259 vs 259 tokens, 2 differ ('a': 67 vs 68, 'b': 68 vs 67)"],
        ),
        (
            _add_token,
            [
                "vocabulary of 259 vs 260 tokens, 1 differ ('<tool>': absent vs 259)",
                "added tokens, 1 differ (259: absent vs '<tool>' [special])",
            ],
        ),
        (
            lambda fp: fp["special_tokens"].update(eos_token=["<pad>", 2]),
            ["eos_token '<eos>' (1) vs '<pad>' (2)"],
        ),
        (
            lambda fp: fp["all_special_tokens"].append(["<unk>", 3]),
            ["special tokens (only the candidate's: '<unk>' (3))"],
        ),
        (lambda fp: fp.update(chat_template="{{ messages }}"), ["chat template: none vs one"]),
        (
            lambda fp: fp.update(pipeline="0" * 16),
            ["how text is split (normalizer, pre-tokenizer, merges or post-processor)"],
        ),
    ],
    ids=["same", "vocab-swapped", "added-token", "eos", "special", "chat-template", "pipeline"],
)
def test_tokenizer_differences(
    reference: HFBackend, change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    fp = reference.tokenizer_facts()
    assert (fp["vocab"]["a"], fp["vocab"]["b"], len(fp["vocab"])) == (67, 68, 259)
    assert tokenizer_differences(fp, _changed(fp, change)) == expected


def test_the_reference_tokenizer_is_read_without_loading_its_model(
    ref_spec: ModelSpec, reference: HFBackend
) -> None:
    """Its results may come from the cache: the reference itself is then never loaded."""
    assert reference_fingerprint(LoadPolicy(reference=ref_spec)) == reference.tokenizer_facts()
    assert reference_fingerprint(LoadPolicy()) is None


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_ref: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint whose tokenizer has a chat template and one more special token."""
    path = copy_checkpoint(tiny_ref, tmp_path_factory.mktemp("tok"), "chatty")
    edit_json(
        path / "tokenizer_config.json", lambda d: d.update(chat_template="{{ messages[0]['content'] }}")
    )
    edit_json(
        path / "tokenizer.json",
        lambda d: d["added_tokens"].append(
            {
                "id": 259,
                "content": "<tool>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ),
    )
    return path


def test_a_candidate_with_another_tokenizer_is_refused(chat_tokenizer: Path, ref_spec: ModelSpec) -> None:
    message = one_line_error(f"chatty={chat_tokenizer}", LoadPolicy(reference=ref_spec))
    assert message == (
        "chatty: its tokenizer differs from the reference ref's: "
        "vocabulary of 259 vs 260 tokens, 1 differ ('<tool>': absent vs 259); "
        "chat template: none vs one; "
        "added tokens, 1 differ (259: absent vs '<tool>' [special]); the same prompts would be different "
        "token ids, so the comparison would be meaningless (pass --quant-allow-tokenizer-mismatch to gate it "
        "anyway)"
    )


def test_a_candidate_with_another_tokenizer_loads_with_the_flag_and_says_how(
    chat_tokenizer: Path, ref_spec: ModelSpec, reference: HFBackend
) -> None:
    policy = LoadPolicy(reference=ref_spec, allow_tokenizer_mismatch=True)
    backend = HFBackend.load(parse_spec(f"chatty={chat_tokenizer}"), "cpu", "auto", policy)
    facts = backend.describe()
    assert facts["tokenizer"] != reference.describe()["tokenizer"]
    assert "chat template: none vs one" in facts["tokenizer_differences"]
    assert "tokenizer_differences" not in reference.describe()


# -- generation_config -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tiny_ref: Path, tmp_path_factory: pytest.TempPathFactory, ref_spec: ModelSpec) -> HFBackend:
    """A copy of the tiny model whose generation_config asks for sampling, beams, penalties, 24 tokens.

    Loaded as a candidate of the reference: the same tokenizer in another
    directory passes the tokenizer check.
    """
    path = copy_checkpoint(tiny_ref, tmp_path_factory.mktemp("gen"), "hostile")
    (path / "generation_config.json").write_text(json.dumps(HOSTILE_GENERATION))
    return HFBackend.load(parse_spec(f"hostile={path}"), "cpu", "auto", LoadPolicy(reference=ref_spec))


def _rows(example_data: Path, per_slice: int = 3) -> list[dict[str, str]]:
    rows = []
    for data in sorted(example_data.glob("*.jsonl")):
        rows += [json.loads(line) for line in data.read_text().splitlines() if line.strip()][:per_slice]
    return rows


def test_a_checkpoints_generation_config_does_not_change_decoding(
    hostile: HFBackend, reference: HFBackend, example_data: Path
) -> None:
    settings = GenerationSettings(max_new_tokens=40)
    rows = _rows(example_data)
    requests = [GenerationRequest(p, settings) for p in [*(r["prompt"] for r in rows), LONG_PROMPT]]
    outputs = hostile.generate(requests)
    assert outputs == reference.generate(requests)
    # Greedy, and stopped at eos: the right answer and a newline.
    assert outputs[:-1] == [r["expected"] + "\n" for r in rows]
    # The case's 40 new tokens, not the checkpoint's 24.
    assert len(hostile.tokenizer(outputs[-1], add_special_tokens=False)["input_ids"]) == 40
    # Nor 30 (min_new_tokens) for a case that asks for fewer.
    short = hostile.generate([GenerationRequest(LONG_PROMPT, GenerationSettings(max_new_tokens=5))])[0]
    assert len(hostile.tokenizer(short, add_special_tokens=False)["input_ids"]) == 5


def test_what_the_checkpoint_asked_for_is_recorded_and_ignored(
    hostile: HFBackend, reference: HFBackend
) -> None:
    said = hostile.describe()["checkpoint_generation_config"]
    assert said == HOSTILE_GENERATION
    assert hostile.describe()["tokenizer"] == reference.describe()["tokenizer"]
    # Only the token ids stay on the model: nothing else can fill a field a request leaves unset.
    kept = {
        k: v for k, v in hostile.model.generation_config.to_diff_dict().items() if k != "transformers_version"
    }
    assert kept == {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
    # The shipped model's own file says max_new_tokens=24 too; it is ignored alike.
    assert reference.describe()["checkpoint_generation_config"]["max_new_tokens"] == 24
