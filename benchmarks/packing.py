"""Padded vs packed SFT training on the quickstart data: tokens/s, padding waste and eval loss over seeds.

    python benchmarks/packing.py [--seeds 0,1,2] [--steps 40] [--packed-batch-size 2] [--packed-grad-accum 1]
                                 [--output-dir runs/packing]

Each seed trains recipes/quickstart_b_only.yaml twice, padded (train.batch_size 4) and packed (data.packing, the
packs of at most data.max_length tokens in batches of --packed-batch-size, --packed-grad-accum batches a step),
alternating so both see the same machine state; prints one JSON line per run and a markdown table of mean ± std per
setting."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from asymtune.runs import resolve

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart_b_only.yaml"
SHOWN = ("train_tokens_per_s", "train_padding_percent", "train_runtime_s", "train_tokens", "eval_loss")


def train(name: str, seed: int, steps: int, root: Path, extra: list[str]) -> dict:
    sets = [f"name={name}", f"seed={seed}", f"adapter.seed={seed}", f"train.max_steps={steps}", *extra]
    command = [sys.executable, "-m", "asymtune.cli", "train", str(RECIPE), "--output-dir", str(root)]
    subprocess.run(command + [arg for s in sets for arg in ("--set", s)], check=True, capture_output=True)
    run = resolve([str(root / name)], root)[-1]
    return run.read_json("metrics.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--packed-batch-size", type=int, default=2)
    parser.add_argument("--packed-grad-accum", type=int, default=1)
    parser.add_argument("--output-dir", default="runs/packing")
    args = parser.parse_args()
    root = Path(args.output_dir)
    settings = {"padded": ["data.packing=false", "train.batch_size=4"],
                "packed": ["data.packing=true", f"train.batch_size={args.packed_batch_size}",
                           f"train.grad_accum={args.packed_grad_accum}"]}
    found: dict[str, list[dict]] = {name: [] for name in settings}
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting, extra in settings.items():
            metrics = train(f"bench-{setting}", seed, args.steps, root, extra)
            found[setting].append(metrics)
            print(json.dumps({"setting": setting, "seed": seed, **{k: metrics.get(k) for k in SHOWN}}), flush=True)
    print("\n| setting | " + " | ".join(SHOWN) + " |\n|---|" + "---|" * len(SHOWN))
    for setting, runs in found.items():
        cells = []
        for key in SHOWN:
            values = [run[key] for run in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.3f}{spread}")
        print(f"| {setting} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
