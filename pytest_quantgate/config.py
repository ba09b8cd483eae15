"""``GateConfig``: every option and ini value, validated once, frozen.

Command-line flags win over ini keys. Validation happens here, before any
model loads, and raises :class:`ConfigError` with a one-line message; the
plugin turns that into a pytest usage error (exit status 4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .specs import ModelSpec, SpecError, parse_spec

__all__ = [
    "DTYPES",
    "ConfigError",
    "GateConfig",
    "parse_alpha",
    "parse_batch_size",
    "parse_device",
    "parse_dtype",
    "parse_slice_tolerances",
    "parse_tolerance",
]

DTYPES = ("auto", "float32", "float16", "bfloat16")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class ConfigError(ValueError):
    """An option value that cannot be used; the message is one line."""


def _number(name: str, value: str | float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def parse_tolerance(value: str | float, name: str = "--quant-tolerance") -> float:
    """A tolerance margin: a fraction of accuracy in [0, 1] (``0.02`` = 2 points)."""
    tol = _number(name, value)
    if not 0.0 <= tol <= 1.0:
        hint = " (a fraction: 0.02 means 2 points)" if 1.0 < tol <= 100.0 else ""
        raise ConfigError(f"{name} must be in [0, 1], got {value}{hint}")
    return tol


def parse_alpha(value: str | float) -> float:
    """A significance level in (0, 0.5]."""
    alpha = _number("--quant-alpha", value)
    if not 0.0 < alpha <= 0.5:
        raise ConfigError(f"--quant-alpha must be in (0, 0.5], got {value}")
    return alpha


def parse_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    device = str(value).strip().lower()
    if not _DEVICE.match(device):
        raise ConfigError(f"--quant-device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return device


def parse_dtype(value: str) -> str:
    """One of :data:`DTYPES`."""
    dtype = str(value).strip().lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"--quant-dtype must be one of {', '.join(DTYPES)}, got {value!r}")
    return dtype


def parse_batch_size(value: str | int) -> int:
    """A positive number of prompts per generation batch."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--quant-batch-size must be an integer, got {value!r}") from None
    if size < 1:
        raise ConfigError(f"--quant-batch-size must be at least 1, got {value}")
    return size


def parse_slice_tolerances(lines: Sequence[str]) -> dict[str, float]:
    """Ini lines ``SLICE = TOLERANCE`` (or ``SLICE:TOLERANCE``) -> mapping."""
    out: dict[str, float] = {}
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = re.match(r"^([^=:\s]+)\s*[=:]\s*(\S+)$", text)
        if not m:
            raise ConfigError(f"quant_slice_tolerance: expected 'SLICE = TOLERANCE', got {text!r}")
        out[m.group(1)] = parse_tolerance(m.group(2), name=f"tolerance of slice {m.group(1)!r}")
    return out


@dataclass(frozen=True)
class GateConfig:
    """The validated configuration of one session."""

    reference: ModelSpec | None = None
    candidates: tuple[ModelSpec, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    tolerance: float = 0.02
    alpha: float = 0.05
    strict: bool = False
    report_path: Path | None = None
    batch_size: int = 16
    slice_tolerances: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """Whether a reference model was given (otherwise quant cases skip)."""
        return self.reference is not None

    def tolerance_for(self, slice_name: str, marker_tolerance: float | None = None) -> float:
        """Margin of a slice: its marker, else the ini table, else the default."""
        if marker_tolerance is not None:
            return marker_tolerance
        return self.slice_tolerances.get(slice_name, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.to_dict() if self.reference else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "device": self.device,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "alpha": self.alpha,
            "strict": self.strict,
            "report_path": str(self.report_path) if self.report_path else None,
            "batch_size": self.batch_size,
            "slice_tolerances": dict(self.slice_tolerances),
        }

    @classmethod
    def from_sources(
        cls,
        option: Callable[[str], Any],
        ini: Callable[[str], Any],
        *,
        cli_dir: Path,
        ini_dir: Path,
    ) -> GateConfig:
        """Build from ``option(name)`` (CLI, None when unset) and ``ini(name)``.

        Relative paths given on the command line are relative to ``cli_dir``
        (where pytest was invoked); those in the ini file to ``ini_dir``.
        """

        def pick(name: str) -> tuple[Any, Path]:
            value = option(name)
            if value not in (None, [], ""):
                return value, cli_dir
            return ini(name), ini_dir

        try:
            ref_text, ref_dir = pick("quant_reference")
            reference = parse_spec(ref_text, base_dir=ref_dir) if ref_text else None
            cand_texts, cand_dir = pick("quant_candidate")
            if isinstance(cand_texts, str):
                cand_texts = cand_texts.split()
            candidates = tuple(parse_spec(t, base_dir=cand_dir) for t in cand_texts or ())
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
        if candidates and reference is None:
            raise ConfigError("--quant-candidate given without --quant-reference")
        labels = [c.label for c in candidates]
        if reference is not None:
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            if dupes:
                raise ConfigError(f"two candidates are labelled {dupes[0]!r}: name them with LABEL=SPEC")
            if reference.label in labels:
                # Keep the labels distinct so reports are never ambiguous.
                raise ConfigError(
                    f"candidate label {reference.label!r} is the reference's: name it with LABEL=SPEC"
                )
        report, report_dir = pick("quant_report")
        strict_opt = option("quant_strict")
        strict = bool(strict_opt) if strict_opt else _ini_bool(ini("quant_strict"))
        return cls(
            reference=reference,
            candidates=candidates,
            device=parse_device(pick("quant_device")[0] or "auto"),
            dtype=parse_dtype(pick("quant_dtype")[0] or "auto"),
            tolerance=parse_tolerance(pick("quant_tolerance")[0] or 0.02),
            alpha=parse_alpha(pick("quant_alpha")[0] or 0.05),
            strict=strict,
            report_path=(report_dir / Path(report)).resolve() if report else None,
            batch_size=parse_batch_size(pick("quant_batch_size")[0] or 16),
            slice_tolerances=parse_slice_tolerances(ini("quant_slice_tolerance") or []),
        )


def _ini_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"quant_strict must be true or false, got {value!r}")
