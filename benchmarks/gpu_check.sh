#!/usr/bin/env bash
# The CUDA paths, in one short run (a few minutes) on a machine with a GPU:
# the example gate on the GPU with a bitsandbytes NF4 candidate, the shipped
# GPTQ and AWQ checkpoints (gptqmodel's CUDA kernels, when the gptq extra is
# installed), a gptq: candidate quantized on the fly, and
# --quant-batch-size=auto; then load time, tokens/s, batch size and peak GPU
# memory per model, read from the JSON report. Run from the repository root
# after the README's install:
#
#     bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PY

mkdir -p out
gptq=()
if python -c "import gptqmodel, optimum" 2>/dev/null; then
    gptq=(--quant-candidate=gptq=models/tiny-gptq --quant-candidate=awq=models/tiny-awq
          "--quant-candidate=g128=gptq:models/tiny-ref?bits=4&group_size=128"
          --quant-calibration=models/calibration.jsonl --quant-cache-dir=out/gpu-cache)
else
    echo "gptqmodel is not installed: the GPTQ and AWQ candidates are left out" >&2
fi
status=0
timeout 480 python -m pytest example_suites/tiny -p no:cacheprovider \
    --quant-device=cuda --quant-batch-size=auto \
    --quant-candidate=nf4=bnb-nf4:models/tiny-ref \
    --quant-candidate=rtn2=rtn2g128:models/tiny-ref \
    "${gptq[@]}" \
    --quant-report=out/gpu-gate.json || status=$?
# 1 is expected: the 2-bit candidate regresses on purpose.
if [ "$status" -gt 1 ]; then
    echo "pytest exited with $status" >&2
    exit "$status"
fi

python - <<'PY'
import json

report = json.load(open("out/gpu-gate.json"))
print(f"{'model':10} {'device':8} {'dtype':9} {'load s':>7} {'gen s':>7} {'tok/s':>8} {'batch':>5} {'peak MiB':>9}")
for label, m in report["models"].items():
    print(
        f"{label:10} {str(m.get('device')):8} {str(m.get('dtype')):9} {m.get('load_seconds', 0):7.2f} "
        f"{m.get('generate_seconds', 0):7.2f} {m.get('tokens_per_second', 0):8.0f} "
        f"{m.get('batch_size', '-'):>5} {m.get('peak_memory_mib', '-'):>9}"
    )
for cand in report["candidates"]:
    print(cand["label"], cand["verdict"], [(r["slice"], r["verdict"]) for r in cand["slices"]])
PY
