"""The example gate: four capabilities of the tiny shipped model, one slice each.

Each test body is the programmatic check of one model output. The plugin runs
every case on the reference and on each candidate (greedy, batched) and calls
the body once per model; the gate then compares the two per slice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantgate import quant_case, quant_slice

DATA = Path(__file__).parent / "data"


def cases(slice_name: str) -> list:
    """Cases of one slice from its JSONL file (ids are content hashes)."""
    rows = [
        json.loads(line) for line in (DATA / f"{slice_name}.jsonl").read_text().splitlines() if line.strip()
    ]
    return [pytest.param(r["prompt"], r["expected"], id=r["id"]) for r in rows]


@quant_slice("recall")
@quant_case("prompt, expected", cases("recall"), max_new_tokens=4, stop="\n")
def test_key_value_recall(prompt: str, expected: str, output: str) -> None:
    # "a=3 k=7 m=1 ; k?" -> "7"
    assert output.strip() == expected


@quant_slice("retention")
@quant_case("prompt, expected", cases("retention"), max_new_tokens=4, stop="\n")
def test_rule_held_over_a_long_list(prompt: str, expected: str, output: str) -> None:
    # "hold 7 | 3 8 1 9 ... ; held?" -> "7": the value stated first, held across the list
    assert output.strip() == expected


@quant_slice("arith")
@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\n")
def test_two_digit_arithmetic(prompt: str, expected: str, output: str) -> None:
    # "17+8=" -> "25"
    assert output.strip() == expected


# Output format is a contract with downstream code: no drop is tolerated.
@quant_slice("format", tolerance=0.0)
@quant_case("prompt, expected", cases("format"), max_new_tokens=44, stop="\n")
def test_strict_json_format(prompt: str, expected: str, output: str) -> None:
    try:
        got = json.loads(output)
    except ValueError:
        # Malformed output is the model failing the case, not the check crashing.
        pytest.fail(f"not JSON: {output!r}")
    assert got == json.loads(expected)
    assert output.strip() == expected, "valid JSON but not the compact form asked for"
