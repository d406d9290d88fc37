"""Sweeps: a recipe × a grid of overrides × seeds, planned and validated before anything trains."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from asymtune import recipe as recipes
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


def finished_run(root: Path, recipe: recipes.Recipe) -> RunDir | None:
    """A completed run under root/<name> trained from exactly this resolved recipe, if any."""
    wanted = recipes.to_yaml(recipe)
    for status in sorted((root / recipe.name).glob("*/status.json")):
        run = RunDir(status.parent)
        recipe_file = run.path / "recipe.yaml"
        if run.status == "completed" and recipe_file.is_file() and recipe_file.read_text() == wanted:
            return run
    return None
