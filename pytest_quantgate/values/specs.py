"""Model spec strings -> :class:`ModelSpec`.

Grammar (one pure function; whether a prefix is a scheme is decided by the
grammar alone, never by looking at the filesystem)::

    [LABEL=][SCHEME:]TARGET[?KEY=VALUE&...]

``SCHEME`` is two or more characters of ``[a-z0-9-]`` starting with a letter,
followed by ``:``. Anything else is part of ``TARGET``: a path that contains
a colon is written ``./a:b`` or as an absolute path, and a one-letter drive
(``C:\\models``) is never a scheme. Without a scheme, ``TARGET`` is a local
checkpoint directory loaded as it is (a plain checkpoint, or one that is
already quantized and carries its ``quantization_config``). ``?KEY=VALUE``
options are accepted only by schemes that declare them; for any other, a
``?`` is part of the target.

What looks like a slip is named only when the target it leaves does not
exist (issue 17): a prefix with upper-case letters or underscores that is
close to a known scheme (``BNB-NF4:``, ``bnb_nf4:``), and a ``?KEY=VALUE``
tail where the scheme takes no options (``rtn2g128:dir?bits=4``). The
grammar stays as above; only the error names the slip instead of a path
that is not there.

Schemes (:data:`SCHEMES`; plugins add theirs with :func:`register_scheme`):

=================  ==========================================================
``bnb-nf4``        bitsandbytes 4-bit NormalFloat
``bnb-int8``       bitsandbytes LLM.int8()
``torchao-int8``   torchao int8 weight-only
``torchao-int4``   torchao int4 weight-only, groups of 32
``gptq``           GPTQ with gptqmodel, quantized on the fly from the texts of
                   ``--quant-calibration`` and stored under the cache
                   directory (``?bits=4&group_size=128&sym=true&desc_act=false``)
``awq``            AWQ with gptqmodel, the same way (``?bits=4&group_size=128``)
``rtn<B>[g<G>]``   round-to-nearest fake quantization to B bits in groups of
                   G input columns (default 32): a cheap, library-free way to
                   see how a suite reacts to a damaged model
``gguf``           a GGUF file (llama.cpp's format), dequantized by transformers;
                   a path ending in ``.gguf`` needs no scheme
``openai``         a model served behind an OpenAI-compatible endpoint
                   (``openai:http://host:8000/v1?model=NAME``; options in
                   :mod:`..backends.served`)
``fake``           a scripted model read from a JSON file (testing suites and
                   the plugin itself without a model)
=================  ==========================================================

``LABEL`` names the model in reports; by default it is the scheme as written
(``rtn2g128:../tiny-ref`` is ``rtn2g128``) or, without a scheme, the target's
name (the checkpoint directory ``tiny-ref``; a GGUF file without its
``.gguf``). Two models with the same label are a usage error: name one with
``LABEL=``.

A target written without a scheme whose text ends in ``.gguf`` is a GGUF
file (the ``gguf`` scheme), decided from the text like everything else: a
checkpoint directory that happens to be named so is written ``x.gguf/``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "HF_LOADER",
    "SCHEMES",
    "Loader",
    "ModelSpec",
    "Scheme",
    "SpecError",
    "auto_label",
    "find_scheme",
    "is_gguf_target",
    "parse_spec",
    "register_scheme",
]


#: A backend's factory: ``loader(spec, device, dtype)`` returns a loaded backend.
Loader = Callable[["ModelSpec", str, str], Any]
#: The loader of local transformers checkpoints (a plain spec's, and most schemes').
HF_LOADER = "pytest_quantgate.backends.hf:HFBackend.load"


class SpecError(ValueError):
    """A model spec string that cannot be used; the message is one line."""


Target = Literal["checkpoint", "file", "url"]


@dataclass(frozen=True)
class Scheme:
    """A way to obtain a model: which backend loads it, what its target is.

    Attributes:
        name: the scheme as written before ``:`` (or a family name, with
            ``pattern``).
        description: one line for ``--help`` and error messages.
        loader: what loads a spec of this scheme: ``factory(spec, device,
            dtype)`` returning a :class:`~..backends.base.Backend`, or the
            ``"module:attr"`` path of one, imported when a model first loads
            (:mod:`..backends.registry`). Default: the transformers backend.
        extra: the pip extra that provides what it needs, for error messages.
        target: what ``TARGET`` is: a checkpoint directory, a file, a URL.
        pattern: for a family of schemes (``rtn2g64``), a regex whose named
            groups become integer options.
        defaults: values of the pattern's optional groups when absent.
        usage: how a family is written, for the list of known schemes.
        options: the ``?KEY=VALUE`` options the scheme accepts.
        quantizer: the method gptqmodel quantizes the checkpoint with before
            it loads (``gptq``, ``awq``), from the calibration texts; None
            for a scheme that needs no quantizing step.
        load_config: ``"module:function"`` that builds the transformers
            ``quantization_config`` applied at load time, from the torch
            dtype (bitsandbytes, torchao); imported when a model loads.
        transform: ``"module:function"`` applied to the loaded model with
            the scheme's options as keywords (rtn's fake quantization).
        device: whether the model runs on a torch device of this machine
            (checked before any model loads; resolved for the cache key).
        gguf: the target is a GGUF file, which transformers reads
            (``from_pretrained(directory, gguf_file=name)``) and dequantizes.
        check_options: ``check(target, options, raw)`` raising
            :class:`SpecError` for option values the scheme cannot use,
            called by :func:`parse_spec` before anything loads.
    """

    name: str
    description: str
    loader: str | Loader = HF_LOADER
    extra: str | None = None
    target: Target = "checkpoint"
    pattern: str | None = None
    usage: str | None = None
    options: tuple[str, ...] = ()
    defaults: Mapping[str, int] = field(default_factory=dict)
    quantizer: str | None = None
    load_config: str | None = None
    transform: str | None = None
    device: bool = True
    gguf: bool = False
    check_options: Callable[[str, dict[str, Any], str], None] | None = None

    @property
    def needs_calibration(self) -> bool:
        """Whether a spec of this scheme needs ``--quant-calibration`` (it is quantized on the fly)."""
        return self.quantizer is not None

    def match(self, text: str) -> dict[str, Any] | None:
        """Options of the scheme named ``text``, or None when it is not this scheme."""
        if self.pattern is None:
            return {} if text == self.name else None
        m = re.fullmatch(self.pattern, text)
        if m is None:
            return None
        return {k: int(v) if v is not None else self.defaults[k] for k, v in m.groupdict().items()}


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> None:
    """Make ``scheme`` known to :func:`parse_spec` (a plugin's or conftest's own)."""
    SCHEMES[scheme.name] = scheme


_LOADING = "pytest_quantgate.backends.hf_loading"

#: The ``?options`` of an ``openai:`` spec (:mod:`..backends.served` says what each does).
SERVED_OPTIONS = (
    "model",
    "concurrency",
    "timeout",
    "retries",
    "backoff",
    "api_key_env",
    "revision",
    "endpoint",
    "seed",
    "api_key",  # declared only to be refused without being echoed (_check_served_options)
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_served_options(target: str, options: dict[str, Any], raw: str) -> None:
    """The values an ``openai:`` spec needs, checked before anything is loaded.

    A key is never accepted in a spec (a spec is written into reports and the
    cache): neither as ``?api_key=`` nor in the URL; those messages do not
    repeat the spec.
    """
    if "api_key" in options:
        raise SpecError(
            "an openai: spec takes no ?api_key= (a spec is written into reports): put the key in an "
            "environment variable and name it with ?api_key_env=NAME"
        )
    parts = urlsplit(target)
    if parts.username is not None or parts.password is not None:
        raise SpecError(
            "an openai: spec's URL must not hold credentials (a spec is written into reports): put the "
            "key in an environment variable and name it with ?api_key_env=NAME"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"an openai: spec needs an http:// or https:// base URL, got {target!r} in {raw!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        raise SpecError(f"bad port in the URL of model spec {raw!r}") from None
    if options.get("model") in (None, ""):
        raise SpecError(f"an openai: spec needs ?model=NAME (the model as the server names it) in {raw!r}")
    options["model"] = str(options["model"])
    for key, least in (("concurrency", 1), ("retries", 0)):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise SpecError(f"{key}={value!r}: an integer of at least {least} ({raw!r})")
    for key in ("timeout", "backoff"):
        value = options.get(key)
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6
        if value is not None and bad:
            raise SpecError(f"{key}={value!r}: a positive number of seconds ({raw!r})")
    if options.get("endpoint", "auto") not in ("auto", "chat", "completions"):
        raise SpecError(f"endpoint={options['endpoint']!r}: auto, chat or completions ({raw!r})")
    env = options.get("api_key_env")
    if env is not None and not (isinstance(env, str) and _ENV_NAME.match(env)):
        raise SpecError(f"api_key_env={env!r}: the name of an environment variable ({raw!r})")
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SpecError(f"seed={seed!r}: an integer ({raw!r})")
    if "revision" in options:
        options["revision"] = str(options["revision"])
        if not options["revision"]:
            raise SpecError(f"revision=: empty ({raw!r})")


for _scheme in (
    Scheme("bnb-nf4", "bitsandbytes 4-bit NF4", extra="bnb", load_config=f"{_LOADING}:bnb_nf4"),
    Scheme("bnb-int8", "bitsandbytes LLM.int8()", extra="bnb", load_config=f"{_LOADING}:bnb_int8"),
    Scheme(
        "torchao-int8", "torchao int8 weight-only", extra="torchao", load_config=f"{_LOADING}:torchao_int8"
    ),
    Scheme(
        "torchao-int4",
        "torchao int4 weight-only (groups of 32)",
        extra="torchao",
        load_config=f"{_LOADING}:torchao_int4",
    ),
    Scheme(
        "rtn",
        "round-to-nearest fake quantization",
        extra="hf",
        pattern=r"rtn(?P<bits>[1-8])(?:g(?P<group_size>[1-9]\d*))?",
        usage="rtn<bits 1-8>[g<group>]",
        defaults={"group_size": 32},
        transform="pytest_quantgate.backends.rtn:rtn_quantize_",
    ),
    Scheme(
        "gptq",
        "GPTQ with gptqmodel, quantized on the fly from --quant-calibration",
        extra="gptq",
        options=("bits", "group_size", "sym", "desc_act"),
        quantizer="gptq",
    ),
    Scheme(
        "awq",
        "AWQ with gptqmodel, quantized on the fly from --quant-calibration",
        extra="awq",
        options=("bits", "group_size", "sym"),
        quantizer="awq",
    ),
    Scheme(
        "gguf",
        "a GGUF file (llama.cpp's format), dequantized by transformers",
        extra="hf",
        target="file",
        gguf=True,
    ),
    Scheme(
        "openai",
        "a model served behind an OpenAI-compatible endpoint (?model=NAME)",
        loader="pytest_quantgate.backends.served:ServedBackend.load",
        extra="serve",
        target="url",
        options=SERVED_OPTIONS,
        device=False,
        check_options=_check_served_options,
    ),
    Scheme(
        "fake",
        "a scripted model from a JSON file",
        loader="pytest_quantgate.backends.fake:FakeBackend.load",
        target="file",
        device=False,
    ),
):
    register_scheme(_scheme)

#: The scheme of a spec without one: a checkpoint loaded as it is.
PLAIN = Scheme("", "a local checkpoint, loaded as it is", extra="hf")


#: What a target written without a scheme ends with when it is a GGUF file.
GGUF_SUFFIX = ".gguf"


def is_gguf_target(target: str) -> bool:
    """Whether a target written without a scheme is a GGUF file: its text ends in ``.gguf``."""
    return target.lower().endswith(GGUF_SUFFIX)


def find_scheme(name: str | None, target: str = "") -> tuple[Scheme, dict[str, Any]]:
    """The scheme a spec names and the options its name carries.

    Args:
        name: the scheme as written, None without one.
        target: the target as written: without a scheme, one ending in
            ``.gguf`` is a GGUF file (:func:`is_gguf_target`).

    Raises:
        SpecError: no known scheme has that name.
    """
    if name is None:
        return (SCHEMES["gguf"], {}) if is_gguf_target(target) else (PLAIN, {})
    for scheme in SCHEMES.values():
        options = scheme.match(name)
        if options is not None:
            return scheme, options
    raise SpecError(f"unknown scheme {name!r}")


_LABELLED = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9._+-]*)=(?P<rest>.*)$")
_SCHEME_PREFIX = re.compile(r"^(?P<scheme>[a-z][a-z0-9-]+):(?P<rest>.*)$")
#: What a mistyped scheme looks like (any case, underscores): part of the path by the grammar,
#: named as a scheme only in the error when that path does not exist.
_SCHEME_LIKE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9_-]+):")
#: What a query on a scheme without options looks like: ``?KEY=VALUE[&KEY=VALUE...]`` at the end.
_QUERY_LIKE = re.compile(r"\?(?P<query>[A-Za-z_]\w*=[^?&/\\]*(?:&[A-Za-z_]\w*=[^?&/\\]*)*)$")


@dataclass(frozen=True)
class ModelSpec:
    """One model to load: where from and how to quantize it at load time."""

    label: str
    path: str  # the target: an absolute resolved path, or a URL
    scheme: str | None = None  # None = load the checkpoint as it is
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the spec as the user wrote it
    #: The scheme's entry in :data:`SCHEMES` (``PLAIN`` without a scheme), resolved once: by
    #: :func:`parse_spec`, or from ``scheme`` when the spec is made directly.
    kind: Scheme = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", find_scheme(self.scheme, self.path)[0])

    @property
    def display(self) -> str:
        """Short form for headings: ``label (scheme:dir)``, just ``scheme:dir`` for an automatic label."""
        where = self.path if self.kind.target == "url" else Path(self.path).name
        source = f"{self.scheme}:{where}" if self.scheme else where
        return source if self.label == auto_label(self.scheme, where) else f"{self.label} ({source})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "scheme": self.scheme,
            "options": dict(self.options),
            "text": self.text,
        }


def parse_spec(text: str, *, base_dir: Path | str | None = None, check_path: bool = True) -> ModelSpec:
    """Parse ``[LABEL=][SCHEME:]TARGET[?OPTIONS]`` into a :class:`ModelSpec`.

    Args:
        text: the spec string.
        base_dir: directory that a relative path is relative to.
        check_path: require the target to exist (a checkpoint directory with
            a ``config.json``, or a file, as the scheme says).

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
        label, rest = labelled.group("label"), labelled.group("rest").strip()
    body = rest  # the spec without its label
    scheme_name: str | None = None
    prefixed = _SCHEME_PREFIX.match(rest)
    if prefixed:
        scheme_name, rest = prefixed.group("scheme"), prefixed.group("rest")
    try:
        scheme, options = find_scheme(scheme_name, rest.strip())
    except SpecError as exc:
        assert scheme_name is not None
        suggestion = _close_scheme(scheme_name)
        hint = (
            f"did you mean {suggestion!r}?"
            if suggestion
            else "known: " + ", ".join(s.usage or s.name for s in SCHEMES.values()) + ";"
        )
        raise SpecError(
            f"{exc} in model spec {raw!r} ({hint} a relative path containing ':' is written ./PATH)"
        ) from None
    target, query = rest, ""
    if scheme.options:
        target, _, query = rest.partition("?")
    options.update(_parse_query(query, scheme, raw))
    if scheme.quantizer is not None:
        _check_gptqmodel_options(scheme.quantizer, options, raw)
    target = target.strip()
    if not target:
        raise SpecError(f"empty model spec: no {'URL' if scheme.target == 'url' else 'path'} in {raw!r}")
    if scheme.check_options is not None:
        scheme.check_options(target, options, raw)
    if scheme.target == "url":
        where = name = target
    else:
        path = Path(target).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        path = path.resolve()
        if check_path:
            if not path.exists():
                _check_slip(body, target, scheme_name, scheme, raw, path)
            _check_target(path, scheme, raw)
        where, name = str(path), path.name
    if label is None:
        label = auto_label(scheme_name, name)
    return ModelSpec(label=label, path=where, scheme=scheme_name, options=options, text=raw, kind=scheme)


