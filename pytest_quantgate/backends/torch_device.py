"""The torch device and dtype a model runs on: checked up front, resolved at load.

torch is imported only inside the functions, and only to ask about a GPU.
"""

from __future__ import annotations

from typing import Any

from .base import BackendError

__all__ = ["auto_device", "device_problem", "resolve_device", "resolve_dtype"]


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` on this machine, or None.

    ``auto`` and ``cpu`` always work. torch is imported only to check
    ``cuda``/``mps``; without torch there is nothing to check here (a
    backend that needs torch says so when it loads).
    """
    if device in ("auto", "cpu"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"device {device} was asked for, but torch sees no CUDA device"
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        count = torch.cuda.device_count()
        if index >= count:
            return f"device {device} was asked for, but torch sees {count} CUDA device(s)"
    if device == "mps" and not torch.backends.mps.is_available():
        return "device mps was asked for, but MPS is not available"
    return None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks the rest."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    problem = device_problem(device)  # the same rule the configuration checks up front
    if problem:
        raise BackendError(problem)
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # Half precision on the CPU is slow and, for tiny models, numerically
        # worse than the checkpoint; on a GPU keep the checkpoint's dtype.
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, dtype)


def auto_device() -> str:
    """What ``--quant-device=auto`` resolves to here (torch imported only to ask)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
