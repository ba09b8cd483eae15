"""The worker side of a session, without pytest: models, plan, generation, checks.

:class:`Executor` lives in every process that runs tests (the only process
without xdist, each worker with it). It owns the :class:`ModelPool`, the plan
of cases in groups, and their transcripts on every model, and turns a test
body's verdict on each model's output into a :class:`~.cases.CaseRecord`.
The controller's side — records to gate to report — is
:mod:`.aggregator`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from ..backends.base import Backend, BackendError, GenerationRequest, TokenScores
from ..backends.registry import load_backend
from ..storage.fingerprint import environment_versions, fingerprint_spec
from ..storage.store import DEFAULT_DIR_NAME, CacheMode, ResultCache
from ..values.transcript import CaseRun
from .cases import CaseSpec
from .config import GateConfig
from .cost import measure
from .divergence import Scoring, payload_to_scores, scores_to_payload
from .perplexity import measure as score_corpus
from .perplexity import resolve_lengths, windows_per_batch
from .pool import Emit, ModelPool, Progress, ReferenceUnavailable, token_counter
from .records import CaseRecord, ModelOutcome, Outcome, resolve_skips
from .runner import BatchSize, run_cases
from .source import case_fingerprint

__all__ = ["DEFAULT_GROUP", "Executor", "ReferenceUnavailable"]


#: The group of cases generated together when nothing divides them.
DEFAULT_GROUP = "session"
#: A model's facts kept in the cache with its results: what it is, not what one run of it cost.
CACHED_FACTS = (
    "device",
    "dtype",
    "quantization",
    "parameters",
    "weight_bytes",
    "context",
    "tokenizer",
    "checkpoint_generation_config",
    "torch",
    "transformers",
)

#: A check of one model's run of a case: ``check(run) -> (outcome, message)``.
Check = Callable[[CaseRun], tuple[Outcome, "str | None"]]


class Executor:
    """Generates cases on every model, a group at a time, and checks them.

    Cases are planned into groups before any test runs; the first case
    asked for in a group generates the whole group on every model (batched,
    one model after another), so a group is the unit of batching — the
    whole session by default, a worker's shard under xdist.
    """

    def __init__(
        self, config: GateConfig, emit: Emit | None = None, loader: Callable[..., Backend] = load_backend
    ):
        self.config = config
        self.emit: Emit = emit or (lambda line: None)
        self.pool = ModelPool(config, self.emit, loader)
        self._groups: dict[str, dict[str, CaseSpec]] = {}
        self._group_of: dict[str, str] = {}
        self._generated: set[str] = set()
        self._runs: dict[str, dict[str, CaseRun]] = {}
        self._recorded: set[str] = set()  # keys of the cases whose record was made
        self._batch_sizes: dict[str, BatchSize] = {}
        self._cache: ResultCache | None = None
        self._fingerprints: dict[str, str | None] = {}
        self._said: set[str] = set()  # served models whose cache being off was reported
        #: ``--quant-divergence`` and ``--quant-noise-floor``: scores, divergences, the second run.
        self.scoring = Scoring(
            self.labels if config.reference is not None else [""],
            divergence=config.divergence,
            noise_floor=config.noise_floor,
            emit=self.emit,
        )
        #: Seconds between progress updates, and whether only the last line is shown.
        self.progress_every = 30.0 if os.environ.get("CI") else 5.0
        self.quiet = False

    @property
    def labels(self) -> list[str]:
        """The reference's label, then the candidates'."""
        assert self.config.reference is not None
        return [self.config.reference.label, *(c.label for c in self.config.candidates)]

    def plan(self, case: CaseSpec, group: str = DEFAULT_GROUP) -> None:
        """Add a case to a group; a case already planned keeps its group."""
        if case.key in self._group_of:
            return
        self._group_of[case.key] = group
        self._groups.setdefault(group, {})[case.key] = case

    def is_generated(self, key: str) -> bool:
        """Whether the group of the case ``key`` has been generated."""
        return self._group_of[key] in self._generated

    @property
    def unavailable(self) -> dict[str, str]:
        """Models that could not be loaded -> why."""
        return dict(self.pool.failures)

    def generate(self, group: str) -> None:
        """Run every case of ``group`` on every model, one model after another.

        The reference first: when it cannot be loaded, nothing can be gated
        and :class:`ReferenceUnavailable` stops here, before any candidate
        loads. A candidate that cannot be loaded is left out (once; see
        :attr:`unavailable`) and the others run.

        One model is in memory at a time: each is freed once the group has
        run on it (all steps of every trajectory included), before the next
        loads, unless ``keep_loaded`` is set, the model is pinned (a fixture
        handed it out), or other groups are still to be generated.

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        cases = list(self._groups.get(group, {}).values())
        self._generated.add(group)
        reference = self.labels[0]
        if reference in self.pool.failures:
            raise ReferenceUnavailable(self.pool.failures[reference])
        for label in self.labels:
            if label in self.pool.failures:
                continue
            with self._library_warnings(label):
                cached: dict[str, CaseRun] = {}
                todo = cases
                if label == reference:
                    cached = self._cached(label, cases)
                    todo = [c for c in cases if c.key not in cached]
                    if self.config.divergence:
                        self.scoring.reference_scores.update(self._cached_scores(label, cases, cached))
                if not todo and not self.scoring.needs_model(label, cases):
                    self._runs.setdefault(label, {}).update(cached)
                    continue
                try:
                    backend = self.pool.get(label)
                except BackendError as exc:
                    if label == reference:
                        raise ReferenceUnavailable(self.pool.failures[label]) from exc
                    continue
                progress = Progress(
                    self.emit,
                    label,
                    len(todo),
                    every=self.progress_every,
                    quiet=self.quiet,
                    tokens=token_counter(backend),
                )
                sizer = self._batch_size(label)
                before = sizer.size
                runs = {}
                if todo:
                    tokens_before = token_counter(backend)()
                    started = time.perf_counter()
                    runs = run_cases(backend, todo, batch_size=sizer, on_progress=progress)
                    self._record_cost(
                        label, backend, time.perf_counter() - started, tokens_before, sizer, len(todo)
                    )
                    if label == reference:
                        self._store(label, todo, runs)
                runs.update(cached)
                if sizer.size < before:
                    self.emit(
                        f"quantgate: {label}: out of memory at batch {before}; continued at {sizer.size}"
                    )
                self._runs.setdefault(label, {}).update(runs)
                self._score(label, backend, cases)
            if not self.config.keep_loaded and all(g in self._generated for g in self._groups):
                self.pool.release(label)

    # -- divergence and the noise floor (core.divergence.Scoring) -------------------

    def _score(self, label: str, backend: Backend, cases: list[CaseSpec]) -> None:
        """While the model is loaded: its scores for divergence, and the reference's second run."""
        runs = self._runs.get(self.labels[0], {})
        if self.config.divergence:
            started = time.perf_counter()
            scores = self.scoring.score(label, backend, cases, runs, batch_size=self._batch_size(label).size)
            self._store_scores(label, cases, scores)
            facts = self.pool.facts.setdefault(label, {})
            facts["score_seconds"] = round(facts.get("score_seconds", 0.0) + time.perf_counter() - started, 3)
        if self.config.noise_floor and label == self.labels[0]:
            self.scoring.run_noise_floor(backend, cases, runs)

    def _cached_scores(
        self, label: str, cases: list[CaseSpec], cached: dict[str, CaseRun]
    ) -> dict[str, list[TokenScores]]:
        """The reference's scores the cache holds for the cases whose runs it held."""
        if self.config.cache_mode is CacheMode.OFF or not cached:
            return {}
        fingerprint = self._run_fingerprint(label)
        if fingerprint is None:
            return {}
        wanted = _fingerprints([c for c in cases if c.key in cached])
        out = {}
        for key, payload in self.cache.get_scores(fingerprint, wanted).items():
            scores = payload_to_scores(payload)
            if scores is not None and len(scores) == len(cached[key].turns):
                out[key] = scores
        return out

    def _store_scores(self, label: str, cases: list[CaseSpec], scores: dict[str, list[TokenScores]]) -> None:
        if not scores or not self.config.cache_mode.writes:
            return
        fingerprint = self._run_fingerprint(label)
        if fingerprint is not None:
            payloads = {key: scores_to_payload(value) for key, value in scores.items()}
            self.cache.put_scores(fingerprint, _fingerprints(cases), payloads)

    # -- the reference cache ------------------------------------------------

    @property
    def cache(self) -> ResultCache:
        """The reference cache, opened on first use (a damaged file is rebuilt, with one line)."""
        if self._cache is None:
            directory = self.config.cache_dir or Path(DEFAULT_DIR_NAME)
            self._cache = ResultCache.open(directory, self.config.cache_mode)
            for line in self._cache.warnings:
                self.emit(line)
        return self._cache

    def _run_fingerprint(self, label: str) -> str | None:
        """What the model's results depend on: its files, how it loads, the software; None: uncacheable."""
        if label not in self._fingerprints:
            spec = self.pool.specs[label]
            device = self.config.resolved_device if spec.kind.device else "cpu"
            exclude = [self.config.cache_dir] if self.config.cache_dir else []
            versions = None
            if spec.kind.needs_calibration and self.config.calibration is not None:
                # Quantized on the fly: its results depend on the texts it was calibrated on.
                versions = {**environment_versions(), "calibration": self.config.calibration.digest}
            self._fingerprints[label] = fingerprint_spec(
                spec, dtype=self.config.dtype, device=device, exclude=exclude, versions=versions
            )
            if self._fingerprints[label] is None and spec.kind.target == "url":
                self._fingerprints[label] = self._reported_fingerprint(label)
        return self._fingerprints[label]

    def _reported_fingerprint(self, label: str) -> str | None:
        """A served model's fingerprint from the identity its server reports (its ``identity``
        fact), or None. The model is loaded to ask: for a served model that is a few requests."""
        try:
            self.pool.get(label)
        except BackendError:
            return None  # the failure is reported where generation asks for the model
        identity = self.pool.facts.get(label, {}).get("identity")
        if not isinstance(identity, str) or not identity:
            return None
        spec = self.pool.specs[label]
        return fingerprint_spec(spec, dtype=self.config.dtype, device="cpu", identity=identity)

    def _cached(self, label: str, cases: list[CaseSpec]) -> dict[str, CaseRun]:
        """The cases whose results the cache holds for this model, by key (none when it is off)."""
        if self.config.cache_mode is CacheMode.OFF:
            return {}
        fingerprint = self._run_fingerprint(label)
        if fingerprint is None and self.pool.specs[label].kind.target == "url" and label not in self._said:
            # A served model's weights cannot be fingerprinted: say so, rather than cache by its name.
            self._said.add(label)
            self.emit(
                f"quantgate: {label}: reference cache off for this served model (its weights cannot be "
                "fingerprinted and its server reports no identity; pin one with ?revision= to cache it)"
            )
        found = self.cache.get_runs(fingerprint, _fingerprints(cases)) if fingerprint is not None else {}
        facts = self.pool.facts.setdefault(label, self._spec_facts(label))
        facts["cached_cases"] = facts.get("cached_cases", 0) + len(found)
        if found and not self.pool.is_loaded(label):
            # What the model is, from the run that made these results: the report shows its
            # weights and dtype though it is not loaded.
            for key, value in (self.cache.get_facts(fingerprint) or {}).items():
                facts.setdefault(key, value)
        if found:
            rest = len(cases) - len(found)
            # A served model may be loaded already; divergence and the noise floor may still load it.
            later = self.config.divergence or self.config.noise_floor
            idle = "" if self.pool.is_loaded(label) or later else ", the model is not loaded"
            then = f"generating {rest}" if rest else f"nothing to generate{idle}"
            self.emit(f"quantgate: {label}: {len(found)}/{len(cases)} cases from the cache; {then}")
        return found

    def _store(self, label: str, cases: list[CaseSpec], runs: dict[str, CaseRun]) -> None:
        if not self.config.cache_mode.writes:
            return
        fingerprint = self._run_fingerprint(label)
        if fingerprint is not None:
            self.cache.put_runs(fingerprint, _fingerprints(cases), runs)
            facts = self.pool.facts.get(label, {})
            self.cache.put_facts(fingerprint, {k: facts[k] for k in CACHED_FACTS if k in facts})

    def _spec_facts(self, label: str) -> dict[str, Any]:
        """Facts of a model known without loading it."""
        spec = self.pool.specs[label]
        return {"label": label, "spec": spec.text, "path": spec.path, "scheme": spec.scheme, "loads": 0}

    def _record_cost(
        self,
        label: str,
        backend: Backend,
        seconds: float,
        tokens_before: int | None,
        sizer: BatchSize,
        cases: int,
    ) -> None:
        """What generating cost on this model, into its facts for the report."""
        facts = self.pool.facts.setdefault(label, {})
        facts["generated_cases"] = facts.get("generated_cases", 0) + cases
        facts["generate_seconds"] = round(facts.get("generate_seconds", 0.0) + seconds, 3)
        facts["batch_size"] = sizer.size
        tokens = token_counter(backend)()
        if tokens is not None and tokens_before is not None:
            facts["generated_tokens"] = facts.get("generated_tokens", 0) + tokens - tokens_before
            if facts["generate_seconds"] > 0:
                facts["tokens_per_second"] = round(facts["generated_tokens"] / facts["generate_seconds"], 1)
        value = backend.peak_memory()
        if value is not None:
            facts["peak_memory_mib"] = round(value / 2**20, 1)

    def _batch_size(self, label: str) -> BatchSize:
        """The model's batch size: the configured (or auto) start, then whatever worked."""
        if label not in self._batch_sizes:
            device = str(self.pool.facts.get(label, {}).get("device") or "cpu")
            self._batch_sizes[label] = BatchSize(self.config.first_batch_size(device))
        return self._batch_sizes[label]

    @contextlib.contextmanager
    def _library_warnings(self, label: str) -> Iterator[None]:
        """Collect warnings that model libraries raise while loading/generating.

        They are not the suite's warnings: under ``filterwarnings = error``
        they would fail whichever test happened to trigger generation. They
        are summarised in one line instead, with the warnings the libraries
        logged while the model loaded (:attr:`Backend.library_messages`).
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        seen = sorted(
            {f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught}
            | set(self.pool.library_messages.pop(label, ()))
        )
        if seen:
            more = f" (+{len(seen) - 1} more)" if len(seen) > 1 else ""
            self.emit(f"quantgate: {label}: library warning {seen[0]}{more}")

    def run_of(self, label: str, key: str) -> CaseRun | None:
        """The transcript of a planned case on a model (generating its group first).

        None for a candidate that could not be loaded.

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        group = self._group_of[key]
        if group not in self._generated:
            self.generate(group)
        if label in self.pool.failures:
            if label == self.labels[0]:
                raise ReferenceUnavailable(self.pool.failures[label])
            return None
        return self._runs[label][key]

    def record(self, case: CaseSpec, check: Check) -> CaseRecord:
        """Check a planned case's output on every model; the record the controller gates.

        A candidate that could not be loaded has no outcome: the record
        lists it as unavailable. Skips are resolved across models
        (:func:`~.cases.resolve_skips`).

        Raises:
            ReferenceUnavailable: the reference could not be loaded.
        """
        outcomes: dict[str, ModelOutcome] = {}
        unavailable: dict[str, str] = {}
        for label in self.labels:
            run = self.run_of(label, case.key)
            if run is None:
                unavailable[label] = self.pool.failures[label]
                continue
            transcript = tuple(t.to_dict() for t in run.turns)
            result: Outcome
            message: str | None
            score: float | None = None
            if run.error is not None:
                result, message = "error", run.error
            elif run.failure is not None:  # a step the trajectory rejected: the body is not asked
                result, message = "fail", run.failure
            else:
                checked = check(run)
                result, message = checked
                score = getattr(checked, "score", None)  # a graded check's number (records.CheckResult)
            outcomes[label] = ModelOutcome(result, run.output, message, transcript, run.state, score=score)
        self._recorded.add(case.key)
        reference = self.labels[0]
        available = [label for label in self.labels[1:] if label in outcomes]
        noise = None
        if self.config.noise_floor and reference in outcomes:
            noise = self.scoring.noise_of(case.key, self._runs[reference][case.key], check)
        return CaseRecord(
            key=case.key,
            nodeid=case.nodeid,
            slices=case.slices,
            cluster=case.cluster,
            critical=case.critical,
            reference=self.labels[0],
            outcomes=resolve_skips(outcomes, self.labels[0]),
            tolerances=case.tolerances,
            prompt=case.prompt_text,
            params=case.params,
            unavailable=unavailable,
            trajectory=case.trajectory is not None,
            token_divergences=self.scoring.of_case(case.key, available) if self.config.divergence else {},
            max_kl=dict(case.max_kl),
            noise=noise,
        )

    def measure_cost(self, *, sample: int = 32) -> None:
        """Each model's cost (:mod:`.cost`) on a fixed sample of the planned prompts, into its facts.

        Apart from the quality run, after it: the first ``sample`` cases by key
        (the same on every machine), each model loaded in turn, timed at batch
        sizes 1, 8 and its run's, then freed.
        """
        planned = sorted((c for g in self._groups.values() for c in g.values()), key=lambda c: c.key)
        cases = [c for c in planned if c.prompt][:sample]
        if not cases:
            return
        new_tokens = max(2, min(max(c.settings.max_new_tokens for c in cases), 64))
        requests = [GenerationRequest(c.prompt, c.settings) for c in cases]
        for label in self.labels:
            if label in self.pool.failures:
                continue
            with self._library_warnings(label):
                try:
                    backend = self.pool.get(label)
                except BackendError:
                    continue
                self.emit(f"quantgate: {label}: measuring its cost on {len(cases)} prompts ...")
                size = self._batch_size(label).size
                cost = measure(backend, requests, batch_sizes=(1, 8, size), new_tokens=new_tokens)
            self.pool.facts.setdefault(label, {})["cost"] = cost.to_dict()
            if not self.config.keep_loaded:
                self.pool.release(label)

    def measure_perplexity(self, skip: Collection[str] = ()) -> dict[str, dict[str, Any]]:
        """Each model's perplexity on the ``--quant-ppl-corpus`` (:mod:`.perplexity`), into its facts.

        Apart from the quality run, after it, like :meth:`measure_cost`: each
        model loaded in turn, the reference first (``auto`` lengths are its
        context's), then freed. A model that cannot be scored gets its error
        instead (``{"error": line}``). Models in ``skip`` (they failed to load
        elsewhere) are left out.

        Returns:
            label -> ``{"perplexity": ..., "loads": loads made here}``, for
            the aggregator (:meth:`~..report.aggregator.Aggregator.add_model_facts`).
        """
        settings = self.config.perplexity
        out: dict[str, dict[str, Any]] = {}
        if settings is None:
            return out
        lengths: tuple[int, int] | None = None
        for label in self.labels:
            if label in self.pool.failures or label in skip:
                if lengths is None:  # the reference: nothing to compare with
                    return out
                continue
            loads = self.pool.loads.get(label, 0)
            with self._library_warnings(label):
                try:
                    backend = self.pool.get(label)
                except BackendError:
                    if lengths is None:
                        return out
                    continue
                facts = self.pool.facts.setdefault(label, {})
                try:
                    if lengths is None:
                        lengths = resolve_lengths(settings, facts.get("context"))
                    length, stride = lengths
                    self.emit(
                        f"quantgate: {label}: perplexity on {settings.corpus.path.name} "
                        f"(windows of {length} tokens, stride {stride}) ..."
                    )
                    device = str(facts.get("device") or "cpu")
                    run = score_corpus(
                        backend,
                        settings.corpus,
                        max_length=length,
                        stride=stride,
                        dtype=self.config.dtype,
                        context=facts.get("context"),
                        batch=BatchSize(windows_per_batch(length, device)),
                    )
                    result: dict[str, Any] = run.to_dict()
                    self.emit(
                        f"quantgate: {label}: perplexity {run.ppl:.4g} over {run.protocol.scored} tokens "
                        f"({run.bits_per_byte:.4g} bits/byte) in {run.seconds:.1f}s"
                    )
                except Exception as exc:  # this model's failure to score, not the session's
                    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    if not isinstance(exc, (BackendError, ValueError)) or not text:
                        text = f"{type(exc).__name__}: {text}".rstrip(": ")
                    result = {"error": text}
                    self.emit(f"quantgate: {label}: perplexity not measured: {text}")
            facts["perplexity"] = result
            loaded_here = self.pool.loads.get(label, 0) - loads
            out[label] = {**self._spec_facts(label), "perplexity": result, "loads": loaded_here}
            if not self.config.keep_loaded:
                self.pool.release(label)
            if lengths is None or "error" in out[self.labels[0]]["perplexity"]:
                return out  # the reference has none: the candidates' would be compared with nothing
        return out

    def unchecked(self) -> list[dict[str, Any]]:
        """The planned cases generated on some model but never checked (an interrupted run).

        Each with what every model that finished it replied, so that work
        done before an interruption is not lost from the report: builtins,
        by node id.
        """
        out = []
        for cases in self._groups.values():
            for key, case in cases.items():
                if key in self._recorded:
                    continue
                runs = {
                    label: self._runs[label][key] for label in self.labels if key in self._runs.get(label, {})
                }
                if not runs:
                    continue
                outputs = {
                    label: {
                        "output": run.output,
                        "error": run.error,
                        "transcript": [t.to_dict() for t in run.turns],
                    }
                    for label, run in runs.items()
                }
                out.append(
                    {"nodeid": case.nodeid, "key": key, "slices": list(case.slices), "outputs": outputs}
                )
        return sorted(out, key=lambda entry: entry["nodeid"])

    def close(self) -> None:
        self.pool.close()
        if self._cache is not None:
            self._cache.close()


def _fingerprints(cases: list[CaseSpec]) -> dict[str, str | None]:
    """Case key -> the case's cache fingerprint (None: not cacheable)."""
    return {c.key: case_fingerprint(c) for c in cases}
