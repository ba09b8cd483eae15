"""What a gate run costs, as ratios measured side by side (run by hand, never a timed test).

Every figure is a ratio of two commands run in fresh processes, alternating,
``--repeat`` times each, on one torch thread (``OMP_NUM_THREADS=1``), and
compared by their medians. Timed from process start to exit: imports, model
loading and all.

* ``overhead``: the whole ``pytest`` run of a suite of ``--cases`` single
  prompts (reference + one candidate, JSON report written) ÷ a plain script
  that imports transformers, loads both models and batch-generates the same
  prompts. Goals ≤ 1.15, and ≤ 1.05 × (script + pytest's own floor for as
  many tests, printed first). The plugin runs at its default batch size and
  at the script's.
* ``naive``: a per-case ``generate`` loop (what a hand-written pytest suite
  does: one prompt at a time, both models) ÷ the plugin. Goal ≥ 4.
* ``cache``: the same ``pytest`` run with a warm reference cache ÷ with a
  cold one (``--quant-cache=refresh``). Goal ≤ 0.6, and the reference is
  loaded 0 times on the warm run (read from the JSON report).
* ``cache-big``: the same ratio where generation dominates, as it does on a
  real model: ``--big-cases`` prompts on a random-init checkpoint of ~100 M
  parameters made here (the tiny model's 1,000 cases spend most of a run
  starting Python, importing torch and loading the candidate, which a
  warm reference cache cannot save).
* ``xdist``: the plugin with ``-n <cores>`` (each worker generating its
  shard, on its share of the cores) ÷ ``-n 0`` using every core. Goal < 1.
* ``memory``: peak resident memory (``ru_maxrss`` of the pytest process) of
  the default run ÷ the ``--quant-keep-loaded`` run, on a random-init
  checkpoint made here large enough that weights dominate memory. Goal < 1.

    python benchmarks/bench_run.py [overhead naive cache cache-big xdist memory] [--cases 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-ref"
CANDIDATE = "rtn4g32"
SCRIPT_BATCH = 32
MAX_NEW_TOKENS = 32

FLOOR = """
import torch
import transformers

import pytest


@pytest.mark.parametrize("i", range({cases}))
def test_nothing(i):
    pass
"""

SUITE = """
import json
from pathlib import Path

from pytest_quantgate import quant_case, quant_slice

ROWS = [json.loads(line) for line in Path({prompts!r}).read_text().splitlines()]


@quant_slice("bench")
@quant_case("prompt, expected", [(r["prompt"], r["expected"]) for r in ROWS], max_new_tokens={tokens})
def test_case(prompt, expected, output):
    assert output.strip() == expected
"""

PLAIN = """
import json, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_quantgate.backends.rtn import rtn_quantize_

torch.set_num_threads(1)
rows = [json.loads(line) for line in Path({prompts!r}).read_text().splitlines()]
prompts = [r["prompt"] for r in rows]
batch = {batch}
for quantize in (False, True):
    tok = AutoTokenizer.from_pretrained({model!r}, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained({model!r}, local_files_only=True, dtype=torch.float32).eval()
    if quantize:
        rtn_quantize_(model, 4, 32)
    with torch.inference_mode():
        for at in range(0, len(prompts), batch):
            enc = tok(prompts[at : at + batch], return_tensors="pt", padding=True)
            out = model.generate(
                **enc, max_new_tokens={tokens}, do_sample=False, pad_token_id=tok.pad_token_id
            )
            tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    del model
"""


def make_prompts(path: Path, n: int) -> None:
    """``n`` distinct ``format`` prompts of the tiny model (seeded): replies of up to 20 tokens,
    so that generation, not start-up, is most of the work (as on a real model)."""
    sys.path.insert(0, str(REPO / "tools"))
    import tiny_tasks

    rows = tiny_tasks.generate("format", n, seed=7)
    path.write_text("".join(json.dumps({"prompt": r.prompt, "expected": r.expected}) + "\n" for r in rows))


def make_big_model(path: Path) -> None:
    """A random-init Llama of ~100 M parameters (~400 MB in float32) with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=10,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / name, path / name)


