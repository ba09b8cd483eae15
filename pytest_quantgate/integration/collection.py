"""Collection of quant cases: ``quant_case`` parametrizes a test, each item becomes a case.

:func:`parametrize` is the body of ``pytest_generate_tests``; :func:`case_of`
builds an item's :class:`~..core.cases.CaseSpec` once its collection is final.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from ..core.cases import CaseBuildError, CaseSpec, build_case
from ..core.executor import Check
from ..core.markers import QuantCaseMarker, parse_quant_case, parse_slice_marker
from ..core.records import Outcome, run_check
from ..core.trajectory import Trajectory, max_steps_of
from ..values.transcript import CaseRun
from . import _compat

__all__ = [
    "MARKERS_KEY",
    "RUN_ARGS",
    "body_check",
    "case_of",
    "cost_of",
    "is_quant_case",
    "parametrize",
    "run_arg_problem",
    "slices_of",
]

#: The parsed ``quant_case`` marker of each test (by its id without parameters).
MARKERS_KEY = pytest.StashKey[dict[str, QuantCaseMarker]]()
#: The arguments that carry one model's run of a case into the test body.
RUN_ARGS = ("output", "final_state", "transcript")
#: What the test body's check does with each pytest outcome exception.
_CHECK_EXCEPTIONS = {
    "fail_types": (AssertionError, pytest.fail.Exception),
    "skip_types": (pytest.skip.Exception,),
    "xfail_types": (pytest.xfail.Exception,),
    "passthrough": (pytest.exit.Exception,),
}


def parametrize(metafunc: pytest.Metafunc) -> None:
    """Parametrize a ``quant_case`` test over its cases; a bad marker fails collection in one line."""
    marker = metafunc.definition.get_closest_marker("quant_case")
    if marker is None:
        return
    where = metafunc.definition.nodeid
    problem = None
    try:
        parsed = parse_quant_case(marker.args, marker.kwargs)
        for m in metafunc.definition.iter_markers("slice"):
            parse_slice_marker(m.args, m.kwargs)
        parsed.check_identities()
    except ValueError as exc:
        problem = str(exc)
    if problem is not None:
        # Outside the except block: a failure raised inside it would be
        # printed after the ValueError's own traceback ("During handling ...").
        pytest.fail(f"{where}: {problem}", pytrace=False)
    if not any(name in metafunc.fixturenames for name in RUN_ARGS):
        pytest.fail(
            f"{where}: a quant_case test must take the argument `output` (the model output it checks), "
            "or, for a Trajectory, `final_state` or `transcript`",
            pytrace=False,
        )
    metafunc.config.stash[MARKERS_KEY][where] = parsed
    # The argnames as written: a single name takes scalar values, a list tuples.
    metafunc.parametrize(marker.args[0], parsed.argvalues, ids=parsed.ids)


def is_quant_case(item: pytest.Item) -> bool:
    return item.get_closest_marker("quant_case") is not None


def slices_of(item: pytest.Item) -> list[str]:
    return [str(name) for m in item.iter_markers("slice") for name in m.args]


def _marker_of(item: pytest.Item) -> tuple[str, QuantCaseMarker] | None:
    """The test id (without parameters) and parsed ``quant_case`` of a collected quant case."""
    if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):
        return None
    test_id = f"{item.parent.nodeid if item.parent else ''}::{item.originalname}"
    marker = item.config.stash[MARKERS_KEY].get(test_id)
    return None if marker is None else (test_id, marker)


def cost_of(item: pytest.Item) -> int | None:
    """A quant case's estimated generation cost (steps × max_new_tokens); None for other tests."""
    found = _marker_of(item)
    if found is None:
        return None
    _, marker = found
    steps = 1
    if isinstance(marker.prompt, str):
        value = item.callspec.params.get(marker.prompt)  # type: ignore[attr-defined]
        if isinstance(value, Trajectory):
            try:
                steps = max_steps_of(value)
            except ValueError:  # reported when the case is built
                steps = 1
    return steps * marker.settings.max_new_tokens


def case_of(item: pytest.Item) -> CaseSpec | None:
    """The case of a collected quant case (None for any other test).

    Raises:
        CaseBuildError: the case cannot be built (its prompt, cluster or identity).
    """
    found = _marker_of(item)
    if found is None:
        return None
    test_id, marker = found
    assert isinstance(item, pytest.Function)
    return build_case(
        marker,
        test_id=test_id,
        nodeid=item.nodeid,
        params=item.callspec.params,
        index=item.callspec.indices.get(marker.argnames[0]),
        slice_markers=[(m.args, m.kwargs) for m in item.iter_markers("slice")],
        cluster_mark=_cluster_mark(item),
    )


def run_arg_problem(item: pytest.Item) -> str | None:
    """Why a quant case cannot run: a fixture of it takes ``output`` (or another run argument).

    Only the test function is called once per model with that model's run;
    a fixture is set up once per test and would see a placeholder.
    """
    taken = _compat.fixtures_taking(item, RUN_ARGS)
    if not taken:
        return None
    fixture, name = taken[0]
    return (
        f"{item.nodeid}: the fixture `{fixture}` requests `{name}`, which only the test function of a "
        "@quant_case test receives (once per model); take it as an argument of the test instead"
    )


def _cluster_mark(item: pytest.Item) -> Any:
    marker = item.get_closest_marker("quant_cluster")
    if marker is None:
        return None
    if len(marker.args) != 1 or marker.kwargs:
        raise CaseBuildError(f"{item.nodeid}: quant_cluster takes one argument, the cluster's name")
    return marker.args[0]


def body_check(item: pytest.Function) -> Check:
    """The test body as a check of one model's run of the case: ``check(run) -> (outcome, message)``."""
    names = _test_argnames(item)
    kwargs = {name: item.funcargs[name] for name in names}

    def check(run: CaseRun) -> tuple[Outcome, str | None]:
        given = {"output": run.output, "final_state": run.state, "transcript": list(run.turns)}
        return run_check(
            item.obj, {**kwargs, **{k: v for k, v in given.items() if k in names}}, **_CHECK_EXCEPTIONS
        )

    return check


def _test_argnames(item: pytest.Function) -> list[str]:
    """The arguments the test function takes, as pytest passes them (no defaults)."""
    params = inspect.signature(item.obj).parameters.values()
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name in item.funcargs
    ]
