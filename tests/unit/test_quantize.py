"""gptq:/awq: specs, the store of quantized checkpoints, and what loading one needs (no gptqmodel run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from pytest_quantgate.backends.base import BackendError, LoadPolicy
from pytest_quantgate.backends.hf_loading import (
    contained_environment,
    quantized_format_problem,
    quantized_on_the_fly,
)
from pytest_quantgate.core.config import ConfigError, GateConfig
from pytest_quantgate.storage import quantize
from pytest_quantgate.storage.fingerprint import model_fingerprint
from pytest_quantgate.storage.quantize import QuantizeError, Recipe, store_key
from pytest_quantgate.values.calibration import Calibration, calibration_digest
from pytest_quantgate.values.specs import SpecError, parse_spec


def test_specs_take_gptqmodel_options_and_refuse_what_it_cannot_do(tiny_ref: Path) -> None:
    spec = parse_spec(f"gptq:{tiny_ref}?bits=3&group_size=64&sym=false&desc_act=true")
    assert spec.label == "gptq" and spec.options == {
        "bits": 3,
        "group_size": 64,
        "sym": False,
        "desc_act": True,
    }
    recipe = Recipe.of("gptq", spec.options)
    assert recipe.describe() == "GPTQ 3-bit, groups of 64, asymmetric, act-order"
    assert recipe.argv() == ["--method=gptq", "--bits=3", "--group-size=64", "--no-sym", "--desc-act"]
    assert Recipe.of("awq", parse_spec(f"awq:{tiny_ref}").options).describe() == (
        "AWQ 4-bit, groups of 128, symmetric"
    )
    assert Recipe("gptq", group_size=-1).describe() == "GPTQ 4-bit, per channel, symmetric"
    for bad, says in (
        ("gptq:{}?bits=5", "bits=5: gptq quantizes to 2 or 3 or 4 or 8 bits"),
        ("awq:{}?bits=3", "bits=3: awq quantizes to 4 bits"),
        ("gptq:{}?group_size=0", "group_size=0: a positive number"),
        ("gptq:{}?sym=maybe", "sym='maybe': true or false"),
        ("awq:{}?desc_act=true", "option 'desc_act=true' is not one of bits, group_size, sym"),
    ):
        with pytest.raises(SpecError, match=says):
            parse_spec(bad.format(tiny_ref))


def test_quantizing_on_the_fly_needs_a_calibration_file(tiny_ref: Path) -> None:
    def config(cli: dict) -> GateConfig:
        return GateConfig.from_sources(
            option=lambda name: cli.get(name),
            ini=lambda name: [] if name in ("quant_candidate", "quant_slice_tolerance") else "",
            cli_dir=tiny_ref.parent,
            ini_dir=tiny_ref.parent,
        )

    cli = {"quant_reference": "tiny-ref", "quant_candidate": ["gptq:tiny-ref?bits=4"]}
    with pytest.raises(
        ConfigError, match=r"'gptq:tiny-ref\?bits=4' quantizes on the fly .* --quant-calibration"
    ):
        config(cli)
    calibration = tiny_ref.parent / "calibration.jsonl"
    cfg = config({**cli, "quant_calibration": str(calibration)})
    policy = cfg.load_policy()
    assert policy.calibration is not None and policy.calibration == cfg.calibration
    assert policy.calibration.path == calibration.resolve()
    assert policy.store == cfg.cache_dir and not policy.refresh


def test_the_store_key_changes_with_every_input() -> None:
    base = ("f" * 64, Recipe("gptq"), calibration_digest(["a", "b"]), "7.6.0")
    keys = {
        store_key(*base),
        store_key("e" * 64, *base[1:]),
        store_key(base[0], Recipe("gptq", group_size=32), *base[2:]),
        store_key(base[0], Recipe("awq"), *base[2:]),
        store_key(base[0], Recipe("gptq", sym=False), *base[2:]),
        store_key(*base[:2], calibration_digest(["b", "a"]), base[3]),
        store_key(*base[:2], calibration_digest(["ab"]), base[3]),
        store_key(*base[:3], "7.6.1"),
    }
    assert len(keys) == 8
    assert store_key(*base) == store_key(*base)


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """gptqmodel "installed", and a quantizing child that writes a checkpoint; its scratch dirs."""
    import time

    monkeypatch.setattr(quantize, "gptqmodel_version", lambda: "7.6.0")
    made: list[Path] = []

    def child(source: Path, recipe: Recipe, calibration: Path, work: Path) -> None:
        made.append(work)
        time.sleep(0.3)  # long enough for a second caller to reach the lock
        (work / "checkpoint").mkdir()
        (work / "checkpoint" / "config.json").write_text("{}")

    monkeypatch.setattr(quantize, "_run_child", child)
    return made


@pytest.fixture
def calibration(tmp_path: Path) -> Calibration:
    path = tmp_path / "calib.jsonl"
    path.write_text('{"text": "2+7=9\\n"}\n{"text": "a=1 ; a?1\\n"}\n')
    return Calibration.read(path)


def test_a_stored_checkpoint_is_reused_without_gptqmodel_running(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "gptqmodel_version", lambda: "7.6.0")
    monkeypatch.setattr(quantize, "_run_child", lambda *a: pytest.fail("quantized again"))
    recipe = Recipe("gptq", group_size=32)
    key = store_key(
        model_fingerprint(tiny_ref), recipe, calibration_digest(["2+7=9\n", "a=1 ; a?1\n"]), "7.6.0"
    )
    stored = tmp_path / "store" / "quantized" / key[:32]
    stored.mkdir(parents=True)
    (stored / quantize.PROVENANCE).write_text(json.dumps({"created": "2026-11-29 10:00:00"}))
    (stored / "config.json").write_text("{}")
    lines: list[str] = []
    got = quantize.quantized_checkpoint(
        tiny_ref, recipe, calibration, store=tmp_path / "store", label="g", emit=lines.append
    )
    assert got == stored
    assert lines == [
        f"quantgate: g: reusing the GPTQ 4-bit, groups of 32, symmetric checkpoint of tiny-ref "
        f"stored 2026-11-29 10:00:00 ({stored})"
    ]


def test_quantizing_again_replaces_the_stored_checkpoint_atomically(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, made: list[Path]
) -> None:
    lines: list[str] = []
    store = tmp_path / "store"
    first = quantize.quantized_checkpoint(
        tiny_ref, Recipe("awq"), calibration, store=store, emit=lines.append
    )
    assert (first / quantize.PROVENANCE).is_file() and len(made) == 1
    assert lines[0].startswith("quantgate: awq: quantizing tiny-ref (AWQ 4-bit, groups of 128, symmetric)")
    assert lines[0].endswith(f"on 2 calibration texts (its log: {made[0] / quantize.LOG_NAME}) ...")
    assert "stored in" in lines[1]
    again = quantize.quantized_checkpoint(tiny_ref, Recipe("awq"), calibration, store=store, refresh=True)
    assert again == first and len(made) == 2
    assert not made[0].exists() and not made[1].exists()  # the scratch directories are gone
    assert sorted(p.name for p in (store / "quantized").iterdir() if not p.name.endswith(".lock")) == [
        first.name
    ]


def test_quantizing_fails_in_one_line_naming_the_log(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "gptqmodel_version", lambda: "7.6.0")

    def call(command: list[str], cwd: Path, stdout: object, stderr: object) -> int:
        assert command[1:3] == ["-m", "pytest_quantgate.storage.quantize"] and Path(cwd).is_dir()
        stdout.write(b"Traceback ...\nRuntimeError: out of memory\n\n")  # type: ignore[attr-defined]
        return 1

    monkeypatch.setattr(subprocess, "call", call)
    with pytest.raises(
        QuantizeError,
        match=r"^quantizing tiny-ref with gptqmodel failed: RuntimeError: out of memory "
        r"\(full log: .*\.log\)$",
    ) as info:
        quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), calibration, store=tmp_path)
    log = Path(str(info.value).rsplit("full log: ", 1)[1].rstrip(")"))
    assert "out of memory" in log.read_text()
    log.unlink()
    assert [p for p in (tmp_path / "quantized").iterdir() if not p.name.endswith(".lock")] == []


def test_without_gptqmodel_or_texts_it_says_what_is_missing(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "gptqmodel_version", lambda: None)
    with pytest.raises(QuantizeError, match=r"needs gptqmodel: pip install 'pytest-quantgate\[awq\]'"):
        quantize.quantized_checkpoint(tiny_ref, Recipe("awq"), calibration, store=tmp_path)
    monkeypatch.setattr(quantize, "gptqmodel_version", lambda: "7.6.0")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    says = f"^the calibration file {re.escape(str(empty))} has no text to calibrate gptq on$"
    with pytest.raises(QuantizeError, match=says):
        quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), Calibration.read(empty), store=tmp_path)


def test_a_quantized_checkpoint_without_its_library_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    spec = parse_spec(f"q={tmp_path}", check_path=False)
    for method, missing, extra in (
        ("gptq", "optimum", "gptq"),
        ("awq", "gptqmodel", "awq"),
        ("bitsandbytes", "bitsandbytes", "bnb"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": method}}))
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, real=real, missing=missing: None if name == missing else real(name),
        )
        assert quantized_format_problem(spec, tmp_path) == (
            f"q: loading a {method.upper()} checkpoint needs {missing}: "
            f"pip install 'pytest-quantgate[{extra}]'"
        )
        monkeypatch.undo()
    (tmp_path / "config.json").write_text("{}")
    assert quantized_format_problem(spec, tmp_path) is None


def test_a_loader_cannot_change_the_sessions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTGATE_KEPT", "1")
    monkeypatch.setenv("QUANTGATE_CHANGED", "before")
    monkeypatch.delenv("QUANTGATE_ADDED", raising=False)
    with contained_environment():
        os.environ["QUANTGATE_ADDED"] = "x"
        os.environ["QUANTGATE_CHANGED"] = "after"
        del os.environ["QUANTGATE_KEPT"]
    assert "QUANTGATE_ADDED" not in os.environ
    assert os.environ["QUANTGATE_CHANGED"] == "before" and os.environ["QUANTGATE_KEPT"] == "1"


def test_the_shipped_checkpoints_decode_and_tokenize_as_the_reference(
    repo_root: Path, tiny_ref: Path
) -> None:
    """gptqmodel's own generation config (do_sample) and tokenizer config edits are undone."""
    for name in ("tiny-gptq", "tiny-awq"):
        shipped = repo_root / "models" / name
        for file in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (shipped / file).read_bytes() == (tiny_ref / file).read_bytes(), (name, file)
        assert json.loads((shipped / "config.json").read_text())["dtype"] == "float32"
        assert not (shipped / "quant_log.csv").exists()


