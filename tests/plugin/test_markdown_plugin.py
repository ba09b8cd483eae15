"""The Markdown report reaches the CI job's summary page ($GITHUB_STEP_SUMMARY) and --quant-markdown;
the cost of each model is measured when asked, and only then."""

from __future__ import annotations

import pytest

from .fakes import LOG, Slice, answers, cases, gate_args, log_entries, model, read_report, suite_source

ARITH = cases("arith", 60)


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_a_run_appends_its_markdown_to_the_step_summary(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "n2":
        pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    summary = pytester.path / "summary.md"
    summary.write_text("## build\nok\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report = pytester.path / "gate.json"
    args = gate_args(
        model(pytester, "ref", answers(ARITH)), model(pytester, "cand", answers(ARITH, wrong=range(20)))
    )
    result = pytester.runpytest(*args, f"--quant-report={report}", *(["-n", "2"] if mode == "n2" else []))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = summary.read_text()
    assert text.startswith("## build\nok\n") and text.count("## quantgate") == 1
    (row,) = [r for r in read_report(report)["candidates"][0]["slices"] if r["slice"] == "arith"]
    assert f"cand: REGRESSED on arith ({-100 * row['drop']:+.1f} pts, p = " in text
    assert text.count("<details>") == 20


def test_quant_markdown_writes_the_report_whole(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    out = pytester.path / "out" / "gate.md"
    args = gate_args(model(pytester, "ref", answers(ARITH)), model(pytester, "cand", answers(ARITH)))
    for _ in range(2):  # written whole each time, not appended
        assert pytester.runpytest(*args, f"--quant-markdown={out}").ret == pytest.ExitCode.OK
    text = out.read_text()
    assert text.count("## quantgate") == 1 and "| arith | 60 |" in text and "<details>" not in text


def test_a_markdown_path_that_cannot_be_written_stops_before_loading(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    pytester.mkdir("dir")
    result = pytester.runpytest(*gate_args(model(pytester, "ref", answers(ARITH))), "--quant-markdown=dir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: quantgate: --quant-markdown must name a file, but */dir is a directory"]
    )


def test_cost_is_measured_only_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    report = pytester.path / "gate.json"
    args = gate_args(model(pytester, "ref", answers(ARITH)), model(pytester, "cand", answers(ARITH)))
    plain = pytester.runpytest(*args, f"--quant-report={report}")
    batches = [line for line in log_entries(pytester.path / LOG) if line.get("event") == "batch"]
    assert read_report(report)["cost"] == [] and "quantgate: cost" not in plain.stdout.str()
    asked = pytester.runpytest(*args, f"--quant-report={report}", "--quant-cost")
    cost = read_report(report)["cost"]
    assert [r["label"] for r in cost] == ["ref", "cand"]
    assert all(r["tokens_per_second"] > 0 and r["latency_p95"] >= r["latency_p50"] for r in cost)
    asked.stdout.fnmatch_lines(["*= quantgate: cost =*"])
    # Measuring ran batches of its own, after the quality run's.
    assert len([e for e in log_entries(pytester.path / LOG) if e.get("event") == "batch"]) > 2 * len(batches)
