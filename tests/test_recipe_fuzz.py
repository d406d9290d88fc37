"""Property-based checks: any YAML document, and any mutation of a shipped recipe, gives a Recipe or one
RecipeError message — never another exception."""

import random
import time
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


def _nested(depth: int, style: str) -> str:
    if style == "flow-list":
        return "model: " + "[" * depth + "1" + "]" * depth
    if style == "flow-map":
        return "model: " + "{a: " * depth + "1" + "}" * depth
    block = "".join("  " * (level + 1) + f"k{level}:\n" for level in range(depth))
    return "model:\n" + block + "  " * (depth + 1) + "x"


def _alias_bomb(levels: int, fanout: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["x"] * fanout) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "\n".join(lines)


HOSTILE = st.one_of(
    st.builds(_nested, st.integers(17, 3000), st.sampled_from(["flow-list", "flow-map", "block"])),
    st.builds(_alias_bomb, st.integers(5, 12), st.integers(8, 12)),
    st.builds(lambda digits, key: f"{key}: {'7' * digits}", st.integers(4301, 20000),
              st.sampled_from(["seed", "adapter.rank", "train.max_steps"])),
    st.builds(lambda size: "a: " + "x" * size, st.integers(1 << 20, 3 << 20)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=HOSTILE)
def test_documents_built_to_crash_or_hang_the_parser_are_refused_within_seconds(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("hostile") / "r.yaml"
    path.write_text(text)
    started = time.perf_counter()
    assert outcome(path) == "error"
    assert time.perf_counter() - started < 5  # a hang, not a slow machine


@settings(max_examples=60, deadline=None)
@given(override=st.one_of(
    st.builds(lambda n: f"seed={n}", st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32))),
    st.builds(lambda n: f"adapter.seed={n}", st.integers(max_value=-1)),
    st.builds(lambda name: f"name={name}", st.text("abc-_.0", min_size=101, max_size=400)),
    st.builds(lambda digits: f"seed={'9' * digits}", st.integers(4301, 10000)),
    st.builds(lambda value: f"train.learning_rate={value}", st.sampled_from([".nan", ".inf", "-.inf", "-1e-4"])),
    st.builds(lambda rank: f"adapter.rank={rank}", st.integers(max_value=0)),
    st.builds(lambda codec: f"data.encoding={codec}", st.sampled_from(["klingon", "utf-9", "rot-13x"])),
))
def test_values_a_run_cannot_use_are_refused_when_the_recipe_loads(override):
    assert outcome(REPO / "recipes" / "quickstart_b_only.yaml", (override,)) == "error"
