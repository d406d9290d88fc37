"""Per-factor learning rates: LoRA+ (adapter.lr_ratio) equals PEFT's own LoRA+ optimizer; each factor's rate
and decay reach the Trainer's optimizer; settings that cannot apply are refused."""

import copy

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe
from transformers import LlamaForCausalLM

from asymtune.adapters import factor_rates, lora
from asymtune.cli import main
from asymtune.recipe import Recipe
from asymtune.runs import resolve


def both_trained(tiny_llama_dir, **adapter) -> Recipe:
    """Both factors trained from non-zero starts, so the first step moves A and B."""
    document = sft_recipe(tiny_llama_dir, tiny_llama_dir / "d.jsonl", A={"init": "kaiming_uniform", "trainable": True},
                          B={"init": "gaussian", "trainable": True}, **adapter)
    return Recipe.model_validate(document)


def first_step(model, optimizer, batch) -> dict[str, torch.Tensor]:
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_lr_ratio_takes_the_step_peft_loraplus_takes(tiny_llama_dir, decay):
    from peft.optimizers import create_loraplus_optimizer

    recipe = both_trained(tiny_llama_dir, lr_ratio=16.0)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"learning_rate": 1e-3,
                                                                               "weight_decay": decay})})
    ours = lora.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), recipe.adapter)
    theirs = copy.deepcopy(ours)
    batch = {"input_ids": torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))}
    stepped = first_step(ours, factor_rates.optimizer(ours, recipe), batch)
    reference = first_step(theirs, create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0,
                                                             loraplus_weight_decay=decay, eps=1e-8), batch)
    assert stepped.keys() == reference.keys() and any(".lora_A." in n for n in stepped)
    for name in stepped:
        torch.testing.assert_close(stepped[name], reference[name], rtol=0, atol=1e-7, msg=name)
    groups = {group["name"]: group["lr"] for group in factor_rates.param_groups(ours, recipe)}
    assert groups == {"A": 1e-3, "B": pytest.approx(1.6e-2)}


def test_each_factor_reaches_the_trainers_optimizer_and_compare_shows_it(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    recipe = sft_recipe(tiny_llama_dir, alpaca_file, A={"init": "kaiming_uniform", "trainable": True,
                                                        "learning_rate": 2e-3, "weight_decay": 0.05},
                        B={"init": "zero", "trainable": True}, lr_ratio=8)
    recipe["train"].update(max_steps=2, save_steps=2, learning_rate=1e-4)
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    saved = torch.load(run.path / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=False)
    groups = {group["name"]: group for group in saved["param_groups"]}
    assert groups["A"]["initial_lr"] == 2e-3 and groups["A"]["weight_decay"] == 0.05
    assert groups["B"]["initial_lr"] == pytest.approx(1.6e-2) and groups["B"]["weight_decay"] == 0.0
    table = CliRunner().invoke(main, ["compare", str(tmp_path / "runs"), "--format", "csv"])
    assert "lr A 0.002, B 0.016" in table.output
    listed = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "250"})
    assert "lr A 0.002, B 0.016" in listed.output


def test_settings_that_cannot_apply_are_refused(write_recipe, tmp_path):
    base = sft_recipe(tmp_path, tmp_path / "d.jsonl")
    frozen_a = {"init": "orthogonal", "trainable": False}
    cases = [
        ({"A": {**frozen_a, "learning_rate": 1e-3}}, "'adapter.A'", "a frozen factor is not optimised"),
        ({"lr_ratio": 16}, "'adapter'", "it needs both factors trained"),
        ({"A": {"init": "kaiming_uniform", "trainable": True}, "lr_ratio": 4,
          "B": {"init": "zero", "trainable": True, "learning_rate": 1e-3}}, "'adapter'", "keep one"),
        ({"method": "vera", "lr_ratio": 4}, "'adapter'", "adapter.lr_ratio apply to method lora, not vera"),
        ({"lr_ratio": -1}, "'adapter.lr_ratio'", "greater than 0"),
        ({"B": {"init": "zero", "trainable": True, "learning_rat": 1e-3}}, "'adapter.B.learning_rat'",
         "did you mean 'learning_rate'"),
    ]
    for adapter, key, message in cases:
        document = copy.deepcopy(base)
        document["adapter"].update(adapter)
        path = write_recipe(document)
        result = CliRunner().invoke(main, ["validate", str(path)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and key in text and message in text, (adapter, text)
