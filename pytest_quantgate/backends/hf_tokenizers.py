"""Tokenizers compared: a candidate fed other token ids than the reference is refused.

:func:`tokenizer_fingerprint` writes what a tokenizer does to text as
builtins; :func:`tokenizer_differences` says how two differ in short
phrases. The reference's tokenizer is read from its directory (or its GGUF
file), not from a loaded model: its results may come from the cache.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..values.digest import json_digest, jsonable
from ..values.specs import ModelSpec
from .base import BackendError, LoadPolicy
from .hf_gguf import pretrained_source
from .hf_loading import remote_code_problem

__all__ = [
    "check_tokenizer",
    "prepare_tokenizer",
    "reference_fingerprint",
    "tokenizer_differences",
    "tokenizer_fingerprint",
]

# -- tokenizers ----------------------------------------------------------------

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


#: Flags of an added token that change how text around it is split.
_ADDED_FLAGS = ("special", "normalized", "lstrip", "rstrip", "single_word")


def prepare_tokenizer(tokenizer: Any, label: str) -> None:
    """Left padding, and eos as the pad token when there is none (done to both models alike)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise BackendError(f"{label}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _pipeline(tokenizer: Any) -> str | None:
    """A hash of how a fast tokenizer splits text (normalizer, pre-tokenizer, merges, post-processor)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        data = json.loads(backend.to_str())
    except Exception:
        return None
    model = dict(data.get("model") or {})
    if isinstance(model.get("vocab"), dict):
        model.pop("vocab")  # compared on its own, with a readable difference
    kept = {k: data.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}
    return _digest({**kept, "model": model})


def _digest(value: Any) -> str:
    return json_digest(value, 16)


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What a tokenizer does to text, as JSON builtins: compare two with :func:`tokenizer_differences`.

    The vocabulary, the special tokens (by role, and all of them with their
    ids), the chat template, the added tokens with their flags, and a hash of
    the rest of a fast tokenizer's pipeline (normalizer, pre-tokenizer,
    merges, post-processor): two models fed different token ids for the same
    prompt are not comparable, however close their accuracy.
    """
    special = {}
    for name in _SPECIAL_NAMES:
        token = getattr(tokenizer, name, None)
        if token is not None:
            special[name] = [str(token), getattr(tokenizer, f"{name}_id", None)]
    added = {
        str(i): {
            "content": str(getattr(t, "content", t)),
            **{k: bool(getattr(t, k, False)) for k in _ADDED_FLAGS},
        }
        for i, t in sorted(dict(getattr(tokenizer, "added_tokens_decoder", {}) or {}).items())
    }
    template = getattr(tokenizer, "chat_template", None)
    return {
        "vocab": {str(k): int(v) for k, v in tokenizer.get_vocab().items()},
        "special_tokens": special,
        "all_special_tokens": sorted(
            [str(t), int(i)]
            for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)
        ),
        "chat_template": jsonable(template),
        "added_tokens": added,
        "pipeline": _pipeline(tokenizer),
    }


