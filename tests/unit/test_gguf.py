"""GGUF files: specs, the file's facts, the cache's fingerprint of one file, and the shipped tiny GGUFs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_quantgate.storage.fingerprint import WHOLE_LIMIT, fingerprint_spec, model_fingerprint
from pytest_quantgate.values.specs import SCHEMES, parse_spec

REPO = Path(__file__).resolve().parents[2]
GGUF_DIR = REPO / "models" / "tiny-gguf"
Q8 = GGUF_DIR / "tiny-ref.Q8_0.gguf"
Q4 = GGUF_DIR / "tiny-ref.Q4_0.gguf"
VERSIONS = {"torch": "x", "source": "y"}


# -- specs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label", "scheme"),
    [
        ("x.gguf", "x", None),  # a path ending in .gguf needs no scheme
        ("models/tiny-ref.Q8_0.gguf", "tiny-ref.Q8_0", None),
        ("X.GGUF", "X", None),
        ("gguf:x.gguf", "gguf", "gguf"),
        ("gguf:weights.bin", "gguf", "gguf"),  # the scheme says it, whatever the name
        ("q8=x.gguf", "q8", None),
        ("q8=gguf:x.gguf", "q8", "gguf"),
    ],
)
def test_a_gguf_path_or_the_gguf_scheme_is_a_gguf_file(text: str, label: str, scheme: str | None) -> None:
    spec = parse_spec(text, base_dir="/m", check_path=False)
    assert spec.kind is SCHEMES["gguf"]
    assert spec.kind.gguf and spec.kind.target == "file"
    assert (spec.label, spec.scheme) == (label, scheme)
    # Rebuilt from its fields (as an xdist worker does), it is the same kind of spec.
    assert type(spec)(**spec.to_dict()).kind is SCHEMES["gguf"]


@pytest.mark.parametrize("text", ["x.gguf/", "models/tiny-ref", "rtn4:x.gguf", "x.gguf.d"])
def test_other_targets_are_not_gguf_files(text: str) -> None:
    assert not parse_spec(text, base_dir="/m", check_path=False).kind.gguf


def test_a_gguf_spec_is_checked_as_a_file(tmp_path: Path) -> None:
    from pytest_quantgate.values.specs import SpecError

    with pytest.raises(SpecError, match="file not found"):
        parse_spec(str(tmp_path / "missing.gguf"))
    assert parse_spec(str(Q8)).path == str(Q8)
    assert parse_spec(f"gguf:{Q8}").display == "gguf:tiny-ref.Q8_0.gguf"
    assert parse_spec(str(Q8)).display == "tiny-ref.Q8_0.gguf"


# -- the cache keys a GGUF run by the file's content ----------------------------------


def test_a_gguf_file_is_fingerprinted_by_its_content(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere.gguf"
    shutil.copyfile(Q8, copy)
    assert model_fingerprint(copy) == model_fingerprint(Q8)  # the location is not part of it
    assert model_fingerprint(Q4) != model_fingerprint(Q8)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(Q8)
    runs = {
        fingerprint_spec(parse_spec(text), dtype="float32", device="cpu", versions=VERSIONS)
        for text in (str(Q8), f"gguf:{Q8}", str(Q4), str(copy))
    }
    assert None not in runs and len(runs) == 3  # a scheme-less .gguf and gguf: are the same run


def _big_gguf(path: Path, template: str, scale: float) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("tokenizer.chat_template", template)
    writer.add_tensor("token_embd.weight", np.full((512, 1024), scale, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(1024, dtype=np.float32))
    writer.add_tensor("output.weight", np.full((512, 1024), scale, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_large_gguf_is_sampled_with_its_whole_header_and_every_tensor(tmp_path: Path) -> None:
    """Above 1 MiB a GGUF is sampled: the header (metadata, tokenizer, chat template) whole, and a
    block of every tensor. With only the first and last blocks otherwise (``blocks=2``), an edit of
    the template past the first block, or of the small tensor between two large ones, still changes
    the fingerprint."""
    gguf = pytest.importorskip("gguf")
    base, edited, tensor = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    template = "x" * 20_000 + "{{ messages }}"
    _big_gguf(base, template, 1.0)
    _big_gguf(edited, template.replace("messages", "massages"), 1.0)
    _big_gguf(tensor, template, 1.0)
    assert base.stat().st_size > WHOLE_LIMIT
    norm = next(t for t in gguf.GGUFReader(tensor).tensors if t.name == "output_norm.weight")
    data = bytearray(tensor.read_bytes())
    data[int(norm.data_offset) + 2000] ^= 0x40
    tensor.write_bytes(bytes(data))
    fingerprints = {model_fingerprint(p, blocks=2) for p in (base, edited, tensor)}
    assert len(fingerprints) == 3


# -- the file's facts --------------------------------------------------------------


def test_the_facts_of_a_gguf_file_count_its_tensor_types() -> None:
    pytest.importorskip("gguf")
    from pytest_quantgate.backends.hf_gguf import read_gguf

    assert read_gguf(Q8, "q8").to_dict() == {
        "architecture": "llama",
        "tensor_types": {"F32": 5, "Q8_0": 15},
        "file_type": "MOSTLY_Q8_0",
    }
    assert read_gguf(Q4, "q4").tensor_types == {"F32": 5, "Q4_0": 15}


def test_a_file_that_is_not_gguf_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from pytest_quantgate.backends.base import BackendError
    from pytest_quantgate.backends.hf_gguf import read_gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(BackendError, match=r"^bad: cannot read the GGUF file .*bad\.gguf") as info:
        read_gguf(bad, "bad")
    assert "\n" not in str(info.value)


def test_an_architecture_transformers_cannot_load_is_named(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from pytest_quantgate.backends.hf_gguf import gguf_problem, read_gguf

    path = tmp_path / "foo.gguf"
    writer = gguf.GGUFWriter(path, "foo")
    writer.add_tensor("w", np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    spec = parse_spec(str(path))
    problem = gguf_problem(spec, read_gguf(path, spec.label))
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"foo: the GGUF file {path} is of architecture 'foo', which transformers ")
    assert gguf_problem(spec, read_gguf(Q8, "q8")) is None


def _beside(tmp_path: Path, *names: str) -> Path:
    """The tiny Q8_0 file copied into a folder with these of ``models/tiny-ref``'s files."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in names:
        shutil.copy(REPO / "models" / "tiny-ref" / name, folder / name)
    return Path(shutil.copy(Q8, folder / Q8.name))


