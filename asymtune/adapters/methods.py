"""Every `adapter.method` behind one interface: build the trainable model, count its parameters,
give the optimizer or callbacks a method needs, and save what it trained.

`lora` is asymtune's asymmetric LoRA (lora.py). The baselines: `lora_fa` (PEFT LoRA with PEFT's
LoRA-FA optimizer, which freezes A and projects B's gradient), `adalora`, `ia3`, `vera` through
PEFT, `full` fine-tuning, and `linear_probe` (only the classification head trains).
"""

from __future__ import annotations

import math
from pathlib import Path

from peft import AdaLoraConfig, IA3Config, LoraConfig, PeftModel, VeraConfig, get_peft_model
from torch import nn
from torch.optim import Optimizer
from transformers import TrainerCallback

from asymtune import atomic
from asymtune.adapters import factor_rates, fused, lora, shared_input
from asymtune.adapters.lora import ParameterCounts
from asymtune.distributed import world_size
from asymtune.recipe import AdapterSpec, Recipe

HEAD_NAMES = ("classifier", "score")  # sequence-classification heads across transformers models


def planned_steps(recipe: Recipe, rows: int) -> int:
    """Optimizer steps the run will take (AdaLoRA's schedule needs this before training starts): each step
    takes batch_size × grad_accum rows on every process."""
    train = recipe.train
    if train.max_steps:
        return train.max_steps
    per_epoch = math.ceil(rows / (train.batch_size * train.grad_accum * world_size()))
    return max(1, math.ceil(per_epoch * train.epochs))


def build(
    model: nn.Module, spec: AdapterSpec, task_type: str | None, total_steps: int, heads: list[str] | None = None
) -> nn.Module:
    """The model with `spec.method` applied and exactly its parameters trainable; `heads` (new output
    layers PEFT does not know of, e.g. an image classifier) train in full beside the adapter."""
    if spec.method == "lora":
        peft_model = lora.apply(model, spec, task_type=task_type, modules_to_save=heads)
        if spec.fused and not spec.A.trainable:
            fused.enable(peft_model)
            shared_input.enable(peft_model)
        return peft_model
    if spec.method == "full":
        return model.requires_grad_(True)
    if spec.method == "linear_probe":
        model.requires_grad_(False)
        modules = (
            [model.get_submodule(name) for name in heads]
            if heads
            else [module for name, module in model.named_children() if name in HEAD_NAMES]
        )
        if not modules:
            raise lora.AdapterError(f"linear_probe: {type(model).__name__} has no classification head")
        for head in modules:
            head.requires_grad_(True)
        return model
    common = {"target_modules": spec.targets, "task_type": task_type, "modules_to_save": heads}
    if spec.method == "lora_fa":
        config = LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout, **common)
    elif spec.method == "adalora":
        target = spec.adalora_target_rank or max(1, spec.rank // 2)
        config = AdaLoraConfig(init_r=spec.rank, target_r=target, lora_alpha=spec.lora_alpha,
                               lora_dropout=spec.dropout, total_step=total_steps,
                               tinit=total_steps // 10, tfinal=total_steps // 5, **common)
    elif spec.method == "vera":
        config = VeraConfig(r=spec.rank, vera_dropout=spec.dropout, projection_prng_key=spec.seed, **common)
    else:
        config = IA3Config(feedforward_modules=spec.ia3_feedforward or [], **common)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as error:
        raise lora.AdapterError(f"adapter.method {spec.method}: {str(error).splitlines()[0]}") from None
    # LoRA-FA keeps A frozen (its optimizer reads A to project B's gradient). AdaLoRA's ranknum is a
    # constant; PEFT re-wraps it as a trainable parameter when it casts the adapter of a bf16/fp16 base.
    frozen = {"lora_fa": ".lora_A.", "adalora": ".ranknum."}.get(spec.method)
    if frozen:
        for name, param in peft_model.named_parameters():
            if frozen in name:
                param.requires_grad_(False)
    return peft_model


def count(model: nn.Module, spec: AdapterSpec, base: int) -> ParameterCounts:
    """Trainable parameters, per factor for the LoRA family, against the `base` model's size."""
    if spec.method in ("lora", "lora_fa"):
        counts = lora.count_parameters(model)
        return ParameterCounts(base, counts.trainable_A, counts.trainable_B, counts.frozen_A, counts.frozen_B,
                               counts.trainable_other)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCounts(base, 0, 0, 0, 0, trainable)


def optimizer(model: nn.Module, recipe: Recipe) -> Optimizer | None:
    """LoRA-FA's own optimizer (it freezes A), AdamW with a group per factor when A and B have their own rates
    (factor_rates.py); None means the Trainer's default AdamW."""
    spec = recipe.adapter
    if spec.per_factor_optimisation:
        return factor_rates.optimizer(model, recipe)
    if spec.method != "lora_fa":
        return None
    from peft.optimizers import create_lorafa_optimizer

    return create_lorafa_optimizer(model, r=spec.rank, lora_alpha=spec.lora_alpha, lr=recipe.train.learning_rate,
                                   weight_decay=recipe.train.weight_decay)


class AdaLoraBudgetCallback(TrainerCallback):
    """AdaLoRA reallocates ranks after every optimizer step, while the gradients still exist."""

    def __init__(self, model: PeftModel) -> None:
        self.model = model

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


def callbacks(model: nn.Module, spec: AdapterSpec) -> list[TrainerCallback]:
    return [AdaLoraBudgetCallback(model)] if spec.method == "adalora" else []


def save(
    model: nn.Module, recipe: Recipe, adapter_dir: Path, model_dir: Path, state_dict: dict | None = None,
    processor=None, labels: dict | None = None,
) -> None:
    """PEFT methods write adapter_dir (PEFT format, with a classifier's `labels` as labels.json: PEFT's config
    has no place for them); full and linear_probe write the whole model, its config naming the labels, with
    its `processor` (tokenizer or image processor), a folder that loads on its own.

    `state_dict`: the model's full state dict when `model`'s own parameters are shards (FSDP)."""
    spec = recipe.adapter
    if spec.method == "lora":
        lora.save_adapter(model, spec, adapter_dir, state_dict, labels)
    elif spec.method in ("full", "linear_probe"):
        with atomic.directory(model_dir) as scratch:
            model.save_pretrained(scratch, state_dict=state_dict)
            if processor is not None:
                processor.save_pretrained(scratch)
    else:
        with atomic.directory(adapter_dir) as scratch:
            model.save_pretrained(str(scratch), state_dict=state_dict)
            lora.write_labels(scratch, labels)
