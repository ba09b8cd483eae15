"""Perplexity under one protocol (issue 19): windows, the tiny model against a direct loop,
protocols and their fingerprints, the paired statistics, the corpus and the options."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_quantgate.backends.base import Backend, BackendError, CorpusTokens, GenerationRequest
from pytest_quantgate.backends.fake import FakeBackend
from pytest_quantgate.core.config import ConfigError, GateConfig
from pytest_quantgate.core.perplexity import (
    SEPARATOR,
    Corpus,
    PerplexityRun,
    PerplexitySettings,
    ProtocolMismatch,
    compare,
    measure,
    plan_windows,
    resolve_lengths,
    windows_per_batch,
)
from pytest_quantgate.core.runner import BatchSize
from pytest_quantgate.statistics.gate import Verdict
from pytest_quantgate.statistics.perplexity import paired_ratio, ratio_verdict
from pytest_quantgate.values.specs import parse_spec

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "ppl_corpus.txt"
CORPUS_JSONL = REPO / "tests" / "data" / "ppl_corpus.jsonl"


# -- windows -------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 2, 5, 63, 64, 65, 127, 128, 129, 1000])
@pytest.mark.parametrize(
    ("prefix", "max_length", "stride"),
    [(1, 64, 32), (1, 64, 63), (1, 64, 1), (0, 64, 32), (0, 64, 63), (0, 2, 1), (2, 10, 4), (1, 2, 1)],
)
def test_windows_score_every_token_once_with_context(
    tokens: int, prefix: int, max_length: int, stride: int
) -> None:
    if prefix == 0 and tokens <= 1:
        with pytest.raises(ValueError, match="nothing to score"):
            plan_windows(tokens, prefix, max_length, stride)
        return
    plan = plan_windows(tokens, prefix, max_length, stride)
    scored = [j for _, end, done in plan for j in range(done, end)]
    # Every token once, in order; without a BOS the first token has no context and is left out.
    assert scored == list(range(0 if prefix else 1, tokens))
    for begin, end, done in plan:
        assert prefix + end - begin <= max_length  # the window fits
        assert begin <= done < end
        assert prefix + done - begin >= 1  # at least one token of context before the first scored
    begins = [b for b, _, _ in plan]
    assert all(b % stride == 0 for b in begins)


def test_windows_follow_the_recipe_exactly() -> None:
    # 10 tokens, BOS, windows of 5 (4 corpus tokens), stride 2: the HF recipe's bookkeeping.
    assert plan_windows(10, 1, 5, 2) == [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # Without a BOS the first window scores from token 1 on.
    assert plan_windows(10, 0, 5, 2) == [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 10, 9)]


@pytest.mark.parametrize(
    ("prefix", "max_length", "stride", "message"),
    [
        (1, 64, 64, "stride 64 leaves tokens without context: at most 63"),
        (0, 64, 64, "stride 64 leaves tokens without context: at most 63"),
        (0, 64, 63, None),
        (1, 1, 1, "leaves no room for the corpus"),
        (0, 1, 1, "leaves no room for the corpus"),
    ],
)
def test_windows_refuse_strides_that_skip_context(
    prefix: int, max_length: int, stride: int, message: str | None
) -> None:
    if message is None:
        plan_windows(100, prefix, max_length, stride)
        return
    with pytest.raises(ValueError, match=message):
        plan_windows(100, prefix, max_length, stride)


def test_auto_lengths_follow_the_reference_context() -> None:
    corpus = Corpus.read(CORPUS)
    assert resolve_lengths(PerplexitySettings(corpus), 128) == (128, 64)
    assert resolve_lengths(PerplexitySettings(corpus), 8192) == (1024, 512)
    assert resolve_lengths(PerplexitySettings(corpus), None) == (1024, 512)
    assert resolve_lengths(PerplexitySettings(corpus, max_length=100, stride=30), 128) == (100, 30)
    with pytest.raises(ValueError, match="exceeds the max length"):
        resolve_lengths(PerplexitySettings(corpus, stride=200), 128)
    assert windows_per_batch(128, "cpu") == 16
    assert windows_per_batch(1024, "cuda:0") == 16
    assert windows_per_batch(100_000, "cpu") == 1


# -- the tiny model against a direct loop ---------------------------------------------


def _direct_loop(model_dir: Path, text: str, max_length: int, stride: int) -> tuple[float, int]:
    """Hugging Face's "perplexity of fixed-length models" recipe, written with plain transformers:
    one window at a time, the context's labels -100, the model's own mean loss times the tokens it
    scored; the tokenizer's BOS at the head of every window (the protocol's choice)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    bos = torch.tensor([tokenizer.bos_token_id])
    room = max_length - 1
    seq_len = ids.size(0)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + room, seq_len)
        trg_len = end - prev_end  # may differ from stride on the last loop
        input_ids = torch.cat([bos, ids[begin:end]])[None]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss  # the mean over the trg_len scored tokens
        nll_sum += float(loss) * trg_len
        n_tokens += trg_len
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.fixture(scope="module")
def tiny(tiny_ref: Path) -> Any:
    pytest.importorskip("transformers")
    import torch

    from pytest_quantgate.backends.hf import HFBackend

    # One thread, as the plugin runs a gate: torch's default spins on a shared 2-core machine,
    # and these loops make hundreds of small forward passes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = HFBackend.load(parse_spec(str(tiny_ref)), "cpu", "float32")
    yield backend
    backend.close()
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("max_length", "stride", "batch"), [(64, 32, 4), (128, 64, 16), (40, 39, 1), (128, 128 - 1, 3)]
)
def test_perplexity_equals_a_direct_loop_on_the_tiny_model(
    tiny: Any, tiny_ref: Path, max_length: int, stride: int, batch: int
) -> None:
    corpus = Corpus.read(CORPUS)
    run = measure(tiny, corpus, max_length=max_length, stride=stride, dtype="float32", batch=BatchSize(batch))
    expected, scored = _direct_loop(tiny_ref, corpus.text, max_length, stride)
    assert run.protocol.scored == scored == run.protocol.tokens  # a BOS: every token scored
    assert run.ppl == pytest.approx(expected, rel=1e-5)
    assert run.protocol.prefix == (0,)  # the tiny tokenizer's <bos>
    assert run.protocol.bytes == len(corpus.text.encode())
    assert run.bits_per_byte == pytest.approx(math.log(expected) * scored / math.log(2) / run.protocol.bytes)


