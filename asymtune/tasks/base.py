"""What every task family shares: the adapted model, TrainingArguments from the recipe, the run's callbacks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from asymtune.adapters import fused, methods
from asymtune.adapters.lora import ParameterCounts
from asymtune.callbacks import ProgressCallback, StepLogCallback, StopOnNonFiniteLoss, TimeToFirstStepCallback
from asymtune.recipe import Recipe
from asymtune.report import console, parameter_table
from asymtune.runs import RunDir


def trainer_options(recipe: Recipe, run: RunDir, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a subclass): no checkpoints, no tqdm, our callbacks log."""
    train = recipe.train
    return {
        "output_dir": str(run.path / "checkpoints"),
        "seed": recipe.seed,
        "num_train_epochs": train.epochs,
        "max_steps": train.max_steps or -1,
        "learning_rate": train.learning_rate,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.eval_batch_size or train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "lr_scheduler_type": train.lr_scheduler,
        "logging_steps": train.logging_steps,
        "logging_nan_inf_filter": False,  # let a NaN loss reach the log, where StopOnNonFiniteLoss stops the run
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": train.gradient_checkpointing,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def run_callbacks(run: RunDir, first_step: TimeToFirstStepCallback) -> list:
    """The progress bar, the per-step JSONL log, the time-to-first-step probe and the divergence stop."""
    return [ProgressCallback(), StepLogCallback(run), first_step, StopOnNonFiniteLoss()]


def prepare_model(
    model: nn.Module, recipe: Recipe, task_type: str | None, train_rows: int, heads: list[str] | None = None
) -> tuple[nn.Module, ParameterCounts]:
    """Apply `recipe.adapter` to `model`, print its parameter table (and the fused layers), return both."""
    base = sum(p.numel() for p in model.parameters())
    adapted = methods.build(model, recipe.adapter, task_type, methods.planned_steps(recipe, train_rows), heads)
    counts = methods.count(adapted, recipe.adapter, base)
    console.print(parameter_table(counts))
    layers = fused.enabled_count(adapted)
    if layers:
        console.print(f"fused frozen-A path on {layers} LoRA layers")
    return adapted, counts


def training_metrics(result, first_step: TimeToFirstStepCallback, train_rows: int) -> dict[str, Any]:
    """What every task reports about the training itself (its own metrics come after)."""
    return {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "time_to_first_step_s": first_step.seconds,
        "train_rows": train_rows,
    }
