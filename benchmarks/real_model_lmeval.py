"""lm-evaluation-harness's ``generate_until`` on the chat suite's single-turn cases (its own virtualenv).

``HFLM.generate_until`` is called directly with ``Instance`` objects, no
task: each case's messages go through ``HFLM.apply_chat_template`` (the
tokenizer's template, ``add_generation_prompt=True``, as lm-eval's
``--apply_chat_template`` does), with ``until=["."]``, ``max_gen_toks`` the
case's ``max_new_tokens`` and ``do_sample=False``; ``HFLM`` runs the float32
checkpoint on the CPU in batches of 40 and adds the eos token to the stops
itself. One torch thread.

    .venv-lmeval/bin/python benchmarks/real_model_lmeval.py OUT.json [--cases N]

Run by ``bench_real_model.py``, which times it from start to exit.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import real_model_cases as rmc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the outputs (JSON)")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases of each slice")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import lm_eval
    import torch
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(1)
    lm: Any = HFLM(pretrained=str(rmc.MODEL), device="cpu", dtype="float32", batch_size=rmc.BATCH_SIZE)
    loaded = time.perf_counter()
    cases = rmc.load_cases(args.cases)
    requests = [
        Instance(
            request_type="generate_until",
            doc={"id": case.id},
            arguments=(
                lm.apply_chat_template(case.chat(), add_generation_prompt=True),
                {"until": [rmc.STOP], "max_gen_toks": case.max_new_tokens, "do_sample": False},
            ),
            idx=0,
        )
        for case in cases
    ]
    replies = lm.generate_until(requests, disable_tqdm=True)
    done = time.perf_counter()
    outputs = {case.id: str(reply) for case, reply in zip(cases, replies, strict=True)}
    facts = {
        "side": "lm-eval",
        "lm_eval": getattr(lm_eval, "__version__", "?"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_seconds": round(loaded - started, 2),
        "generate_seconds": round(done - loaded, 2),
    }
    rmc.write_outputs(args.out, outputs, facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
