"""data.train as several sources: each with its own format, eval drawn per source, mixed by weight, eval loss
per source and overall."""

import pytest
from click.testing import CliRunner
from conftest import alpaca_rows, corpus, sft_recipe, write_jsonl

from asymtune.cli import main
from asymtune.recipe import Recipe
from asymtune.runs import resolve
from asymtune.tasks.sft import build_datasets


@pytest.fixture
def two_sources(tmp_path):
    faq = write_jsonl(tmp_path / "faq.jsonl", alpaca_rows(30))
    texts = corpus(40, seed=7)
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": texts[2 * i], "completion": texts[2 * i + 1]}
                                                 for i in range(20)])
    return faq, chat


def mixed_recipe(model_dir, faq, chat, faq_weight=1.0, chat_weight=1.0) -> dict:
    recipe = sft_recipe(model_dir, faq)
    recipe["data"]["train"] = [{"train": str(faq), "weight": faq_weight},
                               {"train": str(chat), "format": "prompt_completion", "name": "Chat Logs",
                                "weight": chat_weight}]
    return recipe


def test_each_source_is_split_on_its_own_and_mixed_by_weight(two_sources, tmp_path):
    faq, chat = two_sources
    even = build_datasets(Recipe.model_validate(mixed_recipe(tmp_path, faq, chat)))
    assert list(even.by_source) == ["faq", "chat_logs"]
    assert (len(even.by_source["faq"]), len(even.by_source["chat_logs"])) == (6, 4)  # eval_fraction 0.2 of each
    assert len(even.eval) == 10 and len(even.train) == 24 + 16  # equal weights: every row once
    chat_prompts = {row["prompt"] for row in even.by_source["chat_logs"]}
    assert not chat_prompts & set(even.train["prompt"])  # held-out rows never train

    heavy = build_datasets(Recipe.model_validate(mixed_recipe(tmp_path, faq, chat, chat_weight=3.0)))
    faq_prompts = set(build_datasets(Recipe.model_validate(sft_recipe(tmp_path, faq))).train["prompt"])
    drawn_faq = sum(prompt in faq_prompts for prompt in heavy.train["prompt"])
    drawn_chat = len(heavy.train) - drawn_faq
    assert set(heavy.train["prompt"]) >= faq_prompts  # every row of every source at least once
    assert drawn_chat / drawn_faq == pytest.approx(3.0, rel=0.35)


@pytest.mark.slow
def test_a_mixed_run_reports_eval_loss_per_source_and_overall(tiny_llama_dir, two_sources, write_recipe, tmp_path):
    faq, chat = two_sources
    recipe = mixed_recipe(tiny_llama_dir, faq, chat)
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "(faq 6, chat_logs 4)" in result.output
    [run] = resolve([str(tmp_path / "runs")])
    metrics = run.read_json("metrics.json")
    assert metrics["eval_rows"] == 10
    low, high = sorted((metrics["eval_faq_loss"], metrics["eval_chat_logs_loss"]))
    assert low <= metrics["eval_loss"] <= high  # the overall loss is a mean over both sources' tokens


def test_source_lists_are_checked(two_sources, write_recipe, tmp_path):
    faq, chat = two_sources
    cases = [
        ({"train": []}, "list at least one source"),
        ({"train": [{"train": str(faq)}, {"train": str(tmp_path / "x" / "faq.jsonl")}]}, "give each a distinct name"),
        ({"eval": str(faq)}, "give each its own eval"),
        ({"train": [{"train": str(faq), "weight": 0}]}, "greater than 0"),
        ({"train": [{"train": "missing.jsonl"}]}, "'data.train.0.train'"),
    ]
    for data, message in cases:
        recipe = mixed_recipe(tmp_path, faq, chat)
        recipe["data"].update(data)
        result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (data, result.output)
