#!/usr/bin/env bash
# The GPU checks of issues 18, 15 and 16, one device call per wheel set (benchmarks/gpu_prepare.sh makes what
# travels in `carry`), most important first:
#   bash benchmarks/gpu_run.sh asymtune   carry .whl .device-carry: CUDA equivalence tests of the fused paths;
#                                         peers.py plain + Liger on both shapes (18); liger_sft.py (15);
#                                         mixed_inference.py over 8 adapters on a SmolLM2-135M-shaped model (16)
#   bash benchmarks/gpu_run.sh unsloth    carry .whl-unsloth: peers.py's Unsloth setting on both shapes (18)
# Everything lands in $OUT (or ./gpu-out): JSON lines, tables, logs. Each part has its own time limit so the parts
# after it still run; the asymtune call stays under 9.5 minutes, the Unsloth one under 7.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
install_wheels() {  # wheel folder, target
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl
}
case ${1:-} in
asymtune)
    install_wheels .whl /tmp/site || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch, transformers, peft, liger_kernel; print(torch.__version__, transformers.__version__, \
peft.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_fused.py tests/test_shared_input.py -k cuda \
        2>&1 | tail -5 | tee "$OUT/cuda-tests.txt"
    timeout 300 python3 benchmarks/peers.py --device cuda --kernels plain,liger --timeout 75 \
        --out "$OUT/peers.jsonl" 2>&1 | tee "$OUT/peers.log"
    timeout 120 python3 benchmarks/liger_sft.py --output-dir /tmp/liger --shape smollm2-1.7b --steps 40 \
        --tokenizer .device-carry/smollm2 --data .device-carry/faq-en-alpaca.jsonl \
        --out "$OUT/liger-sft.jsonl" 2>&1 | tail -20 | tee "$OUT/liger-sft.log"
    python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); import liger_sft; \
liger_sft.build_model(Path('/tmp/smollm2-135m'), 'smollm2-135m', Path('.device-carry/smollm2'), 'cuda')" &&
        timeout 60 python3 benchmarks/mixed_inference.py --model /tmp/smollm2-135m --device cuda --repeats 4 \
            --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj 2>&1 | tee "$OUT/mixed-inference.log"
    ;;
unsloth)
    install_wheels .whl-unsloth /tmp/site-unsloth || exit 1
    export PYTHONPATH=/tmp/site-unsloth:$PWD
    timeout 400 python3 benchmarks/peers.py --device cuda --kernels unsloth --timeout 190 \
        --out "$OUT/peers-unsloth.jsonl" 2>&1 | tee "$OUT/peers-unsloth.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_run.sh asymtune|unsloth" >&2
    exit 2
    ;;
esac
