"""What `plot` and `report` draw, from run directories only and grouped exactly as `compare` groups them:

- curves: a metric logged over steps (logs/train.jsonl), per variant the mean over its runs at the steps they
  all logged, with ± one standard deviation; a run that did not complete is a curve of its own, with its status;
- finals: a metric of metrics.json / eval/ per row, mean and std over seeds; a row that did not complete keeps
  its place (no value, its status); the paper's reported value marks the variant of the same method and rank,
  or stands on its own;
- domains: image runs' in-domain and per-environment out-of-domain accuracy (`<ds>_id_acc`, `<ds>_<env>_acc`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymtune.compare import Comparison, Row
from asymtune.errors import UserError
from asymtune.registry import headline_metric
from asymtune.runs import RunDir

TRAIN_LOSS = "loss"  # the Trainer's name for the training loss in logs/train.jsonl
NOT_CURVES = {"step", "epoch", "time"}
ID_ACC = "_id_acc"  # image runs: <ds>_id_acc, <ds>_<env>_acc per OOD environment (tasks/image.py)
NOT_DOMAINS = {"train", "id", "ood", "validation"}  # <ds>_train_acc, <ds>_ood_acc (the OOD mean), <ds>_validation_acc
# (in domain) are not OOD environments


class PlotError(UserError):
    """Nothing to draw (a metric no compared run has) or an output matplotlib cannot write."""


@dataclass(frozen=True)
class Curve:
    """A row's metric over steps: mean and std over the `runs` of its runs that logged it."""

    row: Row
    runs: int
    steps: list[int]
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class Marker:
    """A value the paper reports."""

    label: str
    value: float
    std: float | None


@dataclass(frozen=True)
class Bar:
    """A row's final metric (None: the row has none, e.g. a failed run) and the paper's value for its variant;
    a paper row with no variant here is a bar of its own with only the marker."""

    row: Row
    value: float | None
    std: float | None
    paper: Marker | None = None


@dataclass(frozen=True)
class Domains:
    """Per row, accuracy (mean, std) in each environment — ID first, then each OOD one — or None where missing."""

    dataset: str
    environments: list[str]
    rows: list[tuple[Row, list[tuple[float, float | None] | None]]]


@dataclass(frozen=True)
class Panels:
    title: str
    curves: dict[str, list[Curve]]
    finals: dict[str, list[Bar]]
    domains: Domains | None


def panels(comparison: Comparison, metrics: list[str] | None = None) -> Panels:
    """What to draw for `comparison`: each of `metrics` as curves where runs logged it over steps and as bars
    where it is a final result; by default the training loss (and the eval loss, when evaluated during
    training) over steps and the runs' headline result (registry.headline_metric) as bars."""
    rows = [row for row in comparison.rows if row.method != "paper"]
    paper = [row for row in comparison.rows if row.method == "paper"]
    logs = {path: read_log(RunDir(Path(path))) for row in rows for path in row.runs}
    logged = set().union(*(_logged_over_steps(records) for records in logs.values()))
    finals = {key for row in rows for key in row.metrics}
    if metrics is None:
        curve_metrics = [key for key in (TRAIN_LOSS, "eval_loss") if key in logged]
        headline = next((found[0] for row in rows if (found := headline_metric(row.metrics, row.task))), None)
        bar_metrics = [headline] if headline else []
    else:
        unknown = [metric for metric in metrics if metric not in logged | finals]
        if unknown:
            raise PlotError(f"--metric {', '.join(unknown)}: no compared run has it; logged over steps: "
                            f"{', '.join(sorted(logged)) or 'none'}; final: {', '.join(sorted(finals)) or 'none'}")
        curve_metrics = [metric for metric in metrics if metric in logged]
        bar_metrics = [metric for metric in metrics if metric in finals]
    return Panels(
        comparison.title,
        {metric: [curve for row in rows if (curve := _curve(row, metric, logs))] for metric in curve_metrics},
        {metric: _bars(rows, paper, metric) for metric in bar_metrics},
        domains(rows),
    )


def read_log(run: RunDir) -> list[dict]:
    """The step records of RUN/logs/train.jsonl; a torn or damaged line is skipped (the log is append-only)."""
    if not run.log_file.is_file():
        return []
    records = []
    for line in run.log_file.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def series(records: list[dict], metric: str) -> dict[int, float]:
    """step -> value of `metric`; a step logged again after a resume keeps its last value."""
    return {r["step"]: float(r[metric]) for r in records if _number(r.get(metric))}


def domains(rows: list[Row]) -> Domains | None:
    """Image runs' ID and per-environment OOD accuracy (of the first dataset found); None without image runs."""
    found: dict[str, set[str]] = {}
    for row in rows:
        for dataset in [key.removesuffix(ID_ACC) for key in row.metrics if key.endswith(ID_ACC)]:
            found.setdefault(dataset, set()).update(
                key[len(dataset) + 1:-len("_acc")] for key in row.metrics
                if key.startswith(f"{dataset}_") and key.endswith("_acc"))
    if not found:
        return None
    dataset, environments = next(iter(found.items()))
    ordered = ["id", *sorted(environments - NOT_DOMAINS)]
    cells = [(row, [(row.metrics[key], row.spread.get(key)) if (key := f"{dataset}_{env}_acc") in row.metrics
                    else None for env in ordered]) for row in rows]
    return Domains(dataset, ordered, cells)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _logged_over_steps(records: list[dict]) -> set[str]:
    """Numeric keys a run logged at two or more steps."""
    steps: dict[str, set[int]] = {}
    for record in records:
        for key, value in record.items():
            if key not in NOT_CURVES and _number(value):
                steps.setdefault(key, set()).add(record["step"])
    return {key for key, logged in steps.items() if len(logged) >= 2}


def _curve(row: Row, metric: str, logs: dict[str, list[dict]]) -> Curve | None:
    """The row's mean curve over its runs at the steps all of them logged (None if none logged `metric`)."""
    per_run = [found for path in row.runs if (found := series(logs[path], metric))]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(found) for found in per_run)))
    values = np.array([[found[step] for step in steps] for found in per_run]).reshape(len(per_run), len(steps))
    spread = values.std(axis=0, ddof=1) if len(per_run) > 1 else np.zeros(len(steps))
    return Curve(row, len(per_run), steps, values.mean(axis=0).tolist(), spread.tolist())


def _bars(rows: list[Row], paper: list[Row], metric: str) -> list[Bar]:
    """One bar per row; a paper row reporting a row's method and rank marks it, the others stand alone."""
    reported = [row for row in paper if metric in row.metrics]
    bars = []
    for row in rows:
        ref = next((ref for ref in reported if ref.reports == row.method and row.status == "completed"
                    and ref.rank in (None, row.rank)), None)
        if ref is not None:
            reported.remove(ref)
        bars.append(Bar(row, row.metrics.get(metric), row.spread.get(metric), _marker(ref, metric) if ref else None))
    return bars + [Bar(ref, None, None, _marker(ref, metric)) for ref in reported]


def _marker(ref: Row, metric: str) -> Marker:
    return Marker(ref.label.removeprefix("paper: "), ref.metrics[metric], ref.spread.get(metric))
