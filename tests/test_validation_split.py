"""data.validation_fraction (a split to choose hyperparameters on, the eval split left as the test), data.split_seed
(the same held-out rows for every seed) and data.test_envs (which environments an image run is tested on)."""

import bz2
import json

import pytest
from click.testing import CliRunner
from conftest import alpaca_rows, corpus, write_jsonl
from test_image import write_domainbed

from asymtune import assets
from asymtune import recipe as recipes
from asymtune.cli import main
from asymtune.data.domainbed import split
from asymtune.data.sources import DataError, load_table
from asymtune.runs import resolve
from asymtune.tasks import classification, sft


def load(write_recipe, document: dict, *overrides: str) -> recipes.Recipe:
    return recipes.load(write_recipe(document), overrides)


def classify_recipe(model: str, data_file, **data) -> dict:
    return {"name": "tiny-cls", "task": "classification", "seed": 0, "model": {"name": model},
            "data": {"train": str(data_file), "text_fields": ["text"], "label_field": "label", "max_length": 32,
                     **data},
            "adapter": {"method": "linear_probe"}}


def texts(table) -> set[str]:
    return set(table["text"])


@pytest.fixture
def topics(tmp_path):
    rows = [{"text": text, "label": ["roof", "wall", "permit"][i % 3]} for i, text in enumerate(corpus(60, 3))]
    return write_jsonl(tmp_path / "topics.jsonl", rows)


def test_classification_validation_is_split_from_train_and_the_eval_split_becomes_test(
        write_recipe, topics, tiny_roberta_dir):
    document = classify_recipe(str(tiny_roberta_dir), topics, eval_fraction=0.2, validation_fraction=0.25)
    data = classification.FAMILY.load_data(load(write_recipe, document))
    assert list(data.eval) == ["test", "validation"]
    test, validation, train = texts(data.eval["test"]), texts(data.eval["validation"]), texts(data.train)
    assert (len(test), len(validation), len(train)) == (12, 12, 36)  # 20% of 60, then 25% of the other 48
    assert not (test & validation) and not (test & train) and not (validation & train)
    # the test rows are the eval rows the recipe held out before it had a validation split
    before = classification.FAMILY.load_data(load(write_recipe, {**document, "data": {
        **document["data"], "validation_fraction": 0.0}}))
    assert list(before.eval) == ["validation"] and texts(before.eval["validation"]) == test


def test_split_seed_holds_the_same_rows_out_for_every_seed(write_recipe, topics, tiny_roberta_dir):
    document = classify_recipe(str(tiny_roberta_dir), topics, eval_fraction=0.2, validation_fraction=0.2)

    def held_out(*overrides):
        data = classification.FAMILY.load_data(load(write_recipe, document, *overrides))
        return texts(data.eval["test"]), texts(data.eval["validation"])

    assert held_out("seed=1", "data.split_seed=7") == held_out("seed=2", "data.split_seed=7")
    assert held_out("seed=1") != held_out("seed=2")  # without it, the run's seed draws the split


def test_sft_validation_split_is_disjoint_and_capped(write_recipe, tmp_path, tiny_llama_dir):
    data_file = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(40))
    document = {"name": "tiny-sft", "task": "sft", "model": {"name": str(tiny_llama_dir)},
                "data": {"train": str(data_file), "format": "alpaca", "eval_fraction": 0.2,
                         "validation_fraction": 0.25, "max_eval_samples": 5, "split_seed": 3},
                "adapter": {"rank": 2, "targets": ["q_proj"]}}
    data = sft.build_datasets(load(write_recipe, document))
    prompts = [set(table["prompt"]) for table in (data.train, data.eval, data.validation)]
    assert [len(p) for p in prompts] == [24, 5, 5]  # 40 - 8 test; 25% of 32 = 8 validation, both capped at 5
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    again = sft.build_datasets(load(write_recipe, document, "seed=9"))
    assert set(again.validation["prompt"]) == prompts[2]


@pytest.mark.slow
def test_sft_run_reports_validation_loss_beside_the_test_loss(write_recipe, tmp_path, tiny_llama_dir):
    from conftest import sft_recipe

    document = sft_recipe(tiny_llama_dir, write_jsonl(tmp_path / "a.jsonl", alpaca_rows(40)))
    document["data"]["validation_fraction"] = 0.2
    result = CliRunner().invoke(main, ["train", str(write_recipe(document)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    metrics = run.read_json("metrics.json")
    assert metrics["validation_loss"] > 0 and metrics["eval_loss"] > 0
    assert metrics["validation_loss"] != metrics["eval_loss"]  # scored on other rows


def test_image_validation_comes_from_the_train_environment_and_leaves_the_test_alone(tmp_path):
    root = write_domainbed(tmp_path / "pacs", per_class=10)
    plain = split(root, ["cartoon"], seed=1)
    data = split(root, ["cartoon"], seed=1, validation_fraction=0.3)
    assert data.id_test == plain.id_test  # the same test images with or without a validation split
    assert sorted(label for _, label in data.validation) == [0, 0, 0, 1, 1, 1]  # 30% of each class's 10
    paths = [{p for p, _ in part} for part in (data.train, data.id_test, data.validation)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert len(data.train) == 10  # of each class's 10 images: 2 test, 3 validation, 5 train


def test_test_envs_choose_the_out_of_domain_environments(tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    assert set(split(root, ["cartoon"], seed=0, test_envs=["photo"]).ood) == {"photo"}
    with pytest.raises(DataError, match=r"data.test_envs \['paint'\]: not environments"):
        split(root, ["cartoon"], seed=0, test_envs=["paint"])
    with pytest.raises(DataError, match=r"data.test_envs \['cartoon'\]: also trained on"):
        split(root, ["cartoon"], seed=0, test_envs=["cartoon", "photo"])


@pytest.mark.parametrize(("data", "message"), [
    ({"eval_fraction": 0.5, "validation_fraction": 0.5}, "leave no training rows"),
    ({"validation_fraction": 0.1, "train": [{"train": "a.jsonl"}, {"train": "b.jsonl"}]}, "several sources"),
])
def test_validation_fraction_recipe_errors_name_the_key(write_recipe, data, message):
    document = {"name": "x", "task": "sft", "model": {"name": "m"},
                "data": {"train": "a.jsonl", "format": "alpaca", **data}, "adapter": {"rank": 2, "targets": ["q"]}}
    with pytest.raises(recipes.RecipeError, match=message) as error:
        recipes.load(write_recipe(document), check_files=False)
    assert "data.validation_fraction" in str(error.value)


def test_labelled_table_asset_keeps_only_the_named_labels_in_file_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMTUNE_CACHE", str(tmp_path))
    asset = assets.ASSETS["rotten-tomatoes"]
    shipped = tmp_path / "packages" / f"{asset.package}-{asset.version}" / asset.path
    shipped.parent.mkdir(parents=True)
    csv = ("category,filename,text,movie_name\n"
           "fresh,a.txt,\"A joy, start to finish.\",M1\n"
           "plot,b.txt,A man walks into a bar.,M1\n"
           "rotten,c.txt,Dull.,M2\n")
    shipped.write_bytes(bz2.compress(csv.encode()))
    path = assets.resolve("rotten-tomatoes", log=lambda line: None)  # converted once, no download: it is unpacked
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"text": "A joy, start to finish.", "label": "fresh"}, {"text": "Dull.", "label": "rotten"}]
    table = load_table("rotten-tomatoes")
    assert table["label"] == ["fresh", "rotten"]
