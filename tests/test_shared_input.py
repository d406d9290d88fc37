"""Sibling frozen-A layers on one input (q/k/v, gate/up) as one autograd node, against PEFT's own LoRA."""

import copy
import logging
from unittest import mock

import pytest
import torch
from conftest import DEVICES
from test_fused import B_ONLY, assert_as_accurate_as_peft, b_only_model, batch, forward_backward, relative_error
from transformers import BartForConditionalGeneration

from asymtune.adapters import fused, shared_input
from asymtune.adapters.lora import apply, lora_layers
from asymtune.recipe import AdapterSpec


def grouped(model):
    """A copy of `model` on the fused path with its siblings grouped."""
    candidate = copy.deepcopy(model)
    fused.enable(candidate)
    shared_input.enable(candidate)
    return candidate


def count_calls(function):
    """Patch `function.apply` to count its calls while still running it."""
    original = function.apply
    calls = []

    def counted(*args):
        calls.append(len(args))
        return original(*args)

    return mock.patch.object(function, "apply", side_effect=counted), calls


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_siblings_match_peft_outputs_db_and_dx(tiny_llama, device):
    reference = b_only_model(tiny_llama).to(device)
    candidate = grouped(reference)
    assert shared_input.group_count(candidate) == 4  # q/k/v and gate/up in each of 2 blocks
    embeds, labels = batch(device)
    logits, dx, grads = forward_backward(reference, embeds, labels)
    patch_group, group_calls = count_calls(shared_input.SharedInputFrozenA)
    patch_single, single_calls = count_calls(fused.FrozenALoRA)
    with patch_group, patch_single:
        fused_logits, fused_dx, fused_grads = forward_backward(candidate, embeds, labels)
    assert len(group_calls) == 4 and len(single_calls) == 4  # o_proj and down_proj run alone
    assert relative_error(fused_logits, logits) < 1e-5 and relative_error(fused_dx, dx) < 1e-5
    assert grads.keys() == fused_grads.keys()
    for name, grad in grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-5, name


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_bfloat16_and_autocast_are_as_accurate_as_peft(tiny_llama, device):
    reference = b_only_model(tiny_llama).to(device)
    candidate = grouped(reference)
    truth = forward_backward(reference, *batch(device))
    with torch.autocast(device, dtype=torch.bfloat16):
        peft_result = forward_backward(reference, *batch(device))
        patch_group, group_calls = count_calls(shared_input.SharedInputFrozenA)
        with patch_group:
            grouped_result = forward_backward(candidate, *batch(device))
    assert len(group_calls) == 4
    assert_as_accurate_as_peft(grouped_result, peft_result, truth)
    float32_again = forward_backward(candidate, *batch(device))  # Â is made again in float32, not reused from bf16
    assert relative_error(float32_again[0], truth[0]) < 1e-5 and relative_error(float32_again[1], truth[1]) < 1e-5


@pytest.mark.parametrize("reentrant", [False, True])
def test_grouped_gradient_checkpointing_gives_the_same_gradients(tiny_llama, reentrant):
    reference = b_only_model(tiny_llama)
    candidate = grouped(reference)
    candidate.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    candidate.train()
    reference.train()
    embeds, labels = batch()
    _, _, grads = forward_backward(reference, embeds, labels)
    for _ in range(2):  # the second step finds no sibling left behind by the first's recomputation
        patch_group, group_calls = count_calls(shared_input.SharedInputFrozenA)
        with patch_group:
            _, _, fused_grads = forward_backward(candidate, embeds, labels)
        assert len(group_calls) == 8  # each group in the forward and again in its recomputation
        for name, grad in grads.items():
            torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-5)


