"""``GateConfig``: every option and ini value, validated once, frozen.

Command-line flags win over ini keys. Validation happens here, before any
model loads, and raises :class:`ConfigError` with a one-line message; the
plugin turns that into a pytest usage error (exit status 4).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends.base import LoadPolicy
from ..backends.torch_device import auto_device, device_problem
from ..statistics.gate import ALL
from ..storage.store import DEFAULT_DIR_NAME, CacheMode, parse_cache_mode
from ..values.calibration import Calibration
from ..values.specs import ModelSpec, SpecError, parse_spec
from .markers import check_tolerance
from .perplexity import Corpus, PerplexitySettings
from .records_file import ShardError, parse_shard

__all__ = [
    "AUTO_BATCH_CPU",
    "AUTO_BATCH_GPU",
    "DTYPES",
    "ConfigError",
    "GateConfig",
    "parse_alpha",
    "parse_batch_size",
    "parse_cache",
    "parse_device",
    "parse_dtype",
    "parse_ppl_length",
    "parse_ppl_stride",
    "parse_quant_shard",
    "parse_report_path",
    "parse_slice_tolerances",
    "parse_threads",
    "parse_tolerance",
]

DTYPES = ("auto", "float32", "float16", "bfloat16")
#: The first batch size of ``--quant-batch-size=auto`` on a GPU (halved while out of memory).
AUTO_BATCH_GPU = 64
#: ``--quant-batch-size=auto`` on the CPU.
AUTO_BATCH_CPU = 16
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class ConfigError(ValueError):
    """An option value that cannot be used; the message is one line."""


def _number(name: str, value: str | float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def parse_tolerance(value: str | float, name: str = "--quant-tolerance") -> float:
    """A tolerance margin in [0, 1) (``0.02`` = 2 points); the rule is :func:`~.cases.check_tolerance`."""
    try:
        return check_tolerance(value.strip() if isinstance(value, str) else value, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_alpha(value: str | float, name: str = "--quant-alpha") -> float:
    """A significance level in (0, 0.5]."""
    alpha = _number(name, value)
    if not 0.0 < alpha <= 0.5:
        raise ConfigError(f"{name} must be in (0, 0.5], got {value}")
    return alpha


def parse_device(value: str, name: str = "--quant-device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    device = str(value).strip().lower()
    if not _DEVICE.match(device):
        raise ConfigError(f"{name} must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return device


def parse_dtype(value: str, name: str = "--quant-dtype") -> str:
    """One of :data:`DTYPES`."""
    dtype = str(value).strip().lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    dtype = aliases.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"{name} must be one of {', '.join(DTYPES)}, got {value!r}")
    return dtype


def parse_batch_size(value: str | int | None, name: str = "--quant-batch-size") -> int | None:
    """A positive number of prompts per generation batch, or ``auto`` (None).

    ``auto`` starts at :data:`AUTO_BATCH_GPU` on a GPU and
    :data:`AUTO_BATCH_CPU` on the CPU; out of memory, a batch is halved.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer or auto, got {value!r}") from None
    if size < 1:
        raise ConfigError(f"{name} must be at least 1 (or auto), got {value}")
    return size


