"""``load_cases``: every format round-trips, ids survive reordering, bad input is one line."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_quantgate.core.loaders import INSTALL_HINT, CaseFileError, content_id, read_cases
from pytest_quantgate.integration.loaders import load_cases

needs_datasets = pytest.mark.skipif(find_spec("datasets") is None, reason="needs the datasets extra")

#: Strings only, so that a CSV file (every cell a string) reads the same as the others.
ROWS: list[dict[str, Any]] = [
    {"prompt": "2+2=", "expected": "4", "slice": "arith", "cluster": "a"},
    {"prompt": "capital of France?", "expected": "Paris", "slice": "recall|easy", "cluster": "b"},
    {"prompt": "3+5=", "expected": "8", "slice": " arith, easy ,", "cluster": "a"},
    {"prompt": 'ünïcode, "quoted"\nand a newline', "expected": "yes", "slice": "", "cluster": ""},
]
#: What each row of ROWS becomes with ``columns="prompt, expected"``: values and marks.
EXPECTED = [
    (("2+2=", "4"), [("slice", ("arith",)), ("quant_cluster", ("a",))]),
    (("capital of France?", "Paris"), [("slice", ("recall", "easy")), ("quant_cluster", ("b",))]),
    (("3+5=", "8"), [("slice", ("arith", "easy")), ("quant_cluster", ("a",))]),
    (('ünïcode, "quoted"\nand a newline', "yes"), []),
]
FORMATS = ["jsonl", "json", "csv", "parquet", "Dataset"]


def write(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` as a file of the format of ``path``'s suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(list(rows)), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    else:
        raise AssertionError(path)
    return path


def source(tmp_path: Path, fmt: str, rows: Sequence[dict[str, Any]]) -> Any:
    """``rows`` as a file of format ``fmt``, or as a ``datasets.Dataset``."""
    if fmt == "Dataset":
        import datasets

        return datasets.Dataset.from_list(list(rows))
    return write(tmp_path / f"cases.{fmt}", rows)


def described(params: Sequence[Any]) -> list[tuple[str, tuple[Any, ...], list[tuple[str, tuple[Any, ...]]]]]:
    """Each param as (id, values, [(mark name, mark args)])."""
    return [(p.id, tuple(p.values), [(m.name, tuple(m.args)) for m in p.marks]) for p in params]


def formula_id(row: dict[str, Any]) -> str:
    """The documented content id of a row of strings."""
    text = json.dumps(row, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- round trips ---------------------------------------------------------------


@needs_datasets
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(tmp_path: Path, fmt: str) -> None:
    params = load_cases(source(tmp_path, fmt, ROWS), "prompt, expected")
    assert described(params) == [
        (formula_id(row), values, marks) for row, (values, marks) in zip(ROWS, EXPECTED, strict=True)
    ]


@needs_datasets
@pytest.mark.parametrize("fmt", FORMATS)
def test_explicit_ids_round_trip(tmp_path: Path, fmt: str) -> None:
    rows = [{"id": f"q{i}", **row} for i, row in enumerate(ROWS)]
    params = load_cases(source(tmp_path, fmt, rows), ["prompt", "expected"])
    assert described(params) == [(f"q{i}", *case) for i, case in enumerate(EXPECTED)]


@needs_datasets
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("with_ids", [False, True], ids=["content-ids", "id-column"])
def test_reordering_rows_keeps_ids_and_values(tmp_path: Path, fmt: str, with_ids: bool) -> None:
    rows = [{**row, "id": f"q{i}"} if with_ids else row for i, row in enumerate(ROWS)]
    forward = described(load_cases(source(tmp_path, fmt, rows)))
    backward = described(load_cases(source(tmp_path, fmt, rows[::-1])))
    assert backward == forward[::-1]
    assert len({case_id for case_id, _, _ in forward}) == len(ROWS)


@needs_datasets
@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "Dataset"])
def test_values_pass_through_as_python_objects(tmp_path: Path, fmt: str) -> None:
    row = {"prompt": "p", "n": 7, "x": 0.5, "ok": True, "tags": ["a", "b"], "meta": {"k": 1, "s": "v"}}
    (param,) = load_cases(source(tmp_path, fmt, [row]), list(row))
    assert param.values == tuple(row.values())
    assert [type(v) for v in param.values] == [str, int, float, bool, list, dict]
    assert param.id == content_id(row)


@needs_datasets
def test_csv_cells_are_the_strings_written(tmp_path: Path) -> None:
    """No type guessing: "007" stays "007", an empty cell is "", "NA" and "null" are text."""
    path = tmp_path / "cases.csv"
    path.write_text('prompt,a,b,c,d\n"x, y",007,,NA,null\nz,3,1.5,true,\n', encoding="utf-8")
    params = load_cases(path)
    assert [p.values for p in params] == [("x, y", "007", "", "NA", "null"), ("z", "3", "1.5", "true", "")]


@needs_datasets
def test_a_row_id_depends_on_that_row_alone(tmp_path: Path) -> None:
    """A float elsewhere in the column makes Arrow read 1 as 1.0; the id stays that of {"a": 1}."""
    alone = load_cases(write(tmp_path / "alone.jsonl", [{"a": 1}]))
    mixed = load_cases(write(tmp_path / "mixed.jsonl", [{"a": 1}, {"a": 1.5, "b": "only here"}]), "a")
    assert mixed[0].values == (1.0,) and mixed[0].id == alone[0].id == content_id({"a": 1})


def test_content_id() -> None:
    assert content_id({"prompt": "2+2=", "expected": "4"}) == "efaf5864eef2"
    assert content_id({"expected": "4", "prompt": "2+2="}) == "efaf5864eef2"  # key order is not content
    assert content_id({"prompt": "2+2=", "expected": "4", "note": None}) == "efaf5864eef2"
    assert content_id({"a": 1.0, "b": [2.0], "c": {"d": 3.0, "e": None}}) == content_id(
        {"a": 1, "b": [2], "c": {"d": 3}}
    )
    assert content_id({"a": "1"}) != content_id({"a": 1})
    assert content_id({"a": "x"}) != content_id({"b": "x"})


# -- columns -------------------------------------------------------------------


@needs_datasets
@pytest.mark.parametrize(
    ("columns", "values"),
    [
        pytest.param(None, ("p", "e", "k"), id="none-every-other-column"),
        pytest.param("expected", ("e",), id="one-column"),
        pytest.param("expected, prompt", ("e", "p"), id="string-in-order"),
        pytest.param(["prompt", "slice", "id"], ("p", "s", "7"), id="marks-columns-too"),
    ],
)
def test_columns(tmp_path: Path, columns: str | list[str] | None, values: tuple[Any, ...]) -> None:
    row = {"id": "7", "prompt": "p", "slice": "s", "expected": "e", "cluster": "c", "kind": "k"}
    (param,) = load_cases(write(tmp_path / "cases.csv", [row]), columns)
    assert param.values == values
    assert described([param])[0][0::2] == ("7", [("slice", ("s",)), ("quant_cluster", ("c",))])


@needs_datasets
def test_renamed_and_ignored_marks_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "cases.jsonl", [{"q": "p", "topic": ["x", "y"], "group": 3, "slice": "s"}])
    (param,) = load_cases(path, "q", slice_column="topic", cluster_column="group", id_column=None)
    assert described([param]) == [
        (content_id(json.loads(path.read_text())), ("p",), [("slice", ("x", "y")), ("quant_cluster", ("3",))])
    ]
    (param,) = load_cases(path, "q", slice_column=None, cluster_column=None)
    assert param.marks == []


# -- paths ---------------------------------------------------------------------


@needs_datasets
def test_a_relative_path_is_resolved_against_the_calling_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = tmp_path / "suite"
    (suite / "data").mkdir(parents=True)
    write(suite / "data" / "cases.jsonl", ROWS)
    module = suite / "test_suite.py"
    code = compile("CASES = load_cases('data/cases.jsonl', 'prompt, expected')", str(module), "exec")
    namespace: dict[str, Any] = {"__file__": str(module), "load_cases": load_cases}
    monkeypatch.chdir(tmp_path)  # not the suite's directory
    exec(code, namespace)
    assert [p.values for p in namespace["CASES"]] == [values for values, _ in EXPECTED]
    # Without a file (an interactive session), the working directory.
    monkeypatch.chdir(suite)
    del namespace["__file__"]
    exec(code, namespace)
    assert len(namespace["CASES"]) == len(ROWS)


# -- bad input -----------------------------------------------------------------

JSONL = "cases.jsonl"
OK = '{"prompt": "p", "expected": "e"}\n'

#: (files written, the file loaded, load_cases keyword arguments, the message after "<path>: ").
BAD: dict[str, tuple[dict[str, str], str, dict[str, Any], str]] = {
    "missing-file": ({}, "nowhere.jsonl", {}, "no such file"),
    "a-directory": ({"dir.jsonl/x": ""}, "dir.jsonl", {}, "not a file"),
    "unknown-suffix": (
        {"cases.txt": OK},
        "cases.txt",
        {},
        "unknown file type '.txt'; known: .jsonl, .ndjson, .json, .csv, .parquet, .pq (or pass format=)",
    ),
    "unknown-format": (
        {JSONL: OK},
        JSONL,
        {"format": "xml"},
        "unknown format 'xml'; known: csv, json, parquet",
    ),
    "missing-column": (
        {JSONL: '{"prompt": "p", "answer": "a"}\n'},
        JSONL,
        {"columns": "prompt, expected"},
        "column 'expected' not found; columns are: prompt, answer",
    ),
    "missing-slice-column": (
        {JSONL: OK},
        JSONL,
        {"slice_column": "topic"},
        "column 'topic' not found; columns are: prompt, expected",
    ),
    "null-argument": (
        {JSONL: OK + '{"prompt": null, "expected": "e"}\n'},
        JSONL,
        {},
        "row 2: column 'prompt': no value (null or missing)",
    ),
    "absent-argument": (
        {JSONL: OK + '{"prompt": "p2", "expected": "e"}\n{"prompt": "p3"}\n'},
        JSONL,
        {},
        "row 3: column 'expected': no value (null or missing)",
    ),
    "bad-jsonl-line": (
        {JSONL: OK + '{"prompt": "q", "expected": "f"}\n\n{"prompt": "r" "expected": "g"}\n' + OK},
        JSONL,
        {},
        "row 3: not valid JSON: Expecting ',' delimiter",
    ),
    "jsonl-line-not-an-object": (
        {JSONL: OK + '["p", "e"]\n'},
        JSONL,
        {},
        "row 2: not a JSON object but a list",
    ),
    "bad-json-document": (
        {"cases.json": '[{"prompt": "p", "expected": "e"},]'},
        "cases.json",
        {},
        "not valid JSON: Expecting value: line 1 column 35 (char 34)",
    ),
    "json-element-not-an-object": (
        {"cases.json": '[{"prompt": "p", "expected": "e"}, "q"]'},
        "cases.json",
        {},
        "row 2: not a JSON object but a string",
    ),
    "csv-row-with-extra-field": (
        {"cases.csv": "prompt,expected\np,e\nq,f,g\n"},
        "cases.csv",
        {},
        "row 2: 3 fields where the header has 2",
    ),
    "csv-row-with-missing-field": (
        {"cases.csv": "prompt,expected\np,e\n\nq,f\nr\n"},
        "cases.csv",
        {},
        "row 3: 1 field where the header has 2",
    ),
    "csv-duplicate-header": (
        {"cases.csv": "prompt,prompt\np,q\n"},
        "cases.csv",
        {},
        "header: column 'prompt' appears twice",
    ),
    "csv-unnamed-column": ({"cases.csv": "prompt,\np,q\n"}, "cases.csv", {}, "header: column 2 has no name"),
    "csv-empty": ({"cases.csv": ""}, "cases.csv", {}, "no header row"),
    "csv-header-only": ({"cases.csv": "prompt,expected\n"}, "cases.csv", {}, "no rows"),
    "jsonl-empty": ({JSONL: "\n"}, JSONL, {}, "no rows"),
    "json-empty-list": ({"cases.json": "[]"}, "cases.json", {}, "no rows"),
    "duplicate-id": (
        {JSONL: '{"id": "q1", "prompt": "p"}\n{"id": "q2", "prompt": "q"}\n{"id": "q1", "prompt": "r"}\n'},
        JSONL,
        {},
        "rows 1 and 3: column 'id': duplicate id 'q1'",
    ),
    "duplicate-id-int-and-string": (
        {JSONL: '{"id": 1, "prompt": "p"}\n{"id": "1", "prompt": "q"}\n'},
        JSONL,
        {},
        "rows 1 and 2: column 'id': duplicate id '1'",
    ),
    "duplicate-content": (
        {JSONL: '{"prompt": "p"}\n{"prompt": "q"}\n{"prompt": "r"}\n{"prompt": "q"}\n'},
        JSONL,
        {},
        f"rows 2 and 4: the same content, hence the same id {content_id({'prompt': 'q'})!r}; "
        "remove one, or give the rows an id column",
    ),
    "empty-id": (
        {JSONL: '{"id": "a", "prompt": "p"}\n{"id": " ", "prompt": "q"}\n'},
        JSONL,
        {},
        "row 2: column 'id': no id (null or empty)",
    ),
    "float-id": (
        {JSONL: '{"id": 1.5, "prompt": "p"}\n'},
        JSONL,
        {},
        "row 1: column 'id': an id is a string or an integer; got 1.5",
    ),
    "ALL-slice": (
        {JSONL: '{"prompt": "p", "slice": "arith"}\n{"prompt": "q", "slice": "arith|ALL"}\n'},
        JSONL,
        {},
        "row 2: column 'slice': 'ALL' is reserved for all cases together; rename the slice",
    ),
    "number-slice": (
        {JSONL: '{"prompt": "p", "slice": 3}\n'},
        JSONL,
        {},
        "row 1: column 'slice': a slice name, names separated by ',' or '|', or a list of names; got 3",
    ),
    "float-cluster": (
        {JSONL: '{"prompt": "p", "cluster": 1.5}\n'},
        JSONL,
        {},
        "row 1: column 'cluster': a cluster is a string or an integer; got 1.5",
    ),
    "no-argument-column": (
        {JSONL: '{"id": "a", "slice": "s"}\n'},
        JSONL,
        {},
        "no argument columns; columns are: id, slice",
    ),
    "column-twice": ({JSONL: OK}, JSONL, {"columns": "prompt, prompt"}, "columns: 'prompt' is listed twice"),
    "not-utf8": (
        {"cases.csv": "prompt\n\udcff\n"},
        "cases.csv",
        {},
        "not UTF-8 text: invalid start byte on line 2",
    ),
}


def make_file(path: Path, text: str) -> Path:
    """``text`` in ``path``, as UTF-8 but for lone surrogates, which stand for invalid bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


