"""The JSON report: a versioned schema, written atomically.

Top level::

    {"schema": "pytest-quantgate/report", "schema_version": 1,
     "complete": bool,            # false when the session was interrupted
     "config": {...},             # GateConfig.to_dict()
     "models": {label: {...}},    # path, spec, role, dtype, device, quantization
     "candidates": [{"label", "display", "verdict", "errors",
                     "slices": [SliceResult.to_dict(), ... the ALL row last]}],
     "cases": [CaseRecord.to_dict(), ...]}   # outcomes and outputs per model
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import GateReport

__all__ = ["SCHEMA", "SCHEMA_VERSION", "to_dict", "write"]

SCHEMA = "pytest-quantgate/report"
SCHEMA_VERSION = 1


def to_dict(report: GateReport) -> dict[str, Any]:
    """The report as builtins (JSON-safe)."""
    from .. import __version__

    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generator": f"pytest-quantgate {__version__}",
        "complete": report.complete,
        "failed": report.failed,
        "config": report.config.to_dict(),
        "models": report.models,
        "candidates": [c.to_dict() for c in report.candidates],
        "cases": [r.to_dict() for r in report.records],
    }


def write(report: GateReport, path: Path) -> None:
    """Write atomically: a reader never sees half a file, an old one stays until done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_dict(report), indent=2, sort_keys=False, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
