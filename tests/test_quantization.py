"""QLoRA: the tiny Llama loaded in 4 bits by bitsandbytes (its kernels run on the CPU), B-only trained on top."""

import json
from unittest import mock

import pytest
from click.testing import CliRunner
from conftest import save_tiny_model, sft_recipe
from peft.tuners.lora import bnb as peft_bnb
from safetensors.torch import load_file
from test_fused import b_only_model, batch, forward_backward, relative_error
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from asymtune import recipe as recipes
from asymtune.adapters import fused
from asymtune.cli import main
from asymtune.models import load_causal_lm, parameter_count
from asymtune.runs import resolve


@pytest.fixture(scope="module")
def llama_64_dir(tmp_path_factory):
    """Hidden size 64: bitsandbytes' CPU kernels quantize in blocks of 64 along the input dimension."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-64"), LlamaConfig, LlamaForCausalLM, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256,
    )


@pytest.mark.slow
def test_qlora_b_only_trains_on_a_4_bit_base(llama_64_dir, alpaca_file, write_recipe, tmp_path):
    recipe = sft_recipe(llama_64_dir, alpaca_file)
    recipe["model"].update(dtype="float32", quantization={"bits": 4})
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "fused frozen-A path on 4 LoRA layers (adapter branch; the quantized base" in result.output
    [run] = resolve([str(tmp_path / "runs")])
    steps = [json.loads(line) for line in run.log_file.read_text().splitlines() if '"grad_norm"' in line]
    assert steps and all(step["grad_norm"] > 0 for step in steps)
    metrics = run.read_json("metrics.json")
    unquantized = AutoModelForCausalLM.from_pretrained(llama_64_dir)
    assert metrics["parameters"]["base"] == parameter_count(unquantized)  # 4-bit weights counted unpacked
    assert metrics["parameters"]["trainable_A"] == 0 and metrics["parameters"]["trainable_B"] > 0
    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)


def test_fused_adapter_branch_over_a_4_bit_base_matches_peft(llama_64_dir, alpaca_file):
    """Over bitsandbytes' Linear4bit only the adapter branch is fused: outputs, dx and dB equal PEFT's."""
    spec = recipes.Recipe.model_validate(
        {**sft_recipe(llama_64_dir, alpaca_file), "model": {"name": str(llama_64_dir), "dtype": "float32",
                                                            "quantization": {}}}
    ).model
    model, _ = load_causal_lm(spec, log=lambda _: None)
    peft_model = b_only_model(model)
    embeds, labels = batch(peft_model.get_input_embeddings().weight.device, hidden=64)
    logits, dx, grads = forward_backward(peft_model, embeds, labels)

    assert fused.enable(peft_model) == 14  # 7 quantized linear layers x 2 blocks
    with mock.patch.object(peft_bnb.Linear4bit, "forward", side_effect=AssertionError("PEFT's forward ran")):
        fused_logits, fused_dx, fused_grads = forward_backward(peft_model, embeds, labels)
    assert grads.keys() == fused_grads.keys() and all("lora_B" in name for name in grads)
    assert relative_error(fused_logits, logits) < 1e-5 and relative_error(fused_dx, dx) < 1e-5
    for name, grad in grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-5


def test_quantized_load_is_4_bit_nf4_with_double_quantization(llama_64_dir, alpaca_file):
    spec = recipes.Recipe.model_validate(
        {**sft_recipe(llama_64_dir, alpaca_file), "model": {"name": str(llama_64_dir), "quantization": {}}}
    ).model
    model, _ = load_causal_lm(spec, log=lambda _: None)
    config = model.config.quantization_config
    assert model.is_loaded_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"gguf_file": "m.gguf", "quantization": {"bits": 4}}}, "GGUF files are dequantized"),
        ({"adapter": {"method": "full"}}, "adapter.method full cannot train it"),
        ({"model": {"name": "m", "quantization": {"bits": 3}}}, "bits"),
    ],
)
def test_quantization_settings_that_cannot_work_are_refused(change, message, write_recipe, tmp_path):
    recipe = sft_recipe(tmp_path, tmp_path / "d.jsonl")
    recipe["model"]["quantization"] = {"bits": 4}
    for section, values in change.items():
        recipe[section] = values
    result = CliRunner().invoke(main, ["validate", str(write_recipe(recipe))])
    assert result.exit_code == 2 and message in result.output
