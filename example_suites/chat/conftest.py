"""Stop at once, saying what to run, when the real model has not been fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"


def pytest_configure(config: pytest.Config) -> None:
    # tools/fetch_real_model.py writes FETCHED.json last, inside a directory it renames into place.
    if not (MODEL / "FETCHED.json").is_file():
        pytest.exit(
            f"the chat suite's model is missing ({MODEL}): run `python tools/fetch_real_model.py` first",
            returncode=4,
        )