@needs_datasets
@pytest.mark.parametrize(("files", "name", "kwargs", "message"), list(BAD.values()), ids=list(BAD))
def test_bad_input_is_one_line(
    tmp_path: Path, files: dict[str, str], name: str, kwargs: dict[str, Any], message: str
) -> None:
    for file, text in files.items():
        make_file(tmp_path / file, text)
    with pytest.raises(CaseFileError) as info:
        read_cases(tmp_path / name, **kwargs)
    assert str(info.value) == f"{tmp_path / name}: {message}"


@needs_datasets
def test_parquet_errors(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
    with pytest.raises(CaseFileError) as info:
        read_cases(empty)
    assert str(info.value) == f"{empty}: no rows"
    garbage = make_file(tmp_path / "garbage.parquet", "not parquet")
    with pytest.raises(CaseFileError) as info:
        read_cases(garbage)
    assert str(info.value).startswith(f"{garbage}: cannot be read as parquet: ArrowInvalid: ")
    assert "\n" not in str(info.value)


@needs_datasets
def test_load_cases_stops_collection_with_the_line(tmp_path: Path) -> None:
    """``pytest.fail(..., pytrace=False)``: pytest shows the message alone, no traceback."""
    path = tmp_path / JSONL
    path.write_text(OK + '{"prompt": null, "expected": "e"}\n', encoding="utf-8")
    with pytest.raises(pytest.fail.Exception) as info:
        load_cases(path)
    assert str(info.value) == f"{path}: row 2: column 'prompt': no value (null or missing)"
    assert info.value.pytrace is False


def test_not_a_source() -> None:
    with pytest.raises(CaseFileError, match=r"^load_cases takes a path or a datasets.Dataset, not int$"):
        read_cases(42)


@needs_datasets
def test_dataset_errors() -> None:
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "p"}])})
    with pytest.raises(
        CaseFileError, match=r"^<DatasetDict>: several splits \('train'\); pass one, e\.g\. data\[split\]$"
    ):
        read_cases(splits)

    with pytest.raises(CaseFileError, match=r"^<Dataset>: no rows$"):
        read_cases(datasets.Dataset.from_dict({"prompt": []}))
    with pytest.raises(
        CaseFileError, match=r"^<Dataset>: row 1: column 'prompt': no value \(null or missing\)$"
    ):
        read_cases(datasets.Dataset.from_list([{"prompt": None, "x": 1}]))


