"""Executor, aggregator and reports without pytest's hooks or a real model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.base import BackendError
from pytest_quantgate.core.cases import CaseSpec
from pytest_quantgate.core.config import GateConfig
from pytest_quantgate.core.executor import Executor, ReferenceUnavailable
from pytest_quantgate.core.records import CaseRecord, ModelOutcome
from pytest_quantgate.report import json_report, terminal
from pytest_quantgate.report.aggregator import Aggregator
from pytest_quantgate.storage.store import CacheMode
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import parse_spec

from .test_runner_cases import ScriptedBackend


@pytest.fixture
def config(tmp_path: Path) -> GateConfig:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return GateConfig(
        reference=parse_spec(f"ref={d}"),
        candidates=(parse_spec(f"bad=rtn2:{d}"), parse_spec(f"broken=bnb-nf4:{d}")),
        report_path=tmp_path / "out" / "gate.json",
        cache_mode=CacheMode.OFF,
    )


def _loader(spec: Any, device: str, dtype: str) -> ScriptedBackend:
    if spec.label == "broken":
        raise BackendError("bitsandbytes is not installed")
    replies = {f"{i}+1=": str(i + 1) for i in range(40)}
    if spec.label == "bad":  # wrong on every third case
        replies = {p: (a if i % 3 else "x") for i, (p, a) in enumerate(replies.items())}
    return ScriptedBackend(replies, label=spec.label)


def _output(executor: Executor, label: str, key: str) -> str:
    run = executor.run_of(label, key)
    assert run is not None
    return run.output


def test_generates_once_per_model_and_reports_load_errors(config: GateConfig) -> None:
    lines: list[str] = []
    executor = Executor(config, emit=lines.append, loader=_loader)
    gs = GenerationSettings(max_new_tokens=3)
    for i in range(40):
        executor.plan(CaseSpec(key=f"k{i}", nodeid=f"t.py::test[{i}]", prompt=f"{i}+1=", settings=gs))
    assert _output(executor, "ref", "k5") == "6"
    assert _output(executor, "bad", "k0") == "x"
    # A candidate that cannot be loaded has no runs; its error is kept once, whole.
    assert executor.run_of("broken", "k1") is None and executor.run_of("broken", "k2") is None
    assert executor.unavailable == {"broken": "bitsandbytes is not installed"}
    assert sum("loading" in line for line in lines) == 3  # each model once
    assert lines.count("quantgate: could not load broken: bitsandbytes is not installed") == 1
    assert any("40 cases generated" in line for line in lines)


def test_a_reference_that_cannot_load_stops_before_any_candidate(config: GateConfig) -> None:
    loaded: list[str] = []

    def loader(spec: Any, device: str, dtype: str) -> ScriptedBackend:
        loaded.append(spec.label)
        if spec.label == "ref":
            raise BackendError("truncated weights\nsecond line of the cause")
        return _loader(spec, device, dtype)

    executor = Executor(config, loader=loader)
    case = CaseSpec(key="k1", nodeid="t.py::test[1]", prompt="1+1=", settings=GenerationSettings())
    executor.plan(case)
    for _ in range(2):  # and it is tried once
        with pytest.raises(ReferenceUnavailable, match="truncated weights\nsecond line"):
            executor.record(case, lambda run: ("pass", None))
    assert loaded == ["ref"]


def test_each_group_is_generated_at_its_first_case(config: GateConfig) -> None:
    made: dict[str, ScriptedBackend] = {}

    def loader(spec: Any, device: str, dtype: str) -> ScriptedBackend:
        made[spec.label] = made.get(spec.label) or _loader(spec, device, dtype)
        return made[spec.label]

    executor = Executor(config, loader=loader)
    gs = GenerationSettings(max_new_tokens=3)
    for i in range(6):
        case = CaseSpec(key=f"k{i}", nodeid=f"t.py::test[{i}]", prompt=f"{i}+1=", settings=gs)
        executor.plan(case, group="even" if i % 2 == 0 else "odd")
    assert not executor.is_generated("k0") and not made
    assert _output(executor, "ref", "k2") == "3"
    # Only the even group was generated, in one batch per model.
    assert made["ref"].batches == [["0+1=", "2+1=", "4+1="]]
    assert executor.is_generated("k4") and not executor.is_generated("k1")
    assert _output(executor, "bad", "k1") == "2"
    assert made["ref"].batches[1:] == [["1+1=", "3+1=", "5+1="]]
    # A case planned twice keeps its first group.
    executor.plan(CaseSpec(key="k0", nodeid="t.py::test[0]", prompt="0+1=", settings=gs), group="odd")
    assert _output(executor, "ref", "k0") == "1" and len(made["ref"].batches) == 2


def test_record_checks_every_model_and_marks_load_errors(config: GateConfig) -> None:
    executor = Executor(config, loader=_loader)
    case = CaseSpec(
        key="k3", nodeid="t.py::test[3]", prompt="3+1=", settings=GenerationSettings(), critical=True
    )
    executor.plan(case)
    record = executor.record(case, lambda run: ("pass", None) if run.output == "4" else ("fail", "wrong"))
    assert record.outcomes["ref"].outcome == "pass"
    assert record.outcomes["bad"].outcome == "fail" and record.outcomes["bad"].output == "x"
    # The candidate that did not load is not an error of the case: it has no outcome.
    assert "broken" not in record.outcomes
    assert record.unavailable == {"broken": "bitsandbytes is not installed"}
    assert record.worst.value == "regressed" and record.fails_test  # critical
    assert record.prompt == "3+1=" and CaseRecord.from_json(record.to_json()) == record


def _record(i: int, bad_pass: bool) -> CaseRecord:
    return CaseRecord(
        key=f"k{i}",
        nodeid=f"t.py::test[{i}]",
        slices=("arith",) if i % 2 else ("recall",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes={
            "ref": ModelOutcome("pass", str(i)),
            "bad": ModelOutcome("pass" if bad_pass else "fail", str(i) if bad_pass else "?"),
        },
        unavailable={"broken": "bitsandbytes is not installed\nsecond line"},
        prompt=f"{i}+1=",
        params={"expected": str(i + 1)},
    )


def test_gate_terminal_and_json_agree(config: GateConfig) -> None:
    aggregator = Aggregator(config)
    empty = aggregator.report()  # nothing to gate yet: a report all the same, which says so
    assert not empty.has_results and not empty.tests and not empty.complete
    for i in range(200):
        # Every odd (arith) case with i % 4 == 1 regresses: 50 of 100 arith cases.
        aggregator.add(_record(i, bad_pass=i % 4 != 1))
    report = aggregator.report()
    bad, broken = report.candidates
    rows = {r.slice: r for r in bad.rows}
    assert rows["arith"].verdict.value == "REGRESSED" and rows["arith"].regressions == 50
    assert rows["recall"].verdict.value in ("PASS", "INCONCLUSIVE")
    # The candidate that could not be loaded is not evaluated: no rows, its whole error.
    assert not broken.evaluated and broken.rows == () and broken.verdict is None
    assert broken.not_evaluated == "bitsandbytes is not installed\nsecond line"
    # The gate's tests: each candidate's load, then its rows; those that fail the run are
    # the regressed rows and the load that failed (and INCONCLUSIVE rows under strict).
    assert [t.nodeid for t in report.tests] == [
        "::quantgate::bad::load",
        "::quantgate::bad::recall",
        "::quantgate::bad::arith",
        "::quantgate::bad::ALL",
        "::quantgate::broken::load",
    ]
    assert {f.test.nodeid for f in report.failures if f.test} == {
        "::quantgate::bad::arith",
        "::quantgate::bad::ALL",
        "::quantgate::broken::load",
    }
    # The report lists why the run fails, each reason once, in a line.
    assert [(f.kind.value, f.message) for f in report.failures] == [
        ("row", "bad: slice 'arith' REGRESSED"),
        ("row", "bad: ALL REGRESSED"),
        ("not evaluated", "broken: not evaluated: bitsandbytes is not installed"),
    ]
    assert report.failed and not aggregator.report(interrupted=True).tests
    # A model that did not load: the report is not complete.
    assert not report.complete and report.models["broken"]["load_error"].startswith("bitsandbytes")
    strict = Aggregator(replace(config, strict=True))
    for record in aggregator.records:
        strict.add(record)
    strict_failures = {
        f.test.name for f in strict.report().failures if f.test and f.test.candidate.label == "bad"
    }
    assert strict_failures == {"arith", "ALL"} | set(bad.inconclusive)

    text = "\n".join(
        "".join(seg for seg, _ in line) if not isinstance(line, terminal.Sep) else line.title
        for line in terminal.summary(report)
    )
    assert "quantgate: bad (rtn2:m) vs reference ref: REGRESSED" in text
    assert "quantgate: broken (bnb-nf4:m): NOT EVALUATED" in text
    assert f"broken (bnb-nf4:m) could not be loaded from {config.candidates[1].path}:" in text
    assert "  bitsandbytes is not installed\n  second line" in text
    assert "... and 40 more" in text
    # Each regressed case once, with its prompt, arguments and both outputs.
    assert "  R t.py::test[1]\n      prompt    '1+1='\n      expected  '2'\n      ref       '1'\n" in text

    assert config.report_path is not None
    json_report.write(report, config.report_path)
    data = json.loads(config.report_path.read_text())
    assert data["schema_version"] == json_report.SCHEMA_VERSION and not data["complete"]
    assert data["candidates"][1] == {**data["candidates"][1], "evaluated": False, "verdict": None}
    assert {m["role"] for m in data["models"].values()} == {"reference", "candidate"}
    json_rows = {r["slice"]: r for r in data["candidates"][0]["slices"]}
    assert json_rows["arith"]["regressions"] == 50 and json_rows["ALL"]["is_total"]
    assert len(data["cases"]) == 200
    (arith,) = (t for t in report.tests if t.nodeid == "::quantgate::bad::arith")
    failure = "\n".join(terminal.gate_test_lines(report, arith))
    assert (
        "slice 'arith' of candidate bad" in failure
        and "50 regressed, " in failure
        and "see the quantgate summary" in failure
    )
    assert "t.py::test[" not in failure  # the cases are listed once, in the summary


def test_stricter_marker_tolerance_wins(config: GateConfig) -> None:
    aggregator = Aggregator(config)
    for i in range(4):
        rec = _record(i, bad_pass=True)
        tol = {"arith": 0.0} if i == 1 else {"arith": 0.1}
        aggregator.add(replace(rec, tolerances=tol))
    report = aggregator.report()
    rows = {r.slice: r for r in report.candidates[0].rows}
    assert rows["arith"].tolerance == 0.0 and rows["recall"].tolerance == config.tolerance
