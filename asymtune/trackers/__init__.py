"""Experiment trackers (`train.report_to`): each tracker's run opens before training with the run's config —
the resolved recipe as dotted keys, the method (B-only, A-only, LoRA, ...) and the parameters per factor —
is fed by transformers' own integration callback while training, gets the final metrics as `final/<name>`,
and closes with the run's outcome (completed, failed, interrupted).

Local unless the user configured otherwise: TensorBoard event files in RUN/logs/tensorboard, wandb offline
in RUN/wandb (online once wandb is logged in or WANDB_MODE says so), MLflow in ROOT/mlflow.db (sqlite;
MLFLOW_TRACKING_URI wins), trackio in its own local store. RUN/trackers.json records where each run went, so
a resumed run continues the same tracker runs. Each tracker is a module here with `start(identity, config,
previous) -> Session`."""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asymtune import atomic
from asymtune.compare import method_name
from asymtune.recipe import Recipe, to_yaml

if TYPE_CHECKING:
    from asymtune.adapters.lora import ParameterCounts
    from asymtune.runs import RunDir

TRACKERS_FILE = "trackers.json"
NEEDS: dict[str, tuple[str, ...]] = {  # the modules a tracker imports; its extra is named after it
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "trackio": ("trackio",),
}
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Identity:
    """Who a tracker run is: `name` <recipe name>/<run folder>, `group` the recipe name (a sweep's seeds share
    it), the trackers' `project`, the run folder, tags (method, task) and the resolved recipe's YAML."""

    name: str
    group: str
    project: str
    run: RunDir
    tags: tuple[str, ...]
    recipe_yaml: str


@dataclass
class Session:
    """One tracker's open run: the Trainer callback that feeds it, what `trackers.json` keeps of it (to resume),
    a line on where it is, and `finish(final_metrics, outcome)`."""

    callback: Any
    record: dict[str, Any]
    where: str
    finish: Callable[[dict[str, float], str], None]


@dataclass
class Tracked:
    """The open sessions of a run; `final` hands them the run's metrics before they close."""

    sessions: dict[str, Session]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def callbacks(self) -> list:
        return [session.callback for session in self.sessions.values()]

    def final(self, metrics: dict[str, Any]) -> None:
        self.metrics = {key: float(value) for key, value in metrics.items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool)}


def missing(report_to: tuple[str, ...]) -> list[str]:
    """One line per named tracker whose packages are not installed, with the extra that brings them."""
    return [f"{name} needs {', '.join(absent)} (pip install 'asymtune[{name}]')"
            for name in report_to
            if (absent := [module for module in NEEDS[name] if importlib.util.find_spec(module) is None])]


def run_config(recipe: Recipe, counts: ParameterCounts) -> dict[str, Scalar]:
    """What a tracker can filter on: every resolved recipe key (dotted; lists as JSON, null as 'none'), the
    method, and the parameters per factor (`params.trainable_B`, `params.frozen_A`, ...)."""
    config = {key: _scalar(value) for key, value in _flatten(recipe.model_dump(mode="json")).items()}
    config["method"] = method_name(recipe.adapter)
    config.update({f"params.{key}": value for key, value in counts.as_dict().items()})
    return config


@contextmanager
def tracked(recipe: Recipe, run: RunDir, counts: ParameterCounts, log: Callable[[str], None]) -> Iterator[Tracked]:
    """Open `recipe.train.report_to`'s tracker runs for `run` (rank 0 only), yield them, close them with the
    outcome of the body: completed, interrupted (a signal) or failed (anything else, which propagates)."""
    from asymtune.callbacks import TrainingInterrupted

    state = Tracked({})
    if not recipe.train.report_to or not run.writes:
        yield state
        return
    identity = Identity(f"{recipe.name}/{run.path.name}", recipe.name, recipe.train.project, run,
                        (method_name(recipe.adapter), recipe.task), to_yaml(recipe))
    previous = run.read_json(TRACKERS_FILE) or {}
    config = run_config(recipe, counts)
    outcome = "failed"
    try:
        for name in recipe.train.report_to:
            tracker = importlib.import_module(f"asymtune.trackers.{name}")
            state.sessions[name] = tracker.start(identity, config, previous.get(name))
            log(f"{name}: {state.sessions[name].where}")
        atomic.write_json(run.path / TRACKERS_FILE, {name: s.record for name, s in state.sessions.items()})
        yield state
        outcome = "completed"
    except (TrainingInterrupted, KeyboardInterrupt):
        outcome = "interrupted"
        raise
    finally:
        for name, session in state.sessions.items():
            try:
                session.finish(state.metrics if outcome == "completed" else {}, outcome)
            except Exception as error:  # a tracker that cannot close must not change how the run ended
                log(f"[yellow]warning:[/yellow] {name}: could not close its run ({type(error).__name__}: {error})")


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _scalar(value: Any) -> Scalar:
    if value is None:
        return "none"
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value)
