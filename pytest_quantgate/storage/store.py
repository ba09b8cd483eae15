"""The reference cache's store: a model's results on cases, on disk, keyed by content.

A result is stored under two fingerprints: the run's
(:func:`~.fingerprint.run_fingerprint`: the model's files, how it loads, the
software) and the case's (:func:`~..core.source.case_fingerprint`: its key,
prompt, settings, and a trajectory's source). The payload is the case's
transcript in its one encoding (:func:`~..values.transcript.run_to_payload`).

Storage is one SQLite file (standard library, WAL mode) that several xdist
workers write at once; a case is one row written in one transaction, so it
is there whole or not at all, and every row carries a digest that is checked
on reading. A corrupted or foreign file is reported in one line and rebuilt:
never an exception, never a wrong hit. Nothing here imports pytest or torch.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..values.files import file_lock
from ..values.transcript import CaseRun, payload_to_run, run_to_payload

__all__ = [
    "DB_NAME",
    "DEFAULT_DIR_NAME",
    "CacheMode",
    "CacheStats",
    "ResultCache",
    "parse_cache_mode",
]

#: The cache directory's name under the rootdir (``--quant-cache-dir`` default).
DEFAULT_DIR_NAME = ".quantgate"
#: The database file inside the cache directory.
DB_NAME = "results.sqlite3"

# -- storage ---------------------------------------------------------------------


class CacheMode(str, enum.Enum):
    """``--quant-cache``: use the cache, ignore it, or regenerate and overwrite it."""

    ON = "on"  # read hits, write misses
    OFF = "off"  # neither read nor write; no file is created
    REFRESH = "refresh"  # read nothing, write everything generated

    def __str__(self) -> str:
        return self.value

    @property
    def reads(self) -> bool:
        return self is CacheMode.ON

    @property
    def writes(self) -> bool:
        return self is not CacheMode.OFF


def parse_cache_mode(text: str) -> CacheMode:
    """``on``, ``off`` or ``refresh`` (any case).

    Raises:
        ValueError: one line naming the allowed values.
    """
    try:
        return CacheMode(str(text).strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in CacheMode)
        raise ValueError(f"--quant-cache must be one of {allowed}, got {text!r}") from None


@dataclass
class CacheStats:
    """What the cache did in this process.

    Attributes:
        hits: Cases answered from the cache.
        misses: Cases asked for and not found (or not cacheable, or not read).
        writes: Cases written.
        skipped: Cases not written: errors, uncacheable cases, states
            that do not survive JSON.
    """

    hits: int = 0
    misses: int = 0
    writes: int = 0
    skipped: int = 0


#: ``PRAGMA application_id`` of a quantgate cache ("QGC1"): anything else is foreign.
APPLICATION_ID = 0x51474331
#: ``PRAGMA user_version``: bumped when the table or the payloads change.
SCHEMA_VERSION = 2
#: Writers wait this long for another process's transaction instead of failing.
BUSY_TIMEOUT_S = 60.0
#: Files up to this size get a structural check (``PRAGMA quick_check``) on opening.
QUICK_CHECK_LIMIT = 256 << 20
_COLUMNS = ["run", "case_fp", "payload", "digest", "written"]
_CREATE = """
CREATE TABLE IF NOT EXISTS results (
    run TEXT NOT NULL,
    case_fp TEXT NOT NULL,
    payload TEXT NOT NULL,
    digest TEXT NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (run, case_fp)
) WITHOUT ROWID
"""
#: The key of a model's facts under ``<run>/facts`` (:meth:`ResultCache.put_facts`).
FACTS_KEY = "model-facts"
#: Largest number of keys in one ``IN (...)`` (SQLite's old limit is 999 parameters).
_CHUNK = 500


class ResultCache:
    """The on-disk cache of results, shared by the processes of a session.

    Open it with :meth:`open`. Reads and writes never raise for a problem of
    the file: a corrupted or foreign database is rebuilt on opening, a
    failure later disables the cache for the rest of the process; either
    leaves one line in :attr:`warnings`.

    Attributes:
        path: The database file (None in mode ``off``).
        mode: The :class:`CacheMode`.
        stats: Hits, misses, writes, skips in this process.
        warnings: One-line messages to show, in order.
    """

    def __init__(self, path: Path | None, mode: CacheMode):
        self.path = path
        self.mode = mode
        self.stats = CacheStats()
        self.warnings: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inherited: list[sqlite3.Connection] = []

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], mode: CacheMode | str = CacheMode.ON) -> ResultCache:
        """The cache in ``directory`` (``<directory>/results.sqlite3``).

        Creates the directory with a ``.gitignore`` of ``*`` (the cache is
        never committed) and the database, or checks the one there: a file
        that is not a database, another application's database, another
        schema version or a damaged one is set aside as ``results.sqlite3.bad``
        and rebuilt, with one line in :attr:`warnings`. In mode ``off``
        nothing is touched. Never raises for a problem of the file or the
        directory: the cache is then off, and :attr:`warnings` says why.
        """
        mode = parse_cache_mode(mode) if not isinstance(mode, CacheMode) else mode
        if mode is CacheMode.OFF:
            return cls(None, mode)
        directory = Path(directory)
        cache = cls(directory / DB_NAME, mode)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            ignore = directory / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# pytest-quantgate's result cache: never committed\n*\n")
        except OSError as exc:
            cache._disable(f"cannot be created ({exc.strerror or exc})")
            return cache
        try:
            with file_lock(directory / (DB_NAME + ".lock")):
                cache._conn = cache._open_checked()
        except (sqlite3.Error, OSError) as exc:
            cache._disable(f"cannot be opened ({_reason(exc)})")
        return cache

    def _open_checked(self) -> sqlite3.Connection:
        """A connection to a valid cache, rebuilding the file when it is not one."""
        assert self.path is not None
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(self.path)
            problem = _problem(conn, self.path)
        except sqlite3.OperationalError:  # locked, unopenable, I/O: not the file's content
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as exc:  # not a database, or a malformed one
            problem = f"unreadable ({_reason(exc)})"
        if problem == "":  # a valid cache
            assert conn is not None
            return conn
        if problem is not None:
            if conn is not None:
                conn.close()
            _set_aside(self.path)
            self.warnings.append(f"quantgate: cache {_shown(self.path)} was {problem}; rebuilt it")
            conn = _connect(self.path)
        assert conn is not None
        try:  # a new file, an empty one, or the one just set aside: give it the schema
            _create(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- reading and writing ---------------------------------------------------

    def get_many(self, run: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored payloads of the case fingerprints ``keys`` under the run ``run``.

        Only in mode ``on``; a row whose digest does not match is ignored
        (a miss) and reported once.
        """
        wanted = list(dict.fromkeys(keys))
        found = self._fetch(run, wanted)
        self.stats.hits += len(found)
        self.stats.misses += len(wanted) - len(found)
        return found

    def put_many(self, run: str, items: Mapping[str, Mapping[str, Any]]) -> int:
        """Store payloads by case fingerprint under the run ``run``; the number written.

        One transaction: all of them or none (a crash never leaves half a
        case). Existing rows are replaced. A payload with an ``error`` is not
        stored (a transient failure, an out-of-memory say, must not stick),
        nor one that is not JSON; both count as skipped. Nothing is written
        in mode ``off``.
        """
        if not self.mode.writes:
            return 0
        now = time.time()
        rows = []
        for case_fp, payload in items.items():
            if payload.get("error") is not None:
                self.stats.skipped += 1
                continue
            try:
                text = _dumps(payload)
            except (TypeError, ValueError):
                self.stats.skipped += 1
                continue
            rows.append((run, case_fp, text, _row_digest(run, case_fp, text), now))
        if not self._insert(rows):
            return 0
        self.stats.writes += len(rows)
        return len(rows)

    def _insert(self, rows: Sequence[tuple[str, str, str, str, float]]) -> bool:
        """Insert or replace ``rows`` in one transaction; False when nothing was written."""
        if not rows or self._connection() is None:
            return False
        try:
            with self._lock:
                conn = self._connection()
                if conn is None:
                    return False
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._disable(f"cannot be written ({_reason(exc)})", running=True)
            return False
        return True

    def put_facts(self, run: str | None, facts: Mapping[str, Any]) -> bool:
        """Store what a model is (weights, dtype, device, ...) beside its results.

        A run whose results all come from the cache never loads the model;
        its report still shows them. Kept under ``<run>/facts``, apart from
        the cases (not counted in :attr:`stats`).
        """
        if not self.mode.writes or run is None:
            return False
        try:
            text = _dumps(dict(facts))
        except (TypeError, ValueError):
            return False
        key = f"{run}/facts"
        return self._insert([(key, FACTS_KEY, text, _row_digest(key, FACTS_KEY, text), time.time())])

    def get_facts(self, run: str | None) -> dict[str, Any] | None:
        """The facts :meth:`put_facts` stored for ``run`` (mode ``on`` only), or None."""
        if run is None:
            return None
        return self._fetch(f"{run}/facts", [FACTS_KEY]).get(FACTS_KEY)

    def get_runs(self, run: str | None, cases: Mapping[str, str | None]) -> dict[str, CaseRun]:
        """Cached transcripts on the run ``run`` of ``cases`` (case key -> case fingerprint), by key.

        ``run`` None (a model that cannot be fingerprinted) and uncacheable
        cases (fingerprint None) are misses.
        """
        if run is None:
            self.stats.misses += len(cases)
            return {}
        by_fp = {fp: key for key, fp in cases.items() if fp is not None}
        found = self._fetch(run, list(by_fp))
        out: dict[str, CaseRun] = {}
        damaged = 0
        for fp, payload in found.items():
            try:
                out[by_fp[fp]] = payload_to_run(by_fp[fp], payload)
            except (ValueError, TypeError, AttributeError):
                damaged += 1
        if damaged:
            self._warn_damaged(damaged)
        self.stats.hits += len(out)
        self.stats.misses += len(cases) - len(out)
        return out

    def put_runs(self, run: str | None, cases: Mapping[str, str | None], runs: Mapping[str, CaseRun]) -> int:
        """Store the transcripts ``runs`` (by case key) of ``cases`` (key -> fingerprint); the number written.

        Skipped (and counted): runs that ended in an error (see
        :meth:`put_many`), uncacheable cases (fingerprint None), and runs that
        would not come back equal (a state that JSON changes: tuples,
        non-string keys). Nothing is written when ``run`` is None.
        """
        if not self.mode.writes or run is None:
            return 0
        items: dict[str, dict[str, Any]] = {}
        for key, fp in cases.items():
            result = runs.get(key)
            if result is None:
                continue
            if fp is None or result.error is not None:
                self.stats.skipped += 1
                continue
            payload = run_to_payload(result)
            try:
                same = payload_to_run(key, json.loads(_dumps(payload))) == result
            except (TypeError, ValueError):
                same = False
            if not same:
                self.stats.skipped += 1
                continue
            items[fp] = payload
        return self.put_many(run, items)

    def get_scores(self, run: str | None, cases: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
        """The reference's token scores kept beside its results (``<run>/scores``), by case key.

        Divergence reads them so that a warm run need not load the
        reference (:mod:`..core.divergence`). Not counted in :attr:`stats`.
        """
        if run is None:
            return {}
        by_fp = {fp: key for key, fp in cases.items() if fp is not None}
        found = self._fetch(f"{run}/scores", list(by_fp))
        return {by_fp[fp]: payload for fp, payload in found.items()}

    def put_scores(
        self, run: str | None, cases: Mapping[str, str | None], payloads: Mapping[str, Mapping[str, Any]]
    ) -> int:
        """Store token scores by case key beside ``run``'s results; the number written."""
        if not self.mode.writes or run is None:
            return 0
        key = f"{run}/scores"
        now = time.time()
        rows = []
        for case_key, payload in payloads.items():
            fp = cases.get(case_key)
            if fp is None:
                continue
            try:
                text = _dumps(dict(payload))
            except (TypeError, ValueError):
                continue
            rows.append((key, fp, text, _row_digest(key, fp, text), now))
        return len(rows) if self._insert(rows) else 0

    def count(self, run: str | None = None) -> int:
        """Rows stored (under ``run``, or all); 0 when the cache is unusable."""
        conn = self._connection()
        if conn is None:
            return 0
        try:
            with self._lock:
                if run is None:
                    row = conn.execute("SELECT count(*) FROM results").fetchone()
                else:
                    row = conn.execute("SELECT count(*) FROM results WHERE run = ?", (run,)).fetchone()
        except sqlite3.Error as exc:
            self._disable(f"cannot be read ({_reason(exc)})", running=True)
            return 0
        return int(row[0])

    @property
    def warning(self) -> str | None:
        """The first warning line, or None."""
        return self.warnings[0] if self.warnings else None

    @property
    def usable(self) -> bool:
        """Whether the cache has a working database (never in mode ``off``)."""
        return self._conn is not None

    def close(self) -> None:
        """Close the database; the cache reads and writes nothing afterwards."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _fetch(self, run: str, wanted: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not self.mode.reads or not wanted or self._connection() is None:
            return {}
        found: dict[str, dict[str, Any]] = {}
        damaged = 0
        try:
            with self._lock:
                conn = self._connection()
                if conn is None:
                    return {}
                for i in range(0, len(wanted), _CHUNK):
                    chunk = wanted[i : i + _CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    query = (
                        f"SELECT case_fp, payload, digest FROM results WHERE run = ? AND case_fp IN ({marks})"
                    )
                    rows = conn.execute(query, (run, *chunk)).fetchall()
                    for case_fp, text, digest in rows:
                        payload = _checked_payload(run, case_fp, text, digest)
                        if payload is None:
                            damaged += 1
                        else:
                            found[case_fp] = payload
        except sqlite3.Error as exc:
            self._disable(f"cannot be read ({_reason(exc)})", running=True)
            return {}
        if damaged:
            self._warn_damaged(damaged)
        return found

    def _connection(self) -> sqlite3.Connection | None:
        """The connection, reopened in a forked child (a connection must not cross a fork)."""
        if self._conn is not None and self._pid != os.getpid():
            assert self.path is not None
            self._inherited.append(self._conn)  # never closed here: it is the parent's
            self._pid = os.getpid()
            try:
                self._conn = _connect(self.path)
            except sqlite3.Error as exc:
                self._conn = None
                self._disable(f"cannot be opened ({_reason(exc)})", running=True)
        return self._conn

    def _disable(self, why: str, *, running: bool = False) -> None:
        where = _shown(self.path) if self.path is not None else "?"
        rest = "running without it from here" if running else "running without it"
        self.warnings.append(f"quantgate: cache {where} {why}; {rest}")
        if self._conn is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None

    def _warn_damaged(self, count: int) -> None:
        where = _shown(self.path) if self.path is not None else "?"
        entries = "entry" if count == 1 else "entries"
        self.warnings.append(f"quantgate: cache {where}: ignored {count} damaged {entries}; regenerating")


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): transactions are explicit, writers
    # take the write lock up front (BEGIN IMMEDIATE) and wait for it.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode: a crash loses no committed case
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _problem(conn: sqlite3.Connection, path: Path) -> str | None:
    """What is wrong with the database: "" nothing, None empty (create it), else one phrase.

    Raises:
        sqlite3.DatabaseError: the file is not a database or is malformed.
    """
    app = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if app == 0 and version == 0 and not tables:
        return None
    if app != APPLICATION_ID:
        shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
        return f"another application's database (tables: {shown or 'none'})"
    if version != SCHEMA_VERSION:
        return f"written by another version of quantgate (schema {version}, this one uses {SCHEMA_VERSION})"
    columns = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    if columns != _COLUMNS:
        return "damaged (its results table is not quantgate's)"
    if path.stat().st_size <= QUICK_CHECK_LIMIT:
        verdict = conn.execute("PRAGMA quick_check").fetchall()
        if verdict != [("ok",)]:
            return f"damaged ({verdict[0][0] if verdict else 'no verdict'})"
    return ""


def _create(conn: sqlite3.Connection) -> None:
    """Give an empty database quantgate's schema (a no-op on one that has it)."""
    conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer; persistent
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(_CREATE)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _set_aside(path: Path) -> None:
    """Move a bad database to ``<name>.bad`` (one slot) and drop its journal files."""
    try:
        os.replace(path, path.with_name(path.name + ".bad"))
    except FileNotFoundError:
        pass
    except OSError:
        path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        # A journal left beside a new database would be replayed into it.
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _checked_payload(run: str, case_fp: Any, text: Any, digest: Any) -> dict[str, Any] | None:
    """The payload of a row, or None when the row is damaged."""
    if not (isinstance(case_fp, str) and isinstance(text, str) and isinstance(digest, str)):
        return None
    if digest != _row_digest(run, case_fp, text):
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _row_digest(run: str, case_fp: str, text: str) -> str:
    return hashlib.sha256(f"{run}\0{case_fp}\0{text}".encode()).hexdigest()[:32]


def _dumps(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
