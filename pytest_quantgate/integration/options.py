"""The ``quantgate`` options, ini keys and markers, and the session's :class:`GateConfig` from them."""

from __future__ import annotations

import pytest

from ..core.config import ConfigError, GateConfig
from ..values.specs import SCHEMES
from . import _compat
from .rerun import Rerun, split_gate_args

__all__ = ["MARKERS", "add_options", "gate_config"]

_SCHEME_LIST = ", ".join(s.usage or s.name for s in SCHEMES.values())

#: The markers quantgate registers (``addinivalue_line``).
MARKERS = (
    "quant_case(argnames, argvalues, *, ids=None, prompt='prompt', max_new_tokens=64, stop=None, "
    "chat_template=None, critical=False, cluster=None): parametrize a test over domain cases run "
    "on the reference and candidate models; the body checks `output`.",
    "slice(*names, tolerance=None, max_kl=None): tag quant cases with slices the gate reports on; "
    "max_kl fails a slice whose mean token KL is significantly above it (--quant-divergence).",
    "quant_cluster(name): the cluster of a quant case when quant_case has no cluster= "
    "(load_cases sets it from a data file's cluster column).",
)

_OPTIONS = (
    # flag, ini name, ini type, help
    (
        "--quant-reference",
        "quant_reference",
        "string",
        "reference model spec [LABEL=][SCHEME:]PATH, usually a local checkpoint "
        "(default: none; quant cases skip)",
    ),
    (
        "--quant-candidate",
        "quant_candidate",
        "linelist",
        f"candidate model spec [LABEL=][SCHEME:]PATH, repeatable; schemes: {_SCHEME_LIST} (default: none)",
    ),
    (
        "--quant-device",
        "quant_device",
        "string",
        "auto, cpu, cuda, cuda:N or mps; auto means cuda when available (default: auto)",
    ),
    (
        "--quant-dtype",
        "quant_dtype",
        "string",
        "auto, float32, float16 or bfloat16; auto is float32 on the CPU, "
        "the checkpoint's dtype on a GPU (default: auto)",
    ),
    (
        "--quant-tolerance",
        "quant_tolerance",
        "string",
        "margin of accuracy drop a slice may show, a fraction in [0, 1) (default: 0.02)",
    ),
    ("--quant-alpha", "quant_alpha", "string", "significance level of the gate (default: 0.05)"),
    ("--quant-report", "quant_report", "string", "write the gate as JSON to this path (default: none)"),
    (
        "--quant-markdown",
        "quant_markdown",
        "string",
        "write the gate as Markdown to this path; with $GITHUB_STEP_SUMMARY set it is also "
        "appended there (default: none)",
    ),
    (
        "--quant-html",
        "quant_html",
        "string",
        "write the gate as one self-contained HTML page to this path (default: none)",
    ),
    (
        "--quant-calibration",
        "quant_calibration",
        "string",
        "the candidates' calibration texts (JSONL or text): the report counts eval cases found "
        "in them and warns above one in a hundred (default: none)",
    ),
    (
        "--quant-cache",
        "quant_cache",
        "string",
        "on, off or refresh: reuse the reference's results from the cache when nothing that could "
        "change them changed; refresh regenerates them (default: on)",
    ),
    (
        "--quant-cache-dir",
        "quant_cache_dir",
        "string",
        "where the reference cache lives (default: .quantgate under the rootdir)",
    ),
    (
        "--quant-shard",
        "quant_shard",
        "string",
        "K/N: run only the K-th of N shards of the quant cases (whole cases, balanced by cost, "
        "the same cut on every machine); the others are deselected (default: all cases)",
    ),
    (
        "--quant-records",
        "quant_records",
        "string",
        "with --quant-shard: write this shard's case records to DIR/shard-K-of-N.json, for "
        "--quant-merge (default: none)",
    ),
    (
        "--quant-batch-size",
        "quant_batch_size",
        "string",
        "prompts per generation batch, or auto: 64 on a GPU, halved while out of memory; "
        "16 on the CPU (default: auto)",
    ),
    (
        "--quant-threads",
        "quant_threads",
        "string",
        "torch CPU threads per process, or auto: OMP_NUM_THREADS when set (it wins over auto), "
        "else each worker's share of the cores under pytest -n N, else 1; idle OpenMP threads "
        "sleep (OMP_WAIT_POLICY=PASSIVE) unless OMP_WAIT_POLICY is set (default: auto)",
    ),
    # Perplexity under one recorded protocol (issue 19).
    (
        "--quant-ppl-corpus",
        "quant_ppl_corpus",
        "string",
        "after the gate, each model's perplexity on this corpus (text, or JSONL with a text field), "
        "in sliding windows, and each candidate's ratio to the reference's (default: none)",
    ),
    (
        "--quant-ppl-max-length",
        "quant_ppl_max_length",
        "string",
        "tokens per perplexity window, its BOS included, or auto: the reference's context, at most "
        "1024 (default: auto)",
    ),
    (
        "--quant-ppl-stride",
        "quant_ppl_stride",
        "string",
        "tokens each perplexity window advances by; each scores only its new tokens, or auto: "
        "half the max length (default: auto)",
    ),
    (
        "--quant-ppl-tolerance",
        "quant_ppl_tolerance",
        "string",
        "margin of the perplexity ratio candidate/reference above 1 (0.02: a 2 percent rise): "
        "REGRESSED when its lower bound exceeds it, which fails the run (default: none, perplexity "
        "is information)",
    ),
)

