"""``--quant-ppl-*`` end to end on scripted models (issue 19): computed once, after the quality run,
in the process that reports; reported in the terminal, Markdown and JSON; gated by its margin."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.fake import FakeBackend
from pytest_quantgate.core.perplexity import Corpus, compare, measure
from pytest_quantgate.report import json_report
from pytest_quantgate.values.specs import parse_spec

from .fakes import LOG, XDIST_MODES, Slice, answers, cases, gate_args, log_entries, read_report, suite_source

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "ppl_corpus.txt"
ARITH = cases("arith", 20)
WORSE = {"scale": 1.1, "noise": 0.3}


def _model(
    pytester: pytest.Pytester, label: str, perplexity: dict[str, Any] | None = None, **extra: Any
) -> str:
    """A script answering every case right, with a perplexity model; its spec."""
    script: dict[str, Any] = {"replies": answers(ARITH), "log": LOG, **extra}
    if perplexity is not None:
        script["perplexity"] = perplexity
    path = pytester.path / f"{label}.json"
    path.write_text(json.dumps(script))
    return f"{label}=fake:{path}"


def _run(
    pytester: pytest.Pytester, cand: dict[str, Any] | None, *args: str, **extra: Any
) -> pytest.RunResult:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    models = gate_args(_model(pytester, "ref", {}), _model(pytester, "cand", cand, **extra))
    return pytester.runpytest(*models, f"--quant-report={pytester.path / 'gate.json'}", *args)


def _validate(report: dict[str, Any]) -> None:
    """The report against the JSON Schema the package ships."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(json_report.SCHEMA_FILE.read_text())
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)


def _expected_ratio(tmp_path: Path, cand: dict[str, Any]) -> float:
    """The ratio straight from the core, without the plugin (the same scripts)."""
    runs = []
    for label, model in (("ref", {}), ("cand", cand)):
        script = tmp_path / f"direct-{label}.json"
        script.write_text(json.dumps({"perplexity": model}))
        backend = FakeBackend.load(parse_spec(f"{label}=fake:{script}"), "cpu", "auto")
        runs.append(measure(backend, Corpus.read(CORPUS), max_length=64, stride=32, dtype="auto"))
    paired = compare(runs[0], runs[1]).paired
    assert paired is not None
    return paired.ratio


@pytest.mark.parametrize("mode", XDIST_MODES.values(), ids=list(XDIST_MODES))
def test_a_worse_candidate_fails_the_run_and_perplexity_is_computed_once(
    pytester: pytest.Pytester, tmp_path: Path, mode: list[str]
) -> None:
    result = _run(
        pytester,
        WORSE,
        *mode,
        f"--quant-ppl-corpus={CORPUS}",
        "--quant-ppl-max-length=64",
        "--quant-ppl-stride=32",
        "--quant-ppl-tolerance=0.02",
    )
    assert result.ret == 1  # the slices are INCONCLUSIVE (no flip): perplexity alone fails the run
    result.stdout.fnmatch_lines(
        [
            "*quantgate: perplexity (ppl_corpus.txt)*",
            "model*tokens*PPL*bits/byte*ratio*bounds*bpb ratio*verdict",  # ln ratio, corr: too wide
            "ref *1,811 * reference",
            "cand *1,811 *REGRESSED",
            "protocol * (ref, cand): windows of 64 tokens, stride 32, prefix",
            "  [[]1114112[]] (BOS) in every window; 1,811 of 1,811 tokens scored, 1,811 bytes;",
            "*cand: perplexity REGRESSED: ratio 1.* [[]1.*, 1.*[]], margin 1.02",
        ]
    )
    report = read_report(pytester.path / "gate.json")
    assert report["failed"] is True
    _validate(report)
    section = report["perplexity"]
    cand = section["candidates"][0]
    assert cand["verdict"] == "REGRESSED" and cand["not_compared"] is None
    assert cand["ratio"]["ratio"] == pytest.approx(_expected_ratio(tmp_path, WORSE), rel=1e-12)
    assert cand["ratio"]["ratio_lower"] > 1.02
    ref = section["models"][0]
    assert (
        ref["protocol"]["stride"] == 32
        and ref["fingerprint"] == report["models"]["ref"]["perplexity"]["fingerprint"]
    )
    assert len(report["models"]["ref"]["perplexity"]["windows"]["nll"]) == cand["ratio"]["windows"]
    # Once per model, whatever the number of workers: every window scored once.
    scored: Counter[str] = Counter()
    for entry in log_entries(pytester.path / LOG):
        if entry.get("event") == "windows":
            scored[entry["model"]] += entry["size"]
    assert scored == {"ref": cand["ratio"]["windows"], "cand": cand["ratio"]["windows"]}


