"""Gate-test ids given back on the command line: parsed, and turned into paths and a selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_quantgate.integration.rerun import Rerun, split_gate_args
from pytest_quantgate.report.model import gate_test_id, parse_gate_test_id


@pytest.mark.parametrize(
    ("arg", "parsed"),
    [
        ("::quantgate::rtn2::arith", ("", "rtn2", "arith")),
        ("suite::quantgate::rtn2::ALL", ("suite", "rtn2", "ALL")),
        ("..::quantgate::nf4::load", ("..", "nf4", "load")),
        ("quantgate::rtn2::arith", ("", "rtn2", "arith")),  # as the docs write it
        ("C:/suite::quantgate::a::b", ("C:/suite", "a", "b")),
        ("tests/test_x.py::test_a", None),
        ("x/quantgate::a::b", None),
        ("a::b::quantgate::x::y", None),
    ],
)
def test_parse_gate_test_id(arg: str, parsed: tuple[str, str, str] | None) -> None:
    assert parse_gate_test_id(arg) == parsed


def test_gate_test_ids_round_trip() -> None:
    assert parse_gate_test_id(gate_test_id("rtn2g128", "format")) == ("", "rtn2g128", "format")


def test_split_gate_args(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    (suite / "tests").mkdir(parents=True)
    args, rerun = split_gate_args(
        ["-x", "::quantgate::rtn2::arith", "::quantgate::rtn2::ALL", "::quantgate::nf4::format"],
        invocation_dir=suite,
        rootpath=suite,
    )
    assert args == ["-x", str(suite)]
    assert rerun.rows == {"rtn2": {"arith", "ALL"}, "nf4": {"format"}}
    assert rerun.keeps(["recall"])  # ALL keeps every case
    # From another directory, with testpaths: the root directory's test paths.
    args, rerun = split_gate_args(
        ["suite::quantgate::rtn2::arith"], invocation_dir=tmp_path, rootpath=suite, testpaths=["tests"]
    )
    assert args == [str(suite / "tests")]
    assert rerun.keeps(["arith", "x"]) and not rerun.keeps(["recall"])
    # No gate id: the arguments are left alone.
    assert split_gate_args(["tests/test_x.py::test_a"], invocation_dir=suite, rootpath=suite) == (
        ["tests/test_x.py::test_a"],
        Rerun(),
    )
