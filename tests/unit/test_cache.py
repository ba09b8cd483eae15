"""The reference cache: fingerprints that miss on every change, storage that never lies."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
import types
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from pytest_quantgate.core.cases import CaseSpec
from pytest_quantgate.core.source import case_fingerprint, trajectory_source
from pytest_quantgate.core.trajectory import Trajectory
from pytest_quantgate.storage import fingerprint as fingerprint_module
from pytest_quantgate.storage.fingerprint import (
    DEFAULT_BLOCK_SIZE,
    WHOLE_LIMIT,
    device_type,
    environment_versions,
    fingerprint_spec,
    forget_fingerprints,
    model_fingerprint,
    run_fingerprint,
)
from pytest_quantgate.storage.store import (
    APPLICATION_ID,
    DB_NAME,
    CacheMode,
    ResultCache,
    parse_cache_mode,
)
from pytest_quantgate.values.prompts import GenerationSettings
from pytest_quantgate.values.specs import SCHEMES, ModelSpec, Scheme, parse_spec
from pytest_quantgate.values.transcript import CaseRun, Turn, payload_to_run, run_to_payload

# -- a checkpoint of our own ---------------------------------------------------------

TOKENIZER_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def weights(scale: float = 1.0) -> dict[str, np.ndarray]:
    """~1.6 MB of float32 tensors: above the whole-file limit, so the weights are sampled."""
    rng = np.random.default_rng(0)
    out = {"embed.weight": rng.standard_normal((512, 256), dtype=np.float32)}
    for layer in range(4):
        out[f"layers.{layer}.mlp.weight"] = rng.standard_normal((256, 256), dtype=np.float32)
        out[f"layers.{layer}.norm.weight"] = rng.standard_normal(256, dtype=np.float32)
    return {name: (t * np.float32(scale)).astype(np.float32) for name, t in out.items()}


def make_checkpoint(
    directory: Path,
    tiny_ref: Path,
    *,
    scale: float = 1.0,
    step: str = "100",
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    directory.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_ref / name, directory / name)
    save_file(tensors or weights(scale), str(directory / "model.safetensors"), metadata={"step": step})
    return directory


def header(path: Path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[: 8 + n]


@pytest.fixture
def ckpt(tmp_path: Path, tiny_ref: Path) -> Path:
    return make_checkpoint(tmp_path / "ckpt", tiny_ref)


@pytest.fixture(autouse=True)
def fresh_memo() -> Iterator[None]:
    forget_fingerprints()
    yield
    forget_fingerprints()


# -- model fingerprint -----------------------------------------------------------------


def test_same_content_same_fingerprint_anywhere(ckpt: Path, tmp_path: Path) -> None:
    first = model_fingerprint(ckpt)
    assert len(first) == 64 and model_fingerprint(ckpt) == first
    copy = shutil.copytree(ckpt, tmp_path / "elsewhere" / "other-name")
    assert model_fingerprint(copy) == first  # content, not location
    forget_fingerprints()
    assert model_fingerprint(ckpt) == first  # not an artefact of the memo


def test_files_loaders_never_read_are_ignored(ckpt: Path) -> None:
    before = model_fingerprint(ckpt)
    (ckpt / "README.md").write_text("# a model card\n")
    (ckpt / "LICENSE").write_text("MIT\n")
    (ckpt / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (ckpt / ".cache" / "huggingface").mkdir(parents=True)
    (ckpt / ".cache" / "huggingface" / "x.metadata").write_text("etag")
    (ckpt / ".quantgate").mkdir()
    (ckpt / ".quantgate" / "results.sqlite3").write_bytes(b"rows")
    assert model_fingerprint(ckpt) == before
    (ckpt / "cache-here").mkdir()
    (ckpt / "cache-here" / "results.sqlite3").write_bytes(b"rows")
    assert model_fingerprint(ckpt, exclude=[ckpt / "cache-here"]) == before
    assert model_fingerprint(ckpt) != before  # anything else counts


def test_one_byte_of_a_safetensors_header_misses(tmp_path: Path, tiny_ref: Path) -> None:
    a = make_checkpoint(tmp_path / "a", tiny_ref, step="100")
    b = make_checkpoint(tmp_path / "b", tiny_ref, step="101")
    ha, hb = header(a / "model.safetensors"), header(b / "model.safetensors")
    assert len(ha) == len(hb) and sum(x != y for x, y in zip(ha, hb, strict=True)) == 1
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    assert model_fingerprint(a) != model_fingerprint(b)


def test_weights_scaled_by_1_001_with_identical_headers_miss(tmp_path: Path, tiny_ref: Path) -> None:
    """A re-fine-tuned model of the same architecture: same headers, same sizes, other weights."""
    a = make_checkpoint(tmp_path / "a", tiny_ref)
    b = make_checkpoint(tmp_path / "b", tiny_ref, scale=1.001)
    fa, fb = a / "model.safetensors", b / "model.safetensors"
    assert header(fa) == header(fb)
    assert fa.stat().st_size == fb.stat().st_size > WHOLE_LIMIT  # sampled, not hashed whole
    assert fa.read_bytes() != fb.read_bytes()
    assert model_fingerprint(a) != model_fingerprint(b)


def test_one_retrained_small_tensor_misses(tmp_path: Path, tiny_ref: Path) -> None:
    """Every tensor has a sampled block: training only a norm (1 KiB of 1.6 MB) is caught."""
    base = weights()
    tuned = dict(base)
    tuned["layers.2.norm.weight"] = base["layers.2.norm.weight"] + np.float32(1e-3)
    a = make_checkpoint(tmp_path / "a", tiny_ref, tensors=base)
    b = make_checkpoint(tmp_path / "b", tiny_ref, tensors=tuned)
    assert header(a / "model.safetensors") == header(b / "model.safetensors")
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_few_weights_outside_the_samples_are_the_stated_residual_risk(
    tmp_path: Path, tiny_ref: Path
) -> None:
    """Pins the limit the README states beside --quant-cache=refresh: not every byte is read."""
    a = make_checkpoint(tmp_path / "a", tiny_ref)
    b = make_checkpoint(tmp_path / "b", tiny_ref)
    path = b / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8 : 8 + n])["embed.weight"]["data_offsets"]
    at = 8 + n + begin + 3 * DEFAULT_BLOCK_SIZE + 10  # past the file's first block, before the middle
    assert at < 8 + n + (begin + end) // 2 - DEFAULT_BLOCK_SIZE
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    assert model_fingerprint(a, blocks=2) == model_fingerprint(b, blocks=2)


@pytest.mark.parametrize(
    "change",
    ["tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json", "rename", "add"],
)
def test_any_other_file_change_misses(ckpt: Path, change: str) -> None:
    before = model_fingerprint(ckpt)
    if change == "rename":
        (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    elif change == "add":
        (ckpt / "chat_template.jinja").write_text("{{ messages }}")
    else:
        text = (ckpt / change).read_text()
        (ckpt / change).write_text(text.replace(":", ": ", 1))
    assert model_fingerprint(ckpt) != before


def test_a_single_file_is_fingerprinted_by_content(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"replies": ["x"]}')
    (tmp_path / "b.json").write_text('{"replies": ["x"]}')
    (tmp_path / "c.json").write_text('{"replies": ["y"]}')
    assert model_fingerprint(tmp_path / "a.json") == model_fingerprint(tmp_path / "b.json")
    assert model_fingerprint(tmp_path / "a.json") != model_fingerprint(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError):
        model_fingerprint(tmp_path / "missing")


def test_zip_checkpoints_are_covered_by_their_members_crcs(tmp_path: Path) -> None:
    """torch.save's .bin is a zip whose directory holds a CRC32 of every tensor's data."""
    rng = np.random.default_rng(1)
    blobs = [rng.bytes(600_000) for _ in range(3)]
    for name, middle in (("a", blobs[1]), ("b", blobs[1][:300_000] + b"\0" + blobs[1][300_001:])):
        (tmp_path / name).mkdir()
        with zipfile.ZipFile(tmp_path / name / "pytorch_model.bin", "w", zipfile.ZIP_STORED) as z:
            for i, data in enumerate((blobs[0], middle, blobs[2])):
                z.writestr(f"archive/data/{i}", data)
    assert blobs[1][300_000] != 0
    # Two blocks (the first and the last) never see the middle member: its CRC does.
    assert model_fingerprint(tmp_path / "a", blocks=2) != model_fingerprint(tmp_path / "b", blocks=2)


def make_hub_repo(root: Path, source: Path, *, revision: str = "0123abcd") -> Path:
    """huggingface_hub's cache layout: snapshots/<rev>/<file> -> ../../blobs/<content hash>."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for file in sorted(source.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copy(file, blob)
        try:
            os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / file.name)
        except OSError as exc:  # Windows without the symlink privilege
            pytest.skip(f"symlinks unavailable: {exc}")
    return snapshot


