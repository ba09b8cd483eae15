"""What the two model scripts share: seeding, the byte-level tokenizer, the Llama, saving, loading.

``tools/build_tiny_model.py`` (the reference of ``example_suites/tiny``) and
``tools/build_agent_model.py`` (the agent of the multi-step suites) build
their models the same way; only the tasks, the training data and the sizes
differ. Moving these functions here changed no byte of either checkpoint:
the code is the same, only its place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pytest_quantgate.backends.hf import HFBackend

__all__ = ["BOS", "EOS", "PAD", "build_model", "build_tokenizer", "load", "save", "seed_everything"]

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


class Arch(Protocol):
    """Model size knobs (each script's frozen ``Arch`` dataclass)."""

    @property
    def hidden(self) -> int: ...
    @property
    def layers(self) -> int: ...
    @property
    def heads(self) -> int: ...
    @property
    def intermediate(self) -> int: ...
    @property
    def max_positions(self) -> int: ...


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tokenizer(max_positions: int) -> PreTrainedTokenizerBase:
    """Byte-level tokenizer without merges: one token per byte.

    No merges on purpose: BPE would fuse digit pairs ("12") into single
    tokens with unrelated embeddings, which makes arithmetic and counting much
    harder for a model this small, and a character offset in a transcript
    would no longer be a token offset. Byte level means any text encodes
    (there is no unknown token). A template post-processor prepends ``<bos>``
    so that ``tokenizer(prompt)`` gives what the model was trained on, with no
    chat template or caller-side convention needed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # use_regex=False: no word splitting (irrelevant without merges, and it
    # keeps the pre-tokenizer trivially reversible).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        # Decoder-only generation needs left padding; saving it makes it the
        # default for whoever loads the tokenizer.
        padding_side="left",
        model_max_length=max_positions,
    )


def build_model(arch: Arch, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        max_position_embeddings=arch.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, max_new_tokens: int) -> None:
    """Write the checkpoint (replacing a previous build's files) with a greedy generation config."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # a previous build's files must not linger
        if stale.is_file():
            stale.unlink()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 writes "TokenizersBackend", which transformers 4.x does
    # not know; PreTrainedTokenizerFast loads under both.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load(spec: str) -> HFBackend:
    """Load through the plugin's own backend: the path a user's checkpoint takes.

    ``spec`` is a model spec (``PATH``, ``bnb-nf4:PATH``, ``rtn2g128:PATH``);
    a checkpoint that leaves weights randomly initialised is an error there.
    """
    from pytest_quantgate.backends.hf import HFBackend
    from pytest_quantgate.values.specs import parse_spec

    return HFBackend.load(parse_spec(spec), "cpu", "auto")
