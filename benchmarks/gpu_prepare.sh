#!/usr/bin/env bash
# What a bare GPU machine (Python 3.12, its own torch and triton, no network) needs for benchmarks/gpu_run.sh:
#   .whl/           asymtune's training stack at the versions CI tests, with Liger Kernel
#   .whl-unsloth/   Unsloth and the older transformers/trl it pins (installed apart: the two sets conflict)
#   .device-carry/  SmolLM2's config and tokenizer (random-weight models of its shapes are built there) and the
#                   construction FAQ (liger_sft.py's data), from the offline assets
# Run from the repository root with asymtune installed; the folders are git-ignored. Prints each one's size (the
# device tool carries at most 64 MiB a call, the working tree included; hf_transfer, a download accelerator Unsloth
# lists, is left out).
set -euo pipefail
download() {  # folder, requirements...
    local folder=$1
    shift
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$folder" "$@"
}
download .whl transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 accelerate==1.16.0 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 gguf==0.19.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5
download .whl-unsloth unsloth==2026.10.9 unsloth_zoo==2026.10.9 transformers==5.17.0 trl==1.15.0 \
    datasets==4.8.0 xformers==0.0.35 torchao==0.18.0 cut-cross-entropy==25.1.1 tyro==1.0.3 msgspec==0.20.0 \
    diffusers==0.36.0 json5==0.13.0 structlog==25.5.0 typer==0.21.1 nest-asyncio==1.6.0 \
    docstring-parser==0.17.0 shtab==1.8.0 typeguard==4.4.4 dill==0.4.0 multiprocess==0.70.18 \
    typing_extensions==4.16.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    gguf==0.19.0
mkdir -p .device-carry/smollm2
asset() { python -c "import sys; from asymtune.assets import resolve; print(resolve(sys.argv[1], print))" "$1" | tail -1; }
model=$(asset smollm2-135m-instruct)
cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} \
    .device-carry/smollm2/
cp "$(asset zaragoza-construction-faq-en)" .device-carry/faq-en-alpaca.jsonl
du -sh .whl .whl-unsloth .device-carry
