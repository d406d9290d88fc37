"""Terminal output: the shared rich console, parameter and summary tables (no heavy imports)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
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


def mmlu_table(title: str, summary: dict[str, dict[str, float]]) -> Table:
    """Accuracy ± stderr (in %) per MMLU category and on average."""
    from asymtune.evaluation.mmlu import CATEGORY_TITLES

    table = Table(title=f"MMLU — {title}")
    for name in summary:
        table.add_column(CATEGORY_TITLES[name], justify="right")
    table.add_row(*(f"{100 * v['acc']:.2f} ± {100 * (v['stderr'] or 0):.2f}" for v in summary.values()))
    return table


def listing(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[str, ...] = ()) -> Table:
    """A plain table of text cells (markup in the cells is shown as typed); long cells wrap."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def similarity_table(record: dict[str, Any]) -> Table:
    rows = [(target, f"{v['A']:.4f}", f"{v['B']:.4f}") for target, v in record["per_target"].items()]
    return listing(f"Subspace similarity, mean over layers and {record['pairs']} run pairs", ("target", "A", "B"),
                   rows, right=("A", "B"))


def theory_table(trials: int, noise: float, gaps: list) -> Table:
    """Lemmas 4.1/4.2 per (d, r, input rank): unadapted, B-only, A-only losses and their gap."""
    rows = [(str(g.d), str(g.rank), str(g.input_rank), f"{g.loss_unadapted:.4f}",
             *(f"{m:.4f} ± {s:.4f}" for m, s in (g.loss_b_only, g.loss_a_only, g.gap))) for g in gaps]
    columns = ("d", "r", "input rank", "unadapted", "B-only (A frozen)", "A-only (B frozen)", "gap L_A − L_B")
    return listing(f"Least-squares asymmetry (Lemmas 4.1/4.2): mean ± std over {trials} draws, noise σ²={noise}",
                   columns, rows, right=columns)


def bound_ratios_line(source: str, ratios, rank: int) -> str:
    return (f"Lemma 4.5 for {source}: Σd_in = {ratios.sum_d_in:,}, Σd_out = {ratios.sum_d_out:,}; "
            f"bound(B-only)/bound(both) = {ratios.b_only:.4f}, bound(A-only)/bound(both) = {ratios.a_only:.4f} "
            f"at rank {rank}; B-only at rank {2 * rank} has ratio {ratios.b_only * 2 ** 0.5:.4f}.")


def age(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} d"


def answers_table(prompts: list[str], by_model: dict[str, Any]) -> Table:
    """One row per prompt, one column per model (`generate`): the models' answers side by side, under each model's
    name its run folder and tokens/s."""
    table = Table(title="Answers", show_lines=True)
    table.add_column("prompt", overflow="fold", ratio=1)
    for name, completions in by_model.items():
        title, _, run_folder = name.partition("/")  # a run: recipe name / run folder
        below = [*([escape(run_folder)] if run_folder else []), f"{completions.tokens_per_s:.1f} tokens/s"]
        table.add_column(escape(title) + "\n[dim]" + "\n".join(below) + "[/dim]", overflow="fold", ratio=2)
    for index, prompt in enumerate(prompts):
        table.add_row(escape(prompt), *(escape(c.texts[index].strip()) for c in by_model.values()))
    return table


def predictions_table(predictions: Any, shown: int = 5) -> Table:
    """The first `shown` result rows of `predict`: the input, the prediction and, for classes, its probability."""
    table = Table(title=escape(f"{predictions.source}: {len(predictions.rows):,} predictions "
                               f"(first {min(shown, len(predictions.rows))})"), show_lines=True)
    rows = predictions.rows[:shown]
    keys = [key for key in rows[0] if key != "probabilities"]
    for key in keys:
        table.add_column(key, overflow="fold", max_width=60)
    if "probabilities" in rows[0]:
        table.add_column("p", justify="right")
    for row in rows:
        cells = [escape(str(row[key]) if len(str(row[key])) <= 300 else str(row[key])[:300] + " …") for key in keys]
        if "probabilities" in row:
            cells.append(f"{row['probabilities'][row['label']]:.3f}")
        table.add_row(*cells)
    return table


def merge_table(merged: Any) -> Table:
    """What `asymtune merge` wrote (a `merging.Merged`): how it merged, the rank, and its error against Σ wᵢ·ΔWᵢ."""
    table = Table(title=f"merged into {merged.run.path}")
    table.add_column("")
    table.add_column("value")
    how = "exact: one shared A, B = Σ wᵢ·Bᵢ" if merged.combination == "shared-A" else (
        f"PEFT add_weighted_adapter ({merged.combination}), {'exact' if merged.exact else 'not exact'}")
    table.add_row("combination", how)
    if merged.not_shared:
        table.add_row("why not shared A", escape(merged.not_shared))
    table.add_row("rank", str(merged.rank))
    table.add_row("max |ΔW error|", f"{merged.error.max_abs:.3g}")
    table.add_row("‖ΔW error‖ / ‖Σ wᵢ·ΔWᵢ‖", f"{merged.error.relative:.3g}")
    return table
