"""A case has the same key in every process and run, or collection says why not."""

from __future__ import annotations

import json

import pytest

SUITE = """
from dataclasses import dataclass

import pytest
from pytest_quantgate import quant_case


@dataclass(frozen=True)
class Budget:
    limit: int
    steps: tuple


class Ticket:
    def __init__(self, n):
        self.n = n

    def quantgate_key(self):
        return {"ticket": self.n}


@quant_case("case", [Budget(3, (1, 2)), Budget(5, ())], prompt=lambda case: f"budget {case.limit}")
def test_budget(case, output):
    assert output == "ok"


@quant_case("ticket", [Ticket(1), Ticket(2)], prompt=lambda ticket: f"ticket {ticket.n}")
def test_ticket(ticket, output):
    assert output == "ok"


@quant_case("obj, prompt", [pytest.param(object(), "named", id="named-case")])
def test_named(obj, prompt, output):
    assert output == "ok"
"""


def _keys(pytester: pytest.Pytester, name: str, *args: str) -> dict[str, str]:
    report = pytester.path / f"{name}.json"
    result = pytester.runpytest_subprocess(
        f"--quant-reference=fake:{pytester.path / 'ref.json'}", f"--quant-report={report}", *args
    )
    assert result.ret == 0, result.stdout.str()
    return {c["nodeid"]: c["key"] for c in json.loads(report.read_text())["cases"]}


def test_the_same_case_gets_the_same_key_in_every_process(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_cases=SUITE)
    (pytester.path / "ref.json").write_text(json.dumps({"default": "ok"}))
    monkeypatch.setenv("PYTHONHASHSEED", "1")
    first = _keys(pytester, "first")
    monkeypatch.setenv("PYTHONHASHSEED", "2")
    second = _keys(pytester, "second")
    assert len(first) == 5 and len(set(first.values())) == 5
    assert first == second
    # Under xdist, keys are made on the workers and matched on the controller: the
    # xdist equivalence tests (test_plugin.py) would fail if they differed.


def test_a_parameter_without_identity_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        from pytest_quantgate import quant_case

        class Plain:
            pass

        @quant_case("thing, prompt", [(Plain(), "p")])
        def test_plain(thing, prompt, output):
            pass
        """
    )
    (pytester.path / "ref.json").write_text("{}")
    result = pytester.runpytest(f"--quant-reference=fake:{pytester.path / 'ref.json'}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*test_plain.py::test_plain: case #0: argument 'thing': its value, of type Plain, "
            "has no stable identity*quantgate_key()*pytest.param(..., id=...)*"
        ]
    )
