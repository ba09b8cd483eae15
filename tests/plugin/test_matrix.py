"""The candidate matrix: several candidates in one run, side by side, with their weight footprints.

The runs are on scripted ``fake:`` models, whose backend a conftest extends
with a ``weight_bytes`` fact (the transformers backend's, which the tests at
the end check on the tiny model and small modules: parameters and buffers,
packed quantized weights at their real size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .fakes import (
    XDIST_MODES,
    Slice,
    answers,
    cases,
    gate_args,
    generated,
    model,
    prompts,
    read_report,
    suite_source,
)

ARITH = cases("arith", 60)
RECALL = cases("recall", 10)

#: A conftest whose fake models report a weight footprint, as the transformers backend does.
WEIGHED_CONFTEST = """
from pytest_quantgate.backends.fake import FakeBackend

WEIGHTS = {"ref": 4 * 2**20 + 2**19, "same": 3 * 2**19, "bad": 33_792 * 4}


class Weighed(FakeBackend):
    def describe(self):
        return {**super().describe(), "weight_bytes": WEIGHTS[self.label]}


def pytest_quantgate_make_backend(spec, device, dtype):
    return Weighed.load(spec, device, dtype) if spec.scheme == "fake" else None
"""


def test_matrix_of_three_candidates_one_not_loaded(pytester: pytest.Pytester) -> None:
    # The matrix is drawn on the controller from the records: xdist changes nothing here
    # that test_plugin's xdist comparisons do not already cover.
    mode = "no-xdist"
    pytester.makeconftest(WEIGHED_CONFTEST)
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    replies = {**answers(ARITH), **answers(RECALL)}
    ref = model(pytester, "ref", replies)
    same = model(pytester, "same", replies)
    bad = model(pytester, "bad", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    broken = model(pytester, "broken", replies, load_error="CUDA out of memory")
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *gate_args(ref, same, broken, bad), f"--quant-report={report}", *XDIST_MODES[mode]
    )
    out = result.stdout.str()
    # The load failure and bad's regressed rows fail the run, as with one candidate each.
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    failed = sorted(line.split(" - ")[0] for line in result.stdout.lines if line.startswith("FAILED "))
    assert failed == [
        "FAILED ::quantgate::bad::ALL",
        "FAILED ::quantgate::bad::arith",
        "FAILED ::quantgate::broken::load",
    ]
    # broken did not stop the others: both were loaded and ran every case after it failed.
    assert generated(pytester) == {label: prompts(ARITH, RECALL) for label in ("ref", "same", "bad")}
    # One table per candidate, then the matrix, last.
    result.stdout.fnmatch_lines(
        [
            "*= quantgate: same (fake:same.json) vs reference ref: INCONCLUSIVE =*",
            "*= quantgate: broken (fake:broken.json): NOT EVALUATED =*",
            "*= quantgate: bad (fake:bad.json) vs reference ref: REGRESSED =*",
            "*= quantgate: 3 candidates vs reference ref (weights 4.5 MiB) =*",
            "partial run: broken could not be loaded",
            "slice        same  broken (not loaded)        bad",
            "arith    Δ +0.0 ?                    —  Δ -33.3 R",
            "recall   Δ +0.0 ?                    —   Δ +0.0 ?",
            "───────  ────────  ───────────────────  ─────────",
            "ALL      Δ +0.0 ?                    —  Δ -28.6 R",
            "weights   1.5 MiB                    ?  132.0 KiB",
            "Δ: candidate − reference accuracy, pts; R regressed, P pass, ? inconclusive, I",
        ]
    )
    assert out.count("candidates vs reference") == 1
    # The JSON holds the same matrix.
    data = read_report(report)
    assert data["models"]["bad"]["weight_bytes"] == 33_792 * 4
    assert data["matrix"] == {
        "reference": {"label": "ref", "weight_bytes": 4 * 2**20 + 2**19},
        "slices": ["arith", "recall", "ALL"],
        "candidates": [
            {"label": "same", "verdict": "INCONCLUSIVE", "not_evaluated": None, "weight_bytes": 3 * 2**19},
            {"label": "broken", "verdict": None, "not_evaluated": "not loaded", "weight_bytes": None},
            {"label": "bad", "verdict": "REGRESSED", "not_evaluated": None, "weight_bytes": 33_792 * 4},
        ],
        "cells": [
            [_cell(0.0, "INCONCLUSIVE", 60), None, _cell(1 / 3, "REGRESSED", 60)],
            [_cell(0.0, "INCONCLUSIVE", 10), None, _cell(0.0, "INCONCLUSIVE", 10)],
            [_cell(0.0, "INCONCLUSIVE", 70), None, _cell(20 / 70, "REGRESSED", 70)],
        ],
    }
    # Each cell is its candidate's row.
    for j, gate in enumerate(data["candidates"]):
        for i, row in enumerate(gate["slices"]):
            assert data["matrix"]["slices"][i] == row["slice"]
            assert data["matrix"]["cells"][i][j] == _cell(row["drop"], row["verdict"], row["n"])


def _cell(drop: float, verdict: str, n: int) -> dict[str, Any]:
    return {"drop": pytest.approx(drop), "verdict": verdict, "n": n}


def test_no_matrix_for_one_candidate(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("recall", RECALL)))
    ref, cand = model(pytester, "ref", answers(RECALL)), model(pytester, "cand", answers(RECALL))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*gate_args(ref, cand), f"--quant-report={report}")
    assert result.ret == 0, result.stdout.str()
    assert "candidates vs reference" not in result.stdout.str()
    # The JSON has it all the same; fake models do not say their footprint.
    matrix = read_report(report)["matrix"]
    assert matrix["candidates"] == [
        {"label": "cand", "verdict": "INCONCLUSIVE", "not_evaluated": None, "weight_bytes": None}
    ]
    assert matrix["reference"] == {"label": "ref", "weight_bytes": None}


# -- the footprint: parameters and buffers (the transformers backend) ------------------


def test_weight_bytes_of_the_tiny_model_count_tied_weights_once(tiny_ref: Path) -> None:
    pytest.importorskip("transformers")
    from pytest_quantgate.backends.hf import HFBackend
    from pytest_quantgate.values.specs import parse_spec

    backend = HFBackend.load(parse_spec(f"ref={tiny_ref}"), "cpu", "auto")
    facts = backend.describe()
    assert facts["dtype"] == "float32"
    # Embeddings and the LM head are one tensor; rotary inv_freq is derived, not a weight.
    assert backend.model.lm_head.weight.data_ptr() == backend.model.model.embed_tokens.weight.data_ptr()
    assert facts["weight_bytes"] == 4 * facts["parameters"]


def test_weight_bytes_count_packed_buffers() -> None:
    pytest.importorskip("torch")
    import torch

    from pytest_quantgate.backends.hf import _weight_bytes

    class Packed(torch.nn.Module):
        """A GPTQ-style layer: packed int32 weights are buffers, and only its bias is a parameter."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("qweight", torch.zeros(16, 64, dtype=torch.int32))  # 4-bit, 8 a word
            self.register_buffer("scales", torch.ones(1, 64, dtype=torch.float16))
            self.register_buffer("workspace", torch.zeros(1000), persistent=False)  # derived: not counted
            self.bias = torch.nn.Parameter(torch.zeros(64))

    layer = Packed()
    assert sum(p.numel() for p in layer.parameters()) == 64  # what "parameters" says
    assert _weight_bytes(layer) == 16 * 64 * 4 + 64 * 2 + 64 * 4
    # The same buffer under two names (tied) counts once.
    other = torch.nn.Module()
    other.register_buffer("qweight", layer.get_buffer("qweight"))
    both = torch.nn.Sequential(layer, other)
    assert _weight_bytes(both) == _weight_bytes(layer)


