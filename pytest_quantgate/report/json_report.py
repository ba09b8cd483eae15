"""The JSON report: a versioned schema, written atomically.

Top level::

    {"schema": "pytest-quantgate/report", "schema_version": 2,
     "complete": bool,            # true only for the whole suite, run to the end on every model
     "interrupted": bool,         # Ctrl-C or pytest.exit: what ran before it
     "selection": {"collected", "selected", "ran", "skipped", "narrowed_by", "stopped"},
     "failed": bool,              # the gate fails the run (GateReport.failures): as the exit status
     "config": {...},             # GateConfig.to_dict()
     "models": {label: {...}},    # path, spec, role, dtype, device, quantization[, load_error]
                                  # [, parameters, weight_bytes: the transformers backend's]
     "candidates": [{"label", "display", "evaluated", "not_evaluated", "verdict",
                     "errors", "skipped",
                     "slices": [SliceResult.to_dict(), ... the ALL row last]}],
     "matrix": {"reference": {"label", "weight_bytes"},
                "slices": [name, ... "ALL"],
                "candidates": [{"label", "verdict", "not_evaluated", "weight_bytes"}],
                "cells": [[{"drop", "verdict", "n"} or null, ... per candidate], ... per slice]},
     "calibration_overlap": {...} | null,  # eval cases found in --quant-calibration's texts
     "unchecked": [{"nodeid", "key", "slices", "outputs": {label: {"output", "error", "transcript"}}}],
                                  # generated but never checked: an interrupted run's finished work
     "cost": [CostRow.to_dict(), ...],  # --quant-cost: each model's cost, ratios to the reference's
     "perplexity": {...},         # --quant-ppl-corpus only: each model's PPL, bits per byte and
                                  # protocol, each candidate's ratio with its bounds and verdict
     "cases": [CaseRecord.to_dict(), ...]}   # prompt, arguments, outcomes and outputs per model

The JSON Schema of the report is ``schema.json`` beside this module
(:data:`SCHEMA_FILE`); version 2 added ``unchecked``, ``cost``, arguments as
JSON values, and ``failed`` following every reason the gate fails a run.

``matrix`` is what the terminal's slices × candidates matrix shows
(:meth:`.model.GateReport.matrix`): ``cells[i][j]`` is slice ``i`` of
candidate ``j``, its ``drop`` a fraction (positive: the candidate is worse;
null for a row with no cases), null where the candidate has no such row.
A candidate's ``not_evaluated`` there is the short reason (``"not loaded"``,
``"reference not loaded"``, ``"cases lost"``; the whole message is in
``candidates``). ``weight_bytes`` is the model's footprint: the bytes of its
parameters and persistent buffers, packed quantized weights at their real
size; null when its backend does not say.

Each case's ``outcomes[label]`` holds the model's ``transcript`` (a turn per
step: ``prompt``, ``reply`` and, where it differs from the prompt, ``rendered``:
the exact text the model was fed); a Trajectory case adds ``final_state`` per
model, ``"trajectory": true``, and ``divergence[candidate]``: the first step
whose replies differ (``step``, both replies, ``same_input``), or null.

Written with the user's umask, like any file the user makes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..values.files import atomic_write_text
from ..values.version import __version__

if TYPE_CHECKING:
    from .model import GateReport

__all__ = ["SCHEMA", "SCHEMA_FILE", "SCHEMA_VERSION", "to_dict", "write"]

SCHEMA = "pytest-quantgate/report"
SCHEMA_VERSION = 2
#: The JSON Schema that every report validates against (shipped with the package).
SCHEMA_FILE = Path(__file__).with_name("schema.json")


def to_dict(report: GateReport) -> dict[str, Any]:
    """The report as builtins (JSON-safe)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generator": f"pytest-quantgate {__version__}",
        "complete": report.complete,
        "interrupted": report.interrupted,
        "selection": report.selection.to_dict(),
        "failed": report.failed,
        "config": report.config.to_dict(),
        "models": report.models,
        "candidates": [c.to_dict() for c in report.candidates],
        "matrix": report.matrix().to_dict(),
        "calibration_overlap": (
            report.calibration_overlap.to_dict() if report.calibration_overlap is not None else None
        ),
        "cases": [r.to_dict() for r in report.records],
        "unchecked": list(report.unchecked),
        "cost": [row.to_dict() for row in report.cost],
        **({"noise_floor": report.noise_floor.to_dict()} if report.noise_floor is not None else {}),
        **({"perplexity": report.perplexity.to_dict()} if report.perplexity is not None else {}),
    }


def dumps(data: dict[str, Any]) -> str:
    """Indented JSON with one case record per line.

    Readable in a pager and in a diff (a case per line), and written by the
    C encoder: ``json.dumps(indent=...)`` falls back to the pure-Python one,
    which took a third of a second for 1,000 cases.
    """
    head = {k: v for k, v in data.items() if k != "cases"}
    cases = data.get("cases", [])
    text = json.dumps(head, indent=2, allow_nan=False)
    if "cases" not in data:
        return text
    lines = ",\n".join("    " + json.dumps(c, allow_nan=False) for c in cases)
    body = f"[\n{lines}\n  ]" if cases else "[]"
    opening = text[: text.rindex("}")].rstrip() + "," if head else "{"
    return f'{opening}\n  "cases": {body}\n}}'


def write(report: GateReport, path: Path) -> None:
    """Write atomically (:func:`~..values.files.atomic_write_text`): a reader never sees half a file."""
    atomic_write_text(path, dumps(to_dict(report)) + "\n")
