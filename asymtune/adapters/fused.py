"""A fused forward/backward for LoRA layers whose A is frozen (B-only training).

With A frozen, backward needs only h = x·Aᵀ (r wide), never x itself:

    forward   y  = x·W0ᵀ (+ bias) + s·h·Bᵀ,          h = drop(x)·Aᵀ
    backward  dB = s·dyᵀ·h
              dx = dy·W0 + s·((dy·B)·A) ⊙ mask/(1-p)

Two GEMMs and an in-place addmm each way, saving only h (and, with dropout, the RNG state that
regenerates the mask in backward instead of storing it). B's parameter stays float32 (the
optimizer's master copy); the math runs in the activation dtype.

`enable(model)` swaps the forward of every PEFT `lora.Linear` layer; each call checks the
conditions again and falls back to PEFT's forward (logging the reason once per layer) when A is
trainable, weights are merged, adapters are disabled or several are active, the base layer is
not a plain trainable-free `nn.Linear`, or a LoRA variant (DoRA, ...) is in use.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

logger = logging.getLogger(__name__)


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _dropout_mask(like: torch.Tensor, keep: float, state: torch.Tensor | None) -> torch.Tensor:
    """Bernoulli(keep)/keep mask; with `state`, regenerated exactly from that RNG state."""
    if state is None:
        return torch.empty_like(like).bernoulli_(keep).div_(keep)
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if like.device.type == "cuda":
            torch.cuda.set_rng_state(state, like.device)
        else:
            torch.set_rng_state(state)
        return torch.empty_like(like).bernoulli_(keep).div_(keep)


class FrozenALoRA(torch.autograd.Function):
    """y = x·W0ᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ with only B trainable; saves h = drop(x)·Aᵀ."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, dropout: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype)
        state = None
        if dropout > 0:
            state = _rng_state(x.device)
            h = (x2 * _dropout_mask(x2, 1.0 - dropout, None)) @ a.T
        else:
            h = x2 @ a.T
        w = weight.to(x.dtype)
        y = torch.addmm(bias.to(x.dtype), x2, w.T) if bias is not None else x2 @ w.T
        y.addmm_(h, b.T, alpha=scale)
        ctx.save_for_backward(weight, lora_a, lora_b, h)
        ctx.scale, ctx.dropout, ctx.state, ctx.x_shape, ctx.x_dtype = scale, dropout, state, shape, x.dtype
        return y.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        weight, lora_a, lora_b, h = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        grad_x = grad_b = None
        if ctx.needs_input_grad[4]:
            grad_b = (dy2.T @ h.to(dy.dtype)).mul_(ctx.scale).to(lora_b.dtype)
        if ctx.needs_input_grad[0]:
            through_adapter = (dy2 @ lora_b.to(dy.dtype)) @ lora_a.to(dy.dtype)
            if ctx.dropout > 0:
                through_adapter.mul_(_dropout_mask(through_adapter, 1.0 - ctx.dropout, ctx.state))
            grad_x = torch.addmm(through_adapter, dy2, weight.to(dy.dtype), alpha=1.0, beta=ctx.scale)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, None, grad_b, None, None


def fallback_reason(layer: LoraLinear) -> str | None:
    """Why the fused path cannot run for `layer` right now (None when it can)."""
    base = layer.get_base_layer()
    if layer.disable_adapters:
        return "adapters disabled"
    if layer.merged:
        return "adapter weights merged into the base layer"
    if len(layer.active_adapters) != 1:
        return f"{len(layer.active_adapters)} active adapters"
    name = layer.active_adapters[0]
    if name not in layer.lora_A:
        return f"adapter {name!r} not in this layer"
    if name in getattr(layer, "lora_variant", {}):
        return f"LoRA variant {type(layer.lora_variant[name]).__name__}"
    if layer.lora_A[name].weight.requires_grad:
        return "A is trainable"
    if type(base) is not nn.Linear:
        return f"base layer is {type(base).__name__}, not nn.Linear (quantized or custom)"
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return "base weights are trainable"
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, (nn.Dropout, nn.Identity)):
        return f"unsupported dropout module {type(dropout).__name__}"
    return None


def _fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    reason = "extra forward arguments (e.g. adapter_names)" if args or kwargs else fallback_reason(self)
    if reason is not None:
        if reason not in self._asymtune_fallbacks_logged:
            self._asymtune_fallbacks_logged.add(reason)
            logger.info("fused frozen-A path off for %s: %s; using PEFT's forward", self._asymtune_name, reason)
        return LoraLinear.forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    base = self.get_base_layer()
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and self.training else 0.0
    return FrozenALoRA.apply(
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p
    )


def enable(model: nn.Module) -> int:
    """Route every PEFT lora.Linear of `model` through the fused path; return how many layers."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            module._asymtune_name = name
            module._asymtune_fallbacks_logged = set()
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count


def enabled_count(model: nn.Module) -> int:
    """How many layers `enable` routed through the fused path."""
    return sum(1 for m in model.modules() if isinstance(m, LoraLinear) and "forward" in m.__dict__)


def disable(model: nn.Module) -> None:
    """Restore PEFT's forward on every layer `enable` touched."""
    for module in model.modules():
        if isinstance(module, LoraLinear) and "forward" in module.__dict__:
            del module.forward
