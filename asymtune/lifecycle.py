"""A training run from start (or resume) to its final status.

`train` opens the run (a new run directory, or a stopped run that may be resumed), marks it running,
installs the run's own SIGINT/SIGTERM handler, trains through the task's family and maps how training
ended onto the run's status: completed (metrics written), failed on a user error (exit 2), failed on
divergence or a crash (exit 1, traceback in logs/error.log), or interrupted (exit 130, with the
command that resumes it). Under several processes rank 0 owns the run directory.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune import atomic, distributed, trackers
from asymtune import recipe as recipes
from asymtune.errors import RunEnded, UserError
from asymtune.preflight import fit_to_model
from asymtune.registry import missing_extras
from asymtune.runs import RunDir, RunDirError, pid_alive, trainer_here


@dataclass(frozen=True)
class Finished:
    """A run that completed: where it is, what it trained and what it measured."""

    run: RunDir
    recipe: recipes.Recipe
    metrics: dict[str, Any]


def train(
    recipe_file: Path | None, overrides: tuple[str, ...], output_dir: Path, resume_dir: Path | None,
    argv: list[str], log: Callable[[str], None], trust_remote_code: bool = False,
) -> Finished:
    """Train `recipe_file` into a new run under `output_dir`, or continue the stopped run `resume_dir`.

    A recipe opts into running its model's own code with model.trust_remote_code (a warning names the code);
    a resumed run's stored opt-in counts only with `trust_remote_code` (--trust-remote-code)."""
    if resume_dir is None:
        if recipe_file is None:
            raise UserError("give a RECIPE_FILE to train, or --resume RUN_DIR to continue a run")
        if trust_remote_code:
            raise UserError("--trust-remote-code goes with --resume; a recipe opts in with model.trust_remote_code")
        recipe = recipes.load(recipe_file, overrides)  # before the heavy imports: recipe errors come at once
        if recipe.model.trust_remote_code:
            log(f"[yellow]warning:[/yellow] {remote_code_warning(recipe.model)}")
    elif recipe_file is not None or overrides:
        raise UserError("--resume continues a run with the recipe it started with: drop RECIPE_FILE and --set")
    else:
        stopped = open_to_resume(resume_dir)  # on every rank, before rank 0 marks it running
        recipe = stopped.trained_recipe(trust_remote_code)
    missing = missing_extras(recipe.task)
    if missing:
        raise UserError(f"task {recipe.task} needs {', '.join(missing)}")
    source = recipe_file if resume_dir is None else stopped.recipe_file
    if recipe.train.liger_kernel:
        check_liger(source)
    absent_trackers = trackers.missing(recipe.train.report_to)
    if absent_trackers:
        raise UserError(f"{source}: train.report_to: {'; '.join(absent_trackers)}")
    if resume_dir is None:
        recipe = fit_to_model(recipe, str(recipe_file), log)
        run = distributed.shared_run_dir(lambda: start(recipe, output_dir, argv))
        with run.exclusive("training"):
            return _run(recipe, run, log)
    run = distributed.shared_run_dir(lambda: stopped)
    if run.died():
        log(f"[yellow]warning:[/yellow] {run.path}: the process training it died without a final status")
    with run.exclusive("training"):
        if run.writes:
            open_to_resume(run.path)  # again, now that no other process can start it
        _prepare_resume(run, log)
        return _run(recipe, run, log)


def _run(recipe: recipes.Recipe, run: RunDir, log: Callable[[str], None]) -> Finished:
    run.set_status("running", pid=os.getpid(), host=platform.node())
    log(f"run directory: [bold]{run.path}[/bold]")
    metrics = execute(recipe, run)
    run.write_metrics(metrics)
    run.set_status("completed")
    return Finished(run, recipe, metrics)


