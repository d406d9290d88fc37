#!/usr/bin/env bash
# Issue 18's GPU run, as one device call each (the wheels from benchmarks/gpu_wheels.sh travel in `carry`):
#   bash benchmarks/gpu_run.sh asymtune   carry .whl: CUDA equivalence tests of the fused paths, then
#                                         peers.py plain + Liger on both shapes, then liger_sft.py
#   bash benchmarks/gpu_run.sh unsloth    carry .whl-unsloth: peers.py's Unsloth setting on both shapes
# Everything lands in $OUT (or ./gpu-out): JSON lines, the tables, the logs. Each part has its own time limit so the
# parts after it still run; the whole stays under 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
case ${1:-} in
asymtune)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, transformers, peft, liger_kernel; print(torch.__version__, transformers.__version__, \
peft.__version__)" | tee -a "$OUT/gpu.txt"
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_shared_input.py \
        -k "cuda" 2>&1 | tail -5 | tee "$OUT/cuda-tests.txt"
    timeout 330 python3 benchmarks/peers.py --device cuda --kernels plain,liger --timeout 150 \
        --out "$OUT/peers.jsonl" 2>&1 | tee "$OUT/peers.log"
    timeout 100 python3 benchmarks/liger_sft.py --output-dir /tmp/liger --shape smollm2-1.7b --steps 40 \
        --out "$OUT/liger-sft.jsonl" 2>&1 | tail -20 | tee "$OUT/liger-sft.log"
    ;;
unsloth)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-unsloth \
        .whl-unsloth/*.whl || exit 1
    export PYTHONPATH=/tmp/site-unsloth:$PWD
    timeout 400 python3 benchmarks/peers.py --device cuda --kernels unsloth --timeout 190 \
        --out "$OUT/peers-unsloth.jsonl" 2>&1 | tee "$OUT/peers-unsloth.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_run.sh asymtune|unsloth" >&2
    exit 2
    ;;
esac
