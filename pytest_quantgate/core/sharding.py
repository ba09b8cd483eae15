"""Cases divided among xdist workers before anything is generated.

Each worker batch-generates only its own shard, once per model. The cases
are cut into as many shards as there are workers, balanced by estimated cost
(steps × ``max_new_tokens``) with the longest-processing-time rule, the same
way in every worker (the assignment depends only on the cases, never on the
order a worker happens to see them).

The workers write the plan (node id -> shard) to a file the controller
named; the controller's scheduler (:func:`~..integration._compat.shard_scheduler`) reads it and
sends each shard whole to one worker, every other test one at a time as
``--dist load`` does. (xdist's own ``loadgroup`` cannot carry this: it
appends the group to node ids, which pytest 9 no longer reports.)
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..values.files import atomic_write_text

__all__ = [
    "SHARD_PREFIX",
    "ShardPlan",
    "assign_shards",
    "shard_name",
]

#: The ``xdist_group`` name of shard K is ``quantgate-K``.
SHARD_PREFIX = "quantgate-"


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index}"


def assign_shards(costs: Mapping[str, int], shards: int) -> dict[str, int]:
    """Case key -> shard index, each shard's total cost as even as the rule makes it.

    The costliest case goes to the cheapest shard, then the next (ties broken
    by key and by shard index), which keeps every shard within the largest
    single case's cost of the others.

    >>> assign_shards({"a": 5, "b": 3, "c": 3, "d": 1}, 2)
    {'a': 0, 'b': 1, 'c': 1, 'd': 0}

    Raises:
        ValueError: fewer than one shard.
    """
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    heap = [(0, index) for index in range(shards)]
    out: dict[str, int] = {}
    for key in sorted(costs, key=lambda k: (-costs[k], k)):
        load, index = heapq.heappop(heap)
        out[key] = index
        heapq.heappush(heap, (load + max(1, costs[key]), index))
    return dict(sorted(out.items()))


class ShardPlan:
    """The plan file: written by every worker (the same content), read by the controller."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._shards: dict[str, str] | None = None

    def write(self, shards: Mapping[str, str]) -> None:
        """Write atomically: the controller never reads half a plan."""
        atomic_write_text(self.path, json.dumps(dict(shards), sort_keys=True))

    @property
    def shards(self) -> dict[str, str]:
        """Node id -> shard name; empty while no worker has written the plan."""
        if self._shards is None:
            try:
                self._shards = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                return {}
        return self._shards
