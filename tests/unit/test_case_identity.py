"""Case identity: keys that are the same in every process and run, or an error."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.core.cases import CaseBuildError
from pytest_quantgate.core.cases import build_case as _build_case
from pytest_quantgate.core.identity import CaseIdentityError, case_key, param_identities, stable_repr
from pytest_quantgate.core.markers import explicit_ids, merge_tolerances, parse_quant_case
from pytest_quantgate.values.prompts import GenerationSettings


@dataclass(frozen=True)
class Budget:
    limit: int
    steps: tuple[int, ...]
    note: str = field(default="", compare=False)  # not part of the identity


class Declared:
    def __init__(self, name: str):
        self.name = name

    def quantgate_key(self) -> dict[str, Any]:
        return {"name": self.name}


class Opaque:
    pass


class Colour(enum.Enum):
    RED = 1


def helper() -> None:
    pass


def test_keys_of_builtins_are_pinned() -> None:
    """The key of builtin parameters does not change between releases (caches rely on it)."""
    gs = GenerationSettings(max_new_tokens=5, stop=("\n",))
    params = {"prompt": "17+8=", "expected": "25", "n": 3, "f": 0.5, "l": [1, "a"], "d": {"b": 1, "a": None}}
    assert case_key("t.py::test_arith", params, "17+8=", gs) == "2ba283786fe2d70f42f4"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": [None, True]}, "{'a': [None, True], 'b': 1}"),
        ((1, 2.5, b"x"), "(1, 2.5, b'x')"),
        (frozenset({"b", "a"}), "{'a', 'b'}"),
        (Budget(5, (1, 2), note="ignored"), f"{__name__}.Budget(limit=5, steps=(1, 2))"),
        (Declared("x"), f"{__name__}.Declared<{{'name': 'x'}}>"),
        (Colour.RED, f"{__name__}.Colour.RED"),
        (helper, f"{__name__}.helper"),
        (Budget, f"{__name__}.Budget"),
        (Path("/a/b"), "PosixPath('/a/b')"),
    ],
)
def test_stable_repr(value: Any, text: str) -> None:
    assert stable_repr(value) == text


@pytest.mark.parametrize("value", [Opaque(), lambda: 1, [1, Opaque()], {"k": object()}])
def test_values_without_identity_are_refused(value: Any) -> None:
    with pytest.raises(CaseIdentityError, match=r"has no stable identity.*quantgate_key.*pytest\.param"):
        stable_repr(value)


def test_an_explicit_id_names_a_value_without_identity() -> None:
    with pytest.raises(
        CaseIdentityError, match="argument 'case': its value, of type Opaque, has no stable identity"
    ):
        param_identities({"case": Opaque(), "n": 1}, None)
    named = param_identities({"case": Opaque(), "n": 1}, "first")
    gs = GenerationSettings()
    assert case_key("t.py::t", named, "p", gs) == case_key(
        "t.py::t", param_identities({"case": Opaque(), "n": 1}, "first"), "p", gs
    )
    assert case_key("t.py::t", named, "p", gs) != case_key(
        "t.py::t", param_identities({"case": Opaque(), "n": 1}, "second"), "p", gs
    )


def test_explicit_ids_come_from_params_lists_and_callables() -> None:
    values = [pytest.param(Opaque(), id="one"), Opaque(), Opaque()]
    assert explicit_ids(values, None) == ("one", None, None)
    assert explicit_ids(values, [None, "two", None]) == ("one", "two", None)
    assert explicit_ids([("a", 1), ("b", 2)], lambda v: str(v)) == ("a-1", "b-2")
    assert explicit_ids([("a", Opaque())], lambda v: v if isinstance(v, str) else None) == (None,)


def test_marker_refuses_a_case_without_identity_at_parse_time() -> None:
    ok = parse_quant_case(("case, prompt", [(Budget(1, ()), "p"), pytest.param(Opaque(), "q", id="q")]), {})
    ok.check_identities()
    bad = parse_quant_case(("case, prompt", [(Budget(1, ()), "p"), (Opaque(), "q")]), {})
    with pytest.raises(CaseIdentityError, match=r"case #1: argument 'case': its value, of type Opaque"):
        bad.check_identities()
    single = parse_quant_case(("prompt", ["a", Opaque()]), {})
    with pytest.raises(CaseIdentityError, match=r"case #1: argument 'prompt'"):
        single.check_identities()


def build(
    args: tuple[Any, Any],
    kwargs: dict[str, Any],
    params: dict[str, Any],
    slices: list[tuple[tuple[str, ...], dict[str, Any]]] | None = None,
) -> Any:
    return _build_case(
        parse_quant_case(args, kwargs),
        test_id="t.py::test",
        nodeid="t.py::test[0]",
        params=params,
        index=0,
        slice_markers=slices or [],
    )


def test_build_case_merges_slices_and_takes_the_stricter_margin() -> None:
    case = build(
        ("prompt", ["a"]),
        {"critical": True, "cluster": lambda prompt: prompt.upper()},
        {"prompt": "a"},
        [(("x", "y"), {"tolerance": 0.05}), (("y", "z"), {"tolerance": 0.0}), (("x",), {})],
    )
    assert case.slices == ("x", "y", "z") and case.critical and case.cluster == "A"
    assert case.tolerances == {"x": 0.05, "y": 0.0, "z": 0.0}


def test_build_case_errors_are_one_line_and_name_the_item() -> None:
    with pytest.raises(
        CaseBuildError, match=r"t.py::test\[0\]: cannot build the quant case: ZeroDivisionError"
    ):
        build(("n", [1]), {"prompt": lambda n: str(n / 0)}, {"n": 1})
    with pytest.raises(CaseBuildError, match=r"t.py::test\[0\]: argument 'other': its value, of type Opaque"):
        build(("prompt", ["a"]), {}, {"prompt": "a", "other": Opaque()})
    # With an explicit id the same parameter is named by it, the same way each time.
    keys = {
        build(("prompt", [pytest.param("a", id="named")]), {}, {"prompt": "a", "other": Opaque()}).key
        for _ in range(2)
    }
    assert len(keys) == 1


def test_merge_tolerances() -> None:
    assert merge_tolerances({"a": 0.1}, {"a": 0.02, "b": 0.3}, {}) == {"a": 0.02, "b": 0.3}
    assert merge_tolerances() == {}