def _some(items: Sequence[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def tokenizer_differences(reference: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """How the candidate's tokenizer differs from the reference's: short phrases, none when equal."""
    out: list[str] = []
    ref_vocab, cand_vocab = reference["vocab"], candidate["vocab"]
    if ref_vocab != cand_vocab:
        changed = sorted(
            f"{tok!r}: {ref_vocab.get(tok, 'absent')} vs {cand_vocab.get(tok, 'absent')}"
            for tok in set(ref_vocab) | set(cand_vocab)
            if ref_vocab.get(tok) != cand_vocab.get(tok)
        )
        out.append(
            f"vocabulary of {len(ref_vocab)} vs {len(cand_vocab)} tokens, {len(changed)} differ "
            f"({_some(changed)})"
        )
    ref_special, cand_special = reference["special_tokens"], candidate["special_tokens"]
    for name in _SPECIAL_NAMES:
        a, b = ref_special.get(name), cand_special.get(name)
        if a != b:
            show = [f"{x[0]!r} ({x[1]})" if x else "none" for x in (a, b)]
            out.append(f"{name} {show[0]} vs {show[1]}")
    ref_all = {tuple(x) for x in reference["all_special_tokens"]}
    cand_all = {tuple(x) for x in candidate["all_special_tokens"]}
    if ref_all != cand_all:
        only = [
            f"only the {who}'s: " + _some([f"{t!r} ({i})" for t, i in sorted(side)])
            for who, side in (("reference", ref_all - cand_all), ("candidate", cand_all - ref_all))
            if side
        ]
        out.append(f"special tokens ({'; '.join(only)})")
    ref_tpl, cand_tpl = reference["chat_template"], candidate["chat_template"]
    if ref_tpl != cand_tpl:
        has = ["one" if t is not None else "none" for t in (ref_tpl, cand_tpl)]
        out.append(
            "chat template differs" if has == ["one", "one"] else f"chat template: {has[0]} vs {has[1]}"
        )
    ref_added, cand_added = reference["added_tokens"], candidate["added_tokens"]
    if ref_added != cand_added:
        ids = sorted(set(ref_added) | set(cand_added), key=int)
        changed = [
            f"{i}: {_added(ref_added.get(i))} vs {_added(cand_added.get(i))}"
            for i in ids
            if ref_added.get(i) != cand_added.get(i)
        ]
        out.append(f"added tokens, {len(changed)} differ ({_some(changed)})")
    if reference["pipeline"] != candidate["pipeline"]:
        out.append("how text is split (normalizer, pre-tokenizer, merges or post-processor)")
    return out


def _added(token: dict[str, Any] | None) -> str:
    if token is None:
        return "absent"
    flags = [k for k in _ADDED_FLAGS if token[k]]
    return f"{token['content']!r}" + (f" [{','.join(flags)}]" if flags else "")


def _tokenizer_files(path: str) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of the files in a checkpoint directory (or of a GGUF file, which holds its
    tokenizer): the key of a cached fingerprint."""
    target = Path(path)
    if target.is_file():
        files = [target]
    elif target.is_dir():
        files = [p for p in sorted(target.iterdir()) if p.is_file() and p.suffix != ".safetensors"]
    else:
        return ()
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=8)
def _fingerprint_at(
    path: str, gguf_file: str | None, trust_remote_code: bool, files: tuple[tuple[str, int, int], ...]
) -> str:
    """The fingerprint (as JSON) of the tokenizer in a checkpoint directory (or a GGUF file), without
    loading its model."""
    from transformers import AutoTokenizer

    source = {"gguf_file": gguf_file} if gguf_file is not None else {}
    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code, **source
    )
    prepare_tokenizer(tokenizer, path)
    return json.dumps(tokenizer_fingerprint(tokenizer))


def reference_fingerprint(policy: LoadPolicy) -> dict[str, Any] | None:
    """The fingerprint of the reference's tokenizer, read from its directory or GGUF file (it need not
    be loaded: its results may come from the cache); None when the reference is neither.

    Raises:
        BackendError: its tokenizer cannot be read.
    """
    ref = policy.reference
    if ref is None or not (ref.kind.target == "checkpoint" or ref.kind.gguf):
        return None
    problem = remote_code_problem(ref, policy)
    if problem:
        raise BackendError(problem)
    where, source = pretrained_source(ref)
    try:
        found = _fingerprint_at(
            str(where), source.get("gguf_file"), policy.trust_remote_code, _tokenizer_files(ref.path)
        )
    except BackendError:
        raise
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        raise BackendError(f"cannot read the tokenizer of the reference {ref.label}: {text}") from exc
    return dict(json.loads(found))


def check_tokenizer(spec: ModelSpec, policy: LoadPolicy, fingerprint: dict[str, Any]) -> list[str]:
    """How this model's tokenizer differs from the reference's; refused unless the policy allows it.

    The reference's tokenizer is read from its directory, not from a loaded
    model: its results may come from the cache. Nothing is compared for the
    reference itself, for a candidate of the same directory, or when the
    reference is not a transformers checkpoint.

    Raises:
        BackendError: they differ and ``--quant-allow-tokenizer-mismatch`` was not given.
    """
    ref = policy.reference
    if ref is None or ref.label == spec.label or Path(ref.path) == Path(spec.path):
        return []
    reference = reference_fingerprint(policy)
    differences = tokenizer_differences(reference, fingerprint) if reference is not None else []
    if differences and not policy.allow_tokenizer_mismatch:
        raise BackendError(
            f"{spec.label}: its tokenizer differs from the reference {ref.label}'s: "
            f"{'; '.join(differences)}; the same prompts would be different token ids, "
            "so the comparison would be meaningless (pass --quant-allow-tokenizer-mismatch to gate it anyway)"
        )
    return differences
