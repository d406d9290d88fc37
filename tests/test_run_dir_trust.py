"""A run directory is data, not code: a stored trust_remote_code opts no one in, and nothing asymtune writes,
appends or copies follows a symlink out of the run."""

import json
import os
import shutil

import pytest
import yaml
from click.testing import CliRunner
from conftest import alpaca_rows, sft_recipe, write_jsonl

from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow

CONFIG_CODE = '''import os
from transformers import LlamaConfig


class MarkingConfig(LlamaConfig):
    """Writes a marker file whenever it is built: proof that the model folder's code ran."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with open(os.environ["ASYMTUNE_TEST_MARKER"], "a") as marker:
            marker.write("ran\\n")
'''
MODELING_CODE = '''from transformers import LlamaForCausalLM

from .configuration_marking import MarkingConfig


class MarkingForCausalLM(LlamaForCausalLM):
    config_class = MarkingConfig
'''


@pytest.fixture(scope="module")
def remote_code_run(tiny_llama_dir, tmp_path_factory):
    """A completed run whose model folder ships code (auto_map) and whose recipe said trust_remote_code: true;
    the output of training it."""
    folder = tmp_path_factory.mktemp("remote-code")
    model = folder / "model-with-code"
    shutil.copytree(tiny_llama_dir, model)
    (model / "configuration_marking.py").write_text(CONFIG_CODE)
    (model / "modeling_marking.py").write_text(MODELING_CODE)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_marking.MarkingConfig",
                          "AutoModelForCausalLM": "modeling_marking.MarkingForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    recipe = sft_recipe(model, write_jsonl(folder / "alpaca.jsonl", alpaca_rows(20)))
    recipe["model"]["trust_remote_code"] = True
    recipe["train"]["max_steps"] = 2
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    marker = folder / "marker"
    os.environ["ASYMTUNE_TEST_MARKER"] = str(marker)
    result = CliRunner().invoke(main, ["train", str(folder / "r.yaml"), "--output-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    assert marker.is_file()  # the recipe opted in: the code ran
    [run] = resolve([str(folder / "runs")])
    return run, marker, result.output


def test_training_a_recipe_that_trusts_remote_code_names_the_code_that_will_run(remote_code_run):
    _, _, output = remote_code_run
    assert "warning" in output and "configuration_marking.py" in output and "modeling_marking.py" in output


@pytest.mark.parametrize("command", ["eval", "export --merged", "train --resume"])
def test_a_stored_trust_remote_code_runs_nothing_without_the_flag(remote_code_run, tmp_path, command):
    run, marker, _ = remote_code_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    if command == "train --resume":
        (copy / "status.json").write_text(json.dumps({"status": "interrupted", "step": 1}))
    argv = {"eval": ["eval", str(copy)], "export --merged": ["export", str(copy), "--merged", str(tmp_path / "m")],
            "train --resume": ["train", "--resume", str(copy)]}[command]
    marker.unlink(missing_ok=True)
    refused = CliRunner().invoke(main, argv)
    assert refused.exit_code == 2, refused.output
    assert "--trust-remote-code" in refused.output and str(copy / "recipe.yaml") in refused.output.replace("\n", "")
    assert not marker.exists()  # nothing of the model folder's code ran
    trusted = CliRunner().invoke(main, [*argv, "--trust-remote-code"])
    assert trusted.exit_code == 0, trusted.output
    assert marker.is_file()


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    recipe = sft_recipe(tiny_llama_dir, write_jsonl(folder / "alpaca.jsonl", alpaca_rows(20)))
    recipe["train"]["max_steps"] = 2
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(folder / "r.yaml"), "--output-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    return resolve([str(folder / "runs")])[0].path


@pytest.mark.parametrize("link, command", [
    ("logs/train.jsonl", "train --resume"),  # --resume would append to the file the link names
    ("eval", "eval"),  # eval would write its results into the folder the link names
    ("adapter/README.md", "export --peft"),  # the export would carry a host file out
])
def test_a_symlink_out_of_the_run_is_refused_and_nothing_is_written_through_it(finished_run, tmp_path, link, command):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    outside = tmp_path / "outside"
    if link == "eval":
        outside.mkdir()
    else:
        outside.write_text("host secret\n")
    (run / link).unlink(missing_ok=True) if not (run / link).is_dir() else shutil.rmtree(run / link)
    (run / link).symlink_to(outside)
    if command == "train --resume":
        (run / "status.json").write_text(json.dumps({"status": "interrupted", "step": 1}))
    argv = {"train --resume": ["train", "--resume", str(run)], "eval": ["eval", str(run)],
            "export --peft": ["export", str(run), "--peft", str(tmp_path / "exported")]}[command]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert str(run / link) in result.output.replace("\n", "") and "symlink out of the run" in result.output
    if link == "eval":
        assert not list(outside.iterdir())
    else:
        assert outside.read_text() == "host secret\n"
    assert not (tmp_path / "exported").exists()


def _rewrite_weights(adapter, change):
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter / "adapter_model.safetensors")
    save_file(change(weights), adapter / "adapter_model.safetensors")


@pytest.mark.parametrize("damage, message", [
    ("no lora_B", "lora_B missing; the adapter is incomplete"),  # was evaluated and merged as the base model
    ("wrong shape", "are not [r, d_in] and [d_out, r]"),
    ("garbage config", "adapter_config.json: damaged, not JSON"),
    ("config without peft_type", "not a PEFT adapter config"),
])
@pytest.mark.parametrize("command", ["eval", "export --merged", "export --compact", "export --peft"])
def test_an_incomplete_or_inconsistent_adapter_is_refused_naming_the_file(finished_run, tmp_path, damage, message,
                                                                          command):
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    adapter = run / "adapter"
    if damage == "no lora_B":
        _rewrite_weights(adapter, lambda w: {k: v for k, v in w.items() if "lora_B" not in k})
    elif damage == "wrong shape":
        _rewrite_weights(adapter, lambda w: {k: torch.zeros(3, 5) if "lora_A" in k else v for k, v in w.items()})
    elif damage == "garbage config":
        (adapter / "adapter_config.json").write_bytes(b"\x00garbage")
    else:
        (adapter / "adapter_config.json").write_text('{"r": 4}')
    flag = command.split()[-1]
    argv = ["eval", str(run)] if command == "eval" else ["export", str(run), flag, str(tmp_path / "out")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert str(adapter) in result.output.replace("\n", "") and message in result.output.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_an_adapter_lacking_a_module_the_model_has_is_refused_on_load(finished_run, tmp_path):
    """Both factors of one layer gone: nothing in the file is inconsistent, but the model expects them."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _rewrite_weights(run / "adapter", lambda w: {k: v for k, v in w.items() if "layers.1.self_attn.v_proj" not in k})
    result = CliRunner().invoke(main, ["eval", str(run)])
    assert result.exit_code == 2 and "lacks 2 tensor(s) of this adapter" in result.output.replace("\n", "")
