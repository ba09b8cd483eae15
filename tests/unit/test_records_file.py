"""The shard file of ``--quant-records`` and the checks of ``--quant-merge`` (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.core.config import ConfigError, parse_quant_shard
from pytest_quantgate.core.records_file import (
    ShardError,
    ShardFile,
    ShardHeader,
    check_shards,
    parse_shard,
    read_shards,
    shard_file_name,
    suite_fingerprint,
)

MODELS: dict[str, Any] = {"reference": {"text": "ref"}, "candidates": [{"text": "q"}]}
SETTINGS: dict[str, Any] = {"tolerance": 0.02, "alpha": 0.05, "slice_tolerances": {}, "strict": False}


def _file(index: int, count: int = 3, **changes: Any) -> ShardFile:
    header: dict[str, Any] = {
        "index": index,
        "count": count,
        "suite": "abc",
        "models": MODELS,
        "settings": SETTINGS,
    }
    header.update(changes)
    return ShardFile(ShardHeader(**header), path=Path(f"d{index}") / shard_file_name(index, count))


@pytest.mark.parametrize(
    ("text", "expected"), [("1/1", (1, 1)), ("2/3", (2, 3)), (" 3 / 3 ", (3, 3)), ("10/12", (10, 12))]
)
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected
    assert parse_quant_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "3", "a/b", "1/3/4", "-1/3", ""])
def test_parse_shard_refuses(text: str) -> None:
    with pytest.raises(ShardError, match="--quant-shard must be K/N"):
        parse_shard(text)


def test_parse_quant_shard_is_a_config_error_or_none() -> None:
    assert parse_quant_shard(None) is None
    with pytest.raises(ConfigError, match=r"^quant_shard must be K/N with 1 <= K <= N, got '4/3'$"):
        parse_quant_shard("4/3", "quant_shard")


def test_suite_fingerprint_ignores_order_and_sees_keys() -> None:
    one = suite_fingerprint({"t::a[0]": "k0", "t::a[1]": "k1"})
    assert one == suite_fingerprint({"t::a[1]": "k1", "t::a[0]": "k0"})
    assert one != suite_fingerprint({"t::a[0]": "k0", "t::a[1]": "k2"})
    assert one != suite_fingerprint({"t::a[0]": "k0"})


def test_a_shard_file_reads_back(tmp_path: Path) -> None:
    written = ShardFile(_file(2).header, records=({"nodeid": "x"},), facts={"selected": 1})
    path = written.write(tmp_path / "out")
    assert path.name == "shard-2-of-3.json"
    (tmp_path / "out" / "notes.json").write_text("{}")  # not a shard file: not read
    [read] = read_shards([tmp_path / "out"])
    assert (read.header, read.records, read.facts, read.path) == (
        written.header,
        written.records,
        written.facts,
        path,
    )


def test_read_shards_refuses_what_is_not_shards(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="is not a directory"):
        read_shards([tmp_path / "nowhere"])
    with pytest.raises(ShardError, match=r"no shard-K-of-N\.json in"):
        read_shards([tmp_path])
    (tmp_path / "shard-1-of-1.json").write_text('{"format": "other"}')
    with pytest.raises(ShardError, match="not a quantgate shard file"):
        read_shards([tmp_path])
    (tmp_path / "shard-1-of-1.json").write_text("{")
    with pytest.raises(ShardError, match="not a readable shard file"):
        read_shards([tmp_path])


def test_whole_shards_pass() -> None:
    check_shards([_file(1), _file(2), _file(3)], MODELS, SETTINGS)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([_file(1), _file(3)], r"shard 2/3 missing \(found 2 of 3\)"),
        ([_file(1)], r"shard 2/3, 3/3 missing \(found 1 of 3\)"),
        ([_file(1), _file(2), _file(2), _file(3)], r"shard 2/3 given twice"),
        ([_file(1), _file(2), _file(3, suite="other")], r"shard 3/3 \(.*\) is foreign: another suite"),
        ([_file(1), _file(2, count=2)], r"shard 2/2 \(.*\) is one of 2 shards"),
        (
            [_file(1), _file(2, models={**MODELS, "candidates": []}), _file(3)],
            r"shard 2/3 \(.*\) is foreign: it gated other models",
        ),
        (
            [_file(1, settings={**SETTINGS, "alpha": 0.1, "strict": True}), _file(2), _file(3)],
            r"shard 1/3 \(.*\) is foreign: other gate settings \(alpha, strict\)",
        ),
    ],
)
def test_shards_that_are_not_one_run_are_refused(files: list[ShardFile], message: str) -> None:
    with pytest.raises(ShardError, match=message):
        check_shards(files, MODELS, SETTINGS)