def parse_threads(value: str | int | None, name: str = "--quant-threads") -> int | None:
    """A positive number of torch CPU threads per process, or ``auto`` (None).

    ``auto`` is decided by :func:`~.threads.plan_threads`: ``OMP_NUM_THREADS``
    when set, else an xdist worker's share of the cores, else one thread.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer or auto, got {value!r}") from None
    if threads < 1:
        raise ConfigError(f"{name} must be a positive integer or auto, got {value!r}")
    return threads


def parse_cache(value: str, name: str = "--quant-cache") -> CacheMode:
    """``on``, ``off`` or ``refresh`` (regenerate and overwrite)."""
    try:
        return parse_cache_mode(value)
    except ValueError:
        raise ConfigError(f"{name} must be on, off or refresh, got {value!r}") from None


def parse_slice_tolerances(lines: Sequence[str], name: str = "quant_slice_tolerance") -> dict[str, float]:
    """Ini lines ``SLICE = TOLERANCE`` (or ``SLICE:TOLERANCE``) -> mapping."""
    out: dict[str, float] = {}
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = re.match(r"^([^=:\s]+)\s*[=:]\s*(\S+)$", text)
        if not m:
            raise ConfigError(f"{name}: expected 'SLICE = TOLERANCE', got {text!r}")
        if m.group(1) == ALL:
            raise ConfigError(f"{name}: the ALL row takes --quant-tolerance / quant_tolerance, not {text!r}")
        out[m.group(1)] = parse_tolerance(m.group(2), name=f"{name}: tolerance of slice {m.group(1)!r}")
    return out


def parse_quant_shard(value: str | None, name: str = "--quant-shard") -> tuple[int, int] | None:
    """``K/N`` -> ``(K, N)`` (the K-th of N shards, K from 1); None when not given."""
    if value is None or not str(value).strip():
        return None
    try:
        return parse_shard(value, name)
    except ShardError as exc:
        raise ConfigError(str(exc)) from None


def parse_report_path(value: str, base_dir: Path, name: str = "--quant-report") -> Path:
    """Where the JSON report goes: a file that can be written, checked before any model loads.

    Raises:
        ConfigError: the path is a directory, lies under a file, or its
            nearest existing directory cannot be written to.
    """
    path = (base_dir / Path(value).expanduser()).resolve()
    if path.is_dir():
        raise ConfigError(f"{name} must name a file, but {path} is a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{name}: cannot write {path}: {parent} is not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{name}: cannot write {path}: permission denied")
    problem = _write_probe(parent)
    if problem is not None:
        raise ConfigError(f"{name}: cannot write {path}: {problem}")
    return path


def _write_probe(directory: Path) -> str | None:
    """Why no file can be made in ``directory``, found by making one and removing it; None if one can.

    Permission bits are not enough: root passes every access check, yet
    ``/proc`` or a read-only mount refuse the file.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".quantgate-probe-", dir=directory)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


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
    #: ``--quant-markdown``: the Markdown report, written whole.
    markdown_path: Path | None = None
    #: ``--quant-cost``: measure each model's cost after the quality run.
    cost: bool = False
    #: ``--quant-divergence``: token divergence of each candidate from the reference (teacher forcing).
    divergence: bool = False
    #: ``--quant-noise-floor``: the reference again with batch size 1, in another order.
    noise_floor: bool = False
    #: ``--quant-html``: the self-contained HTML report.
    html_path: Path | None = None
    #: ``$GITHUB_STEP_SUMMARY``: the job summary the Markdown report is appended to.
    step_summary: Path | None = None
    #: The candidates' calibration texts, read once: quantizing on the fly calibrates on them,
    #: and the report counts eval cases found in them.
    calibration: Calibration | None = None
    batch_size: int | None = None  # None: auto (see parse_batch_size)
    threads: int | None = None  # torch CPU threads per process; None: auto (see core.threads.plan_threads)
    slice_tolerances: dict[str, float] = field(default_factory=dict)
    keep_loaded: bool = False  # every model resident for the whole session
    cache_mode: CacheMode = CacheMode.ON  # the reference's results on disk
    cache_dir: Path | None = None
    #: xdist worker -> its devices (``WorkerDevices.to_dict()``), decided by the controller.
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Safe loading (``backends.base.LoadPolicy``): run code a checkpoint ships (``auto_map``).
    trust_remote_code: bool = False
    #: Load pickled weights (``pytorch_model.bin``) of a checkpoint without safetensors.
    allow_pickle: bool = False
    #: Gate a candidate whose tokenizer differs from the reference's.
    allow_tokenizer_mismatch: bool = False
    #: Quant cases collected without a reference are a usage error, not skips (a CI job that
    #: forgets the flags would otherwise go green: issue 17). Not in ``to_dict``: it changes no verdict.
    require_reference: bool = False
    #: ``--quant-shard=K/N``: run only the K-th of N shards of the quant cases (issue 21).
    #: Not in ``to_dict``, nor the two below: they change which records a run gates, no verdict.
    shard: tuple[int, int] | None = None
    #: ``--quant-records DIR``: write this run's case records to ``DIR/shard-K-of-N.json``.
    records_dir: Path | None = None
    #: ``--quant-merge DIR ...``: gate the records of every shard found there; run no test.
    merge_dirs: tuple[Path, ...] = ()
    #: ``--quant-ppl-*``: each model's perplexity on a corpus after the quality run (issue 19).
    perplexity: PerplexitySettings | None = None

    @property
    def merging(self) -> bool:
        """Whether this run gates shards' records instead of running tests."""
        return bool(self.merge_dirs)

    def gate_settings(self) -> dict[str, Any]:
        """The settings a shard was gated with, which a merge must share."""
        return {
            "tolerance": self.tolerance,
            "alpha": self.alpha,
            "slice_tolerances": dict(sorted(self.slice_tolerances.items())),
            "strict": self.strict,
        }

    def model_specs(self) -> dict[str, Any]:
        """The reference's and candidates' specs, which a merge must share."""
        return {
            "reference": self.reference.to_dict() if self.reference else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def first_batch_size(self, device: str) -> int:
        """The batch size to start with on ``device`` (the one given, or auto's)."""
        if self.batch_size is not None:
            return self.batch_size
        return AUTO_BATCH_CPU if device.split(":")[0] == "cpu" else AUTO_BATCH_GPU

    @functools.cached_property
    def resolved_device(self) -> str:
        """The device models run on: ``auto`` resolved (torch imported then, and only then), once."""
        return auto_device() if self.device == "auto" else self.device

    def load_policy(self, notify: Callable[[str], None] | None = None) -> LoadPolicy:
        """What this session lets a checkpoint do while it loads (the ``--quant-*`` safety flags)."""
        return LoadPolicy(
            trust_remote_code=self.trust_remote_code,
            allow_pickle=self.allow_pickle,
            allow_tokenizer_mismatch=self.allow_tokenizer_mismatch,
            reference=self.reference,
            calibration=self.calibration,
            store=self.cache_dir if self.cache_mode is not CacheMode.OFF else None,
            refresh=self.cache_mode is CacheMode.REFRESH,
            notify=notify,
        )

    @property
    def enabled(self) -> bool:
        """Whether a reference model was given (otherwise quant cases skip)."""
        return self.reference is not None

    def tolerance_for(self, slice_name: str, marker_tolerance: float | None = None) -> float:
        """Margin of a slice: its marker, else the ini table, else the default."""
        if marker_tolerance is not None:
            return marker_tolerance
        return self.slice_tolerances.get(slice_name, self.tolerance)

    def only(self, labels: Iterable[str]) -> GateConfig:
        """This configuration with only the candidates named (all of them when none is).

        Raises:
            ConfigError: a label that names no candidate.
        """
        wanted = set(labels)
        if not wanted:
            return self
        known = [c.label for c in self.candidates]
        unknown = sorted(wanted - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise ConfigError(f"::quantgate::{unknown[0]}::... names no candidate (candidates: {names})")
        return replace(self, candidates=tuple(c for c in self.candidates if c.label in wanted))

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
            "markdown_path": str(self.markdown_path) if self.markdown_path else None,
            "html_path": str(self.html_path) if self.html_path else None,
            "cost": self.cost,
            # Only when on: a report of a run without them reads as before.
            **({"divergence": True} if self.divergence else {}),
            **({"noise_floor": True} if self.noise_floor else {}),
            "calibration": str(self.calibration.path) if self.calibration else None,
            "batch_size": "auto" if self.batch_size is None else self.batch_size,
            "threads": "auto" if self.threads is None else self.threads,
            "slice_tolerances": dict(self.slice_tolerances),
            "keep_loaded": self.keep_loaded,
            "cache": str(self.cache_mode),
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "workers": {k: dict(v) for k, v in self.workers.items()},
            "trust_remote_code": self.trust_remote_code,
            "allow_pickle": self.allow_pickle,
            "allow_tokenizer_mismatch": self.allow_tokenizer_mismatch,
            # Only when asked for: a report of a run without it reads as before.
            **({"perplexity": self.perplexity.to_dict()} if self.perplexity is not None else {}),
        }

    @classmethod
    def from_sources(
        cls,
        option: Callable[[str], Any],
        ini: Callable[[str], Any],
        *,
        cli_dir: Path,
        ini_dir: Path,
        environ: Mapping[str, str] | None = None,
    ) -> GateConfig:
        """Build from ``option(name)`` (CLI, None when unset) and ``ini(name)``.

        Relative paths given on the command line are relative to ``cli_dir``
        (where pytest was invoked); those in the ini file to ``ini_dir``.
        ``environ`` (default ``os.environ``) gives ``GITHUB_STEP_SUMMARY``.
        """
        env = os.environ if environ is None else environ

        def pick(name: str) -> tuple[Any, Path, str]:
            """The value, the directory its paths are relative to, and its source's name."""
            value = option(name)
            if name == "quant_reference":
                value = _one_reference(value)
            if value not in (None, [], ""):
                return value, cli_dir, "--" + name.replace("_", "-")
            return ini(name), ini_dir, name

        # A merge loads no model: the machine that merges need not hold the checkpoints.
        check_path = not option("quant_merge")
        try:
            ref_text, ref_dir, _ = pick("quant_reference")
            reference = parse_spec(ref_text, base_dir=ref_dir, check_path=check_path) if ref_text else None
            cand_texts, cand_dir, cand_src = pick("quant_candidate")
            if isinstance(cand_texts, str):
                cand_texts = cand_texts.split()
            candidates = tuple(
                parse_spec(t, base_dir=cand_dir, check_path=check_path) for t in cand_texts or ()
            )
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
        if candidates and reference is None:
            # Every case would skip and the run pass: a gate that checks nothing.
            raise ConfigError(f"{cand_src} given without --quant-reference (or quant_reference)")
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

        def parsed(name: str, parse: Callable[[Any, str], Any], default: Any) -> Any:
            value, _, source = pick(name)
            return parse(default if value in (None, "") else value, source)

        report, report_dir, report_src = pick("quant_report")
        markdown, markdown_dir, markdown_src = pick("quant_markdown")
        html_report, html_dir, html_src = pick("quant_html")
        cache_mode = parsed("quant_cache", parse_cache, str(CacheMode.ON))
        cache_text, cache_base, _ = pick("quant_cache_dir")
        cache_dir = (
            (cache_base / Path(cache_text).expanduser()).resolve()
            if cache_text
            else ini_dir / DEFAULT_DIR_NAME
        )
        strict_opt = option("quant_strict")
        strict = bool(strict_opt) if strict_opt else _ini_bool(ini("quant_strict"), "quant_strict")
        keep_opt = option("quant_keep_loaded")
        keep_loaded = bool(keep_opt) if keep_opt else _ini_bool(ini("quant_keep_loaded"), "quant_keep_loaded")

        def flag(name: str) -> bool:
            """A store_true flag, else its ini key (the flag cannot switch off what the ini switched on)."""
            return bool(option(name)) or _ini_bool(ini(name), name)

        device = parsed("quant_device", parse_device, "auto")
        models = (reference, *candidates) if reference is not None else ()
        calibration = _calibration(*pick("quant_calibration"))
        on_the_fly = [m for m in models if m.kind.needs_calibration]
        if on_the_fly and calibration is None:
            raise ConfigError(
                f"{on_the_fly[0].text!r} quantizes on the fly and needs texts to calibrate on: "
                "--quant-calibration FILE (JSONL with a text field, or one text per line)"
            )
        if any(m.kind.device for m in models):
            problem = device_problem(device)
            if problem:
                raise ConfigError(f"{pick('quant_device')[2]}: {problem}")
        shard = parsed("quant_shard", parse_quant_shard, None)
        records_text, records_base, records_src = pick("quant_records")
        records_dir = (records_base / Path(records_text).expanduser()).resolve() if records_text else None
        if records_dir is not None and shard is None:
            raise ConfigError(f"{records_src} needs --quant-shard=K/N (or quant_shard): the shard it records")
        if records_dir is not None and records_dir.exists() and not records_dir.is_dir():
            raise ConfigError(f"{records_src} must name a directory, but {records_dir} is a file")
        merge_dirs = tuple((cli_dir / Path(d).expanduser()).resolve() for d in option("quant_merge") or ())
        if merge_dirs and shard is not None:
            raise ConfigError("--quant-merge gates the shards' records: give it without --quant-shard")
        if merge_dirs and reference is None:
            raise ConfigError(
                "--quant-merge needs the shards' --quant-reference and --quant-candidate (or the ini keys)"
            )
        perplexity = _perplexity(pick)
        if perplexity is not None and (merge_dirs or records_dir is not None):
            raise ConfigError(
                "--quant-ppl-corpus is measured by a run that gates: a shard writing --quant-records "
                "and a --quant-merge measure no model"
            )
        return cls(
            perplexity=perplexity,
            shard=shard,
            records_dir=records_dir,
            merge_dirs=merge_dirs,
            reference=reference,
            candidates=candidates,
            device=device,
            dtype=parsed("quant_dtype", parse_dtype, "auto"),
            tolerance=parsed("quant_tolerance", parse_tolerance, 0.02),
            alpha=parsed("quant_alpha", parse_alpha, 0.05),
            strict=strict,
            report_path=parse_report_path(report, report_dir, report_src) if report else None,
            markdown_path=parse_report_path(markdown, markdown_dir, markdown_src) if markdown else None,
            html_path=parse_report_path(html_report, html_dir, html_src) if html_report else None,
            step_summary=(
                parse_report_path(env["GITHUB_STEP_SUMMARY"], cli_dir, "GITHUB_STEP_SUMMARY")
                if env.get("GITHUB_STEP_SUMMARY")
                else None
            ),
            calibration=calibration,
            batch_size=parsed("quant_batch_size", parse_batch_size, "auto"),
            threads=parsed("quant_threads", parse_threads, "auto"),
            slice_tolerances=parse_slice_tolerances(ini("quant_slice_tolerance") or []),
            keep_loaded=keep_loaded,
            cache_mode=cache_mode,
            cache_dir=cache_dir,
            cost=flag("quant_cost"),
            divergence=flag("quant_divergence"),
            noise_floor=flag("quant_noise_floor"),
            trust_remote_code=flag("quant_trust_remote_code"),
            allow_pickle=flag("quant_allow_pickle"),
            allow_tokenizer_mismatch=flag("quant_allow_tokenizer_mismatch"),
            require_reference=_ini_bool(ini("quant_require_reference"), "quant_require_reference"),
        )


def _one_reference(value: Any) -> Any:
    """The one reference of ``--quant-reference`` (a list: the flag appends, so that a second is seen).

    A second flag once replaced the first silently, and a model was gated
    against another than the one meant (issue 17). An ini value and one flag
    are fine: the flag wins.
    """
    if not isinstance(value, list):
        return value
    if len(value) > 1:
        given = ", ".join(map(repr, value[:-1])) + f" and {value[-1]!r}"
        times = "twice" if len(value) == 2 else f"{len(value)} times"
        raise ConfigError(f"--quant-reference given {times} ({given}): give one reference model")
    return value[0] if value else None


def _calibration(value: Any, base_dir: Path, name: str) -> Calibration | None:
    """The calibration file's texts, read once, before any model loads (it must exist and be readable)."""
    if not value:
        return None
    path = (base_dir / Path(str(value)).expanduser()).resolve()
    if not path.is_file():
        raise ConfigError(f"{name}: no such file: {path}")
    try:
        return Calibration.read(path)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _ini_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def parse_ppl_length(value: str | int | None, name: str = "--quant-ppl-max-length") -> int | None:
    """Tokens per perplexity window (at least 2), or ``auto`` (None: the reference's context, capped)."""
    return _positive_or_auto(value, name, least=2)


def parse_ppl_stride(value: str | int | None, name: str = "--quant-ppl-stride") -> int | None:
    """Tokens a perplexity window advances by (at least 1), or ``auto`` (None: half the max length)."""
    return _positive_or_auto(value, name, least=1)


def _positive_or_auto(value: str | int | None, name: str, least: int) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer of at least {least} or auto, got {value!r}") from None
    if number < least:
        raise ConfigError(f"{name} must be an integer of at least {least} or auto, got {value!r}")
    return number


def _perplexity(pick: Callable[[str], tuple[Any, Path, str]]) -> PerplexitySettings | None:
    """``--quant-ppl-*`` (issue 19): the corpus read once, before any model loads; None without one.

    ``pick(name)`` is :meth:`GateConfig.from_sources`' ``(value, base directory, source name)``.
    """
    corpus_text, corpus_dir, corpus_src = pick("quant_ppl_corpus")
    given = {name: pick(name) for name in ("quant_ppl_max_length", "quant_ppl_stride", "quant_ppl_tolerance")}
    if not corpus_text:
        for value, _, source in given.values():
            if value not in (None, ""):
                raise ConfigError(f"{source} needs --quant-ppl-corpus (or quant_ppl_corpus)")
        return None
    path = (corpus_dir / Path(str(corpus_text)).expanduser()).resolve()
    if not path.is_file():
        raise ConfigError(f"{corpus_src}: no such file: {path}")
    try:
        corpus = Corpus.read(path)
    except ValueError as exc:
        raise ConfigError(f"{corpus_src}: {exc}") from None
    length_value, _, length_src = given["quant_ppl_max_length"]
    stride_value, _, stride_src = given["quant_ppl_stride"]
    tolerance_value, _, tolerance_src = given["quant_ppl_tolerance"]
    length = parse_ppl_length(length_value, length_src)
    stride = parse_ppl_stride(stride_value, stride_src)
    if length is not None and stride is not None and stride > length:
        raise ConfigError(f"{stride_src} {stride} exceeds {length_src} {length}: tokens would go unscored")
    tolerance = (
        None if tolerance_value in (None, "") else parse_tolerance(str(tolerance_value), tolerance_src)
    )
    return PerplexitySettings(corpus=corpus, max_length=length, stride=stride, tolerance=tolerance)
