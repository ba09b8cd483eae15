"""GGUF files as reference and candidates, end to end on the tiny model's GGUFs.

``models/tiny-gguf`` holds the tiny reference written by ``tools/build_gguf.py``
as Q8_0 and Q4_0. transformers dequantizes them; what is gated is the
quality of the quantized weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .fakes import TINY_SUITE as SUITE
from .fakes import table_rows

pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

GGUF_DIR = Path(__file__).resolve().parents[2] / "models" / "tiny-gguf"
Q8 = GGUF_DIR / "tiny-ref.Q8_0.gguf"
Q4 = GGUF_DIR / "tiny-ref.Q4_0.gguf"
#: Cases (of 180) on which the Q8_0 file may differ from its safetensors original in outcome.
#: Measured 0 here (and 0 of the example gate's 240); the bound leaves room for float
#: differences on other machines.
Q8_MAX_FLIPS = 2


@pytest.fixture
def suite(pytester: pytest.Pytester, example_data: Path) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE.format(data=str(example_data), limit=60))
    return pytester


def _regressed_slices(data: dict, label: str) -> set[str]:
    (gate,) = [c for c in data["candidates"] if c["label"] == label]
    return {row["slice"] for row in gate["slices"] if row["slice"] != "ALL" and row["regressions"]}


def test_gguf_candidates_against_their_safetensors_original(suite: pytest.Pytester, tiny_ref: Path) -> None:
    report = suite.path / "gate.json"
    result = suite.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=q8={Q8}",
        f"--quant-candidate=q4=gguf:{Q4}",
        # The mildest round-to-nearest that damages the tiny model at all (rtn4 flips nothing).
        f"--quant-candidate=rtn3=rtn3g128:{tiny_ref}",
        # transformers rebuilds a GGUF's tokenizer with one more token and GPT-2's split regex.
        "--quant-allow-tokenizer-mismatch",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 0, out
    data = json.loads(report.read_text())
    (q8,) = [c for c in data["candidates"] if c["label"] == "q8"]
    (all_row,) = [r for r in q8["slices"] if r["slice"] == "ALL"]
    assert all_row["n"] == 180
    assert all_row["regressions"] + all_row["improvements"] <= Q8_MAX_FLIPS, out
    assert set(table_rows(out, "q8").values()) <= {"PASS", "INCONCLUSIVE"}
    # The 4-bit file is damaged where round-to-nearest damage shows: arithmetic, and only there.
    assert _regressed_slices(data, "q4") == _regressed_slices(data, "rtn3") == {"arith"}, out
    # The facts say what the file held and what was run.
    for label, kind in (("q8", "Q8_0"), ("q4", "Q4_0")):
        facts = data["models"][label]
        quantization = facts["quantization"]
        assert quantization["quant_method"] == "gguf"
        assert quantization["architecture"] == "llama"
        assert quantization["tensor_types"] == {"F32": 5, kind: 15}
        assert quantization["file_type"] == f"MOSTLY_{kind}"
        assert quantization["note"].startswith(
            "weights dequantized from GGUF by transformers and run in float32"
        )
        assert "a llama.cpp server behind an OpenAI-compatible endpoint" in quantization["note"]
        assert facts["dtype"] == "float32"
        assert any("'<|endoftext|>'" in d for d in facts["tokenizer_differences"])
    assert data["models"]["q8"]["scheme"] is None and data["models"]["q4"]["scheme"] == "gguf"


def test_a_gguf_reference_compares_tokenizers_read_from_the_file(
    suite: pytest.Pytester, tiny_ref: Path
) -> None:
    """The reference's tokenizer is read from its GGUF file: the other GGUF has the same one and is
    gated; the safetensors original's differs and is refused without the flag."""
    report = suite.path / "gate.json"
    result = suite.runpytest(
        f"--quant-reference=q8=gguf:{Q8}",
        f"--quant-candidate=q4={Q4}",
        f"--quant-candidate=st={tiny_ref}",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 1, out
    result.stdout.fnmatch_lines(
        [
            "*st: its tokenizer differs from the reference q8's: vocabulary of 260 vs 259 tokens*",
            "*FAILED ::quantgate::st::load*",
        ]
    )
    data = json.loads(report.read_text())
    assert data["models"]["q8"]["quantization"]["tensor_types"] == {"F32": 5, "Q8_0": 15}
    assert "tokenizer_differences" not in data["models"]["q4"]
    assert _regressed_slices(data, "q4") <= {"arith"}


def test_a_gguf_of_an_architecture_transformers_cannot_load_is_one_line(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(foreign, "foo")
    writer.add_tensor("blk.0.w.weight", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = suite.runpytest(f"--quant-reference={foreign}")
    out = result.stdout.str()
    assert result.ret == 2, out
    result.stdout.fnmatch_lines(
        [
            f"  foreign: the GGUF file {foreign} is of architecture 'foo', which transformers * cannot load "
            "(it loads *llama*)",
            "nothing was gated: the run stops",
        ]
    )


def test_a_gguf_beside_a_checkpoints_tokenizer_files_is_one_line(
    suite: pytest.Pytester, tiny_ref: Path, tmp_path: Path
) -> None:
    """transformers would read its tokenizer from the tokenizer.json beside it (no eos): refused, before
    loading, as the reference (the run stops) and as a candidate (its load fails, the other is gated)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_ref / name, folder / name)
    beside = Path(shutil.copy(Q8, folder / Q8.name))
    line = (
        f"  tiny-ref.Q8_0: the GGUF file {beside} lies beside a checkpoint's tokenizer files "
        "(tokenizer.json, tokenizer_config.json), which transformers would read instead of the file's "
        "own tokenizer (losing its eos token: generation would not stop); move the GGUF file into a "
        "folder of its own"
    )
    result = suite.runpytest(f"--quant-reference={beside}")
    assert result.ret == 2, result.stdout.str()
    result.stdout.fnmatch_lines([line, "nothing was gated: the run stops"])
    assert "neither a pad nor an eos token" not in result.stdout.str()

    report = suite.path / "gate.json"
    result = suite.runpytest(
        f"--quant-reference=ref={tiny_ref}",
        f"--quant-candidate=q8={Q8}",
        f"--quant-candidate={beside}",
        "--quant-allow-tokenizer-mismatch",
        f"--quant-report={report}",
    )
    out = result.stdout.str()
    assert result.ret == 1, out
    result.stdout.fnmatch_lines([line, "*FAILED ::quantgate::tiny-ref.Q8_0::load*"])
    data = json.loads(report.read_text())
    assert [(c["label"], c["evaluated"]) for c in data["candidates"]] == [
        ("q8", True),
        ("tiny-ref.Q8_0", False),
    ]


def test_the_reference_cache_keys_a_gguf_run_by_the_file_content(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    reference = tmp_path / "ref.gguf"
    reference.write_bytes(Q8.read_bytes())
    args = (f"--quant-reference={reference}", "--quant-cache=on", f"--quant-cache-dir={tmp_path / 'cache'}")
    # A plain eval run (no candidate): the reference's own failures are failed tests; the lines matter.
    suite.runpytest(*args).stdout.fnmatch_lines(["*ref: 180 cases generated*"])
    again = suite.runpytest(*args)
    again.stdout.fnmatch_lines(
        ["*ref: 180/180 cases from the cache; nothing to generate, the model is not loaded*"]
    )
    data = bytearray(reference.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight block
    reference.write_bytes(bytes(data))
    edited = suite.runpytest(*args)
    assert "from the cache" not in edited.stdout.str()
    edited.stdout.fnmatch_lines(["*ref: 180 cases generated*"])
