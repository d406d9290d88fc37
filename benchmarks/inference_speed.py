"""Generation speed of a trained run, merged and unmerged, against its base model; and the time to first token.

One JSON line per variant on stdout:
  base      the recipe's base model, no adapter
  merged    the run with its adapter merged into the weights (what predict/generate/chat/serve use by default)
  unmerged  the run with the adapter kept as PEFT layers (--no-merge)
Each variant answers the same prompt, batch 1, greedily, exactly --new-tokens tokens (end tokens ignored),
--repeats times after one warm-up round, the variants interleaved; tokens/s is the median. first_token_s is the
median time from the call to the first streamed piece of text (`inference.generation.stream`, what `chat` shows),
the model already loaded.

  python benchmarks/inference_speed.py quickstart-b-only --output-dir runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from asymtune.inference import causal, loading
from asymtune.inference.generation import stream
from asymtune.inference.sampling import Sampling

QUESTION = "Do I need a permit to replace the windows of my flat?"


def timed(model: causal.CausalLM, new_tokens: int) -> tuple[int, float, float]:
    """(prompt tokens, tokens/s of one greedy `generate` of exactly `new_tokens`, seconds to the first streamed
    piece)."""
    ids = model.prompt_ids([{"role": "user", "content": QUESTION}], new_tokens, "the question")
    config = Sampling(new_tokens).config(model.model, model.tokenizer.pad_token_id)
    config.update(min_new_tokens=new_tokens)  # every variant generates the same number of tokens
    inputs = torch.tensor([ids], device=model.model.device)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    rate = (out.shape[1] - inputs.shape[1]) / (time.perf_counter() - started)
    started, first = time.perf_counter(), None
    for _ in stream(model.model, model.tokenizer, ids, Sampling(4)):
        first = first if first is not None else time.perf_counter() - started
    return len(ids), rate, first or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder or name (its newest run), or an export")
    parser.add_argument("--output-dir", default="runs", help="runs root a run name is looked up in")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    quiet = lambda _: None  # noqa: E731
    with loading.scratch_dir() as scratch:
        trained = loading.locate(args.run, Path(args.output_dir), Path(scratch))
        models = {
            "base": causal.open_base(trained.recipe.model.name, "alpaca", args.device, log=quiet),
            "merged": causal.open_run(args.run, Path(args.output_dir), Path(scratch), device=args.device, log=quiet),
            "unmerged": causal.open_run(args.run, Path(args.output_dir), Path(scratch), merge=False,
                                        device=args.device, log=quiet),
        }
        samples: dict[str, list[tuple[int, float, float]]] = {name: [] for name in models}
        for attempt in range(args.repeats + 1):  # variants interleaved, so drifting machine load hits all alike
            for name, model in models.items():
                sample = timed(model, args.new_tokens)
                if attempt:  # the first round warms up
                    samples[name].append(sample)
    for name, model in models.items():
        prompt_tokens = samples[name][0][0]
        print(json.dumps({
            "variant": name, "model": model.name, "device": str(model.model.device),
            "dtype": str(model.model.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens,
            "tokens_per_s": statistics.median(s[1] for s in samples[name]),
            "first_token_s": statistics.median(s[2] for s in samples[name]),
        }))


if __name__ == "__main__":
    sys.exit(main())
