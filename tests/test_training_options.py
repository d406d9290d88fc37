"""Training options: early stopping and keep_best on a run whose eval loss rises; Liger refused where it cannot run."""

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import sft_recipe
from safetensors.torch import load_file

from asymtune.cli import main
from asymtune.runs import resolve


@pytest.mark.slow
def test_a_rising_eval_loss_stops_the_run_and_the_best_checkpoint_is_kept(
    tiny_llama_dir, alpaca_file, write_recipe, tmp_path
):
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    # a rate far too high: eval loss falls at first, then climbs
    recipe["train"].update(max_steps=40, learning_rate=0.3, eval_steps=2, save_steps=2, batch_size=2,
                           early_stopping_patience=2, keep_best=True, save_total_limit=2)
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    metrics = run.read_json("metrics.json")
    logged = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    evals = {line["step"]: line["eval_loss"] for line in logged if "eval_loss" in line and line["step"] > 0}
    during = {step: loss for step, loss in evals.items() if step <= metrics["train_steps"]}
    best_step = min(during, key=during.get)
    assert metrics["train_steps"] < 40  # stopped early
    later = sorted(step for step in during if step > best_step)
    assert len(later) == 2 and all(during[step] >= during[best_step] for step in later)  # patience 2
    assert metrics["best_step"] == best_step and metrics["best_eval_loss"] == pytest.approx(during[best_step])
    assert metrics["eval_loss"] == pytest.approx(during[best_step], rel=1e-5)  # the saved adapter is the best one
    kept = load_file(run.path / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    saved = load_file(run.adapter_dir / "adapter_model.safetensors")
    for name, tensor in kept.items():
        if "lora_B" in name:
            assert torch.equal(tensor, saved[name]), name
    assert f"keeps checkpoint-{best_step}" in result.output


def test_early_stopping_settings_are_checked(write_recipe, tmp_path):
    base = sft_recipe(tmp_path, tmp_path / "d.jsonl")
    cases = [
        ({"early_stopping_patience": 2}, "need(s) train.eval_steps"),
        ({"keep_best": True, "eval_steps": 3, "save_steps": 4}, "must be a multiple of train.eval_steps 3"),
        ({"early_stopping_patience": 0, "eval_steps": 2}, "greater than or equal to 1"),
    ]
    for train, message in cases:
        document = {**base, "train": {**base["train"], **train}}
        result = CliRunner().invoke(main, ["validate", str(write_recipe(document))])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    document = {**base, "train": {**base["train"], "keep_best": True, "eval_steps": 2, "save_steps": 2},
                "data": {**base["data"], "eval_fraction": 0.0}}
    result = CliRunner().invoke(main, ["validate", str(write_recipe(document))])
    assert result.exit_code == 2 and "need an eval set" in result.output


def test_liger_kernel_is_refused_where_it_cannot_run(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available():
        pytest.skip("Liger can run here")
    recipe = sft_recipe(tiny_llama_dir, alpaca_file)
    recipe["train"]["liger_kernel"] = True
    path = write_recipe(recipe)
    result = CliRunner().invoke(main, ["train", str(path), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and not (tmp_path / "runs").exists()
    text = " ".join(result.output.split())
    if importlib.util.find_spec("liger_kernel") is None:
        assert f"{path}: train.liger_kernel needs the liger-kernel package (pip install 'asymtune[liger]')" in text
    elif not torch.cuda.is_available():
        assert "runs Triton kernels on a CUDA GPU, and none is visible here" in text
    recipe["task"], recipe["data"]["text_fields"] = "classification", ["text"]
    del recipe["data"]["format"]
    result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
    assert result.exit_code == 2 and "it is built for task sft, not classification" in " ".join(result.output.split())
