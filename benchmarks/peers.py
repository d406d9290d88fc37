"""Issue 18's side-by-side benchmark: every LoRA peer and B-only beside the frozen bound, plain and with Liger's
kernels, on two shapes, in one run on one GPU; one JSON line per measurement and a markdown table.

    python benchmarks/peers.py --device cuda --out peers.jsonl                       # the GPU run
    python benchmarks/peers.py --device cpu --shapes small-4x256 --steps 8 --kernels plain    # the script, here
    python benchmarks/peers.py --table peers.jsonl peers-unsloth.jsonl          # one table of several runs

Each (shape, kernels) setting runs `step_time.py` in a process of its own (Liger and Unsloth patch transformers
for the whole process), with a time limit; a setting that fails or cannot install (no Liger, no Unsloth) becomes one
line with its error, and the rest still run. Shapes: Llama-2-7B bf16 batch 4 × 1024 (BENCHMARKS.md's) and one
4096-token sequence a step (the length of NVIDIA's packed LoRA runs; attention causal over the whole 4096, no
document boundaries), all linear layers, r = 16. In the table each row is compared with the frozen bound under the
same kernels and with the fastest LoRA peer (PEFT, PEFT + Liger, Unsloth) of its shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEP_TIME = Path(__file__).resolve().parent / "step_time.py"
SHAPES = {  # name: (step_time --model, batch, seq)
    "7b-4x1024": ("llama2-7b", 4, 1024),
    "7b-1x4096": ("llama2-7b", 1, 4096),
    "small-4x256": ("small", 4, 256),
    "tiny-2x16": ("tiny", 2, 16),
}
KERNELS = {  # name: (extra step_time arguments, variants)
    "plain": ([], "frozen_bound,peft_lora,asymtune_b_only_per_layer,asymtune_b_only,asymtune_b_only_dy_once,"
                  "asymtune_b_only_2r"),
    "liger": (["--liger"], "frozen_bound,peft_lora,asymtune_b_only,asymtune_b_only_dy_once,asymtune_b_only_2r"),
    "unsloth": ([], "unsloth_lora"),
}
LORA_PEERS = ("peft_lora", "unsloth_lora")


def measure(shape: str, kernels: str, args: argparse.Namespace) -> list[dict]:
    """One step_time.py process for (shape, kernels): its records, or one record naming why it failed."""
    model, batch, seq = SHAPES[shape]
    extra, variants = KERNELS[kernels]
    command = [sys.executable, str(STEP_TIME), "--model", model, "--device", args.device, "--batch", str(batch),
               "--seq", str(seq), "--targets", "all-linear", "--rank", str(args.rank), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--variants", variants, *extra]
    if args.device == "cpu":
        command.append("--interleave")
    labels = {"shape": shape, "kernels": kernels}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        stdout, error = done.stdout, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        failed = done.returncode != 0
    except subprocess.TimeoutExpired as stopped:  # the variants measured before the limit still count
        stdout, error, failed = stopped.stdout or "", f"stopped at the {args.timeout} s limit", True
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    records = [{**labels, **json.loads(line)} for line in stdout.splitlines() if line.startswith("{")]
    return records + ([{**labels, "error": error}] if failed else [])


def table(records: list[dict]) -> str:
    """Markdown: each measurement against the frozen bound of its shape and kernels, and the fastest LoRA peer."""
    lines = ["| shape | kernels | variant | rank | ms/step | tokens/s | MFU | peak GiB | × bound (same kernels) "
             "| fastest LoRA peer's time ÷ this |", "|---|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        if "error" in record:
            lines.append(f"| {record['shape']} | {record['kernels']} | failed: {record['error']} | | | | | | | |")
            continue
        same = [r for r in records if r.get("shape") == record["shape"] and "error" not in r]
        bound = next((r for r in same if r["variant"] == "frozen_bound" and r["kernels"] == record["kernels"]), None)
        peers = [r["step_time_s"] for r in same if r["variant"] in LORA_PEERS]
        time, mfu, peak = record["step_time_s"], record.get("mfu"), record.get("peak_memory_gib")
        cells = [
            record["shape"], record["kernels"], record["variant"], record["rank"] or "-", f"{1000 * time:.1f}",
            f"{record['tokens_per_s']:,.0f}", f"{mfu:.1%}" if mfu else "-", f"{peak:.2f}" if peak is not None else "-",
            f"{time / bound['step_time_s']:.3f}" if bound else "-", f"{min(peers) / time:.2f}" if peers else "-",
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="7b-4x1024,7b-1x4096", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--kernels", default="plain,liger,unsloth", help="comma-separated: " + ", ".join(KERNELS))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=240, help="seconds for each (shape, kernels) process")
    parser.add_argument("--out", help="also write the JSON lines here")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="only print the table of these runs' lines")
    args = parser.parse_args(argv)
    if args.table:  # e.g. the asymtune and the Unsloth call's lines, which need separate wheel sets
        print(table([json.loads(line) for path in args.table for line in Path(path).read_text().splitlines()]))
        return
    for option, chosen, known in (("--shapes", args.shapes, SHAPES), ("--kernels", args.kernels, KERNELS)):
        unknown = [name for name in chosen.split(",") if name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    records = []
    for shape in args.shapes.split(","):
        for kernels in args.kernels.split(","):
            for record in measure(shape, kernels, args):
                print(json.dumps(record), flush=True)
                records.append(record)
                if args.out:
                    with open(args.out, "a") as out:
                        out.write(json.dumps(record) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
