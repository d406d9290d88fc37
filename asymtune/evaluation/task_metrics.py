"""`asymtune eval RUN` without --mmlu: a finished run's own task metrics again, from what it saved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asymtune import atomic, recipe
from asymtune.evaluation.run_eval import TASK_FILE, latest_run
from asymtune.runs import RunDir, RunDirError, resolve
from asymtune.tasks.base import evaluate_saved, family


def rerun(run: RunDir, trust_remote_code: bool = False) -> tuple[recipe.Recipe, dict[str, Any]]:
    """(the run's recipe, its task metrics re-computed from its saved adapter or model); written to
    RUN/eval/task.json while holding the run."""
    if run.status != "completed":
        raise RunDirError(f"{run.path}: status {run.status}; only completed runs have an adapter to evaluate")
    trained = run.trained_recipe(trust_remote_code)
    with run.exclusive("evaluation"):
        metrics = evaluate_saved(family(trained.task), trained, run)
        atomic.write_json(run.path / "eval" / TASK_FILE, metrics)
    return trained, metrics


def rerun_all(
    refs: list[str], root: Path, trust_remote_code: bool = False
) -> Iterator[tuple[RunDir, recipe.Recipe, dict[str, Any]]]:
    """`rerun` for each run `refs` name under `root` (`runs.resolve`), or for the latest run there."""
    for run in resolve(refs, root) if refs else [latest_run(root)]:
        yield run, *rerun(run, trust_remote_code)
