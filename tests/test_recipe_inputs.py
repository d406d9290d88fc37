"""Recipe inputs a new user or a fuzzer gave: relative paths in an `extends:` parent, hints inside optional
sections, single names where lists go, and documents built to crash or hang the parser."""

import time

import pytest
import yaml
from click.testing import CliRunner
from conftest import sft_recipe

from asymtune.cli import main
from asymtune.recipe import RecipeError, load


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    return sft_recipe(tmp_path / "model", tmp_path / "data.jsonl")


def refused(path, *overrides) -> str:
    result = CliRunner().invoke(main, ["validate", str(path), *(f"--set={o}" for o in overrides)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output


def test_relative_data_paths_resolve_against_the_file_that_sets_them(tmp_path, recipe, write_recipe, monkeypatch):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "train.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    parent = {**recipe, "data": {**recipe["data"], "train": "train.jsonl"}}
    write_recipe(parent, "shared/base.yaml")
    child = write_recipe({"extends": "../shared/base.yaml", "name": "child"}, "experiments/child.yaml")
    monkeypatch.chdir(tmp_path / "experiments")  # the working directory plays no part
    assert load(child).data.train == str(tmp_path / "shared" / "train.jsonl")
    # --set paths are relative to the working directory; validate names the key and file of a missing one
    output = refused(child, "data.train=elsewhere.jsonl")
    assert "'data.train'" in output and str(tmp_path / "experiments" / "elsewhere.jsonl") in output
    write_recipe({**parent, "data": {**parent["data"], "train": "gone.jsonl"}}, "shared/base.yaml")
    output = refused(child)
    assert str(tmp_path / "shared" / "base.yaml") in output and "gone.jsonl does not exist" in output


def test_hub_ids_assets_and_built_in_datasets_are_left_alone(recipe, write_recipe):
    hub = {**recipe, "model": {"name": "meta-llama/Llama-2-7b-hf"},
           "data": {**recipe["data"], "train": "tatsu-lab/alpaca"}}
    loaded = load(write_recipe(hub))
    assert loaded.model.name == "meta-llama/Llama-2-7b-hf" and loaded.data.train == "tatsu-lab/alpaca"
    asset = {**recipe, "data": {**recipe["data"], "train": "zaragoza-construction-faq-en"}}
    assert load(write_recipe(asset)).data.train == "zaragoza-construction-faq-en"


def test_did_you_mean_looks_inside_optional_sections_and_knows_common_names(recipe, write_recipe):
    quantized = {**recipe, "model": {**recipe["model"], "quantization": {"quant_tpye": "nf4"}}}
    assert "did you mean 'quant_type'?" in refused(write_recipe(quantized))
    assert "did you mean 'learning_rate'?" in refused(write_recipe(recipe), "train.lr=1e-4")


def test_a_single_name_where_a_list_goes_is_a_one_item_list(recipe, write_recipe):
    loaded = load(write_recipe(recipe), ["adapter.targets=q_proj"])
    assert loaded.adapter.targets == ["q_proj"]
    assert load(write_recipe(recipe), ["adapter.targets=all-linear"]).adapter.targets == "all-linear"


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "'seed'"),
    ("adapter.seed=-5", "'adapter.seed'"),
    ("seed=4294967296", "'seed'"),
    ("name=" + "a" * 255, "at most 100"),
    ("seed=" + "9" * 5000, "digits"),
    ("data.encoding=klingon", "not a text encoding"),
])
def test_values_the_run_cannot_use_are_refused_up_front(recipe, write_recipe, override, message):
    assert message in refused(write_recipe(recipe), override)


def test_documents_built_to_crash_or_hang_the_parser_are_refused_quickly(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9)
    )
    cases = {"deep.yaml": "[" * 5000 + "]" * 5000, "laughs.yaml": laughs, "huge.yaml": "a: " + "x" * (2 << 20),
             "nested.yaml": yaml.safe_dump({"name": "x", "model": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {
                 "h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}}})}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        started = time.perf_counter()
        with pytest.raises(RecipeError):
            load(path)
        assert time.perf_counter() - started < 5, name


def test_recipes_dir_lists_pipes_devices_loops_and_huge_files_as_invalid_without_hanging(tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "recipes"
    (folder / "sub").mkdir(parents=True)
    os.mkfifo(folder / "pipe.yaml")  # opening it for reading would wait for a writer forever
    (folder / "zero.yaml").symlink_to("/dev/zero")  # reading it never ends
    (folder / "sub" / "loop").symlink_to("..")
    (folder / "huge.yaml").write_text("a: " + "x" * (3 << 20))
    command = [sys.executable, "-m", "asymtune.cli", "recipes", "--dir", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    for name in ("pipe.yaml", "zero.yaml"):
        assert f"{name}" in result.stdout and "not a regular file" in result.stdout, result.stdout
    assert "larger than 1024 KiB" in result.stdout


@pytest.mark.parametrize("override, message", [
    ("seed=true", "'seed': Input should be a valid integer"),
    ("train.learning_rate=true", "'train.learning_rate': Input should be a valid number"),
    ("model.trust_remote_code=0", "'model.trust_remote_code': Input should be a valid boolean"),
    ("adapter.rank=4.0", "'adapter.rank': Input should be a valid integer"),
    ('name="tiny\n"', "'name'"),
    ('adapter.targets=["q_proj", ""]', "an empty module name"),
])
def test_wrong_types_are_refused_not_coerced(recipe, write_recipe, override, message):
    assert message in refused(write_recipe(recipe), override)


def test_exponent_floats_without_a_dot_are_numbers(recipe, write_recipe):
    assert load(write_recipe(recipe), ["train.learning_rate=2e-4"]).train.learning_rate == 2e-4


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, recipe):
    text = yaml.safe_dump(recipe, sort_keys=False).replace("seed: 0\n", "seed: 0\nseed: 1\n", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index("seed: 0") + 1
    output = refused(path)
    assert str(path) in output and f"key 'seed' is given twice (lines {first} and {first + 1})" in output
