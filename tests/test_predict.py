"""asymtune predict on classifier, image and summarization runs: the run's own eval numbers, reproduced."""

import csv
import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import corpus, write_jsonl
from test_classification import classification_recipe
from test_image import write_domainbed
from test_seq2seq import seq2seq_recipe

from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow


def train(recipe, folder):
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(folder / "r.yaml"), "--output-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(folder / "runs")])
    return run


def predict(run_or_export, source, output, *extra):
    result = CliRunner().invoke(main, ["predict", str(run_or_export), "--input", str(source), "--output", str(output),
                                       *extra])
    assert result.exit_code == 0, result.output
    return result


def text_rows(n, seed):
    texts = corpus(n, seed)
    return [{"text": text, "topic": "sport" if i % 3 else "tech"} for i, text in enumerate(texts)]


def test_classifier_predictions_reproduce_the_runs_eval_accuracy(tiny_roberta_dir, tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", text_rows(30, 0))
    eval_file = write_jsonl(tmp_path / "dev.jsonl", text_rows(15, 1))
    recipe = classification_recipe(tiny_roberta_dir, {"train": str(train_file), "eval": str(eval_file),
                                                      "text_fields": ["text"], "label_field": "topic"})
    recipe["train"]["max_steps"] = 6
    run = train(recipe, tmp_path)
    accuracy = run.read_json("metrics.json")["eval_validation_accuracy"]
    for form in ("compact", "merged"):
        assert CliRunner().invoke(main, ["export", str(run.path), f"--{form}", str(tmp_path / form)]).exit_code == 0
    for source in (run.path, tmp_path / "compact", tmp_path / "merged"):
        result = predict(source, eval_file, tmp_path / "out.jsonl")
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert len(rows) == 15 and set(rows[0]["probabilities"]) == {"sport", "tech"}
        assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-5 for row in rows)
        assert sum(row["label"] == row["true_label"] for row in rows) / len(rows) == pytest.approx(accuracy)
        assert f"accuracy on the 15 rows with answers: {accuracy:.4f}" in result.output
    unlabelled = write_jsonl(tmp_path / "new.jsonl", [{"text": row["text"]} for row in text_rows(4, 2)])
    predict(run.path, unlabelled, tmp_path / "new.csv")
    with open(tmp_path / "new.csv") as table:
        written = list(csv.DictReader(table))
    assert [set(row) for row in written] == [{"text", "label", "p_sport", "p_tech"}] * 4


def test_image_predictions_reproduce_out_of_domain_accuracy(tiny_vit_dir, tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    recipe = {
        "name": "tiny-vit", "task": "image", "model": {"name": str(tiny_vit_dir)},
        "data": {"train": str(root), "train_envs": ["cartoon"], "eval_fraction": 0.2},
        "adapter": {"rank": 4, "targets": ["q_proj", "v_proj"], "A": {"init": "orthogonal", "trainable": False},
                    "B": {"init": "zero", "trainable": True}},
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 0.05, "logging_steps": 1},
    }
    run = train(recipe, tmp_path)
    metrics = run.read_json("metrics.json")
    predict(run.path, root / "sketch", tmp_path / "sketch.jsonl", "--batch-size", "3")
    rows = [json.loads(line) for line in (tmp_path / "sketch.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and {row["true_label"] for row in rows} == {"dog", "house"}
    assert sum(row["label"] == row["true_label"] for row in rows) / 10 == pytest.approx(metrics["pacs_sketch_acc"])
    predict(run.path, root / "photo" / "dog" / "0.png", tmp_path / "one.jsonl")
    [one] = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert one["label"] in ("dog", "house") and one["true_label"] == "dog"


def test_summaries_equal_the_runs_own_eval_predictions(tiny_bart_dir, tmp_path):
    texts = corpus(60, 5)
    rows = [{"article": texts[2 * i], "gist": texts[2 * i + 1]} for i in range(30)]
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", rows[:24])),
            "eval": str(write_jsonl(tmp_path / "dev.jsonl", rows[24:])), "source_field": "article",
            "target_field": "gist"}
    run = train(seq2seq_recipe(tiny_bart_dir, data), tmp_path)
    predict(run.path, tmp_path / "dev.jsonl", tmp_path / "out.jsonl", "--batch-size", "4")
    made = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    saved = [json.loads(line) for line in (run.path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [row["prediction"] for row in made] == [row["prediction"] for row in saved]
    assert [row["reference"] for row in made] == [row["gist"] for row in rows[24:]]


def test_predict_refuses_what_a_task_cannot_read(tiny_roberta_dir, tmp_path):
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", text_rows(12, 0))), "text_fields": ["text"],
            "label_field": "topic"}
    run = train(classification_recipe(tiny_roberta_dir, data), tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"body": "x"}])
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"text": "fine"}, {"text": 3}])
    runner = CliRunner()
    for source, message in [(tmp_path / "empty.jsonl", "empty.jsonl"),
                            (wrong, "this classification run reads column(s) text"),
                            (numbers, "row 1: column 'text' must be text")]:
        result = runner.invoke(main, ["predict", str(run.path), "--input", str(source)])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(main, ["chat", str(run.path)], input="hi\n")
    assert result.exit_code == 2 and "use `asymtune predict`" in result.output, result.output
