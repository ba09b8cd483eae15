"""The plain batched script: the chat suite's single-turn cases on SmolLM2-135M-Instruct, no plugin.

What the plugin's transformers backend does, written out: the float32
checkpoint loaded with ``AutoModelForCausalLM``, its generation_config
reduced to its special token ids, ``model.eval()`` and
``torch.inference_mode()``; each prompt through the tokenizer's chat template
(``add_generation_prompt=True``), left padding, the plugin runner's batches
(:func:`real_model_cases.batches`), greedy decoding with ``stop_strings`` and
the eos token, the reply decoded without special tokens and cut at the first
stop. One torch thread, as the plugin's default.

    python benchmarks/real_model_plain.py OUT.json [--cases N]

Run by ``bench_real_model.py``, which times it from start to exit.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import real_model_cases as rmc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the outputs (JSON)")
    parser.add_argument("--cases", type=int, default=None, help="the first N cases of each slice")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch.set_num_threads(1)
    tokenizer: Any = AutoTokenizer.from_pretrained(rmc.MODEL, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(rmc.MODEL, dtype=torch.float32, local_files_only=True)
    model.eval()
    said = model.generation_config
    model.generation_config = GenerationConfig(
        **{k: getattr(said, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(said, k)}
    )
    loaded = time.perf_counter()

    outputs: dict[str, str] = {}
    with torch.inference_mode():
        for batch in rmc.batches(rmc.load_cases(args.cases)):
            texts = [
                tokenizer.apply_chat_template(c.chat(), add_generation_prompt=True, tokenize=False)
                for c in batch
            ]
            # The template writes the special tokens itself.
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            config = GenerationConfig(
                max_new_tokens=batch[0].max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
                stop_strings=[rmc.STOP],
            )
            generated = model.generate(**enc, generation_config=config, tokenizer=tokenizer)
            replies = tokenizer.batch_decode(
                generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for case, reply in zip(batch, replies, strict=True):
                outputs[case.id] = rmc.truncate_at_stop(str(reply))
    done = time.perf_counter()
    facts = {
        "side": "plain",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_seconds": round(loaded - started, 2),
        "generate_seconds": round(done - loaded, 2),
    }
    rmc.write_outputs(args.out, outputs, facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