def test_a_gguf_beside_a_tokenizer_json_loses_its_special_tokens(tmp_path: Path) -> None:
    """Why the refusal below exists: transformers reads the tokenizer from tokenizer.json, not the file.

    Should a transformers release stop doing so, this test fails, and the refusal can go.
    """
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    path = _beside(tmp_path, "tokenizer.json", "tokenizer_config.json")
    beside = AutoTokenizer.from_pretrained(path.parent, gguf_file=str(path))
    alone = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=str(Q8))
    assert (alone.eos_token, alone.bos_token, alone.pad_token) == ("<eos>", "<bos>", "<pad>")
    assert (beside.eos_token, beside.bos_token, beside.pad_token) == (None, None, None)


def test_a_gguf_beside_a_checkpoints_tokenizer_files_is_refused_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from pytest_quantgate.backends.hf_gguf import beside_tokenizer_problem, gguf_problem, read_gguf

    path = _beside(tmp_path, "tokenizer.json", "tokenizer_config.json", "config.json")
    spec = parse_spec(str(path))
    problem = gguf_problem(spec, read_gguf(path, spec.label))
    assert problem == beside_tokenizer_problem(spec)
    assert problem == (
        f"tiny-ref.Q8_0: the GGUF file {path} lies beside a checkpoint's tokenizer files "
        "(tokenizer.json, tokenizer_config.json), which transformers would read instead of the file's "
        "own tokenizer (losing its eos token: generation would not stop); move the GGUF file into a "
        "folder of its own"
    )


@pytest.mark.parametrize("names", [(), ("tokenizer_config.json", "config.json", "generation_config.json")])
def test_a_gguf_without_a_tokenizer_json_beside_it_is_loaded(tmp_path: Path, names: tuple[str, ...]) -> None:
    """tokenizer_config.json alone changes nothing of the file's tokenizer (measured): not refused."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from pytest_quantgate.backends.hf_gguf import gguf_problem, read_gguf

    path = _beside(tmp_path, *names)
    spec = parse_spec(str(path))
    assert gguf_problem(spec, read_gguf(path, spec.label)) is None
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=str(path))
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("<eos>", "<bos>", "<pad>")


# -- the shipped tiny GGUFs --------------------------------------------------------


def test_build_gguf_writes_the_shipped_bytes_again(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("safetensors")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_gguf.py"), f"--out={tmp_path}"],
        check=True,
        capture_output=True,
    )
    for shipped in (Q8, Q4):
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name


def test_the_gguf_tokenizer_encodes_every_example_prompt_as_the_original() -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(REPO / "models" / "tiny-ref")
    from_gguf = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=str(Q8))
    texts = [
        json.loads(line)[key]
        for file in sorted((REPO / "example_suites" / "tiny" / "data").glob("*.jsonl"))
        for line in file.read_text().splitlines()
        if line.strip()
        for key in ("prompt", "expected")
    ]
    assert len(texts) == 480
    assert from_gguf(texts)["input_ids"] == original(texts)["input_ids"]
    assert [from_gguf.bos_token_id, from_gguf.eos_token_id, from_gguf.pad_token_id] == [0, 1, 2]
