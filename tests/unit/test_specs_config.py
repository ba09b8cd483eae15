"""Spec strings and option validation: pure functions, known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quantgate.config import (
    ConfigError,
    GateConfig,
    parse_alpha,
    parse_batch_size,
    parse_device,
    parse_dtype,
    parse_slice_tolerances,
    parse_tolerance,
)
from pytest_quantgate.specs import SCHEMES, Scheme, SpecError, find_scheme, parse_spec


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tiny-ref"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


@pytest.mark.parametrize(
    ("text", "label", "scheme", "options"),
    [
        ("{d}", "tiny-ref", None, {}),
        ("bnb-nf4:{d}", "bnb-nf4-tiny-ref", "bnb-nf4", {}),
        ("bnb-int8:{d}", "bnb-int8-tiny-ref", "bnb-int8", {}),
        ("torchao-int4:{d}", "torchao-int4-tiny-ref", "torchao-int4", {}),
        ("nf4=bnb-nf4:{d}", "nf4", "bnb-nf4", {}),
        ("ref=  {d}", "ref", None, {}),
        ("rtn2:{d}", "rtn2-tiny-ref", "rtn2", {"bits": 2, "group_size": 32}),
        ("damaged=rtn3g64:{d}", "damaged", "rtn3g64", {"bits": 3, "group_size": 64}),
    ],
)
def test_parse_spec(model_dir: Path, text: str, label: str, scheme: str | None, options: dict) -> None:
    spec = parse_spec(text.format(d=model_dir))
    assert (spec.label, spec.scheme, spec.options) == (label, scheme, options)
    assert spec.path == str(model_dir.resolve())


def test_relative_path_resolves_against_base(model_dir: Path) -> None:
    spec = parse_spec("bnb-nf4:tiny-ref", base_dir=model_dir.parent)
    assert spec.path == str(model_dir.resolve())


def test_path_with_equals_sign_is_a_path(tmp_path: Path) -> None:
    d = tmp_path / "runs" / "lr=3e-4"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    spec = parse_spec(str(d))
    assert spec.label == "lr=3e-4" and spec.path == str(d.resolve())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty model spec"),
        ("{d}/missing", "model directory not found"),
        ("gguf-q4:{d}", "unknown scheme 'gguf-q4'"),
        ("rtn9:{d}", "unknown scheme 'rtn9'"),
        ("rtn2g0:{d}", "unknown scheme 'rtn2g0'"),
        ("fake:{d}", "file not found"),
        ("bnb-nf4:{d}?bits=4", "model directory not found"),
        ("{d}/config.json", "not a directory"),
        ("{empty}", "no config.json"),
        ("x=", "empty model spec"),
    ],
)
def test_parse_spec_errors(model_dir: Path, tmp_path: Path, text: str, message: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(text.format(d=model_dir, empty=empty))
    assert "\n" not in str(info.value)


def test_a_scheme_is_decided_by_the_grammar_not_the_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory whose name looks like a scheme prefix is still read as a scheme...
    odd = tmp_path / "bnb-nf4:weights"
    odd.mkdir()
    (odd / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="model directory not found"):
        parse_spec("bnb-nf4:weights")
    # ...and written as ./PATH it is a path.
    spec = parse_spec("./bnb-nf4:weights")
    assert spec.scheme is None and spec.path == str(odd.resolve())
    # A drive letter is never a scheme.
    assert parse_spec("C:/models/x", check_path=False).scheme is None


def test_schemes_choose_backends_and_targets(tmp_path: Path) -> None:
    script = tmp_path / "ref.json"
    script.write_text("{}")
    spec = parse_spec(f"fake:{script}")
    assert spec.kind.backend == "fake" and spec.label == "fake-ref.json"
    assert parse_spec(f"rtn3:{script.parent}", check_path=False).kind.name == "rtn"
    assert find_scheme("rtn4g64") == (SCHEMES["rtn"], {"bits": 4, "group_size": 64})
    assert find_scheme(None)[0].backend == "hf"


def test_a_registered_scheme_takes_urls_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        SCHEMES,
        "myapi",
        Scheme("myapi", "an endpoint", backend="myapi", target="url", options=("bits", "sym")),
    )
    spec = parse_spec("srv=myapi:http://localhost:8000/v1?bits=4&sym=true")
    assert (spec.label, spec.path, spec.options) == (
        "srv",
        "http://localhost:8000/v1",
        {"bits": 4, "sym": True},
    )
    assert spec.kind.backend == "myapi" and spec.display == "srv (myapi:http://localhost:8000/v1)"
    assert parse_spec("myapi:https://h/x").label == "myapi-h-x"
    with pytest.raises(SpecError, match="'group=3' is not one of bits, sym"):
        parse_spec("myapi:http://h?group=3")


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("0.02", 0.02), (1, 1.0), ("1e-2", 0.01)])
def test_parse_tolerance(value: str, expected: float) -> None:
    assert parse_tolerance(value) == expected


@pytest.mark.parametrize(
    ("value", "message"), [("-0.1", r"\[0, 1\]"), ("2", "a fraction"), ("x", "a number")]
)
def test_parse_tolerance_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tolerance(value)


def test_parse_small_options() -> None:
    assert parse_alpha("0.01") == 0.01
    assert parse_device("CUDA:1") == "cuda:1"
    assert parse_dtype("bf16") == "bfloat16"
    assert parse_batch_size("8") == 8
    assert parse_slice_tolerances(["arith = 0", "# comment", "", "recall: 0.05"]) == {
        "arith": 0.0,
        "recall": 0.05,
    }
    for bad in (
        lambda: parse_alpha("0"),
        lambda: parse_device("tpu"),
        lambda: parse_dtype("int8"),
        lambda: parse_batch_size("0"),
        lambda: parse_slice_tolerances(["arith"]),
    ):
        with pytest.raises(ConfigError):
            bad()


def _config(model_dir: Path, cli: dict, ini: dict | None = None) -> GateConfig:
    ini = ini or {}
    return GateConfig.from_sources(
        option=lambda name: cli.get(name),
        ini=lambda name: ini.get(name, [] if name in ("quant_candidate", "quant_slice_tolerance") else ""),
        cli_dir=model_dir.parent,
        ini_dir=model_dir.parent,
    )


def test_config_cli_wins_over_ini(model_dir: Path) -> None:
    cfg = _config(
        model_dir,
        {"quant_reference": "tiny-ref", "quant_tolerance": "0.05"},
        {"quant_tolerance": "0.01", "quant_candidate": ["nf4=bnb-nf4:tiny-ref"], "quant_strict": True},
    )
    assert cfg.enabled and cfg.tolerance == 0.05 and cfg.strict
    assert [c.label for c in cfg.candidates] == ["nf4"]
    assert cfg.tolerance_for("x") == 0.05 and cfg.tolerance_for("x", 0.0) == 0.0


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"quant_candidate": ["tiny-ref"]}, "without --quant-reference"),
        ({"quant_reference": "tiny-ref", "quant_candidate": ["tiny-ref"]}, "is the reference's"),
        (
            {"quant_reference": "tiny-ref", "quant_candidate": ["a=tiny-ref", "a=rtn2:tiny-ref"]},
            "two candidates",
        ),
        ({"quant_reference": "tiny-ref", "quant_tolerance": "5"}, r"\[0, 1\]"),
        ({"quant_reference": "nowhere"}, "model directory not found"),
    ],
)
def test_config_errors(model_dir: Path, cli: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(model_dir, cli)


def test_disabled_without_reference(model_dir: Path) -> None:
    assert not _config(model_dir, {}).enabled
