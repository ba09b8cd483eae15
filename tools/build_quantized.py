"""Make the shipped GPTQ and AWQ checkpoints of the tiny reference with gptqmodel.

    python tools/build_quantized.py            # needs the gptq extra (gptqmodel)

1. Draws the calibration set ``models/calibration.jsonl``: ``--texts`` texts
   from the tiny model's training distribution (the same mixture and format,
   ``prompt + answer + "\\n"``), with a seed of its own, and none of them an
   eval prompt of ``example_suites/tiny/data`` (checked again with the
   plugin's own n-gram overlap, which must find no eval case).
2. Quantizes ``models/tiny-ref`` with each recipe into ``models/tiny-gptq``
   and ``models/tiny-awq``, exactly as ``gptq:``/``awq:`` specs do on the fly
   (``python -m pytest_quantgate.storage.quantize`` in a scratch directory).

Seeded and deterministic on the CPU: rerunning it with the same versions
writes the same bytes. About 40 s on a 2-core machine, most of it importing
gptqmodel.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_tasks
from build_tiny_model import MIXTURE

from pytest_quantgate.core.overlap import overlap
from pytest_quantgate.storage.quantize import Recipe
from pytest_quantgate.values.calibration import read_calibration

REPO = Path(__file__).resolve().parents[1]
#: name -> recipe of the shipped checkpoints.
SHIPPED = {
    "tiny-gptq": Recipe("gptq", bits=4, group_size=32),
    "tiny-awq": Recipe("awq", bits=4, group_size=32),
}


def eval_prompts(data: Path) -> dict[str, str]:
    """``slice/index`` -> prompt of every eval case."""
    return {
        f"{file.stem}/{i}": ex.prompt
        for file in sorted(data.glob("*.jsonl"))
        for i, ex in enumerate(tiny_tasks.read_jsonl(file))
    }


def draw_calibration(n: int, seed: int, data: Path) -> list[str]:
    """``n`` distinct training-distribution texts that share no n-gram with an eval prompt.

    Disjoint in the sense ``--quant-calibration`` checks: with ten digits
    and a few letters, many ``recall`` texts share an 8-word run with some
    eval prompt by chance, and those are drawn again.
    """
    prompts = eval_prompts(data)
    texts: list[str] = []
    seen: set[str] = set()
    for ex in tiny_tasks.stream(MIXTURE, seed, exclude=prompts.values()):
        text = ex.prompt + ex.expected + tiny_tasks.STOP
        if ex.prompt in seen or overlap(prompts, [text]).overlapping:
            continue
        seen.add(ex.prompt)
        texts.append(text)
        if len(texts) == n:
            return texts
    raise AssertionError("unreachable: the stream is endless")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--data", type=Path, default=REPO / "example_suites" / "tiny" / "data")
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()

    calibration = args.models / "calibration.jsonl"
    texts = draw_calibration(args.texts, args.seed, args.data)
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    found = overlap(eval_prompts(args.data), read_calibration(calibration), str(calibration))
    print(
        f"wrote {len(texts)} calibration texts to {calibration}; "
        f"eval cases found in them: {len(found.overlapping)}"
    )
    if found.overlapping:
        raise SystemExit(f"the calibration set overlaps the eval set: {list(found.overlapping[:5])}")

    for name, recipe in SHIPPED.items():
        out = args.models / name
        with tempfile.TemporaryDirectory() as scratch:  # gptqmodel writes logs/ into its working directory
            made = Path(scratch) / "checkpoint"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest_quantgate.storage.quantize",
                    f"--source={args.models / 'tiny-ref'}",
                    f"--out={made}",
                    f"--calibration={calibration}",
                    *recipe.argv(),
                ],
                cwd=scratch,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(made, out)
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"{name}: {recipe.describe()}, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
