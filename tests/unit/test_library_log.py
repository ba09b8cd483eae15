"""What torch, torchao and bitsandbytes log while a model loads: held, sorted, never lost, and
shown in the one line of library warnings.

The records are made here under the libraries' own logger names, with the
messages those libraries log when they are imported (see ``library_log``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.hf_loading import LIBRARY_LOGGERS, library_log
from pytest_quantgate.core.cases import CaseSpec
from pytest_quantgate.core.config import GateConfig
from pytest_quantgate.core.executor import Executor
from pytest_quantgate.storage.store import CacheMode
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import parse_spec

from .test_runner_cases import ScriptedBackend

SO = "Failed to load /venv/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load"
TRITON = "Warning: Detected no triton, on systems without Triton certain kernels will not work"
KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
ENUM = (
    "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an "
    "opaque value type. Calling register_constant() on Enum subclasses is deprecated"
)


class _Shown(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def shown() -> Iterator[_Shown]:
    """What reaches the libraries' own handlers (the terminal, without the plugin)."""
    handler = _Shown()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def _log_import_noise() -> None:
    logging.getLogger("torchao").warning(SO)
    logging.getLogger("torchao.kernel.intmm").warning(TRITON)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(KERNELS)
    logging.getLogger("torch.utils._pytree").warning(ENUM)


def test_known_harmless_warnings_are_dropped_on_the_cpu(shown: _Shown) -> None:
    with library_log("cpu") as lines:
        _log_import_noise()
    assert lines == [] and shown.messages == []


def test_on_a_gpu_the_cuda_kernel_warnings_are_summarised_not_dropped(shown: _Shown) -> None:
    with library_log("cuda:0") as lines:
        _log_import_noise()
    assert lines == [f"torchao: {SO}", f"torchao.kernel.intmm: {TRITON}"]
    assert shown.messages == []


def test_other_warnings_become_one_line_each_and_errors_go_on(shown: _Shown) -> None:
    with library_log("cpu") as lines:
        logging.getLogger("bitsandbytes.nn").warning("a new deprecation\nwith details")
        logging.getLogger("torchao.quantization").error("kernel table corrupt")
    assert lines == ["bitsandbytes.nn: a new deprecation"]
    assert shown.messages == ["torchao.quantization: kernel table corrupt"]


def test_a_load_that_fails_hides_nothing_but_the_known_harmless(shown: _Shown) -> None:
    with pytest.raises(RuntimeError, match="no such checkpoint"), library_log("cpu") as lines:
        _log_import_noise()
        logging.getLogger("torchao").warning("could not register the int4 kernels")
        raise RuntimeError("no such checkpoint")
    assert lines == []
    assert shown.messages == ["torchao: could not register the int4 kernels"]


def test_the_loggers_are_left_as_they_were(shown: _Shown) -> None:
    before = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in LIBRARY_LOGGERS
    }
    with library_log("cpu"):
        pass
    after = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in LIBRARY_LOGGERS
    }
    assert after == before
    logging.getLogger("torchao").warning("after the load")
    assert shown.messages == ["torchao: after the load"]


def test_what_a_load_logged_joins_the_one_line_of_library_warnings(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    config = GateConfig(
        reference=parse_spec(f"ref={tmp_path}"),
        candidates=(parse_spec(f"q=rtn2:{tmp_path}"),),
        cache_mode=CacheMode.OFF,
    )

    def loader(spec: Any, device: str, dtype: str) -> ScriptedBackend:
        backend = ScriptedBackend({"1+1=": "2"}, label=spec.label)
        if spec.label == "q":
            backend.library_messages = ("torchao: a new deprecation", "bitsandbytes: another")
        return backend

    lines: list[str] = []
    executor = Executor(config, emit=lines.append, loader=loader)
    executor.plan(CaseSpec(key="k", nodeid="t.py::test[k]", prompt="1+1=", settings=GenerationSettings()))
    assert executor.run_of("q", "k") is not None
    assert [line for line in lines if "library warning" in line] == [
        "quantgate: q: library warning bitsandbytes: another (+1 more)"
    ]
