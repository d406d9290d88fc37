"""Training-step time and memory of B-only (fused) against PEFT LoRA and the frozen-base bound.

One process, one JSON line per variant on stdout:
  frozen_bound        the base model, every weight frozen, input gradients only (nothing can be faster)
  peft_lora           PEFT LoRA, A and B trained (PEFT's forward)
  peft_lora_a_frozen  PEFT LoRA with A frozen (PEFT's forward)
  asymtune_b_only_per_layer  B-only: A frozen orthogonal, fused frozen-A path, each layer alone
  asymtune_b_only     asymtune B-only as it trains: the fused path, siblings on one input (q/k/v,
                      gate/up) as one node that reads x once (adapters/shared_input.py)
  asymtune_b_only_2r  the same at twice the rank (LoRA's parameter count for square layers)
  asymtune_b_only_dy_once  asymtune_b_only with dB and dy·B from one pass over dy (adapters/dy_once.py, Triton;
                      CUDA, or anywhere under TRITON_INTERPRET=1; elsewhere the two matmuls run and the record says so)
  unsloth_lora        Unsloth's LoRA (FastLanguageModel, its own kernels; CUDA only, own process)
Step = forward + backward + AdamW step; the median of --steps timed steps after --warmup.
MFU = model FLOPs / step time / the GPU's dense bf16 peak, where model FLOPs are the frozen model's
forward and input-gradient FLOPs (what any adapter must compute; `model_flops`).

  python benchmarks/step_time.py --model small --interleave         # CPU
  python benchmarks/step_time.py --model llama2-7b --device cuda    # GPU, bf16 random weights
  python benchmarks/peers.py --device cuda --out peers.jsonl        # every peer, both shapes, one run
  python benchmarks/step_time.py --model llama2-7b --device cuda --quantize-4bit \
      --variants peft_lora,asymtune_b_only                          # QLoRA: NF4 base (bitsandbytes)
With --liger every variant's base model runs Liger Kernel's fused RMSNorm, SwiGLU, RoPE and linear
cross-entropy (what axolotl turns on; patched per process, so plain and Liger are two invocations).
With --quantize-4bit every linear layer but the LM head becomes a bitsandbytes NF4 layer (double
quantization, compute in the model dtype) and the fused path fuses the adapter branch only.
GPU peak memory counts from the end of the model's build (weights, optimizer state, the steps).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

if "unsloth_lora" in " ".join(sys.argv) and importlib.util.find_spec("unsloth"):  # it patches transformers as it
    import unsloth  # noqa: F401                                                      # is imported: before it is

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from asymtune.adapters import dy_once, fused, lora, shared_input
from asymtune.recipe import AdapterSpec

SHAPES = {
    "tiny": LlamaConfig(  # the scripts' own tests
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
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
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # all-linear, by name
VARIANTS = (
    "frozen_bound",
    "peft_lora",
    "peft_lora_a_frozen",
    "asymtune_b_only_per_layer",
    "asymtune_b_only",
    "asymtune_b_only_2r",
    "asymtune_b_only_dy_once",
    "unsloth_lora",
)
DEFAULT_VARIANTS = VARIANTS[:-1]  # unsloth_lora runs in a process of its own
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, by device name


def build(variant: str, args: argparse.Namespace) -> torch.nn.Module:
    if variant == "unsloth_lora":
        return build_unsloth(args)
    model = build_base(args)
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
    if not variant.endswith("_per_layer"):
        shared_input.enable(model)
    return model


def build_base(args: argparse.Namespace) -> torch.nn.Module:
    """The random-weight base model, frozen, with Liger's kernels, NF4 weights or checkpointing as asked."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a float32 7B first would not fit beside the rest
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(SHAPES[args.model])
    finally:
        torch.set_default_dtype(default_dtype)
    model.requires_grad_(False)
    if args.liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(model=model)  # the logits are never materialised: the loss is fused
    if args.quantize_4bit:
        quantize_4bit(model, dtype, args.device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_unsloth(args: argparse.Namespace) -> torch.nn.Module:
    """Unsloth's LoRA (A and B trained, its own fused kernels) on the same random weights, saved once to
    --model-dir so that its loader, which patches the model as it loads, reads them."""
    from unsloth import FastLanguageModel

    folder = Path(args.model_dir) / f"{args.model}-random"
    if not (folder / "config.json").is_file():
        base = build_base(argparse.Namespace(**{**vars(args), "liger": False, "gradient_checkpointing": False}))
        base.save_pretrained(folder)
        del base
        torch.cuda.empty_cache()
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(folder), max_seq_length=args.seq, dtype=torch.bfloat16, load_in_4bit=False, local_files_only=True
    )
    targets = TARGETS["qv"] if args.targets == "qv" else list(LLAMA_LINEAR)
    return FastLanguageModel.get_peft_model(
        model, r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0, bias="none", target_modules=targets,
        use_gradient_checkpointing="unsloth" if args.gradient_checkpointing else False,
    )


