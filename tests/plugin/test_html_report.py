"""The HTML report, opened in a real browser: headless Chromium renders it; the plot is drawn and
the slices and verdicts are in the page. Skipped, with the reason, where Chromium is not installed
(CI installs Debian's package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .fakes import Slice, answers, cases, gate_args, model, suite_source

ARITH, RECALL = cases("arith", 60), cases("recall", 40)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def _report(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    ref = model(pytester, "ref", {**answers(ARITH), **answers(RECALL)})
    bad = model(pytester, "bad", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    good = model(pytester, "good", {**answers(ARITH), **answers(RECALL)})
    out = pytester.path / "report.html"
    result = pytester.runpytest(*gate_args(ref, bad, good), f"--quant-html={out}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    return out


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_page_is_one_file_that_fetches_nothing(pytester: pytest.Pytester) -> None:
    text = _report(pytester).read_text()
    assert "<svg" in text and "<style>" in text
    for outside in ("http://", "https://", "<script", "<link", "@import", "src="):
        assert outside not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), outside


@needs_chromium
def test_chromium_renders_the_plot_and_the_verdicts(pytester: pytest.Pytester) -> None:
    image = pytest.importorskip("PIL.Image")
    page = _report(pytester)
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    assert dom.count('class="forest"') == 2  # a plot per evaluated candidate
    for text in ("bad (fake:bad.json)", "REGRESSED", "arith", "recall", "ALL", "Regressed cases (20)"):
        assert text in dom, text
    shot = pytester.path / "shot.png"
    _chromium("--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    rgb = image.open(shot).convert("RGB")
    pixels = [rgb.getpixel((x, y)) for x in range(0, rgb.width, 2) for y in range(0, rgb.height, 2)]

    def near(colour: tuple[int, int, int]) -> int:
        return sum(all(abs(a - b) <= 12 for a, b in zip(p, colour, strict=True)) for p in pixels)

    # The plots are drawn: the tolerance band, and the regressed row's line and dot in red.
    assert near((0xE8, 0xF5, 0xE9)) > 1_000
    assert near((0xC6, 0x28, 0x28)) > 60
