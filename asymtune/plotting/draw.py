"""Drawing `series.Panels` with matplotlib (the `analysis` extra): one figure, a panel per curve metric, per
final metric and for image runs' domains, and one legend for all of them. A method family keeps its hue in
every figure (B-only blue, A-only red, LoRA green, ...); variants of one family are shades of it. A run that
did not complete is dashed or hatched and says its status; the paper's values are white diamonds."""

from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from asymtune.compare import LOWER_IS_BETTER, OK_STATUSES, Row
from asymtune.plotting.series import TRAIN_LOSS, Bar, Curve, Domains, Panels, PlotError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HUES = {  # matplotlib's tab10, one per method family as `compare.method_name` says it
    "B-only": "#1f77b4", "A-only": "#d62728", "LoRA": "#2ca02c", "both trained": "#9467bd", "lora_fa": "#8c564b",
    "adalora": "#e377c2", "ia3": "#bcbd22", "vera": "#17becf", "full": "#7f7f7f", "linear_probe": "#ff7f0e",
    "base model": "#000000",
}
UNKNOWN_HUE = "#aaaaaa"
FORMATS = (".png", ".svg")
PANEL_SIZE = (5.4, 3.7)  # inches
SVG_TEXT = {"svg.fonttype": "none"}  # labels stay <text> (searchable, selectable), drawn in the reader's font


def colours(rows: list[Row]) -> dict[int, str]:
    """id(row) -> colour: the family's hue, darker to lighter for its second, third, ... variant."""
    by_family: dict[str, list[Row]] = {}
    for row in rows:
        by_family.setdefault(row.method, []).append(row)
    chosen = {}
    for family, members in by_family.items():
        for index, row in enumerate(members):
            chosen[id(row)] = _shade(HUES.get(family, UNKNOWN_HUE), index, len(members))
    return chosen


def legend_label(row: Row) -> str:
    """e.g. 'quickstart-b-only — B-only r=16, n=3', 'tiny-sft/20261203-… — LoRA r=8, failed'."""
    what = " ".join(part for part in (row.method, f"r={row.rank}" if row.rank else "") if part)
    tail = f"n={len(row.runs)}" if row.status == "completed" else row.status
    return f"{row.label} — {what}, {tail}" if what else f"{row.label} — {tail}"


def figure(panels: Panels) -> Figure:
    """The figure of `panels` (PlotError when there is nothing to draw)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    count = len(panels.curves) + len(panels.finals) + (panels.domains is not None)
    if count == 0:
        raise PlotError("nothing to draw: the runs logged no metric over steps and have no final metric")
    columns = 2 if count == 4 else min(count, 3)
    lines = -(-count // columns)
    bars = max((len(bars) for bars in panels.finals.values()), default=0)
    height = max(PANEL_SIZE[1], 0.32 * bars + 1.2)
    drawn = Figure(figsize=(PANEL_SIZE[0] * columns, height * lines + 0.9), layout="constrained")
    axes = list(drawn.subplots(lines, columns, squeeze=False).flat)
    rows = _rows(panels)
    colour = colours(rows)
    for axis in axes[count:]:
        axis.set_visible(False)
    axes = iter(axes)
    for metric, curves in panels.curves.items():
        _draw_curves(next(axes), metric, curves, colour)
    for metric, bars in panels.finals.items():
        _draw_bars(next(axes), metric, bars, colour)
    if panels.domains is not None:
        _draw_domains(next(axes), panels.domains, colour)
    handles = [Line2D([], [], color=colour[id(row)], lw=6, alpha=1.0 if row.status in OK_STATUSES else 0.45)
               for row in rows if row.method != "paper"]
    labels = [legend_label(row) for row in rows if row.method != "paper"]
    if any(bar.paper for bars in panels.finals.values() for bar in bars):
        handles.append(Line2D([], [], ls="", marker="D", mfc="white", mec="black", ms=7))
        labels.append("paper (reported)")
    drawn.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 2), frameon=False,
                 fontsize="small")
    if panels.title != "Runs":
        drawn.suptitle(panels.title, fontsize="medium")
    return drawn


def save(drawn: Figure, path: Path) -> Path:
    """Write the figure as PNG or SVG, chosen by the suffix of `path` (one of FORMATS: `plot` checks it first)."""
    from matplotlib import rc_context

    path.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(SVG_TEXT):
        drawn.savefig(path, dpi=110)
    return path


def svg_text(drawn: Figure) -> str:
    """The figure as an SVG element (for inlining in HTML), its text as text."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context(SVG_TEXT):
        drawn.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # without the XML prologue and doctype


def mean_std(value: float, std: float | None) -> str:
    """'3.70 ± 0.10': the std to two significant digits, the mean to as many decimals; 4 significant without a std."""
    if not std:
        return f"{value:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    return f"{value:.{decimals}f} ± {std:.{decimals}f}"


def metric_title(metric: str) -> str:
    return {TRAIN_LOSS: "training loss", "eval_loss": "eval loss"}.get(metric, metric)


