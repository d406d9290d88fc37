"""The task registry agrees with the task modules and the recipe schema it feeds."""

import pytest
from conftest import sft_recipe

from asymtune.data.glue import GLUE
from asymtune.recipe import Recipe, RecipeError, load
from asymtune.registry import TASKS, headline_metric
from asymtune.tasks import image, seq2seq
from asymtune.tasks.base import TaskFamily, family


def test_every_task_has_a_family_and_its_built_in_datasets():
    assert set(Recipe.model_fields["task"].annotation.__args__) == set(TASKS)
    for info in TASKS.values():
        assert isinstance(family(info.name), TaskFamily)
    assert set(TASKS["classification"].datasets) == set(GLUE)
    assert set(TASKS["seq2seq"].datasets) == set(seq2seq.BUILT_IN)
    assert set(TASKS["image"].datasets) == set(image.BUILT_IN)


def test_data_keys_of_another_task_and_eval_mappings_are_refused_by_the_recipe(write_recipe, alpaca_file, tmp_path):
    base_recipe = sft_recipe(tmp_path, alpaca_file)
    with pytest.raises(RecipeError, match=r"data.train_envs belong\(s\) to task image, not sft"):
        load(write_recipe({**base_recipe, "data": {**base_recipe["data"], "train_envs": ["a"]}}))
    mapping = {**base_recipe, "data": {**base_recipe["data"], "eval": {"a": "x.jsonl", "b": "y.jsonl"}}}
    with pytest.raises(RecipeError, match="task sft takes one held-out file or hub id, not a mapping"):
        load(write_recipe(mapping))


def test_headline_metric_follows_the_task():
    metrics = {"eval_loss": 2.0, "eval_validation_accuracy": 0.9, "glue_sst2": 0.91, "mmlu_average": 0.3}
    assert headline_metric(metrics, "classification") == ("glue_sst2", 0.91)
    assert headline_metric(metrics, "sft") == ("mmlu_average", 0.3)
    assert headline_metric({"skipped": True, "eval_loss": 1.5}, "sft") == ("eval_loss", 1.5)


def test_a_missing_extra_is_named_before_any_run_starts(write_recipe, alpaca_file, tmp_path, monkeypatch):
    import dataclasses

    from click.testing import CliRunner

    from asymtune.cli import main

    (tmp_path / "model").mkdir()
    info = TASKS["sft"]
    monkeypatch.setitem(TASKS, "sft", dataclasses.replace(info, extras=(("no_such_module_xyz", "seq2seq"),)))
    path = write_recipe(sft_recipe(tmp_path / "model", alpaca_file))
    result = CliRunner().invoke(main, ["train", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "needs no_such_module_xyz (pip install 'asymtune[seq2seq]')" in result.output
    assert not (tmp_path / "runs").exists()  # found before training, not after it


def test_adalora_plans_its_schedule_over_every_process(tmp_path, alpaca_file, monkeypatch):
    from asymtune.adapters.methods import planned_steps
    from asymtune.recipe import Recipe

    recipe = sft_recipe(tmp_path, alpaca_file)
    recipe["train"] = {"epochs": 1, "batch_size": 4, "grad_accum": 2}
    parsed = Recipe.model_validate(recipe)
    assert planned_steps(parsed, 80) == 10
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert planned_steps(parsed, 80) == 5
