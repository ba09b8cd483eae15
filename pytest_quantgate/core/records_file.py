"""One machine's shard of a suite, as a file: its case records and what a merge must check.

With ``--quant-shard=K/N --quant-records DIR`` each machine of a CI job
matrix writes ``DIR/shard-K-of-N.json``: a :class:`ShardHeader` (which
shard, of which suite, gated how), the record of every case it checked,
its model facts and its selection counts. ``pytest --quant-merge DIR ...``
reads every file back (:func:`read_shards`), refuses a set that is not one
whole run (:func:`check_shards`), and gates the records together: the
paired statistics need every discordant pair, never per-shard aggregates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..values.digest import json_digest
from ..values.files import atomic_write_text

__all__ = [
    "FORMAT",
    "ShardError",
    "ShardFile",
    "ShardHeader",
    "check_shards",
    "parse_shard",
    "read_shards",
    "shard_file_name",
    "suite_fingerprint",
]

#: The ``format`` of a shard file; a file of another format is refused.
FORMAT = "quantgate-shard/1"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


class ShardError(ValueError):
    """Shard files that cannot be merged into one gate; the message is one line."""


def parse_shard(value: str, name: str = "--quant-shard") -> tuple[int, int]:
    """``K/N`` -> ``(K, N)`` with 1 <= K <= N.

    >>> parse_shard("2/3")
    (2, 3)
    """
    m = _SHARD.match(str(value))
    if not m:
        raise ShardError(f"{name} must be K/N (the K-th of N shards, K from 1), got {value!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ShardError(f"{name} must be K/N with 1 <= K <= N, got {value!r}")
    return k, n


def shard_file_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}.json"


def suite_fingerprint(cases: Mapping[str, str]) -> str:
    """A digest of every collected quant case: node id -> case key (or why it has none)."""
    return json_digest(sorted(cases.items()), 16)


@dataclass(frozen=True)
class ShardHeader:
    """Which shard a file holds, of which suite, gated against what and how.

    ``models`` are the reference's and candidates' specs (``ModelSpec.to_dict()``)
    and ``settings`` the gate's (tolerance, alpha, slice tolerances, strict):
    shards that differ in either were gated differently and cannot be merged.
    """

    index: int
    count: int
    suite: str
    models: dict[str, Any]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "count": self.count,
            "suite": self.suite,
            "models": self.models,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardHeader:
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            suite=str(data["suite"]),
            models=dict(data["models"]),
            settings=dict(data["settings"]),
        )


@dataclass(frozen=True)
class ShardFile:
    """One shard's file: its header, the records it checked (``CaseRecord.to_dict()``) and its facts.

    ``facts`` holds what the controller feeds the aggregator besides records:
    ``models``, ``load_failures``, ``collected``, ``selected``, ``skipped``,
    ``lost``, ``unchecked``, ``narrowed_by`` and ``counted``.
    """

    header: ShardHeader
    records: tuple[dict[str, Any], ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was read from

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "header": self.header.to_dict(),
            "facts": self.facts,
            "records": list(self.records),
        }

    def write(self, directory: Path) -> Path:
        """Write atomically as ``directory/shard-K-of-N.json``; returns the path."""
        path = directory / shard_file_name(self.header.index, self.header.count)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), sort_keys=True, indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> ShardFile:
        """Raises: ShardError: not a readable shard file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ShardError(f"{path}: not a quantgate shard file (format {data.get('format')!r})")
            return cls(
                header=ShardHeader.from_dict(data["header"]),
                records=tuple(data["records"]),
                facts=dict(data["facts"]),
                path=path,
            )
        except ShardError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ShardError(f"{path}: not a readable shard file ({type(exc).__name__}: {exc})") from None


def read_shards(directories: Sequence[Path]) -> list[ShardFile]:
    """Every ``shard-K-of-N.json`` in the directories, in order of K.

    Raises:
        ShardError: a directory that does not exist, or holds no shard file.
    """
    files: list[ShardFile] = []
    for directory in directories:
        if not directory.is_dir():
            raise ShardError(f"--quant-merge: {directory} is not a directory")
        found = sorted(p for p in directory.iterdir() if _FILE.match(p.name))
        files.extend(ShardFile.read(p) for p in found)
    if not files:
        raise ShardError(f"--quant-merge: no shard-K-of-N.json in {', '.join(map(str, directories))}")
    return sorted(files, key=lambda f: (f.header.index, str(f.path)))


def check_shards(files: Sequence[ShardFile], models: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Refuse shards that are not one whole run of one suite, gated as this merge gates.

    Checked in this order, the first problem named: the same N everywhere,
    the same suite fingerprint, the merge's own reference and candidates,
    its own gate settings; then no shard twice and none missing.

    Raises:
        ShardError: one line naming the shard (its file) and what is wrong.
    """
    first = files[0]
    for f in files:
        h = f.header
        where = f"shard {h.index}/{h.count} ({f.path})"
        if h.count != first.header.count:
            raise ShardError(
                f"--quant-merge: {where} is one of {h.count} shards, but shard "
                f"{first.header.index}/{first.header.count} ({first.path}) one of {first.header.count}"
            )
        if h.suite != first.header.suite:
            raise ShardError(
                f"--quant-merge: {where} is foreign: another suite (fingerprint {h.suite}) than "
                f"shard {first.header.index}/{first.header.count} ({first.path}, "
                f"fingerprint {first.header.suite})"
            )
        if h.models != dict(models):
            raise ShardError(
                f"--quant-merge: {where} is foreign: it gated other models ({_labels(h.models)}) "
                f"than this merge's reference and candidates ({_labels(models)})"
            )
        if h.settings != dict(settings):
            differ = sorted(k for k in {*h.settings, *settings} if h.settings.get(k) != settings.get(k))
            raise ShardError(
                f"--quant-merge: {where} is foreign: other gate settings ({', '.join(differ)}) "
                "than this merge's"
            )
    seen: dict[int, ShardFile] = {}
    for f in files:
        if f.header.index in seen:
            raise ShardError(
                f"--quant-merge: shard {f.header.index}/{f.header.count} given twice "
                f"({seen[f.header.index].path} and {f.path})"
            )
        seen[f.header.index] = f
    missing = [k for k in range(1, first.header.count + 1) if k not in seen]
    if missing:
        names = ", ".join(f"{k}/{first.header.count}" for k in missing)
        raise ShardError(f"--quant-merge: shard {names} missing (found {len(seen)} of {first.header.count})")


def _labels(models: Mapping[str, Any]) -> str:
    ref = models.get("reference") or {}
    cands = [c.get("text", "?") for c in models.get("candidates") or []]
    return f"reference {ref.get('text', '?') if ref else None}, candidates {', '.join(cands) or 'none'}"
