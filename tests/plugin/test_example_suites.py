"""The three multi-step example suites, run with ``pytester`` on the shipped tiny agent.

Each suite's files (test module, environment, data) are copied into the
pytester directory with the first rows of each data file only, so that the
runs stay within a few seconds; the models are given on the command line
instead of the suite's ``pytest.ini``. What is checked is the issue's
promise: an identical candidate never regresses; the damaged candidate
regresses on the long-horizon slice; the JSON report carries each model's
final states and transcripts, and where a regressed case's path parted from
the reference's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .fakes import table_rows

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "example_suites"
TINY_AGENT = REPO / "models" / "tiny-agent"
# The suites' damaged candidate (see their pytest.ini).
DAMAGED = "rtn2g64"


@pytest.fixture(scope="module")
def tiny_agent() -> Path:
    """The shipped tiny agent checkpoint (built by tools/build_agent_model.py)."""
    assert (TINY_AGENT / "config.json").is_file(), "run tools/build_agent_model.py first"
    return TINY_AGENT


def copy_suite(pytester: pytest.Pytester, name: str, rows: dict[str, int]) -> None:
    """The suite's modules, and the first ``rows[slice]`` cases of each of its data files."""
    src = SUITES / name
    for module in src.glob("*.py"):
        shutil.copy(module, pytester.path / module.name)
    (pytester.path / "data").mkdir()
    for data in (src / "data").glob("*.jsonl"):
        lines = data.read_text().splitlines()[: rows[data.stem]]
        (pytester.path / "data" / data.name).write_text("\n".join(lines) + "\n")


def run(pytester: pytest.Pytester, tiny_agent: Path, *candidates: str) -> tuple[pytest.RunResult, Any]:
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        f"--quant-reference=agent={tiny_agent}",
        *(f"--quant-candidate={c}" for c in candidates),
        f"--quant-report={report}",
        "--quant-batch-size=128",
        "-p",
        "no:xdist",
    )
    return result, json.loads(report.read_text())


@pytest.mark.parametrize(
    ("suite", "rows"),
    [
        ("workflow", {"short": 10, "long": 10, "constraint-retention": 10}),
        ("transactions", {"numeric": 10, "temporal": 10}),
        ("structured-output", {"flat": 10, "nested": 10}),
    ],
)
def test_an_identical_candidate_never_regresses(
    pytester: pytest.Pytester, tiny_agent: Path, suite: str, rows: dict[str, int]
) -> None:
    copy_suite(pytester, suite, rows)
    result, data = run(pytester, tiny_agent, f"same={tiny_agent}")
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "REGRESSED" not in out
    assert set(table_rows(out, "same")) == {*rows, "ALL"}
    (cand,) = data["candidates"]
    assert all(row["regressions"] == row["improvements"] == 0 for row in cand["slices"])
    assert len(data["cases"]) == sum(rows.values())
    for case in data["cases"]:
        ref, same = case["outcomes"]["agent"], case["outcomes"]["same"]
        assert same["transcript"] == ref["transcript"]
        if suite != "structured-output":
            assert case["trajectory"] is True and case["divergence"] == {"same": None}
            assert same["final_state"] == ref["final_state"]


def test_the_damaged_candidate_regresses_on_the_long_horizon(
    pytester: pytest.Pytester, tiny_agent: Path
) -> None:
    copy_suite(pytester, "workflow", {"short": 1, "long": 150, "constraint-retention": 1})
    result, data = run(pytester, tiny_agent, f"damaged={DAMAGED}:{tiny_agent}")
    out = result.stdout.str()
    assert result.ret == 1, out
    assert table_rows(out, "damaged")["long"] == "REGRESSED", out
    result.stdout.fnmatch_lines(["*FAILED ::quantgate::damaged::long*"])

    long_row = next(r for r in data["candidates"][0]["slices"] if r["slice"] == "long")
    cases = [c for c in data["cases"] if c["slices"] == ["long"]]
    regressed = [c for c in cases if c["status"]["damaged"] == "regressed"]
    assert len(regressed) == long_row["regressions"] >= 5
    for case in regressed:
        ref, damaged = case["outcomes"]["agent"], case["outcomes"]["damaged"]
        assert ref["outcome"] == "pass" and damaged["outcome"] == "fail"
        # Final states: the environment's, per model; the damaged model's is not the reference's.
        assert set(ref["final_state"]) == {"history", "store", "denied"}
        assert damaged["final_state"]["store"] != ref["final_state"]["store"]
        # Transcripts: one turn per step, the prompt rendered from the state before it.
        steps = len(ref["transcript"])
        assert steps in (6, 7)
        assert ref["transcript"][0]["prompt"].startswith("cap ")
        assert [t["reply"] for t in ref["transcript"]] == [a for _, a in ref["final_state"]["history"]]
        # The divergence: the first step whose reply differs, with both replies.
        div = case["divergence"]["damaged"]
        assert 1 <= div["step"] <= steps
        i = div["step"] - 1
        assert div["reference"] == ref["transcript"][i]["reply"] != div["candidate"]
        assert [t["reply"] for t in damaged["transcript"][:i]] == [t["reply"] for t in ref["transcript"][:i]]
