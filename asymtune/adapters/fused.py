"""A fused forward/backward for LoRA layers whose A is frozen (B-only training).

With A frozen, backward needs only h = x·(sA)ᵀ (r wide), never x itself:

    forward   y  = (h·Bᵀ + bias) + x·W0ᵀ,            h = drop(x)·(sA)ᵀ
    backward  dB = dyᵀ·h
              dx = ((dy·B)·(sA)) ⊙ mask/(1-p) + dy·W0

The scale s is folded into A, which is cast to the activation dtype once and cached (A never
changes). Each direction's large GEMM (x·W0ᵀ, dy·W0) accumulates onto the adapter's rank-r product
through cuBLAS's beta = 1 epilogue, so the only extra full-size memory traffic is that product's
write, the read of x for h and the two reads of dy. Saves only h (and, with dropout, the RNG state
that regenerates the mask in backward instead of storing it). B's parameter stays float32 (the
optimizer's master copy); the math runs in the activation dtype. Over a bitsandbytes (4/8-bit)
base layer, the base runs its own kernel and backward, and only the adapter branch is fused.

Where `DY_ONCE` is set (benchmarks do, until a GPU measurement says it pays), dB and dy·B come from one pass over
dy through the `dy_once` Triton kernel instead of two matmuls.

`enable(model)` swaps the forward of every PEFT `lora.Linear` layer (and of PEFT's bitsandbytes
ones); each call checks the conditions again and falls back to PEFT's forward (logging the reason
once per layer) when A is trainable, weights are merged, adapters are disabled or several are
active, the base layer is neither a plain `nn.Linear` nor a bitsandbytes layer, its weights train,
or a LoRA variant (DoRA, ...) is in use.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from asymtune.adapters import dy_once

logger = logging.getLogger(__name__)
DY_ONCE = False  # B's two products of dy through the dy_once kernel (set by benchmarks until measured faster)


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
    """y = h·Bᵀ + bias + x·W0ᵀ with h = drop(x)·(sA)ᵀ and only B trainable; saves h.

    `scaled_a` is s·A in x's dtype (see `scaled_a`); `lora_b` is B in any float dtype. With `weight`
    None, the adapter branch alone (h·Bᵀ + bias): the base layer then runs outside (quantized)."""

    @staticmethod
    def forward(ctx, x, weight, bias, scaled_a, lora_b, dropout: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        b = lora_b.to(x.dtype)
        state = None
        if dropout > 0:
            state = _rng_state(x.device)
            h = (x2 * _dropout_mask(x2, 1.0 - dropout, None)) @ scaled_a.T
        else:
            h = x2 @ scaled_a.T
        y = torch.addmm(bias.to(x.dtype), h, b.T) if bias is not None else h @ b.T
        if weight is not None:
            y.addmm_(x2, weight.to(x.dtype).T)  # the large GEMM adds the adapter's output in its epilogue
        ctx.save_for_backward(weight, scaled_a, b, h)
        ctx.dropout, ctx.state, ctx.x_shape, ctx.b_dtype = dropout, state, shape, lora_b.dtype
        return y.view(*shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx, dy):
        weight, scaled_a, b, h = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        grad_x = None
        through_b, grad_b = dy_products(dy2, b, h, ctx.needs_input_grad[0], ctx.needs_input_grad[4])
        if grad_b is not None:
            grad_b = grad_b.to(ctx.b_dtype)
        if ctx.needs_input_grad[0]:
            through_adapter = through_b @ scaled_a
            if ctx.dropout > 0:
                through_adapter.mul_(_dropout_mask(through_adapter, 1.0 - ctx.dropout, ctx.state))
            if weight is not None:
                through_adapter.addmm_(dy2, weight.to(dy.dtype))
            grad_x = through_adapter.view(ctx.x_shape)
        return grad_x, None, None, None, grad_b, None


def dy_products(
    dy: torch.Tensor, b: torch.Tensor, h: torch.Tensor, need_g: bool, need_db: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dy·B, dyᵀ·h), each only if needed; both from one pass over dy (`dy_once`) where `DY_ONCE` is set and the
    kernel can run, else by two matmuls."""
    if need_g and need_db and DY_ONCE and dy_once.available(dy):
        return dy_once.products(dy, b, h)
    return (dy @ b if need_g else None), (dy.T @ h if need_db else None)