def model_flops(config: LlamaConfig, batch: int, seq: int) -> float:
    """The frozen model's forward + input-gradient FLOPs for one step: 2 × (2·N·tokens + 4·L·seq·d·tokens),
    N the matmul weights (every block's projections and the LM head), attention's QKᵀ and AV counted in full."""
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_block = 2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size
    weights = layers * per_block + d * config.vocab_size
    tokens = batch * seq
    return 2 * (2 * weights * tokens + 4 * layers * seq * d * tokens)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU by its name (the longest matching key), else None."""
    matches = [key for key in PEAK_BF16_TFLOPS if key in device_name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def quantize_4bit(model: torch.nn.Module, dtype: torch.dtype, device: str) -> None:
    """Replace every nn.Linear except the LM head by a bitsandbytes NF4 layer (QLoRA's storage), in place."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=True, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False,
                                             compress_statistics=True, quant_type="nf4")
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer.to(device))  # moving a Params4bit to its device quantizes it
    model.is_loaded_in_4bit = True


class Bench:
    """One variant's model, optimizer and batch, ready to time single training steps."""

    def __init__(self, variant: str, args: argparse.Namespace) -> None:
        self.variant, self.args = variant, args
        self.model = build(variant, args)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4) if self.trainable else None
        generator = torch.Generator().manual_seed(0)
        vocab = SHAPES[args.model].vocab_size
        self.tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=generator).to(args.device)
        self.cuda = args.device.startswith("cuda")
        self.times: list[float] = []
        if self.cuda:  # the peak from here on: weights, optimizer state and one step, not the build's scratch
            torch.cuda.reset_peak_memory_stats()

    def step(self, timed: bool) -> None:
        fused.DY_ONCE = self.variant.endswith("_dy_once")  # a process-wide switch: set for each variant's step
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.model(input_ids=self.tokens, labels=self.tokens).loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        if timed:
            self.times.append(time.perf_counter() - start)

    def record(self) -> dict:
        args, step_time = self.args, statistics.median(self.times)
        device = torch.cuda.get_device_name() if self.cuda else "cpu"
        flops = model_flops(SHAPES[args.model], args.batch, args.seq)
        peak = args.peak_tflops or (peak_tflops(device) if self.cuda else None)
        return {
            "variant": self.variant,
            "model": args.model,
            "device": device,
            "dtype": "bfloat16" if self.cuda else "float32",
            "base_weights": "nf4" if args.quantize_4bit else "dense",
            "liger": args.liger,
            "gradient_checkpointing": args.gradient_checkpointing,
            "batch": args.batch,
            "seq": args.seq,
            "targets": args.targets,
            "rank": _rank(self.variant, args),
            "dy_once_kernel": self.variant.endswith("_dy_once") and dy_once.available(self.tokens),
            "step_time_s": step_time,
            "step_time_min_s": min(self.times),
            "steps_timed": len(self.times),
            "tokens_per_s": args.batch * args.seq / step_time,
            "model_tflops_per_step": flops / 1e12,
            "mfu": flops / step_time / (peak * 1e12) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None,
            "trainable_params": sum(p.numel() for p in self.trainable),
            "threads": torch.get_num_threads(),
            "interleaved": args.interleave,
        }


def _rank(variant: str, args: argparse.Namespace) -> int | None:
    if variant == "frozen_bound":
        return None
    return 2 * args.rank if variant.endswith("_2r") else args.rank


def sequential(variant: str, args: argparse.Namespace) -> dict:
    """Build, warm up and time one variant alone (GPU: peak memory is this variant's own)."""
    bench = Bench(variant, args)
    for step in range(args.warmup + args.steps):
        bench.step(timed=step >= args.warmup)
    record = bench.record()
    del bench
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return record


def interleaved(variants: list[str], args: argparse.Namespace) -> list[dict]:
    """All variants in memory, one step of each in turn: machine drift hits every variant alike (CPU)."""
    benches = [Bench(variant, args) for variant in variants]
    for step in range(args.warmup + args.steps):
        for bench in benches:
            bench.step(timed=step >= args.warmup)
    return [bench.record() for bench in benches]


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
        "--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--liger", action="store_true", help="Liger Kernel's fused ops in the base model (CUDA)")
    parser.add_argument("--quantize-4bit", action="store_true", help="NF4 base weights through bitsandbytes (QLoRA)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute each block in backward")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by its name)")
    parser.add_argument("--model-dir", default="/tmp/asymtune-bench", help="unsloth_lora: where the weights are saved")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="CPU: alternate the variants step by step so machine noise hits all alike",
    )
    args = parser.parse_args(argv)
    if args.steps < 8:
        parser.error("--steps: the median needs at least 8 timed steps")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}")
    if "unsloth_lora" in variants and (variants != ["unsloth_lora"] or not args.device.startswith("cuda")):
        parser.error("--variants unsloth_lora runs alone on a GPU: importing Unsloth patches transformers")
    if args.interleave and args.device.startswith("cuda"):
        parser.error("--interleave is for the CPU: on a GPU each variant's peak memory must be its own")
    records = interleaved(variants, args) if args.interleave else [sequential(v, args) for v in variants]
    for record in records:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(main())
