"""`asymtune eval`: evaluate run directories (or a bare base model) and store results in RUN/eval/."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from asymtune import atomic, recipe
from asymtune.runs import RunDir, RunDirError

MMLU_FILE = "mmlu.json"


def latest_run(root: Path) -> RunDir:
    """The most recently started training run under `root` (run folders are named by start time)."""
    candidates = sorted((p.parent for p in root.glob("*/*/recipe.yaml")), key=lambda p: p.name)
    if not candidates:
        raise RunDirError(f"{root}: no runs yet; give a run directory or --model")
    return RunDir(candidates[-1])


def base_model_run(root: Path, model_name: str) -> RunDir:
    """A run directory that holds only evaluations of a base model with no adapter."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", model_name.lower()).strip("-.") or "model"
    run = RunDir.create(root, f"base-{slug}")
    run.set_status("running", base_model=model_name)
    return run


def model_args_for(run: RunDir, status: dict[str, Any], log) -> dict[str, str]:
    """lm-eval `hf` arguments for a run: its base model plus `peft=` its adapter (none for base-model runs)."""
    from asymtune.models import lm_eval_model_args, select_dtype

    if "base_model" in status:
        spec = recipe.ModelSpec(name=status["base_model"])
        return {**lm_eval_model_args(spec, log), "dtype": str(select_dtype("auto")).removeprefix("torch.")}
    if status.get("status") != "completed" or not (run.adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"{run.path}: status {status.get('status', 'unknown')}, no finished adapter to evaluate")
    trained = recipe.load(run.path / "recipe.yaml")
    if trained.task != "sft":
        raise RunDirError(f"{run.path}: MMLU evaluates causal language models; this is a {trained.task} run")
    spec = trained.model
    dtype = str(select_dtype(spec.dtype)).removeprefix("torch.")
    return {**lm_eval_model_args(spec, log), "peft": str(run.adapter_dir), "dtype": dtype}


def run_mmlu(run: RunDir, options: dict[str, Any], log) -> dict[str, dict[str, float]]:
    """MMLU for one run; writes RUN/eval/mmlu.json (summary + lm-eval results) and per-question samples."""
    from lm_eval.utils import handle_non_serializable

    from asymtune.evaluation import mmlu

    status = run.read_json("status.json") or {}
    model_args = model_args_for(run, status, log)
    with tempfile.TemporaryDirectory(prefix="asymtune-mmlu-") as workdir:
        results, summary = mmlu.evaluate(model_args=model_args, workdir=Path(workdir), **options)
    samples = results.pop("samples", {})
    record = {"summary": summary, "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
              "model_args": model_args, "lm_eval": results}
    atomic.write_text(run.path / "eval" / MMLU_FILE, json.dumps(record, indent=2, default=handle_non_serializable))
    lines = (json.dumps({"task": task, **sample}, default=handle_non_serializable)
             for task, task_samples in samples.items() for sample in task_samples)
    atomic.write_text(run.path / "eval" / "mmlu_samples.jsonl", "\n".join(lines) + "\n")
    if "base_model" in status:
        run.set_status("completed", base_model=status["base_model"])
    return summary


def read_evaluations(run: RunDir) -> dict[str, float]:
    """Flat metrics from RUN/eval/*.json summaries, e.g. {'mmlu_stem': 0.41, 'mmlu_average': 0.45}."""
    metrics = {}
    mmlu_file = run.path / "eval" / MMLU_FILE
    if mmlu_file.is_file():
        for name, value in json.loads(mmlu_file.read_text())["summary"].items():
            metrics[f"mmlu_{name}"] = value["acc"]
    return metrics
