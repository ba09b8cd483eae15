"""Every use of a private (or undocumented) pytest or pytest-xdist attribute, in one place.

Each function says what it relies on and what breaks if a release changes
it; each falls back to a public, slightly worse behaviour rather than
failing. The oldest versions the project claims (``pyproject.toml``) are run
in CI, so a break shows there first.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
from _pytest._code.code import TerminalRepr

__all__ = [
    "FailureText",
    "count_in_summary",
    "fixtures_taking",
    "is_crash_report",
    "junit_writers",
    "lf_narrowed",
    "replace_args",
    "shard_scheduler",
    "skip_at_item",
    "terminal_width",
]


def replace_args(config: pytest.Config, args: Sequence[str]) -> None:
    """Collect ``args`` instead of the command line's (a gate test id replaced by its path).

    ``config.args`` is public to read, not documented to assign; pytest
    reads it when the session collects (``Session.perform_collect``), after
    ``pytest_configure``. Should that change, the gate id reaches collection
    as an argument and pytest says it found no such file: the re-run of a
    gate row stops working, nothing else.
    """
    config.args = list(args)


def skip_at_item(reason: str) -> NoReturn:
    """Skip the running test, reported at the test's own line, not at the plugin's.

    Relies on ``pytest.skip.Exception``'s private ``_use_item_location``
    keyword (pytest's own skip markers use it). Without it the skip still
    happens; the summary then places it in this module.
    """
    try:
        exc = pytest.skip.Exception(reason, pytrace=False, _use_item_location=True)
    except TypeError:
        exc = pytest.skip.Exception(reason, pytrace=False)
    raise exc


def count_in_summary(tr: pytest.TerminalReporter, report: pytest.TestReport) -> None:
    """Count a report under its outcome (failed or passed) in the terminal's summary line.

    A failed one also lands in the FAILURES section and the short test
    summary, as any failed test's. Relies on ``TerminalReporter._add_stats``,
    which also marks the summary colour as stale so that the final line turns
    red. If a release renames it, the report is still counted (and the exit
    status is unaffected); only the colour of the last line may stay green.
    """
    add = getattr(tr, "_add_stats", None)
    if add is not None:
        add(report.outcome, [report])
    else:
        tr.stats.setdefault(report.outcome, []).append(report)


def terminal_width(tr: pytest.TerminalReporter) -> int:
    """The width pytest's terminal writer wraps at.

    Relies on ``TerminalReporter._tw`` (its ``TerminalWriter``); without it
    the width of the terminal the process sees.
    """
    tw = getattr(tr, "_tw", None)
    return int(getattr(tw, "fullwidth", 0) or shutil.get_terminal_size().columns)


def is_crash_report(report: pytest.TestReport) -> bool:
    """Whether xdist made ``report`` for a test its worker crashed in.

    xdist's ``DSession.handle_crashitem`` reports the lost test with
    ``when="???"``, an undocumented marker. If that changes, a crashed
    worker's lost quant case is no longer named, but xdist still fails the
    run and the gate, missing the case's record, counts the run incomplete.
    """
    return report.when == "???"


def shard_scheduler(config: pytest.Config, log: Any, scope_of: Callable[[str], str]) -> Any:
    """xdist's scope scheduler with each test's scope given by ``scope_of(nodeid)``.

    Subclasses xdist's ``LoadScopeScheduling`` and overrides its private
    ``_split_scope``, as xdist's own ``loadfile`` and ``loadgroup`` schedulers
    do. Returns None (xdist's default scheduling: every worker generates
    what it runs, correct but slower) if the class or the method is gone.
    """
    try:
        from xdist.scheduler import LoadScopeScheduling
    except ImportError:
        return None
    if not callable(getattr(LoadScopeScheduling, "_split_scope", None)):
        return None

    class ShardScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ShardScheduling(config, log)


def fixtures_taking(item: pytest.Item, names: Sequence[str]) -> list[tuple[str, str]]:
    """``(fixture, name)`` for each fixture of ``item`` whose function takes one of ``names``.

    Relies on ``Function._fixtureinfo.name2fixturedefs`` (the fixtures the
    test's closure resolved to) and each definition's ``argnames``. If that
    changes, nothing is found: a fixture taking ``output`` then gets the
    placeholder instead of a collection error naming it.
    """
    info = getattr(item, "_fixtureinfo", None)
    found: list[tuple[str, str]] = []
    for fixture, defs in dict(getattr(info, "name2fixturedefs", None) or {}).items():
        taken = set(getattr(defs[-1], "argnames", ()) or ()) if defs else set()
        found.extend((fixture, name) for name in names if name in taken and fixture != name)
    return found


def junit_writers(config: pytest.Config) -> list[Any]:
    """pytest's JUnit writers registered in this session (``--junitxml``), to be fed apart
    (their ``pytest_runtest_logreport`` and ``add_global_property``).

    Relies on the private module ``_pytest.junitxml`` and its ``LogXML``
    class. JUnit makes a test's classname from its node id's path: a gate
    test's id ``::quantgate::<candidate>::<row>`` starts with ``::`` (so that
    the terminal prints it as a path that re-runs the row) and would become
    ``.quantgate.<candidate>``; the writers are given the id without it. If
    the class moves, none is found: the gate rows still reach JUnit with the
    other reporters, with the leading dot in their classname.
    """
    try:
        from _pytest.junitxml import LogXML
    except ImportError:
        return []
    return [p for p in config.pluginmanager.get_plugins() if isinstance(p, LogXML)]


@dataclass(frozen=True)
class _Crash:
    """Where a failure happened and its one-line message (the shape of pytest's ``reprcrash``)."""

    path: str
    lineno: int
    message: str


class FailureText(TerminalRepr):
    """The ``longrepr`` of a report pytest never ran (a gate test): its text, and its first line
    as the message the short test summary shows (``FAILED <id> - <message>``).

    A subclass of the private ``_pytest._code.code.TerminalRepr`` (what a
    report's ``longrepr`` may be, besides a string); pytest reads the message
    from ``longrepr.reprcrash.message`` (the shape of its own
    ``ReprFileLocation``). A plain string has neither, and pytest before 9
    then shows no message at all. The text is written with ``toterminal``
    and ``str``, which every reporter (terminal, JUnit) uses. If pytest stops
    reading ``reprcrash``, the summary line loses its message, nothing else.
    """

    def __init__(self, text: str, where: str):
        self.text = text
        first = text.strip().splitlines()[0] if text.strip() else ""
        self.reprcrash = _Crash(where, 0, first)

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


def lf_narrowed(config: pytest.Config) -> bool | None:
    """Whether ``--lf`` narrowed what was collected: it found earlier failures among the tests
    (and collected only those), or skipped files; False when they were all elsewhere and it ran
    every test collected.

    Relies on the cache plugin's ``LFPlugin`` (registered as ``lfplugin``)
    and its private ``_previously_failed_count`` and ``_skipped_files``.
    None when they cannot be read: the caller then assumes ``--lf`` narrowed
    collection (the report says "partial" rather than claim a whole run).
    """
    plugin = config.pluginmanager.get_plugin("lfplugin")
    failed = getattr(plugin, "_previously_failed_count", None)
    skipped = getattr(plugin, "_skipped_files", None)
    if not isinstance(failed, int) or not isinstance(skipped, int):
        return None
    return failed > 0 or skipped > 0