def test_backend_error_when_the_policy_has_no_calibration(tiny_ref: Path) -> None:
    with pytest.raises(BackendError, match="gptq: quantizing needs --quant-calibration FILE"):
        quantized_on_the_fly(parse_spec(f"gptq:{tiny_ref}"), LoadPolicy())


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("", "gptq: group_size=128 does not divide the model's hidden_size 576, "),
        ("?group_size=64", None),
        ("?group_size=-1", None),
    ],
)
def test_a_group_size_the_model_cannot_take_stops_before_quantizing(
    tmp_path: Path,
    calibration: Calibration,
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    problem: str | None,
) -> None:
    """SmolLM2-135M's shapes: groups of 128 quantize, then fail on every case; refused up front."""
    model = tmp_path / "smollm2"
    model.mkdir()
    shapes = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    (model / "config.json").write_text(json.dumps(shapes))
    called: list[str] = []

    def quantized(*args: object, **kwargs: object) -> Path:
        called.append("q")
        return model

    monkeypatch.setattr("pytest_quantgate.backends.hf_loading.quantized_checkpoint", quantized)
    spec = parse_spec(f"gptq:{model}{options}")
    policy = LoadPolicy(calibration=calibration)
    if problem is None:
        assert quantized_on_the_fly(spec, policy) == model and called == ["q"]
        return
    with pytest.raises(BackendError) as info:
        quantized_on_the_fly(spec, policy)
    message = str(info.value)
    assert message.startswith(problem) and "group_size=64 fits" in message and "intermediate" not in message
    assert called == []  # nothing was quantized


