"""`asymtune report`: one self-contained HTML file on compared runs — the comparison table, the figure (inline
SVG), every run's status and recipe difference from the first run, and the environments they ran in — with
no script and nothing fetched, so it can be attached to a message. It reads run directories only and groups
them as `compare` does."""

from __future__ import annotations

import difflib
import html
import importlib.util
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from asymtune import atomic, compare
from asymtune.compare import IDENTITY, OK_STATUSES, Comparison
from asymtune.errors import UserError
from asymtune.plotting.series import PlotError, panels
from asymtune.runs import LIBRARIES, RunDir, RunDirError

ENVIRONMENT_KEYS = ("python", "device", "host", "git_commit")
TEXT_COLUMNS = ("run", "status", "method", "factors")
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; } table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; } td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 12em; } .scroll { overflow-x: auto; }
tr.notdone td { background: #fff1f1; color: #8a1010; } td.best { font-weight: 700; color: #176317; }
.status { display: inline-block; padding: 0 .5em; border-radius: .6em; font-size: 12px; }
.s-completed { background: #e3f4e3; } .s-reported { background: #eee; }
.s-failed, .s-unreadable { background: #fbd5d5; }
.s-interrupted, .s-running, .s-dead { background: #fdebc8; }
figure { margin: 1em 0; } figure svg { width: 100%; height: auto; }
details { margin: .3em 0; } summary { cursor: pointer; } pre { background: #f7f7f7; padding: .6em; overflow-x: auto;
       font-size: 12px; margin: .3em 0 .8em; } .add { color: #176317; } .del { color: #a31515; } .hunk { color: #777; }
"""


@dataclass(frozen=True)
class Written:
    """A report: where it is, how many runs and rows (paper rows not counted) it shows, runs per status."""

    path: Path
    runs: int
    rows: int
    statuses: dict[str, int]

    @property
    def statuses_line(self) -> str:
        """e.g. '47 completed, 3 failed'."""
        return ", ".join(f"{count} {status}" for status, count in self.statuses.items())


def write(refs: list[str], root: Path, output: Path, metrics: list[str] | None = None, latest: bool = False,
          group_by: list[str] | None = None, per_run: bool = False, paper: str | None = None,
          command: list[str] | None = None) -> Written:
    """Build the report on the runs `refs` name (see runs.resolve) and write it to `output`."""
    check_output(output)
    return save(compare.build(refs, root, latest, group_by, per_run, None, paper), output, metrics, command)


def check_output(output: Path) -> None:
    if output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--output {output}: the report is an .html file")


def save(comparison: Comparison, output: Path, metrics: list[str] | None = None,
         command: list[str] | None = None) -> Written:
    """Write the report on an already built comparison to `output`."""
    statuses = Counter(row.status for row in comparison.rows for _ in row.runs)
    written = Written(output, sum(statuses.values()), sum(row.method != "paper" for row in comparison.rows),
                      dict(statuses.most_common()))
    atomic.write_text(output, render(comparison, metrics, command or sys.argv, written))
    return written


def render(comparison: Comparison, metrics: list[str] | None, command: list[str], written: Written) -> str:
    """The report's HTML; `written` says what it holds (for its header)."""
    runs = [RunDir(Path(path)) for row in comparison.rows for path in row.runs]
    sections = [
        f"<h1>{_e(comparison.title if comparison.title != 'Runs' else 'asymtune report')}</h1>",
        f"<p class=meta>{written.runs} runs in {written.rows} rows ({_e(written.statuses_line)}) · made "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by <code>{_e(' '.join(command))}</code></p>",
        "<h2>Comparison</h2>", table(comparison),
        "<h2>Figures</h2>", figure_section(comparison, metrics),
        "<h2>Runs</h2>", runs_section(comparison),
        "<h2>Environment</h2>", environment_section(runs),
    ]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>"
            f"{_e(comparison.title)} — asymtune report</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def table(comparison: Comparison) -> str:
    """compare's table: one row per variant or run, the best value per ranked metric in bold."""
    rows, baseline = comparison.rows, comparison.baseline
    columns = compare.shown_columns(rows)
    best = compare.best_values(rows, columns)
    head = "".join(f"<th class=text>{_e(c)}</th>" if c in TEXT_COLUMNS else f"<th>{_e(c)}</th>"
                   for c in ("run", *IDENTITY, *columns))
    body = []
    for row in rows:
        status, *identity = compare.identity_cells(row)
        method, factors, *counts = identity
        cells = [f"<td class='text wrap'>{_e(row.label)}</td>", f"<td class=text>{_badge(status)}</td>",
                 f"<td class=text>{_e(method)}</td>", f"<td class='text wrap'>{_e(factors)}</td>",
                 *(f"<td>{_e(c)}</td>" for c in counts)]
        for column in columns:
            text = _e(compare.cell_text(row, column, baseline))
            top = column in best and row.metrics.get(column) == best[column]
            cells.append(f"<td class=best>{text}</td>" if top else f"<td>{text}</td>")
        kind = "" if row.status in OK_STATUSES else " class=notdone"
        body.append(f"<tr{kind}>{''.join(cells)}</tr>")
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def figure_section(comparison: Comparison, metrics: list[str] | None) -> str:
    """The plot figure as inline SVG, or why there is none."""
    if importlib.util.find_spec("matplotlib") is None:
        return "<p>No figures: matplotlib is not installed (pip install 'asymtune[analysis]').</p>"
    from asymtune.plotting import draw

    try:
        drawn = draw.figure(panels(comparison, metrics))
    except PlotError as error:
        return f"<p>No figures: {_e(str(error))}</p>"
    return f"<figure>{draw.svg_text(drawn)}</figure>"


def runs_section(comparison: Comparison) -> str:
    """Per run: status (and error), its folder, and its recipe as a difference from the first run's."""
    runs = [(row, RunDir(Path(path))) for row in comparison.rows for path in row.runs]
    if not runs:
        return "<p>No runs.</p>"
    first_text = _recipe_text(runs[0][1])
    items = []
    for index, (row, run) in enumerate(runs):
        status = run_status(run)
        error = f" — {_e(status.get('error', ''))}" if status.get("error") else ""
        head = (f"{_badge(str(status.get('status', row.status)))} <b>{_e(row.label)}</b> "
                f"<code>{_e(str(run.path))}</code>{error}")
        text = _recipe_text(run)
        if index == 0:
            body = f"<pre>{_e(text)}</pre>" if text else "<p>No recipe.yaml (a base-model evaluation).</p>"
            items.append(f"<details><summary>{head} · the recipe the others are compared with</summary>{body}"
                         "</details>")
            continue
        diff = list(difflib.unified_diff(first_text.splitlines(), text.splitlines(), "first run", "this run", n=0,
                                         lineterm=""))[2:]
        body = (f"<pre>{''.join(_diff_line(line) for line in diff)}</pre>" if diff
                else "<p>Same recipe as the first run.</p>")
        changed = sum(line.startswith("+") for line in diff)
        items.append(f"<details><summary>{head} · {changed} recipe line(s) differ</summary>{body}</details>")
    return "\n".join(items)


def environment_section(runs: list[RunDir]) -> str:
    """The distinct environments the runs trained in (library versions, python, device, host, commit), each with
    how many runs used it, and the environment this report was made in."""
    seen: dict[tuple, list[str]] = {}
    for run in runs:
        try:
            env = run.read_json("env.json") or {}
        except RunDirError:
            env = {}
        versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
        key = tuple(str(env.get(k, "-")) for k in ENVIRONMENT_KEYS) + tuple(str(versions.get(lib, "-"))
                                                                           for lib in LIBRARIES)
        seen.setdefault(key, []).append(f"{run.path.parent.name}/{run.path.name}")
    head = "".join(f"<th class=text>{_e(name)}</th>" for name in ("runs", *ENVIRONMENT_KEYS, *LIBRARIES))
    lines = [f"<tr><td class='text wrap'>{len(names)}: {_e(', '.join(names[:3]))}{' …' if len(names) > 3 else ''}</td>"
             + "".join(f"<td class=text>{_e(value)}</td>" for value in key) + "</tr>" for key, names in seen.items()]
    here = ", ".join(f"{lib} {_version(lib)}" for lib in ("asymtune", "matplotlib"))
    return (f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"
            f"<p class=meta>This report: python {platform.python_version()}, {here}, host {_e(platform.node())}.</p>")


def run_status(run: RunDir) -> dict:
    try:
        return run.read_json("status.json") or {}
    except RunDirError as error:
        return {"status": "unreadable", "error": str(error)}


def _recipe_text(run: RunDir) -> str:
    """The run's recipe with defaults filled in (compare's view, so keys added since an old run are no difference);
    as stored when the schema does not take it; '' without one."""
    document = compare.recipe_document(run)
    if document:
        return yaml.safe_dump(document, sort_keys=False)
    try:
        return run.recipe_file.read_bytes().decode("utf-8", "replace") if run.recipe_file.is_file() else ""
    except OSError:
        return ""


def _diff_line(line: str) -> str:
    kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk"
    return f"<span class={kind}>{_e(line)}</span>\n"


def _badge(status: str) -> str:
    return f"<span class='status s-{_e(status.split()[0] if status else 'unknown')}'>{_e(status)}</span>"


def _version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "-"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


