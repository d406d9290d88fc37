"""Two tasks, one merged adapter: the construction FAQ in English and in Swedish, B-only (one family) vs LoRA.

    python benchmarks/merge.py [--steps 40] [--seed 0] [--output-dir runs/merge-bench]

Trains each quickstart recipe (B-only r=16 and LoRA r=8: the same trainable parameters) on each language as one
family (`asymtune sweep --grid data.train=...`: one adapter seed), merges each pair with equal weights
(`asymtune merge`: B-only exactly through the shared A; LoRA through PEFT's svd at rank 8 and its cat at rank 16),
and evaluates all seven adapters on both languages' held-out rows (the merged run's two-source data). Prints one JSON
line per adapter and a markdown table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from asymtune.runs import resolve

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
LANGUAGES = {"en": "zaragoza-construction-faq-en", "sv": "zaragoza-construction-faq-sv"}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "asymtune.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/merge-bench")
    args = parser.parse_args()
    root = Path(args.output_dir)
    grid = "data.train=" + ",".join(LANGUAGES.values())
    adapters: dict[str, Path] = {}
    for method, recipe in (("B-only r=16", "quickstart_b_only.yaml"), ("LoRA r=8", "quickstart_lora.yaml")):
        cli("sweep", str(RECIPES / recipe), "--grid", grid, "--seeds", str(args.seed),
            "--set", f"train.max_steps={args.steps}", "--output-dir", str(root))
        name = recipe.removesuffix(".yaml").replace("_", "-")
        for language, asset in LANGUAGES.items():
            adapters[f"{method}, {language}"] = resolve([str(root / f"{name}-train{asset}")], root)[-1].path
        pair = [str(adapters[f"{method}, {language}"]) for language in LANGUAGES]
        for combination in ("auto", "cat") if method.startswith("LoRA") else ("auto",):
            out = root / f"{name}-merge-{combination}"
            if not out.exists():
                cli("merge", *pair, "--combination", combination, "--output", str(out), "--output-dir", str(root))
            record = json.loads((out / "merge.json").read_text())
            adapters[f"{method}, merged ({record['combination']}, r={record['rank']})"] = out
    mix = resolve([str(root / "quickstart-b-only-merge-auto")])[0].trained_recipe()
    print("\n| adapter | eval loss en | eval loss sv | ΔW error vs Σ wᵢ·ΔWᵢ |\n|---|---|---|---|")
    for label, path in adapters.items():
        metrics = evaluate(path, mix)
        record = json.loads((path / "merge.json").read_text()) if (path / "merge.json").is_file() else None
        error = f"{record['delta_error']['relative']:.2e}" if record else "—"
        losses = [metrics[f"eval_{asset.replace('-', '_')}_loss"] for asset in LANGUAGES.values()]
        line = {"adapter": label, "run": str(path), "eval_loss": losses, "delta_error": error}
        print(json.dumps(line), file=sys.stderr)
        print(f"| {label} | {losses[0]:.3f} | {losses[1]:.3f} | {error} |", flush=True)


def evaluate(path: Path, mix) -> dict:
    """The run's adapter evaluated on both languages' eval rows (the merged run's data: each source's own split)."""
    from asymtune.tasks.base import evaluate_saved, family

    run = resolve([str(path)])[0]
    recipe = run.trained_recipe()
    return evaluate_saved(family("sft"), recipe.model_copy(update={"data": mix.data}), run)


if __name__ == "__main__":
    main()