def run(command: list[str], cwd: Path, threads: int = 1) -> tuple[float, int]:
    """Wall seconds and peak resident memory (KiB) of one process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("CI", None)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: the gate may fail the damaged candidate's slice
        sys.exit(f"{' '.join(command[:4])} ... exited {code}:\n{out.decode()[-3000:]}")
    return elapsed, usage.ru_maxrss


def pytest_cmd(work: Path, model: Path, *extra: str, suite: str = "test_bench.py") -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        suite,
        f"--quant-reference=ref={model}",
        f"--quant-candidate=q={CANDIDATE}:{model}",
        "--quant-device=cpu",
        f"--quant-report={work / 'gate.json'}",
        *extra,
    ]


def compare(
    name: str, a: tuple[str, Callable[[], float]], b: tuple[str, Callable[[], float]], repeat: int, goal: str
) -> None:
    """Run both sides ``repeat`` times, alternating; print medians and their ratio."""
    xs: list[float] = []
    ys: list[float] = []
    for _ in range(repeat):
        xs.append(a[1]())
        ys.append(b[1]())
    mx, my = statistics.median(xs), statistics.median(ys)
    print(f"\n### {name}: {a[0]} ÷ {b[0]} = **{mx / my:.2f}** (goal {goal})")
    print(f"- {a[0]}: median {mx:.2f} ({', '.join(f'{x:.2f}' for x in xs)})")
    print(f"- {b[0]}: median {my:.2f} ({', '.join(f'{y:.2f}' for y in ys)})")
    print(f"- load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "figures", nargs="*", default=["overhead", "naive", "cache", "cache-big", "xdist", "memory"]
    )
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--big-cases", type=int, default=96, help="prompts of the cache-big figure")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts = work / "prompts.jsonl"
        make_prompts(prompts, args.cases)
        fill = {"prompts": str(prompts), "tokens": MAX_NEW_TOKENS, "model": str(TINY), "batch": SCRIPT_BATCH}
        (work / "test_bench.py").write_text(SUITE.format(**fill))
        (work / "plain.py").write_text(PLAIN.format(**fill))
        (work / "naive.py").write_text(PLAIN.format(**{**fill, "batch": 1}))
        cache = ("--quant-cache-dir", str(work / "cache"))
        print(f"{args.cases} prompts × ≤{MAX_NEW_TOKENS} new tokens, reference + {CANDIDATE}, 1 thread")

        def seconds(cmd: list[str]) -> Callable[[], float]:
            return lambda: run(cmd, work)[0]

        plugin_default = pytest_cmd(work, TINY, "--quant-cache=off")
        plugin_32 = pytest_cmd(work, TINY, "--quant-cache=off", f"--quant-batch-size={SCRIPT_BATCH}")
        (work / "test_floor.py").write_text(FLOOR.format(cases=args.cases))
        if "overhead" in args.figures:
            floor = [
                run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_floor.py"], work)[
                    0
                ]
            ]
            floor += [
                run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_floor.py"], work)[
                    0
                ]
            ]
            bare = [run([sys.executable, "-c", "import torch, transformers"], work)[0] for _ in range(2)]
            extra = statistics.median(floor) - statistics.median(bare)
            print(
                f"\npytest's own floor: {args.cases} empty tests in a process that imports torch and "
                f"transformers take {extra:.2f} s beyond those imports (medians of 2)"
            )
            plain = ("plain script, batch 32", seconds([sys.executable, "plain.py"]))
            compare(
                "overhead", ("plugin, default batch", seconds(plugin_default)), plain, args.repeat, "≤ 1.15"
            )
            compare("overhead", ("plugin, batch 32", seconds(plugin_32)), plain, args.repeat, "≤ 1.15")
        if "naive" in args.figures:
            naive = ("naive per-case loop", seconds([sys.executable, "naive.py"]))
            compare("naive", naive, ("plugin, default batch", seconds(plugin_default)), args.repeat, "≥ 4")
        if "cache" in args.figures:
            warm_cmd = pytest_cmd(work, TINY, *cache)
            run(warm_cmd, work)  # fill the cache once
            warm = ("warm cache", seconds(warm_cmd))
            cold = ("cold cache", seconds(pytest_cmd(work, TINY, *cache, "--quant-cache=refresh")))
            compare("cache", warm, cold, args.repeat, "≤ 0.6")
            run(warm_cmd, work)
            loads = json.loads((work / "gate.json").read_text())["models"]["ref"].get("loads")
            print(f"- reference loads on the warm run: {loads}")
        if "cache-big" in args.figures:
            big = work / "big"
            if not big.exists():
                make_big_model(big)
            some = work / "some.jsonl"
            some.write_text("".join(prompts.read_text().splitlines(keepends=True)[: args.big_cases]))
            (work / "test_some.py").write_text(SUITE.format(**{**fill, "prompts": str(some)}))
            big_cache = ("--quant-cache-dir", str(work / "big-cache"))
            warm_cmd = pytest_cmd(work, big, *big_cache, suite="test_some.py")
            run(warm_cmd, work)  # fill the cache once
            warm = ("warm cache, 100 M model", seconds(warm_cmd))
            cold_cmd = pytest_cmd(work, big, *big_cache, "--quant-cache=refresh", suite="test_some.py")
            compare("cache-big", warm, ("cold cache", seconds(cold_cmd)), args.repeat, "≤ 0.6")
        if "xdist" in args.figures:
            cores = len(os.sched_getaffinity(0))
            one = ("-n 0, all cores", lambda: run([*plugin_default, "-n", "0"], work, threads=cores)[0])
            two = (f"-n {cores}", lambda: run([*plugin_default, "-n", str(cores)], work, threads=cores)[0])
            compare("xdist", two, one, args.repeat, "< 1")
        if "memory" in args.figures:
            big = work / "big"
            if not big.exists():
                make_big_model(big)
            size = sum(p.stat().st_size for p in big.iterdir()) / 2**20
            # A few cases: memory is what is measured, and the big model is slow on one thread.
            few = work / "few.jsonl"
            few.write_text("".join(prompts.read_text().splitlines(keepends=True)[:16]))
            (work / "test_few.py").write_text(SUITE.format(**{**fill, "prompts": str(few)}))
            default = pytest_cmd(work, big, "--quant-cache=off", suite="test_few.py")
            keep = pytest_cmd(work, big, "--quant-cache=off", "--quant-keep-loaded", suite="test_few.py")
            peaks: dict[str, list[int]] = {"default": [], "keep": []}
            for _ in range(max(1, args.repeat // 2)):
                peaks["default"].append(run(default, work)[1])
                peaks["keep"].append(run(keep, work)[1])
            d, k = statistics.median(peaks["default"]), statistics.median(peaks["keep"])
            print(f"\n### memory: default ÷ --quant-keep-loaded peak RSS = **{d / k:.2f}** (goal < 1)")
            print(
                f"- checkpoint {size:.0f} MiB; peak RSS default {d / 1024:.0f} MiB, "
                f"keep-loaded {k / 1024:.0f} MiB"
            )


if __name__ == "__main__":
    main()
