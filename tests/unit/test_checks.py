"""Built-in checks: tables of passing and failing outputs, and what the messages say."""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from pytest_quantgate import checks


def failure(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The first line of the AssertionError the check raises (the line reports show)."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    message = str(info.value)
    assert message, "a check's failure must say why"
    return message.splitlines()[0]


def nested(depth: int, leaf: Any) -> Any:
    """``{"a": {"a": ... leaf}}``, ``depth`` objects deep."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# --------------------------------------------------------------------------
# normalize, exact, contains


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("  Paris  ", {}, "Paris"),
        ("Paris\n\n is\tnice ", {}, "Paris is nice"),
        ("Ｐａｒｉｓ", {}, "Paris"),  # fullwidth letters: NFKC
        ("ﬁne", {}, "fine"),  # the ligature
        ("Cafe\u0301", {}, "Café"),  # combining accent composed
        ("a\u00a0b\u2009c", {}, "a b c"),  # no-break and thin spaces
        ("Straße", {"case": True}, "strasse"),
        ("PARIS", {}, "PARIS"),
        ("Paris!", {"punctuation": True}, "Paris"),
        ("«Bonjour», dit-il.", {"punctuation": True}, "Bonjour ditil"),
        ("“quoted” — ¿sí?", {"punctuation": True}, "quoted sí"),
        ("$5 + 3 = x €", {"punctuation": True}, "$5 + 3 = x €"),  # symbols (S*) are kept
        ("100% #1 & co.", {"punctuation": True}, "100 1 co"),  # these are punctuation (Po)
        ("Hello, World!", {"case": True, "punctuation": True}, "hello world"),
        ("", {}, ""),
        (" \n\t ", {}, ""),
    ],
)
def test_normalize(text: str, kwargs: dict[str, bool], expected: str) -> None:
    assert checks.normalize(text, **kwargs) == expected


@pytest.mark.parametrize(
    ("output", "expected", "kwargs"),
    [
        ("Paris", "Paris", {}),
        ("  Paris\n", "Paris", {}),
        ("New   York", "New York", {}),
        ("paris", "PARIS", {"case": True}),
        ("Paris.", "Paris", {"punctuation": True}),
        ("PARIS!", "paris", {"case": True, "punctuation": True}),
        ("Ｔｏｋｙｏ", "Tokyo", {}),
        ("東京", "東京", {}),
        ("Ελλάδα", "ΕΛΛΆΔΑ", {"case": True}),
    ],
)
def test_exact_passes(output: str, expected: str, kwargs: dict[str, bool]) -> None:
    assert checks.exact(output, expected, **kwargs) == checks.normalize(output, **kwargs)


@pytest.mark.parametrize(
    ("output", "expected", "kwargs", "message"),
    [
        ("London", "Paris", {}, "expected 'Paris', got 'London'"),
        ("paris", "Paris", {}, "expected 'Paris', got 'paris'"),
        ("Paris.", "Paris", {}, "expected 'Paris', got 'Paris.'"),
        ("Paris is the capital", "Paris", {"case": True}, "expected 'paris', got 'paris is the capital'"),
        ("東京都", "東京", {}, "expected '東京', got '東京都'"),
        ("", "Paris", {}, "expected 'Paris', got ''"),
    ],
)
def test_exact_fails(output: str, expected: str, kwargs: dict[str, bool], message: str) -> None:
    assert failure(checks.exact, output, expected, **kwargs) == message


def test_exact_long_outputs_show_the_first_difference() -> None:
    line = failure(checks.exact, "x" * 500 + "a" + "y" * 300, "x" * 500 + "b" + "y" * 300)
    assert "first difference at character 500" in line
    assert "xb" in line and "xa" in line
    assert "(801 chars)" in line
    assert len(line) < 600


@pytest.mark.parametrize(
    ("output", "expected", "kwargs"),
    [
        ("The capital is Paris.", "Paris", {}),
        ("The capital is Paris.", ["capital", "Paris"], {}),
        ("The capital is Paris.", ("capital", "Paris"), {}),
        ("THE CAPITAL IS PARIS", "capital is paris", {"case": True}),
        ("the   capital\nis Paris", "capital is Paris", {}),  # whitespace normalised on both sides
        ("Ｐａｒｉｓ", "Paris", {}),
        ("Préfecture: Île-de-France", "Île-de-France", {}),
    ],
)
def test_contains_passes(output: str, expected: str | list[str], kwargs: dict[str, bool]) -> None:
    checks.contains(output, expected, **kwargs)


@pytest.mark.parametrize(
    ("output", "expected", "kwargs", "message"),
    [
        ("The capital is Lyon.", "Paris", {}, "expected to contain 'Paris', got 'The capital is Lyon.'"),
        ("the capital is paris", "Paris", {}, "expected to contain 'Paris', got 'the capital is paris'"),
        (
            "Paris, France",
            ["Paris", "Europe", "capital"],
            {},
            "expected to contain 'Europe', 'capital' (2 of 3 missing), got 'Paris, France'",
        ),
        ("Lyon", ["PARIS"], {"case": True}, "expected to contain 'paris', got 'lyon'"),
    ],
)
def test_contains_fails(
    output: str, expected: str | list[str], kwargs: dict[str, bool], message: str
) -> None:
    assert failure(checks.contains, output, expected, **kwargs) == message


@pytest.mark.parametrize("expected", [[], "", "  ", ["Paris", ""]])
def test_contains_rejects_nothing_to_look_for(expected: str | list[str]) -> None:
    with pytest.raises(ValueError, match="contains"):
        checks.contains("Paris", expected)


# --------------------------------------------------------------------------
# fullmatch


@pytest.mark.parametrize(
    ("output", "pattern", "flags", "group"),
    [
        ("B", r"[A-D]", 0, "B"),
        ("  B\n", r"[A-D]", 0, "B"),  # surrounding whitespace is not part of the match
        ("b", r"[A-D]", re.IGNORECASE, "b"),
        ("Answer: 42", r"Answer: (\d+)", 0, "42"),
        ("Answer: 42", re.compile(r"answer: (\d+)", re.IGNORECASE), 0, "42"),
        ("line one\nline two", r"line one\nline (\w+)", 0, "two"),
        ("café ☕", r"caf. (.)", 0, "☕"),
    ],
)
def test_fullmatch_passes(output: str, pattern: str | re.Pattern[str], flags: int, group: str) -> None:
    match = checks.fullmatch(output, pattern, flags=flags)
    assert match.group(match.re.groups) == group


@pytest.mark.parametrize(
    ("output", "pattern", "message"),
    [
        ("E", r"[A-D]", "expected a full match of r'[A-D]', got 'E'"),
        (
            "The answer is B.",
            r"[A-D]",
            "expected a full match of r'[A-D]', got 'The answer is B.' (only 'B' at 14 matches)",
        ),
        (
            "answer: 42!",
            r"\d+",
            "expected a full match of r'\\d+', got 'answer: 42!' (only '42' at 8 matches)",
        ),
        ("it's", r"it's!", 'expected a full match of "it\'s!", got "it\'s"'),
        ("", r"\w+", "expected a full match of r'\\w+', got ''"),
    ],
)
def test_fullmatch_fails(output: str, pattern: str, message: str) -> None:
    assert failure(checks.fullmatch, output, pattern).startswith(message)


def test_fullmatch_bad_pattern_is_not_a_model_failure() -> None:
    with pytest.raises(re.error):
        checks.fullmatch("x", "(")
    with pytest.raises(ValueError):
        checks.fullmatch("x", re.compile("x"), flags=re.IGNORECASE)


# --------------------------------------------------------------------------
# numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("The answer is 42.", 42.0),
        ("-1,234.5", -1234.5),
        ("+3", 3.0),
        ("\u22127", -7.0),  # U+2212 MINUS SIGN
        ("\u22121,000.25", -1000.25),
        ("1,2,3", 1.0),  # a list, not a number with commas
        ("12,34", 12.0),
        ("3, 4", 3.0),
        ("1,2345", 1.0),
        ("1234,567", 1234.0),  # four digits before the comma: no thousands separator
        ("1,234,567.89", 1234567.89),
        ("costs $1,000,000 total", 1000000.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("-0.25", -0.25),
        ("3.", 3.0),
        ("It is 3.", 3.0),
        ("3.14.15", 3.14),
        ("1e3", 1000.0),
        ("1e-3", 0.001),
        ("2.5E+4", 25000.0),
        ("1e\u22123", 0.001),
        ("5 eggs", 5.0),
        ("2e", 2.0),
        ("50%", 50.0),  # no percent conversion
        ("-5°C", -5.0),
        ("x = - 5", 5.0),  # a sign must touch the digits
        ("H2O boils at 100", 100.0),  # digits glued to a word are not a number
        ("Q3 revenue: 7", 7.0),
        ("COVID-19", 19.0),
        ("答案是42", 42.0),
        ("٣ or 3", 3.0),  # only ASCII digits
        ("0", 0.0),
        ("-0", 0.0),
        ("007", 7.0),
        ("no digits", None),
        ("", None),
        ("- . e", None),
    ],
)
def test_extract_number(text: str, expected: float | None) -> None:
    assert checks.extract_number(text) == expected


@pytest.mark.parametrize(
    ("output", "expected", "kwargs", "got"),
    [
        ("42", 42, {}, 42.0),
        ("The answer is 41.6.", 42, {"tol": 0.5}, 41.6),
        ("1.1", 1, {"tol": 0.1}, 1.1),  # at the edge, despite 1.1 - 1 > 0.1 in floating point
        ("0.3", 0.1 + 0.2, {}, 0.3),
        ("about 1,050", 1000, {"rel": 0.05}, 1050.0),
        ("-1,234.5", -1234.5, {}, -1234.5),
        ("\u22127 degrees", -7, {}, -7.0),
        ("2.5E+4", 25000, {}, 25000.0),
        ("95", 100, {"tol": 1, "rel": 0.05}, 95.0),  # the larger margin wins
    ],
)
def test_number_passes(output: str, expected: float, kwargs: dict[str, float], got: float) -> None:
    assert checks.number(output, expected, **kwargs) == got


@pytest.mark.parametrize(
    ("output", "expected", "kwargs", "message"),
    [
        (
            "The answer is 41.2.",
            42,
            {"tol": 0.5},
            "expected 42 (±0.5), got 41.2 in 'The answer is 41.2.'",
        ),
        ("41", 42, {}, "expected 42, got 41 in '41'"),
        ("1,100", 1000, {"rel": 0.05}, "expected 1000 (±50), got 1100 in '1,100'"),
        ("7", -7, {}, "expected -7, got 7 in '7'"),
        ("1,2,3", 123, {}, "expected 123, got 1 in '1,2,3'"),
        ("no digits", 42, {}, "expected a number near 42, got no number in 'no digits'"),
        ("H2O", 2, {"tol": 1}, "expected a number near 2 (±1), got no number in 'H2O'"),
        ("1e999", 1, {}, "expected 1, got inf in '1e999'"),
    ],
)
def test_number_fails(output: str, expected: float, kwargs: dict[str, float], message: str) -> None:
    assert failure(checks.number, output, expected, **kwargs) == message


def test_number_clips_long_outputs() -> None:
    line = failure(checks.number, "So " * 1000 + "41", 42)
    assert line.startswith("expected 42, got 41 in 'So So ")
    assert line.endswith("…' (3002 chars)")
    assert len(line) < 300


@pytest.mark.parametrize(
    ("expected", "kwargs"),
    [
        (1, {"tol": -1}),
        (1, {"rel": -0.1}),
        (1, {"tol": float("nan")}),
        (float("nan"), {}),
        (float("inf"), {}),
    ],
)
def test_number_rejects_a_bad_check(expected: float, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="number"):
        checks.number("1", expected, **kwargs)


# --------------------------------------------------------------------------
# JSON

INVALID = "expected valid JSON, got "


@pytest.mark.parametrize(
    ("output", "kwargs", "value"),
    [
        ('{"a": 1}', {}, {"a": 1}),
        ('  \n{"a": [1, 2.5, null, true]}\n', {}, {"a": [1, 2.5, None, True]}),
        ("[]", {}, []),
        ("42", {}, 42),
        ('"text"', {}, "text"),
        ("null", {}, None),
        (
            '{"ville": "Zürich", "emoji": "🙂", "cjk": "東京"}',
            {},
            {"ville": "Zürich", "emoji": "🙂", "cjk": "東京"},
        ),
        ('{"escaped": "\\u00e9\\ud83d\\ude42"}', {}, {"escaped": "é🙂"}),
        ('Sure! {"a": 1}', {"allow_prefix": True}, {"a": 1}),
        ("Sure: [1, 2]", {"allow_prefix": True}, [1, 2]),
        ('{"a": 1} Hope this helps!', {"allow_trailing": True}, {"a": 1}),
        ('{"a": 1}{"b": 2}', {"allow_trailing": True}, {"a": 1}),  # the first value
        ("42 apples", {"allow_trailing": True}, 42),
        (
            'Here it is:\n```json\n{"a": {"b": [1]}}\n```\n',
            {"allow_prefix": True, "allow_trailing": True},
            {"a": {"b": [1]}},
        ),
        (json.dumps(nested(50, [1])), {}, nested(50, [1])),
        ("[" * 50 + "]" * 50, {}, json.loads("[" * 50 + "]" * 50)),
    ],
)
def test_json_value_passes(output: str, kwargs: dict[str, bool], value: Any) -> None:
    assert checks.json_value(output, **kwargs) == value


@pytest.mark.parametrize(
    ("output", "kwargs", "message"),
    [
        (
            '{"a": 1} thanks!',
            {},
            "expected only a JSON value, got valid JSON followed by trailing text ' thanks!'",
        ),
        (
            '{"a": 1}\n\nthanks!\n',
            {},
            "expected only a JSON value, got valid JSON followed by trailing text '\\n\\nthanks!'",
        ),
        (
            '{"a": 1}{"b": 2}',
            {},
            "expected only a JSON value, got valid JSON followed by trailing text '{\"b\": 2}'",
        ),
        ('"a" "b"', {}, "expected only a JSON value, got valid JSON followed by trailing text ' \"b\"'"),
        ('Sure! {"a": 1}', {}, "expected only a JSON value, got text before it 'Sure! '"),
        (
            'Sure! {"a": 1}',
            {"allow_trailing": True},
            "expected only a JSON value, got text before it 'Sure! '",
        ),
        (
            '{"a": 1} ok',
            {"allow_prefix": True},
            "expected only a JSON value, got valid JSON followed by trailing",
        ),
        (
            'Sure! {"a": 1} ok',
            {},
            "expected only a JSON value, got text before it 'Sure! ' and trailing text after it ' ok'",
        ),
        (
            '{"a": 1 "b": 2}',
            {},
            INVALID + "Expecting ',' delimiter at line 1 column 9 (char 8) in '{\"a\": 1 \"b\": 2}'",
        ),
        (
            '{"a": [1, 2',
            {},
            INVALID + "Expecting ',' delimiter at line 1 column 12 (char 11) in '{\"a\": [1, 2'",
        ),
        ("{'a': 1}", {}, f"{INVALID}Expecting property name enclosed in double quotes"),
        (
            'Sure! {"a": }',
            {"allow_prefix": True},
            f"{INVALID}Expecting value at line 1 column 13",
        ),
        (
            "no JSON here",
            {"allow_prefix": True},
            f"{INVALID}Expecting value at line 1 column 1",
        ),
        ("[NaN]", {}, f"{INVALID}NaN (not a JSON value) in '[NaN]'"),
        ('{"x": -Infinity}', {}, f"{INVALID}-Infinity (not a JSON value)"),
        ("", {}, "expected a JSON value, got an empty output ''"),
        ("  \n", {"allow_prefix": True}, "expected a JSON value, got an empty output '  \\n'"),
        ("[" * 100_000, {}, "expected a JSON value, got JSON nested too deeply to parse: '[[[["),
    ],
)
def test_json_value_fails(output: str, kwargs: dict[str, bool], message: str) -> None:
    assert failure(checks.json_value, output, **kwargs).startswith(message)


def test_json_value_shows_where_a_long_output_breaks() -> None:
    output = '{"items": [' + ", ".join(['{"n": 1}'] * 100) + ', {"n": oops}]}'
    line = failure(checks.json_value, output)
    assert "Expecting value at line 1 column" in line
    assert "oops" in line  # the excerpt is around the error, not the start
    assert f"({len(output)} chars)" in line


# --------------------------------------------------------------------------
# JSON Schema

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "customer", "items"],
    "properties": {
        "id": {"type": "integer"},
        "customer": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "ip": {"type": "string", "format": "ipv4"}},
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "price"],
                "properties": {"sku": {"type": "string"}, "price": {"type": "number"}},
                "additionalProperties": False,
            },
        },
    },
}

ORDER = {
    "id": 7,
    "customer": {"name": "Zoë"},
    "items": [{"sku": "a", "price": 1.5}, {"sku": "b", "price": 2}],
}

DEEP_SCHEMA: dict[str, Any] = {
    "type": ["object", "integer"],
    "properties": {"a": {"$ref": "#"}},
    "required": ["a"],
}


@pytest.mark.parametrize(
    ("output", "kwargs"),
    [
        (json.dumps(ORDER), {}),
        (json.dumps(ORDER, ensure_ascii=False, indent=2), {}),
        (
            "Here you go: " + json.dumps(ORDER) + " Anything else?",
            {"allow_prefix": True, "allow_trailing": True},
        ),
        (ORDER, {}),  # already parsed
    ],
)
def test_match_schema_passes(output: Any, kwargs: dict[str, bool]) -> None:
    assert checks.match_schema(output, ORDER_SCHEMA, **kwargs) == ORDER


def test_match_schema_deep_nesting() -> None:
    assert checks.match_schema(json.dumps(nested(50, 1)), DEEP_SCHEMA) == nested(50, 1)
    message = failure(checks.match_schema, json.dumps(nested(50, "x")), DEEP_SCHEMA)
    assert message.startswith("$" + ".a" * 50 + ": 'x' is not of type 'object', 'integer'")


def bad_order(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(ORDER)), **changes}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (bad_order(id="7"), "$.id: '7' is not of type 'integer'"),
        (
            bad_order(items=[{"sku": "a", "price": 1}, {"sku": "b", "price": 2}, {"sku": "c", "price": "x"}]),
            "$.items[2].price: 'x' is not of type 'number'",
        ),
        (bad_order(items=[{"sku": "a"}]), "$.items[0]: 'price' is a required property"),
        (bad_order(items=[]), "$.items: [] should be non-empty"),
        (
            bad_order(items=[{"sku": "a", "price": 1, "qty": 2}]),
            "$.items[0]: Additional properties are not allowed ('qty' was unexpected)",
        ),
        (bad_order(customer={}), "$.customer: 'name' is a required property"),
        (
            bad_order(customer={"name": "Zoë", "ip": "9.9.9.999"}),
            "$.customer.ip: '9.9.9.999' is not a 'ipv4'",
        ),
        ([ORDER], "$: [{"),
        (
            {"customer": {"name": 1}, "items": [{"sku": 1, "price": 1}]},
            "$: 'id' is a required property (and 2 more schema errors)",
        ),
    ],
)
def test_match_schema_fails(value: Any, message: str) -> None:
    assert failure(checks.match_schema, json.dumps(value), ORDER_SCHEMA).startswith(message)


def test_match_schema_lists_every_error() -> None:
    with pytest.raises(AssertionError) as info:
        checks.match_schema({"customer": {"name": 1}, "items": [{"sku": 1, "price": 1}]}, ORDER_SCHEMA)
    lines = str(info.value).splitlines()
    assert lines[1] == "schema errors:"
    assert sorted(lines[2:]) == sorted(
        [
            "  $: 'id' is a required property",
            "  $.customer.name: 1 is not of type 'string'",
            "  $.items[0].sku: 1 is not of type 'string'",
        ]
    )


def test_match_schema_reports_json_errors_first() -> None:
    assert failure(checks.match_schema, '{"id": 7} ok', ORDER_SCHEMA).startswith(
        "expected only a JSON value, got valid JSON followed by trailing text ' ok'"
    )


def test_match_schema_uses_the_schemas_draft() -> None:
    # Draft 4 reads exclusiveMaximum as a flag; Draft 2020-12 would reject the schema.
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 5, "exclusiveMaximum": True}
    assert checks.match_schema("4", schema) == 4
    assert failure(checks.match_schema, "5", schema).startswith("$: 5 is greater than or equal to")


@pytest.mark.parametrize(
    "schema",
    [{"type": "nope"}, {"required": "name"}, {"properties": {"a": {"minimum": "1"}}}],
)
def test_match_schema_bad_schema_is_not_a_model_failure(schema: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.exceptions.SchemaError):
        checks.match_schema("{}", schema)


def test_match_schema_without_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(ModuleNotFoundError) as info:
        checks.match_schema("{}", {"type": "object"})
    assert str(info.value) == 'match_schema needs jsonschema: pip install "pytest-quantgate[schema]"'


def test_the_module_imports_only_the_standard_library() -> None:
    with open(checks.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    modules = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    modules += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert "json" in modules
    assert [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names] == []


# --------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("output", "phrases", "found"),
    [
        ("I can't help with that.", None, "I can't help"),
        ("I can’t help with that.", None, "I can't help"),  # curly apostrophe
        ("i CAN'T do that", None, "I can't do that"),
        ("Sorry, but I cannot assist.", None, "I cannot assist"),
        ("I\n   cannot do that", None, "I cannot do that"),
        ("I’m sorry, but I am not allowed.", None, "I'm sorry, but I"),
        ("I can't wait to help!", None, None),  # specific phrases: no false alarm here
        ("I cannot stress this enough: 42.", None, None),
        ("As an AI language model, I …", None, "As an AI"),
        ("First: as an AI, I can't", None, "As an AI"),  # the earliest in the output
        ("I'm unable to browse the web.", None, "I'm unable to"),
        ("Paris is the capital of France.", None, None),
        ("I can help with that!", None, None),
        ("I cannotice this", None, None),  # whole words only
        ("Bonjour, je ne peux pas.", None, None),
        ("Je ne peux pas vous aider.", ["je ne peux pas"], "je ne peux pas"),
        ("Je ne peux pas vous aider.", "Je ne peux pas", "Je ne peux pas"),  # one phrase as a str
        ("No, I won’t.", ["I won't", "no"], "no"),
        ("Nothing to add.", ["no"], None),
        ("I can't help.", ["policy"], None),  # custom phrases replace the defaults
        ("That violates my policy.", ["Policy", "policy"], "Policy"),
    ],
)
def test_is_refusal(output: str, phrases: list[str] | str | None, found: str | None) -> None:
    assert checks.is_refusal(output, phrases) == found


def test_no_refusal() -> None:
    checks.no_refusal("Paris.")
    assert failure(checks.no_refusal, "Sorry, I can’t help with that.") == (
        "expected no refusal, got \"I can't help\" in 'Sorry, I can’t help with that.'"
    )
    assert failure(checks.no_refusal, "Nope.", ["nope"]) == "expected no refusal, got 'nope' in 'Nope.'"


def test_refusal() -> None:
    assert checks.refusal("I won’t help with that.") == "I won't help"
    assert failure(checks.refusal, "Sure! Step one: ...") == "expected a refusal, got 'Sure! Step one: ...'"
    assert failure(checks.refusal, "I can't help.", ["nope"]) == 'expected a refusal, got "I can\'t help."'


@pytest.mark.parametrize("phrases", [[], [""], ["ok", "  "]])
def test_refusal_rejects_empty_phrases(phrases: list[str]) -> None:
    with pytest.raises(ValueError, match="phrases"):
        checks.is_refusal("anything", phrases)


def test_default_phrases_are_all_found() -> None:
    for phrase in checks.DEFAULT_REFUSAL_PHRASES:
        assert checks.is_refusal(f"Well. {phrase} do that.") == phrase
