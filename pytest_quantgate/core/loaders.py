"""Cases from data files: the rows of a JSONL, JSON, CSV or Parquet file as ``quant_case`` arguments.

::

    @quant_case("prompt, expected", load_cases("data/arith.jsonl", "prompt, expected"))
    def test_arith(prompt, expected, output): ...

Files are read through Hugging Face ``datasets`` (the ``datasets`` extra),
always from the local disk: nothing is looked up on a hub. Each row becomes
one ``pytest.param``:

- the argument columns, in order, are its values;
- a ``slice`` column tags it with slices, a ``cluster`` column with its
  cluster (the ``quant_cluster`` marker, used when ``quant_case`` has no
  ``cluster=``);
- its id is the ``id`` column, or else a hash of the row's content — never
  its position, so reordering a file renames nothing and changes no result.

:func:`read_cases` is this part (no pytest): rows in, :class:`FileCase`
values out, :class:`CaseFileError` on bad input; the public
:func:`~..integration.loaders.load_cases` turns them into ``pytest.param``
values and stops collection with the error's one line.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..statistics.gate import ALL

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "CaseFileError",
    "FileCase",
    "content_id",
    "read_cases",
]

#: File suffix -> the ``datasets`` builder that reads it.
FORMATS = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: What to run when ``datasets`` cannot be imported.
INSTALL_HINT = 'pip install "pytest-quantgate[datasets]"'
#: Hex digits of a content id: 48 bits, no collision in any realistic suite.
ID_DIGITS = 12
#: The default names of the columns that are not arguments.
SLICE_COLUMN, CLUSTER_COLUMN, ID_COLUMN = "slice", "cluster", "id"


class CaseFileError(ValueError):
    """Data that cannot become cases: one line, ``<file>: row <n>: column '<col>': <problem>``."""


@dataclass(frozen=True)
class FileCase:
    """One row as a case.

    Attributes:
        values: the argument columns' values, in the order asked for.
        id: the ``id`` column's value, or :func:`content_id` of the row.
        slices: from the ``slice`` column; empty when it has none.
        cluster: from the ``cluster`` column; None when it has none.
        row: the row's number in its file, from 1 (data rows only: no header, no blank lines).
    """

    values: tuple[Any, ...]
    id: str
    slices: tuple[str, ...] = ()
    cluster: str | None = None
    row: int = 0


def read_cases(
    source: str | os.PathLike[str] | Any,  # a path, or a datasets.Dataset (or anything like one)
    columns: str | Sequence[str] | None = None,
    *,
    slice_column: str | None = SLICE_COLUMN,
    cluster_column: str | None = CLUSTER_COLUMN,
    id_column: str | None = ID_COLUMN,
    format: str | None = None,
    base: str | os.PathLike[str] | None = None,
) -> list[FileCase]:
    """The rows of a data file as cases; :func:`load_cases` without pytest.

    ``base`` is the directory a relative path is resolved against (None: the
    working directory). The other arguments are :func:`load_cases`'.

    Raises:
        CaseFileError: one line naming the file, the row and the column.
    """
    if isinstance(source, (str, os.PathLike)):
        path = _resolve(Path(source), base)
        names, rows = _read_file(path, _format_of(path, format))
        label = str(path)
    elif hasattr(source, "column_names") and hasattr(source, "__iter__"):
        label = f"<{type(source).__name__}>"
        names, rows = _read_dataset(source, label)
    else:
        raise CaseFileError(f"load_cases takes a path or a datasets.Dataset, not {type(source).__name__}")
    return _cases_of(
        label,
        names,
        rows,
        argnames=_argnames(label, columns),
        slice_column=_optional(label, names, slice_column, SLICE_COLUMN),
        cluster_column=_optional(label, names, cluster_column, CLUSTER_COLUMN),
        id_column=_optional(label, names, id_column, ID_COLUMN),
    )


def content_id(row: Mapping[str, Any]) -> str:
    """The id of a row without an id column: a hash of all its columns.

    SHA-256 of the row as sorted JSON, first :data:`ID_DIGITS` hex digits.
    Nulls are left out and integral floats written as ints first, so a row's
    id depends on nothing but its own content: not its position, not the
    columns only other rows have, not the int-to-float promotion a float
    elsewhere in its column causes.
    """
    text = json.dumps(_canonical(row), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- sources ----------------------------------------------------------------


def _resolve(path: Path, base: str | os.PathLike[str] | None) -> Path:
    path = path if path.is_absolute() or base is None else Path(base) / path
    return Path(os.path.abspath(path))  # absolute, without resolving links: the name the user knows


def _format_of(path: Path, given: str | None) -> str:
    known = sorted(set(FORMATS.values()))
    if given is not None:
        if given not in known:
            raise CaseFileError(f"{path}: unknown format {given!r}; known: {', '.join(known)}")
        return given
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CaseFileError(
            f"{path}: unknown file type {path.suffix or '(no suffix)'!r}; known: {', '.join(FORMATS)} "
            "(or pass format=)"
        )
    return fmt


def _read_file(path: Path, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    if not path.is_file():
        raise CaseFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        import datasets
    except ImportError as exc:
        raise CaseFileError(
            f"{path}: load_cases reads files through the datasets package, which cannot be imported "
            f"({exc}): {INSTALL_HINT}"
        ) from None
    options: dict[str, Any] = {}
    if fmt == "csv":
        # Every cell a string, as written: pandas' guess of a column's type
        # depends on the other rows ("007" -> 7, or 7.0 once a cell is empty).
        header = _check_csv(path)
        options = {"features": datasets.Features(dict.fromkeys(header, datasets.Value("string")))}
        options["na_filter"] = False
    # A fresh cache, deleted afterwards: the arrow file datasets always writes
    # (keep_in_memory=True too) neither litters ~/.cache nor goes stale, and
    # costs ~0.05 s per 1,000 rows. In memory, the Dataset outlives it.
    with _quiet(), tempfile.TemporaryDirectory(prefix="quantgate-data-") as cache:
        try:
            data = datasets.load_dataset(
                fmt,
                data_files=glob.escape(str(path)),  # a path, not a pattern: "[", "*" are literal
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
                **options,
            )
        except Exception as exc:  # which one depends on the format and on datasets' version
            raise _diagnose(path, fmt, exc) from None
    return _read_dataset(data, label=str(path))


def _read_dataset(data: Any, label: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    label = label or f"<{type(data).__name__}>"
    if isinstance(data.column_names, Mapping):
        splits = ", ".join(map(repr, data.column_names))
        raise CaseFileError(f"{label}: several splits ({splits}); pass one, e.g. data[split]")
    to_list = getattr(data, "to_list", None)
    rows = list(to_list() if callable(to_list) else data)
    bad = next((n for n, r in enumerate(rows, 1) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise CaseFileError(f"{label}: row {bad}: not a mapping of column names to values")
    if not rows:
        raise CaseFileError(f"{label}: no rows")
    names = list(data.column_names or [])  # an IterableDataset may not know them
    return names or list(dict.fromkeys(k for r in rows for k in r)), [dict(r) for r in rows]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars and no log lines from datasets; errors come back as one line."""
    import datasets
    from datasets.utils import logging

    bars, level = datasets.is_progress_bar_enabled(), logging.get_verbosity()
    datasets.disable_progress_bars()
    logging.set_verbosity(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _check_csv(path: Path) -> list[str]:
    """The header of a CSV file, after checking it and each row's number of fields."""
    with _reading(path), path.open(encoding="utf-8-sig", newline="") as f:
        records = (r for r in csv.reader(f) if r)  # blank lines are skipped, as pandas does
        header = next(records, None)
        if header is None:
            raise CaseFileError(f"{path}: no header row")
        seen: set[str] = set()
        for i, name in enumerate(header, 1):
            if not name.strip():
                raise CaseFileError(f"{path}: header: column {i} has no name")
            if name in seen:
                raise CaseFileError(f"{path}: header: column {name!r} appears twice")
            seen.add(name)
        n = 0
        for n, record in enumerate(records, 1):
            if len(record) != len(header):
                fields = f"{len(record)} field{'s' if len(record) != 1 else ''}"
                raise CaseFileError(f"{path}: row {n}: {fields} where the header has {len(header)}")
        if n == 0:
            raise CaseFileError(f"{path}: no rows")
    return header


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:
        # exc.start counts from the chunk a text file decoded last: find the place in the whole file.
        data, start, reason = path.read_bytes(), exc.start, exc.reason
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as whole:
            start, reason = whole.start, whole.reason
        line = data.count(b"\n", 0, start) + 1
        raise CaseFileError(f"{path}: not UTF-8 text: {reason} on line {line}") from None
    except csv.Error as exc:
        raise CaseFileError(f"{path}: not valid CSV: {exc}") from None


def _diagnose(path: Path, fmt: str, exc: BaseException) -> CaseFileError:
    """One line for a file datasets could not read: the first bad row where it can be found."""
    if fmt == "json":
        with _reading(path):
            text = path.read_text(encoding="utf-8-sig")
        found = _bad_json_row(text) if text.lstrip()[:1] != "[" else _bad_json_document(text)
        if found is not None:
            return CaseFileError(f"{path}: {found}")
        if not text.strip():
            return CaseFileError(f"{path}: no rows")
    if fmt == "parquet" and _parquet_rows(path) == 0:  # datasets: "BatchSize must be greater than 0"
        return CaseFileError(f"{path}: no rows")
    return CaseFileError(f"{path}: cannot be read as {fmt}: {_root_cause(exc)}")


def _parquet_rows(path: Path) -> int | None:
    try:
        import pyarrow.parquet as pq  # installed with datasets

        return int(pq.read_metadata(path).num_rows)
    except Exception:  # not a Parquet file: the caller says why
        return None


def _bad_json_row(text: str) -> str | None:
    """JSON Lines: the first line that is not a JSON object, counting non-blank lines."""
    lines = (line for line in text.splitlines() if line.strip())
    for n, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError as exc:
            return f"row {n}: not valid JSON: {getattr(exc, 'msg', exc)}"
        if not isinstance(value, dict):
            return f"row {n}: not a JSON object but {_kind(value)}"
    return None


def _bad_json_document(text: str) -> str | None:
    """A JSON list of objects: a syntax error (it has no row), or the first element that is no object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if value == []:
        return "no rows"
    for n, item in enumerate(value if isinstance(value, list) else [], 1):
        if not isinstance(item, dict):
            return f"row {n}: not a JSON object but {_kind(item)}"
    return None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- rows to cases ----------------------------------------------------------


def _argnames(label: str, columns: str | Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise CaseFileError(f"{label}: columns must be non-empty column names, got {columns!r}")
    twice = next((c for i, c in enumerate(names) if c in names[:i]), None)
    if twice is not None:
        raise CaseFileError(f"{label}: columns: {twice!r} is listed twice")
    return names


def _optional(label: str, names: Sequence[str], column: str | None, default: str) -> str | None:
    """A marks column: None when absent; one named other than its default must exist."""
    if column is None or column in names:
        return column
    if column != default:
        raise CaseFileError(f"{label}: column {column!r} not found; columns are: {', '.join(names)}")
    return None


def _cases_of(
    label: str,
    names: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    argnames: Sequence[str] | None,
    slice_column: str | None,
    cluster_column: str | None,
    id_column: str | None,
) -> list[FileCase]:
    if argnames is None:
        argnames = [c for c in names if c not in (slice_column, cluster_column, id_column)]
        if not argnames:
            raise CaseFileError(f"{label}: no argument columns; columns are: {', '.join(names)}")
    missing = next((c for c in argnames if c not in names), None)
    if missing is not None:
        raise CaseFileError(f"{label}: column {missing!r} not found; columns are: {', '.join(names)}")
    cases: list[FileCase] = []
    first_row: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        where = f"{label}: row {n}: column"
        null = next((c for c in argnames if row.get(c) is None), None)
        if null is not None:
            raise CaseFileError(f"{where} {null!r}: no value (null or missing)")
        values = tuple(row[c] for c in argnames)
        slices = () if slice_column is None else _slices(row.get(slice_column), f"{where} {slice_column!r}")
        cluster = (
            None
            if cluster_column is None
            else _cluster(row.get(cluster_column), f"{where} {cluster_column!r}")
        )
        case_id = (
            content_id(row)
            if id_column is None
            else _explicit_id(row.get(id_column), f"{where} {id_column!r}")
        )
        if case_id in first_row:
            what = (
                f"the same content, hence the same id {case_id!r}; remove one, or give the rows an id column"
                if id_column is None
                else f"column {id_column!r}: duplicate id {case_id!r}"
            )
            raise CaseFileError(f"{label}: rows {first_row[case_id]} and {n}: {what}")
        first_row[case_id] = n
        cases.append(FileCase(values=values, id=case_id, slices=slices, cluster=cluster, row=n))
    return cases


def _slices(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts = re.split(r"[,|]", value)
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise CaseFileError(
            f"{where}: a slice name, names separated by ',' or '|', or a list of names; got {value!r}"
        )
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if ALL in names:
        raise CaseFileError(f"{where}: {ALL!r} is reserved for all cases together; rename the slice")
    return names


def _cluster(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CaseFileError(f"{where}: a cluster is a string or an integer; got {value!r}")
    return str(value).strip()


def _explicit_id(value: Any, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CaseFileError(f"{where}: no id (null or empty)")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CaseFileError(f"{where}: an id is a string or an integer; got {value!r}")
    return str(value)
