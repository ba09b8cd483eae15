"""The README's snippets run as shown: every ```python block, each with the command after it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pytest_quantgate.values import specs

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks() -> list[tuple[str, str, str]]:
    """Every fenced block of the README as ``(lang, text, the first bash block after it)``."""
    found = re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for i, (lang, text) in enumerate(found):
        command = next((t for lang2, t in found[i + 1 :] if lang2 == "bash"), "")
        out.append((lang, text, command))
    return out


def _python_blocks() -> list[tuple[str, str]]:
    return [(text, command) for lang, text, command in _blocks() if lang == "python"]


def _kind(text: str) -> str:
    """What a python block is: a conftest, the multi-step suite (by their first line), or a suite."""
    if text.startswith("# conftest.py"):
        return "conftest"
    return "multistep" if text.startswith("# test_multistep.py") else "suite"


def _args(command: str) -> list[str]:
    """The pytest arguments of the first command of a bash block, continuation lines joined."""
    line = command.replace("\\\n", " ").strip().splitlines()[0]
    words = shlex.split(line)
    assert words[0] == "pytest", line
    return words[1:]


def test_every_python_snippet_is_run_here() -> None:
    """A new ```python block needs a runner below: none may go unchecked."""
    kinds = [_kind(text) for text, _ in _python_blocks()]
    assert kinds == ["suite", "multistep", "conftest"]


def test_suite_snippet_runs_on_the_tiny_model(pytester: pytest.Pytester, tiny_ref: Path) -> None:
    pytest.importorskip("transformers")
    ((suite, command),) = [(t, c) for t, c in _python_blocks() if _kind(t) == "suite"]
    args = _args(command)
    # The command as written, from the repository's root: models/ is where it says.
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "tiny-ref").symlink_to(tiny_ref, target_is_directory=True)
    pytester.makepyfile(**{args[0].removesuffix(".py"): suite})
    if "bnb-nf4" in command:
        pytest.importorskip("bitsandbytes")
    result = pytester.runpytest(*args)
    out = result.stdout.str()
    assert result.ret == 0, out
    assert "error" not in out.splitlines()[-1]
    report = json.loads((pytester.path / "out" / "gate.json").read_text())
    assert report["complete"] is True
    # The prompts are ones the shipped model answers: the reference passes every case.
    assert len(report["cases"]) == 4
    assert {c["outcomes"][c["reference"]]["outcome"] for c in report["cases"]} == {"pass"}
    assert [c["label"] for c in report["candidates"]] == ["rtn2g128", "nf4"]


def test_multistep_snippet_runs_on_the_tiny_model(
    pytester: pytest.Pytester, tiny_ref: Path, example_data: Path
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("datasets")
    pytest.importorskip("bitsandbytes")
    ((suite, command),) = [(t, c) for t, c in _python_blocks() if _kind(t) == "multistep"]
    args = _args(command)
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "tiny-ref").symlink_to(tiny_ref, target_is_directory=True)
    (pytester.path / "example_suites" / "tiny").mkdir(parents=True)
    (pytester.path / "example_suites" / "tiny" / "data").symlink_to(example_data, target_is_directory=True)
    pytester.makepyfile(**{args[0].removesuffix(".py"): suite})
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*args, f"--quant-report={report}")
    out = result.stdout.str()
    assert result.ret == 0, out
    data = json.loads(report.read_text())
    tallies = [c for c in data["cases"] if c.get("trajectory")]
    assert len(tallies) == 3
    # The shipped model carries the running totals: every step passes on the reference.
    assert {c["outcomes"]["tiny-ref"]["outcome"] for c in tallies} == {"pass"}
    assert [c["outcomes"]["tiny-ref"]["final_state"]["total"] for c in tallies] == [14, 35, 30]
    assert [len(c["outcomes"]["tiny-ref"]["transcript"]) for c in tallies] == [3, 4, 5]
    rows = [c for c in data["cases"] if not c.get("trajectory")]
    assert len(rows) == 60 and {tuple(c["slices"]) for c in rows} == {("arith",)}


def test_bring_your_own_backend_snippet(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # The snippet registers a scheme in this process: keep it out of the other tests.
    monkeypatch.setattr(specs, "SCHEMES", dict(specs.SCHEMES))
    ((conftest, command),) = [(t, c) for t, c in _python_blocks() if _kind(t) == "conftest"]
    pytester.makeconftest(conftest)
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["17+25=", "3*4="], max_new_tokens=4)
        def test_sums(prompt, output):
            assert output == "42"
        """
    )
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*_args(command), f"--quant-report={report}")
    assert result.ret == 0, result.stdout.str()
    data = json.loads(report.read_text())
    assert set(data["models"]) == {"a", "b"}
    outputs = {c["nodeid"].split("[")[1]: c["outcomes"]["b"]["output"] for c in data["cases"]}
    assert outputs == {"17+25=]": "42", "3*4=]": ""}
    # The first case passes on both, the second fails on both: no case regressed.
    assert data["candidates"][0]["slices"][-1]["regressions"] == 0