#: Safe loading (``backends.base.LoadPolicy``): what a checkpoint may do while it loads; and
#: what else a run may measure. Flags whose ini key is a bool.
_SAFETY = (
    (
        "--quant-cost",
        "quant_cost",
        "after the gate, measure each model's cost (latency, tokens per second, peak memory) on a "
        "sample of the suite's prompts (default: not measured)",
    ),
    (
        "--quant-divergence",
        "quant_divergence",
        "score the reference's replies on every model (teacher forcing) and report each candidate's "
        "token KL divergence, top-1 agreement and delta-p per slice (default: off)",
    ),
    (
        "--quant-noise-floor",
        "quant_noise_floor",
        "run the reference a second time with batch size 1 in another order and report its flips "
        "(and token KL with --quant-divergence) against itself (default: off)",
    ),
    (
        "--quant-trust-remote-code",
        "quant_trust_remote_code",
        "run the code a checkpoint ships in its auto_map (default: such a checkpoint is refused)",
    ),
    (
        "--quant-allow-pickle",
        "quant_allow_pickle",
        "load pickled weights (pytorch_model.bin) of a checkpoint without safetensors "
        "(default: safetensors only)",
    ),
    (
        "--quant-allow-tokenizer-mismatch",
        "quant_allow_tokenizer_mismatch",
        "gate a candidate whose tokenizer differs from the reference's "
        "(default: such a candidate is refused)",
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """The ``quantgate`` option group and its ini keys."""
    group = parser.getgroup("quantgate", "quantgate: gate quantized LLMs on domain test cases")
    for flag, name, ini_type, help_text in _OPTIONS:
        # The reference appends too, so that a second --quant-reference is refused rather than
        # silently replacing the first (issue 17; GateConfig.from_sources).
        action = "append" if name in ("quant_candidate", "quant_reference") else "store"
        group.addoption(flag, action=action, dest=name, default=None, help=help_text)
        parser.addini(name, help=help_text, type=ini_type)  # type: ignore[arg-type]
    group.addoption(
        "--quant-strict",
        action="store_true",
        dest="quant_strict",
        default=None,
        help="fail INCONCLUSIVE slices too (default: they only warn)",
    )
    parser.addini(
        "quant_strict", help="fail INCONCLUSIVE slices too (default: false)", type="bool", default=False
    )
    group.addoption(
        "--quant-keep-loaded",
        action="store_true",
        dest="quant_keep_loaded",
        default=None,
        help="keep every model loaded for the whole session (default: one model in memory at a time)",
    )
    group.addoption(
        "--quant-gpus-per-worker",
        dest="quant_gpus_per_worker",
        default=None,
        help="with pytest -n N: GPUs per xdist worker, a model spread over its block (default: 1)",
    )
    group.addoption(
        "--quant-allow-shared-gpu",
        action="store_true",
        dest="quant_allow_shared_gpu",
        default=False,
        help="with pytest -n N: allow more workers than GPUs (several workers share one)",
    )
    group.addoption(
        "--quant-merge",
        nargs="+",
        action="extend",
        dest="quant_merge",
        default=None,
        metavar="DIR",
        help="gate the records of every shard written to these directories (--quant-records) as one "
        "run: collects and runs no test; the exit status is the gate's (default: none)",
    )
    parser.addini(
        "quant_require_reference",
        help="quant cases collected without a reference model are a usage error, not skips "
        "(for CI; default: false)",
        type="bool",
        default=False,
    )
    parser.addini(
        "quant_keep_loaded",
        help="keep every model loaded for the whole session (default: false)",
        type="bool",
        default=False,
    )
    parser.addini(
        "quant_slice_tolerance",
        help="per-slice margins, one 'SLICE = TOLERANCE' per line (default: --quant-tolerance)",
        type="linelist",
    )
    for flag, name, help_text in _SAFETY:
        group.addoption(flag, action="store_true", dest=name, default=None, help=help_text)
        ini_help = help_text.rsplit(" (default", 1)[0] + " (default: false)"
        parser.addini(name, help=ini_help, type="bool", default=False)


def gate_config(config: pytest.Config) -> tuple[GateConfig, Rerun]:
    """The validated configuration, and the gate tests asked for again on the command line.

    A gate test's id among the arguments is replaced by the path it leads
    to (:mod:`.rerun`), and only its candidate is kept.

    Raises:
        pytest.UsageError: a bad option, in one line.
    """
    args, rerun = split_gate_args(
        config.args,
        invocation_dir=config.invocation_params.dir,
        rootpath=config.rootpath,
        testpaths=config.getini("testpaths"),
    )
    if rerun:
        _compat.replace_args(config, args)
    try:
        gate = GateConfig.from_sources(
            option=config.getoption,
            ini=config.getini,
            cli_dir=config.invocation_params.dir,
            ini_dir=config.inipath.parent if config.inipath else config.rootpath,
        )
        return gate.only(rerun.rows), rerun
    except ConfigError as exc:
        raise pytest.UsageError(f"quantgate: {exc}") from None