# -- without datasets, quietly, without litter ----------------------------------------


class Table:
    """Anything with ``column_names`` that iterates over row dicts passes for a Dataset."""

    column_names: ClassVar[list[str]] = ["prompt", "slice"]

    def __iter__(self) -> Any:
        return iter([{"prompt": "p", "slice": "s"}])


def test_without_datasets_a_file_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    path = tmp_path / JSONL
    path.write_text(OK, encoding="utf-8")
    with pytest.raises(pytest.fail.Exception) as info:
        load_cases(path)
    message = str(info.value)
    assert message.startswith(f"{path}: load_cases reads files through the datasets package")
    assert message.endswith(': pip install "pytest-quantgate[datasets]"') and INSTALL_HINT in message
    assert "\n" not in message
    # A Dataset-like object needs no datasets package.
    assert described(load_cases(Table())) == [
        (content_id({"prompt": "p", "slice": "s"}), ("p",), [("slice", ("s",))])
    ]


@needs_datasets
def test_loading_prints_nothing_and_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import datasets

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for fmt in ["jsonl", "csv", "parquet"]:
        load_cases(write(tmp_path / f"cases.{fmt}", ROWS))
    with pytest.raises(pytest.fail.Exception):
        load_cases(make_file(tmp_path / "bad.csv", "a,b\n1,2\n3\n"))
    with pytest.raises(pytest.fail.Exception):
        load_cases(make_file(tmp_path / "bad.jsonl", "{"))
    assert os.listdir(scratch) == []
    assert capfd.readouterr() == ("", "")
    assert datasets.is_progress_bar_enabled()
