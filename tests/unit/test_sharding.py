"""Shards of quant cases: balanced by cost, the same in every process."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pytest_quantgate.core.sharding import ShardPlan, assign_shards, shard_name


def test_each_case_gets_one_shard_and_the_costliest_spread_first() -> None:
    costs = {"a": 5, "b": 3, "c": 3, "d": 1}
    assert assign_shards(costs, 2) == {"a": 0, "b": 1, "c": 1, "d": 0}
    assert assign_shards(costs, 1) == dict.fromkeys(costs, 0)
    assert set(assign_shards(costs, 8).values()) == {0, 1, 2, 3}  # more shards than cases: some empty


@pytest.mark.parametrize("shards", [2, 3, 4, 7])
def test_shard_costs_stay_within_the_largest_case(shards: int) -> None:
    rng = random.Random(shards)
    costs = {f"case{i}": rng.choice([8, 16, 64, 6 * 32]) for i in range(500)}
    totals = [0] * shards
    for key, shard in assign_shards(costs, shards).items():
        totals[shard] += costs[key]
    assert max(totals) - min(totals) <= max(costs.values())


def test_the_assignment_does_not_depend_on_the_order_cases_are_seen() -> None:
    costs = {f"t.py::test[{i}]": 1 + i % 5 for i in range(50)}
    reordered = dict(reversed(list(costs.items())))
    assert assign_shards(costs, 3) == assign_shards(reordered, 3)


def test_zero_shards_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        assign_shards({"a": 1}, 0)


def test_the_plan_file_round_trips_and_is_empty_until_written(tmp_path: Path) -> None:
    plan = ShardPlan(tmp_path / "sub" / "plan.json")
    assert plan.shards == {}
    plan.write({"t.py::a[0]": shard_name(0), "t.py::a[1]": shard_name(1)})
    assert ShardPlan(plan.path).shards == {"t.py::a[0]": "quantgate-0", "t.py::a[1]": "quantgate-1"}
    assert [p.name for p in plan.path.parent.iterdir()] == ["plan.json"]  # no temporary left behind
