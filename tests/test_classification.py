"""task: classification — GLUE metrics by hand, GLUE paths on local files, the user's own data."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import corpus, write_jsonl

from asymtune.cli import main
from asymtune.evaluation import metrics as m
from asymtune.runs import resolve

PREDICTED, GOLD = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 0, 1])


def test_classification_metrics_against_hand_computation():
    assert m.accuracy(PREDICTED, GOLD) == pytest.approx(5 / 6)
    # TP 3, FP 1, FN 0, TN 2
    assert m.binary_f1(PREDICTED, GOLD) == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert m.matthews(PREDICTED, GOLD) == pytest.approx((3 * 2 - 1 * 0) / np.sqrt(4 * 3 * 3 * 2))
    x, y = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 4])
    assert m.pearson(x, y) == pytest.approx(3.5 / np.sqrt(5 * 4.75))
    assert m.spearman(x, y) == pytest.approx(3 / np.sqrt(5 * 4.5))  # y ranks 1, 2.5, 4, 2.5


def pair_rows(n, seed, label):
    texts = corpus(2 * n, seed)
    return [{"sentence1": texts[2 * i], "sentence2": texts[2 * i + 1], "label": label(i)} for i in range(n)]


def classification_recipe(model_dir, data, **adapter):
    return {
        "name": "tiny-cls",
        "task": "classification",
        "seed": 0,
        "model": {"name": str(model_dir)},
        "data": {**data, "max_length": 64},
        "adapter": {
            "rank": 4,
            "targets": ["query", "value"],
            "A": {"init": "orthogonal", "trainable": False},
            "B": {"init": "zero", "trainable": True},
            **adapter,
        },
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 0.01, "logging_steps": 1},
    }


def train(write_recipe, recipe, root):
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(root)])
    return result, resolve([str(root)]) if root.exists() else []


@pytest.mark.slow
def test_rte_on_local_files_trains_head_and_b_only(tiny_roberta_dir, write_recipe, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", pair_rows(24, 0, lambda i: i % 2))
    eval_file = write_jsonl(tmp_path / "dev.jsonl", pair_rows(8, 1, lambda i: (i // 2) % 2))
    recipe = classification_recipe(
        tiny_roberta_dir, {"train": str(train_file), "eval": str(eval_file), "glue_task": "rte"}
    )
    result, [run] = train(write_recipe, recipe, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = run.read_json("metrics.json")
    params = metrics["parameters"]
    assert params["trainable_A"] == 0 and params["trainable_B"] > 0 and params["frozen_A"] > 0
    assert params["trainable_other"] == 32 * 32 + 32 + 32 * 2 + 2  # RoBERTa head: dense + out_proj
    assert metrics["glue_rte"] == metrics["eval_validation_accuracy"]
    assert 0 <= metrics["glue_rte"] <= 1


@pytest.mark.slow
def test_stsb_is_regression_with_pearson_and_spearman(tiny_roberta_dir, write_recipe, tmp_path):
    rows = pair_rows(20, 0, lambda i: float(i % 5))
    data = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows)),
        "eval": str(write_jsonl(tmp_path / "dev.jsonl", rows[:8])),
        "glue_task": "stsb",
    }
    result, [run] = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = run.read_json("metrics.json")
    assert {"eval_validation_pearson", "eval_validation_spearman"} <= set(metrics)
    assert metrics["glue_stsb"] == metrics["eval_validation_pearson"]


@pytest.mark.slow
def test_mnli_reports_matched_mismatched_and_their_overall_accuracy(tiny_roberta_dir, write_recipe, tmp_path):
    def rows(n, seed):
        texts = corpus(2 * n, seed)
        return [{"premise": texts[2 * i], "hypothesis": texts[2 * i + 1], "label": i % 3} for i in range(n)]

    data = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", rows(24, 0))),
        "glue_task": "mnli",
        "eval": {
            "validation_matched": str(write_jsonl(tmp_path / "m.jsonl", rows(6, 1))),
            "validation_mismatched": str(write_jsonl(tmp_path / "mm.jsonl", rows(9, 2))),
        },
    }
    result, [run] = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = run.read_json("metrics.json")
    matched, mismatched = metrics["eval_validation_matched_accuracy"], metrics["eval_validation_mismatched_accuracy"]
    assert metrics["glue_mnli"] == pytest.approx((6 * matched + 9 * mismatched) / 15)


@pytest.mark.slow
def test_own_data_with_text_fields_and_string_labels(tiny_roberta_dir, write_recipe, tmp_path):
    texts = corpus(30, 3)
    rows = [{"body": text, "topic": ["roof", "wall", "permit"][i % 3]} for i, text in enumerate(texts)]
    data = {
        "train": str(write_jsonl(tmp_path / "d.jsonl", rows)),
        "text_fields": ["body"],
        "label_field": "topic",
        "eval_fraction": 0.2,
    }
    result, [run] = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = run.read_json("metrics.json")
    assert {"eval_validation_accuracy", "eval_validation_macro_f1"} <= set(metrics)
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    labels = json.loads((run.path / "labels.json").read_text())
    assert labels["label2id"] == {"permit": 0, "roof": 1, "wall": 2} and labels["id2label"]["2"] == "wall"
    # the adapter folder names its classes too (PEFT's adapter_config.json has no place for them)
    assert json.loads((run.adapter_dir / "labels.json").read_text()) == labels
    # eval RUN re-computes the task metrics from the saved adapter and head: the same numbers training reported
    rerun = CliRunner().invoke(main, ["eval", str(run.path)])
    assert rerun.exit_code == 0, rerun.output
    again = json.loads((run.path / "eval" / "task.json").read_text())
    for key in ("eval_validation_accuracy", "eval_validation_macro_f1", "eval_validation_loss"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)
    # and a run is named by its recipe name from anywhere, with the runs root given
    argv = ["compare", "tiny-cls", "--output-dir", str(tmp_path / "runs"), "--format", "json"]
    named = CliRunner().invoke(main, argv)
    assert named.exit_code == 0 and json.loads(named.output)[0]["runs"] == [str(run.path)]


def test_missing_column_and_unknown_label_are_named(tiny_roberta_dir, write_recipe, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", pair_rows(6, 0, lambda i: ["yes", "no"][i % 2]))
    no_column = write_jsonl(tmp_path / "bad.jsonl", [{"sentence1": "a", "label": "yes"}])
    data = {"train": str(train_file), "eval": str(no_column), "text_fields": ["sentence1", "sentence2"]}
    result, _ = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "a")
    assert result.exit_code == 2 and "bad.jsonl: missing column(s) sentence2" in result.output

    unknown = write_jsonl(tmp_path / "dev.jsonl", pair_rows(3, 1, lambda i: ["yes", "maybe", "no"][i]))
    data["eval"] = str(unknown)
    result, _ = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "b")
    assert result.exit_code == 2 and "row 1: label 'maybe' is not one of the training labels no, yes" in result.output


def test_recipe_rejects_mixed_task_settings(write_recipe, tmp_path):
    recipe = classification_recipe(tmp_path, {"train": "x.jsonl", "format": "alpaca", "glue_task": "rte"})
    result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
    assert result.exit_code == 2 and "data.format belong(s) to task sft, not classification" in result.output


def test_unloadable_model_is_a_clear_error(write_recipe, tmp_path):
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", pair_rows(6, 0, lambda i: i % 2))), "glue_task": "rte",
            "eval_fraction": 0.5}
    result, _ = train(write_recipe, classification_recipe(tmp_path / "no-model", data), tmp_path / "runs")
    assert result.exit_code == 2 and "no-model does not exist" in result.output  # before anything loads
    (tmp_path / "no-model").mkdir()
    result, _ = train(write_recipe, classification_recipe(tmp_path / "no-model", data), tmp_path / "runs")
    assert result.exit_code == 2 and "no-model': cannot read its config" in result.output  # before any weights


@pytest.mark.parametrize("labels, message", [
    (lambda i: "spam", "holds 1 class(es) (spam)"),
    (lambda i: [0.37, 1.25, None][i % 3], "looks continuous"),
    (lambda i: [1.0, None][i % 2], "row 1: label column 'label' is empty (null)"),
])
def test_one_class_continuous_or_null_labels_are_refused_naming_the_column(
    tiny_roberta_dir, write_recipe, tmp_path, labels, message
):
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", pair_rows(40, 0, labels))),
            "text_fields": ["sentence1", "sentence2"], "eval_fraction": 0.25}
    result, found = train(write_recipe, classification_recipe(tiny_roberta_dir, data), tmp_path / "runs")
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output) < 600  # a few values, never every one of them
    assert [run.status for run in found] == ["failed"]


def test_a_latin1_file_reads_with_data_encoding(tiny_roberta_dir, write_recipe, tmp_path):
    rows = "sentence1,sentence2,label\n" + "".join(f"caf\xe9 {i},cr\xe8me {i},{['oui', 'non'][i % 2]}\n"
                                                    for i in range(12))
    (tmp_path / "d.csv").write_bytes(rows.encode("latin-1"))
    data = {"train": str(tmp_path / "d.csv"), "text_fields": ["sentence1", "sentence2"], "eval_fraction": 0.25}
    recipe = classification_recipe(tiny_roberta_dir, data)
    result, _ = train(write_recipe, recipe, tmp_path / "a")
    assert result.exit_code == 2 and "line 2 is not valid UTF-8" in result.output and "data.encoding" in result.output
    recipe["data"]["encoding"] = "latin-1"
    result, [run] = train(write_recipe, recipe, tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert run.read_json("metrics.json")["train_rows"] == 9
