"""The fixtures quantgate gives tests: a model's run of a case, the configuration, the models.

``output``, ``final_state`` and ``transcript`` are placeholders: the plugin
calls a quant case's body once per model with that model's values (see
:mod:`.worker`). Requested anywhere else — by a test that is not a quant
case, or by another fixture — they are an error naming the test.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..backends.base import Backend
from ..core.config import GateConfig
from ..values.transcript import Turn
from .worker import CASE_ERROR_KEY, CASE_KEY, WORKER_KEY

__all__ = ["final_state", "output", "quant_candidates", "quant_config", "quant_reference", "transcript"]


def _placeholder(request: pytest.FixtureRequest, name: str) -> None:
    """Fail with one line unless a quant case asked for ``name`` (whose body the plugin calls
    with each model's value; another fixture asking for it fails at collection, see
    :func:`~.collection.run_arg_problem`)."""
    node = request.node
    if CASE_KEY not in node.stash and CASE_ERROR_KEY not in node.stash:
        pytest.fail(
            f"{node.nodeid}: the `{name}` fixture is only given to @quant_case tests "
            "(it is one model's run of the case, set per model)",
            pytrace=False,
        )


@pytest.fixture
def output(request: pytest.FixtureRequest) -> str:
    """The model output a quant_case test checks: the (last) reply, set per model by the plugin."""
    _placeholder(request, "output")
    return ""


@pytest.fixture
def final_state(request: pytest.FixtureRequest) -> Any:
    """A Trajectory case's state after its last step, set per model by the plugin."""
    _placeholder(request, "final_state")
    return None


@pytest.fixture
def transcript(request: pytest.FixtureRequest) -> list[Turn]:
    """A case's turns (prompt, reply; ``turn.rendered`` is what the model was fed), per model."""
    _placeholder(request, "transcript")
    return []


@pytest.fixture(scope="session")
def quant_config(pytestconfig: pytest.Config) -> GateConfig:
    """The session's validated quantgate configuration."""
    return pytestconfig.stash[WORKER_KEY].gate_config


@pytest.fixture(scope="session")
def quant_reference(pytestconfig: pytest.Config) -> Backend:
    """The reference model, loaded once per session (per xdist worker)."""
    executor = pytestconfig.stash[WORKER_KEY].executor
    if not executor.config.enabled:
        pytest.skip("quantgate: no reference model given (--quant-reference)")
    return executor.pool.get(executor.labels[0])


@pytest.fixture(scope="session")
def quant_candidates(pytestconfig: pytest.Config) -> dict[str, Backend]:
    """The candidate models by label, each loaded once per session."""
    executor = pytestconfig.stash[WORKER_KEY].executor
    return (
        {label: executor.pool.get(label) for label in executor.labels[1:]} if executor.config.enabled else {}
    )
