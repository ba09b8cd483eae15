"""What the terminal shows (issue 17, item 5), with ``pytester`` on scripted ``fake:`` models.

Regressed ids stay whole at 80 columns; a regressed trajectory leads with
the step where the paths parted; the summary line counts the gate's own
tests, as JUnit does; a check that raises names its line; and loading a real
model prints none of its libraries' import noise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .fakes import (
    XDIST_MODES,
    Slice,
    answers,
    cases,
    gate_args,
    model,
    read_report,
    suite_source,
    summary_counts,
)

REPO = Path(__file__).resolve().parents[2]


def _block(lines: list[str], nodeid: str) -> list[str]:
    """The lines of a regressed case's block in the summary: its ``R`` line and those under it."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  R {nodeid}"))
    rest = lines[start + 1 :]
    end = next((i for i, line in enumerate(rest) if not line.startswith("      ")), len(rest))
    return [lines[start], *rest[:end]]


# -- ids -----------------------------------------------------------------------

LONG_IDS = """
import pytest
from pytest_quantgate import quant_case, quant_slice

CASES = [
    pytest.param("n 1: 1+2=", "3", id="numeric-d596a1eed07a4b1c"),
    pytest.param("n 2: 2+3=", "5", id="numeric-0f3e9b2c51d7a8e6"),
    pytest.param("n 3: 3+4=", "7", id="numeric-77aa01c3e5f9b2d4"),
]


@quant_slice("numeric")
@quant_case("prompt, expected", CASES, max_new_tokens=4, critical=True)
def test_every_decision_follows_the_rules_of_the_ledger(prompt, expected, output):
    assert output == expected
"""


def test_regressed_ids_are_whole_at_80_columns(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    pytester.makepyfile(test_transactions_ledger=LONG_IDS)
    ref = model(pytester, "ref", {"n 1: 1+2=": "3", "n 2: 2+3=": "5", "n 3: 3+4=": "7"})
    cand = model(pytester, "q", {"n 1: 1+2=": "4", "n 2: 2+3=": "6", "n 3: 3+4=": "7"})
    result = pytester.runpytest(*gate_args(ref, cand), "-p", "no:cacheprovider", "-p", "no:xdist")
    lines = result.stdout.lines
    test = "test_transactions_ledger.py::test_every_decision_follows_the_rules_of_the_ledger"
    for case in ("numeric-d596a1eed07a4b1c", "numeric-0f3e9b2c51d7a8e6"):
        nodeid = f"{test}[{case}]"
        assert len(f"  R {nodeid}") > 80  # the case this is about: an id wider than the terminal
        block = _block(lines, nodeid)
        # Whole, on one line that can be copied; the tag that no longer fits goes below it.
        assert block[:2] == [f"  R {nodeid}", "      [critical]"], block
    assert not any("…" in line for line in lines if line.startswith("  R "))
    # Every other line of the section still fits.
    section = lines[next(i for i, line in enumerate(lines) if "quantgate: q " in line) :]
    assert all(len(line) <= 80 for line in section if not line.startswith(("  R ", "FAILED ")))


# -- a regressed trajectory ------------------------------------------------------

WALK = """
from pytest_quantgate import Trajectory, quant_case, quant_slice


class Walk(Trajectory):
    '''Three steps; each reply is appended to the text the model is shown next.'''

    max_steps = 3

    def __init__(self, start):
        self.start = start

    def initial_state(self):
        return {"text": self.start, "got": []}

    def render(self, state):
        return state["text"]

    def apply(self, state, reply):
        return {"text": state["text"] + " " + reply, "got": state["got"] + [reply]}

    def done(self, state):
        return len(state["got"]) == 3


@quant_slice("walk")
@quant_case("case, expected", [(Walk("go"), ["a1", "b2", "ok"])], prompt="case", max_new_tokens=3)
def test_walk(case, expected, final_state):
    assert final_state["got"] == expected
"""


def test_a_regressed_trajectory_leads_with_the_step_where_the_paths_parted(pytester: pytest.Pytester) -> None:
    """The first prompt and the final replies are the same on both paths: the block shows step 2."""
    pytester.makepyfile(test_walk=WALK)
    ref = model(pytester, "ref", {"go": "a1", "go a1": "b2", "go a1 b2": "ok"})
    cand = model(pytester, "q", {"go": "a1", "go a1": "b9", "go a1 b9": "ok"})
    result = pytester.runpytest(*gate_args(ref, cand), "-p", "no:xdist")
    assert summary_counts(result)["regressed"] == 1
    assert _block(result.stdout.lines, "test_walk.py::test_walk") == [
        "  R test_walk.py::test_walk[case0-expected0]",
        "      parted at step 2 of 3:",
        "      prompt    'go a1'",
        "      ref       'b2'",
        "      q         'b9'",
        '      expected  ["a1", "b2", "ok"]',
        "      final outputs:",
        "      ref       'ok'",
        "      q         'ok'",
    ]


# -- the summary line ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_the_summary_line_counts_the_gate_tests_as_junit_does(pytester: pytest.Pytester, mode: str) -> None:
    arith = cases("arith", 60)
    pytester.makepyfile(test_suite=suite_source(Slice("arith", arith)))
    ref, cand = model(pytester, "ref", answers(arith)), model(pytester, "q", answers(arith, wrong=range(20)))
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(*gate_args(ref, cand), f"--junitxml={junit}", *XDIST_MODES[mode])
    # 60 cases, and the gate's tests: the candidate's load (passed), its arith and ALL rows (failed).
    assert summary_counts(result) == {"passed": 41, "regressed": 20, "failed": 2}, result.stdout.lines[-1]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert sum(summary_counts(result).values()) == int(suite.get("tests", -1)) == 63


# -- where a check raised --------------------------------------------------------

TOTALS = """
from pytest_quantgate import quant_case


def fields(text):
    return dict(part.split("=") for part in text.split(","))


@quant_case("prompt, expected", [("sum 1 2", "3")], max_new_tokens=8)
def test_totals(prompt, expected, output):
    got = fields(output)
    assert got["total"] == expected  # the line named
"""


def test_a_check_that_raises_names_its_line_in_the_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_totals=TOTALS)
    line = TOTALS.lstrip("\n").splitlines().index('    assert got["total"] == expected  # the line named') + 1
    report = pytester.path / "gate.json"
    ref, cand = model(pytester, "ref", {"sum 1 2": "total=3"}), model(pytester, "q", {"sum 1 2": "sum=3"})
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}", "-p", "no:xdist")
    message = f"KeyError: 'total' (test_totals.py:{line})"
    (case,) = read_report(report)["cases"]
    assert case["outcomes"]["q"]["message"] == message
    result.stdout.fnmatch_lines([f"*→ {message}"])


# -- library noise ---------------------------------------------------------------

LOAD = textwrap.dedent(
    """
    import sys
    from pytest_quantgate.backends.hf import HFBackend
    from pytest_quantgate.values.specs import parse_spec

    backend = HFBackend.load(parse_spec(sys.argv[1]), "cpu", "auto")
    print("loaded", *backend.library_messages, sep="\\n")
    """
)


def test_loading_a_real_model_prints_none_of_its_libraries_import_noise(tiny_ref: Path) -> None:
    """torchao's ``Failed to load ...so``, torch's ``register_constant`` and bitsandbytes' kernels line.

    In a process of its own: those libraries log only the first time they are imported.
    """
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, f"bnb-nf4:{tiny_ref}"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "loaded"
    for noise in ("Failed to load", "register_constant", "kernels-community", "triton"):
        assert noise not in done.stderr and noise not in done.stdout, done.stderr
