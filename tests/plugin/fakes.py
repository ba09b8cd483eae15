"""Helpers for the plugin's pytester tests: fake-backend scripts, generated suites, logs.

A test builds its scenario from three parts:

- cases: ``cases("arith", 60)`` makes 60 distinct prompts of a slice, each
  with its expected answer;
- a suite: ``suite_source(Slice("arith", arith), ...)`` writes one
  ``@quant_case`` test per slice whose body checks ``output.strip() == expected``;
- scripts: ``write_script(path, answers(arith, wrong=range(20)))`` is a model
  that answers every case right except the first 20 (``fake:PATH`` loads it).

Every model is a script, so each scenario's outcomes are decided in advance.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "LOG",
    "WRONG",
    "XDIST_MODES",
    "Case",
    "Slice",
    "answers",
    "cases",
    "events",
    "gate_args",
    "generated",
    "generations",
    "log_entries",
    "model",
    "prompts",
    "read_report",
    "spec",
    "statuses",
    "suite_source",
    "summary_counts",
    "table_rows",
    "write_script",
]

#: The log every script of a pytester run appends its generated prompts to.
LOG = "generated.jsonl"
#: The three ways the plugin's integration tests run.
XDIST_MODES = {"no-xdist": ["-p", "no:xdist"], "n0": ["-n", "0"], "n2": ["-n", "2"]}

#: The reply a script gives where it is meant to get a case wrong.
WRONG = "wrong"


@dataclass(frozen=True)
class Case:
    """One prompt and the answer its check expects."""

    prompt: str
    expected: str


def cases(name: str, n: int) -> list[Case]:
    """``n`` distinct sums tagged with the slice ``name``: ``"arith 3: 3+7="`` -> ``"10"``."""
    return [Case(f"{name} {i}: {i}+{i % 9 + 1}=", str(i + i % 9 + 1)) for i in range(n)]


def answers(items: Sequence[Case], *, wrong: Iterable[int] = (), omit: Iterable[int] = ()) -> dict[str, str]:
    """Replies to ``items``: the expected answer, :data:`WRONG` at the indexes in ``wrong``.

    Indexes in ``omit`` get no reply at all: the script's ``default`` answers them.
    """
    wrong, omit = set(wrong), set(omit)
    return {c.prompt: WRONG if i in wrong else c.expected for i, c in enumerate(items) if i not in omit}


def write_script(
    path: Path,
    replies: Mapping[str, str],
    default: str = "",
    fail_on: Iterable[str] = (),
    load_error: str | None = None,
    log: str | None = None,
    context: int | None = None,
    oom_above: int | None = None,
    solo_replies: Mapping[str, str] | None = None,
) -> Path:
    """Write a ``fake:`` script (see :mod:`pytest_quantgate.backends.fake`); returns ``path``.

    ``log`` is relative to the script's directory.
    """
    script: dict[str, object] = {"replies": dict(replies), "default": default, "fail_on": list(fail_on)}
    if load_error is not None:
        script["load_error"] = load_error
    if log is not None:
        script["log"] = log
    if context is not None:
        script["context"] = context
    if oom_above is not None:
        script["oom_above"] = oom_above
    if solo_replies is not None:
        script["solo_replies"] = dict(solo_replies)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(script, indent=1), encoding="utf-8")
    return path


def spec(label: str, script: Path) -> str:
    """The model spec of a script under a label: ``label=fake:/abs/path.json``."""
    return f"{label}=fake:{script}"


@dataclass(frozen=True)
class Slice:
    """One ``@quant_case`` test of a generated suite, named ``test_<name>``.

    Attributes:
        name: the slice, and the test's name.
        items: its cases; case ``i`` gets the id ``<name>-<i>``.
        critical: ``quant_case(critical=...)``.
        tolerance: ``quant_slice(tolerance=...)``.
        marks: further decorators written above the test (``"pytest.mark.smoke"``).
        max_new_tokens: ``quant_case(max_new_tokens=...)``.
    """

    name: str
    items: Sequence[Case]
    critical: bool = False
    tolerance: float | None = None
    marks: tuple[str, ...] = ()
    max_new_tokens: int = 8


def suite_source(*slices: Slice) -> str:
    """A test module with one ``@quant_case`` test per slice."""
    lines = ["import pytest", "from pytest_quantgate import quant_case, quant_slice", ""]
    for s in slices:
        params = ", ".join(
            f"pytest.param({c.prompt!r}, {c.expected!r}, id={f'{s.name}-{i}'!r})"
            for i, c in enumerate(s.items)
        )
        tolerance = "" if s.tolerance is None else f", tolerance={s.tolerance!r}"
        lines += ["", *(f"@{m}" for m in s.marks)]
        lines += [
            f"@quant_slice({s.name!r}{tolerance})",
            f'@quant_case("prompt, expected", [{params}], '
            f"max_new_tokens={s.max_new_tokens}, critical={s.critical})",
            f"def test_{s.name}(prompt, expected, output):",
            "    assert output.strip() == expected",
            "",
        ]
    return "\n".join(lines)


def generations(log: Path) -> dict[str, Counter[str]]:
    """Model label -> how many times each prompt was generated, read from a script's log."""
    out: dict[str, Counter[str]] = {}
    if not log.exists():
        return out
    for entry in log_entries(log):
        if "prompt" in entry:
            out.setdefault(entry["model"], Counter())[entry["prompt"]] += 1
    return out


