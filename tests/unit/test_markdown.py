"""The Markdown report: the JSON's numbers, a headline per candidate, and under GitHub's 1 MiB."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pytest_quantgate.core.config import GateConfig
from pytest_quantgate.core.records import CaseRecord, ModelOutcome
from pytest_quantgate.report import json_report, markdown
from pytest_quantgate.report.aggregator import Aggregator
from pytest_quantgate.report.model import GateReport
from pytest_quantgate.storage.store import CacheMode
from pytest_quantgate.values.specs import parse_spec


def _report(cases: int, *, wrong_every: int = 4) -> GateReport:
    config = GateConfig(
        reference=parse_spec("ref=/m", check_path=False),
        candidates=(
            parse_spec("bad=rtn2:/m", check_path=False),
            parse_spec("good=rtn8:/m", check_path=False),
        ),
        cache_mode=CacheMode.OFF,
    )
    aggregator = Aggregator(config)
    for i in range(cases):
        bad_fails = i % 2 == 1 and (i // 2) % wrong_every == 0
        aggregator.add(
            CaseRecord(
                key=f"k{i}",
                nodeid=f"t.py::test[{i}]",
                slices=("arith",) if i % 2 else ("recall",),
                cluster=None,
                critical=False,
                reference="ref",
                outcomes={
                    "ref": ModelOutcome("pass", str(i)),
                    "bad": ModelOutcome("fail" if bad_fails else "pass", "?" if bad_fails else str(i)),
                    "good": ModelOutcome("pass", str(i)),
                },
                prompt=f"{i}+1=",
                params={"expected": str(i + 1), "store": {"a": i}},
            )
        )
    return aggregator.report()


def _table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The cells of the slice table under ``heading``, by slice."""
    block = text.split(heading, 1)[1].split("\n\n", 2)[1]
    rows = [line.strip("|").split(" | ") for line in block.splitlines()[2:]]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_the_numbers_are_the_json_reports(tmp_path: Path) -> None:
    report = _report(200)
    text = markdown.render(report)
    data = json_report.to_dict(report)
    for gate in data["candidates"]:
        rows = _table_rows(text, f"### {gate['display']} vs reference ref: {gate['verdict']}")
        for row in gate["slices"]:
            cells = rows[row["slice"]]
            assert int(cells[1]) == row["n"]
            assert (
                cells[2] == f"{100 * row['ref_accuracy']:.1f}%"
                and cells[3] == f"{100 * row['cand_accuracy']:.1f}%"
            )
            assert float(cells[4]) == round(-100 * row["drop"], 1)
            assert float(cells[6]) == 100 * row["tolerance"]
            assert cells[8].strip("*") == row["verdict"]
    # The headline of a regressed candidate names each regressed row with its change and p.
    bad = next(g for g in data["candidates"] if g["label"] == "bad")
    arith = next(r for r in bad["slices"] if r["slice"] == "arith")
    assert f"bad: REGRESSED on arith ({round(-100 * arith['drop'], 1):+.1f} pts, p = " in text
    assert "good: " in text and "### All candidates" in text


def test_regressed_cases_are_details_with_both_outputs() -> None:
    text = markdown.render(_report(40))
    blocks = re.findall(r"<details>.*?</details>", text, flags=re.S)
    assert len(blocks) == 5  # cases 1, 9, 17, 25, 33: every fourth odd (arith) case
    assert "<code>t.py::test[1]</code>" in blocks[0]
    assert (
        "<b>ref</b> (reference, pass)<pre>1</pre>" in blocks[0]
        and "<b>bad</b> (candidate, fail)<pre>?</pre>" in blocks[0]
    )
    assert "<code>{&quot;a&quot;: 1}</code>" not in blocks[0]  # arguments as the JSON shows them, escaped
    assert "<b>store</b> <code>{&#x27;a&#x27;: 1}</code>" in blocks[0]


def test_5000_regressed_cases_stay_under_a_mebibyte_and_say_what_was_cut(tmp_path: Path) -> None:
    report = _report(20_000, wrong_every=1)
    assert len(report.candidates[0].regressed) >= 5000
    text = markdown.render(report, json_path=tmp_path / "gate.json")
    size = len(text.encode())
    assert size < markdown.MAX_BYTES < 2**20
    shown = text.count("<details>")
    assert 0 < shown < len(report.candidates[0].regressed)
    left = len(report.candidates[0].regressed) - shown
    assert f"_{left} of {len(report.candidates[0].regressed)} regressed cases left out" in text
    assert str(tmp_path / "gate.json") in text


def test_append_adds_to_a_step_summary_and_keeps_the_whole_under_the_limit(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("## an earlier step\n" + "x" * 600_000 + "\n")
    markdown.append(_report(20_000, wrong_every=1), summary)
    text = summary.read_text()
    assert text.startswith("## an earlier step") and "## quantgate" in text
    assert len(text.encode()) < markdown.MAX_BYTES
    json.dumps(text)  # plain text, nothing binary