def test_the_same_model_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "140")  # wide enough for every column
    result = _run(
        pytester, {}, "-p", "no:xdist", f"--quant-ppl-corpus={CORPUS}", "--quant-ppl-tolerance=0.02"
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "model*tokens*PPL*bits/byte*ratio*bounds*ln ratio*corr*bpb ratio*verdict",
            "cand *1.0000 *[[]1.0000, 1.0000[]] *+0.00000 *1.0000 *1.0000 *PASS",
        ]
    )
    report = read_report(pytester.path / "gate.json")
    assert report["perplexity"]["candidates"][0]["verdict"] == "PASS"
    assert report["failed"] is False


def test_without_a_margin_perplexity_is_information(pytester: pytest.Pytester) -> None:
    result = _run(pytester, WORSE, "-p", "no:xdist", f"--quant-ppl-corpus={CORPUS}")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["cand *1,811 *1.* —", "information only: --quant-ppl-tolerance gates the ratio"]
    )
    assert read_report(pytester.path / "gate.json")["perplexity"]["candidates"][0]["verdict"] is None


def test_without_the_option_nothing_is_scored_or_reported(pytester: pytest.Pytester) -> None:
    result = _run(pytester, WORSE, "-p", "no:xdist", f"--quant-markdown={pytester.path / 'gate.md'}")
    assert result.ret == 0
    assert "perplexity" not in result.stdout.str()
    report = read_report(pytester.path / "gate.json")
    assert "perplexity" not in report and "perplexity" not in report["config"]
    assert not any(e.get("event") == "windows" for e in log_entries(pytester.path / LOG))
    assert "Perplexity" not in (pytester.path / "gate.md").read_text()


def test_a_tokenizer_change_is_compared_per_byte_only(pytester: pytest.Pytester) -> None:
    args = ["-p", "no:xdist", f"--quant-ppl-corpus={CORPUS}", "--quant-ppl-tolerance=0.02"]
    result = _run(pytester, {"tokenizer": "bytes"}, *args, f"--quant-markdown={pytester.path / 'gate.md'}")
    assert result.ret == 0  # INCONCLUSIVE: no paired interval across tokenizers
    result.stdout.fnmatch_lines(
        [
            "cand *refused *INCONCLUSIVE",
            "cand: token ratio refused: cand's tokenizer is not ref's: its windows hold other",
            "  tokens, so the token perplexities are not comparable; compare bits per byte",
        ]
    )
    _validate(read_report(pytester.path / "gate.json"))
    markdown = (pytester.path / "gate.md").read_text()
    assert "### Perplexity (ppl_corpus.txt)" in markdown and "| cand |" in markdown
    strict = _run(pytester, {"tokenizer": "bytes"}, *args, "--quant-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["cand: perplexity INCONCLUSIVE (--quant-strict): bits per byte ratio *"])


def test_a_candidate_that_cannot_be_scored_fails_a_margin(pytester: pytest.Pytester) -> None:
    args = ["-p", "no:xdist", f"--quant-ppl-corpus={CORPUS}", "--quant-ppl-max-length=64"]
    result = _run(pytester, {}, *args, "--quant-ppl-tolerance=0.02", context=40)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "cand        —      —  * not measured",
            "cand: not compared: not measured: cand: --quant-ppl-max-length 64 exceeds its",
            "  context (40 tokens)",
            "cand: perplexity not gated: not measured: cand: --quant-ppl-max-length 64*",
        ]
    )
    _validate(read_report(pytester.path / "gate.json"))
    assert _run(pytester, {}, *args, context=40).ret == 0  # without a margin: reported, not failed


def test_a_bad_option_stops_the_run_in_one_line(pytester: pytest.Pytester) -> None:
    result = _run(pytester, {}, "-p", "no:xdist", "--quant-ppl-stride=8")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*quantgate: --quant-ppl-stride needs --quant-ppl-corpus (or quant_ppl_corpus)"]
    )
