"""The plugin end to end with ``pytester`` on the tiny shipped model.

A few runs that only a real model can show: an identical candidate passes,
a damaged one (2-bit round-to-nearest) regresses where quantization really
hurts, and xdist workers each load the model and agree with a run without
xdist. (bitsandbytes, torchao, GPTQ and AWQ candidates: test_gptqmodel.py.)
Everything else about the plugin is tested on scripted models in
``test_plugin.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from .fakes import TINY_SUITE as SUITE
from .fakes import table_rows

pytest.importorskip("torch")
pytest.importorskip("transformers")

# The deliberately damaged candidate: 2-bit round-to-nearest, groups of 128.
DAMAGED = "rtn2g128"


@pytest.fixture
def suite(pytester: pytest.Pytester, example_data: Path, tiny_ref: Path) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=60))
    return pytester


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
    rows = table_rows(out, "same")
    assert set(rows) == {"recall", "arith", "retention", "ALL"}
    assert set(rows.values()) <= {"PASS", "INCONCLUSIVE"}
    data = json.loads(report.read_text())
    assert data["schema"] == "pytest-quantgate/report" and data["schema_version"] == 2
    (cand,) = data["candidates"]
    for row in cand["slices"]:
        assert row["regressions"] == row["improvements"] == 0
        assert row["verdict"] == rows[row["slice"]]


def test_cost_is_measured_when_asked(suite: pytest.Pytester, tiny_ref: Path) -> None:
    """--quant-cost on the tiny models: every figure there and positive, the NF4 weights smaller."""
    pytest.importorskip("bitsandbytes")
    report = suite.path / "gate.json"
    args = [f"--quant-reference=ref={tiny_ref}", f"--quant-candidate=nf4=bnb-nf4:{tiny_ref}"]
    result = suite.runpytest(*args, f"--quant-report={report}", "--quant-cost")
    assert result.ret == 0, result.stdout.str()
    ref, nf4 = json.loads(report.read_text())["cost"]
    assert (ref["label"], ref["role"], nf4["label"]) == ("ref", "reference", "nf4")
    for row in (ref, nf4):
        for key in ("tokens_per_second", "first_token_seconds", "latency_p50", "latency_p95"):
            assert row[key] > 0, key
        assert row["latency_p95"] >= row["latency_p50"] and row["weight_bytes"] > 0
        assert row["peak_memory_bytes"] is not None and row["peak_memory_bytes"] >= 0
    assert nf4["weight_bytes"] < ref["weight_bytes"] and nf4["weight_ratio"] < 1 == ref["weight_ratio"]
    result.stdout.fnmatch_lines(["*= quantgate: cost =*", "model *tok/s*", "ref *", "nf4 *", "cost: *"])


def test_damaged_candidate_regresses(suite: pytest.Pytester, tiny_ref: Path) -> None:
    # A third candidate whose weights were cut short: not evaluated, and the others still are.
    truncated = suite.path / "truncated"
    shutil.copytree(tiny_ref, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    report = suite.path / "out" / "gate.json"
    result = suite.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=damaged={DAMAGED}:{tiny_ref}",
        f"--quant-candidate=broken={truncated}",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 1, out
    rows = table_rows(out, "damaged")
    regressed = sorted(s for s, v in rows.items() if v == "REGRESSED" and s != "ALL")
    assert regressed, out
    # Each regressed slice is its own failed report, named for CI; so is the broken load.
    for name in regressed:
        result.stdout.fnmatch_lines([f"*FAILED ::quantgate::damaged::{name}*"])
    result.stdout.fnmatch_lines(
        [
            "*= quantgate: broken (truncated): NOT EVALUATED =*",
            f"broken (truncated) could not be loaded from {truncated}:",
            f"  cannot load broken from {truncated}: Error while deserializing header*",
        ]
    )
    # Per-case statuses are their own categories in the summary line.
    assert re.search(r"\d+ regressed", out.splitlines()[-1]), out.splitlines()[-1]

    data = json.loads(report.read_text())
    assert data["complete"] is False and data["failed"] is True
    assert set(data["models"]) == {"ref", "damaged", "broken"}
    assert data["candidates"][1]["evaluated"] is False
    assert data["models"]["damaged"]["quantization"]["bits"] == 2
    cand = data["candidates"][0]
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
    # The regressed cases are listed with their prompt, arguments and both outputs.
    result.stdout.fnmatch_lines(
        [
            "regressed cases (*):",
            "  R test_suite.py::test_*",
            "      prompt    '*'",
            "      expected  '*'",
            "      ref       '*'",
            "      damaged   '*'",
        ]
    )


def test_same_gate_with_and_without_xdist(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path
) -> None:
    """Each worker generates its own shard on the real model; the gate is the same.

    (-n 0 and -n 3 are compared with no xdist on scripted models in test_plugin.py.)
    """
    mode = ["-n", "2"]
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
    base = json.loads((pytester.path / "base.json").read_text())
    assert base["candidates"][0]["slices"] == slices
    assert [c["outcomes"] for c in base["cases"]] == [c["outcomes"] for c in data["cases"]]
    # Each case was generated once per model, across both workers.
    assert {label: m["generated_cases"] for label, m in data["models"].items()} == {"ref": 45, "damaged": 45}


def _cuda_devices() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_cuda_devices() < 2, reason="needs two CUDA devices")
def test_each_worker_loads_its_models_on_its_own_gpu(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(SUITE.format(data=str(example_data), limit=8))
    report = pytester.path / "gate.json"
    marker = pytester.path / "devices"
    marker.mkdir()
    pytester.makeconftest(
        f"""
import os, pathlib

from pytest_quantgate.integration.worker import WORKER_KEY

def pytest_sessionfinish(session):
    cases = session.config.stash.get(WORKER_KEY, None)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if cases is not None and worker:
        devices = {{label: f.get("device") for label, f in cases.executor.pool.facts.items()}}
        pathlib.Path({str(marker)!r}, worker).write_text(repr(devices))
"""
    )
    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}", f"--quant-report={report}", "-n", "2", "--quant-device=cuda"
    )
    assert result.ret in (0, 1), result.stdout.str()
    workers = json.loads(report.read_text())["config"]["workers"]
    assert workers["gw0"]["devices"] == ["cuda:0"] and workers["gw1"]["devices"] == ["cuda:1"]
    for worker, expected in (("gw0", "cuda:0"), ("gw1", "cuda:1")):
        seen = (marker / worker).read_text()
        assert expected in seen, (worker, seen)
