"""Token divergence on the tiny shipped model: itself diverges by 0, a damaged copy where it fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .fakes import TINY_SUITE as SUITE

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_divergence_of_the_tiny_model_from_itself_and_from_a_damaged_copy(
    pytester: pytest.Pytester, example_data: Path, tiny_ref: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=40))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        "-p",
        "no:xdist",
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=same={tiny_ref}",
        f"--quant-candidate=rtn2=rtn2g128:{tiny_ref}",
        "--quant-divergence",
        "--quant-noise-floor",
        f"--quant-report={report}",
    )
    data = json.loads(report.read_text())
    cands = {c["label"]: c for c in data["candidates"]}
    same = {r["slice"]: r for r in cands["same"]["divergence"]}
    damaged = {r["slice"]: r for r in cands["rtn2"]["divergence"]}
    for row in same.values():
        assert abs(row["mean_kl"]) < 1e-9 and row["top1"] == 1.0, row
    drops = {r["slice"]: r["drop"] for r in cands["rtn2"]["slices"]}
    for name, row in damaged.items():
        assert row["mean_kl"] > 1e-6, (name, row)
    # The slice that lost the most accuracy is the one whose distributions moved the most.
    slices = [s for s in drops if s != "ALL"]
    worst = max(slices, key=drops.__getitem__)
    assert drops[worst] > 0 and worst == max(slices, key=lambda s: damaged[s]["mean_kl"])
    assert damaged[worst]["low"] > 0 and damaged[worst]["top1"] < 1.0
    # On the CPU, the reference run again at batch size 1 says exactly the same.
    total = {r["slice"]: r for r in data["noise_floor"]["slices"]}["ALL"]
    assert total["flips"] == 0 and total["changed_outputs"] == 0
    # Scored again one by one, its distributions move only by float rounding of the batching.
    assert total["divergence"]["max_kl"] < 1e-6
    assert "token divergence from ref" in result.stdout.str()