def test_hub_snapshots_use_blob_names_without_reading_blobs(
    ckpt: Path, tmp_path: Path, tiny_ref: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = make_hub_repo(repo, ckpt)
    opened: list[str] = []

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(fingerprint_module, "open", recording_open, raising=False)
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything: the recorder decides then
        for blob in (repo / "blobs").iterdir():
            blob.chmod(0)
    fp = model_fingerprint(snapshot)
    assert opened == []
    # Another revision (or a second download) of the same content: the same fingerprint.
    assert model_fingerprint(make_hub_repo(repo, ckpt, revision="4567ef01")) == fp
    for blob in (repo / "blobs").iterdir():
        blob.chmod(0o644)
    # Other content has another blob name.
    other = make_checkpoint(tmp_path / "other", tiny_ref, scale=1.001)
    other_repo = tmp_path / "hub" / "models--org--other"
    assert model_fingerprint(make_hub_repo(other_repo, other)) != fp
    # A plain copy of the same files is read, and is fingerprinted by what is read.
    assert opened == [] and model_fingerprint(ckpt) != fp and opened


def test_digests_are_memoized_until_a_file_changes(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(fingerprint_module, "open", recording_open, raising=False)
    first = model_fingerprint(ckpt)
    assert len(opened) == len(TOKENIZER_FILES) + 1
    opened.clear()
    assert model_fingerprint(ckpt) == first and opened == []
    # Same size, same name, new content: the stat identity changes (ctime at least).
    save_file(weights(1.001), str(ckpt / "model.safetensors"), metadata={"step": "100"})
    assert model_fingerprint(ckpt) != first
    assert [Path(p).name for p in opened] == ["model.safetensors"]


def test_fingerprints_are_fast(tiny_ref: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    model_fingerprint(tiny_ref)
    tiny = time.perf_counter() - started
    # A 256 MiB safetensors file (sparse: sampling costs the same whatever the content).
    size = 64 << 20
    head = json.dumps({"w": {"dtype": "F32", "shape": [size], "data_offsets": [0, 4 * size]}}).encode()
    big = tmp_path / "big" / "model.safetensors"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        f.truncate(8 + len(head) + 4 * size)
    started = time.perf_counter()
    model_fingerprint(big.parent)
    large = time.perf_counter() - started
    # Measured ~1 ms and ~3 ms; the bounds leave room for a loaded CI machine.
    assert tiny < 0.5 and large < 1.0, (tiny, large)


# -- run and case fingerprints -----------------------------------------------------------

RUN: dict[str, Any] = {
    "scheme": None,
    "options": {"bits": 4, "group_size": 32},
    "dtype": "float32",
    "device_type": "cuda",
    "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
}


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"scheme": "rtn4"}, True),
        ({"options": {"bits": 3, "group_size": 32}}, True),
        ({"options": {"group_size": 32, "bits": 4}}, False),
        ({"dtype": "bfloat16"}, True),
        ({"device_type": "cpu"}, True),
        ({"device_type": "cuda:1"}, False),
        ({"versions": {"torch": "2.13.1", "transformers": "5.24.0"}}, True),
        ({"versions": {"transformers": "5.24.0", "torch": "2.13.0"}}, False),
    ],
)
def test_run_fingerprint_covers_how_the_model_is_loaded(change: dict[str, Any], differs: bool) -> None:
    base = run_fingerprint("m" * 64, **RUN)
    assert (run_fingerprint("m" * 64, **{**RUN, **change}) != base) is differs
    assert run_fingerprint("n" * 64, **RUN) != base


