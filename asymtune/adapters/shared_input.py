"""Frozen-A layers that read the same input (q/k/v, gate/up) as one autograd node: x read once.

For sibling layers i = 1..m on one input x, with sA_i frozen and Â = [sA_1; …; sA_m] (Σr × d_in):

    forward   H = x·Âᵀ (one GEMM, Σr wide),   y_i = H_i·B_iᵀ + bias_i + x·W_iᵀ
    backward  dB_i = dy_iᵀ·H_i
              dx = [dy_1·B_1 | … | dy_m·B_m]·Â + Σ_i dy_i·W_i

Against m separate fused layers this reads x once instead of m times for h, writes the rank-r part of
dx once (one GEMM with K = Σr) instead of m times, and lets every dy_i·W_i accumulate onto that one
tensor (cuBLAS's beta = 1), so autograd no longer sums m input gradients of x's size.

The attention and MLP blocks call the siblings one after another with the same tensor. The first
call computes every sibling's output and leaves each the (x, y) pair it will return; a sibling called
with another tensor (cross-attention's k/v read the encoder's states) computes its own output and
leaves the group for good, so the wrong guess costs one forward. `enable(model)` groups the PEFT LoRA
layers that `fused.enable` routed, by the sibling names below; a group runs as one only while every
member is on the fused path with dropout off (per-layer dropout masks would each need their own read
of x) over a plain `nn.Linear`; otherwise each member runs `fused`'s own forward.
"""

from __future__ import annotations

import logging
import operator
import types
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from asymtune.adapters import fused

logger = logging.getLogger(__name__)

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


class SharedInputFrozenA(torch.autograd.Function):
    """(y_1, …, y_m) with y_i = H_i·B_iᵀ + bias_i + x·W_iᵀ, H = x·Âᵀ; only the B_i train; saves H.

    `stacked_a` is Â in x's dtype; `ranks` the row count of each member's block; `members` holds
    (W_i, bias_i, B_i) for each sibling, flattened."""

    @staticmethod
    def forward(ctx, x, stacked_a, ranks: tuple[int, ...], *members):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        h = x2 @ stacked_a.T
        weights, biases, factors = members[0::3], members[1::3], members[2::3]
        bs = [b.to(x.dtype) for b in factors]
        outputs, start = [], 0
        for weight, bias, b, rank in zip(weights, biases, bs, ranks, strict=True):
            h_i = h[:, start : start + rank]
            y = torch.addmm(bias.to(x.dtype), h_i, b.T) if bias is not None else h_i @ b.T
            y.addmm_(x2, weight.to(x.dtype).T)  # the large GEMM adds the adapter's output in its epilogue
            outputs.append(y.view(*shape[:-1], b.shape[0]))
            start += rank
        ctx.save_for_backward(stacked_a, h, *weights, *bs)
        ctx.set_materialize_grads(False)  # an unused sibling's dy stays None: no zero-filled dB for it
        ctx.ranks, ctx.x_shape, ctx.b_dtypes = ranks, shape, [b.dtype for b in factors]
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *dys):
        stacked_a, h, *saved = ctx.saved_tensors
        count = len(ctx.ranks)
        weights, bs = saved[:count], saved[count:]
        grads: list[torch.Tensor | None] = [None] * (3 * count)
        need_x = ctx.needs_input_grad[0]
        through_b, start = [], 0
        for index, (dy, b, rank) in enumerate(zip(dys, bs, ctx.ranks, strict=True)):
            h_i = h[:, start : start + rank]
            start += rank
            if dy is None:  # this sibling's output was not used
                through_b.append(h_i.new_zeros(h_i.shape))
                continue
            dy2 = dy.reshape(-1, dy.shape[-1])
            g, grad_b = fused.dy_products(dy2, b, h_i, need_x, ctx.needs_input_grad[3 + 3 * index + 2])
            if grad_b is not None:
                grads[3 * index + 2] = grad_b.to(ctx.b_dtypes[index])
            through_b.append(g)
        grad_x = None
        if need_x:
            grad_x = torch.cat(through_b, dim=1) @ stacked_a  # one GEMM, K = Σr, for every sibling's adapter
            for dy, weight in zip(dys, weights, strict=True):
                if dy is not None:
                    grad_x.addmm_(dy.reshape(-1, dy.shape[-1]), weight.to(dy.dtype))
            grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, *grads


