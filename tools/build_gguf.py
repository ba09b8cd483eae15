"""Write GGUF files (llama.cpp's format) of the tiny reference with the ``gguf`` package.

    python tools/build_gguf.py            # needs gguf (the hf extra) and safetensors

Reads ``models/tiny-ref`` (safetensors, a byte-level tokenizer) and writes
``models/tiny-gguf/tiny-ref.Q8_0.gguf`` and ``models/tiny-gguf/tiny-ref.Q4_0.gguf``
as llama.cpp's ``convert_hf_to_gguf.py`` followed by ``llama-quantize`` would
lay them out:

- llama.cpp's tensor names (``token_embd``, ``blk.N.attn_q``, ...); the
  output projection is tied to the embedding, so there is no ``output.weight``.
- The rows of the Q and K projections permuted as llama.cpp does for llama
  (rotary pairs interleaved); transformers' GGUF loader permutes them back.
- Every 2-D weight in the file's type (Q8_0 or Q4_0, blocks of 32), the
  norms in F32, as ``llama-quantize`` leaves 1-D tensors. One difference:
  for Q4_0 ``llama-quantize`` would keep the tied embedding in Q6_K; here it
  is Q4_0 too, so that the 4-bit file is 4-bit throughout.
- The tokenizer as ``gpt2`` (byte-level BPE): tokens, token types (the three
  specials are control tokens), bos/eos/pad ids, ``add_bos_token``. The tiny
  tokenizer has no merges (every token is one byte), and a GGUF array cannot
  be empty, so the file carries ``tokenizer.ggml.scores`` (all zero) instead,
  from which transformers derives the same empty merges. llama.cpp itself
  requires merges for a ``gpt2`` vocabulary: these files are for
  transformers' GGUF loader, which is what ``gguf:`` specs use.

Deterministic: rerunning it writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The files written: one per tensor type of the 2-D weights (``tiny-ref.<type>.gguf``).
TYPES = ("Q8_0", "Q4_0")

#: transformers' Llama parameter name (per layer) -> llama.cpp's tensor name.
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name: str) -> str:
    """llama.cpp's name of a transformers Llama parameter."""
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    parts = name.split(".")
    if parts[:2] == ["model", "layers"]:
        return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}"
    raise ValueError(f"no GGUF name for {name}")


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of Q/K rows for llama (``convert_hf_to_gguf.py``, ``LlamaModel.permute``)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(source: Path, out: Path, qtype_name: str) -> None:
    """Write the checkpoint at ``source`` as a GGUF file in llama.cpp's layout.

    Args:
        source: a Llama checkpoint directory with tied embeddings and a byte-level tokenizer.
        out: the file to write.
        qtype_name: a type ``gguf.quants`` quantizes to (``Q8_0``, ``Q4_0``).
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama" or not config.get("tie_word_embeddings"):
        raise SystemExit(f"{source}: expected a Llama checkpoint with tied embeddings")
    qtype = gguf.GGMLQuantizationType[qtype_name]
    file_type = gguf.LlamaFileType[f"MOSTLY_{qtype_name}"]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(source.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, tok_config, config)

    weights = load_file(str(source / "model.safetensors"))
    for name in sorted(weights, key=_order):
        data = weights[name].astype(np.float32)
        if name.endswith("q_proj.weight"):
            data = permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute(data, n_kv)
        if data.ndim == 2:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _order(name: str) -> tuple[Any, ...]:
    """llama.cpp's tensor order: the embedding, then each layer in turn, then the final norm."""
    if name == "model.embed_tokens.weight":
        return (0,)
    if name.startswith("model.layers."):
        parts = name.split(".")
        return (1, int(parts[2]), list(_LAYER_NAMES).index(".".join(parts[3:])))
    return (2, name)


def _add_tokenizer(
    writer: Any, tokenizer: dict[str, Any], tok_config: dict[str, Any], config: dict[str, Any]
) -> None:
    import gguf

    model = tokenizer["model"]
    if model.get("type") != "BPE" or model.get("merges"):
        raise SystemExit("expected the tiny byte-level BPE tokenizer without merges")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(tokens) != config["vocab_size"]:
        raise SystemExit(f"{len(tokens)} tokens for a vocabulary of {config['vocab_size']}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_scores([0.0] * len(tokens))  # in place of an empty merges array (see above)
    writer.add_bos_token_id(model["vocab"][tok_config["bos_token"]])
    writer.add_eos_token_id(model["vocab"][tok_config["eos_token"]])
    writer.add_pad_token_id(model["vocab"][tok_config["pad_token"]])
    single = (tokenizer.get("post_processor") or {}).get("single") or []
    writer.add_add_bos_token(any("SpecialToken" in part for part in single[:1]))
    writer.add_add_eos_token(False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "models" / "tiny-ref")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "tiny-gguf")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for qtype in TYPES:
        path = args.out / f"{args.source.name}.{qtype}.gguf"
        write_gguf(args.source, path, qtype)
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