def test_a_stray_call_and_an_unused_sibling_output_stay_exact(tiny_llama):
    reference = b_only_model(tiny_llama)
    candidate = grouped(reference)
    for model in (reference, candidate):
        layer = model.base_model.model.model.layers[0].self_attn
        layer.k_proj(torch.ones(1, 32))  # a stray call: its result is never used
    embeds, labels = batch()
    logits, dx, grads = forward_backward(reference, embeds, labels)
    fused_logits, fused_dx, fused_grads = forward_backward(candidate, embeds, labels)
    assert relative_error(fused_logits, logits) < 1e-5 and relative_error(fused_dx, dx) < 1e-5
    for name, grad in grads.items():
        assert relative_error(fused_grads[name], grad) < 1e-5, name
    x = torch.randn(3, 32, requires_grad=True)
    attention = candidate.base_model.model.model.layers[1].self_attn
    candidate.zero_grad()
    attention.q_proj(x).sum().backward()  # k and v computed beside q, never used: no gradient reaches their B
    assert attention.q_proj.lora_B["default"].weight.grad.abs().sum() > 0
    assert attention.k_proj.lora_B["default"].weight.grad is None
    expected = torch.autograd.grad(reference.base_model.model.model.layers[1].self_attn.q_proj(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, atol=1e-6, rtol=1e-5)


def test_cross_attention_siblings_leave_their_group_and_stay_exact(tiny_bart_dir, caplog):
    """BART's cross-attention feeds q the decoder's states and k, v the encoder's: the first forward finds
    out, those members run alone from then on, and the self-attention groups stay."""
    torch.manual_seed(0)
    base = BartForConditionalGeneration.from_pretrained(tiny_bart_dir)
    reference = b_only_model(base)
    candidate = grouped(reference)
    input_ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(2))
    labels = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(3))

    def step(model):
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    logits, grads = step(reference)
    with caplog.at_level(logging.INFO, logger="asymtune.adapters.shared_input"):
        for _ in range(2):
            fused_logits, fused_grads = step(candidate)
            assert relative_error(fused_logits, logits) < 1e-5
            for name, grad in grads.items():
                assert relative_error(fused_grads[name], grad) < 1e-5, name
    cross = candidate.base_model.model.model.decoder.layers[0].encoder_attn
    assert not hasattr(cross.k_proj, "_asymtune_group") and not hasattr(cross.v_proj, "_asymtune_group")
    assert cross.q_proj._asymtune_group.reason() == "fewer than two siblings share the input"
    own = candidate.base_model.model.model.decoder.layers[0].self_attn
    assert own.q_proj._asymtune_group.reason() is None and len(own.q_proj._asymtune_group.members) == 3
    left = sorted(r.getMessage().split(" runs alone")[0] for r in caplog.records)
    assert left == [f"base_model.model.model.decoder.layers.0.encoder_attn.{n}_proj" for n in ("k", "v")]


def test_dropout_in_training_runs_each_layer_alone(tiny_llama, caplog):
    model = apply(
        tiny_llama, AdapterSpec(rank=4, targets=["q_proj", "k_proj"], dropout=0.1, **B_ONLY), task_type="CAUSAL_LM"
    )
    fused.enable(model)
    assert shared_input.enable(model) == 2
    group = lora_layers(model)[0][1]._asymtune_group
    model.train()
    assert "LoRA dropout 0.1 draws a mask per layer" in group.reason()
    patch_group, group_calls = count_calls(shared_input.SharedInputFrozenA)
    with patch_group:
        model(input_ids=torch.randint(0, 100, (1, 5)))
        assert group_calls == []
        model.eval()
        model(input_ids=torch.randint(0, 100, (1, 5)))
    assert len(group_calls) == 2  # without dropout (evaluation) the siblings run as one


def test_grouping_composes_with_liger_swiglu_mlp(tiny_llama):
    """Liger's SwiGLU MLP (what `train.liger_kernel` and axolotl turn on) calls gate_proj and up_proj on one tensor,
    so they still run as one node under it. Liger's Triton SiLU·mul needs CUDA: a torch stand-in computes it here,
    the module structure around it is Liger's own."""
    liger = pytest.importorskip("liger_kernel.transformers")
    from liger_kernel.transformers import swiglu
    from transformers.models.llama import modeling_llama

    patched = copy.deepcopy(tiny_llama)  # before PEFT injects its layers into tiny_llama for the reference
    reference = b_only_model(tiny_llama)
    with mock.patch.object(modeling_llama, "LlamaMLP", modeling_llama.LlamaMLP):  # undo its class-wide patch
        liger.apply_liger_kernel_to_llama(model=patched, rope=False, rms_norm=False, swiglu=True,
                                          cross_entropy=False, fused_linear_cross_entropy=False)
    assert patched.model.layers[0].mlp.forward.__func__ is swiglu.LigerSwiGLUMLP.forward
    candidate = grouped(b_only_model(patched))

    class TorchSiLUMul:
        calls = 0

        @classmethod
        def apply(cls, a, b, *multipliers):
            cls.calls += 1
            return torch.nn.functional.silu(a) * b

    embeds, labels = batch()
    logits, dx, grads = forward_backward(reference, embeds, labels)
    patch_group, group_calls = count_calls(shared_input.SharedInputFrozenA)
    with patch_group, mock.patch.object(swiglu, "LigerSiLUMulFunction", TorchSiLUMul):
        liger_logits, liger_dx, liger_grads = forward_backward(candidate, embeds, labels)
    assert TorchSiLUMul.calls == 2 and len(group_calls) == 4  # Liger's MLP ran, and gate/up ran as one under it
    assert relative_error(liger_logits, logits) < 1e-5 and relative_error(liger_dx, dx) < 1e-5
    for name, grad in grads.items():
        assert relative_error(liger_grads[name], grad) < 1e-5, name
