"""pytest-quantgate: quantization regressions of LLMs as test failures.

Public names only. ``quant_case`` and ``quant_slice`` are pytest markers
(``pytest.mark.quant_case`` and ``pytest.mark.slice``); they and the other
public names are resolved lazily, so that importing the core (statistics,
runner) needs neither pytest nor a data library.

- :class:`Trajectory`: a multi-step case whose final state the test checks.
- :func:`load_cases`: cases from a local JSONL, JSON, CSV or Parquet file.
- :mod:`pytest_quantgate.checks`: plain checks for test bodies.
"""

from __future__ import annotations

from typing import Any

from .values.version import __version__

__all__ = ["Trajectory", "__version__", "load_cases", "quant_case", "quant_slice"]


def __getattr__(name: str) -> Any:
    if name == "quant_case":
        import pytest

        return pytest.mark.quant_case
    if name == "quant_slice":
        import pytest

        return pytest.mark.slice
    if name == "Trajectory":
        from .core.trajectory import Trajectory

        return Trajectory
    if name == "load_cases":
        from .integration.loaders import load_cases

        return load_cases
    raise AttributeError(f"module 'pytest_quantgate' has no attribute {name!r}")
