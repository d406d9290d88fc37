"""Liger Kernel under a B-only SFT run: one recipe trained with `train.liger_kernel` off, then on (the Trainer's own
switch), through asymtune's real training path; per-step train loss of each, their difference, the median step time
and the peak GPU memory, as JSON lines.

The model is a random Llama of a named shape with SmolLM2's tokenizer (written once to OUTPUT/model), so the check
needs no hub; the data is the construction FAQ. Both runs start from the same weights and adapter seed and see the same
batches, so with B zero-initialised step 1's loss is the base model's through each set of kernels.

    python benchmarks/liger_sft.py --output-dir /tmp/liger --shape smollm2-1.7b --steps 40 --out liger.jsonl
    python benchmarks/liger_sft.py --output-dir /tmp/liger --shape tiny --variants off --device cpu   # the script
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
import yaml

SHAPES = {  # Llama shapes: hidden, MLP, layers, heads, key-value heads
    "tiny": (64, 128, 2, 4, 2),
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "smollm2-360m": (960, 2560, 32, 15, 5),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32),
}


def build_model(folder: Path, shape: str, tokenizer: Path, device: str) -> None:
    """A random-weight Llama of `shape` in bf16 with `tokenizer`'s files beside it (skipped if already written)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return
    hidden, mlp, layers, heads, kv_heads = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=49152,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, rope_theta=100000.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    del model


def recipe(model: Path, data: str, steps: int, batch_size: int, max_length: int, liger: bool) -> dict:
    """The B-only (r=16, every linear layer) SFT recipe, logging every step's loss."""
    source = str(Path(data).resolve()) if Path(data).exists() else data  # a file, or an asset's name
    return {
        "name": f"liger-check-{'on' if liger else 'off'}", "task": "sft", "seed": 0,
        "model": {"name": str(model), "dtype": "auto"},
        "data": {"train": source, "format": "alpaca", "eval_fraction": 0.1, "max_eval_samples": 32,
                 "max_length": max_length},
        "adapter": {"rank": 16, "targets": "all-linear", "A": {"init": "orthogonal", "trainable": False},
                    "B": {"init": "zero", "trainable": True}},
        "train": {"max_steps": steps, "batch_size": batch_size, "learning_rate": 1e-3, "warmup_ratio": 0.05,
                  "logging_steps": 1, "save_steps": steps, "liger_kernel": liger},
    }


def train_variant(spec: dict, root: Path, warmup: int) -> dict:
    """Train `spec` in this process; its losses by step, median step time after `warmup` steps and peak memory."""
    from asymtune import lifecycle
    from asymtune.plotting.series import read_log

    root.mkdir(parents=True, exist_ok=True)
    recipe_file = root / f"{spec['name']}.yaml"
    recipe_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    started = time.perf_counter()
    finished = lifecycle.train(recipe_file, (), root, None, ["liger_sft.py"], print)
    wall = time.perf_counter() - started
    steps = [row for row in read_log(finished.run) if "loss" in row]
    times = [b["time"] - a["time"] for a, b in itertools.pairwise(steps)][warmup:]
    result = {
        "variant": spec["name"], "liger_kernel": spec["train"]["liger_kernel"],
        "losses": {row["step"]: row["loss"] for row in steps},
        "median_step_s": statistics.median(times) if times else None, "timed_steps": len(times),
        "eval_loss": finished.metrics.get("eval_loss"), "wall_s": wall,
        "peak_memory_gib": (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else None,
    }
    del finished
    return result


def compare(off: dict, on: dict) -> dict:
    """Liger against plain: loss differences by step and the step-time ratio."""
    shared = sorted(set(off["losses"]) & set(on["losses"]))
    diffs = [abs(off["losses"][step] - on["losses"][step]) for step in shared]
    return {
        "variant": "liger_vs_plain", "steps_compared": len(shared),
        "step1_abs_loss_diff": diffs[0] if diffs else None, "max_abs_loss_diff": max(diffs) if diffs else None,
        "max_rel_loss_diff": max(d / abs(off["losses"][s]) for d, s in zip(diffs, shared, strict=True)) if diffs
        else None,
        "eval_loss_diff": abs(off["eval_loss"] - on["eval_loss"]),
        "step_time_ratio_liger_over_plain": on["median_step_s"] / off["median_step_s"],
        "peak_memory_saved_gib": (off["peak_memory_gib"] - on["peak_memory_gib"]) if off["peak_memory_gib"] else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    parser.add_argument("--tokenizer", type=Path, help="folder with SmolLM2's tokenizer.json (default: the asset)")
    parser.add_argument("--data", default="zaragoza-construction-faq-en", help="an alpaca file or asset")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="step intervals left out of the median")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--variants", default="off,on", help="off, on, or off,on")
    parser.add_argument("--device", default="cuda", help="where the random model is built")
    parser.add_argument("--out", type=Path, help="append the JSON lines here too")
    args = parser.parse_args(argv)
    if args.tokenizer is None:
        from asymtune.assets import resolve

        args.tokenizer = resolve("smollm2-135m-instruct")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model = args.output_dir / f"model-{args.shape}"
    build_model(model, args.shape, args.tokenizer, args.device)
    results = {}
    for variant in args.variants.split(","):
        spec = recipe(model, args.data, args.steps, args.batch_size, args.max_length, variant == "on")
        results[variant] = train_variant(spec, args.output_dir / "runs", args.warmup)
    lines = [{**r, "shape": args.shape, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "torch": torch.__version__} for r in results.values()]
    if {"off", "on"} <= results.keys():
        lines.append(compare(results["off"], results["on"]))
    for line in lines:
        print(json.dumps(line))
    if args.out:
        with args.out.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
