"""Random-SIGKILL chains: train a tiny B-only run, SIGKILL it at random moments (`--resume` after each), let it
finish, and compare its adapter with an uninterrupted run's. Not a pytest test (minutes of wall time):

    .venv/bin/python tests/kill_chains.py --seed 1 --chains 5 --delay 2 9
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from conftest import alpaca_rows, save_tiny_model, sft_recipe, write_jsonl
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

ASYMTUNE = [sys.executable, "-m", "asymtune.cli"]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*ASYMTUNE, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def chain(recipe_file: Path, out: Path, kills: int, delay: tuple[float, float], rng: random.Random) -> Path:
    """Train into `out`, killing up to `kills` times and resuming; return the run folder, run to the end."""
    process, killed = start(["train", str(recipe_file), "--output-dir", str(out)]), 0
    while killed < kills:
        time.sleep(rng.uniform(*delay))
        if process.poll() is not None:
            break
        process.kill()
        process.wait()
        killed += 1
        runs = list(out.glob("*/*/status.json"))
        argv = ["train", "--resume", str(runs[0].parent)] if runs else ["train", str(recipe_file), "--output-dir",
                                                                         str(out)]
        process = start(argv)
    process.wait()
    return next(out.glob("*/*/status.json")).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--delay", type=float, nargs=2, default=(2.0, 9.0), help="seconds between kills")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kill-chains-"))
    model = save_tiny_model(root / "model", LlamaConfig, LlamaForCausalLM, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256)
    recipe = sft_recipe(model, write_jsonl(root / "alpaca.jsonl", alpaca_rows(60)), dropout=0.1)
    recipe["train"].update(max_steps=30, save_steps=3, batch_size=2, lr_scheduler="constant")
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    subprocess.run([*ASYMTUNE, "train", str(recipe_file), "--output-dir", str(root / "whole")], check=True,
                   capture_output=True)
    whole = load_file(next((root / "whole").glob("*/*/adapter/adapter_model.safetensors")))
    rng, exact = random.Random(args.seed), 0
    for index in range(args.chains):
        run = chain(recipe_file, root / f"chain-{index}", args.kills, tuple(args.delay), rng)
        status = json.loads((run / "status.json").read_text())["status"]
        adapter = load_file(run / "adapter" / "adapter_model.safetensors")
        diff = max((adapter[key] - whole[key]).abs().max().item() for key in whole)
        steps = json.loads((run / "metrics.json").read_text())["train_steps"]
        leftovers = [path.name for path in run.rglob(".*.tmp")]
        exact += diff == 0
        print(f"chain {index}: {status}, {steps} steps, max |Δ adapter| {diff:.2e}, leftovers {leftovers}",
              flush=True)
    print(f"{exact}/{args.chains} chains end with the uninterrupted run's adapter exactly")


if __name__ == "__main__":
    main()
