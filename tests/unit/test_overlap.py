"""Calibration vs evaluation overlap: which eval prompts the calibration texts contain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantgate.core.overlap import NGRAM, WARN_SHARE, overlap
from pytest_quantgate.values.calibration import read_calibration

LONG = "the quick brown fox jumps over the lazy dog near the river bank"


@pytest.mark.parametrize(
    ("prompt", "calibration", "hit"),
    [
        (LONG, [f"intro. {LONG.upper()} and more"], True),  # case-folded
        (LONG, ["the quick brown fox jumps over a lazy cat"], False),  # 6 shared words only
        (LONG, [" ".join(LONG.split()[3 : 3 + NGRAM])], True),  # one 8-word run inside the prompt
        ("17+8=", ["warm up: 17+8=25"], True),  # short prompt: whole, as a run of words
        ("17+8=", ["warm up: 17+9=26"], False),
        ("json: a 1 ->", ["JSON: A 1 -> {}"], True),
        ("", ["anything"], False),
    ],
)
def test_a_prompt_overlaps_when_a_long_run_or_all_of_it_is_in_a_calibration_text(
    prompt: str, calibration: list[str], hit: bool
) -> None:
    found = overlap({"t.py::c": prompt}, calibration, "cal.txt")
    assert found.overlapping == (("t.py::c",) if hit else ())


def test_share_and_warning_threshold() -> None:
    prompts = {f"t.py::c[{i}]": f"{i}+{i}=" for i in range(200)}
    clean = overlap(prompts, ["nothing like the prompts"], "cal.txt")
    assert (clean.share, clean.warns) == (0.0, False)
    leaked = overlap(prompts, ["3+3= 6", "5+5= 10", "7+7= 14"], "cal.txt")
    assert leaked.overlapping == ("t.py::c[3]", "t.py::c[5]", "t.py::c[7]")
    assert leaked.share == 3 / 200 and leaked.share > WARN_SHARE and leaked.warns
    data = leaked.to_dict()
    assert (data["overlapping"], data["cases"], data["cases_overlapping"][0]) == (3, 200, "t.py::c[3]")


def test_calibration_files_are_read_as_jsonl_or_text(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "first text"}) + "\n\n" + json.dumps({"messages": ["a", {"content": "b"}]}) + "\n"
    )
    assert read_calibration(tmp_path / "c.jsonl") == ["first text", "a", "b"]
    (tmp_path / "c.txt").write_text("one\n\ntwo\n")
    assert read_calibration(tmp_path / "c.txt") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: not valid JSON"):
        read_calibration(tmp_path / "bad.jsonl")