@pytest.mark.parametrize("refresh", [False, True])
def test_two_processes_needing_one_checkpoint_quantize_it_once(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, made: list[Path], refresh: bool
) -> None:
    """xdist workers share the store: the second waits on the lock, then reuses what the first
    made, also when both were asked to refresh it (threads stand in for the workers)."""
    import threading

    if refresh:  # an old checkpoint is there: refreshing makes it again, once
        quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), calibration, store=tmp_path)
        made.clear()
    got: list[Path] = []
    callers = [
        threading.Thread(
            target=lambda: got.append(
                quantize.quantized_checkpoint(
                    tiny_ref, Recipe("gptq"), calibration, store=tmp_path, refresh=refresh
                )
            )
        )
        for _ in range(2)
    ]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(made) == 1 and len(got) == 2 and got[0] == got[1]


def test_a_half_written_or_corrupted_stored_checkpoint_is_made_again(
    tiny_ref: Path, tmp_path: Path, calibration: Calibration, made: list[Path]
) -> None:
    stored = quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), calibration, store=tmp_path)
    (stored / quantize.PROVENANCE).write_text("{not json")
    assert quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), calibration, store=tmp_path) == stored
    (stored / "config.json").unlink()
    assert quantize.quantized_checkpoint(tiny_ref, Recipe("gptq"), calibration, store=tmp_path) == stored
    assert (
        len(made) == 3
        and json.loads((stored / quantize.PROVENANCE).read_text())["format"] == quantize.STORE_FORMAT
    )


def test_a_missing_package_stops_gptq_before_it_quantizes(
    tiny_ref: Path, calibration: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    import importlib.util

    from pytest_quantgate.backends.hf import HFBackend

    monkeypatch.setattr(quantize, "_run_child", lambda *a: pytest.fail("quantized without optimum"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "optimum" else real(name))
    with pytest.raises(BackendError, match=r"^gptq: loading a GPTQ checkpoint needs optimum: pip install"):
        HFBackend.load(parse_spec(f"gptq:{tiny_ref}"), "cpu", "float32", LoadPolicy(calibration=calibration))