@pytest.mark.parametrize(
    ("device", "kind"), [("cpu", "cpu"), ("cuda:1", "cuda"), ("CUDA", "cuda"), ("mps", "mps")]
)
def test_device_type(device: str, kind: str) -> None:
    assert device_type(device) == kind


def test_auto_must_be_resolved_first() -> None:
    with pytest.raises(ValueError, match="resolve"):
        device_type("auto")


def test_environment_versions_import_nothing() -> None:
    already = set(sys.modules)
    versions = environment_versions()
    assert {"torch", "transformers", "tokenizers", "pytest-quantgate", "source"} <= set(versions)
    assert versions["torch"] == importlib.metadata.version("torch")
    assert environment_versions(["no-such-package-here"], [])["no-such-package-here"] == "-"
    assert environment_versions(modules=["pytest_quantgate.core.runner"])["source"] != versions["source"]
    assert "torch" in already or "torch" not in sys.modules


def test_fingerprint_spec(tiny_ref: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"torch": "x"}
    plain = fingerprint_spec(parse_spec(str(tiny_ref)), dtype="auto", device="cpu", versions=versions)
    assert plain is not None
    assert plain == fingerprint_spec(parse_spec(str(tiny_ref)), dtype="auto", device="cpu", versions=versions)
    rtn = fingerprint_spec(parse_spec(f"rtn4:{tiny_ref}"), dtype="auto", device="cpu", versions=versions)
    assert rtn not in (None, plain)
    assert fingerprint_spec(parse_spec(str(tiny_ref)), dtype="auto", device="cpu") not in (None, plain)
    missing = ModelSpec(label="gone", path=str(tiny_ref / "missing"))
    assert fingerprint_spec(missing, dtype="auto", device="cpu") is None
    monkeypatch.setitem(SCHEMES, "served", Scheme("served", "a served model", target="url"))
    served = ModelSpec(label="s", path="http://localhost:8000/v1", scheme="served")
    assert fingerprint_spec(served, dtype="auto", device="cpu") is None


