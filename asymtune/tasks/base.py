"""What every task family shares: the adapted model, TrainingArguments from the recipe, the run's callbacks."""

from __future__ import annotations

from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from asymtune.adapters import fused, methods
from asymtune.adapters.lora import ParameterCounts
from asymtune.callbacks import (
    ProgressCallback,
    StepLogCallback,
    StopOnNonFiniteLoss,
    TimeToFirstStepCallback,
    TrainingInterrupted,
    graceful_stop,
)
from asymtune.checkpoints import MarkCheckpointComplete
from asymtune.distributed import LaunchError
from asymtune.models import parameter_count
from asymtune.recipe import Recipe
from asymtune.report import console, parameter_table
from asymtune.runs import RunDir


def trainer_options(recipe: Recipe, run: RunDir, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a subclass): checkpoints every train.save_steps and at
    the end under RUN/checkpoints, no tqdm (our callbacks show progress and log)."""
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
        # Per-batch mean losses (classification, seq2seq, images) must not be rescaled by the process count:
        # transformers does that when a model's forward takes **kwargs, doubling gradients under 2-process DDP.
        # SFT turns it back on: TRL's causal-LM loss divides by the tokens counted across all processes.
        "average_tokens_across_devices": False,
        "logging_nan_inf_filter": False,  # let a NaN loss reach the log, where StopOnNonFiniteLoss stops the run
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": train.save_total_limit,
        "report_to": [],
        "disable_tqdm": True,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": train.gradient_checkpointing,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def run_callbacks(run: RunDir, first_step: TimeToFirstStepCallback) -> list:
    """The progress bar, the per-step JSONL log, the time-to-first-step probe and the divergence stop."""
    return [ProgressCallback(), StepLogCallback(run), first_step, StopOnNonFiniteLoss(), graceful_stop]


def train(trainer: Trainer, run: RunDir) -> TrainOutput:
    """`trainer.train()`, resumed from `run.resume_from` when set, with each checkpoint marked complete.

    training_loss is the mean per-step loss over the whole run, the steps before the resume included.
    Raises TrainingInterrupted when a signal stopped training (a checkpoint was written first)."""
    if trainer.is_fsdp_enabled and not trainer.accelerator.is_fsdp2:
        raise LaunchError(
            "accelerate config: FSDP1 (fsdp_version: 1) fails to gather a PEFT adapter's state dict at the end of "
            "training; set fsdp_version: 2 (see examples/accelerate_fsdp.yaml)"
        )
    resumed = run.resume_from
    trainer.add_callback(MarkCheckpointComplete(trainer, resumed))
    if trainer.args.world_size > 1 or trainer.is_fsdp_enabled:
        mode = "FSDP" if trainer.is_fsdp_enabled else "DDP"
        console.print(f"data parallel: {mode} over {trainer.args.world_size} processes")
        run.append_log({"event": "distributed", "mode": mode, "world_size": trainer.args.world_size})
    result = trainer.train(resume_from_checkpoint=str(resumed.path) if resumed else None)
    if graceful_stop.requested:
        raise TrainingInterrupted(result.global_step)
    if resumed and result.global_step:
        session_sum = result.training_loss * (result.global_step - resumed.step)
        result = result._replace(training_loss=(resumed.loss_sum + session_sum) / result.global_step)
    return result


def prepare_model(
    model: nn.Module, recipe: Recipe, task_type: str | None, train_rows: int, heads: list[str] | None = None
) -> tuple[nn.Module, ParameterCounts]:
    """Apply `recipe.adapter` to `model`, print its parameter table (and the fused layers), return both."""
    base = parameter_count(model)
    model_is_quantized = getattr(model, "is_quantized", False)
    if model_is_quantized:  # QLoRA: norms in float32, gradients reach the adapter's inputs
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    adapted = methods.build(model, recipe.adapter, task_type, methods.planned_steps(recipe, train_rows), heads)
    counts = methods.count(adapted, recipe.adapter, base)
    console.print(parameter_table(counts))
    layers = fused.enabled_count(adapted)
    spec = recipe.adapter
    if layers:
        over = " (adapter branch; the quantized base runs bitsandbytes' kernel)" if model_is_quantized else ""
        console.print(f"fused frozen-A path on {layers} LoRA layers{over}")
    elif spec.method == "lora" and spec.fused and not spec.A.trainable:
        console.print("fused frozen-A path off: no target is an nn.Linear; PEFT's LoRA forward is used")
    return adapted, counts


def evaluate_before_training(trainer: Trainer) -> dict[str, float] | None:
    """`trainer.evaluate()` on the untrained model, leaving it free to be wrapped for training.

    Accelerate marks a model it prepared for evaluation as prepared; `train()` then skips the DDP
    wrapper, so under several processes each would silently train on its own shard. Undo the mark.
    Under FSDP the model is sharded together with its optimizer when training starts, so there is
    no evaluation before it (None)."""
    if trainer.is_fsdp_enabled:
        console.print("step 0: no evaluation before training under FSDP (the model is sharded when training starts)")
        return None
    metrics = trainer.evaluate()
    model = trainer.model
    if getattr(model, "_is_accelerate_prepared", False):
        model._is_accelerate_prepared = False
        if model in trainer.accelerator._models:
            trainer.accelerator._models.remove(model)
    return metrics


def save_trained(trainer: Trainer, model: nn.Module, recipe: Recipe, run: RunDir) -> None:
    """The adapter (or, for full/linear_probe, the model) into the run folder; rank 0 writes.

    Under FSDP each rank holds a shard: every rank first takes part in gathering the full state dict."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_fsdp_enabled else None
    if run.writes:
        methods.save(model, recipe, run.adapter_dir, run.model_dir, state_dict)


def training_metrics(result, first_step: TimeToFirstStepCallback, train_rows: int) -> dict[str, Any]:
    """What every task reports about the training itself (its own metrics come after)."""
    return {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "time_to_first_step_s": first_step.seconds,
        "train_rows": train_rows,
    }