def log_entries(log: Path) -> list[dict[str, Any]]:
    """Every line of a script's log: generated prompts and load/close/batch/oom events, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def events(pytester: pytest.Pytester) -> list[tuple[str, str, int | None]]:
    """``(model, event, size)`` of every load, close, batch and oom, in order, from the shared log."""
    return [(e["model"], e["event"], e.get("size")) for e in log_entries(pytester.path / LOG) if "event" in e]


def table_rows(stdout: str, candidate: str) -> dict[str, str]:
    """Slice -> verdict, read from the terminal table of one candidate."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf"quantgate: {re.escape(candidate)} ", line))
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        m = re.match(r"^(\S+)\s+\d+\s.*\s(REGRESSED|PASS|INCONCLUSIVE|IMPROVED)\b", line)
        if m:
            rows[m.group(1)] = m.group(2)
        elif line.startswith(("Δ:", "=")):
            break
    return rows


def model(pytester: pytest.Pytester, label: str, replies: Mapping[str, str], **kwargs: Any) -> str:
    """Write ``<label>.json``, logging to the shared log; its spec ``label=fake:...``."""
    return spec(label, write_script(pytester.path / f"{label}.json", replies, log=LOG, **kwargs))


def gate_args(reference: str, *candidates: str) -> list[str]:
    return [f"--quant-reference={reference}", *(f"--quant-candidate={c}" for c in candidates)]


def generated(pytester: pytest.Pytester) -> dict[str, Counter[str]]:
    """Model label -> prompt -> times generated, from the shared log."""
    return generations(pytester.path / LOG)


def prompts(*slices: Sequence[Case]) -> Counter[str]:
    """Each case's prompt once."""
    return Counter(c.prompt for items in slices for c in items)


def summary_counts(result: pytest.RunResult) -> dict[str, int]:
    """The final summary line as ``{"passed": 3, "regressed": 2, ...}``."""
    line = result.stdout.lines[-1].split(" in ")[0]
    plural = {"error": "errors", "warning": "warnings"}
    return {plural.get(word, word): int(n) for n, word in re.findall(r"(\d+) ([a-z-]+)", line)}


def statuses(report: Mapping[str, Any], candidate: str) -> dict[str, str]:
    """Case id -> the candidate's status, from the JSON report."""
    return {c["nodeid"].split("[")[1].rstrip("]"): c["status"][candidate] for c in report["cases"]}


def read_report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


#: A suite of three slices of the tiny model's example data (``data``: its folder; ``limit``: cases
#: per slice), for the end-to-end runs on real models.
TINY_SUITE = """
import json
from pathlib import Path

import pytest
from pytest_quantgate import quant_case, quant_slice

DATA = Path({data!r})


def cases(name, limit={limit}):
    rows = [json.loads(line) for line in (DATA / f"{{name}}.jsonl").read_text().splitlines() if line.strip()]
    return [pytest.param(r["prompt"], r["expected"], id=r["id"]) for r in rows[:limit]]


@quant_slice("recall")
@quant_case("prompt, expected", cases("recall"), max_new_tokens=4, stop="\\n")
def test_recall(prompt, expected, output):
    assert output.strip() == expected


@quant_slice("arith")
@quant_case("prompt, expected", cases("arith"), max_new_tokens=5, stop="\\n")
def test_arith(prompt, expected, output):
    assert output.strip() == expected


@quant_slice("retention")
@quant_case("prompt, expected", cases("retention"), max_new_tokens=4, stop="\\n")
def test_retention(prompt, expected, output):
    assert output.strip() == expected
"""
