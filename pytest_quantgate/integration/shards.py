"""Shards on many machines, one gate (issue 21): a shard's records out, every shard's records in.

A run with ``--quant-shard=K/N --quant-records DIR`` writes its records
(:func:`write_shard`) instead of gating them; ``--quant-merge DIR ...``
feeds every shard's records to the aggregator exactly as the controller
feeds test reports (:func:`merge_shards`), and the usual report path gates
them. The file format and its checks are :mod:`..core.records_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..core.config import GateConfig
from ..core.records import CaseRecord
from ..core.records_file import ShardError, ShardFile, ShardHeader, check_shards, read_shards
from ..report.aggregator import Aggregator

__all__ = ["SHARD_NARROWING", "merge_shards", "write_shard"]

#: How a shard's selection names its narrowing: ``--quant-shard K/N``.
SHARD_NARROWING = "--quant-shard"


def write_shard(
    gate_config: GateConfig, aggregator: Aggregator, *, narrowed_by: list[str], counted: bool
) -> Path:
    """Write this shard's records, model facts and selection to ``DIR/shard-K-of-N.json``."""
    assert gate_config.shard is not None and gate_config.records_dir is not None
    index, count = gate_config.shard
    header = ShardHeader(
        index=index,
        count=count,
        suite=aggregator.suite or "",
        models=gate_config.model_specs(),
        settings=gate_config.gate_settings(),
    )
    facts: dict[str, Any] = {
        "models": aggregator.model_facts,
        "load_failures": aggregator.load_failures,
        "collected": aggregator.collected,
        "selected": aggregator.selected,
        "skipped": aggregator.skipped,
        "lost": aggregator.lost,
        "unchecked": aggregator.unchecked,
        "narrowed_by": [n for n in narrowed_by if not n.startswith(SHARD_NARROWING)],
        "counted": counted,
        "suite_order": aggregator.suite_order,
    }
    records = tuple(r.to_dict() for r in aggregator.records)
    return ShardFile(header=header, records=records, facts=facts).write(gate_config.records_dir)


def merge_shards(gate_config: GateConfig, aggregator: Aggregator) -> tuple[list[str], bool]:
    """Feed every shard's records and facts to ``aggregator``, as the controller feeds test reports.

    The merged selection: ``collected`` is the suite's (every shard collected
    all of it), ``selected`` the sum of the shards' selections; records are
    added in the suite's collection order, so that slices are reported in
    the order an unsharded run reports them.

    Returns:
        The options that narrowed any shard, and whether every shard counted its selection.

    Raises:
        pytest.UsageError: a shard missing, given twice, or foreign, in one line.
    """
    try:
        files = read_shards(list(gate_config.merge_dirs))
        check_shards(files, gate_config.model_specs(), gate_config.gate_settings())
    except ShardError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None
    order = {nodeid: i for i, nodeid in enumerate(files[0].facts.get("suite_order") or [])}
    records = [CaseRecord.from_dict(r) for f in files for r in f.records]
    for record in sorted(records, key=lambda r: (order.get(r.nodeid, len(order)), r.nodeid)):
        aggregator.add(record)
    narrowed: list[str] = []
    counted = True
    selected = 0
    collected: int | None = None
    for f in files:
        facts = f.facts
        aggregator.add_model_facts(facts.get("models") or {})
        aggregator.add_load_failures(facts.get("load_failures") or {})
        aggregator.add_unchecked(facts.get("unchecked") or [])
        for nodeid, why in (facts.get("lost") or {}).items():
            aggregator.add_lost(nodeid, why)
        for _ in range(int(facts.get("skipped") or 0)):
            aggregator.add_skipped()
        if facts.get("collected") is not None:
            collected = max(int(facts["collected"]), collected or 0)
        selected += int(facts.get("selected") or 0)
        narrowed += [n for n in facts.get("narrowed_by") or [] if n not in narrowed]
        counted = counted and bool(facts.get("counted", True))
    if collected is not None:
        aggregator.add_selection(collected, selected)
    return narrowed, counted
