"""The fused frozen-A path against PEFT's own LoRA forward/backward."""

import copy
import logging
from unittest import mock

import pytest
import torch
from click.testing import CliRunner
from conftest import DEVICES, sft_recipe
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from asymtune.adapters import fused
from asymtune.adapters.lora import apply, lora_layers
from asymtune.cli import main
from asymtune.recipe import AdapterSpec

BF16_TOLERANCE = 2 * 2**-7  # two bfloat16 epsilons, relative
B_ONLY = {"A": {"init": "orthogonal", "trainable": False}, "B": {"init": "zero", "trainable": True}}


def b_only_model(base, **spec):
    """`base` with a rank-4 B-only adapter on every linear layer and a trained-looking, non-zero B
    (drawn on the CPU, so `base` may sit on any device)."""
    model = apply(base, AdapterSpec(rank=4, targets="all-linear", **{**B_ONLY, **spec}), task_type="CAUSAL_LM")
    with torch.no_grad():
        for _, layer in lora_layers(model):
            weight = layer.lora_B["default"].weight
            weight.copy_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    return model


def forward_backward(model, embeds, labels):
    embeds = embeds.clone().requires_grad_(True)
    model.zero_grad()
    out = model(inputs_embeds=embeds, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), embeds.grad, grads


def relative_error(actual, expected) -> float:
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm())


def assert_as_accurate_as_peft(result, peft_result, truth):
    """(logits, dx, grads) of a low-precision fused run are within two bf16 epsilons of float32 `truth`, or as close
    as PEFT's own run (1.5x its error); B's gradients stay float32 (the master copy)."""
    for index in (0, 1):  # logits, dx
        peft_error = relative_error(peft_result[index], truth[index])
        assert relative_error(result[index], truth[index]) <= max(1.5 * peft_error, BF16_TOLERANCE)
    for name, grad in truth[2].items():
        assert result[2][name].dtype == torch.float32
        peft_error = relative_error(peft_result[2][name], grad)
        assert relative_error(result[2][name], grad) <= max(1.5 * peft_error, BF16_TOLERANCE)


def batch(device: str | torch.device = "cpu", hidden: int = 32):
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, 9, hidden, generator=generator)
    labels = torch.randint(0, 100, (2, 9), generator=generator)
    return embeds.to(device), labels.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_matches_peft_outputs_db_and_dx_in_float32(tiny_llama, device):
    reference = b_only_model(tiny_llama).to(device)
    candidate = copy.deepcopy(reference)
    assert fused.enable(candidate) == 14  # 7 linear layers x 2 blocks
    embeds, labels = batch(device)
    logits, dx, grads = forward_backward(reference, embeds, labels)
    fused_logits, fused_dx, fused_grads = forward_backward(candidate, embeds, labels)
    assert grads.keys() == fused_grads.keys() and all("lora_B" in name for name in grads)
    assert relative_error(fused_logits, logits) < 1e-5 and relative_error(fused_dx, dx) < 1e-5
    for name, grad in grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_fused_bfloat16_is_as_accurate_as_peft_bfloat16(tiny_llama, device):
    """PEFT runs the adapter in float32 inside a bf16 model, the fused path in bf16 (the activation dtype):
    both are compared with a float32 computation on the same (bf16-valued) weights. The fused path is
    within two bf16 epsilons (2 x 2^-7, relative) of it, or as close as PEFT."""
    peft_bf16 = b_only_model(tiny_llama).to(device)
    peft_bf16.base_model.model.to(torch.bfloat16)
    for module in peft_bf16.modules():  # keep the adapter factors in float32, as PEFT's autocast does
        if hasattr(module, "lora_A"):
            module.lora_A["default"].weight = module.lora_A["default"].weight.float()
            module.lora_B["default"].weight.data = module.lora_B["default"].weight.data.float()
    truth = copy.deepcopy(peft_bf16).float()
    fused_bf16 = copy.deepcopy(peft_bf16)
    fused.enable(fused_bf16)
    embeds, labels = batch(device)
    expected = forward_backward(truth, embeds, labels)
    peft_result = forward_backward(peft_bf16, embeds.bfloat16(), labels)
    fused_result = forward_backward(fused_bf16, embeds.bfloat16(), labels)
    assert_as_accurate_as_peft(fused_result, peft_result, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_runs_under_autocast_like_peft(tiny_llama, device):
    """The Trainer's bf16 mixed precision: float32 weights, matmuls autocast to bf16 (GPU training's default)."""
    reference = b_only_model(tiny_llama).to(device)
    candidate = copy.deepcopy(reference)
    fused.enable(candidate)
    truth = forward_backward(reference, *batch(device))
    with torch.autocast(device, dtype=torch.bfloat16):
        peft_result = forward_backward(reference, *batch(device))
        fused_result = forward_backward(candidate, *batch(device))
    assert_as_accurate_as_peft(fused_result, peft_result, truth)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_mask_is_regenerated_exactly_in_backward(device):
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    layer = get_peft_model(
        nn.Sequential(base), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["0"])
    ).base_model.model[0].to(device)
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    a.weight.requires_grad_(False)
    nn.init.normal_(b.weight)
    x = torch.randn(5, 24, device=device, requires_grad=True)

    torch.manual_seed(123)  # seeds the CUDA generators too
    y = fused.FrozenALoRA.apply(x, base.weight, base.bias, 2.0 * a.weight, b.weight, 0.3)
    torch.randn(100, device=device)  # other draws between forward and backward must not change the mask
    y.sum().backward()
    fused_dx, fused_db = x.grad.clone(), b.weight.grad.clone()

    x.grad, b.weight.grad = None, None
    torch.manual_seed(123)
    mask = torch.empty_like(x).bernoulli_(0.7).div_(0.7)  # the same draw the fused forward makes
    reference = base(x) + 2.0 * (x * mask) @ a.weight.T @ b.weight.T
    reference.sum().backward()
    torch.testing.assert_close(y, reference)
    torch.testing.assert_close(fused_dx, x.grad)
    torch.testing.assert_close(fused_db, b.weight.grad)
    assert 0 < (mask == 0).float().mean() < 0.6  # dropout really dropped something


