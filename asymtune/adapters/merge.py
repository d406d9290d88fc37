"""Weighted merging of LoRA adapters saved for one base model.

Adapters of one *family* share A bit for bit (the same frozen seeded A: same adapter seed, targets, rank, A
init), so their weighted sum is one adapter of the same rank, exactly:

    Σᵢ wᵢ·sᵢ·Bᵢ·A = s₀·B·A   with   B = Σᵢ wᵢ·(sᵢ/s₀)·Bᵢ        (sᵢ = alphaᵢ / r, the first adapter's s₀ kept)

Adapters with different A's go through PEFT's `add_weighted_adapter`: "svd" (rank r, a truncated SVD of the
summed update: lossy) or "cat" (the factors stacked: exact, rank Σᵢ rᵢ). `delta_error` measures any merge against
Σᵢ wᵢ·ΔWᵢ, module by module.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asymtune.adapters.lora import ADAPTER_WEIGHTS_FILE, AdapterError, check_adapter, read_spec
from asymtune.recipe import SEEDED_INITS, AdapterSpec

PEFT_COMBINATIONS = ("svd", "cat")
MERGED = "merged"  # the merged adapter's name on the PEFT model


@dataclass(frozen=True)
class Saved:
    """One saved LoRA adapter: its name (for messages), folder, PEFT config, tensors and asymtune's factor spec."""

    name: str
    folder: Path
    config: dict
    weights: dict[str, torch.Tensor]
    spec: AdapterSpec | None

    @property
    def scaling(self) -> float:
        """s in W0 + s·B·A: lora_alpha / r (rsLoRA: / √r)."""
        rank = self.config["r"]
        return self.config["lora_alpha"] / (math.sqrt(rank) if self.config.get("use_rslora") else rank)

    @functools.cached_property
    def modules(self) -> list[str]:
        return sorted({key.rsplit(".lora_", 1)[0] for key in self.weights if ".lora_A." in key})

    def factor(self, module: str, factor: str) -> torch.Tensor:
        return self.weights[f"{module}.lora_{factor}.weight"]

    def delta(self, module: str) -> torch.Tensor:
        """s·B·A of `module` in float64, as a matrix (d_out × d_in·k·k for a convolution)."""
        b, a = (self.factor(module, f).double() for f in ("B", "A"))
        return self.scaling * (b.flatten(1) @ a.flatten(1))


def read(name: str, folder: Path) -> Saved:
    """The LoRA adapter in `folder` (checked whole: `check_adapter`); AdapterError unless it is a plain LoRA
    adapter with nothing trained beside it (a classifier head cannot be merged across tasks)."""
    weights = check_adapter(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config["peft_type"] != "LORA":
        raise AdapterError(f"{name}: a {config['peft_type']} adapter; merging combines LoRA adapters")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterError(f"{name}: ranks or alphas that vary by module (rank_pattern); merging needs one rank")
    others = sorted(key for key in weights if ".lora_A." not in key and ".lora_B." not in key)
    if others:
        raise AdapterError(f"{name}: {folder / ADAPTER_WEIGHTS_FILE} trains {len(others)} tensor(s) beside the "
                           f"adapter (e.g. {others[0]}, a task head); heads of different tasks do not merge")
    return Saved(name, folder, config, weights, read_spec(folder))


def shared_a_reason(adapters: list[Saved]) -> str | None:
    """Why these adapters do not share one A (None when they do: one family, merged exactly)."""
    first = adapters[0]
    for adapter in adapters:
        spec = adapter.spec
        if spec is None:
            return f"{adapter.name} was not trained by asymtune (no factor spec beside it)"
        if spec.A.trainable or spec.A.init not in SEEDED_INITS:
            return f"{adapter.name} has A {spec.A.label}, not a frozen A drawn from the adapter seed"
    for adapter in adapters[1:]:
        for key in ("seed", "rank", "targets"):
            if getattr(adapter.spec, key) != getattr(first.spec, key):
                return (f"adapter.{key} differs: {getattr(first.spec, key)!r} in {first.name}, "
                        f"{getattr(adapter.spec, key)!r} in {adapter.name}")
        if adapter.spec.A.init != first.spec.A.init:
            return f"A's init differs: {first.spec.A.init} in {first.name}, {adapter.spec.A.init} in {adapter.name}"
        if adapter.modules != first.modules:
            return f"{first.name} and {adapter.name} adapt different modules"
        for module in first.modules:
            if not torch.equal(adapter.factor(module, "A"), first.factor(module, "A")):
                return f"the saved A of {module} differs between {first.name} and {adapter.name}"
    return None


def merge_shared_a(adapters: list[Saved], weights: list[float]) -> dict[str, torch.Tensor]:
    """The exact merge of one family: the first adapter's A and B = Σᵢ wᵢ·(sᵢ/s₀)·Bᵢ (summed in float64)."""
    first = adapters[0]
    merged = {}
    for module in first.modules:
        b = sum(w * (a.scaling / first.scaling) * a.factor(module, "B").double()
                for a, w in zip(adapters, weights, strict=True))
        merged[f"{module}.lora_A.weight"] = first.factor(module, "A").clone()
        merged[f"{module}.lora_B.weight"] = b.to(first.factor(module, "B").dtype).contiguous()
    return merged


def merge_with_peft(model: nn.Module, adapters: list[Saved], weights: list[float], combination: str,
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, PEFT config) of PEFT's `add_weighted_adapter` over `adapters` put on `model` (its base model)."""
    from peft import PeftModel, get_peft_model_state_dict

    names = [f"source{i}" for i in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model, str(adapters[0].folder), adapter_name=names[0])
    for name, adapter in zip(names[1:], adapters[1:], strict=True):
        peft_model.load_adapter(str(adapter.folder), adapter_name=name)
    peft_model.add_weighted_adapter(names, weights, MERGED, combination_type=combination)
    state = get_peft_model_state_dict(peft_model, adapter_name=MERGED)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    config = peft_model.peft_config[MERGED].to_dict()
    return tensors, {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}


@dataclass(frozen=True)
class DeltaError:
    """A merge's update against Σᵢ wᵢ·ΔWᵢ over all modules: largest absolute entry error and ‖error‖/‖target‖."""

    max_abs: float
    relative: float


def delta_error(adapters: list[Saved], weights: list[float], merged: Saved) -> DeltaError:
    """How far `merged`'s s·B·A is from Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ, in float64 (a module a source lacks counts as zero)."""
    worst, error_sq, target_sq = 0.0, 0.0, 0.0
    for module in sorted({m for a in adapters for m in a.modules}):
        target = sum(w * a.delta(module) for a, w in zip(adapters, weights, strict=True) if module in a.modules)
        error = merged.delta(module) - target
        worst = max(worst, float(error.abs().max()))
        error_sq += float(error.square().sum())
        target_sq += float(target.square().sum())
    return DeltaError(worst, math.sqrt(error_sq / target_sq) if target_sq else 0.0)

