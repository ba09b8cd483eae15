"""pytest-quantgate: quantization regressions of LLMs as test failures.

Public names only. ``quant_case`` and ``quant_slice`` are pytest markers
(``pytest.mark.quant_case`` and ``pytest.mark.slice``); they are resolved
lazily so that importing the core (statistics, runner) does not need pytest.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "quant_case", "quant_slice"]


def __getattr__(name: str) -> Any:
    if name == "quant_case":
        import pytest

        return pytest.mark.quant_case
    if name == "quant_slice":
        import pytest

        return pytest.mark.slice
    raise AttributeError(f"module 'pytest_quantgate' has no attribute {name!r}")
