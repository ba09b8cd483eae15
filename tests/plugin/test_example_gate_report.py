"""The example gate's JSON report, pinned: a redesign that changes what it says shows here.

``tests/data/example_gate.json`` is the report of ``pytest example_suites/tiny``
(``--quant-cache=off``, no xdist) with what changes from run to run taken
out: timings, process ids, and the directories the run happened in. It was
written by the code before the modules were split by responsibility, and
the split must leave it unchanged; a change of the report made on purpose
rewrites it with ``python tests/plugin/test_example_gate_report.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "example_gate.json"
#: Facts that measure one run (seconds, rates, a process id), not what was gated.
TIMING = frozenset({"load_seconds", "generate_seconds", "tokens_per_second", "pid"})


def normalized(value: Any, report: Path) -> Any:
    """The report without timing fields, its own path and the repository's written as placeholders."""
    if isinstance(value, dict):
        return {k: normalized(v, report) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [normalized(v, report) for v in value]
    if isinstance(value, str):
        return value.replace(str(report), "<report>").replace(str(REPO), "<repo>")
    return value


def gate_report(pytester: pytest.Pytester) -> Any:
    report = pytester.path / "gate.json"
    pytester.runpytest(
        str(REPO / "example_suites" / "tiny"),
        "-p",
        "no:xdist",
        "--quant-cache=off",
        f"--quant-report={report}",
    )
    return normalized(json.loads(report.read_text()), report)


def test_the_example_gate_report_is_unchanged(pytester: pytest.Pytester) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("bitsandbytes")
    assert gate_report(pytester) == json.loads(GOLDEN.read_text())


if __name__ == "__main__":  # rewrite the pinned report (a change made on purpose)
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gate.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(REPO / "example_suites" / "tiny"),
                "-q",
                "-p",
                "no:xdist",
                "--quant-cache=off",
                f"--quant-report={out}",
            ],
            cwd=tmp,
            check=False,
        )
        data = normalized(json.loads(out.read_text()), out)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
