"""``load_cases`` in a suite: ids, slices and clusters from data files reach the gate; bad files are one line.

The suite lives in ``suite/`` and names its data ``data/...`` relative to
itself, while pytest runs from the directory above: the paths are resolved
against the test module, not the working directory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any

import pytest

from pytest_quantgate.core.loaders import content_id

from .fakes import Case, answers, cases, gate_args, model, read_report, statuses

# Imported here, in the outer process, so that the in-process runs share one
# copy (pytester drops what an inner run imports first; pyarrow is a C extension).
pytest.importorskip("datasets")

SUITE = """
from pytest_quantgate import load_cases, quant_case


@quant_case("prompt, expected", load_cases("data/arith.jsonl", "prompt, expected"), max_new_tokens=8)
def test_arith(prompt, expected, output):
    assert output.strip() == expected


@quant_case("prompt, expected", load_cases("data/recall.csv", "prompt, expected"), max_new_tokens=8)
def test_recall(prompt, expected, output):
    assert output.strip() == expected
"""

ARITH = cases("arith", 6)
RECALL = cases("recall", 3)


def arith_rows(items: Sequence[Case]) -> list[dict[str, object]]:
    """No id column: ids are content hashes. Slices as lists, clusters as ints."""
    return [
        {
            "prompt": c.prompt,
            "expected": c.expected,
            "slice": ["arith", "odd" if i % 2 else "even"],
            "cluster": i // 2,
        }
        for i, c in enumerate(items)
    ]


def recall_rows(items: Sequence[Case]) -> list[dict[str, str]]:
    """An id column; slices as text."""
    return [
        {
            "id": f"r{i}",
            "prompt": c.prompt,
            "expected": c.expected,
            "slice": "recall | odd" if i % 2 else "recall",
        }
        for i, c in enumerate(items)
    ]


def write_suite(
    pytester: pytest.Pytester, arith: list[dict[str, object]], recall: list[dict[str, str]]
) -> None:
    """``suite/test_file_cases.py`` and its data files ``suite/data/arith.jsonl`` and ``recall.csv``."""
    suite = pytester.path / "suite"
    data = suite / "data"
    data.mkdir(parents=True, exist_ok=True)
    (suite / "test_file_cases.py").write_text(SUITE, encoding="utf-8")
    (data / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arith), encoding="utf-8")
    with (data / "recall.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(recall[0]))
        writer.writeheader()
        writer.writerows(recall)


def gate_run(pytester: pytest.Pytester, *args: str) -> dict[str, Any]:
    """Run the suite against a candidate that gets arith 1 and 4 and recall 2 wrong; the JSON report."""
    ref = model(pytester, "ref", {**answers(ARITH), **answers(RECALL)})
    cand = model(pytester, "cand", {**answers(ARITH, wrong=[1, 4]), **answers(RECALL, wrong=[2])})
    report = pytester.path / "gate.json"
    result = pytester.runpytest("suite", *gate_args(ref, cand), f"--quant-report={report}", *args)
    assert result.ret == 0, result.stdout.str()
    return read_report(report)


def test_ids_slices_and_clusters_reach_the_gate(pytester: pytest.Pytester) -> None:
    # Under xdist they travel in the case records (round trip: test_runner_cases.py).
    arith, recall = arith_rows(ARITH), recall_rows(RECALL)
    write_suite(pytester, arith, recall)
    data = gate_run(pytester)
    by_id = {c["nodeid"].split("[")[1].rstrip("]"): c for c in data["cases"]}
    assert {i: (c["slices"], c["cluster"]) for i, c in by_id.items()} == {
        **{content_id(r): (r["slice"], str(r["cluster"])) for r in arith},
        "r0": (["recall"], None),
        "r1": (["recall", "odd"], None),
        "r2": (["recall"], None),
    }
    assert statuses(data, "cand") == {
        **{content_id(r): "regressed" if i in (1, 4) else "passed" for i, r in enumerate(arith)},
        "r0": "passed",
        "r1": "passed",
        "r2": "regressed",
    }


def test_reordering_rows_renames_nothing_and_changes_no_result(pytester: pytest.Pytester) -> None:
    arith, recall = arith_rows(ARITH), recall_rows(RECALL)
    write_suite(pytester, arith, recall)
    first = gate_run(pytester, "-p", "no:xdist")
    write_suite(pytester, arith[::-1], recall[::-1])
    again = gate_run(pytester, "-p", "no:xdist")
    assert statuses(again, "cand") == statuses(first, "cand")
    assert sorted(c["key"] for c in again["cases"]) == sorted(c["key"] for c in first["cases"])


def test_a_malformed_file_stops_collection_with_one_line(pytester: pytest.Pytester) -> None:
    write_suite(pytester, arith_rows(ARITH), recall_rows(RECALL))
    bad = pytester.path / "suite" / "data" / "arith.jsonl"
    lines = bad.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace(", ", " ", 1)
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = pytester.runpytest("suite", *gate_args(model(pytester, "ref", {})))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    for noise in ("Traceback", "loaders.py", "During handling of the above exception"):
        assert noise not in out, out
    errors = out.split("ERROR collecting suite/test_file_cases.py")[1].split("=== short test summary")[0]
    body = [line for line in errors.splitlines()[1:] if line.strip() and not line.startswith("=")]
    assert body == [f"{bad}: row 4: not valid JSON: Expecting ',' delimiter"], errors