def _prepare_resume(run: RunDir, log: Callable[[str], None]) -> None:
    """Remove what a stopped process left half-written, and pick the checkpoint to continue from."""
    from asymtune.checkpoints import newest_complete  # transformers loads only when training

    if run.writes:
        for leftover in run.path.rglob(".*.tmp"):  # atomic writes cut off mid-way
            shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
    run.resume_from = newest_complete(run.path / "checkpoints", lambda m: log(f"[yellow]warning:[/yellow] {m}"))
    start_point = f"checkpoint-{run.resume_from.step}" if run.resume_from else "the start (no complete checkpoint)"
    log(f"resuming from {start_point}")
    run.append_log({"event": "resumed", "from_step": run.resume_from.step if run.resume_from else 0})


def check_liger(source: Path) -> None:
    """train.liger_kernel runs Liger's Triton kernels: refuse it, naming the recipe, without the package or a GPU."""
    import importlib.util

    import torch

    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError(f"{source}: train.liger_kernel needs the liger-kernel package (pip install 'asymtune[liger]')")
    if not torch.cuda.is_available():
        raise UserError(f"{source}: train.liger_kernel runs Triton kernels on a CUDA GPU, and none is visible here; "
                        "set train.liger_kernel: false")


def remote_code_warning(model: recipes.ModelSpec) -> str:
    """What model.trust_remote_code: true will run: the Python files of a local model folder, or a hub repo's."""
    folder = Path(model.name) if model.name else None
    if folder is not None and folder.is_dir():
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*.py"))
        shipped = ", ".join(files) if files else "none found (nothing to run)"
        return f"model.trust_remote_code: true runs the code in {folder}: {shipped}"
    return f"model.trust_remote_code: true runs whatever code the hub repo {model.name} ships"


def start(recipe: recipes.Recipe, output_dir: Path, argv: list[str]) -> RunDir:
    """A new run directory holding the resolved recipe and the environment."""
    run = RunDir.create(output_dir, recipe.name)
    run.write_recipe(recipe)
    run.write_env(recipe, argv)
    return run


def open_to_resume(path: Path) -> RunDir:
    """The run at `path`, unless it completed or another process on this host is still training it."""
    run = RunDir.open(path)
    status = run.read_json("status.json") or {}
    if status.get("status") == "completed":
        raise RunDirError(f"{path}: the run already completed; start a new one with asymtune train RECIPE")
    pid = trainer_here(status)
    if pid is not None and pid_alive(pid):
        raise RunDirError(f"{path}: still being trained by process {pid}; stop it first")
    return run


def execute(recipe: recipes.Recipe, run: RunDir) -> dict[str, Any]:
    """Train `run` through its task family with the run's own stop handler; an error ends the run's status."""
    from asymtune.callbacks import GracefulStop, NonFiniteLoss, TrainingInterrupted
    from asymtune.checkpoints import newest_complete
    from asymtune.tasks.base import family, fit

    resume_hint = f"resume with: asymtune train --resume {run.path}"
    stop = GracefulStop()
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return fit(family(recipe.task), recipe, run, stop)
    except UserError as error:
        run.set_status("failed", error=str(error))
        raise
    except NonFiniteLoss as error:
        run.set_status("failed", error=str(error))
        raise RunEnded(f"{error}; the last checkpoint before it is kept in {run.path}/checkpoints", 1) from None
    except TrainingInterrupted as error:
        run.set_status("interrupted", step=error.step)
        raise RunEnded(f"interrupted: {error}; {resume_hint}", 130) from None
    except KeyboardInterrupt:  # a second signal, or one outside the training loop: resume from the last checkpoint
        last = newest_complete(run.path / "checkpoints", warn=lambda message: None)
        run.set_status("interrupted", step=last.step if last else 0)
        raise RunEnded(f"interrupted; {resume_hint}", 130) from None
    except Exception as error:
        if run.writes:
            atomic.write_text(run.path / "logs" / "error.log", traceback.format_exc())
        run.set_status("failed", error=f"{type(error).__name__}: {error}")
        raise RunEnded(f"training failed: {type(error).__name__}: {error} (traceback in {run.path}/logs/error.log)",
                       1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
