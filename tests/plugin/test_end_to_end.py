"""The plugin end to end with ``pytester``, on the tiny shipped models.

Each test writes a small suite into a temporary directory and runs pytest on
it in-process, the way pytest plugins test themselves; outcomes, exit codes,
the terminal table and the JSON report are read back.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

# The deliberately damaged candidate: 2-bit round-to-nearest, groups of 128.
DAMAGED = "rtn2g128"

SUITE = """
import json
from pathlib import Path

import pytest
from pytest_quantgate import quant_case, quant_slice

DATA = Path({data!r})


def cases(name, limit={limit}):
    rows = [json.loads(line) for line in (DATA / f"{{name}}.jsonl").read_text().splitlines() if line.strip()]
    return [pytest.param(r["prompt"], r["expected"], id=r["id"]) for r in rows[:limit]]


@quant_slice("recall")
@quant_case("prompt, expected", cases("recall"), max_new_tokens=4, stop="\\n")
def test_recall(prompt, expected, output):
    assert output.strip() == expected


@quant_slice("arith")
@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\\n")
def test_arith(prompt, expected, output):
    assert output.strip() == expected


@quant_slice("retention")
@quant_case("prompt, expected", cases("retention"), max_new_tokens=4, stop="\\n")
def test_retention(prompt, expected, output):
    assert output.strip() == expected
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, example_data: Path, tiny_ref: Path) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=60))
    return pytester


