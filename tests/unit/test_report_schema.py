"""Every JSON report validates against the schema shipped in the package, and the schema says something."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.report import json_report

jsonschema = pytest.importorskip("jsonschema")

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "example_gate.json"


def _validate(data: Any) -> None:
    schema = json.loads(json_report.SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_the_example_gates_report_validates() -> None:
    data = json.loads(GOLDEN.read_text())
    assert data["schema_version"] == json_report.SCHEMA_VERSION
    _validate(data)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("unchecked"),
        lambda d: d.update(schema_version=1),
        lambda d: d["candidates"][0]["slices"][0].update(verdict="FINE"),
        lambda d: d["cases"][0]["status"].update(nf4="ok"),
        lambda d: d["cases"][0].update(extra=1),
        lambda d: d["selection"].update(ran=-1),
    ],
    ids=["no-unchecked", "old-version", "bad-verdict", "bad-status", "unknown-key", "negative-count"],
)
def test_a_damaged_report_does_not_validate(damage: Any) -> None:
    data = copy.deepcopy(json.loads(GOLDEN.read_text()))
    damage(data)
    with pytest.raises(jsonschema.ValidationError):
        _validate(data)