def auto_label(scheme: str | None, name: str) -> str:
    """The label of a spec written without one: its scheme, else its target's name.

    Short, so that headings and gate-row names stay short; two specs that
    get the same label are told apart with ``LABEL=`` (the configuration
    refuses duplicates). A GGUF file's name loses its ``.gguf``
    (``tiny-ref.Q8_0``).
    """
    if scheme:
        return scheme
    return name[: -len(GGUF_SUFFIX)] if is_gguf_target(name) and len(name) > len(GGUF_SUFFIX) else name


def _close_scheme(name: str) -> str | None:
    """The known scheme ``name`` is likely a slip for: the same but for case and ``_``, else a close one."""
    lowered = name.lower().replace("_", "-")
    if lowered != name:
        try:
            find_scheme(lowered)
            return lowered  # BNB-NF4 -> bnb-nf4, RTN2G64 -> rtn2g64
        except SpecError:
            pass
    written = {s.name: s.usage or s.name for s in SCHEMES.values()}
    close = difflib.get_close_matches(lowered, list(written), n=1)
    return written[close[0]] if close else None


def _check_slip(
    body: str, target: str, scheme_name: str | None, scheme: Scheme, raw: str, path: Path
) -> None:
    """Name a mistyped scheme or a misplaced ``?option``, once the target they leave is known not to exist.

    Args:
        body: the spec without its label.
        target: the target as parsed (without a scheme, the whole body).
        scheme_name: the scheme as written, None without one.
        scheme: its entry.
        raw: the spec, for the message.
        path: the target resolved, which does not exist.
    """
    like = _SCHEME_LIKE.match(body) if scheme_name is None else None
    suggestion = _close_scheme(like.group("scheme")) if like else None
    if like and suggestion:
        raise SpecError(
            f"unknown scheme {like.group('scheme')!r} in model spec {raw!r} (did you mean {suggestion!r}?)"
        )
    query = None if scheme.options else _QUERY_LIKE.search(target)
    if query is None:
        return
    if scheme_name is None:
        raise SpecError(
            f"a model spec without a scheme takes no ?options ({query.group('query')!r} in model spec "
            f"{raw!r}, and no directory {path} exists)"
        )
    where = f"; {scheme.name}'s options are in its name: {scheme.usage}" if scheme.usage else ""
    raise SpecError(
        f"scheme {scheme_name} takes no ?options ({query.group('query')!r} in model spec {raw!r}{where})"
    )