def spec(key: str = "k1", *, prompt: Any = "17+25=", settings: GenerationSettings | None = None) -> CaseSpec:
    return CaseSpec(
        key=key, nodeid=f"t.py::test[{key}]", prompt=prompt, settings=settings or GenerationSettings()
    )


def test_case_fingerprint_covers_key_prompt_and_settings() -> None:
    base = case_fingerprint(spec())
    assert base is not None and base == case_fingerprint(spec())
    chat = (((("content", "hi"), ("role", "user")),),)[0]
    others = [
        spec("k2"),
        spec(prompt="17+26="),
        spec(prompt=chat),
        spec(settings=GenerationSettings(max_new_tokens=65)),
        spec(settings=GenerationSettings(stop=("\n",))),
        spec(settings=GenerationSettings(chat_template=False)),
    ]
    fps = [case_fingerprint(s) for s in others]
    assert len({base, *fps}) == len(others) + 1


TRAJECTORY = """
import collections

from pytest_quantgate.core.trajectory import Trajectory

LIMIT = {limit}
Step = collections.namedtuple("Step", "text")  # a helper class without source of its own
exec("def shout(text):\\n    return text.{shout}()")  # a helper function without source text


def parse(reply):
    return reply.strip(){strip}


class Walk(Trajectory):
    max_steps = 3

    def __init__(self, start):
        self.start = start

    def initial_state(self):
        return {{"text": self.start}}

    def render(self, state):
        return state["text"]

    def apply(self, state, reply):
        step = Step(shout(parse(reply)[:LIMIT]))
        return {{"text": state["text"] + step.text{apply}}}


def test_walk(case, final_state):
    assert {check}
"""
BASE_SOURCE = {"limit": 2, "strip": "", "shout": "upper", "apply": "", "check": "final_state"}


