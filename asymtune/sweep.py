"""Sweeps: a recipe × a grid of overrides × seeds, planned and validated before anything trains."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from asymtune import recipe as recipes
from asymtune.compare import Row, build
from asymtune.runs import RunDir


@dataclass(frozen=True)
class Job:
    """One training run of a sweep: the overrides that make it and the recipe they resolve to."""

    overrides: tuple[str, ...]
    recipe: recipes.Recipe


def parse_grid(entries: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """['adapter.rank=8,16'] -> [('adapter.rank', ['8', '16'])]."""
    grid = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise recipes.RecipeError(f"--grid {entry!r}: expected key.path=v1,v2,...")
        grid.append((key.strip(), options))
    return grid


def plan(path: Path, seeds: list[int], grid: list[tuple[str, list[str]]], overrides: tuple[str, ...]) -> list[Job]:
    """Every (grid point, seed) as a validated Job; the run name gets one '-<key><value>' per grid key.

    A seed sets both the training seed and the adapter seed (which draws the random frozen factor).
    """
    base = recipes.load(path, overrides)
    jobs = []
    for point in itertools.product(*(options for _, options in grid)):
        suffix = "".join(f"-{key.rsplit('.', 1)[-1]}{value}" for (key, _), value in zip(grid, point, strict=True))
        point_overrides = tuple(f"{key}={value}" for (key, _), value in zip(grid, point, strict=True))
        for seed in seeds:
            sets = (*overrides, *point_overrides, f"seed={seed}", f"adapter.seed={seed}", f"name={base.name}{suffix}")
            jobs.append(Job(overrides=sets, recipe=recipes.load(path, sets)))
    return jobs


def runs_of(root: Path, recipe: recipes.Recipe, status: str) -> Iterator[RunDir]:
    """The runs under root/<name> with `status` trained from exactly this resolved recipe (defaults included: a run
    stored before a key was added counts), oldest first."""
    wanted = recipes.to_yaml(recipe)
    for path in sorted((root / recipe.name).glob("*/status.json")):
        run = RunDir(path.parent)
        if run.status == status and run.recipe_file.is_file():
            try:
                stored = recipes.to_yaml(recipes.load(run.recipe_file, check_files=False))
            except recipes.RecipeError:
                continue
            if stored == wanted:
                yield run


def finished_run(root: Path, recipe: recipes.Recipe) -> RunDir | None:
    """A completed run trained from exactly this resolved recipe, if any."""
    return next(runs_of(root, recipe, "completed"), None)


def run_all(recipe_file: Path, jobs: list[Job], root: Path, log: Callable[[str], None]) -> list[str]:
    """Train every job not already done, each in its own `asymtune train` process; return the failed ones."""
    failed = []
    for index, job in enumerate(jobs, start=1):
        label = f"[{index}/{len(jobs)}] {job.recipe.name} seed {job.recipe.seed}"
        finished = finished_run(root, job.recipe)
        if finished is not None:
            log(f"{label}: already done in {finished.path}")
            continue
        log(f"{label}: training")
        command = [sys.executable, "-m", "asymtune.cli", "train", str(recipe_file), "--output-dir", str(root)]
        command += [arg for override in job.overrides for arg in ("--set", override)]
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(label)
    return failed


def sweep_refs(jobs: list[Job], root: Path) -> list[str]:
    """The folders of the sweep's recipe names that hold runs (earlier sweeps' runs included)."""
    names = sorted({job.recipe.name for job in jobs})
    return [str(root / name) for name in names if (root / name).is_dir()]


@dataclass(frozen=True)
class Swept:
    """A finished sweep: its jobs, the folders of its runs, their compare rows, the jobs that failed, and the report
    written (None: not asked for, or no run to report on)."""

    jobs: list[Job]
    refs: list[str]
    rows: list[Row]
    failed: list[str]
    report: Path | None


def sweep(recipe_file: Path, seeds: list[int], grid: list[tuple[str, list[str]]], overrides: tuple[str, ...],
          root: Path, log: Callable[[str], None], report: str | None = None) -> Swept:
    """Plan and validate every job, train those not done, compare the sweep's runs and, with `report` (a file, or ''
    for ROOT/<recipe file stem>-report.html), write the HTML report on them (failed runs included)."""
    from asymtune import html_report

    report_file = None if report is None else Path(report) if report else root / f"{recipe_file.stem}-report.html"
    if report_file is not None:
        html_report.check_output(report_file)
    jobs = plan(recipe_file, seeds, grid, overrides)
    failed = run_all(recipe_file, jobs, root, log)
    refs = sweep_refs(jobs, root)
    if not refs:
        return Swept(jobs, refs, [], failed, None)
    comparison = build(refs, root)
    if report_file is not None:
        html_report.save(comparison, report_file)
    return Swept(jobs, refs, comparison.rows, failed, report_file)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise recipes.RecipeError(f"--seeds {text!r}: expected comma-separated integers") from None
    if not seeds:
        raise recipes.RecipeError(f"--seeds {text!r}: give at least one seed")
    return seeds