def test_falls_back_to_peft_with_a_logged_reason(tiny_llama, caplog):
    model = apply(
        tiny_llama,
        AdapterSpec(
            rank=4,
            targets=["q_proj"],
            A={"init": "orthogonal", "trainable": True},
            B={"init": "zero", "trainable": True},
        ),
        task_type="CAUSAL_LM",
    )
    fused.enable(model)
    tokens = torch.randint(0, 100, (1, 5))
    with (
        caplog.at_level(logging.INFO, logger="asymtune.adapters.fused"),
        mock.patch.object(fused.FrozenALoRA, "apply", side_effect=AssertionError("fused path ran")),
    ):
        model(input_ids=tokens)
        model(input_ids=tokens)
    reasons = [r.getMessage() for r in caplog.records]
    assert len(reasons) == 2 and all("A is trainable" in m for m in reasons)  # once per layer, not per call


def test_merged_and_disabled_adapters_fall_back_and_agree(tiny_llama):
    model = b_only_model(tiny_llama)
    tokens = torch.randint(0, 100, (1, 6))
    with torch.no_grad():
        plain = model(input_ids=tokens).logits
        fused.enable(model)
        assert torch.equal(model(input_ids=tokens).logits, plain)
        layer = lora_layers(model)[0][1]
        assert fused.fallback_reason(layer) is None
        with model.disable_adapter():
            assert fused.fallback_reason(layer) == "adapters disabled"
            base = model(input_ids=tokens).logits
        model.merge_adapter()
        assert fused.fallback_reason(layer) == "adapter weights merged into the base layer"
        torch.testing.assert_close(model(input_ids=tokens).logits, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base, plain)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama, device):
    reference = b_only_model(tiny_llama).to(device)
    candidate = copy.deepcopy(reference)
    fused.enable(candidate)
    candidate.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    candidate.train()
    reference.train()
    embeds, labels = batch(device)
    _, _, grads = forward_backward(reference, embeds, labels)
    _, _, fused_grads = forward_backward(candidate, embeds, labels)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_no_peft_lora_forward_runs_in_a_b_only_training_step(tiny_llama_dir, alpaca_file, write_recipe, tmp_path):
    recipe = write_recipe(sft_recipe(tiny_llama_dir, alpaca_file))
    with mock.patch.object(LoraLinear, "forward", side_effect=AssertionError("PEFT's LoRA forward ran")):
        result = CliRunner().invoke(main, ["train", str(recipe), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "fused frozen-A path on 4 LoRA layers" in result.output

    with mock.patch.object(LoraLinear, "forward", side_effect=AssertionError("PEFT's LoRA forward ran")):
        off = CliRunner().invoke(
            main, ["train", str(recipe), "--output-dir", str(tmp_path / "off"), "--set", "adapter.fused=false"]
        )
    assert off.exit_code == 1 and "PEFT's LoRA forward ran" in off.output  # switched off: PEFT's path is used
