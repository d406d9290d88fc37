import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import sft_recipe

from asymtune.cli import main
from asymtune.recipe import RecipeError, load

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (REPO / "recipes").rglob("*.yaml")
                 if "base" not in p.relative_to(REPO).parts and p.name != "base.yaml")


@pytest.fixture
def base(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    return sft_recipe(tmp_path / "model", tmp_path / "data.jsonl")


def run_cli(*args):
    return CliRunner().invoke(main, list(args))


def test_valid_recipe_loads_with_alpha_defaulting_to_twice_rank(write_recipe, base):
    recipe = load(write_recipe(base))
    assert recipe.adapter.rank == 4 and recipe.adapter.lora_alpha == 8 and recipe.adapter.scale == 2.0


def test_extends_deep_merges_with_child_winning(write_recipe, base):
    write_recipe(base, "base/parent.yaml")
    child = write_recipe(
        {"extends": "base/parent.yaml", "name": "child", "adapter": {"rank": 16}, "train": {"learning_rate": 1e-3}}
    )
    recipe = load(child)
    assert recipe.name == "child" and recipe.adapter.rank == 16
    assert recipe.adapter.targets == ["q_proj", "v_proj"]  # kept from the parent
    assert recipe.train.learning_rate == 1e-3 and recipe.train.max_steps == 4


def test_extends_cycle_is_rejected(write_recipe):
    write_recipe({"extends": "b.yaml", "name": "a"}, "a.yaml")
    write_recipe({"extends": "a.yaml", "name": "b"}, "b.yaml")
    with pytest.raises(RecipeError, match="cycle"):
        load(write_recipe({"extends": "a.yaml"}, "c.yaml"))


def test_overrides_are_yaml_typed(write_recipe, base):
    recipe = load(write_recipe(base), ["train.learning_rate=1e-4", "adapter.targets=[q_proj]", "seed=3"])
    assert recipe.train.learning_rate == 1e-4 and recipe.adapter.targets == ["q_proj"] and recipe.seed == 3


def test_unknown_key_names_path_file_and_suggestion(write_recipe, base):
    base["train"]["learning_rte"] = 1e-3
    path = write_recipe(base)
    result = run_cli("validate", str(path))
    assert result.exit_code == 2
    assert "unknown key 'train.learning_rte'" in result.output
    assert str(path) in result.output
    assert "did you mean 'learning_rate'?" in result.output
    assert "Traceback" not in result.output


def test_unknown_key_from_override_names_the_override(write_recipe, base):
    result = run_cli("validate", str(write_recipe(base)), "--set", "adapter.rnak=8")
    assert result.exit_code == 2
    assert "--set adapter.rnak=8" in result.output and "did you mean 'rank'?" in result.output


def test_key_from_parent_is_reported_in_the_parent_file(write_recipe, base):
    base["adapter"]["dropuot"] = 0.1
    parent = write_recipe(base, "parent.yaml")
    result = run_cli("validate", str(write_recipe({"extends": "parent.yaml", "name": "kid"}, "kid.yaml")))
    assert result.exit_code == 2 and f"{parent}: unknown key 'adapter.dropuot'" in result.output


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["train"].update(learning_rate="fast"), "'train.learning_rate': Input should be a valid number"),
        (lambda r: r["adapter"].update(rank=0), "'adapter.rank': Input should be greater than or equal to 1"),
        (lambda r: r.update(name="My Run!"), "'name': 'My Run!' may use only lowercase letters"),
        (lambda r: r["adapter"].update(A={"init": "orthogonal", "trainable": False},
                                       B={"init": "zero", "trainable": False}), "nothing is trainable"),
        (lambda r: r["adapter"].update(A={"init": "orthogonal", "trainable": True},
                                       B={"init": "zero", "trainable": False}), "B is frozen at zero"),
        (lambda r: r["adapter"].update(A={"init": "zero", "trainable": True},
                                       B={"init": "zero", "trainable": True}), "both zero-initialised"),
        (lambda r: r["adapter"].update(A={"init": "random", "trainable": True}), "'adapter.A.init': Input should be"),
        (lambda r: r.pop("model"), "missing required key 'model'"),
    ],
    ids=["type", "rank", "name", "nothing-trainable", "b-frozen-zero", "both-zero", "bad-init", "missing"],
)
def test_bad_recipes_exit_2_with_one_message(write_recipe, base, mutate, message):
    mutate(base)
    result = run_cli("validate", str(write_recipe(base)))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_file_and_bad_yaml(write_recipe, tmp_path):
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "recipe file not found" in result.output
    result = run_cli("validate", str(write_recipe("name: [unclosed\n")))
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_train_rejects_bad_recipe_before_loading_anything_and_without_traceback(write_recipe, base, tmp_path):
    base["adapter"].update(A={"init": "orthogonal", "trainable": True}, B={"init": "zero", "trainable": False})
    completed = subprocess.run(
        [sys.executable, "-m", "asymtune.cli", "train", str(write_recipe(base)), "--output-dir", str(tmp_path / "r")],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 2
    assert "B is frozen at zero" in completed.stderr and "Traceback" not in completed.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_recipe_validates(path):
    try:
        recipe = load(path)
    except RecipeError as error:  # only the DomainBed photos, which a user downloads, may be missing
        assert "data/DomainBed/" in str(error) and "does not exist" in str(error), str(error)
        recipe = load(path, check_files=False)
    assert recipe.description, f"{path} needs a one-line description for `asymtune recipes`"


def test_recipes_command_lists_shipped_recipes():
    result = run_cli("recipes")
    assert result.exit_code == 0
    for path in SHIPPED:
        assert path.name in result.output
