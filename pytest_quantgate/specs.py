"""Model spec strings -> :class:`ModelSpec`.

Grammar (one pure function, room for more schemes)::

    [LABEL=][SCHEME:]PATH

``PATH`` is a local checkpoint directory (a plain checkpoint, or one that is
already quantized and carries its ``quantization_config``). ``SCHEME`` asks
for quantization at load time:

=================  ==========================================================
``bnb-nf4``        bitsandbytes 4-bit NormalFloat
``bnb-int8``       bitsandbytes LLM.int8()
``torchao-int8``   torchao int8 weight-only
``torchao-int4``   torchao int4 weight-only, groups of 32
``rtn<B>[g<G>]``   round-to-nearest fake quantization to B bits in groups of
                   G input columns (default 32): a cheap, library-free way to
                   see how a suite reacts to a damaged model
=================  ==========================================================

``LABEL`` names the model in reports; by default it is derived from the
scheme and the directory name (``nf4-tiny-ref``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SCHEMES", "ModelSpec", "SpecError", "parse_spec"]


class SpecError(ValueError):
    """A model spec string that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Scheme:
    """A load-time quantization scheme."""

    name: str
    description: str
    extra: str  # the pip extra that provides it, for error messages


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("bnb-nf4", "bitsandbytes 4-bit NF4", "bnb"),
        Scheme("bnb-int8", "bitsandbytes LLM.int8()", "bnb"),
        Scheme("torchao-int8", "torchao int8 weight-only", "torchao"),
        Scheme("torchao-int4", "torchao int4 weight-only (groups of 32)", "torchao"),
    )
}

_RTN = re.compile(r"^rtn(?P<bits>[1-8])(?:g(?P<group>\d+))?$")
_LABELLED = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9._+-]*)=(?P<rest>.*)$")
# A scheme prefix is lower-case letters, digits and dashes; anything else
# before a colon (a Windows drive letter, a path with a colon) is a path.
_SCHEME_PREFIX = re.compile(r"^(?P<scheme>[a-z][a-z0-9-]+):(?P<rest>.+)$")


@dataclass(frozen=True)
class ModelSpec:
    """One model to load: where from and how to quantize it at load time."""

    label: str
    path: str  # absolute, resolved
    scheme: str | None = None  # None = load the checkpoint as it is
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the spec as the user wrote it

    @property
    def display(self) -> str:
        """Short form for headings: ``label (scheme:dir)``."""
        where = Path(self.path).name
        return f"{self.label} ({self.scheme}:{where})" if self.scheme else f"{self.label} ({where})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)


def parse_spec(text: str, *, base_dir: Path | str | None = None, check_path: bool = True) -> ModelSpec:
    """Parse ``[LABEL=][SCHEME:]PATH`` into a :class:`ModelSpec`.

    Args:
        text: the spec string.
        base_dir: directory that a relative ``PATH`` is relative to.
        check_path: require ``PATH`` to be an existing directory.

    Raises:
        SpecError: with a one-line message naming the problem.
    """
    raw = text.strip()
    if not raw:
        raise SpecError("empty model spec")
    label: str | None = None
    rest = raw
    # ``LABEL=`` only when what precedes '=' looks like a label, so that a
    # path such as ``runs/lr=3e-4`` stays a path.
    labelled = _LABELLED.match(raw)
    if labelled:
        label, rest = labelled.group("label"), labelled.group("rest")
    scheme: str | None = None
    options: dict[str, Any] = {}
    m = _SCHEME_PREFIX.match(rest)
    if m and not Path(rest).exists():
        scheme, rest = m.group("scheme"), m.group("rest")
        rtn = _RTN.match(scheme)
        if rtn:
            options = {"bits": int(rtn.group("bits")), "group_size": int(rtn.group("group") or 32)}
            if options["group_size"] < 1:
                raise SpecError(f"bad group size in model spec {raw!r}")
        elif scheme not in SCHEMES:
            known = ", ".join([*SCHEMES, "rtn<bits>[g<group>]"])
            raise SpecError(f"unknown quantization scheme {scheme!r} in model spec {raw!r} (known: {known})")
    if not rest.strip():
        raise SpecError(f"empty model spec: no path in {raw!r}")
    path = Path(rest.strip()).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    path = path.resolve()
    if check_path:
        if not path.exists():
            raise SpecError(f"model directory not found: {path} (from spec {raw!r})")
        if not path.is_dir():
            raise SpecError(f"model path is not a directory: {path} (from spec {raw!r})")
        if not (path / "config.json").is_file():
            raise SpecError(f"no config.json in model directory {path} (from spec {raw!r})")
    if label is None:
        label = f"{scheme}-{path.name}" if scheme else path.name
    return ModelSpec(label=label, path=str(path), scheme=scheme, options=options, text=raw)
