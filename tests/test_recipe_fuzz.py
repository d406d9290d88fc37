"""Property-based checks: any YAML document, and any mutation of a shipped recipe, gives a Recipe or one
RecipeError message — never another exception."""

import random
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymtune.recipe import Recipe, RecipeError, load

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (REPO / "recipes").rglob("*.yaml")
                 if "base" not in p.relative_to(REPO).parts and p.name != "base.yaml")
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


def outcome(path: Path, overrides=()) -> str:
    try:
        recipe = load(path, overrides)
    except RecipeError as error:
        message = str(error)
        assert message and "Traceback" not in message
        return "error"
    assert isinstance(recipe, Recipe)
    return "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=VALUES)
def test_any_yaml_document_is_a_recipe_or_one_clear_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_text(yaml.safe_dump(document))
    outcome(path)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), mutation=st.sampled_from(["rename", "retype", "drop"]), value=SCALARS)
def test_mutated_shipped_recipes_load_or_fail_cleanly(tmp_path_factory, seed, mutation, value):
    chooser = random.Random(seed)
    source = chooser.choice(SHIPPED)
    document = yaml.safe_load(source.read_text())
    folder = tmp_path_factory.mktemp("mutant")
    if "extends" in document:  # keep the parent reachable from the mutant's folder
        document["extends"] = str((source.parent / document["extends"]).resolve())
    keys = [path for path in _paths(document) if path != ("extends",)]
    path = chooser.choice(keys)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if mutation == "rename":
        parent[path[-1] + chooser.choice(["x", "_", "s"])] = parent.pop(path[-1])
    elif mutation == "retype":
        parent[path[-1]] = value
    else:
        del parent[path[-1]]
    (folder / "m.yaml").write_text(yaml.safe_dump(document))
    outcome(folder / "m.yaml")


@settings(max_examples=100, deadline=None)
@given(key=st.text(min_size=0, max_size=12), value=st.text(max_size=12))
def test_any_override_is_applied_or_refused_cleanly(key, value):
    outcome(REPO / "recipes" / "quickstart_b_only.yaml", (f"{key}={value}",))
