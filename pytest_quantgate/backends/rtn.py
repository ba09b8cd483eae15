"""Round-to-nearest fake quantization: the project's deliberately damaged candidate.

``rtn<bits>[g<group>]:PATH`` loads ``PATH`` like any checkpoint and then
replaces every ``nn.Linear`` weight by its quantize-dequantize image: per
group of ``group_size`` consecutive input columns, an asymmetric min/max grid
of ``2**bits`` levels with an integer zero point (the layout GPTQ and AWQ
checkpoints store, without their error correction), dequantized back to the
weight's dtype.  No quantization library is needed, it runs anywhere torch
does, and the damage is controlled by two integers, which makes it the
candidate of choice for tests and examples that need a *known-bad* model.

torch is imported inside the function so that importing this module (e.g. to
parse a spec) does not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["fake_quantize_weight", "rtn_quantize_"]


def fake_quantize_weight(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Quantize-dequantize a 2-D weight ``(out_features, in_features)``.

    Groups run along the input dimension (each output row is split into
    chunks of ``group_size`` columns).  When ``in_features`` is not a multiple
    of ``group_size`` the last group is simply shorter.

    Returns:
        A new tensor of the same shape and dtype as ``weight``.
    """
    import torch

    _validate(bits, group_size)
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        # e.g. a bitsandbytes Linear4bit (a Linear subclass holding packed uint8):
        # it is already quantized and fake-quantizing its storage is meaningless.
        raise TypeError(f"cannot fake-quantize a {weight.dtype} weight")

    out_features, in_features = weight.shape
    # Work in float32: bf16/fp16 would add their own rounding to the grid math.
    w = weight.detach().to(torch.float32)
    pad = (-in_features) % group_size
    if pad:
        # Pad the ragged last group by repeating its last column, which leaves
        # that group's min and max (hence its grid) unchanged.
        w = torch.cat([w, w[:, -1:].expand(out_features, pad)], dim=1)
    groups = w.reshape(out_features, -1, group_size)

    qmax = (1 << bits) - 1
    # The range always includes 0 (as GPTQ's does): with an integer zero
    # point clamped to the grid, an all-positive group would otherwise lose
    # its top values to clamping.
    lo = groups.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = groups.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / qmax
    # An all-zero group has no range; any positive scale reproduces it exactly.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, qmax)
    q = torch.clamp(torch.round(groups / scale) + zero, 0, qmax)
    deq = (q - zero) * scale

    deq = deq.reshape(out_features, -1)[:, :in_features]
    return deq.to(weight.dtype)


def rtn_quantize_(
    model: torch.nn.Module,
    bits: int,
    group_size: int = 32,
    *,
    skip: tuple[str, ...] = ("lm_head",),
) -> int:
    """Fake-quantize every ``nn.Linear`` weight of ``model`` in place.

    Args:
        model: Any torch module (typically a transformers causal LM).
        bits: Bits per weight, 1..16 (``2**bits`` grid levels per group).
        group_size: Input columns per quantization group.
        skip: Modules whose qualified name contains any of these substrings
            are left alone.  The default keeps the output head in full
            precision, as GPTQ/AWQ/bitsandbytes do by default.

    Returns:
        The number of Linear layers quantized.

    Embeddings are never quantized (they are not ``nn.Linear``).  If a
    quantized Linear shares its weight with an embedding (tied
    ``lm_head``, when ``skip`` does not exclude it), the Linear gets its own
    quantized copy so that the embedding is untouched.  Biases stay as they are.
    """
    import torch

    _validate(bits, group_size)
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            if any(s in name for s in skip):
                continue
            q = fake_quantize_weight(module.weight, bits, group_size)
            if id(module.weight) in embedding_weights:
                module.weight = torch.nn.Parameter(q, requires_grad=module.weight.requires_grad)
            else:
                module.weight.copy_(q)
            count += 1
    return count


def _validate(bits: int, group_size: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
