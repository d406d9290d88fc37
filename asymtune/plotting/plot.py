"""`asymtune plot`: the figure of the runs `compare` would compare, written as PNG or SVG."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from asymtune import compare
from asymtune.plotting.series import PlotError, panels


def plot(refs: list[str], root: Path, output: Path, metrics: list[str] | None = None, latest: bool = False,
         group_by: list[str] | None = None, per_run: bool = False, paper: str | None = None) -> Path:
    """Draw curves, final results and (image runs) domains of the runs `refs` name into `output`."""
    if importlib.util.find_spec("matplotlib") is None:
        raise PlotError("plot draws with matplotlib: pip install 'asymtune[analysis]'")
    from asymtune.plotting import draw

    if output.suffix.lower() not in draw.FORMATS:
        raise PlotError(f"--output {output}: give a .png or .svg file")
    comparison = compare.build(refs, root, latest, group_by, per_run, None, paper)
    return draw.save(draw.figure(panels(comparison, metrics)), output)
