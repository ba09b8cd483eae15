"""Files written whole and locks between processes: what the report, the shard plan, the
cache and the quantized-checkpoint store share."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "file_lock", "jsonl_rows"]


def jsonl_rows(path: Path, raw: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSONL file's text ``raw``.

    Raises:
        ValueError: a line is not JSON; one line naming the file and the line.
    """
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}: line {number}: not valid JSON ({exc})") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole: a reader never sees half a file, an old one stays until done.

    The file gets the permissions the user's umask gives a new file (not
    ``mkstemp``'s 0600: a report is for sharing, with CI artifacts say).
    Missing parent directories are made.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on ``path`` (created if missing) for the block.

    xdist workers that would otherwise both rebuild a damaged cache, or both
    quantize the same checkpoint, take turns. Where the platform has no
    lock the block runs unlocked: callers keep their files whole by atomic
    renames anyway.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
            except OSError:  # gave up after its retries: go on unlocked rather than fail
                yield
                return
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
