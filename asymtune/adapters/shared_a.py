"""One A, many B's: a mixed batch over the adapters of one family, with x·Aᵀ computed once per layer.

Adapters of a family share A, so row i of a batch, served by adapter k(i), is

    yᵢ = xᵢ·W0ᵀ + (xᵢ·Aᵀ)·(s_k·B_k)ᵀ

h = x·Aᵀ (r wide) is one matmul over the whole batch; each row's s_k·B_k is gathered from a stack built once, and
applied in one batched matmul. PEFT's mixed batch instead runs A and B once per distinct adapter on that
adapter's rows. The API is PEFT's own: `model.generate(..., adapter_names=[one name per row])` ("__base__": no
adapter), whose forward hooks hand the names to every LoRA layer; `enable` makes those layers take this path.
Anything else (training, merged weights, extra arguments, a 2-D input, a name outside the family) goes through
PEFT's forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

BASE = "__base__"  # PEFT's name for a row served by the base model alone


class Family:
    """The adapters one model serves through the shared A, in stack order; the last stack entry (zeros) is BASE."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)} | {BASE: len(self.names)}
        self._last: tuple[tuple[str, ...], torch.Tensor] | None = None

    def rows(self, adapter_names: list[str], device: torch.device) -> torch.Tensor | None:
        """Each row's stack index, None if a name is not served. Generation asks again with the same names at every
        step and every layer, so the same tensor is returned for them (layers key their gathered B's on it)."""
        names = tuple(adapter_names)
        if self._last is None or self._last[0] != names or self._last[1].device != device:
            if not all(name in self.index for name in names):
                return None
            self._last = (names, torch.tensor([self.index[name] for name in names], device=device))
        return self._last[1]


class SharedLayer:
    """One layer's share of a family: Aᵀ (d_in × r), the stack of s_k·B_kᵀ (n+1 × r × d_out, BASE's zero last) and
    the rows of the last batch gathered from it ([batch, r, d_out], kept while the batch is generated: about the
    memory of r·d_out / (2·d_kv) more tokens of KV cache per layer)."""

    def __init__(self, family: Family, a_t: torch.Tensor, stack: torch.Tensor) -> None:
        self.family, self.a_t, self.stack = family, a_t, stack
        self.gathered: tuple[torch.Tensor, torch.Tensor] | None = None

    def rows_b(self, rows: torch.Tensor) -> torch.Tensor:
        if self.gathered is None or self.gathered[0] is not rows:
            self.gathered = (rows, self.stack.index_select(0, rows))
        return self.gathered[1]


def enable(model: nn.Module, names: list[str]) -> int:
    """Serve the adapters `names` (one family: the same A in every layer, else ValueError) through the shared A in
    every PEFT LoRA linear layer holding them, on the device and in the dtype of each layer's base weight; return
    how many layers."""
    family = Family(names)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLinear) or not all(n in module.lora_A for n in names):
            continue
        a = module.lora_A[names[0]].weight
        if any(not torch.equal(module.lora_A[n].weight, a) for n in names[1:]):
            raise ValueError(f"{name}: the adapters' A differ; they are not one family")
        base = module.get_base_layer().weight
        dtype = base.dtype if base.dtype.is_floating_point else a.dtype
        with torch.no_grad():
            scaled_b = [module.lora_B[n].weight.T * module.scaling[n] for n in names]  # each r × d_out
            stack = torch.stack([*scaled_b, torch.zeros_like(scaled_b[0])]).to(base.device, dtype).contiguous()
            module._asymtune_shared = SharedLayer(family, a.T.to(base.device, dtype).contiguous(), stack)
        module.forward = types.MethodType(_shared_a_forward, module)
        count += 1
    return count


def _shared_a_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    names = kwargs.get("adapter_names")
    shared = self._asymtune_shared
    usable = (names is not None and len(kwargs) == 1 and not args and x.dim() == 3 and x.dtype == shared.a_t.dtype
              and not self.training and not self.merged and not self.disable_adapters)
    rows = shared.family.rows(names, x.device) if usable else None
    if rows is None:
        return type(self).forward(self, x, *args, **kwargs)
    h = x @ shared.a_t  # [batch, sequence, r], once for every adapter
    return self.base_layer(x).baddbmm_(h, shared.rows_b(rows))  # + each row's s·Bᵀ


def disable(model: nn.Module) -> None:
    """Give every layer `enable` touched back to PEFT's forward (and its mixed batch)."""
    for module in model.modules():
        if isinstance(module, LoraLinear) and "_asymtune_shared" in module.__dict__:
            del module.forward, module._asymtune_shared
