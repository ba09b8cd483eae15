"""Calibration vs evaluation overlap: eval cases whose text the quantizer already saw.

A GPTQ or AWQ candidate is calibrated on sample texts. When those texts
contain the suite's prompts, the quantizer has fitted its rounding to exactly
the cases that judge it, and the verdicts come out too kind. Given the
calibration file (``--quant-calibration``), the report says how many cases
share a long word n-gram with it — or, for prompts shorter than that, appear
in it whole — and warns above :data:`WARN_SHARE`.

Pure standard library; no pytest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NGRAM", "WARN_SHARE", "CalibrationOverlap", "overlap"]

#: Words in the n-grams compared: long enough that sharing one is no accident.
NGRAM = 8
#: Above this share of overlapping cases, the report warns.
WARN_SHARE = 0.01
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


@dataclass(frozen=True)
class CalibrationOverlap:
    """How many eval cases the calibration texts contain.

    Attributes:
        file: The calibration file.
        texts: Calibration texts read.
        cases: Eval cases compared.
        overlapping: Node ids of the cases that overlap, sorted.
    """

    file: str
    texts: int
    cases: int
    overlapping: tuple[str, ...]

    @property
    def share(self) -> float:
        return len(self.overlapping) / self.cases if self.cases else 0.0

    @property
    def warns(self) -> bool:
        return self.share > WARN_SHARE

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "texts": self.texts,
            "cases": self.cases,
            "overlapping": len(self.overlapping),
            "share": round(self.share, 6),
            "ngram_words": NGRAM,
            "warn_above": WARN_SHARE,
            "cases_overlapping": list(self.overlapping),
        }


def overlap(prompts: Mapping[str, str], calibration: Iterable[str], file: str = "") -> CalibrationOverlap:
    """Which prompts (node id -> text) share a :data:`NGRAM`-word n-gram with a calibration text.

    Words are case-folded; punctuation marks are words of their own. A
    prompt shorter than the n-gram overlaps when all of it appears, as a run
    of words, in one calibration text.

    >>> overlap({"a": "17 + 8 =", "b": "9 + 9 ="}, ["warm up: 17 + 8 = 25"]).overlapping
    ('a',)
    """
    texts = [_tokens(t) for t in calibration]
    grams: set[tuple[str, ...]] = set()
    short: dict[int, set[tuple[str, ...]]] = {}
    lengths = {min(len(_tokens(p)), NGRAM) for p in prompts.values()}
    for words in texts:
        for i in range(len(words) - NGRAM + 1):
            grams.add(tuple(words[i : i + NGRAM]))
        for n in lengths:
            if 0 < n < NGRAM:
                bucket = short.setdefault(n, set())
                for i in range(len(words) - n + 1):
                    bucket.add(tuple(words[i : i + n]))
    hits = []
    for key, prompt in prompts.items():
        words = _tokens(prompt)
        if not words:
            continue
        if len(words) < NGRAM:
            if tuple(words) in short.get(len(words), set()):
                hits.append(key)
        elif any(tuple(words[i : i + NGRAM]) in grams for i in range(len(words) - NGRAM + 1)):
            hits.append(key)
    return CalibrationOverlap(file, len(texts), len(prompts), tuple(sorted(hits)))
