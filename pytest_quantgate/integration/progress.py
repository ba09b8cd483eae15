"""Progress lines written from inside a test's call, where pytest captures output."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

__all__ = ["ProgressWriter"]


class ProgressWriter:
    """Writes the executor's lines to the terminal, past pytest's capture (as live logging does)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def _parts(self) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        return tr, capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()

    def emit(self, line: str) -> None:
        tr, uncaptured = self._parts()
        if tr is None:
            return
        with uncaptured:
            tr.ensure_newline()
            tr.write_line(line, cyan=True)

    def resume_progress_line(self, nodeid: str) -> None:
        """Re-open the file's progress line that the generation lines broke."""
        tr, uncaptured = self._parts()
        if tr is None or tr.verbosity > 0:
            return
        with uncaptured:
            tr.write_fspath_result(nodeid, "")
