"""Property checks: damage any file a finished run holds (random bytes, or a truncation) and every command that
reads runs reports the damaged run by path or lists it as unreadable — never a traceback."""

import shutil

import pytest
import yaml
from click.testing import CliRunner
from conftest import alpaca_rows, sft_recipe, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow
CHECKPOINT = "checkpoints/checkpoint-2/"
FILES = ("status.json", "metrics.json", "recipe.yaml", "env.json", "logs/train.jsonl",
         "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/asymtune_adapter.json",
         *(CHECKPOINT + name for name in ("asymtune_checkpoint.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                          "trainer_state.json", "adapter_model.safetensors", "adapter_config.json")))


@pytest.fixture(scope="module")
def finished_runs(tiny_llama_dir, tmp_path_factory):
    """Two completed B-only runs of the same recipe (two seeds) under one root, each with its final checkpoint."""
    folder = tmp_path_factory.mktemp("finished")
    data = write_jsonl(folder / "alpaca.jsonl", alpaca_rows(20))
    for seed in (0, 1):
        recipe = {**sft_recipe(tiny_llama_dir, data), "seed": seed}
        recipe["train"]["max_steps"] = 2
        (folder / f"r{seed}.yaml").write_text(yaml.safe_dump(recipe))
        argv = ["train", str(folder / f"r{seed}.yaml"), "--output-dir", str(folder / "runs")]
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.output
    return folder / "runs"


def commands(root, run_path):
    return [["runs", str(root)], ["compare", str(root)], ["compare", str(run_path), "--format", "json"],
            ["theory", "--d", "8", "--rank", "2", "--trials", "2", "--run", str(run_path)],
            ["export", str(run_path), "--compact", str(root.parent / "compact-out")],
            ["similarity", *(str(r.path) for r in resolve([str(root)])), "--figures-dir", str(root.parent / "sim")],
            ["eval", str(run_path), "--mmlu", "--mmlu-data", str(root.parent / "none.jsonl")],
            ["train", "--resume", str(run_path)]]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), junk=st.binary(max_size=64), cut=st.floats(0, 1), truncate=st.booleans())
def test_a_damaged_run_never_gives_a_traceback(finished_runs, tmp_path_factory, name, junk, cut, truncate):
    root = tmp_path_factory.mktemp("damaged") / "runs"
    shutil.copytree(finished_runs, root)
    run_path = resolve([str(root)])[0].path
    (run_path / "status.json").write_text('{"status": "interrupted", "step": 1}')  # so --resume tries it
    target = run_path / name
    content = target.read_bytes()
    target.write_bytes(content[: int(len(content) * cut)] if truncate else junk)
    for argv in commands(root, run_path):
        shutil.rmtree(root.parent / "compact-out", ignore_errors=True)
        result = CliRunner().invoke(main, argv)
        assert result.exit_code in (0, 1, 2), (argv, name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, name, result.exception)
        assert "Traceback" not in result.output, (argv, name, result.output)
