"""task: seq2seq — ROUGE, beam-search predictions, local source/target data."""

import json

import pytest
from click.testing import CliRunner
from conftest import corpus, write_jsonl
from rouge_score import rouge_scorer

from asymtune.cli import main
from asymtune.evaluation.metrics import rouge
from asymtune.runs import resolve

PREDICTIONS = ["the cats sat on a mat", "building permits take ten weeks\nor more"]
REFERENCES = ["the cat sat on the mat", "a building permit takes 10 weeks\nusually"]


def test_rouge_is_the_mean_of_rouge_score_f_measures_with_stemming():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = {name: 0.0 for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for prediction, reference in zip(PREDICTIONS, REFERENCES, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            expected[name] += score.fmeasure / 2
    assert rouge(PREDICTIONS, REFERENCES) == pytest.approx(expected)
    assert rouge(["the cat sat"], ["the cat sat"])["rouge1"] == pytest.approx(1.0)
    assert rouge(["cats"], ["cat"])["rouge1"] == pytest.approx(1.0)  # stemming on


def seq2seq_recipe(model_dir, data, **extra):
    return {
        "name": "tiny-sum",
        "task": "seq2seq",
        "seed": 0,
        "model": {"name": str(model_dir)},
        "data": {**data, "max_length": 64, "max_target_length": 16},
        "adapter": {
            "rank": 4,
            "targets": ["q_proj", "k_proj", "v_proj"],
            "A": {"init": "orthogonal", "trainable": False},
            "B": {"init": "zero", "trainable": True},
        },
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 0.01, "logging_steps": 1},
        "generation": {"num_beams": 2, "max_new_tokens": 8, "no_repeat_ngram_size": 2, "batch_size": 3},
        **extra,
    }


@pytest.mark.slow
def test_local_summaries_train_generate_and_score(tiny_bart_dir, write_recipe, tmp_path):
    texts = corpus(40, 5)
    rows = [{"article": texts[2 * i], "gist": texts[2 * i + 1]} for i in range(20)]
    data = {
        "train": str(write_jsonl(tmp_path / "d.jsonl", rows)),
        "source_field": "article",
        "target_field": "gist",
        "eval_fraction": 0.25,
    }
    result = CliRunner().invoke(
        main, ["train", str(write_recipe(seq2seq_recipe(tiny_bart_dir, data))), "--output-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    metrics = run.read_json("metrics.json")
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"} <= set(metrics)
    assert metrics["parameters"]["trainable_A"] == 0 and metrics["parameters"]["trainable_B"] > 0
    predictions = [json.loads(line) for line in (run.path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["eval_rows"] == 5
    assert set(predictions[0]) == {"source", "reference", "prediction"}
    recomputed = rouge([p["prediction"] for p in predictions], [p["reference"] for p in predictions])
    assert metrics["eval_rouge1"] == pytest.approx(recomputed["rouge1"])


def test_missing_target_column_is_named(tiny_bart_dir, write_recipe, tmp_path):
    data = {
        "train": str(write_jsonl(tmp_path / "d.jsonl", [{"article": "a b", "summary": "a"}] * 4)),
        "source_field": "article",
        "target_field": "gist",
        "eval_fraction": 0.25,
    }
    result = CliRunner().invoke(
        main, ["train", str(write_recipe(seq2seq_recipe(tiny_bart_dir, data))), "--output-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2 and "d.jsonl: missing column(s) gist" in result.output


def test_seq2seq_recipe_needs_fields_or_a_built_in_dataset(write_recipe, tmp_path):
    recipe = seq2seq_recipe(tmp_path, {"train": "hub/dataset", "source_field": "article"})
    result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
    assert (
        result.exit_code == 2
        and "needs data.summarization or both data.source_field and data.target_field" in result.output
    )


def test_a_nested_source_column_is_named_with_file_and_row(tiny_bart_dir, write_recipe, tmp_path):
    rows = [{"article": "a b c", "summary": "a"}] * 3 + [{"article": {"title": "x", "body": "y"}, "summary": "b"}]
    data = {"train": str(write_jsonl(tmp_path / "d.jsonl", rows)), "source_field": "article",
            "target_field": "summary", "eval_fraction": 0.25}
    result = CliRunner().invoke(
        main, ["train", str(write_recipe(seq2seq_recipe(tiny_bart_dir, data))), "--output-dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 2 and "d.jsonl: row 3: column 'article' must be text, got a dict" in result.output
