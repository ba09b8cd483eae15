"""A case has one representation: its statuses computed once, a turn written one way."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.core import records
from pytest_quantgate.core.config import GateConfig
from pytest_quantgate.core.records import CaseRecord, ModelOutcome, Outcome, Status
from pytest_quantgate.report import json_report
from pytest_quantgate.report.aggregator import Aggregator
from pytest_quantgate.storage.store import CacheMode, ResultCache
from pytest_quantgate.values.prompts import normalize_prompt
from pytest_quantgate.values.specs import parse_spec
from pytest_quantgate.values.transcript import CaseRun, Turn, payload_to_run, run_to_payload

CANDIDATES = ("c1", "c2")


def _record(i: int, turns: tuple[Turn, ...] = ()) -> CaseRecord:
    transcript = tuple(t.to_dict() for t in turns)
    cand: Outcome = "fail" if i % 3 == 0 else "pass"
    outcomes = {
        "ref": ModelOutcome("pass", "x", None, transcript),
        **{c: ModelOutcome(cand, "y", None, transcript) for c in CANDIDATES},
    }
    return CaseRecord(
        key=f"k{i}",
        nodeid=f"t.py::test[{i}]",
        slices=("s",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes=outcomes,
        trajectory=bool(turns),
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often a case is classified (and its divergence found), wherever that happens."""
    calls: Counter[str] = Counter()
    for name in ("classify", "divergence"):
        real = getattr(records, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(records, name, wrapper)
    return calls


def test_each_record_is_classified_once_where_it_is_made(counted: Counter[str], tmp_path: Path) -> None:
    turn = Turn("p", "r")
    made = [_record(i, (turn,) if i % 2 else ()) for i in range(12)]
    # Made on the process that ran the case: one status (and, for a trajectory, one divergence)
    # per candidate.
    assert counted == {"classify": 12 * len(CANDIDATES), "divergence": 6 * len(CANDIDATES)}
    config = GateConfig(
        reference=parse_spec("ref=/m", check_path=False),
        candidates=tuple(parse_spec(f"{c}=rtn4:/m", check_path=False) for c in CANDIDATES),
        cache_mode=CacheMode.OFF,
    )
    aggregator = Aggregator(config)
    for record in made:
        aggregator.add(CaseRecord.from_json(record.to_json()))  # as the controller receives it
    report = aggregator.report()
    json_report.write(report, tmp_path / "gate.json")
    # Sent, read back, gated, written: nothing classified again.
    assert counted == {"classify": 12 * len(CANDIDATES), "divergence": 6 * len(CANDIDATES)}
    assert report.candidates[0].rows[0].regressions == 4
    assert {r.status("c1") for r in report.records} == {Status.PASSED, Status.REGRESSED}


TURNS = [
    Turn("17+25=", "42"),
    Turn("17+25=", "42", rendered="17+25="),  # a rendering equal to the prompt is not kept twice
    Turn(
        normalize_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
        "hello",
        rendered="<|system|>be brief<|user|>hi<|assistant|>",
    ),
]


@pytest.mark.parametrize("turn", TURNS, ids=["text", "text-rendered-same", "chat"])
def test_a_turn_has_one_encoding_shared_by_the_cache_and_the_report(turn: Turn, tmp_path: Path) -> None:
    run = CaseRun("k", [turn], state={"total": 3})
    # The cache stores the run's payload, whose turns are Turn.to_dict() ...
    assert run_to_payload(run)["turns"] == [turn.to_dict()]
    cache = ResultCache.open(tmp_path, CacheMode.ON)
    assert cache.put_runs("run", {"k": "fp"}, {"k": run}) == 1
    assert cache.get_runs("run", {"k": "fp"}) == {"k": run}
    assert payload_to_run("k", run_to_payload(run)) == run
    # ... and so does the JSON report's transcript of the case.
    record = CaseRecord(
        key="k",
        nodeid="t.py::test[k]",
        slices=("s",),
        cluster=None,
        critical=False,
        reference="ref",
        outcomes={"ref": ModelOutcome("pass", turn.reply, None, tuple(t.to_dict() for t in run.turns))},
    )
    (written,) = record.to_dict()["outcomes"]["ref"]["transcript"]
    assert written == turn.to_dict() and Turn.from_dict(written) == turn
    cache.close()
