"""Synthetic task families for the tiny shipped reference model.

Each family is one *slice* of the example suite, and the families are chosen
to be of clearly different difficulty for a ~1 M parameter model, so that
quantization damage lands unevenly across slices (as it does on real models):

* ``recall``    -- key/value lookup among a few pairs (one induction hop).
* ``retention`` -- a value stated at the start (``hold 7``), then a long list
  of distractor digits; the answer is the value held from the start.  It has
  to be carried across the whole list, past many digits that look like it.
* ``arith``     -- a number up to ``ARITH_MAX`` plus one digit, answer written
  most significant digit first (so the carry has to be resolved before the
  first answer token); the eval sums are held out from training.
* ``format``    -- copy key/value pairs into a compact JSON object; checked by
  parsing with :func:`json.loads`.

This module is deliberately free of torch / transformers imports: the example
suite and the unit tests use :func:`check` and :func:`read_jsonl` without the
heavy stack.

Prompts never end in whitespace and answers never contain a newline: in
training every answer is followed by ``"\\n"`` and the EOS token, so a model
stops by itself and ``"\\n"`` is a safe stop string.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "MAX_NEW_TOKENS",
    "SLICES",
    "STOP",
    "Example",
    "check",
    "example_id",
    "first_line",
    "generate",
    "make_example",
    "read_jsonl",
    "write_jsonl",
]

SLICES: tuple[str, ...] = ("recall", "retention", "arith", "format")

#: The string every answer is followed by in training; generation may stop on it.
STOP = "\n"

#: Generation budget per slice, in tokens.  The tokenizer is byte level without
#: merges, so one token is one character; each budget is the longest possible
#: answer plus the newline plus a little slack (a model that runs past its
#: answer gets truncated at the newline by :func:`first_line` anyway).
MAX_NEW_TOKENS: dict[str, int] = {
    "recall": 4,  # one digit
    "retention": 4,  # one digit
    "arith": 4,  # at most two digits (29+9=38)
    "format": 24,  # at most 19 chars: {"a":1,"b":2,"c":3}
}

# Value ranges, kept as constants so the README and the tests can quote them.
RECALL_PAIRS = (3, 6)  # number of key=value pairs, inclusive
RETENTION_ITEMS = (12, 24)  # list length, inclusive
ARITH_MAX = 29  # first operand 0..ARITH_MAX, second 0..9
FORMAT_KEYS = (2, 3)  # number of keys, inclusive


@dataclass(frozen=True)
class Example:
    """One eval or training case.

    Attributes:
        slice: The task family (one of :data:`SLICES`).
        prompt: The text given to the model; it ends with the slice's cue.
        expected: The exact answer (without the trailing newline).
        cluster: The template or group the case was drawn from, for clustered
            standard errors (cases sharing a cluster are not independent).
    """

    slice: str
    prompt: str
    expected: str
    cluster: str

    @property
    def id(self) -> str:
        return example_id(self.slice, self.prompt, self.expected)

    def to_dict(self) -> dict[str, str]:
        # ``id`` first so the JSONL reads naturally.
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Example:
        ex = cls(
            slice=data["slice"],
            prompt=data["prompt"],
            expected=data["expected"],
            cluster=data.get("cluster", ""),
        )
        if "id" in data and data["id"] != ex.id:
            # The id is derived from content; a mismatch means the row was
            # edited by hand without regenerating the id.
            raise ValueError(f"id {data['id']!r} does not match content ({ex.id!r})")
        return ex


def example_id(slice_name: str, prompt: str, expected: str) -> str:
    """Stable id from content (never from the row index), e.g. ``arith-1f3a9c0b2d4e``."""
    digest = hashlib.sha256(f"{slice_name}\x1f{prompt}\x1f{expected}".encode()).hexdigest()
    return f"{slice_name}-{digest[:12]}"


# --------------------------------------------------------------------------
# Generators.  Each takes a ``random.Random`` so that callers own the seed.
# --------------------------------------------------------------------------


def _recall(rng: random.Random) -> Example:
    # Keys are the first n letters in order: the lookup is by key, the values
    # are random digits, so the answer must come from the prompt.
    n = rng.randint(*RECALL_PAIRS)
    keys = string.ascii_lowercase[:n]
    values = [rng.randrange(10) for _ in keys]
    target = rng.randrange(n)
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return Example(
        slice="recall",
        prompt=f"{pairs} ; {keys[target]}?",
        expected=str(values[target]),
        cluster=f"pairs{n}",
    )


def _retention(rng: random.Random) -> Example:
    # A value is stated first, then a long list of distractor digits; the
    # answer is the value held from the start, across the whole list.
    n = rng.randint(*RETENTION_ITEMS)
    held = rng.randrange(10)
    items = [rng.randrange(10) for _ in range(n)]
    return Example(
        slice="retention",
        prompt=f"hold {held} | {' '.join(map(str, items))} ; held?",
        expected=str(held),
        cluster=f"len{n}",
    )


def _arith(rng: random.Random) -> Example:
    a, b = rng.randint(0, ARITH_MAX), rng.randint(0, 9)
    return Example(slice="arith", prompt=f"{a}+{b}=", expected=str(a + b), cluster="add")


def _format(rng: random.Random) -> Example:
    n = rng.randint(*FORMAT_KEYS)
    keys = rng.sample(string.ascii_lowercase, n)
    values = [rng.randrange(10) for _ in keys]
    flat = " ".join(f"{k} {v}" for k, v in zip(keys, values, strict=True))
    obj = dict(zip(keys, values, strict=True))
    return Example(
        slice="format",
        prompt=f"json: {flat} ->",
        expected=json.dumps(obj, separators=(",", ":")),
        cluster=f"keys{n}",
    )


_GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "recall": _recall,
    "retention": _retention,
    "arith": _arith,
    "format": _format,
}


def make_example(slice_name: str, rng: random.Random) -> Example:
    """Draw one example of ``slice_name`` from ``rng``."""
    try:
        gen = _GENERATORS[slice_name]
    except KeyError:
        raise ValueError(f"unknown slice {slice_name!r}; expected one of {SLICES}") from None
    return gen(rng)


def generate(
    slice_name: str,
    n: int,
    seed: int,
    *,
    exclude: Iterable[str] = (),
) -> list[Example]:
    """``n`` distinct examples of one slice, reproducible from ``seed``.

    Args:
        slice_name: One of :data:`SLICES`.
        n: How many examples.
        seed: Seeds a private ``random.Random`` (the global RNG is untouched).
        exclude: Prompts that must not appear (e.g. another split's prompts).
    """
    # The slice name is folded into the seed so slices do not share a stream.
    rng = random.Random(f"{seed}:{slice_name}")
    banned = set(exclude)
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {slice_name} examples")
        ex = make_example(slice_name, rng)
        if ex.prompt in banned:
            continue
        banned.add(ex.prompt)
        out.append(ex)
    return out


def stream(
    slices: dict[str, float],
    seed: int,
    *,
    exclude: Iterable[str] = (),
) -> Iterator[Example]:
    """An endless training stream mixing slices with the given weights.

    Prompts in ``exclude`` (the eval sets) are never produced, so the eval
    sets stay disjoint from training even for the small arithmetic space.
    """
    rng = random.Random(seed)
    banned = frozenset(exclude)
    names = list(slices)
    weights = [slices[s] for s in names]
    while True:
        name = rng.choices(names, weights)[0]
        ex = make_example(name, rng)
        if ex.prompt not in banned:
            yield ex


# --------------------------------------------------------------------------
# Checking.
# --------------------------------------------------------------------------


def first_line(output: str) -> str:
    """The output up to the first newline (the stop string), stripped."""
    return output.split(STOP, 1)[0].strip()


def check(slice_name: str, output: str, expected: str) -> bool:
    """Deterministic correctness check of a model output against ``expected``.

    The output is cut at the first newline first, so it does not matter
    whether the caller already applied the stop string.  ``format`` parses
    both sides with :func:`json.loads` and compares the objects (key order and
    whitespace are free, value types are not: ``"3"`` is not ``3``); every
    other slice compares the stripped text exactly.
    """
    got = first_line(output)
    if slice_name == "format":
        try:
            parsed = json.loads(got)
        except ValueError:
            return False
        want = json.loads(expected)
        # ``==`` alone would accept ``True`` for ``1``; compare types as well.
        return (
            isinstance(parsed, dict)
            and parsed == want
            and all(type(parsed[k]) is type(want[k]) for k in want)
        )
    if slice_name not in _GENERATORS:
        raise ValueError(f"unknown slice {slice_name!r}; expected one of {SLICES}")
    return got == expected.strip()


# --------------------------------------------------------------------------
# JSONL.
# --------------------------------------------------------------------------


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    """Write one JSON object per line (keys: id, slice, prompt, expected, cluster)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="\n") as fh:
        for ex in examples:
            fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[Example]:
    """Read examples written by :func:`write_jsonl` (ids are re-verified)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [Example.from_dict(json.loads(line)) for line in fh if line.strip()]
