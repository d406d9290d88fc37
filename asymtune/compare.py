"""Comparison rows from run directories: per run or per variant (mean ± std over seeds), plus the
paper's reported rows, rendered as a rich table, markdown, csv or json.

A variant is the resolved recipe minus its seeds (`seed`, `adapter.seed`) unless `group_by`
names the keys that define it. Runs that did not complete are never averaged in: each is listed
on its own row with its status.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape
from rich.table import Table

from asymtune import recipe as recipes
from asymtune.evaluation.run_eval import read_evaluations
from asymtune.runs import RunDir, RunDirError, resolve, resolve_one

SEED_KEYS = ("seed", "adapter.seed")
LOWER_IS_BETTER = re.compile(r"loss|perplexity|gap")
BOOKKEEPING = re.compile(r"steps|rows|runtime|time_to|_s$|tokens|skipped|padding")  # csv/json only, never ranked
NOT_RANKED = re.compile(r"_before$")  # shown, but the same for every run of a base model
CELL = re.compile(r"^\s*(?P<mean>-?[\d.]+)\s*(?:±\s*(?P<std>[\d.]+))?")


@dataclass
class Row:
    """One line of the comparison: a run, a group of runs (seeds), or a paper reference row."""

    label: str
    status: str
    method: str = ""
    factors: str = ""
    rank: int | None = None
    trainable: float | None = None
    trainable_percent: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # of a group: how many of its runs report each metric
    runs: list[str] = field(default_factory=list)
    task: str = ""
    reports: str = ""  # a paper row: the method (as `method_name` says it) of the variant it reports, if one


def method_name(adapter: recipes.AdapterSpec) -> str:
    """The paper's families: B-only, A-only, LoRA (A kaiming + B zero, both trained), both (other inits);
    a baseline method by its name."""
    if adapter.method != "lora":
        return adapter.method
    if not adapter.A.trainable:
        return "B-only"
    if not adapter.B.trainable:
        return "A-only"
    if (adapter.A.init, adapter.B.init) == ("kaiming_uniform", "zero"):
        return "LoRA"
    return "both trained"


def adapter_summary(adapter: recipes.AdapterSpec, learning_rate: float) -> str:
    """One line on what an adapter trains, e.g. 'A orthogonal frozen, B zero trained, r=16, alpha=32' (and the
    factors' own learning rates when they have them)."""
    if adapter.method == "lora":
        rates = rates_text(adapter, learning_rate)
        return (f"A {adapter.A.label}, B {adapter.B.label}, r={adapter.rank}, alpha={adapter.lora_alpha:g}"
                + (f", {rates}" if rates else ""))
    return f"method {adapter.method}" + (f", r={adapter.rank}" if adapter.rank else "")


def rates_text(adapter: recipes.AdapterSpec, learning_rate: float) -> str:
    """'lr A 0.0001, B 0.0016' for the trained factors when they learn at their own rates, else ''."""
    if adapter.method != "lora" or not adapter.per_factor_optimisation:
        return ""
    rates = dict(zip("AB", adapter.factor_rates(learning_rate), strict=True))
    return "lr " + ", ".join(f"{name} {rates[name]:.3g}" for name in "AB" if getattr(adapter, name).trainable)


def family_of(document: dict[str, Any] | None) -> str | None:
    """The adapter family of a stored recipe document (`recipe.family_id`)."""
    if document is None:
        return None
    return recipes.family_id(recipes.ModelSpec.model_validate(document["model"]),
                             recipes.AdapterSpec.model_validate(document["adapter"]))


def merge_label(run: RunDir) -> str | None:
    """'merge of 2 (shared-A)' for a run `asymtune merge` wrote (its merge.json), else None."""
    record = run.read_json("merge.json")
    if record is None:
        return None
    return f"merge of {len(record.get('sources') or [])} ({record.get('combination', '?')})"


def run_metrics(run: RunDir) -> dict[str, float]:
    """Every numeric metric of a run: metrics.json's scalars and the eval/ summaries."""
    metrics = {k: float(v) for k, v in (run.read_json("metrics.json") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**metrics, **read_evaluations(run)}


@dataclass(frozen=True)
class Member:
    """A completed run in a group: its folder, its recipe document (None for a base-model run), its metrics."""

    run: RunDir
    document: dict[str, Any] | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class Comparison:
    title: str
    rows: list[Row]
    baseline: Row | None


def build(refs: list[str], root: Path, latest: bool = False, group_by: list[str] | None = None,
          per_run: bool = False, baseline: str | None = None, paper: str | None = None) -> Comparison:
    """The rows `asymtune compare` shows for the runs `refs` name (see runs.resolve): `latest` keeps the
    newest run per recipe name, `baseline` names one run (added if not among them) to take differences to,
    `paper` appends that table's reported rows."""
    found = resolve(refs, root)
    if latest:  # run folders are named <timestamp>-<id>, so the last per parent is the newest
        found = list({run.path.parent: run for run in sorted(found, key=lambda r: r.path)}.values())
    baseline_run = None
    if baseline:
        baseline_run = resolve_one(baseline, root, "--baseline")
        if baseline_run.path not in {run.path for run in found}:
            found.append(baseline_run)
    rows = collect(found, group_by, per_run=per_run)
    title = "Runs"
    if paper:
        title, reference = paper_rows(paper)
        rows += reference
    return Comparison(title, rows, find_baseline(rows, baseline_run) if baseline_run else None)


def collect(found: list[RunDir], group_by: list[str] | None, per_run: bool = False) -> list[Row]:
    """Rows for `found`: completed runs grouped into variants (or one row each with `per_run`),
    every run that did not complete on its own row."""
    groups: dict[str, list[Member]] = {}
    rows: list[Row] = []
    for run in found:
        try:
            status = run.read_json("status.json") or {}
            metrics = run_metrics(run)
        except RunDirError as error:  # one damaged run is listed, and never hides the others
            rows.append(Row(label=_run_label(run), status="unreadable", factors=str(error), runs=[str(run.path)]))
            continue
        document = recipe_document(run)
        if status.get("status") != "completed":
            row = Row(label=_run_label(run), status=str(status.get("status", "incomplete")),
                      factors=str(status.get("error", "")), runs=[str(run.path)])
            if document and _valid_adapter(document):  # what it was training, for the table and the plots
                adapter = recipes.AdapterSpec.model_validate(document["adapter"])
                row.method, row.rank, row.task = method_name(adapter), adapter.rank, str(document.get("task", ""))
            rows.append(row)
            continue
        if document is not None and not _valid_adapter(document):
            rows.append(Row(label=_run_label(run), status="completed (recipe.yaml unreadable)", runs=[str(run.path)]))
            continue
        key = str(run.path) if per_run else _group_key(run, document, status, group_by)
        groups.setdefault(key, []).append(Member(run, document, metrics))
    documents = [member.document for members in groups.values() for member in members if member.document]
    for key in group_by or []:
        if documents and not any(_has(document, key) for document in documents):
            raise RunDirError(f"--group-by {key}: no compared run's recipe has that key (a dotted recipe key, "
                              "e.g. adapter.rank or train.learning_rate)")
    return [_group_row(members) for members in groups.values()] + rows


def paper_rows(table: str) -> tuple[str, list[Row]]:
    """(title, rows) of one of the paper's Tables 1-5, in asymtune's metric names and units."""
    tables = yaml.safe_load(resources.files("asymtune.reference").joinpath("paper_tables.yaml").read_text())
    spec = tables[table]
    rows = []
    for printed in spec["rows"]:
        row = Row(label=f"paper: {printed['label']}", status="reported", method="paper", rank=printed.get("rank"),
                  reports=printed.get("method", ""))
        row.factors = f"{printed['params']} params"
        for column, cell in printed["cells"].items():
            match = CELL.match(cell)
            metric = spec["columns"][column]
            row.metrics[metric] = float(match["mean"]) * spec["scale"]
            if match["std"]:
                row.spread[metric] = float(match["std"]) * spec["scale"]
        rows.append(row)
    return spec["title"], rows


def find_baseline(rows: list[Row], run: RunDir) -> Row:
    """The row (a run or its variant group) that contains `run`."""
    for row in rows:
        if str(run.path) in row.runs:
            return row
    raise RunDirError(f"--baseline {run.path} is not among the compared runs")


def metric_columns(rows: list[Row]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row.metrics if name not in columns]
    return columns


def best_values(rows: list[Row], columns: list[str]) -> dict[str, float]:
    """Best value per ranked column (lower for losses/perplexity/gaps, higher otherwise)."""
    best = {}
    for column in columns:
        if BOOKKEEPING.search(column) or NOT_RANKED.search(column):
            continue
        values = [row.metrics[column] for row in rows if column in row.metrics and not math.isnan(row.metrics[column])]
        if values:
            best[column] = min(values) if LOWER_IS_BETTER.search(column) else max(values)
    return best


def records(rows: list[Row], baseline: Row | None) -> list[dict[str, Any]]:
    """Flat dicts (for csv/json): identity columns, each metric, its std, its delta to the baseline."""
    out = []
    for row in rows:
        record: dict[str, Any] = {
            "label": row.label, "status": row.status, "method": row.method, "factors": row.factors,
            "rank": row.rank, "trainable": row.trainable, "trainable_percent": row.trainable_percent,
            "n_runs": len(row.runs),
        }
        for name, value in row.metrics.items():
            record[name] = value
            if name in row.spread:
                record[f"{name}_std"] = row.spread[name]
            if baseline is not None and name in baseline.metrics:
                record[f"{name}_delta"] = value - baseline.metrics[name]
        record["runs"] = row.runs
        out.append(record)
    return out


def to_markdown(rows: list[Row], baseline: Row | None) -> str:
    columns = shown_columns(rows)
    best = best_values(rows, columns)
    header = ["run", "status", "method", "factors", "rank", "trainable", "% base", "n", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label, row.status, row.method, row.factors, _fmt(row.rank), _fmt(row.trainable),
                 _fmt(row.trainable_percent), str(len(row.runs))]
        for column in columns:
            text = cell_text(row, column, baseline)
            cells.append(f"**{text}**" if column in best and row.metrics.get(column) == best[column] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def shown_columns(rows: list[Row]) -> list[str]:
    """Metric columns for tables: results only (bookkeeping such as steps and runtimes is in csv/json)."""
    return [column for column in metric_columns(rows) if not BOOKKEEPING.search(column)]


IDENTITY = ("status", "method", "factors", "rank", "trainable", "% base", "n")
MIN_COLUMN_WIDTH = 12  # below this rich truncates numbers to "0.…": switch to one column per run


def to_table(rows: list[Row], baseline: Row | None, title: str, width: int = 160) -> Table:
    """A rich table, one row per run/variant, or (when its columns would not fit `width` and there are
    few rows) one column per run/variant; the best value of each ranked metric in bold green."""
    columns = shown_columns(rows)
    best = best_values(rows, columns)

    def cell(row: Row, column: str) -> str:
        text = escape(cell_text(row, column, baseline))
        return f"[bold green]{text}[/]" if column in best and row.metrics.get(column) == best[column] else text

    def label(row: Row) -> str:
        return row.label + (" [baseline]" if row is baseline else "")

    table = Table(title=title)
    if (1 + len(IDENTITY) + len(columns)) * MIN_COLUMN_WIDTH > width and len(rows) * 24 <= width:
        table.add_column("")
        for row in rows:
            table.add_column(label(row), justify="right", style=None if row.status in OK_STATUSES else "red")
        for position, name in enumerate(IDENTITY):
            table.add_row(name, *(identity_cells(row)[position] for row in rows))
        for column in columns:
            table.add_row(column, *(cell(row, column) for row in rows))
        return table
    for name in ("run", *IDENTITY, *columns):  # long metric names wrap instead of being cut to one prefix
        table.add_column(name, justify="left" if name in {"run", "status", "method", "factors"} else "right",
                         overflow="fold")
    for row in rows:
        cells = [label(row), *identity_cells(row), *(cell(row, column) for column in columns)]
        table.add_row(*cells, style=None if row.status in OK_STATUSES else "red")
    return table


def identity_cells(row: Row) -> list[str]:
    return [row.status, row.method, row.factors, _fmt(row.rank), _fmt(row.trainable), _fmt(row.trainable_percent),
            str(len(row.runs))]


OK_STATUSES = {"completed", "reported"}


def to_csv(rows: list[Row], baseline: Row | None) -> str:
    flat = records(rows, baseline)
    fields: list[str] = []
    for record in flat:
        fields += [key for key in record if key not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for record in flat:
        writer.writerow({**record, "runs": ";".join(record["runs"])})
    return buffer.getvalue()


def to_json(rows: list[Row], baseline: Row | None) -> str:
    return json.dumps(records(rows, baseline), indent=2) + "\n"


def cell_text(row: Row, column: str, baseline: Row | None) -> str:
    """'0.4123 ± 0.0100 (+0.0200)': mean, std over seeds when there are several, delta to baseline."""
    if column not in row.metrics:
        return ""
    text = _fmt(row.metrics[column])
    if column in row.spread:
        text += f" ± {_fmt(row.spread[column])}"
    if baseline is not None and baseline is not row and column in baseline.metrics:
        text += f" ({row.metrics[column] - baseline.metrics[column]:+.4f})"
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _run_label(run: RunDir) -> str:
    return f"{run.path.parent.name}/{run.path.name}"


def _valid_adapter(document: dict[str, Any]) -> bool:
    try:
        recipes.AdapterSpec.model_validate(document.get("adapter"))
    except ValueError:  # pydantic's ValidationError is a ValueError
        return False
    return isinstance(document.get("name"), str)


def recipe_document(run: RunDir) -> dict[str, Any] | None:
    """The run's resolved recipe with every default filled in, so a run stored before a key was added groups with
    one stored after; a recipe the schema no longer takes is used as stored. None: a base-model evaluation."""
    path = run.recipe_file
    if not path.is_file():
        return None
    try:
        document = recipes.parse_yaml(path.read_bytes().decode("utf-8"), str(path))
    except (UnicodeDecodeError, recipes.RecipeError):
        return {}
    if not isinstance(document, dict):
        return {}
    try:
        return recipes.Recipe.model_validate(document).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError
        return document


def _eval_options(run: RunDir) -> dict[str, Any]:
    record = run.read_json("eval/mmlu.json") or {}
    return record.get("options", {})


def _group_key(
    run: RunDir, document: dict[str, Any] | None, status: dict[str, Any], group_by: list[str] | None
) -> str:
    if document is None:  # a base-model evaluation: only the same model under the same eval options pools
        return f"base-model:{status.get('base_model')}:{json.dumps(_eval_options(run), sort_keys=True)}"
    if group_by:
        return json.dumps([_get(document, key) for key in group_by])
    stripped = json.loads(json.dumps(document))
    for key in SEED_KEYS:
        _delete(stripped, key)
    return json.dumps(stripped, sort_keys=True)


def _group_row(members: list[Member]) -> Row:
    first_run, document = members[0].run, members[0].document
    metrics = [member.metrics for member in members]
    row = Row(label=first_run.path.parent.name, status="completed", runs=[str(member.run.path) for member in members])
    if document is None:
        row.label, row.method = (first_run.read_json("status.json") or {}).get("base_model", row.label), "base model"
    else:
        adapter = recipes.AdapterSpec.model_validate(document["adapter"])
        row.method, row.rank = method_name(adapter), adapter.rank
        learning_rate = (document.get("train") or {}).get("learning_rate",
                                                          recipes.TrainSpec.model_fields["learning_rate"].default)
        rates = rates_text(adapter, float(learning_rate))
        row.factors = f"A {adapter.A.label}, B {adapter.B.label}" + (f"; {rates}" if rates else "") \
            if adapter.method == "lora" else ""
        families = {family_of(member.document) for member in members}
        if len(families) == 1 and None not in families:
            row.factors += f"; family {families.pop()}"
        row.method = merge_label(first_run) or row.method
        row.label, row.task = document["name"], str(document.get("task", ""))
        params = (first_run.read_json("metrics.json") or {}).get("parameters", {})
        row.trainable, row.trainable_percent = params.get("trainable"), params.get("trainable_percent")
    for name in metric_columns([Row(label="", status="", metrics=m) for m in metrics]):
        values = [m[name] for m in metrics if name in m]
        row.metrics[name] = statistics.fmean(values)
        row.counts[name] = len(values)
        if len(values) > 1:
            row.spread[name] = statistics.stdev(values)
    return row


def _get(document: dict[str, Any], dotted: str) -> Any:
    node: Any = document
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _has(document: dict[str, Any], dotted: str) -> bool:
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _delete(document: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = document
    for part in parents:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(last, None)
