"""`asymtune runs`: one line per run under a root, newest first, with its main result or its error."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from asymtune import recipe as recipes
from asymtune.compare import merge_label, method_name, rates_text
from asymtune.evaluation.run_eval import read_evaluations
from asymtune.registry import headline_metric
from asymtune.runs import RunDirError, resolve


@dataclass(frozen=True)
class RunLine:
    run: str  # <name>/<timestamp>-<id>
    status: str
    task: str
    method: str
    age_hours: float
    result: str  # "metric = value", the error of a failed run, or what is damaged


def summaries(root: Path) -> list[RunLine]:
    """Every run under `root`, newest first."""
    lines = []
    for run in sorted(resolve([str(root)], root), key=lambda r: r.path.name, reverse=True):
        label = f"{run.path.parent.name}/{run.path.name}"
        age = (time.time() - (run.path / "status.json").stat().st_mtime) / 3600
        try:
            status = run.read_json("status.json") or {}
            metrics = {**(run.read_json("metrics.json") or {}), **read_evaluations(run)}
            merged = merge_label(run)
        except RunDirError as error:
            lines.append(RunLine(label, "unreadable", "-", "-", age, str(error)))
            continue
        try:
            recipe = recipes.load(run.recipe_file, check_files=False)
            task, method = recipe.task, merged or method_name(recipe.adapter)
            rates = rates_text(recipe.adapter, recipe.train.learning_rate)
            method += f" ({rates})" if rates else ""
            method += f", family {recipe.family}" if recipe.family else ""
        except recipes.RecipeError:
            task, method = "-", "base model" if "base_model" in status else "-"
        best = headline_metric(metrics, task)
        result = f"{best[0]} = {best[1]:.4f}" if best else str(status.get("error", ""))
        state = str(status.get("status", "unknown"))
        if run.died():  # says running, but no process holds it
            state, result = "dead", f"its process {status.get('pid')} died without a final status; --resume it"
        lines.append(RunLine(label, state, task, method, age, result))
    return lines
