"""Training-step time and memory of B-only (fused) against PEFT LoRA and the frozen-base bound.

One process, one JSON line per variant on stdout:
  frozen_bound        the base model, every weight frozen, input gradients only (nothing can be faster)
  peft_lora           PEFT LoRA, A and B trained (PEFT's forward)
  peft_lora_a_frozen  PEFT LoRA with A frozen (PEFT's forward)
  asymtune_b_only     asymtune B-only: A frozen orthogonal, fused frozen-A path
  asymtune_b_only_2r  the same at twice the rank (LoRA's parameter count for square layers)
Step = forward + backward + AdamW step; the median of --steps timed steps after --warmup.

  python benchmarks/step_time.py --model small                      # CPU
  python benchmarks/step_time.py --model llama2-7b --device cuda    # GPU, bf16 random weights
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from asymtune.adapters import fused, lora
from asymtune.recipe import AdapterSpec

SHAPES = {
    "small": LlamaConfig(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    "llama2-7b": LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    ),
}
TARGETS = {"qv": ["q_proj", "v_proj"], "all-linear": "all-linear"}
VARIANTS = ("frozen_bound", "peft_lora", "peft_lora_a_frozen", "asymtune_b_only", "asymtune_b_only_2r")


def build(variant: str, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.device(args.device):
        model = LlamaForCausalLM(SHAPES[args.model]).to(dtype)
    model.requires_grad_(False)
    targets = TARGETS[args.targets]
    if variant == "frozen_bound":
        model.enable_input_require_grads()  # backward still computes dx through every layer
        return model
    if variant.startswith("peft"):
        model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets))
        if variant == "peft_lora_a_frozen":
            for name, param in model.named_parameters():
                if "lora_A" in name:
                    param.requires_grad_(False)
        return model
    rank = 2 * args.rank if variant.endswith("_2r") else args.rank
    spec = AdapterSpec(
        rank=rank, targets=targets, A={"init": "orthogonal", "trainable": False}, B={"init": "zero", "trainable": True}
    )
    model = lora.apply(model, spec)
    fused.enable(model)
    return model


def measure(variant: str, args: argparse.Namespace) -> dict:
    model = build(variant, args)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SHAPES[args.model].vocab_size, (args.batch, args.seq), generator=generator)
    tokens = tokens.to(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    record = {
        "variant": variant,
        "model": args.model,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": "bfloat16" if cuda else "float32",
        "batch": args.batch,
        "seq": args.seq,
        "targets": args.targets,
        "rank": 2 * args.rank if variant.endswith("_2r") else (None if variant == "frozen_bound" else args.rank),
        "step_time_s": step_time,
        "step_time_min_s": min(times),
        "steps_timed": len(times),
        "tokens_per_s": args.batch * args.seq / step_time,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "trainable_params": sum(p.numel() for p in trainable),
        "threads": torch.get_num_threads(),
    }
    del model, optimizer, trainable
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="all-linear")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    args = parser.parse_args(argv)
    if args.steps < 8:
        parser.error("--steps: the median needs at least 8 timed steps")
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"--variants: unknown {variant!r}")
        print(json.dumps(measure(variant, args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
