"""GPTQ and AWQ candidates end to end on the CPU, through gptqmodel (the gptq extra, in dev).

The shipped checkpoints (``models/tiny-gptq``, ``models/tiny-awq``, made by
``tools/build_quantized.py``) load as plain paths and are gated together
with the load-time schemes in one run; ``gptq:`` quantizes on the fly once,
and the next run reuses the stored checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .fakes import TINY_SUITE as SUITE
from .fakes import table_rows

pytest.importorskip("torch")
pytest.importorskip("transformers")
# Imported here, in the outer process, for the same reason as torch (see conftest.py).
pytest.importorskip("gptqmodel")
pytest.importorskip("optimum")


def _tensor_bytes(file: Path) -> int:
    """The bytes of every tensor in a safetensors file, from its header."""
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return sum(
        end - start
        for name, t in header.items()
        if name != "__metadata__"
        for start, end in [t["data_offsets"]]
    )


def test_shipped_gptq_and_awq_with_nf4_and_torchao_in_one_run(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path, repo_root: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("torchao")
    models = repo_root / "models"
    pytester.makepyfile(SUITE.format(data=str(example_data), limit=10))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=gptq={models / 'tiny-gptq'}",
        f"--quant-candidate=awq={models / 'tiny-awq'}",
        f"--quant-candidate=nf4=bnb-nf4:{tiny_ref}",
        f"--quant-candidate=int8=torchao-int8:{tiny_ref}",
        f"--quant-calibration={models / 'calibration.jsonl'}",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "4 candidates vs reference ref" in out
    for label in ("gptq", "awq", "nf4", "int8"):
        assert table_rows(out, label)["ALL"] in ("PASS", "INCONCLUSIVE"), out
    data = json.loads(report.read_text())
    assert data["complete"] is True
    assert [c["label"] for c in data["candidates"]] == ["gptq", "awq", "nf4", "int8"]
    assert all(c["evaluated"] for c in data["candidates"])
    assert [c["label"] for c in data["matrix"]["candidates"]] == ["gptq", "awq", "nf4", "int8"]
    facts = data["models"]
    assert facts["gptq"]["quantization"]["quant_method"] == "gptq"
    assert facts["awq"]["quantization"]["quant_method"] == "awq"
    assert facts["nf4"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    # Packed quantized weights are buffers: the footprint counts them, as the file holds them.
    for label, name in (("gptq", "tiny-gptq"), ("awq", "tiny-awq")):
        assert facts[label]["weight_bytes"] == _tensor_bytes(models / name / "model.safetensors"), label
        assert facts[label]["weight_bytes"] > 4 * facts[label]["parameters"]
        assert facts[label]["weight_bytes"] < facts["ref"]["weight_bytes"] / 3
    # The shipped calibration set shares no n-gram with the eval prompts.
    assert data["calibration_overlap"]["overlapping"] == 0
    # gptqmodel leaves no logs/ folder behind when only loading.
    assert not (pytester.path / "logs").exists()


@pytest.mark.slow
def test_gptq_on_the_fly_is_stored_then_reused(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path, repo_root: Path
) -> None:
    pytester.makepyfile(SUITE.format(data=str(example_data), limit=10))
    texts = (repo_root / "models" / "calibration.jsonl").read_text().splitlines()[:16]
    (pytester.path / "calib.jsonl").write_text("\n".join(texts) + "\n")
    cache = pytester.path / "store"
    args = [
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=g=gptq:{tiny_ref}?bits=4&group_size=128",
        "--quant-calibration=calib.jsonl",
        "--quant-cache=on",
        f"--quant-cache-dir={cache}",
    ]
    environment = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    first = pytester.runpytest(*args, f"--quant-report={pytester.path / 'first.json'}")
    out = first.stdout.str()
    assert first.ret == 0, out
    first.stdout.fnmatch_lines(
        [
            "quantgate: g: quantizing tiny-ref (GPTQ 4-bit, groups of 128, symmetric) with gptqmodel * "
            f"on 16 calibration texts (its log: {cache}/quantized/.*/quantize.log) ...",
            f"quantgate: g: quantized in *s, stored in {cache}/quantized/*",
        ]
    )
    (stored,) = (cache / "quantized").glob("*/quantgate-quantized.json")
    provenance = json.loads(stored.read_text())
    assert provenance["recipe"] == {
        "method": "gptq",
        "bits": 4,
        "group_size": 128,
        "sym": True,
        "desc_act": False,
    }
    assert provenance["calibration"]["texts"] == 16
    # The checkpoint decodes as the source says: its generation config is the source's.
    assert json.loads((stored.parent / "generation_config.json").read_text()) == json.loads(
        (tiny_ref / "generation_config.json").read_text()
    )
    # Nothing of gptqmodel's reaches the user's tree or the session's environment.
    assert not (pytester.path / "logs").exists()
    assert {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} == environment

    second = pytester.runpytest(*args, f"--quant-report={pytester.path / 'second.json'}")
    assert second.ret == 0, second.stdout.str()
    second.stdout.fnmatch_lines(
        [
            "quantgate: g: reusing the GPTQ 4-bit, groups of 128, symmetric checkpoint of tiny-ref "
            f"stored * ({stored.parent})"
        ]
    )
    assert "quantizing" not in second.stdout.str()
    a, b = (json.loads((pytester.path / f"{n}.json").read_text()) for n in ("first", "second"))
    assert a["candidates"] == b["candidates"]
    assert a["models"]["g"]["checkpoint"] == b["models"]["g"]["checkpoint"] == str(stored.parent)
