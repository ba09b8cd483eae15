"""The structured-output gate: one prompt, one JSON object, checked against a schema.

``json id=4 tag=b ok=y ->`` asks for ``{"id":4,"tag":"b","ok":true}``: each
field has a type (``id`` an integer, ``tag`` a string, ``ok`` a boolean), and
each case's JSON Schema (a column of the data file) requires exactly its
fields with their types. The output must parse, match the schema
(``checks.match_schema``), and hold the values asked for.

- ``flat``: 2-4 fields.
- ``nested``: two of the fields are written ``user.age=3 user.ok=n`` and
  belong in an object, ``"user":{"age":3,"ok":false}``.
"""

from __future__ import annotations

from pytest_quantgate import checks, load_cases, quant_case


@quant_case(
    "prompt, expected, schema",
    load_cases("data/flat.jsonl", ["prompt", "expected", "schema"])
    + load_cases("data/nested.jsonl", ["prompt", "expected", "schema"]),
    max_new_tokens=56,
    stop="\n",
)
def test_json_matches_schema_and_values(prompt: str, expected: dict, schema: dict, output: str) -> None:
    value = checks.match_schema(output, schema)
    # The schema fixed the types, so == cannot take true for 1.
    assert value == expected, f"valid under the schema, but the values differ: {value} != {expected}"
