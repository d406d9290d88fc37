"""Terminal output: rich progress for training, parameter and summary tables."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TrainerCallback

from asymtune.adapters.lora import ParameterCounts

console = Console(stderr=True)


class ProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps showing the latest loss and learning rate."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=state.max_steps, loss="-", lr="-")

    def on_step_end(self, args, state, control, **kwargs):
        self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            fields["lr"] = f"{logs['learning_rate']:.2e}"
        if fields and self._progress is not None:
            self._progress.update(self._task, **fields)
        if "eval_loss" in logs:
            console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()


def parameter_table(counts: ParameterCounts) -> Table:
    """Trainable and frozen parameters per factor, and the trainable share of the base model."""
    table = Table(title="Adapter parameters")
    for column in ("", "trainable", "frozen"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("A", f"{counts.trainable_A:,}", f"{counts.frozen_A:,}")
    table.add_row("B", f"{counts.trainable_B:,}", f"{counts.frozen_B:,}")
    if counts.trainable_other:
        table.add_row("other", f"{counts.trainable_other:,}", "")
    table.add_row(
        "[bold]total", f"[bold]{counts.trainable:,}",
        f"{counts.trainable_percent:.4f}% of {counts.base:,} base parameters",
    )
    return table


def summary_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue
        table.add_row(key, format_value(value))
    return table


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)