def test_weight_bytes_of_bitsandbytes_4bit_are_the_packed_bytes_and_their_scales() -> None:
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from pytest_quantgate.backends.hf import _weight_bytes

    dense = torch.nn.Linear(256, 128, bias=False)
    nf4 = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4")
    nf4.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4").to("cpu")
    packed = 256 * 128 // 2  # two 4-bit weights a byte
    assert nf4.weight.dtype == torch.uint8 and nf4.weight.numel() == packed
    assert _weight_bytes(dense) == 256 * 128 * 4
    # The uint8 weights, plus the per-block scales bitsandbytes keeps in quant_state.
    assert packed < _weight_bytes(nf4) < packed * 1.15


def test_weight_bytes_of_a_tensor_subclass_are_the_tensors_it_wraps() -> None:
    pytest.importorskip("torch")
    import torch

    from pytest_quantgate.backends.hf import _weight_bytes

    class Int8Weight(torch.Tensor):
        """Like torchao's quantized weights: bfloat16 to the model, int8 data and scales inside."""

        @staticmethod
        def __new__(cls: type[Int8Weight], data: torch.Tensor, scale: torch.Tensor) -> Int8Weight:
            return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=torch.bfloat16)

        def __init__(self, data: torch.Tensor, scale: torch.Tensor) -> None:
            self.int_data, self.scale = data, scale

        def __tensor_flatten__(self) -> tuple[list[str], None]:
            return ["int_data", "scale"], None

        @classmethod
        def __torch_dispatch__(  # type: ignore[override]
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            raise NotImplementedError(func)

    module = torch.nn.Module()
    module.register_buffer("weight", Int8Weight(torch.zeros(8, 16, dtype=torch.int8), torch.ones(8)))
    assert module.get_buffer("weight").element_size() == 2  # what numel() * element_size() would count
    assert _weight_bytes(module) == 8 * 16 + 8 * 4