def _check_target(path: Path, scheme: Scheme, raw: str) -> None:
    if scheme.target == "file":
        if not path.is_file():
            raise SpecError(f"file not found: {path} (from spec {raw!r})")
        return
    if not path.exists():
        raise SpecError(f"model directory not found: {path} (from spec {raw!r})")
    if not path.is_dir():
        raise SpecError(f"model path is not a directory: {path} (from spec {raw!r})")
    if not (path / "config.json").is_file():
        raise SpecError(f"no config.json in model directory {path} (from spec {raw!r})")


_VALUE_TYPES: Mapping[str, Callable[[str], Any]] = {"true": lambda _: True, "false": lambda _: False}


def _parse_query(query: str, scheme: Scheme, raw: str) -> dict[str, Any]:
    """``bits=4&sym=true`` -> ``{"bits": 4, "sym": True}`` for the options a scheme declares."""
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in scheme.options:
            allowed = ", ".join(scheme.options)
            close = difflib.get_close_matches(key, scheme.options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"option {part!r} is not one of {allowed} in model spec {raw!r}{hint}")
        out[key] = _option_value(value)
    return out


def _check_gptqmodel_options(method: str, options: Mapping[str, Any], raw: str) -> None:
    """The values gptqmodel accepts, checked before anything is loaded."""
    bits = options.get("bits", 4)
    allowed_bits = (4,) if method == "awq" else (2, 3, 4, 8)
    if bits not in allowed_bits or isinstance(bits, bool):
        raise SpecError(
            f"bits={bits!r}: {method} quantizes to {' or '.join(map(str, allowed_bits))} bits ({raw!r})"
        )
    group = options.get("group_size", 128)
    if isinstance(group, bool) or not isinstance(group, int) or (group != -1 and group < 1):
        raise SpecError(
            f"group_size={group!r}: a positive number of columns, or -1 for one group per row ({raw!r})"
        )
    for flag in ("sym", "desc_act"):
        if flag in options and not isinstance(options[flag], bool):
            raise SpecError(f"{flag}={options[flag]!r}: true or false ({raw!r})")


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in _VALUE_TYPES:
        return _VALUE_TYPES[lowered](lowered)
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