def _table_rows(stdout: str, candidate: str) -> dict[str, str]:
    """slice -> verdict, read from the terminal table of one candidate."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf"quantgate: {re.escape(candidate)} ", line))
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        m = re.match(r"^(\S+)\s+\d+\s.*\s(REGRESSED|PASS|INCONCLUSIVE|IMPROVED)\b", line)
        if m:
            rows[m.group(1)] = m.group(2)
        elif line.startswith(("Δ:", "=")):
            break
    return rows


def test_identical_candidate_passes(suite: pytest.Pytester, tiny_ref: Path) -> None:
    report = suite.path / "gate.json"
    result = suite.runpytest(
        f"--quant-reference={tiny_ref}",
        f"--quant-candidate=same={tiny_ref}",
        f"--quant-report={report}",
    )
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert "REGRESSED" not in out
    rows = _table_rows(out, "same")
    assert set(rows) == {"recall", "arith", "retention", "ALL"}
    assert set(rows.values()) <= {"PASS", "INCONCLUSIVE"}
    data = json.loads(report.read_text())
    assert data["schema"] == "pytest-quantgate/report" and data["schema_version"] == 1
    (cand,) = data["candidates"]
    for row in cand["slices"]:
        assert row["regressions"] == row["improvements"] == 0
        assert row["verdict"] == rows[row["slice"]]


def test_damaged_candidate_regresses(suite: pytest.Pytester, tiny_ref: Path) -> None:
    report = suite.path / "out" / "gate.json"
    result = suite.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=damaged={DAMAGED}:{tiny_ref}",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 1, out
    rows = _table_rows(out, "damaged")
    regressed = sorted(s for s, v in rows.items() if v == "REGRESSED" and s != "ALL")
    assert regressed, out
    # Each regressed slice is its own failed report, named for CI.
    for name in regressed:
        result.stdout.fnmatch_lines([f"*FAILED quantgate::damaged::{name}*"])
    # Per-case statuses are their own categories in the summary line.
    assert re.search(r"\d+ regressed", out.splitlines()[-1]), out.splitlines()[-1]

    data = json.loads(report.read_text())
    assert data["complete"] is True and data["failed"] is True
    assert set(data["models"]) == {"ref", "damaged"}
    assert data["models"]["damaged"]["quantization"]["bits"] == 2
    (cand,) = data["candidates"]
    assert cand["verdict"] == "REGRESSED"
    json_rows = {r["slice"]: r for r in cand["slices"]}
    assert {s: r["verdict"] for s, r in json_rows.items()} == rows
    # The per-case outcomes add up to the slice counts.
    for name, row in json_rows.items():
        cases = [c for c in data["cases"] if name == "ALL" or name in c["slices"]]
        assert row["n"] == len(cases)
        assert row["regressions"] == sum(c["status"]["damaged"] == "regressed" for c in cases)
        assert row["improvements"] == sum(c["status"]["damaged"] == "improved" for c in cases)
        ref_pass = sum(c["outcomes"]["ref"]["outcome"] == "pass" for c in cases)
        assert row["ref_accuracy"] == pytest.approx(ref_pass / len(cases))
    # The regressed cases are listed with both outputs.
    result.stdout.fnmatch_lines(
        ["regressed cases (*):", "  R test_suite.py::test_*", "      reference: *candidate: *"]
    )


def test_nf4_candidate_runs_through_bitsandbytes(suite: pytest.Pytester, tiny_ref: Path) -> None:
    pytest.importorskip("bitsandbytes")
    report = suite.path / "gate.json"
    result = suite.runpytest(
        f"--quant-reference={tiny_ref}",
        f"--quant-candidate=nf4=bnb-nf4:{tiny_ref}",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert "REGRESSED" not in out and result.ret == 0, out
    data = json.loads(report.read_text())
    assert data["models"]["nf4"]["quantization"]["bnb_4bit_quant_type"] == "nf4"


def test_missing_model_path_is_one_usage_error(suite: pytest.Pytester, tiny_ref: Path) -> None:
    result = suite.runpytest(f"--quant-reference={tiny_ref}", "--quant-candidate=nf4=bnb-nf4:./no/such/model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, result.stderr.str()
    assert errors[0].startswith("ERROR: quantgate: model directory not found")
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quant-tolerance=2"], "ERROR: quantgate: --quant-tolerance must be in [[]0, 1[]], got 2*"),
        (["--quant-candidate=gguf:{ref}"], "ERROR: quantgate: unknown scheme 'gguf' in model spec*"),
        (["--quant-device=tpu"], "ERROR: quantgate: --quant-device must be*"),
    ],
)
def test_bad_options_stop_before_loading(
    suite: pytest.Pytester, tiny_ref: Path, args: list[str], message: str
) -> None:
    result = suite.runpytest(f"--quant-reference={tiny_ref}", *(a.format(ref=tiny_ref) for a in args))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "loading" not in result.stdout.str()


def test_check_raising_other_exception_is_an_error(pytester: pytest.Pytester, tiny_ref: Path) -> None:
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["1+2=", "3+4="], max_new_tokens=3)
        def test_buggy_check(prompt, output):
            {}["missing"]
        """
    )
    result = pytester.runpytest(f"--quant-reference={tiny_ref}", f"--quant-candidate=same={tiny_ref}", "-ra")
    assert result.ret == 1
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*ERROR*test_buggy_check*", "*KeyError*missing*"])
    assert "passed" not in result.stdout.lines[-1]


def test_critical_regression_fails_its_test(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path
) -> None:
    pytester.makepyfile(
        SUITE.format(data=str(example_data), limit=20).replace(
            '@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\\n")',
            '@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\\n", critical=True)',
        )
    )
    result = pytester.runpytest(f"--quant-reference={tiny_ref}", f"--quant-candidate=d={DAMAGED}:{tiny_ref}")
    assert result.ret == 1
    out = result.stdout.str()
    failed_arith = re.findall(r"FAILED test_\w+\.py::test_arith\[", out)
    assert failed_arith, out
    # Non-critical regressions show as their own category, they do not fail.
    assert not re.search(r"FAILED test_\w+\.py::test_(recall|retention)\[", out)
    result.stdout.fnmatch_lines(["*case regressed (critical)*"])