def load_module(directory: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Import ``source`` from a file (source files, so inspect can read them)."""
    path = directory / f"{name}.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, name, module)
    module_spec.loader.exec_module(module)
    return module


def walk_case(module: types.ModuleType) -> CaseSpec:
    return CaseSpec(
        key="walk",
        nodeid="t.py::test_walk[a]",
        prompt="a",
        settings=GenerationSettings(max_new_tokens=4),
        trajectory=module.Walk("a"),
    )


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({}, False),
        ({"apply": ' + "!"'}, True),  # the class's own method
        ({"strip": ".lower()"}, True),  # a module-level helper it calls
        ({"limit": 3}, True),  # a module-level constant it reads
        ({"shout": "lower"}, True),  # a helper without source text: by its bytecode
        ({"check": "final_state['text']"}, False),  # the test body: checks re-run on cached outputs
    ],
)
def test_case_fingerprint_covers_a_trajectorys_source(
    change: dict[str, Any], differs: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: Any
) -> None:
    tag = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    base = load_module(tmp_path, f"qg_walk_base_{tag}", TRAJECTORY.format(**BASE_SOURCE), monkeypatch)
    other = load_module(
        tmp_path, f"qg_walk_other_{tag}", TRAJECTORY.format(**{**BASE_SOURCE, **change}), monkeypatch
    )
    assert base.Walk is not other.Walk and base.Walk.__qualname__ == other.Walk.__qualname__
    fp_base, fp_other = case_fingerprint(walk_case(base)), case_fingerprint(walk_case(other))
    assert fp_base is not None and fp_other is not None
    assert (fp_base != fp_other) is differs
    source = trajectory_source(base.Walk)
    assert source is not None and "class Walk(Trajectory)" in source and "def parse" in source
    assert "class Trajectory:" not in source  # quantgate's base class is versioned with quantgate


FINGERPRINTS_ELSEWHERE = textwrap.dedent(
    """
    import importlib.util, json, sys
    from pytest_quantgate.core.source import case_fingerprint
    from pytest_quantgate.storage.fingerprint import model_fingerprint
    from pytest_quantgate.core.cases import CaseSpec
    from pytest_quantgate.values.prompts import GenerationSettings

    path, model = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("qg_walk_elsewhere", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["qg_walk_elsewhere"] = module
    spec.loader.exec_module(module)
    settings = GenerationSettings(max_new_tokens=4)
    case = CaseSpec("walk", "t.py::test_walk[a]", "a", settings, trajectory=module.Walk("a"))
    print(json.dumps([case_fingerprint(case), model_fingerprint(model)]))
    """
)


def test_fingerprints_are_the_same_in_every_process(
    tmp_path: Path, tiny_ref: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs share the cache: no hash seed, memory address or import order may leak into a key."""
    module = load_module(tmp_path, "qg_walk_here", TRAJECTORY.format(**BASE_SOURCE), monkeypatch)
    here = [case_fingerprint(walk_case(module)), model_fingerprint(tiny_ref)]
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", FINGERPRINTS_ELSEWHERE, str(tmp_path / "qg_walk_here.py"), str(tiny_ref)],
            capture_output=True,
            text=True,
            cwd=repo_root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert json.loads(out.stdout) == here


def test_a_trajectory_without_source_is_never_cached(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "qg_exec_only", "Trajectory": Trajectory}
    exec(
        compile("class Walk(Trajectory):\n    def initial_state(self): return {}\n", "<made>", "exec"),
        namespace,
    )
    made = CaseSpec("e", "t.py::e", "x", GenerationSettings(), trajectory=namespace["Walk"]())
    dynamic = type("Dyn", (Trajectory,), {"initial_state": lambda self: {}})
    assert case_fingerprint(made) is None
    assert case_fingerprint(CaseSpec("d", "t.py::d", "x", GenerationSettings(), trajectory=dynamic())) is None
    cases = fingerprints([made])
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.put_runs("run", cases, {"e": CaseRun("e", [Turn("x", "y")], state={})}) == 0
        assert cache.stats.skipped == 1 and cache.count() == 0
        assert cache.get_runs("run", cases) == {} and cache.stats.misses == 1


# -- payloads ---------------------------------------------------------------------------

CHAT = ((("content", "You are terse."), ("role", "system")), (("content", "17+25="), ("role", "user")))


def sample_runs() -> list[CaseRun]:
    return [
        CaseRun("plain", [Turn("17+25=", "42", None)]),
        CaseRun(
            "chat",
            [Turn(CHAT, "42", "<s>system: You are terse.\nuser: 17+25=\n"), Turn("and 1?", "43", "and 1?")],
            state={"total": 43, "items": [1, 2.5, None, True], "nested": {"é": ["x"]}},
        ),
        CaseRun(
            "failed", [Turn("go", "nonsense")], failure="step 1: cannot parse 'nonsense'", state={"n": 0}
        ),
        CaseRun("empty", []),
    ]


@pytest.mark.parametrize("run", sample_runs(), ids=lambda r: r.key)
def test_payloads_round_trip_exactly(run: CaseRun) -> None:
    payload = json.loads(json.dumps(run_to_payload(run)))
    back = payload_to_run(run.key, payload)
    assert back == run
    assert [type(t.prompt) for t in back.turns] == [type(t.prompt) for t in run.turns]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"turns": "no"},
        {"turns": [{"prompt": "p"}]},
        {"turns": [{"prompt": 3, "reply": "r"}]},
        {"turns": [{"prompt": [{"role": "user"}], "reply": "r"}]},  # a chat message without content
        {"turns": [{"prompt": {"messages": [[["role", "user"], ["content", "hi"]]]}, "reply": "r"}]},
        {"turns": [{"prompt": "p", "reply": "r", "rendered": 5}]},
        {"turns": [], "failure": 1},
    ],
)
def test_malformed_payloads_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        payload_to_run("k", payload)