class Group:
    """Sibling LoRA layers that read one input; the cached Â and which members still share it."""

    def __init__(self, members: list[LoraLinear]) -> None:
        self.members = members
        self._stacked: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def reason(self) -> str | None:
        """Why the siblings cannot run as one right now (None when they can)."""
        if len(self.members) < 2:
            return "fewer than two siblings share the input"
        for member in self.members:
            reason = fused.fallback_reason(member)
            if reason is not None:
                return f"{member._asymtune_name}: {reason}"
            if type(member.get_base_layer()) is not nn.Linear:
                return f"{member._asymtune_name}: base layer is {type(member.get_base_layer()).__name__}"
            dropout = member.lora_dropout[member.active_adapters[0]]
            if isinstance(dropout, nn.Dropout) and dropout.p > 0 and member.training:
                return f"{member._asymtune_name}: LoRA dropout {dropout.p} draws a mask per layer"
        return None

    def stacked_a(self, dtype: torch.dtype) -> torch.Tensor:
        """Â = [sA_1; …; sA_m] in `dtype`, made once while every member's s·A stays the same tensor."""
        parts = [fused.scaled_a(m, m.active_adapters[0], dtype) for m in self.members]
        cached = self._stacked  # holds the parts it was made of, so "is" cannot match a reused address
        if cached is None or len(cached[0]) != len(parts) or any(map(operator.is_not, cached[0], parts)):
            cached = self._stacked = (parts, torch.cat(parts))
        return cached[1]

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every member's output on x, in one autograd node."""
        members: list[Any] = []
        ranks = []
        for member in self.members:
            name = member.active_adapters[0]
            base = member.get_base_layer()
            members += [base.weight, base.bias, member.lora_B[name].weight]
            ranks.append(member.r[name])
        return SharedInputFrozenA.apply(x, self.stacked_a(x.dtype), tuple(ranks), *members)

    def leave(self, member: LoraLinear, why: str) -> None:
        """Drop `member` for good: it was called with an input its siblings did not share."""
        logger.info("%s runs alone from now on: %s", member._asymtune_name, why)
        self.members.remove(member)
        del member._asymtune_group


def _grouped_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    pending = self.__dict__.pop("_asymtune_pending", None)
    if pending is not None and pending[0] is x and not args and not kwargs:
        return pending[1]  # computed by the sibling called first, which checked every member's conditions
    group: Group | None = self.__dict__.get("_asymtune_group")
    if group is None or args or kwargs or group.reason() is not None:
        return fused.fused_forward(self, x, *args, **kwargs)
    if pending is not None:
        group.leave(self, "called with another input than the sibling that computed its output")
        return fused.fused_forward(self, x)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # mixed precision: compute in autocast's dtype, as nn.Linear would
        with torch.autocast(device_type, enabled=False):
            outputs = group.run(x.to(torch.get_autocast_dtype(device_type)))
    else:
        outputs = group.run(x)
    for member, output in zip(group.members, outputs, strict=True):
        if member is not self:  # held until that sibling asks for it with this very tensor
            member._asymtune_pending = (x, output)
    return outputs[group.members.index(self)]


def enable(model: nn.Module) -> int:
    """Group the fused LoRA layers of `model` that are siblings on one input; return how many groups."""
    groups = 0
    for parent in model.modules():
        children = dict(parent.named_children())
        for names in SIBLINGS:
            members = [children[n] for n in names if n in children and _is_fused(children[n])]
            if len(members) < 2:
                continue
            group = Group(members)
            for member in members:
                member._asymtune_group = group
                member.forward = types.MethodType(_grouped_forward, member)
            groups += 1
    return groups


def group_count(model: nn.Module) -> int:
    """How many sibling groups `model` holds."""
    return len({id(m._asymtune_group) for m in model.modules() if "_asymtune_group" in m.__dict__})


def _is_fused(module: nn.Module) -> bool:
    return isinstance(module, LoraLinear) and "forward" in module.__dict__
