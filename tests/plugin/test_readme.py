"""The README's snippets run as shown: every ```python block, saved where its first line says,
with the command after it; and each passes the project's own ``ruff check``."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_quantgate.values import specs

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def _groups() -> list[tuple[dict[str, str], str]]:
    """Each run of ```python blocks with the ```bash block after it: ``({path: text}, command)``.

    A python block's first line names where it is saved (``# byob/conftest.py``).
    """
    found = re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.S)
    groups: list[tuple[dict[str, str], str]] = []
    pending: dict[str, str] = {}
    for lang, text in found:
        if lang == "python":
            first = text.splitlines()[0]
            assert first.startswith("# ") and first.endswith(".py"), f"a snippet says where it goes: {first}"
            pending[first[2:].strip()] = text
        elif lang == "bash" and pending:
            groups.append((pending, text))
            pending = {}
    assert not pending, f"python snippets with no command after them: {sorted(pending)}"
    return groups


def _group(path: str) -> tuple[dict[str, str], list[str]]:
    """The files of the group that has ``path``, and the pytest arguments of its command."""
    ((files, command),) = [(f, c) for f, c in _groups() if path in f]
    line = command.replace("\\\n", " ").strip().splitlines()[0]
    words = shlex.split(line)
    assert words[0] == "pytest", line
    return files, words[1:]


def _save(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def test_every_python_snippet_is_run_here() -> None:
    """A new ```python block needs a runner below: none may go unchecked."""
    saved = sorted(path for files, _ in _groups() for path in files)
    assert saved == ["byob/conftest.py", "byob/test_canned.py", "test_multistep.py", "test_suite.py"]


#: Skips a test that runs ruff where ruff is not installed (the oldest-pytest job has none).
needs_ruff = pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed",
)


def ruff_check(path: str, text: str) -> subprocess.CompletedProcess[str]:
    """ruff's check of a README snippet as the file ``path`` it would be in this repository,
    with the repository's configuration."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    return subprocess.run(
        [ruff, "check", "--no-cache", f"--stdin-filename={REPO / path}", "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


@needs_ruff
@pytest.mark.parametrize(
    "path", ["byob/conftest.py", "byob/test_canned.py", "test_multistep.py", "test_suite.py"]
)
def test_every_python_snippet_passes_ruff_where_it_is_saved(path: str) -> None:
    (text,) = [files[path] for files, _ in _groups() if path in files]
    result = ruff_check(path, text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_suite_snippet_runs_on_the_tiny_model(pytester: pytest.Pytester, tiny_ref: Path) -> None:
    pytest.importorskip("transformers")
    files, args = _group("test_suite.py")
    # The command as written, from the repository's root: models/ is where it says.
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "tiny-ref").symlink_to(tiny_ref, target_is_directory=True)
    _save(pytester, files)
    if any("bnb-nf4" in a for a in args):
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
    files, args = _group("test_multistep.py")
    (pytester.path / "models").mkdir()
    (pytester.path / "models" / "tiny-ref").symlink_to(tiny_ref, target_is_directory=True)
    (pytester.path / "example_suites" / "tiny").mkdir(parents=True)
    (pytester.path / "example_suites" / "tiny" / "data").symlink_to(example_data, target_is_directory=True)
    _save(pytester, files)
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
    files, args = _group("byob/conftest.py")
    _save(pytester, files)
    report = pytester.path / "gate.json"
    result = pytester.runpytest(*args, f"--quant-report={report}")
    assert result.ret == 0, result.stdout.str()
    data = json.loads(report.read_text())
    assert set(data["models"]) == {"a", "b"}
    outputs = {c["nodeid"].split("[")[1]: c["outcomes"]["b"]["output"] for c in data["cases"]}
    assert outputs == {"17+25=]": "42", "3*4=]": ""}
    # The first case passes on both, the second fails on both: no case regressed.
    assert data["candidates"][0]["slices"][-1]["regressions"] == 0
