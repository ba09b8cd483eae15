"""Spec strings and option validation: pure functions, known answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quantgate.backends.registry import resolve_loader
from pytest_quantgate.core.config import (
    ConfigError,
    GateConfig,
    parse_alpha,
    parse_batch_size,
    parse_device,
    parse_dtype,
    parse_slice_tolerances,
    parse_tolerance,
)
from pytest_quantgate.values.specs import HF_LOADER, SCHEMES, Scheme, SpecError, find_scheme, parse_spec


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
        ("bnb-nf4:{d}", "bnb-nf4", "bnb-nf4", {}),
        ("bnb-int8:{d}", "bnb-int8", "bnb-int8", {}),
        ("torchao-int4:{d}", "torchao-int4", "torchao-int4", {}),
        ("nf4=bnb-nf4:{d}", "nf4", "bnb-nf4", {}),
        ("ref=  {d}", "ref", None, {}),
        ("rtn2:{d}", "rtn2", "rtn2", {"bits": 2, "group_size": 32}),
        ("rtn2g128:{d}", "rtn2g128", "rtn2g128", {"bits": 2, "group_size": 128}),
        ("damaged=rtn3g64:{d}", "damaged", "rtn3g64", {"bits": 3, "group_size": 64}),
    ],
)
def test_parse_spec(model_dir: Path, text: str, label: str, scheme: str | None, options: dict) -> None:
    spec = parse_spec(text.format(d=model_dir))
    assert (spec.label, spec.scheme, spec.options) == (label, scheme, options)
    assert spec.path == str(model_dir.resolve())


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("{d}", "tiny-ref"),
        ("rtn2g128:{d}", "rtn2g128:tiny-ref"),
        ("nf4=bnb-nf4:{d}", "nf4 (bnb-nf4:tiny-ref)"),
        ("ref={d}", "ref (tiny-ref)"),
    ],
)
def test_automatic_labels_are_short_and_not_repeated_in_headings(
    model_dir: Path, text: str, display: str
) -> None:
    assert parse_spec(text.format(d=model_dir)).display == display


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
        # A ?query on a scheme without options is part of the path; that path missing, the query is named.
        ("bnb-nf4:{d}?bits=4", r"^scheme bnb-nf4 takes no \?options \('bits=4' in model spec"),
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Issue 17: these once said "model directory not found: .../tiny-ref?bitz=4".
        (
            "rtn2g128:tiny-ref?bitz=4",
            r"^scheme rtn2g128 takes no \?options \('bitz=4' in model spec 'rtn2g128:tiny-ref\?bitz=4'; "
            r"rtn's options are in its name: rtn<bits 1-8>\[g<group>\]\)$",
        ),
        ("fake:ref.json?seed=1", r"^scheme fake takes no \?options \('seed=1' in model spec"),
        (
            "tiny-ref?bits=4",
            r"^a model spec without a scheme takes no \?options \('bits=4' in model spec 'tiny-ref\?bits=4', "
            r"and no directory .*tiny-ref\?bits=4 exists\)$",
        ),
        (
            "BNB-NF4:tiny-ref",
            r"^unknown scheme 'BNB-NF4' in model spec 'BNB-NF4:tiny-ref' \(did you mean 'bnb-nf4'\?\)$",
        ),
        ("nf4=bnb_nf4:tiny-ref", r"^unknown scheme 'bnb_nf4' in .* \(did you mean 'bnb-nf4'\?\)$"),
        ("RTN2G64:tiny-ref", r"\(did you mean 'rtn2g64'\?\)$"),
        ("Gptq:tiny-ref?bits=4", r"^unknown scheme 'Gptq' .*\(did you mean 'gptq'\?\)$"),
        # Lower-case prefixes are schemes by the grammar: a close one is suggested...
        (
            "bnb-nf5:tiny-ref",
            r"^unknown scheme 'bnb-nf5' in model spec 'bnb-nf5:tiny-ref' \(did you mean 'bnb-nf4'\? "
            r"a relative path containing ':' is written ./PATH\)$",
        ),
        ("rtn9:tiny-ref", r"\(did you mean 'rtn<bits 1-8>\[g<group>\]'\?"),
        # ...and without one, the known schemes are listed.
        ("onnx-q4:tiny-ref", r"^unknown scheme 'onnx-q4' .*\(known: bnb-nf4, bnb-int8, .*; a relative path"),
        ("gguf-q4:tiny-ref", r"^unknown scheme 'gguf-q4' .*\(did you mean 'gguf'\?"),
        (
            "gptq:tiny-ref?bitz=4",
            r"^option 'bitz=4' is not one of bits, group_size, sym, desc_act in model spec "
            r"'gptq:tiny-ref\?bitz=4' \(did you mean 'bits'\?\)$",
        ),
        ("awq:tiny-ref?colour=red", r"^option 'colour=red' is not one of bits, group_size, sym in .*'$"),
    ],
)
def test_a_slip_in_a_spec_is_named_with_its_close_match(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(model_dir.parent)
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


def test_what_only_looks_like_a_slip_is_a_path_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slip is named only where the target it leaves does not exist: real paths keep working."""
    monkeypatch.chdir(tmp_path)
    for name in ("BNB-NF4:weights", "runs?lr=3e-4", "Gptq_v2:x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert parse_spec("BNB-NF4:weights").path == str(tmp_path / "BNB-NF4:weights")
    assert parse_spec("runs?lr=3e-4").label == "runs?lr=3e-4"
    spec = parse_spec("rtn2:runs?lr=3e-4")  # a scheme without options: the ? is the path's
    assert (spec.path, spec.options) == (str(tmp_path / "runs?lr=3e-4"), {"bits": 2, "group_size": 32})
    assert parse_spec("Gptq_v2:x").scheme is None
    # A prefix with capitals far from every scheme is just a path that is not there.
    with pytest.raises(SpecError, match=r"^model directory not found: .*Models:x"):
        parse_spec("Models:x")
    # Without the filesystem nothing is guessed.
    assert parse_spec("BNB-NF4:nowhere", check_path=False).scheme is None


def test_schemes_choose_backends_and_targets(tmp_path: Path) -> None:
    script = tmp_path / "ref.json"
    script.write_text("{}")
    spec = parse_spec(f"fake:{script}")
    assert spec.kind.loader == "pytest_quantgate.backends.fake:FakeBackend.load" and spec.label == "fake"
    assert parse_spec(f"rtn3:{script.parent}", check_path=False).kind.name == "rtn"
    assert find_scheme("rtn4g64") == (SCHEMES["rtn"], {"bits": 4, "group_size": 64})
    assert find_scheme(None)[0].loader == HF_LOADER


@pytest.mark.parametrize(
    ("spec", "quantizer", "load_config", "transform", "device"),
    [
        ("PATH", None, None, None, True),
        ("bnb-nf4:PATH", None, "bnb_nf4", None, True),
        ("bnb-int8:PATH", None, "bnb_int8", None, True),
        ("torchao-int8:PATH", None, "torchao_int8", None, True),
        ("torchao-int4:PATH", None, "torchao_int4", None, True),
        ("rtn2g64:PATH", None, None, "rtn_quantize_", True),
        ("gptq:PATH", "gptq", None, None, True),
        ("awq:PATH", "awq", None, None, True),
        ("fake:PATH", None, None, None, False),
    ],
)
def test_a_scheme_carries_its_behaviour(
    spec: str, quantizer: str | None, load_config: str | None, transform: str | None, device: bool
) -> None:
    """What each built-in scheme does is resolved once, in parse_spec: nobody compares its name."""
    kind = parse_spec(spec, check_path=False).kind
    assert kind.quantizer == quantizer and kind.needs_calibration == (quantizer is not None)
    assert (kind.load_config or ":").rsplit(":", 1)[1] == (load_config or "")
    assert (kind.transform or ":").rsplit(":", 1)[1] == (transform or "")
    assert kind.device is device
    for path in (kind.load_config, kind.transform, kind.loader):
        if path is not None:  # every function named exists (its module imports no model library)
            assert callable(resolve_loader(path))


def test_a_registered_scheme_takes_urls_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        SCHEMES,
        "myapi",
        Scheme("myapi", "an endpoint", loader="mypkg:load", target="url", options=("bits", "sym")),
    )
    spec = parse_spec("srv=myapi:http://localhost:8000/v1?bits=4&sym=true")
    assert (spec.label, spec.path, spec.options) == (
        "srv",
        "http://localhost:8000/v1",
        {"bits": 4, "sym": True},
    )
    assert spec.kind.loader == "mypkg:load" and spec.display == "srv (myapi:http://localhost:8000/v1)"
    assert parse_spec("myapi:https://h/x").label == "myapi"
    with pytest.raises(SpecError, match="'group=3' is not one of bits, sym"):
        parse_spec("myapi:http://h?group=3")


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0.0), ("0.02", 0.02), (0.999, 0.999), ("1e-2", 0.01), (" 0.5 ", 0.5)]
)
def test_parse_tolerance(value: str, expected: float) -> None:
    assert parse_tolerance(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-0.1", r"must be a number in \[0, 1\), got -0.1$"),
        # 1 is outside the range the gate takes: rejected here, not after all generation.
        ("1", r"got 1 \(a fraction"),
        (1, r"got 1 \(a fraction"),
        ("2", "a fraction"),
        ("x", "a number"),
        ("nan", "a number"),
    ],
)
def test_parse_tolerance_errors(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tolerance(value)


@pytest.mark.parametrize("value", [0.0, 0.02, 0.5, 0.999, 1.0, 2.0, -0.01])
def test_one_tolerance_rule_for_flags_ini_markers_and_the_gate(value: float) -> None:
    """The option, the ini table and the slice marker accept exactly what the gate accepts."""
    from pytest_quantgate.core.markers import parse_slice_marker
    from pytest_quantgate.statistics.gate import GateSettings

    try:
        GateSettings(tolerance=value)
        gate_ok = True
    except ValueError:
        gate_ok = False
    checks = (
        lambda: parse_tolerance(str(value)),
        lambda: parse_slice_tolerances([f"arith = {value}"]),
        lambda: parse_slice_marker(("arith",), {"tolerance": value}),
    )
    for check in checks:
        try:
            check()
            ok = True
        except ValueError:
            ok = False
        assert ok == gate_ok, (check, value)


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
        ({"quant_reference": "tiny-ref", "quant_tolerance": "5"}, r"^--quant-tolerance must .*\[0, 1\)"),
        ({"quant_reference": "nowhere"}, "model directory not found"),
        (
            {"quant_reference": "tiny-ref", "quant_candidate": ["rtn2:tiny-ref", "rtn2:tiny-ref"]},
            "two candidates are labelled 'rtn2': name them with LABEL=SPEC",
        ),
        ({"quant_reference": "tiny-ref", "quant_report": "."}, "--quant-report must name a file, but .* is"),
        (
            {"quant_reference": "tiny-ref", "quant_report": "tiny-ref/config.json/gate.json"},
            "--quant-report: cannot write .*: .*config.json is not a directory",
        ),
    ],
)
def test_config_errors(model_dir: Path, cli: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(model_dir, cli)


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        # The message names where the value came from: the ini key, not a flag that was never given.
        ({"quant_tolerance": "1"}, r"^quant_tolerance must be a number in \[0, 1\), got 1"),
        ({"quant_alpha": "0.9"}, r"^quant_alpha must be in"),
        ({"quant_batch_size": "x"}, r"^quant_batch_size must be an integer"),
        ({"quant_device": "tpu"}, r"^quant_device must be"),
        ({"quant_dtype": "int4"}, r"^quant_dtype must be"),
        ({"quant_report": "."}, r"^quant_report must name a file"),
        ({"quant_slice_tolerance": ["arith = 1.5"]}, r"^quant_slice_tolerance: tolerance of slice 'arith'"),
        ({"quant_slice_tolerance": ["ALL = 0.1"]}, r"^quant_slice_tolerance: the ALL row takes"),
    ],
)
def test_config_errors_name_the_ini_key(model_dir: Path, ini: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(model_dir, {"quant_reference": "tiny-ref"}, ini)


def test_a_second_reference_flag_is_an_error_not_a_silent_override(model_dir: Path) -> None:
    """Issue 17: tiny-ref was gated against tiny-agent, given last, and "improved"."""
    (model_dir.parent / "tiny-agent").mkdir()
    (model_dir.parent / "tiny-agent" / "config.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"^--quant-reference given twice \('tiny-ref' and 'tiny-agent'\): give one"
    ):
        _config(model_dir, {"quant_reference": ["tiny-ref", "tiny-agent"]})
    with pytest.raises(ConfigError, match=r"^--quant-reference given 3 times \('a', 'b' and 'c'\)"):
        _config(model_dir, {"quant_reference": ["a", "b", "c"]})
    # One flag and an ini value: the flag wins, as before.
    cfg = _config(model_dir, {"quant_reference": ["tiny-agent"]}, {"quant_reference": "tiny-ref"})
    assert cfg.reference is not None and cfg.reference.label == "tiny-agent"
    # An empty flag leaves the ini value, as before.
    cfg = _config(model_dir, {"quant_reference": [""]}, {"quant_reference": "tiny-ref"})
    assert cfg.reference is not None and cfg.reference.label == "tiny-ref"


@pytest.mark.parametrize(("ini", "required"), [({}, False), ({"quant_require_reference": True}, True)])
def test_require_reference_is_read_from_the_ini(model_dir: Path, ini: dict, required: bool) -> None:
    cfg = _config(model_dir, {}, ini)
    assert cfg.require_reference is required
    with pytest.raises(ConfigError, match=r"^quant_require_reference must be true or false"):
        _config(model_dir, {}, {"quant_require_reference": "maybe"})


def test_candidates_from_the_ini_without_a_reference_are_an_error(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^quant_candidate given without --quant-reference"):
        _config(model_dir, {}, {"quant_candidate": ["rtn2:tiny-ref"]})


def test_report_path_resolves_and_may_be_created(model_dir: Path) -> None:
    cfg = _config(model_dir, {"quant_reference": "tiny-ref", "quant_report": "out/sub/gate.json"})
    assert cfg.report_path == (model_dir.parent / "out" / "sub" / "gate.json").resolve()


def test_device_without_torch_support_is_a_usage_error(model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    # One more CUDA device than this machine has: an error on every machine.
    device = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=f"^--quant-device: device {device} was asked for, but torch sees"):
        _config(model_dir, {"quant_reference": "tiny-ref", "quant_device": device})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            _config(model_dir, {"quant_reference": "tiny-ref", "quant_device": "cuda"})
    # A model that does not go through torch does not need the device.
    script = model_dir.parent / "ref.json"
    script.write_text("{}")
    assert _config(model_dir, {"quant_reference": "fake:ref.json", "quant_device": device}).device == device


def test_disabled_without_reference(model_dir: Path) -> None:
    assert not _config(model_dir, {}).enabled


def test_config_shard_options(model_dir: Path) -> None:
    """Issue 21: --quant-shard/--quant-records/--quant-merge, resolved once; not in to_dict."""
    ref = {"quant_reference": "tiny-ref"}
    plain = _config(model_dir, ref)
    cfg = _config(model_dir, {**ref, "quant_records": "out"}, {"quant_shard": "2/3"})
    assert (cfg.shard, cfg.records_dir) == ((2, 3), (model_dir.parent / "out").resolve())
    assert cfg.to_dict() == plain.to_dict() and not cfg.merging
    assert cfg.gate_settings() == {"tolerance": 0.02, "alpha": 0.05, "slice_tolerances": {}, "strict": False}
    with pytest.raises(ConfigError, match=r"^--quant-records needs --quant-shard=K/N"):
        _config(model_dir, {**ref, "quant_records": "out"})
    with pytest.raises(ConfigError, match=r"^quant_shard must be K/N with 1 <= K <= N, got '0/3'$"):
        _config(model_dir, ref, {"quant_shard": "0/3"})
    merge = _config(model_dir, {"quant_reference": "elsewhere/ref", "quant_merge": ["a", "b"]})
    assert merge.merging and merge.merge_dirs == tuple((model_dir.parent / d).resolve() for d in "ab")
    with pytest.raises(ConfigError, match=r"^--quant-merge needs the shards' --quant-reference"):
        _config(model_dir, {"quant_merge": ["a"]})
    with pytest.raises(ConfigError, match=r"^--quant-merge gates the shards' records: give it without"):
        _config(model_dir, {**ref, "quant_merge": ["a"], "quant_shard": "1/2"})