# -- storage ----------------------------------------------------------------------------


def fingerprints(cases: Iterable[CaseSpec]) -> dict[str, str | None]:
    """What the store takes for a list of cases: case key -> case fingerprint."""
    return {c.key: case_fingerprint(c) for c in cases}


def specs_and_runs() -> tuple[dict[str, str | None], dict[str, CaseRun]]:
    runs = {r.key: r for r in sample_runs()}
    return fingerprints(spec(key) for key in runs), runs


def test_a_hit_when_nothing_changed(tmp_path: Path) -> None:
    cases, runs = specs_and_runs()
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.warnings == [] and cache.usable
        assert cache.get_runs("run", cases) == {}
        assert cache.put_runs("run", cases, runs) == len(runs)
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.get_runs("run", cases) == runs
        assert cache.get_runs("other-model", cases) == {}
        assert (cache.stats.hits, cache.stats.misses) == (len(runs), len(runs))
        assert cache.warnings == []
    assert (tmp_path / "c" / ".gitignore").read_text().splitlines()[-1] == "*"
    with sqlite3.connect(tmp_path / "c" / DB_NAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_errors_and_states_json_would_change_are_not_cached(tmp_path: Path) -> None:
    cases = fingerprints([spec("err"), spec("tuple"), spec("intkeys"), spec("ok")])
    runs = {
        "err": CaseRun("err", [], error="generation failed: CUDA out of memory"),
        "tuple": CaseRun("tuple", [Turn("p", "r")], state={"t": (1, 2)}),
        "intkeys": CaseRun("intkeys", [Turn("p", "r")], state={1: "a"}),
        "ok": CaseRun("ok", [Turn("p", "r")], state={"t": [1, 2]}),
    }
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.put_runs("run", cases, runs) == 1
        assert cache.stats.skipped == 3
        assert cache.put_many("run", {"x": {"turns": [], "error": "boom"}, "y": {"v": float("nan")}}) == 0
        assert list(cache.get_runs("run", cases)) == ["ok"]


class World:
    """Everything a cached result depends on, built once per module."""

    def __init__(self, root: Path, tiny_ref: Path, monkeypatch: pytest.MonkeyPatch):
        self.ckpts = {
            "base": make_checkpoint(root / "base", tiny_ref),
            "header": make_checkpoint(root / "header", tiny_ref, step="101"),
            "scaled": make_checkpoint(root / "scaled", tiny_ref, scale=1.001),
            "tokenizer": make_checkpoint(root / "tokenizer", tiny_ref),
        }
        tok = self.ckpts["tokenizer"] / "tokenizer.json"
        tok.write_text(tok.read_text().replace('"<pad>"', '"<PAD>"', 1))
        self.modules = {
            "v1": load_module(root, "qg_world_v1", TRAJECTORY.format(**BASE_SOURCE), monkeypatch),
            "v2": load_module(
                root, "qg_world_v2", TRAJECTORY.format(**{**BASE_SOURCE, "limit": 1}), monkeypatch
            ),
        }

    def key(
        self, ckpt: str, dtype: str, scheme: str | None, max_new_tokens: int, module: str
    ) -> tuple[str, CaseSpec]:
        run = run_fingerprint(
            model_fingerprint(self.ckpts[ckpt]),
            scheme=scheme,
            options={},
            dtype=dtype,
            device_type="cpu",
            versions={"torch": "2.13.0"},
        )
        case = CaseSpec(
            key="walk",  # the same key throughout: the cache itself must tell them apart
            nodeid="t.py::test_walk[a]",
            prompt="a",
            settings=GenerationSettings(max_new_tokens=max_new_tokens),
            trajectory=self.modules[module].Walk("a"),
        )
        return run, case


BASE_WORLD: dict[str, Any] = {
    "ckpt": "base",
    "dtype": "float32",
    "scheme": None,
    "max_new_tokens": 8,
    "module": "v1",
}


@pytest.mark.parametrize(
    "change",
    [
        {"ckpt": "header"},  # one byte of a safetensors header
        {"ckpt": "scaled"},  # all weights x1.001, identical headers and sizes
        {"dtype": "bfloat16"},
        {"ckpt": "tokenizer"},  # a tokenizer file
        {"max_new_tokens": 9},  # a generation setting
        {"module": "v2"},  # a trajectory's source
        {"scheme": "rtn4"},
    ],
    ids=["header-byte", "weights-x1.001", "dtype", "tokenizer", "setting", "trajectory", "scheme"],
)
def test_a_miss_on_each_component_of_the_key(
    change: dict[str, Any], tmp_path: Path, tiny_ref: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path / "world", tiny_ref, monkeypatch)
    run, case = world.key(**BASE_WORLD)
    result = CaseRun("walk", [Turn("a", "bc")], state={"text": "abc"})
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.put_runs(run, fingerprints([case]), {"walk": result}) == 1
        same_run, same_case = world.key(**BASE_WORLD)
        # A hit when nothing changed.
        assert cache.get_runs(same_run, fingerprints([same_case])) == {"walk": result}
        other_run, other_case = world.key(**{**BASE_WORLD, **change})
        assert (other_run, case_fingerprint(other_case)) != (run, case_fingerprint(case))
        assert cache.get_runs(other_run, fingerprints([other_case])) == {}


def test_a_corrupted_database_is_one_warning_and_a_full_run(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / DB_NAME).write_bytes(b"\x00garbage, not SQLite\xff" * 200)
    cases, runs = specs_and_runs()
    with ResultCache.open(directory) as cache:
        assert len(cache.warnings) == 1 and cache.warning is not None and "\n" not in cache.warning
        assert cache.warning.startswith(f"quantgate: cache {directory / DB_NAME} was unreadable (")
        assert cache.warning.endswith("); rebuilt it") and "not a database" in cache.warning
        assert cache.get_runs("run", cases) == {}  # everything is generated
        assert cache.put_runs("run", cases, runs) == len(runs)
    assert (directory / (DB_NAME + ".bad")).read_bytes().startswith(b"\x00garbage")
    with ResultCache.open(directory) as cache:
        assert cache.warnings == [] and cache.get_runs("run", cases) == runs


@pytest.mark.parametrize(
    ("prepare", "phrase"),
    [
        ("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('x')", "another application's database"),
        (f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 99", "another version"),
    ],
    ids=["foreign", "other-version"],
)
def test_a_foreign_database_is_rebuilt_with_a_warning(tmp_path: Path, prepare: str, phrase: str) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    conn = sqlite3.connect(directory / DB_NAME)
    conn.executescript(prepare)
    conn.close()
    cases, runs = specs_and_runs()
    with ResultCache.open(directory) as cache:
        assert len(cache.warnings) == 1 and phrase in cache.warnings[0] and "rebuilt it" in cache.warnings[0]
        assert cache.put_runs("run", cases, runs) == len(runs)
        assert cache.get_runs("run", cases) == runs


def test_an_empty_file_is_simply_initialized(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / DB_NAME).write_bytes(b"")
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.warnings == [] and cache.usable


def test_a_damaged_row_is_a_miss_never_a_wrong_hit(tmp_path: Path) -> None:
    cases, runs = specs_and_runs()
    with ResultCache.open(tmp_path / "c") as cache:
        cache.put_runs("run", cases, runs)
    conn = sqlite3.connect(tmp_path / "c" / DB_NAME)
    with conn:  # a flipped digit in a stored reply, digest left as it was
        conn.execute("UPDATE results SET payload = replace(payload, '\"42\"', '\"41\"')")
    conn.close()
    with ResultCache.open(tmp_path / "c") as cache:
        got = cache.get_runs("run", cases)
        assert set(got) == {"failed", "empty"}
        assert cache.warnings == [
            f"quantgate: cache {tmp_path / 'c' / DB_NAME}: ignored 2 damaged entries; regenerating"
        ]
        assert cache.put_runs("run", cases, runs) == len(runs)  # regenerated rows replace them
        assert cache.get_runs("run", cases) == runs


class Broken:
    """A connection whose file went bad after it was opened."""

    def execute(self, *args: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def close(self) -> None:
        pass


def test_a_failure_after_opening_disables_the_cache_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases, runs = specs_and_runs()
    cache = ResultCache.open(tmp_path / "c")
    cache.close()
    monkeypatch.setattr(cache, "_conn", Broken())
    assert cache.get_runs("run", cases) == {}
    assert len(cache.warnings) == 1 and "malformed" in cache.warnings[0] and not cache.usable
    assert cache.put_runs("run", cases, runs) == 0 and cache.count() == 0
    assert len(cache.warnings) == 1


def test_an_unusable_directory_runs_without_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cases, runs = specs_and_runs()
    with ResultCache.open(blocker / "cache") as cache:
        assert not cache.usable and len(cache.warnings) == 1
        assert cache.warnings[0].endswith("; running without it")
        assert cache.get_runs("run", cases) == {} and cache.put_runs("run", cases, runs) == 0


def test_refresh_regenerates(tmp_path: Path) -> None:
    cases, runs = specs_and_runs()
    newer = {k: CaseRun(k, [Turn("p", "new")]) for k in runs}
    with ResultCache.open(tmp_path / "c", "on") as cache:
        cache.put_runs("run", cases, runs)
    with ResultCache.open(tmp_path / "c", "refresh") as cache:
        assert cache.get_runs("run", cases) == {}  # stored, but not read
        assert cache.put_runs("run", cases, newer) == len(runs)  # overwritten
    with ResultCache.open(tmp_path / "c") as cache:
        assert cache.get_runs("run", cases) == newer and cache.count() == len(runs)


def test_off_neither_reads_nor_writes(tmp_path: Path) -> None:
    cases, runs = specs_and_runs()
    with ResultCache.open(tmp_path / "c") as cache:
        cache.put_runs("run", cases, runs)
    before = (tmp_path / "c" / DB_NAME).stat().st_mtime_ns
    with ResultCache.open(tmp_path / "c", CacheMode.OFF) as cache:
        assert cache.get_runs("run", cases) == {}
        assert cache.put_runs("run", cases, runs) == 0 and cache.put_many("run", {"x": {"turns": []}}) == 0
        assert cache.stats.misses == len(runs) and cache.stats.writes == 0
    assert (tmp_path / "c" / DB_NAME).stat().st_mtime_ns == before
    with ResultCache.open(tmp_path / "never", "off") as cache:
        assert cache.path is None and not cache.usable and cache.warnings == []
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("text", "mode"), [("on", CacheMode.ON), (" OFF ", CacheMode.OFF), ("refresh", CacheMode.REFRESH)]
)
def test_parse_cache_mode(text: str, mode: CacheMode) -> None:
    assert parse_cache_mode(text) is mode


def test_parse_cache_mode_refuses_others() -> None:
    with pytest.raises(ValueError, match=r"^--quant-cache must be one of on, off, refresh, got 'yes'$"):
        parse_cache_mode("yes")


WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from pytest_quantgate.storage.store import ResultCache

    directory, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    cache = ResultCache.open(directory)
    print(json.dumps(cache.warnings), flush=True)
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    for i in range(500):  # one transaction per row: as many chances to collide as possible
        payload = {"turns": [], "error": None, "failure": None, "state": {"by": name, "i": i}}
        assert cache.put_many("run", {f"{name}-{i}": payload}) == 1, cache.warnings
    assert not cache.warnings[1:], cache.warnings
    cache.close()
    """
)


@pytest.mark.parametrize("start", ["fresh", "corrupt"])
def test_two_processes_writing_at_once_lose_no_rows(tmp_path: Path, repo_root: Path, start: str) -> None:
    directory = tmp_path / "c"
    if start == "corrupt":  # both find a damaged file at once: one rebuilds it, the other uses that
        directory.mkdir()
        (directory / DB_NAME).write_bytes(b"garbage" * 1000)
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), name, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo_root,
            env=env,
        )
        for name in ("a", "b")
    ]
    warnings = []
    for proc in procs:
        assert proc.stdout is not None
        warnings.append(json.loads(proc.stdout.readline() or "null"))
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(len(w) for w in warnings) == ([0, 0] if start == "fresh" else [0, 1])
    keys = [f"{name}-{i}" for name in ("a", "b") for i in range(500)]
    with ResultCache.open(directory) as cache:
        assert cache.count() == 1000
        got = cache.get_many("run", keys)
        assert len(got) == 1000 and got["b-499"]["state"] == {"by": "b", "i": 499}
    conn = sqlite3.connect(directory / DB_NAME)
    spans = dict(
        conn.execute(
            "SELECT substr(case_fp, 1, 1), min(written) || ',' || max(written) FROM results GROUP BY 1"
        )
    )
    conn.close()
    (a_first, a_last), (b_first, b_last) = (map(float, spans[n].split(",")) for n in "ab")
    assert a_first < b_last and b_first < a_last  # the writes did overlap in time
