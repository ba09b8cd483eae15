"""Executor, aggregator and reports without pytest's hooks or a real model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.aggregator import Aggregator
from pytest_quantgate.backends.base import BackendError
from pytest_quantgate.cases import CaseRecord, CaseSpec, GenerationSettings, ModelOutcome
from pytest_quantgate.config import GateConfig
from pytest_quantgate.executor import Executor
from pytest_quantgate.report import json_report, terminal
from pytest_quantgate.specs import parse_spec

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
    )


def _loader(spec: Any, device: str, dtype: str) -> ScriptedBackend:
    if spec.label == "broken":
        raise BackendError("bitsandbytes is not installed")
    replies = {f"{i}+1=": str(i + 1) for i in range(40)}
    if spec.label == "bad":  # wrong on every third case
        replies = {p: (a if i % 3 else "x") for i, (p, a) in enumerate(replies.items())}
    return ScriptedBackend(replies, label=spec.label)


def test_generates_once_per_model_and_reports_load_errors(config: GateConfig) -> None:
    lines: list[str] = []
    executor = Executor(config, emit=lines.append, loader=_loader)
    gs = GenerationSettings(max_new_tokens=3)
    for i in range(40):
        executor.plan(CaseSpec(key=f"k{i}", nodeid=f"t.py::test[{i}]", prompt=f"{i}+1=", settings=gs))
    assert executor.run_of("ref", "k5").output == "6"
    assert executor.run_of("bad", "k0").output == "x"
    broken = executor.run_of("broken", "k1")
    assert broken.error and "bitsandbytes is not installed" in broken.error
    assert sum("loading" in line for line in lines) == 3  # each model once
    assert any("40 cases generated" in line for line in lines)


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
    assert executor.run_of("ref", "k2").output == "3"
    # Only the even group was generated, in one batch per model.
    assert made["ref"].batches == [["0+1=", "2+1=", "4+1="]]
    assert executor.is_generated("k4") and not executor.is_generated("k1")
    assert executor.run_of("bad", "k1").output == "2"
    assert made["ref"].batches[1:] == [["1+1=", "3+1=", "5+1="]]
    # A case planned twice keeps its first group.
    executor.plan(CaseSpec(key="k0", nodeid="t.py::test[0]", prompt="0+1=", settings=gs), group="odd")
    assert executor.run_of("ref", "k0").output == "1" and len(made["ref"].batches) == 2


def test_record_checks_every_model_and_marks_load_errors(config: GateConfig) -> None:
    executor = Executor(config, loader=_loader)
    case = CaseSpec(
        key="k3", nodeid="t.py::test[3]", prompt="3+1=", settings=GenerationSettings(), critical=True
    )
    executor.plan(case)
    record = executor.record(case, lambda output: ("pass", None) if output == "4" else ("fail", "wrong"))
    assert record.outcomes["ref"].outcome == "pass"
    assert record.outcomes["bad"].outcome == "fail" and record.outcomes["bad"].output == "x"
    assert record.outcomes["broken"].outcome == "error"
    assert record.worst.value == "error" and record.fails_test


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
            "broken": ModelOutcome("error", "", "model broken failed to load"),
        },
    )


def test_gate_terminal_and_json_agree(config: GateConfig) -> None:
    aggregator = Aggregator(config)
    assert aggregator.report() is None  # nothing to gate yet
    for i in range(200):
        # Every odd (arith) case with i % 4 == 1 regresses: 50 of 100 arith cases.
        aggregator.add(_record(i, bad_pass=i % 4 != 1))
    report = aggregator.report()
    assert report is not None
    bad, broken = report.candidates
    rows = {r.slice: r for r in bad.rows}
    assert rows["arith"].verdict.value == "REGRESSED" and rows["arith"].regressions == 50
    assert rows["recall"].verdict.value in ("PASS", "INCONCLUSIVE")
    assert broken.errors == 200 and all(r.n == 0 for r in broken.rows)
    # The rows that fail the run: the regressed ones, and INCONCLUSIVE under strict.
    assert {(c.label, r.slice) for c, r in report.failures} == {("bad", "arith"), ("bad", "ALL")}
    assert report.failed and not aggregator.report(complete=False).failures  # type: ignore[union-attr]
    strict = Aggregator(replace(config, strict=True))
    for record in aggregator.records:
        strict.add(record)
    strict_report = strict.report()
    assert strict_report is not None
    assert {(c.label, r.slice) for c, r in strict_report.failures} >= {("broken", "ALL"), ("bad", "arith")}

    text = "\n".join(
        "".join(seg for seg, _ in line) if not isinstance(line, terminal.Sep) else line.title
        for line in terminal.summary(report)
    )
    assert "quantgate: bad (rtn2:m) vs reference ref: REGRESSED" in text
    assert "200 case(s) with errors are left out" in text
    assert "... and 40 more" in text

    assert config.report_path is not None
    json_report.write(report, config.report_path)
    data = json.loads(config.report_path.read_text())
    assert data["schema_version"] == json_report.SCHEMA_VERSION and data["complete"]
    assert {m["role"] for m in data["models"].values()} == {"reference", "candidate"}
    json_rows = {r["slice"]: r for r in data["candidates"][0]["slices"]}
    assert json_rows["arith"]["regressions"] == 50 and json_rows["ALL"]["is_total"]
    assert len(data["cases"]) == 200
    failure = "\n".join(terminal.row_failure_lines(bad, rows["arith"]))
    assert "slice 'arith' of candidate bad" in failure and "50 regressed" in failure


def test_stricter_marker_tolerance_wins(config: GateConfig) -> None:
    aggregator = Aggregator(config)
    for i in range(4):
        rec = _record(i, bad_pass=True)
        tol = {"arith": 0.0} if i == 1 else {"arith": 0.1}
        aggregator.add(replace(rec, tolerances=tol))
    report = aggregator.report()
    assert report is not None
    rows = {r.slice: r for r in report.candidates[0].rows}
    assert rows["arith"].tolerance == 0.0 and rows["recall"].tolerance == config.tolerance