def test_batching_does_not_change_the_numbers(tiny: Any) -> None:
    corpus = Corpus.read(CORPUS)
    one = measure(tiny, corpus, max_length=64, stride=48, dtype="float32", batch=BatchSize(1))
    many = measure(tiny, corpus, max_length=64, stride=48, dtype="float32", batch=BatchSize(7))
    assert one.tokens == many.tokens
    assert many.nll == pytest.approx(one.nll, rel=1e-5)


def test_a_window_longer_than_the_context_is_refused(tiny: Any) -> None:
    with pytest.raises(BackendError, match=r"--quant-ppl-max-length 256 exceeds its context \(128 tokens\)"):
        measure(tiny, Corpus.read(CORPUS), max_length=256, stride=128, dtype="auto", context=tiny.context)


def test_the_hf_backend_finds_its_bos_and_scores_windows(tiny: Any) -> None:
    encoded = tiny.encode_corpus("2+9=11")
    assert encoded.prefix == (0,)
    assert encoded.first_bytes == 1
    assert list(encoded.ids) == tiny.tokenizer("2+9=11", add_special_tokens=False)["input_ids"]
    out = tiny.window_logprobs([[0, *encoded.ids], [0, *encoded.ids[:3]]], [1, 2])
    assert [len(o) for o in out] == [len(encoded.ids), 2]
    assert out[1] == pytest.approx(out[0][1:3], abs=1e-5)  # padding never reaches a real token
    with pytest.raises(BackendError, match="context before"):
        tiny.window_logprobs([[0, 5]], [0])


# -- protocols -------------------------------------------------------------------


def _fake(tmp_path: Path, label: str, **model: Any) -> FakeBackend:
    script = tmp_path / f"{label}.json"
    script.write_text(json.dumps({"perplexity": model}))
    backend = FakeBackend.load(parse_spec(f"{label}=fake:{script}"), "cpu", "auto")
    return backend


def _run(backend: Backend, corpus: Corpus | None = None, **kw: Any) -> PerplexityRun:
    settings: dict[str, Any] = {"max_length": 64, "stride": 32, "dtype": "auto", **kw}
    return measure(backend, corpus or Corpus.read(CORPUS), **settings)


