"""Graded checks end to end: a test body that returns a score in [0, 1], on scripted ``fake:`` models.

The README's graded snippet is a ```py block, run here on fake models and
checked with ruff (tests/plugin/test_readme.py runs the ```python ones on
the tiny model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from pytest_quantgate.report.json_report import SCHEMA_FILE

from .fakes import gate_args, model, read_report, statuses, table_rows
from .test_readme import needs_ruff, ruff_check

REPO = Path(__file__).resolve().parents[2]
N = 60

GRADED_SUITE = f"""
import pytest
from pytest_quantgate import quant_case, quant_slice

CASES = [pytest.param(f"q{{i}}", f"alpha beta {{i}}", id=f"g-{{i}}") for i in range({N})]


@quant_slice("graded")
@quant_case("prompt, expected", CASES, max_new_tokens=20)
def test_graded(prompt, expected, output):
    want = expected.split()
    got = output.split()
    return sum(word in got for word in want) / len(want)
"""


def replies(lost: Iterable[int] = ()) -> dict[str, str]:
    """Every even case answered in full (score 1), every odd one in part (2/3); ``lost`` cases wrong (0)."""
    lost = set(lost)
    return {
        f"q{i}": "wrong" if i in lost else (f"alpha beta {i}" if i % 2 == 0 else f"alpha {i}")
        for i in range(N)
    }


@pytest.mark.parametrize(
    ("lost", "verdict", "ret"),
    [
        pytest.param((), "PASS", 0, id="identical"),
        pytest.param(range(0, 40, 2), "REGRESSED", 1, id="damaged"),
    ],
)
def test_graded_slice_is_gated_on_mean_scores(
    pytester: pytest.Pytester, lost: Iterable[int], verdict: str, ret: int
) -> None:
    pytester.makepyfile(test_suite=GRADED_SUITE)
    ref = model(pytester, "ref", replies())
    cand = model(pytester, "cand", replies(lost))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "--quant-tolerance=0.1")
    out = result.stdout.str()
    assert result.ret == ret, out
    assert table_rows(out, "cand") == {"graded*": verdict, "ALL*": verdict}
    assert "*: graded (the checks returned scores)" in out
    data = read_report(report)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    (row, total) = data["candidates"][0]["slices"]
    assert row["graded"] is True and total["graded"] is True
    ref_mean = (N // 2 * 1.0 + N // 2 * 2 / 3) / N
    assert row["ref_accuracy"] == pytest.approx(ref_mean)
    lost_score = len(set(lost))  # every lost case was an even one, worth 1.0
    assert row["cand_accuracy"] == pytest.approx(ref_mean - lost_score / N)
    assert row["drop"] == pytest.approx(lost_score / N)
    assert row["regressions"] == lost_score and row["improvements"] == 0
    assert row["verdict"] == verdict
    # Each model's outcome carries its score; full marks pass, less fails.
    case = next(c for c in data["cases"] if c["key"].endswith("g-1]") or "g-1]" in c["nodeid"])
    assert case["outcomes"]["ref"]["score"] == pytest.approx(2 / 3)
    assert case["outcomes"]["ref"]["outcome"] == "fail"


@pytest.mark.parametrize("value", ["2.0", "float('nan')", "-0.5"])
def test_a_score_outside_zero_one_is_an_error_of_the_case(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(
        f"""
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["q0", "q1"], max_new_tokens=20)
        def test_scored(prompt, output):
            return {value} if prompt == "q0" else 0.5
        """
    )
    same = {"q0": "a", "q1": "b"}
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", same), model(pytester, "cand", same)), f"--quant-report={report}"
    )
    assert result.ret == 1
    data = read_report(report)
    assert list(statuses(data, "cand").values()).count("error") == 1
    shown = repr(eval(value))  # the literal written into the suite above
    result.stdout.fnmatch_lines(
        [
            "quantgate: case error in *test_scored[[]q0[]]*",
            f"*→ the check returned {shown}: a graded score must be a number in [[]0, 1[]]",
        ]
    )


def readme_snippet() -> tuple[str, str]:
    """The ```py block of the README's "Graded checks": (where it is saved, its text)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Graded checks") :]
    (block,) = re.findall(r"```py\n(.*?)```", section[: section.index("\n### ", 1)], flags=re.S)
    first = block.splitlines()[0]
    assert first.startswith("# ") and first.endswith(".py")
    return first[2:], block


def test_the_readme_snippet_runs(pytester: pytest.Pytester) -> None:
    path, text = readme_snippet()
    (pytester.path / path).write_text(text)
    prompt = "Mission and year of the first Moon landing:"
    ref = model(pytester, "ref", {prompt: "Apollo 11 1969"})
    cand = model(pytester, "cand", {prompt: "Apollo 1969"})
    report = pytester.path / "gate.json"
    result = pytester.runpytest(path, *gate_args(ref, cand), f"--quant-report={report}")
    out = result.stdout.str()
    assert result.ret == 0, out
    (case,) = read_report(report)["cases"]
    assert case["outcomes"]["ref"]["score"] == 1.0
    assert case["outcomes"]["cand"]["score"] == pytest.approx(2 / 3)
    assert table_rows(out, "cand") == {"extraction*": "INCONCLUSIVE", "ALL*": "INCONCLUSIVE"}


@needs_ruff
def test_the_readme_snippet_passes_ruff() -> None:
    path, text = readme_snippet()
    result = ruff_check(path, text)
    assert result.returncode == 0, result.stdout + result.stderr