def scaled_a(layer: LoraLinear, name: str, dtype: torch.dtype) -> torch.Tensor:
    """s·A of adapter `name` in `dtype`, made once and reused while A (frozen) stays the same tensor."""
    a = layer.lora_A[name].weight
    scale = layer.scaling[name]
    key = (dtype, scale, a.device, a.data_ptr(), a._version)
    cached = layer.__dict__.get("_asymtune_scaled_a")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, (a * scale).to(dtype))
        layer._asymtune_scaled_a = cached
    return cached[1]


def is_bitsandbytes(layer: nn.Module) -> bool:
    """Whether `layer` is a bitsandbytes quantized linear layer (Linear4bit, Linear8bitLt)."""
    return type(layer).__module__.split(".")[0] == "bitsandbytes"


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
    if type(base) is not nn.Linear and not is_bitsandbytes(base):
        return f"base layer is {type(base).__name__}, neither nn.Linear nor a bitsandbytes layer"
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return "base weights are trainable"
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, (nn.Dropout, nn.Identity)):
        return f"unsupported dropout module {type(dropout).__name__}"
    return None


def fused_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The forward `enable` gives a layer: the fused path, or PEFT's own with the reason logged once."""
    reason = "extra forward arguments (e.g. adapter_names)" if args or kwargs else fallback_reason(self)
    if reason is not None:
        if reason not in self._asymtune_fallbacks_logged:
            self._asymtune_fallbacks_logged.add(reason)
            logger.info("fused frozen-A path off for %s: %s; using PEFT's forward", self._asymtune_name, reason)
        return type(self).forward(self, x, *args, **kwargs)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # mixed precision: compute in autocast's dtype, as nn.Linear would
        x = x.to(torch.get_autocast_dtype(device_type))
        with torch.autocast(device_type, enabled=False):
            return _fused_call(self, x)
    return _fused_call(self, x)


def _fused_call(self: LoraLinear, x: torch.Tensor) -> torch.Tensor:
    """The fused layer in x's dtype (the caller has settled the dtype)."""
    name = self.active_adapters[0]
    base = self.get_base_layer()
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and self.training else 0.0
    adapter = (scaled_a(self, name, x.dtype), self.lora_B[name].weight, p)
    if is_bitsandbytes(base):  # the quantized base runs (and differentiates) its own kernel
        return base(x) + FrozenALoRA.apply(x, None, None, *adapter)
    return FrozenALoRA.apply(x, base.weight, base.bias, *adapter)


def is_peft_linear(module: nn.Module) -> bool:
    """PEFT's LoRA layer over a linear base: `lora.Linear`, or its bitsandbytes 4/8-bit classes."""
    return isinstance(module, LoraLinear) or type(module).__module__ == "peft.tuners.lora.bnb"


def enable(model: nn.Module) -> int:
    """Route every PEFT LoRA linear layer of `model` through the fused path; return how many layers."""
    count = 0
    for name, module in model.named_modules():
        if is_peft_linear(module):
            module._asymtune_name = name
            module._asymtune_fallbacks_logged = set()
            module.forward = types.MethodType(fused_forward, module)
            count += 1
    return count


def enabled_count(model: nn.Module) -> int:
    """How many layers `enable` routed through the fused path."""
    return sum(1 for m in model.modules() if is_peft_linear(m) and "forward" in m.__dict__)


def disable(model: nn.Module) -> None:
    """Restore PEFT's forward on every layer `enable` touched."""
    for module in model.modules():
        if is_peft_linear(module) and "forward" in module.__dict__:
            del module.forward