def _rows(panels: Panels) -> list[Row]:
    """Every row drawn, once each, in comparison order."""
    seen: dict[int, Row] = {}
    for curves in panels.curves.values():
        seen.update((id(curve.row), curve.row) for curve in curves)
    for bars in panels.finals.values():
        seen.update((id(bar.row), bar.row) for bar in bars)
    if panels.domains is not None:
        seen.update((id(row), row) for row, _ in panels.domains.rows)
    return list(seen.values())


def _draw_curves(axis, metric: str, curves: list[Curve], colour: dict[int, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    for curve in curves:
        finished = curve.row.status in OK_STATUSES
        shade = colour[id(curve.row)]
        axis.plot(curve.steps, curve.mean, color=shade, lw=1.8, ls="-" if finished else "--",
                  marker="o" if len(curve.steps) <= 12 else None, ms=3)
        if curve.runs > 1:
            low = [m - s for m, s in zip(curve.mean, curve.std, strict=True)]
            high = [m + s for m, s in zip(curve.mean, curve.std, strict=True)]
            axis.fill_between(curve.steps, low, high, color=shade, alpha=0.18, lw=0)
        if not finished:  # say where it stopped
            axis.annotate(curve.row.status, (curve.steps[-1], curve.mean[-1]), textcoords="offset points",
                          xytext=(4, 4), fontsize="x-small", color=shade)
    runs = max((curve.runs for curve in curves), default=1)
    axis.set_title(metric_title(metric) + (" (mean ± std over seeds)" if runs > 1 else ""), fontsize="medium")
    axis.set_xlabel("step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)


def _draw_bars(axis, metric: str, bars: list[Bar], colour: dict[int, str]) -> None:
    """Horizontal bars, first row on top, their values in a column on the right; the axis starts near the
    smallest value (the column says the values), at 0 when that is close."""
    ends = [(bar.value, bar.std or 0.0) for bar in bars if bar.value is not None]
    ends += [(bar.paper.value, bar.paper.std or 0.0) for bar in bars if bar.paper]
    low, high = (min(v - e for v, e in ends), max(v + e for v, e in ends)) if ends else (0.0, 1.0)
    pad = (high - low) * 0.3 or abs(high) * 0.05 or 0.05
    floor = 0.0 if 0 <= low < 3 * pad else low - pad
    for y, bar in enumerate(bars):
        shade = colour.get(id(bar.row), UNKNOWN_HUE)
        if bar.value is not None:
            axis.barh(y, bar.value - floor, left=floor, color=shade, height=0.7,
                      xerr=bar.std, capsize=3, error_kw={"elinewidth": 1})
            text = mean_std(bar.value, bar.std)
            axis.text(0.99, y, text, transform=axis.get_yaxis_transform(), ha="right", va="center",
                      fontsize="x-small")  # a column of values at the right edge, clear of bars and markers
        elif bar.row.method != "paper":  # no result: keep its place and say why
            axis.annotate(f"{bar.row.status}: no result", (floor, y), textcoords="offset points", xytext=(4, -3),
                          fontsize="x-small", color="#b00000")
        if bar.paper is not None:
            axis.errorbar(bar.paper.value, y, xerr=bar.paper.std, fmt="D", mfc="white", mec="black", ecolor="black",
                          ms=6, capsize=3, zorder=3)
    axis.set_yticks(range(len(bars)), [_tick(bar) for bar in bars], fontsize="small")
    axis.set_ylim(len(bars) - 0.5, -0.5)  # the first row on top
    axis.set_xlim(floor, high + pad + (high + pad - floor) * 0.3)  # room for the column of values
    better = "lower" if LOWER_IS_BETTER.search(metric) else "higher"
    axis.set_title(f"{metric_title(metric)}, final ({better} is better)", fontsize="medium")
    axis.grid(axis="x", alpha=0.3)


def _draw_domains(axis, domains: Domains, colour: dict[int, str]) -> None:
    rows = [(row, cells) for row, cells in domains.rows if any(cells)]
    width = 0.8 / max(len(rows), 1)
    for index, (row, cells) in enumerate(rows):
        for x, cell in enumerate(cells):
            if cell is not None:
                axis.bar(x - 0.4 + width * (index + 0.5), cell[0], width=width, color=colour[id(row)], yerr=cell[1],
                         capsize=2, error_kw={"elinewidth": 0.8})
    names = ["in domain" if env == "id" else env for env in domains.environments]
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
    axis.axvline(0.5, color="#888888", lw=0.8, ls=":")
    axis.set_ylim(0, 1)
    axis.set_title(f"{domains.dataset}: accuracy, in domain and out of it", fontsize="medium")
    axis.grid(axis="y", alpha=0.3)


def _tick(bar: Bar) -> str:
    if bar.row.method == "paper" and bar.value is None:
        return bar.row.label
    return bar.row.label if len(bar.row.label) <= 36 else bar.row.label[:35] + "…"


def _shade(hue: str, index: int, count: int) -> str:
    """The index-th of `count` shades of `hue`: the hue itself first, then lighter ones."""
    red, green, blue = (int(hue[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lightness, s = colorsys.rgb_to_hls(red, green, blue)
    lighter = lightness + (0.82 - lightness) * (index / count if count > 1 else 0)
    return "#" + "".join(f"{round(c * 255):02x}" for c in colorsys.hls_to_rgb(h, lighter, s))
