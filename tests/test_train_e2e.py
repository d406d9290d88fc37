"""`asymtune train` end to end on the tiny model: a complete run dir, a trained B, an untouched A."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import sft_recipe, write_jsonl
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from asymtune.adapters.init import make_factor
from asymtune.cli import main
from asymtune.runs import resolve

pytestmark = pytest.mark.slow


def train(recipe_path, output_dir, *extra):
    return CliRunner().invoke(main, ["train", str(recipe_path), "--output-dir", str(output_dir), *extra])


def test_train_b_only_writes_a_complete_run_dir(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    result = train(write_recipe(sft_recipe(tiny_llama_dir, alpaca_file)), tmp_path / "runs")
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    assert run.status == "completed"
    assert yaml.safe_load((run.path / "recipe.yaml").read_text())["adapter"]["alpha"] is None
    env = run.read_json("env.json")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    assert env["versions"]["peft"] and env["seed"] == 0 and env["argv"] and env["device"] == device

    metrics = run.read_json("metrics.json")
    assert metrics["train_steps"] == 4
    assert metrics["train_tokens"] > 0
    assert metrics["train_tokens_per_s"] == pytest.approx(metrics["train_tokens"] / metrics["train_runtime_s"])
    assert metrics["eval_perplexity"] == pytest.approx(torch.tensor(metrics["eval_loss"]).exp().item(), rel=1e-5)
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    params = metrics["parameters"]
    assert params["trainable_A"] == 0 and params["trainable_B"] == params["trainable"] > 0
    assert 0 < params["trainable_percent"] < 100
    log = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    [first_step] = [r for r in log if r.get("event") == "first_step"]
    assert first_step["time_to_first_step_s"] == metrics["time_to_first_step_s"] > 0

    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    for key, value in weights.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        if ".lora_A." in key:  # bit-identical to the init, regenerated from seed + module name
            init = make_factor("orthogonal", "A", tuple(value.shape), 4, 0, module, torch.zeros(1))
            assert torch.equal(value, init.to(value.dtype)), key
        else:
            assert value.abs().sum() > 0, f"{key} never moved from zero"
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_llama_dir), str(run.adapter_dir))
    assert model.peft_config["default"].r == 4


def test_train_lora_with_messages_data(tiny_llama_dir, write_recipe, tmp_path):
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"what is permit {i}"},
                {"role": "assistant", "content": f"a building permit for wall {i}"},
            ]
        }
        for i in range(20)
    ]
    recipe = sft_recipe(
        tiny_llama_dir,
        write_jsonl(tmp_path / "chat.jsonl", chats),
        A={"init": "kaiming_uniform", "trainable": True},
        B={"init": "zero", "trainable": True},
    )
    recipe["data"]["format"] = "messages"
    result = train(write_recipe(recipe), tmp_path / "runs", "--set", "train.max_steps=2")
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    params = run.read_json("metrics.json")["parameters"]
    assert params["trainable_A"] > 0 and params["trainable_B"] > 0


def test_bad_data_marks_run_failed_and_exits_2(tiny_llama_dir, write_recipe, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "x", "answer": "y"}] * 5)
    result = train(write_recipe(sft_recipe(tiny_llama_dir, data)), tmp_path / "runs")
    assert result.exit_code == 2
    assert "needs column(s) instruction, output" in result.output and "Traceback" not in result.output
    [run] = resolve([str(tmp_path / "runs")])
    assert run.status == "failed" and "instruction" in run.read_json("status.json")["error"]


def test_missing_model_fails_clearly(alpaca_file, write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = train(write_recipe(sft_recipe(tmp_path / "no-model", alpaca_file)), tmp_path / "runs")
    assert result.exit_code == 2 and "no-model does not exist" in result.output  # a local path: before any load
    assert not (tmp_path / "runs").exists()
    hub = sft_recipe(tmp_path, alpaca_file)
    hub["model"]["name"] = "no-such-org/no-such-model"
    result = train(write_recipe(hub), tmp_path / "runs")
    assert result.exit_code == 2
    assert "is not a local folder or a known asset" in result.output


def test_compare_lists_completed_and_failed_runs(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    assert train(write_recipe(sft_recipe(tiny_llama_dir, alpaca_file)), tmp_path / "runs").exit_code == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "x"}] * 5)
    assert train(write_recipe(sft_recipe(tiny_llama_dir, bad), "bad.yaml"), tmp_path / "runs").exit_code == 2
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "runs"), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["status"]: row for row in json.loads(result.output)}
    assert set(rows) == {"completed", "failed"}
    metrics = next(r for r in resolve([str(tmp_path / "runs")]) if r.status == "completed").read_json("metrics.json")
    completed = rows["completed"]
    assert completed["method"] == "B-only"
    assert completed["factors"].startswith("A orthogonal frozen, B zero trained; family ")
    assert completed["trainable"] == metrics["parameters"]["trainable"]
    assert completed["eval_loss"] == metrics["eval_loss"]


def test_eval_without_flags_reproduces_the_runs_eval_loss(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    assert train(write_recipe(sft_recipe(tiny_llama_dir, alpaca_file)), tmp_path / "runs").exit_code == 0
    [run] = resolve([str(tmp_path / "runs")])
    result = CliRunner().invoke(main, ["eval", str(run.path)])
    assert result.exit_code == 0, result.output
    again = run.read_json("eval/task.json")
    assert again["eval_loss"] == pytest.approx(run.read_json("metrics.json")["eval_loss"], rel=1e-5)


def test_diverging_loss_stops_the_run_with_a_hint(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    broken = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        broken.model.norm.weight[0] = float("nan")  # a model whose loss is NaN from the first step
    broken.save_pretrained(tmp_path / "broken")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "broken" / name).write_bytes((tiny_llama_dir / name).read_bytes())
    recipe = sft_recipe(tmp_path / "broken", alpaca_file)
    result = train(write_recipe(recipe), tmp_path / "runs")
    assert result.exit_code == 1
    assert "training loss became" in result.output and "lower train.learning_rate" in result.output
    [run] = resolve([str(tmp_path / "runs")])
    assert run.status == "failed" and "at step" in run.read_json("status.json")["error"]


def test_sizes_the_model_does_not_have_are_refused_before_any_weights_load(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    """The tiny Llama: hidden 32, 2 of 4 heads for keys and values, so v_proj is 32 → 16; 256 positions."""
    import time

    started = time.perf_counter()
    result = train(write_recipe(sft_recipe(tiny_llama_dir, alpaca_file, rank=1_000_000)), tmp_path / "runs")
    assert result.exit_code == 2 and "'adapter.rank' 1000000 exceeds" in result.output
    assert "min(d_in, d_out) = 16" in result.output and time.perf_counter() - started < 30
    assert train(write_recipe(sft_recipe(tiny_llama_dir, alpaca_file, rank=17)), tmp_path / "runs").exit_code == 2
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["data"]["max_length"] = 10**9
    result = train(write_recipe(recipe), tmp_path / "runs")
    assert result.exit_code == 2 and "'data.max_length' 1000000000 exceeds the 256 positions" in result.output
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
    del recipe["data"]["max_length"]  # the default (1024) is lowered to what the model has
    recipe["train"]["max_steps"] = 1
    assert train(write_recipe(recipe), tmp_path / "runs").exit_code == 0
    [run] = resolve([str(tmp_path / "runs")])
    assert yaml.safe_load((run.path / "recipe.yaml").read_text())["data"]["max_length"] == 256
