"""Terminal output: the shared rich console, parameter and summary tables (no heavy imports)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from asymtune.adapters.lora import ParameterCounts

console = Console(stderr=True)  # progress, logs, errors
results = Console()  # what a command produces (tables): stdout, so it can be piped
if not results.is_terminal and "COLUMNS" not in os.environ:
    results.width = 160  # piped or logged: don't squeeze tables into rich's 80-column default


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
