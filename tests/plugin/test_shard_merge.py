"""Shards on many machines, one gate (issue 21): ``--quant-shard``, ``--quant-records``, ``--quant-merge``.

Three pytester runs stand for three machines of a CI job matrix; a fourth
merges their records. The merged gate must be the unsharded run's: the
paired statistics see every discordant pair, not per-shard aggregates.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .fakes import XDIST_MODES, Slice, answers, cases, gate_args, model, read_report, suite_source

ARITH = cases("arith", 30)
RECALL = cases("recall", 12)
SUITE = suite_source(Slice("arith", ARITH), Slice("recall", RECALL, max_new_tokens=4)) + (
    "\n\ndef test_plain():\n    assert True\n"
)
#: Facts that differ from run to run, or from machine to machine, whatever the gate.
TIMING = {"load_seconds", "generate_seconds", "tokens_per_second", "pid"}


def _models(pytester: pytest.Pytester) -> list[str]:
    replies = {**answers(ARITH), **answers(RECALL)}
    wrong = {**answers(ARITH, wrong=range(12)), **answers(RECALL, wrong=[0])}
    return gate_args(model(pytester, "ref", replies), model(pytester, "q", wrong))


def _without(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def _shards(
    pytester: pytest.Pytester, args: list[str], count: int, records: Path, mode: tuple[str, ...] = ()
) -> None:
    for k in range(1, count + 1):
        result = pytester.runpytest(*args, *mode, f"--quant-shard={k}/{count}", f"--quant-records={records}")
        assert result.ret == 0, result.stdout.str()  # a shard gates nothing: the merge does
        result.stdout.fnmatch_lines([f"quantgate: shard {k}/{count}: * case records written to *"])


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_merged_shards_gate_as_the_unsharded_run(pytester: pytest.Pytester, mode: str) -> None:
    """The shards run without xdist, or each on two workers; the merge runs alone."""
    if mode != "no-xdist":
        pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=SUITE)
    args = _models(pytester)
    report = pytester.path / "gate.json"
    reports = [f"--quant-report={report}", "--quant-markdown=gate.md", "--quant-html=gate.html"]
    whole = pytester.runpytest(*args, "-p", "no:randomly", *reports)
    assert whole.ret == 1, whole.stdout.str()
    expected = read_report(report)
    for written in (report, pytester.path / "gate.md", pytester.path / "gate.html"):
        written.unlink()

    records = pytester.path / "records"
    _shards(pytester, args, 3, records, tuple(XDIST_MODES[mode]))
    files = sorted(p.name for p in records.iterdir())
    assert files == ["shard-1-of-3.json", "shard-2-of-3.json", "shard-3-of-3.json"]
    per_shard = [len(json.loads((records / f).read_text())["records"]) for f in files]
    assert sum(per_shard) == len(ARITH) + len(RECALL) and all(per_shard)

    merged = pytester.runpytest(
        *args,
        "-p",
        "no:randomly",
        "--quant-merge",
        str(records),
        *reports,
        "--junitxml=gate.xml",
    )
    assert merged.ret == 1, merged.stdout.str()  # the gate's exit status
    merged.stdout.fnmatch_lines(["*quantgate: q *", "*REGRESSED*"])
    # A merge runs no test: only the gate's own tests count (q's load, arith, recall, ALL).
    merged.assert_outcomes(failed=2, passed=2)
    got = read_report(report)
    # A merged run's selection: the suite's collected cases, the sum of the shards' selections,
    # the sum of their checked and skipped cases; each model loaded once per machine (per worker
    # under xdist).
    assert got["selection"]["collected"] == got["selection"]["selected"] == len(ARITH) + len(RECALL)
    assert got["models"]["ref"]["loads"] >= 3
    # The other reports, the gate's JUnit rows among them, come from the merged records too.
    assert "REGRESSED" in (pytester.path / "gate.md").read_text()
    assert "REGRESSED" in (pytester.path / "gate.html").read_text()
    junit = ET.parse(pytester.path / "gate.xml").getroot()
    rows = {tc.get("name"): tc.find("failure") is not None for tc in junit.iter("testcase")}
    assert rows == {"load": False, "arith": True, "recall": False, "ALL": True}
    ignore = TIMING | {"loads"}
    assert _without(got, ignore) == _without(expected, ignore)


def _write_shards(pytester: pytest.Pytester, count: int = 3) -> tuple[list[str], Path]:
    pytester.makepyfile(test_suite=SUITE)
    args = _models(pytester)
    records = pytester.path / "records"
    _shards(pytester, args, count, records)
    return args, records


def test_a_missing_shard_is_refused(pytester: pytest.Pytester) -> None:
    args, records = _write_shards(pytester)
    (records / "shard-2-of-3.json").unlink()
    result = pytester.runpytest(*args, "--quant-merge", str(records))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*quantgate: --quant-merge: shard 2/3 missing (found 2 of 3)"])


def test_a_duplicated_shard_is_refused(pytester: pytest.Pytester) -> None:
    args, records = _write_shards(pytester)
    again = pytester.path / "again"
    again.mkdir()
    (again / "shard-3-of-3.json").write_text((records / "shard-3-of-3.json").read_text())
    result = pytester.runpytest(*args, "--quant-merge", str(records), str(again))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*quantgate: --quant-merge: shard 3/3 given twice (*shard-3-of-3.json and *)"]
    )


def test_a_shard_of_another_suite_is_refused(pytester: pytest.Pytester) -> None:
    args, records = _write_shards(pytester)
    # The third machine ran another version of the suite: one case fewer.
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", ARITH[:-1]), Slice("recall", RECALL, max_new_tokens=4))
    )
    result = pytester.runpytest(*args, "--quant-shard=3/3", f"--quant-records={records}")
    assert result.ret == 0, result.stdout.str()
    result = pytester.runpytest(*args, "--quant-merge", str(records))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*quantgate: --quant-merge: shard 3/3 (*) is foreign: another suite *"])


def test_a_shard_gated_otherwise_is_refused(pytester: pytest.Pytester) -> None:
    args, records = _write_shards(pytester, count=2)
    result = pytester.runpytest(*args, "--quant-merge", str(records), "--quant-tolerance=0.05")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*shard 1/2 (*) is foreign: other gate settings (tolerance) than this merge's"]
    )