def test_without_reference_quant_cases_skip(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-ra")
    assert result.ret == 0
    result.assert_outcomes(skipped=180)
    result.stdout.fnmatch_lines(["*no reference model given*"])


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        (
            '@quant_case("prompt", ["a"], max_tokens=3)',
            "*test_x.py::test_bad: quant_case got unknown argument(s) max_tokens*",
        ),
        (
            '@quant_case("question", ["a"])',
            "*test_bad: quant_case: the prompt argument 'prompt' is not among*",
        ),
        (
            '@quant_slice("s", tolerance=5)\n@quant_case("prompt", ["a"])',
            "*test_bad: slice tolerance must be*",
        ),
    ],
)
def test_bad_marker_arguments_fail_collection(
    pytester: pytest.Pytester, tiny_ref: Path, decorator: str, message: str
) -> None:
    pytester.makepyfile(
        test_x=f"""
        from pytest_quantgate import quant_case, quant_slice

        {decorator}
        def test_bad(output, **kw):
            pass
        """.replace("\n        ", "\n")
    )
    result = pytester.runpytest(f"--quant-reference={tiny_ref}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([message])


def test_help_lists_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["quantgate: gate quantized LLMs*", "*--quant-reference=*", "*--quant-tolerance=*"]
    )


def test_strict_fails_inconclusive_slices(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path
) -> None:
    # Five identical cases per slice cannot rule out a 2-point drop.
    pytester.makepyfile(SUITE.format(data=str(example_data), limit=5))
    args = [f"--quant-reference={tiny_ref}", f"--quant-candidate=same={tiny_ref}"]
    lenient = pytester.runpytest(*args)
    assert lenient.ret == 0
    lenient.stdout.fnmatch_lines(["warning: INCONCLUSIVE (recall, arith, retention, ALL)*"])
    strict = pytester.runpytest(*args, "--quant-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*FAILED quantgate::same::recall*", "*FAILED quantgate::same::ALL*"])


@pytest.mark.parametrize("mode", [["-n", "0"], ["-n", "2"]], ids=["n0", "n2"])
def test_same_gate_with_and_without_xdist(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path, mode: list[str]
) -> None:
    """The gate is computed from test reports, so sharding cannot change it."""
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE.format(data=str(example_data), limit=15))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=damaged={DAMAGED}:{tiny_ref}",
        f"--quant-report={report}",
        *mode,
    )
    assert result.ret in (0, 1), result.stdout.str()
    data = json.loads(report.read_text())
    assert len(data["cases"]) == 45
    assert data["models"]["damaged"]["quantization"]["bits"] == 2
    slices = data["candidates"][0]["slices"]
    # Compare with the run without xdist at all.
    baseline = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=damaged={DAMAGED}:{tiny_ref}",
        f"--quant-report={pytester.path / 'base.json'}",
        "-p",
        "no:xdist",
    )
    assert baseline.ret == result.ret
    assert json.loads((pytester.path / "base.json").read_text())["candidates"][0]["slices"] == slices


def test_help_needs_only_the_core(pytester: pytest.Pytester) -> None:
    """`pytest --help` and the statistics work without torch or transformers."""
    script = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "transformers", "bitsandbytes", "accelerate", "tokenizers"}:
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
import pytest
from pytest_quantgate import stats
assert stats.holm([0.01, 0.04]) == [0.02, 0.04]
code = pytest.main(["--help"])
assert not any(m.partition(".")[0] == "torch" for m in sys.modules)
sys.exit(code)
"""
    result = pytester.run(sys.executable, "-c", script)
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["quantgate: gate quantized LLMs*", "*--quant-candidate=*"])


def test_reference_alone_reports_its_own_outcomes(pytester: pytest.Pytester, tiny_ref: Path) -> None:
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["a=1 b=2 c=3 ; b?", "a=4 b=5 c=6 ; c?"], max_new_tokens=3, stop="\\n")
        def test_recall(prompt, output):
            assert output in ("2", "6")

        @quant_case("prompt", ["1+2="], max_new_tokens=3)
        def test_impossible(prompt, output):
            assert output == "never"
        """
    )
    result = pytester.runpytest(f"--quant-reference={tiny_ref}")
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*the reference fails this case*", "*quantgate: reference tiny-ref only*", "2/3 cases pass*"]
    )
