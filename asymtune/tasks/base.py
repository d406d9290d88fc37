"""What every task family's trainer shares: TrainingArguments from the recipe, and the run's callbacks."""

from __future__ import annotations

from typing import Any

import torch

from asymtune.callbacks import ProgressCallback, StepLogCallback, StopOnNonFiniteLoss, TimeToFirstStepCallback
from asymtune.recipe import Recipe
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