def test_a_stride_change_changes_the_protocol_fingerprint(tmp_path: Path) -> None:
    ref = _fake(tmp_path, "ref")
    base = _run(ref)
    assert _run(ref).protocol.fingerprint == base.protocol.fingerprint  # deterministic
    for changed in (
        _run(ref, stride=16),
        _run(ref, max_length=48),
        _run(ref, dtype="float16"),
        _run(ref, Corpus.read(CORPUS_JSONL)),
        _run(_fake(tmp_path, "bytes", tokenizer="bytes")),
        _run(_fake(tmp_path, "nobos", bos=False)),
    ):
        assert changed.protocol.fingerprint != base.protocol.fingerprint


def test_comparing_across_protocols_is_refused_in_one_line(tmp_path: Path) -> None:
    ref = _fake(tmp_path, "ref")
    with pytest.raises(ProtocolMismatch) as info:
        compare(_run(ref), _run(ref, stride=16), labels=("ref", "cand"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("perplexity of cand (protocol ")
    assert "stride 32 vs 16" in message and message.endswith("not compared")


def test_the_same_model_passes_and_a_worse_one_regresses(tmp_path: Path) -> None:
    ref = _run(_fake(tmp_path, "ref"))
    same = compare(ref, _run(_fake(tmp_path, "same")), tolerance=0.02)
    assert same.paired is not None and same.paired.ratio == 1.0 and same.verdict is Verdict.PASS
    assert same.paired.correlation == pytest.approx(1.0)
    worse = compare(ref, _run(_fake(tmp_path, "worse", scale=1.1, noise=0.3)), tolerance=0.02)
    assert worse.paired is not None and worse.verdict is Verdict.REGRESSED
    assert worse.paired.ratio_lower is not None and worse.paired.ratio_lower > 1.02
    assert worse.byte_ratio == pytest.approx(1.1, rel=0.05)
    assert compare(ref, _run(_fake(tmp_path, "w", scale=1.1)), tolerance=None).verdict is None


def test_a_tokenizer_change_compares_bits_per_byte_only(tmp_path: Path) -> None:
    text = Corpus.read(CORPUS)
    ref = _run(_fake(tmp_path, "ref"), text)
    other = _run(_fake(tmp_path, "bytes", tokenizer="bytes"), text)
    result = compare(ref, other, tolerance=0.02, labels=("ref", "bytes"))
    assert result.paired is None and result.verdict is Verdict.INCONCLUSIVE
    assert result.refused is not None and "not comparable" in result.refused and "\n" not in result.refused
    assert result.byte_ratio == pytest.approx(other.bits_per_byte / ref.bits_per_byte)


def test_without_a_bos_the_first_token_and_its_bytes_are_not_scored(tmp_path: Path) -> None:
    corpus = Corpus.read(CORPUS)
    run = _run(_fake(tmp_path, "nobos", bos=False), corpus)
    assert run.protocol.prefix == ()
    assert run.protocol.scored == run.protocol.tokens - 1
    assert run.protocol.bytes == len(corpus.text.encode()) - 1
    assert run.ppl == pytest.approx(math.exp(run.total_nll / run.protocol.scored))


def test_out_of_memory_halves_the_batch_of_windows(tmp_path: Path) -> None:
    script = tmp_path / "oom.json"
    script.write_text(json.dumps({"oom_above": 2}))
    backend = FakeBackend.load(parse_spec(f"oom=fake:{script}"), "cpu", "auto")
    sizer = BatchSize(16)
    run = _run(backend, batch=sizer)
    assert sizer.size == 2
    assert run.nll == _run(_fake(tmp_path, "ref")).nll


def test_the_run_reads_back_and_a_tampered_fingerprint_is_refused(tmp_path: Path) -> None:
    run = _run(_fake(tmp_path, "ref"))
    data = json.loads(json.dumps(run.to_dict()))
    assert PerplexityRun.from_dict(data).nll == run.nll
    data["protocol"]["stride"] = 31
    with pytest.raises(ValueError, match="is not that of its protocol"):
        PerplexityRun.from_dict(data)


def test_a_backend_without_a_tokenizer_cannot_score_a_corpus() -> None:
    class Plain(Backend):
        label = "plain"

        def generate(self, requests: list[GenerationRequest]) -> list[str]:  # type: ignore[override]
            return [""] * len(requests)

        def describe(self) -> dict[str, Any]:
            return {}

    with pytest.raises(BackendError, match="plain: this backend cannot score a corpus"):
        _run(Plain())
    with pytest.raises(BackendError, match="cannot score token windows"):
        Plain().window_logprobs([[1, 2]], [1])
    assert CorpusTokens((1,), (), "t").first_bytes == 0


# -- the paired statistics ------------------------------------------------------------


def test_the_clustered_interval_is_statsmodels_cluster_robust_mean() -> None:
    sm = pytest.importorskip("statsmodels.api")
    import numpy as np

    rng = np.random.default_rng(7)
    tokens = rng.integers(20, 60, size=25)
    per_token_ref = [rng.gamma(2.0, 1.0, size=n) for n in tokens]
    per_token_cand = [r + rng.normal(0.05, 0.3, size=r.size) + rng.normal(0, 0.1) for r in per_token_ref]
    result = paired_ratio(
        [float(r.sum()) for r in per_token_ref], [float(c.sum()) for c in per_token_cand], list(tokens), 0.05
    )
    diffs = np.concatenate([c - r for r, c in zip(per_token_ref, per_token_cand, strict=True)])
    groups = np.repeat(np.arange(tokens.size), tokens)
    fit = sm.OLS(diffs, np.ones_like(diffs)).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    assert result.ln_ratio == pytest.approx(float(fit.params[0]), rel=1e-12)
    assert result.se == pytest.approx(float(fit.bse[0]), rel=1e-9)
    low, high = fit.conf_int(alpha=0.10)[0]  # two-sided 90 %: the one-sided 95 % bounds
    assert (result.lower, result.upper) == pytest.approx((low, high), rel=1e-9)


def test_ppl_is_total_over_total_not_a_mean_of_window_means() -> None:
    result = paired_ratio([10.0, 1.0], [12.0, 1.0], [10, 1])
    assert result.ln_ratio == pytest.approx(2.0 / 11)  # a mean of window means would say 0.1
    assert result.tokens == 11 and result.windows == 2


def test_one_window_has_no_interval() -> None:
    result = paired_ratio([10.0], [11.0], [10])
    assert result.se is None and result.lower is None and result.correlation is None
    assert result.verdict(0.02) is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(
    ("lower", "upper", "tolerance", "verdict"),
    [
        (math.log(1.03), math.log(1.05), 0.02, Verdict.REGRESSED),
        (math.log1p(0.02), math.log(1.05), 0.02, Verdict.INCONCLUSIVE),  # at the margin: not beyond it
        (math.log(0.99), math.log(1.0199), 0.02, Verdict.PASS),
        (math.log(0.99), math.log1p(0.02), 0.02, Verdict.INCONCLUSIVE),  # PASS is strict
        (0.0, 0.0, 0.0, Verdict.INCONCLUSIVE),  # identical models cannot beat a zero margin
        (None, None, 0.5, Verdict.INCONCLUSIVE),
    ],
)
def test_ratio_verdicts(lower: float | None, upper: float | None, tolerance: float, verdict: Verdict) -> None:
    assert ratio_verdict(lower, upper, tolerance) is verdict


@pytest.mark.parametrize(
    ("ref", "cand", "tokens", "message"),
    [
        ([1.0], [1.0, 2.0], [1], "differ in length"),
        ([], [], [], "at least one token"),
        ([1.0], [1.0], [0], "at least one token"),
        ([1.0], [math.inf], [1], "not finite"),
    ],
)
def test_bad_statistics_input_is_refused(
    ref: list[float], cand: list[float], tokens: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        paired_ratio(ref, cand, tokens)


# -- the corpus and the options -----------------------------------------------------------


def test_a_jsonl_corpus_joins_its_documents(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n{"text": ""}\n')
    corpus = Corpus.read(path)
    assert corpus.documents == ("one", "two")
    assert corpus.text == "one" + SEPARATOR + "two"
    plain = tmp_path / "c.txt"
    plain.write_text("one\n\ntwo")
    assert Corpus.read(plain).digest == corpus.digest  # the digest is of the text scored


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.jsonl", '{"text": "a"}\nnot json\n', "line 2: not valid JSON"),
        ("c.jsonl", '{"body": "a"}\n', "line 1: no string 'text' field"),
        ("c.jsonl", "\n", "holds no text"),
        ("c.txt", "  \n", "holds no text"),
    ],
)
def test_a_bad_corpus_is_one_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        Corpus.read(path)


def _config(tmp_path: Path, **options: Any) -> GateConfig:
    values = {"quant_reference": str(REPO / "models" / "tiny-ref"), **options}
    return GateConfig.from_sources(
        option=lambda name: values.get(name),
        ini=lambda name: [] if name in ("quant_candidate", "quant_slice_tolerance") else None,
        cli_dir=tmp_path,
        ini_dir=tmp_path,
        environ={},
    )


def test_the_options_make_the_settings(tmp_path: Path) -> None:
    assert _config(tmp_path).perplexity is None
    assert "perplexity" not in _config(tmp_path).to_dict()  # a report without it reads as before
    config = _config(
        tmp_path,
        quant_ppl_corpus=str(CORPUS),
        quant_ppl_max_length="128",
        quant_ppl_stride="auto",
        quant_ppl_tolerance="0.05",
    )
    assert config.perplexity is not None
    assert (config.perplexity.max_length, config.perplexity.stride, config.perplexity.tolerance) == (
        128,
        None,
        0.05,
    )
    assert config.to_dict()["perplexity"] == {
        "corpus": str(CORPUS),
        "max_length": 128,
        "stride": "auto",
        "tolerance": 0.05,
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quant_ppl_stride": "8"}, "--quant-ppl-stride needs --quant-ppl-corpus"),
        ({"quant_ppl_tolerance": "0.1"}, "--quant-ppl-tolerance needs --quant-ppl-corpus"),
        ({"quant_ppl_corpus": "missing.txt"}, "--quant-ppl-corpus: no such file: "),
        ({"quant_ppl_corpus": str(CORPUS), "quant_ppl_max_length": "1"}, "at least 2 or auto, got '1'"),
        ({"quant_ppl_corpus": str(CORPUS), "quant_ppl_stride": "x"}, "--quant-ppl-stride must be an integer"),
        (
            {"quant_ppl_corpus": str(CORPUS), "quant_ppl_max_length": "64", "quant_ppl_stride": "65"},
            "--quant-ppl-stride 65 exceeds --quant-ppl-max-length 64",
        ),
        ({"quant_ppl_corpus": str(CORPUS), "quant_ppl_tolerance": "-1"}, "--quant-ppl-tolerance"),
        (
            {"quant_ppl_corpus": str(CORPUS), "quant_shard": "1/2", "quant_records": "records"},
            "--quant-ppl-corpus is measured by a run that gates",
        ),
        ({"quant_ppl_corpus": str(CORPUS), "quant_merge": ["records"]}, "a --quant-merge measure no model"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        _config(tmp_path, **options)
    assert "\n" not in str(info.value)


# -- the executor ----------------------------------------------------------------------


def test_the_executor_measures_each_model_in_turn_and_keeps_errors_per_model(tmp_path: Path) -> None:
    from pytest_quantgate.core.executor import Executor

    class Broken(FakeBackend):
        def window_logprobs(self, windows: Any, first_scored: Any) -> list[list[float]]:
            raise RuntimeError("boom")

    specs = {}
    for label in ("ref", "cand", "broken"):
        script = tmp_path / f"{label}.json"
        script.write_text(json.dumps({"perplexity": {"scale": 1.1} if label == "cand" else {}}))
        specs[label] = parse_spec(f"{label}=fake:{script}")
    loaded: list[str] = []

    def loader(spec: Any, *, device: str, dtype: str) -> Backend:
        loaded.append(spec.label)
        kind = Broken if spec.label == "broken" else FakeBackend
        return kind.load(spec, device, dtype)

    config = GateConfig(
        reference=specs["ref"],
        candidates=(specs["cand"], specs["broken"]),
        perplexity=PerplexitySettings(Corpus.read(CORPUS), max_length=64, stride=32),
    )
    executor = Executor(config, loader=loader)
    facts = executor.measure_perplexity()
    assert loaded == ["ref", "cand", "broken"]  # in turn, the reference first
    assert not any(executor.pool.is_loaded(label) for label in loaded)  # each freed after
    assert facts["broken"]["perplexity"] == {"error": "broken: scoring the corpus failed: RuntimeError: boom"}
    assert facts["cand"]["loads"] == 1 and facts["cand"]["label"] == "cand"
    ref = PerplexityRun.from_dict(facts["ref"]["perplexity"])
    cand = PerplexityRun.from_dict(executor.pool.facts["cand"]["perplexity"])
    assert compare(ref, cand, tolerance=0.02).verdict is Verdict.REGRESSED
    assert executor.measure_perplexity(skip={"ref"}) == {}  # no reference: nothing measured
