"""Two CPU processes (gloo) through `train --nproc 2` or torchrun: the same adapter as one process with
the same global batch, one run folder written by rank 0."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import save_tiny_model, sft_recipe, write_jsonl
from safetensors.torch import load_file
from test_classification import classification_recipe, pair_rows
from transformers import RobertaConfig, RobertaModel

from asymtune.cli import main
from asymtune.runs import resolve

FSDP_CONFIG = Path(__file__).parents[1] / "examples" / "accelerate_fsdp.yaml"


@pytest.fixture(scope="module")
def tiny_roberta_without_dropout(tmp_path_factory):
    """Dropout draws different random numbers in 1 and 2 processes: off, so the runs can agree."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-roberta-no-dropout"), RobertaConfig, RobertaModel, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=300,
        type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains_with_the_same_global_batch(
    tiny_roberta_without_dropout, write_recipe, tmp_path
):
    data = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", pair_rows(32, 0, lambda i: i % 2))),
        "eval": str(write_jsonl(tmp_path / "dev.jsonl", pair_rows(8, 1, lambda i: i % 2))),
        "glue_task": "rte",
    }
    recipe = classification_recipe(tiny_roberta_without_dropout, data, dropout=0.0)
    recipe["train"].update(max_steps=4, batch_size=4, learning_rate=0.05)
    assert_two_processes_match_one(recipe, write_recipe, tmp_path, launch_with_torchrun=False)


@pytest.mark.slow
def test_two_process_sft_weighs_tokens_across_processes_like_one_process(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)  # completions of different lengths on each process
    recipe["train"].update(max_steps=4, batch_size=4, learning_rate=0.05)
    assert_two_processes_match_one(recipe, write_recipe, tmp_path, launch_with_torchrun=True)


def assert_two_processes_match_one(recipe, write_recipe, tmp_path, launch_with_torchrun: bool):
    """Train `recipe` (batch_size 4) in one process, then per-process batch 2 in two (launched by
    `train --nproc 2`, or by torchrun running the plain command): the same adapter."""
    single = CliRunner().invoke(main, ["train", str(write_recipe(recipe, "one.yaml")), "--output-dir",
                                       str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    recipe["train"]["batch_size"] = 2  # per process: 2 processes x 2 = the same global batch of 4
    train = ["train", str(write_recipe(recipe, "two.yaml")), "--output-dir", str(tmp_path / "two")]
    if launch_with_torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "asymtune.cli", *train]
    else:
        command = [sys.executable, "-m", "asymtune.cli", *train, "--nproc", "2"]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "distributed: 2 processes (gloo)" in launched.stderr and "data parallel: DDP over 2" in launched.stderr

    [one], [two] = resolve([str(tmp_path / "one")]), resolve([str(tmp_path / "two")])  # rank 1 made no folder
    assert two.status == "completed" and two.read_json("metrics.json")["train_steps"] == 4
    a = load_file(one.adapter_dir / "adapter_model.safetensors")
    b = load_file(two.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(w.abs().sum() > 0 for k, w in a.items() if "lora_B" in k)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


ONLY_ON_A_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="accelerate runs FSDP on GPUs only (run on the device machine)"
)


def launch_fsdp(recipe_path: Path, tmp_path: Path, **fsdp_config) -> subprocess.CompletedProcess:
    """`accelerate launch` the shipped FSDP config (with `fsdp_config` overrides) on one GPU."""
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    config["fsdp_config"].update(fsdp_config)
    config_file = tmp_path / "fsdp.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "-m",
               "asymtune.cli", "train", str(recipe_path), "--output-dir", str(tmp_path / "fsdp")]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@ONLY_ON_A_GPU
def test_fsdp_on_a_gpu_trains_and_saves_the_adapter_plain_training_gives(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    """The shipped accelerate FSDP2 config: the log says FSDP, and the adapter rank 0 writes from the
    gathered state dict is the one a plain single-GPU run writes."""
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["model"]["dtype"] = "float32"
    recipe["train"].update(max_steps=4, batch_size=4, learning_rate=0.05)
    path = write_recipe(recipe)
    single = CliRunner().invoke(main, ["train", str(path), "--output-dir", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output

    launched = launch_fsdp(path, tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "data parallel: FSDP over 1" in launched.stderr + launched.stdout

    [one], [fsdp] = resolve([str(tmp_path / "one")]), resolve([str(tmp_path / "fsdp")])
    assert fsdp.status == "completed"
    a = load_file(one.adapter_dir / "adapter_model.safetensors")
    b = load_file(fsdp.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert any(w.abs().sum() > 0 for k, w in b.items() if "lora_B" in k)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@ONLY_ON_A_GPU
def test_fsdp1_is_refused_before_training_with_the_fix(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    path = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))
    launched = launch_fsdp(path, tmp_path, fsdp_version=1, fsdp_reshard_after_forward="FULL_SHARD",
                           fsdp_use_orig_params=True)
    assert launched.returncode != 0
    assert "error: accelerate config: FSDP1 (fsdp_version: 1)" in launched.stderr + launched.stdout
    [run] = resolve([str(tmp_path / "fsdp")])
    assert run.status == "failed" and "set fsdp_version: 2" in run.read_json("status.json")["error"]
    assert not (run.path / "checkpoints").exists() or not any((run.path / "checkpoints").iterdir())
