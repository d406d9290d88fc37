import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import sft_recipe

from asymtune import sweep
from asymtune.cli import main
from asymtune.recipe import RecipeError, to_yaml
from asymtune.runs import RunDir, resolve


def test_plan_is_grid_times_seeds_with_seeded_adapters(write_recipe, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = write_recipe(sft_recipe(tmp_path / "m", tmp_path / "d.jsonl"))
    jobs = sweep.plan(path, [0, 1], sweep.parse_grid(("adapter.rank=2,4",)), ("train.max_steps=2",))
    assert [(j.recipe.name, j.recipe.adapter.rank, j.recipe.seed, j.recipe.adapter.seed) for j in jobs] == [
        ("tiny-sft-rank2", 2, 0, 0),
        ("tiny-sft-rank2", 2, 1, 1),
        ("tiny-sft-rank4", 4, 0, 0),
        ("tiny-sft-rank4", 4, 1, 1),
    ]
    assert all(j.recipe.train.max_steps == 2 for j in jobs)
    with pytest.raises(RecipeError, match=r"'adapter\.rank'"):
        sweep.plan(path, [0], sweep.parse_grid(("adapter.rank=0",)), ())
    with pytest.raises(RecipeError, match=r"expected key\.path=v1,v2"):
        sweep.parse_grid(("adapter.rank",))


@pytest.mark.slow
def test_sweep_trains_each_point_once_and_compares(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    recipe = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))
    args = [
        "sweep",
        str(recipe),
        "--seeds",
        "0,1",
        "--grid",
        "adapter.rank=2,4",
        "--set",
        "train.max_steps=2",
        "--output-dir",
        str(tmp_path / "runs"),
    ]
    first = CliRunner().invoke(main, args, env={"COLUMNS": "250"})
    assert first.exit_code == 0, first.output
    runs = resolve([str(tmp_path / "runs")])
    assert len(runs) == 4 and all(run.status == "completed" for run in runs)
    assert "Sweep of" in first.output  # the compare table follows the runs
    grouped = json.loads(CliRunner().invoke(main, ["compare", str(tmp_path / "runs"), "--format", "json"]).output)
    assert sorted((row["label"], row["n_runs"]) for row in grouped) == [("tiny-sft-rank2", 2), ("tiny-sft-rank4", 2)]

    assert f"report: asymtune report {tmp_path / 'runs' / 'tiny-sft-rank2'}" in " ".join(first.output.split())

    again = CliRunner().invoke(main, [*args, "--report"], env={"COLUMNS": "250"})
    assert again.exit_code == 0 and again.output.count("already done") == 4
    assert len(resolve([str(tmp_path / "runs")])) == 4
    report = tmp_path / "runs" / "recipe-report.html"  # OUTPUT_DIR/<recipe file stem>-report.html
    assert f"report: {report}" in again.output and report.is_file()
    page = report.read_text()
    assert page.count("<details") == 4 and "tiny-sft-rank4" in page and "<svg" in page


def test_a_run_stored_before_a_recipe_key_existed_counts_as_done(write_recipe, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    [job] = sweep.plan(write_recipe(sft_recipe(tmp_path / "m", tmp_path / "d.jsonl")), [0], [], ())
    run = RunDir.create(tmp_path / "runs", job.recipe.name)
    stored = yaml.safe_load(to_yaml(job.recipe))
    del stored["train"]["report_to"], stored["train"]["project"]  # as a run from before these keys
    run.recipe_file.write_text(yaml.safe_dump(stored))
    run.set_status("running")
    assert sweep.finished_run(tmp_path / "runs", job.recipe) is None  # not completed
    run.set_status("completed")
    assert sweep.finished_run(tmp_path / "runs", job.recipe).path == run.path
