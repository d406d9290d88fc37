"""Per-factor optimisation (`adapter.A/B.learning_rate`, `.weight_decay`, `adapter.lr_ratio` — LoRA+): one AdamW
with a parameter group per factor and one for everything else that trains (a classifier head: train.* rates,
no decay on biases and norms, as the Trainer's default optimizer). AdamW's betas and eps are the Trainer's
defaults (0.9, 0.999, 1e-8); the Trainer's learning-rate schedule scales every group alike."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from asymtune.recipe import Recipe


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """AdamW parameter groups: A's factors, B's factors, the rest with decay, the rest without (empty ones left
    out). A factor is a parameter named lora_A / lora_B, as PEFT names them."""
    spec, train = recipe.adapter, recipe.train
    rate_a, rate_b = spec.factor_rates(train.learning_rate)
    decay_a = train.weight_decay if spec.A.weight_decay is None else spec.A.weight_decay
    decay_b = train.weight_decay if spec.B.weight_decay is None else spec.B.weight_decay
    decayed = {name for name in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in name}
    groups: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_A." in name:
            groups["A"].append(param)
        elif ".lora_B." in name:
            groups["B"].append(param)
        else:
            groups["decay" if name in decayed else "no_decay"].append(param)
    settings = {"A": (rate_a, decay_a), "B": (rate_b, decay_b), "decay": (train.learning_rate, train.weight_decay),
                "no_decay": (train.learning_rate, 0.0)}
    return [{"params": params, "lr": settings[key][0], "weight_decay": settings[key][1], "name": key}
            for key, params in groups.items() if params]


def optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, recipe), lr=recipe.train.learning_rate, betas=(0.9, 0.999),
                             eps=1e-8)
