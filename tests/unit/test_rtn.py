"""Round-to-nearest fake quantization (the damaged candidate's scheme)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

from pytest_quantgate.backends.rtn import fake_quantize_weight, rtn_quantize_


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 64)
        self.proj = torch.nn.Linear(64, 32)
        self.mlp = torch.nn.Linear(32, 64)
        self.lm_head = torch.nn.Linear(64, 16, bias=False)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group", [8, 32])
def test_each_group_takes_at_most_2_to_the_bits_levels(bits: int, group: int) -> None:
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    q = fake_quantize_weight(w, bits, group)
    assert q.shape == w.shape and q.dtype == w.dtype
    for row in q:
        for chunk in row.split(group):
            assert len(torch.unique(chunk)) <= 2**bits
    # Round to nearest on a grid spanning the group's range and 0: no weight
    # moves by more than half a grid step.
    g = w.reshape(6, -1, group)
    step = (g.amax(-1).clamp(min=0) - g.amin(-1).clamp(max=0)) / (2**bits - 1)
    err = (q - w).abs().reshape(6, -1, group).amax(-1)
    assert torch.all(err <= step * 0.5001 + 1e-7)


def test_error_shrinks_with_more_bits() -> None:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    errors = [(fake_quantize_weight(w, b, 32) - w).pow(2).mean().item() for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4


def test_ragged_last_group_and_constant_groups() -> None:
    w = torch.cat([torch.full((2, 8), 0.5), torch.randn(2, 5)], dim=1)
    q = fake_quantize_weight(w, 2, 8)
    assert torch.equal(q[:, :8], w[:, :8])  # a constant group is reproduced exactly
    assert q.shape == (2, 13)


def test_model_layers_quantized_lm_head_and_embedding_skipped() -> None:
    torch.manual_seed(0)
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert rtn_quantize_(model, 2, 32) == 2
    after = dict(model.named_parameters())
    assert not torch.equal(after["proj.weight"], before["proj.weight"])
    assert not torch.equal(after["mlp.weight"], before["mlp.weight"])
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    assert torch.equal(after["embed.weight"], before["embed.weight"])
    assert torch.equal(after["proj.bias"], before["proj.bias"])


def test_tied_head_gets_its_own_copy() -> None:
    model = Tiny()
    model.lm_head.weight = model.embed.weight  # tied, as in small LMs
    rtn_quantize_(model, 2, 32, skip=())
    assert model.lm_head.weight is not model.embed.weight
    assert not torch.equal(model.lm_head.weight, model.embed.weight)


@pytest.mark.parametrize(("bits", "group"), [(0, 32), (17, 32), (2, 0)])
def test_bad_arguments(bits: int, group: int) -> None:
    with pytest.raises(ValueError):
        rtn_quantize_(Tiny(), bits, group)
