"""The README's snippets run as shown."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pytest_quantgate import specs

README = Path(__file__).resolve().parents[2] / "README.md"


def _block_after(marker: str, lang: str) -> str:
    """The first ```lang block whose text starts with ``marker``."""
    for block in re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S):
        if block.startswith(marker):
            return str(block)
    raise AssertionError(f"no ```{lang} block starting with {marker!r} in the README")


def test_bring_your_own_backend_snippet(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # The snippet registers a scheme in this process: keep it out of the other tests.
    monkeypatch.setattr(specs, "SCHEMES", dict(specs.SCHEMES))
    conftest = _block_after("# conftest.py", "python")
    command = next(
        line for line in _block_after("pytest --quant-reference=canned:", "bash").splitlines() if line
    )
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
    result = pytester.runpytest(*shlex.split(command)[1:], f"--quant-report={report}")
    assert result.ret == 0, result.stdout.str()
    data = json.loads(report.read_text())
    assert set(data["models"]) == {"canned-localhost-a", "canned-localhost-b"}
    outputs = {
        c["nodeid"].split("[")[1]: c["outcomes"]["canned-localhost-b"]["output"] for c in data["cases"]
    }
    assert outputs == {"17+25=]": "42", "3*4=]": ""}
    # The first case passes on both, the second fails on both: no case regressed.
    assert data["candidates"][0]["slices"][-1]["regressions"] == 0
