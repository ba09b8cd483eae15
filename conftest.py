"""Repository-wide test setup: offline Hugging Face, paths of the shipped models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in this repository may reach a model hub: the tiny models are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent
TINY_REF = REPO / "models" / "tiny-ref"
EXAMPLE_DATA = REPO / "example_suites" / "tiny" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (a real transformers serve, gptq: quantizing on the fly); "
        ".ci/run runs them in a step of their own",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``slow`` tests unless ``--run-slow``: the README's test command stays near 2 minutes."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (.ci/run does, in a step of its own)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_ref() -> Path:
    """The shipped tiny reference checkpoint (built by tools/build_tiny_model.py)."""
    assert (TINY_REF / "config.json").is_file(), "run tools/build_tiny_model.py first"
    return TINY_REF


@pytest.fixture(scope="session")
def example_data() -> Path:
    return EXAMPLE_DATA
