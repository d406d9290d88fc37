"""compare: grouping over seeds, failed runs kept, formats, baseline deltas, paper reference rows."""

import csv
import io
import json
import statistics

import pytest
import yaml
from click.testing import CliRunner

from asymtune import compare
from asymtune.cli import main
from asymtune.runs import RunDir, resolve


def fake_run(root, name, seed, rank, eval_loss, status="completed", a_trainable=False):
    """A run directory as `asymtune train` leaves it (recipe, status, metrics), without training."""
    run = RunDir.create(root, name)
    recipe = {
        "name": name,
        "task": "sft",
        "seed": seed,
        "model": {"name": "m"},
        "data": {"train": "d.jsonl", "format": "alpaca"},
        "adapter": {
            "rank": rank,
            "targets": ["q_proj"],
            "seed": seed,
            "A": {"init": "kaiming_uniform" if a_trainable else "orthogonal", "trainable": a_trainable},
            "B": {"init": "zero", "trainable": True},
        },
    }
    (run.path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run.set_status(status)
    if status == "completed":
        run.write_metrics(
            {
                "eval_loss": eval_loss,
                "train_steps": 10,
                "parameters": {"trainable": 64 * rank, "trainable_percent": 0.1 * rank},
            }
        )
    return run


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for seed, loss in ((0, 1.0), (1, 1.2), (2, 1.1)):
        fake_run(root, "b-only", seed, rank=8, eval_loss=loss)
    fake_run(root, "lora", 0, rank=4, eval_loss=0.9, a_trainable=True)
    fake_run(root, "lora", 1, rank=4, eval_loss=None, status="failed", a_trainable=True)
    return root


def test_seeds_are_averaged_and_failed_runs_listed(runs_root):
    rows = compare.collect(resolve([str(runs_root)]), group_by=None)
    by_key = {(row.label, row.status): row for row in rows}
    b_only = by_key[("b-only", "completed")]
    assert len(b_only.runs) == 3 and b_only.method == "B-only" and b_only.rank == 8
    assert b_only.metrics["eval_loss"] == pytest.approx(1.1)
    assert b_only.spread["eval_loss"] == pytest.approx(statistics.stdev([1.0, 1.2, 1.1]))
    assert by_key[("lora", "completed")].method == "LoRA"
    failed = [row for row in rows if row.status == "failed"]
    assert len(failed) == 1 and failed[0].label.startswith("lora/")


def test_group_by_and_per_run(runs_root):
    assert len(compare.collect(resolve([str(runs_root)]), group_by=["seed"])) == 4  # seeds 0,1,2 + failed run
    assert len(compare.collect(resolve([str(runs_root)]), group_by=None, per_run=True)) == 5


def test_formats_and_baseline_deltas(runs_root):
    lora = next(r for r in resolve([str(runs_root)]) if r.path.parent.name == "lora" and r.status == "completed")
    runner = CliRunner()
    out = runner.invoke(main, ["compare", str(runs_root), "--format", "json", "--baseline", str(lora.path)])
    assert out.exit_code == 0, out.output
    records = {(r["label"], r["status"]): r for r in json.loads(out.output)}
    assert records[("b-only", "completed")]["eval_loss_delta"] == pytest.approx(1.1 - 0.9)
    assert records[("b-only", "completed")]["n_runs"] == 3 and records[("b-only", "completed")]["trainable"] == 512

    table = list(
        csv.DictReader(io.StringIO(runner.invoke(main, ["compare", str(runs_root), "--format", "csv"]).output))
    )
    assert {row["status"] for row in table} == {"completed", "failed"} and "train_steps" in table[0]

    markdown = runner.invoke(main, ["compare", str(runs_root), "--format", "markdown"]).output
    lora_line = next(line for line in markdown.splitlines() if line.startswith("| lora |"))
    assert "**0.9000**" in lora_line  # the lowest eval loss is the best
    assert "train_steps" not in markdown.splitlines()[0]  # bookkeeping stays in csv/json

    rich = runner.invoke(main, ["compare", str(runs_root)], env={"COLUMNS": "250"}).output
    assert "failed" in rich and "1.1000 ± 0.1000" in rich


def test_paper_reference_rows_are_in_asymtune_units():
    title, rows = compare.paper_rows("table4")
    assert title.startswith("Table 4")
    lora = next(row for row in rows if row.label == "paper: LoRA r=32")
    assert lora.metrics["mmlu_stem"] == pytest.approx(0.3650)
    _, glue = compare.paper_rows("table1")
    b_only = next(row for row in glue if row.label == "paper: hB_0 A_rand (r=8)")
    assert b_only.metrics["glue_cola"] == pytest.approx(0.675) and b_only.spread["glue_cola"] == pytest.approx(0.012)
    assert all(len(compare.paper_rows(f"table{i}")[1]) > 0 for i in range(1, 6))


def test_paper_option_adds_rows_beside_runs(runs_root):
    out = CliRunner().invoke(main, ["compare", str(runs_root), "--paper", "table4", "--format", "csv"]).output
    labels = [row["label"] for row in csv.DictReader(io.StringIO(out))]
    assert "b-only" in labels and "paper: Llama-2-7B" in labels


def test_not_a_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_base_model_evaluations_pool_only_under_the_same_options(tmp_path):
    from asymtune import atomic

    for limit, average in ((10, 0.2), (10, 0.4), (25, 0.3)):
        run = RunDir.create(tmp_path, "base-m")
        run.set_status("completed", base_model="m")
        atomic.write_json(
            run.path / "eval" / "mmlu.json", {"summary": {"average": {"acc": average}}, "options": {"limit": limit}}
        )
    rows = sorted(compare.collect(resolve([str(tmp_path)]), group_by=None), key=lambda row: len(row.runs))
    assert [(len(r.runs), r.method) for r in rows] == [(1, "base model"), (2, "base model")]
    assert rows[1].metrics["mmlu_average"] == pytest.approx(0.3)


def test_runs_lists_status_method_and_main_result(runs_root):
    result = CliRunner().invoke(main, ["runs", str(runs_root)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "│" in line and "/" in line]
    assert len(rows) == 5
    assert sum("B-only" in row and "eval_loss = 1." in row for row in rows) == 3
    assert any("failed" in row and "LoRA" in row for row in rows)
    missing = CliRunner().invoke(main, ["runs", str(runs_root / "nowhere")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_a_run_with_an_unreadable_recipe_is_listed_not_fatal(runs_root):
    broken = next(run for run in resolve([str(runs_root)]) if run.status == "completed")
    for text in ("adapter: {rank: -3}\n", "name: [unclosed\n"):
        (broken.path / "recipe.yaml").write_text(text)
        rows = compare.collect(resolve([str(runs_root)]), group_by=None)
        assert any(row.status == "completed (recipe.yaml unreadable)" for row in rows)


def test_many_metrics_and_few_runs_give_one_column_per_run(tmp_path):
    for name, loss, a_trainable in (("b-only", 1.0, False), ("lora", 0.9, True)):
        run = fake_run(tmp_path, name, 0, rank=8, eval_loss=loss, a_trainable=a_trainable)
        metrics = run.read_json("metrics.json")
        run.write_metrics({**metrics, **{f"env{i}_acc": 0.5 + i / 100 + (name == "lora") for i in range(16)}})
    rows = compare.collect(resolve([str(tmp_path)]), group_by=None)
    wide = compare.to_table(rows, None, "Runs", width=160)
    assert [column.header for column in wide.columns] == ["", "b-only", "lora"]
    assert list(wide.columns[0].cells)[:2] == ["status", "method"] and "env15_acc" in wide.columns[0].cells
    assert "[bold green]1.5000[/]" in list(wide.columns[2].cells)  # lora's env0_acc is the best
    narrow = compare.to_table(rows[:1], None, "Runs", width=1000)  # everything fits: one row per run
    assert [column.header for column in narrow.columns][:3] == ["run", "status", "method"]


def test_failed_runs_show_their_error_and_bookkeeping_is_not_ranked(tmp_path):
    failed = RunDir.create(tmp_path, "broken")
    failed.set_status("failed", error="DataError: d.jsonl: row 3: label column 'label' is empty (null)")
    rows = compare.collect([failed], group_by=None)
    assert rows[0].status == "failed" and "row 3" in rows[0].factors
    ranked = compare.Row(label="a", status="completed", metrics={"skipped_images": 3.0, "pacs_id_acc": 0.9})
    assert compare.shown_columns([ranked]) == ["pacs_id_acc"]
    damaged = RunDir.create(tmp_path, "damaged")
    (damaged.path / "status.json").write_text("{torn")
    [row] = compare.collect([damaged], group_by=None)
    assert row.status == "unreadable" and "status.json: damaged" in row.factors


def test_group_by_a_key_no_run_has_is_refused_not_pooled(runs_root):
    result = CliRunner().invoke(main, ["compare", str(runs_root), "--group-by", "adapter.rnak"])
    assert result.exit_code == 2 and "--group-by adapter.rnak: no compared run's recipe has that key" in result.output
    assert CliRunner().invoke(main, ["compare", str(runs_root), "--group-by", "adapter.rank"]).exit_code == 0


def test_a_run_stored_before_a_recipe_key_existed_groups_with_newer_ones(tmp_path):
    """Old runs' recipe.yaml lacks keys added since (e.g. train.report_to); their defaults count as set."""
    root = tmp_path / "runs"
    old = fake_run(root, "b-only", 0, rank=8, eval_loss=1.0)
    new = fake_run(root, "b-only", 1, rank=8, eval_loss=1.2)
    document = yaml.safe_load(new.recipe_file.read_text())
    document["train"] = {"report_to": [], "project": "asymtune", "learning_rate": 2e-4}  # written out, as defaults
    new.recipe_file.write_text(yaml.safe_dump(document))
    [row] = compare.collect(resolve([str(root)]), group_by=None)
    assert sorted(row.runs) == sorted([str(old.path), str(new.path)])
    assert row.metrics["eval_loss"] == pytest.approx(1.1)
