"""Re-running a gate test: ``pytest suite::quantgate::rtn2::arith``.

A gate test's node id (:func:`~.report.model.gate_test_id`) is printed as
``[PATH]::quantgate::<candidate>::<row>``, where ``PATH`` leads to the root
directory. Given back on the command line, it asks for that row again: the
argument is replaced by ``PATH`` (the root directory's test paths when it is
the root directory and ``testpaths`` is set), only that candidate is loaded,
and only the cases of that slice are kept (every case for ``ALL`` and for
``load``). Pure functions; the plugin applies them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..report.model import LOAD, parse_gate_test_id
from ..statistics.gate import ALL

__all__ = ["Rerun", "split_gate_args"]


@dataclass(frozen=True)
class Rerun:
    """The gate tests asked for on the command line.

    Attributes:
        rows: candidate label -> the rows asked for (slices, ``ALL``, ``load``).
        given: the arguments as written, for the report's ``narrowed_by``.
    """

    rows: Mapping[str, frozenset[str]] = field(default_factory=dict)
    given: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rows)

    def keeps(self, slices: Iterable[str]) -> bool:
        """Whether a quant case of these slices belongs to a row asked for."""
        wanted = {row for rows in self.rows.values() for row in rows}
        return bool(wanted & {ALL, LOAD}) or bool(wanted & set(slices))


def split_gate_args(
    args: Sequence[str], *, invocation_dir: Path, rootpath: Path, testpaths: Sequence[str] = ()
) -> tuple[list[str], Rerun]:
    """Replace gate test ids in ``args`` by the paths they lead to.

    Returns:
        The arguments to collect, and what was asked for (empty when no
        argument is a gate test id: ``args`` come back unchanged).
    """
    out: list[str] = []
    rows: dict[str, set[str]] = {}
    given: list[str] = []
    for arg in args:
        parsed = None if arg.startswith("-") else parse_gate_test_id(arg)
        if parsed is None:
            out.append(arg)
            continue
        path, label, row = parsed
        given.append(arg)
        rows.setdefault(label, set()).add(row)
        target = (invocation_dir / path).resolve()
        if target == rootpath.resolve() and testpaths:
            paths = [p for pattern in testpaths for p in sorted(glob.glob(str(rootpath / pattern)))]
            out.extend(p for p in paths if p not in out)
        elif str(target) not in out:
            out.append(str(target))
    if not given:
        return list(args), Rerun()
    return out, Rerun({k: frozenset(v) for k, v in rows.items()}, tuple(given))
