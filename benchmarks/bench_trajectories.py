"""The plugin's whole run over N trajectories vs a plain script doing the same generation.

Both sides run in a fresh process, on the shipped tiny model, on one thread
(``OMP_NUM_THREADS=1``), the reference and one candidate, with the same batch
size; each is timed from process start to exit (imports, model loading and
all), ``repeat`` times, alternating, and the medians are compared:

* **plugin**: ``pytest`` on a generated suite of N ``Trajectory`` cases of
  ``STEPS`` steps each (every step asks one of the example suite's recall
  questions and records the reply), ``--quant-reference`` and
  ``--quant-candidate``, JSON report written.
* **script**: the same N × STEPS prompts, step-synchronously batched by hand:
  ``AutoModelForCausalLM.from_pretrained``, left padding, greedy
  ``generate`` of every live trajectory's step k in batches, for both models.

The issue's bar: the plugin within 1.3× of the script.

    python benchmarks/bench_trajectories.py [--cases 256] [--steps 6] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiny-ref"
DATA = REPO / "example_suites" / "tiny" / "data" / "recall.jsonl"
CANDIDATE = "rtn4g32"
BATCH = 32
MAX_NEW_TOKENS = 4

SUITE = """
import json
from pathlib import Path

from pytest_quantgate import Trajectory, quant_case, quant_slice

ROWS = [json.loads(line) for line in Path({data!r}).read_text().splitlines() if line.strip()]


class Quiz(Trajectory):
    max_steps = {steps}

    def __init__(self, start):
        self.start = start

    def initial_state(self):
        return {{"i": 0, "replies": []}}

    def render(self, state):
        return ROWS[(self.start + state["i"]) % len(ROWS)]["prompt"]

    def apply(self, state, reply):
        return {{"i": state["i"] + 1, "replies": state["replies"] + [reply]}}


@quant_slice("quiz")
@quant_case("case", [Quiz(i) for i in range({cases})], max_new_tokens={max_new_tokens}, stop="\\n")
def test_quiz(case, final_state):
    assert len(final_state["replies"]) == {steps}
"""

SCRIPT = """
import json, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_quantgate.backends.rtn import rtn_quantize_

torch.set_num_threads(1)
rows = [json.loads(line) for line in Path({data!r}).read_text().splitlines() if line.strip()]
for quantize in (False, True):
    tok = AutoTokenizer.from_pretrained({model!r}, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained({model!r}, local_files_only=True, dtype=torch.float32).eval()
    if quantize:
        rtn_quantize_(model, 4, 32)
    states = [{{"i": 0, "replies": []}} for _ in range({cases})]
    with torch.inference_mode():
        for step in range({steps}):
            live = list(range({cases}))
            for at in range(0, len(live), {batch}):
                idx = live[at : at + {batch}]
                prompts = [rows[(i + states[i]["i"]) % len(rows)]["prompt"] for i in idx]
                enc = tok(prompts, return_tensors="pt", padding=True)
                out = model.generate(**enc, max_new_tokens={max_new_tokens}, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    reply = text.split("\\n")[0]
                    states[i] = {{"i": states[i]["i"] + 1, "replies": states[i]["replies"] + [reply]}}
    assert all(len(s["replies"]) == {steps} for s in states)
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{command[:3]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    fill = {
        "data": str(DATA),
        "model": str(MODEL),
        "cases": args.cases,
        "steps": args.steps,
        "batch": BATCH,
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "test_quiz.py").write_text(SUITE.format(**fill))
        (work / "script.py").write_text(SCRIPT.format(**fill))
        plugin_cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_quiz.py",
            f"--quant-reference=ref={MODEL}",
            f"--quant-candidate=q={CANDIDATE}:{MODEL}",
            f"--quant-batch-size={BATCH}",
            "--quant-device=cpu",
            f"--quant-report={work / 'gate.json'}",
        ]
        script_cmd = [sys.executable, "script.py"]
        plugin, script = [], []
        for _ in range(args.repeat):
            plugin.append(timed(plugin_cmd, work, env))
            script.append(timed(script_cmd, work, env))
        report = json.loads((work / "gate.json").read_text())
        assert len(report["cases"]) == args.cases
    p, s = statistics.median(plugin), statistics.median(script)
    load = os.getloadavg()[0]
    print(f"{args.cases} trajectories × {args.steps} steps, 2 models, batch {BATCH}, 1 thread")
    print(f"load average at the end: {load:.2f} (on {os.cpu_count()} cores)")
    print("| run | median s | runs (s) |")
    print("|---|---|---|")
    print(f"| plugin (pytest) | {p:.2f} | {', '.join(f'{x:.2f}' for x in plugin)} |")
    print(f"| plain script | {s:.2f} | {', '.join(f'{x:.2f}' for x in script)} |")
    print(f"| **ratio plugin / script** | **{p / s:.2f}** | |")


if __name__ == "__main__":
    main()
