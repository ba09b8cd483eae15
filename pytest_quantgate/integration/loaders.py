"""``load_cases``: the rows of a data file as ``quant_case`` arguments (``pytest.param`` values).

The reading is :func:`~..core.loaders.read_cases`'s; this wraps each row in a
``pytest.param`` with its slices, cluster and id, and turns a bad file into
a collection error of one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ..core.loaders import CLUSTER_COLUMN, ID_COLUMN, SLICE_COLUMN, CaseFileError, read_cases

__all__ = ["load_cases"]


def load_cases(
    source: str | os.PathLike[str] | Any,  # a path, or a datasets.Dataset (or anything like one)
    columns: str | Sequence[str] | None = None,
    *,
    slice_column: str | None = SLICE_COLUMN,
    cluster_column: str | None = CLUSTER_COLUMN,
    id_column: str | None = ID_COLUMN,
    format: str | None = None,
) -> list[Any]:
    """The rows of a data file as ``pytest.param`` objects for ``quant_case``.

    Args:
        source: a local file — ``.jsonl``/``.ndjson`` (one JSON object per
            line), ``.json`` (a list of objects), ``.csv`` (a header row), or
            ``.parquet``/``.pq`` — or a ``datasets.Dataset``. A relative path
            is resolved against the directory of the file that calls
            ``load_cases`` (the test module), so a suite finds its data from
            any working directory; where the caller has no file (an
            interactive session), against the working directory.
        columns: the argument columns, in the order of ``quant_case``'s
            argnames: a list, or one string ``"prompt, expected"``. None: every
            column but the slice, cluster and id columns, in the file's order.
            With one column each param holds one value; else one per column.
        slice_column: its value is one slice name, names separated by ``,``
            or ``|`` (blanks around them ignored), or a list of names; null or
            empty means no slice. ``ALL`` is reserved.
        cluster_column: its value (a string or an integer) is the case's
            cluster, attached as the ``quant_cluster`` marker; null or empty
            means none.
        id_column: its value (a non-empty string, or an integer) is the case's
            id; without the column, the id is :func:`content_id` of the row.
            Two rows with the same id (or, without ids, the same content) are
            an error.
        format: ``"json"``, ``"csv"`` or ``"parquet"``, overriding the suffix.

    Returns:
        One ``pytest.param(*values, marks=..., id=...)`` per row, in file order.

    Values are what ``datasets`` reads: from JSON and Parquet, ints stay ints,
    lists stay lists, objects become dicts (a column mixing ints and floats
    reads as floats). A CSV file has no types: every cell is a string exactly
    as written (``007`` stays ``"007"``, an empty cell is ``""``), never
    pandas' guess, which would depend on the other rows of the column.

    The slice, cluster and id columns are optional; a name other than the
    default must exist. Passing None ignores the column. A column may be both
    an argument and one of these.

    Problems — a missing file, an unknown suffix, a row that does not parse, a
    missing column, a null argument, a duplicate id, a missing ``datasets``
    package — stop collection with one line (``pytest.fail(...,
    pytrace=False)``) naming the file, the row and the column.
    """
    caller = sys._getframe(1).f_globals.get("__file__")
    try:
        cases = read_cases(
            source,
            columns,
            slice_column=slice_column,
            cluster_column=cluster_column,
            id_column=id_column,
            format=format,
            base=Path(os.path.abspath(caller)).parent if isinstance(caller, str) else None,
        )
    except CaseFileError as exc:
        # pytrace=False: pytest prints the one line alone; from None: without the CaseFileError above it.
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    params = []
    for case in cases:
        marks = []
        if case.slices:
            marks.append(pytest.mark.slice(*case.slices))
        if case.cluster is not None:
            marks.append(pytest.mark.quant_cluster(case.cluster))
        params.append(pytest.param(*case.values, marks=marks, id=case.id))
    return params
