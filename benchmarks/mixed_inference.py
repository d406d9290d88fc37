"""A mixed batch over 8 adapters: one shared A against PEFT's mixed batch and against one merged adapter.

    python benchmarks/mixed_inference.py [--adapters 8] [--targets q_proj,o_proj] [--rank 16] [--new-tokens 32]
                                         [--repeats 5] [--device cpu] [--model DIR]

Builds `--adapters` B-only adapters of one family (A frozen orthogonal from adapter seed 0, B random) on
SmolLM2-135M-Instruct (the offline asset), then greedily generates --new-tokens tokens (exactly: no early end) for a
batch of as many questions, row i answered by adapter i, three ways: PEFT's mixed batch (`adapter_names`), the same
call through asymtune's shared-A layers, and one adapter merged into the weights answering the whole batch (the
floor: no adapter cost at all). Prints one JSON line per path and a markdown table of generated tokens/s (mean ± std
over repeats taken in turns, after one untimed warm-up each), and whether the two mixed paths gave the same tokens."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from asymtune import assets
from asymtune.adapters import lora, shared_a
from asymtune.recipe import AdapterSpec

QUESTIONS = ["What is a building permit?", "How long does a permit take?", "Who pays for the inspection?",
             "When is an energy declaration needed?", "Can I change my facade?", "What does a contractor insure?",
             "How thick must a wall be?", "Why is a foundation inspected?"]


def build_adapters(model_dir: Path, folder: Path, count: int, targets: list[str], rank: int) -> list[Path]:
    """`count` B-only adapters of one family with random B's (each as big as a trained one's would be)."""
    spec = AdapterSpec(rank=rank, targets=targets, A={"init": "orthogonal", "trainable": False},
                       B={"init": "zero", "trainable": True})
    folders = []
    for i in range(count):
        peft_model = lora.apply(AutoModelForCausalLM.from_pretrained(model_dir), spec)
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for _, layer in lora.lora_layers(peft_model):
                weight = layer.lora_B["default"].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.01)
        lora.save_adapter(peft_model, spec, folder / f"adapter{i}")
        folders.append(folder / f"adapter{i}")
    return folders


def generate(model, batch: dict, new_tokens: int, **routed) -> tuple[float, torch.Tensor]:
    """Generated tokens/s of one greedy `generate` of exactly `new_tokens` tokens per row, and its tokens."""
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                **routed)
    return batch["input_ids"].shape[0] * new_tokens / (time.perf_counter() - started), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,o_proj")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", type=Path, help="a causal LM folder with its tokenizer (default: the SmolLM2 asset)")
    args = parser.parse_args()
    model_dir = args.model or assets.resolve("smollm2-135m-instruct", print)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                             tokenize=False, add_generation_prompt=True) for i in range(args.adapters)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folders = build_adapters(model_dir, Path(scratch), args.adapters, args.targets.split(","), args.rank)
        names = [f"adapter{i}" for i in range(args.adapters)]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(folders[0]),
                                          adapter_name=names[0])
        for name, folder in zip(names[1:], folders[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        model = model.to(args.device).eval()
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(folders[0]))
        merged = merged.merge_and_unload().to(args.device).eval()

        def run(path: str) -> tuple[float, torch.Tensor]:
            if path == "one merged adapter":
                return generate(merged, batch, args.new_tokens)
            shared_a.disable(model)
            if path == "asymtune shared A":
                shared_a.enable(model, names)
            return generate(model, batch, args.new_tokens, adapter_names=names)

        paths = ("PEFT mixed batch", "asymtune shared A", "one merged adapter")
        tokens = {path: run(path)[1] for path in paths}  # warm-up, untimed
        results: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.repeats):  # the paths take turns, so drifts in machine speed hit each alike
            for path in paths:
                results[path].append(run(path)[0])
    peft_tokens, shared_tokens = tokens["PEFT mixed batch"], tokens["asymtune shared A"]
    same = bool(torch.equal(peft_tokens, shared_tokens))
    setting = {"model": str(model_dir), "adapters": args.adapters, "targets": args.targets, "rank": args.rank,
               "new_tokens": args.new_tokens, "prompt_tokens": batch["input_ids"].shape[1], "device": args.device,
               "same_tokens": same}
    for path, speeds in results.items():
        print(json.dumps({"path": path, **setting, "tokens_per_s": speeds}), file=sys.stderr)
    print(f"\n{json.dumps(setting)}\n\n| path | generated tokens/s | vs PEFT | time vs merged |\n|---|---|---|---|")
    peft, floor = (statistics.fmean(results[k]) for k in ("PEFT mixed batch", "one merged adapter"))
    for path, speeds in results.items():
        mean = statistics.fmean(speeds)
        print(f"| {path} | {mean:.1f} ± {statistics.stdev(speeds):.1f} | {mean / peft:.2f}× | {floor / mean:.2f}× |")


if __name__ == "__main__":
    main()
