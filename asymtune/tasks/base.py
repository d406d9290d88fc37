"""The one training sequence every task family shares, and the interface a family fills in.

`fit` seeds, loads the family's data (errors come in seconds, before the model), loads the model,
applies the adapter, builds the family's Trainer with the shared options, callbacks and optimizer,
trains (resuming if asked), saves, and returns the training summary, the family's metrics and the
parameter counts. `evaluate_saved` re-computes a finished run's metrics from what it saved.
"""

from __future__ import annotations

import functools
import importlib
import time
from pathlib import Path
from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from torch import nn
from transformers import PrinterCallback, Trainer, set_seed
from transformers.trainer_utils import TrainOutput

from asymtune import library_internals, trackers
from asymtune.adapters import fused, methods, shared_input
from asymtune.adapters.lora import ParameterCounts, load_adapter, load_peft
from asymtune.callbacks import (
    GracefulStop,
    ProgressCallback,
    StepLogCallback,
    StopOnNonFiniteLoss,
    TimeToFirstStepCallback,
    TrainingInterrupted,
)
from asymtune.checkpoints import MarkCheckpointComplete
from asymtune.distributed import LaunchError
from asymtune.models import label_maps, parameter_count
from asymtune.recipe import Recipe
from asymtune.report import console, parameter_table
from asymtune.runs import RunDir


class TaskFamily:
    """What a task family supplies to `fit`: data, model, Trainer and metrics. `data` is the family's own
    object (splits, label names, ...), passed back to it unchanged."""

    task_type: str | None = None  # PEFT's task type (None: heads are named by `heads`)

    def load_data(self, recipe: Recipe) -> Any:
        raise NotImplementedError

    def train_rows(self, data: Any) -> int:
        raise NotImplementedError

    def describe(self, data: Any) -> str:
        """One line on the data for the log, e.g. 'data: 400 train rows, 48 eval rows'."""
        raise NotImplementedError

    def load_model(self, recipe: Recipe, labels: list[str] | None) -> tuple[nn.Module, Any]:
        """(base model, its tokenizer or image processor), with a new head for `labels` (`labels(data)`: class
        names in output order) where the task has one."""
        raise NotImplementedError

    def heads(self, model: nn.Module) -> list[str] | None:
        """New output layers that train in full beside the adapter, when PEFT's task type does not name them."""
        return None

    def make_trainer(
        self, recipe: Recipe, model: nn.Module, processor: Any, data: Any, options: dict[str, Any],
        callbacks: list, optimizers: tuple,
    ) -> Trainer:
        """The family's Trainer; `options` are TrainingArguments keywords every task shares."""
        raise NotImplementedError

    def labels(self, data: Any) -> list[str] | None:
        """Class names in output order, for classifiers (None: the task has no classes)."""
        return None

    def before_training(self, trainer: Trainer, data: Any) -> dict[str, Any]:
        """Metrics of the untrained model (default: none)."""
        return {}

    def metrics(self, trainer: Trainer, model: nn.Module, processor: Any, data: Any, recipe: Recipe,
                run: RunDir) -> dict[str, Any]:
        """The family's own metrics of the trained model."""
        raise NotImplementedError


def family(task: str) -> TaskFamily:
    """The runner of `task` (a registry name): `asymtune.tasks.<task>.FAMILY`."""
    return importlib.import_module(f"asymtune.tasks.{task}").FAMILY


def fit(family: TaskFamily, recipe: Recipe, run: RunDir, stop: GracefulStop) -> dict[str, Any]:
    """Train per `recipe` into `run` and return its metrics; `stop` is the run's signal handler."""
    started = time.perf_counter()
    set_seed(recipe.seed)
    data = family.load_data(recipe)
    model, processor = family.load_model(recipe, family.labels(data))
    rows = family.train_rows(data)
    adapted, counts = prepare_model(model, recipe, family.task_type, rows, family.heads(model))
    console.print(family.describe(data))
    first_step = TimeToFirstStepCallback(started, run)
    say = functools.partial(console.print, highlight=False, soft_wrap=True)
    with trackers.tracked(recipe, run, counts, say) as tracking:
        callbacks = [ProgressCallback(), StepLogCallback(run), first_step, StopOnNonFiniteLoss(), stop,
                     *methods.callbacks(adapted, recipe.adapter), *tracking.callbacks]
        trainer = family.make_trainer(recipe, adapted, processor, data, trainer_options(recipe, run, adapted.dtype),
                                      callbacks, (methods.optimizer(adapted, recipe), None))
        trainer.remove_callback(PrinterCallback)
        evaluation_started = time.perf_counter()
        before = family.before_training(trainer, data)
        first_step.exclude(time.perf_counter() - evaluation_started)
        result = train(trainer, run, stop)
        best = keep_best(trainer, recipe)
        names = family.labels(data)
        labels = label_maps(names) if names is not None else None
        save_trained(trainer, adapted, processor, recipe, run, labels)
        if labels is not None:
            run.write_labels(labels)
        metrics = {**training_metrics(result, first_step, rows), **before, **best,
                   **family.metrics(trainer, adapted, processor, data, recipe, run)}
        tracking.final(metrics)
    return {**metrics, "parameters": counts.as_dict()}


def evaluate_saved(family: TaskFamily, recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """The family's metrics of a finished run, from its saved adapter (or model) and its recipe's data."""
    set_seed(recipe.seed)
    data = family.load_data(recipe)
    if recipe.adapter.method in ("full", "linear_probe"):  # the saved folder is the model, with its processor
        saved = recipe.model.model_copy(update={"name": str(run.model_dir), "gguf_file": None})
        model, processor = family.load_model(recipe.model_copy(update={"model": saved}), family.labels(data))
    else:
        model, processor = family.load_model(recipe, family.labels(data))
        model = load_adapted(model, recipe, run.adapter_dir)
    options = {**trainer_options(recipe, run, model.dtype), "use_liger_kernel": False}  # evaluating: the plain model
    trainer = family.make_trainer(recipe, model, processor, data, options, [ProgressCallback()], (None, None))
    trainer.remove_callback(PrinterCallback)
    return family.metrics(trainer, model, processor, data, recipe, run)


def load_adapted(model: nn.Module, recipe: Recipe, adapter_dir: Path) -> nn.Module:
    """`model` with the saved adapter in `adapter_dir` on it (asymtune LoRA refrozen as trained)."""
    if recipe.adapter.method == "lora":
        return load_adapter(model, adapter_dir)
    return load_peft(model, adapter_dir)


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
        "report_to": [],  # trackers come as callbacks from asymtune.trackers, set up for the run
        "run_name": f"{recipe.name}/{run.path.name}",
        "project": train.project,
        "disable_tqdm": True,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": train.gradient_checkpointing,
        "use_liger_kernel": train.liger_kernel,  # the Trainer patches the base model's layers with Liger's kernels
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def train(trainer: Trainer, run: RunDir, stop: GracefulStop) -> TrainOutput:
    """`trainer.train()`, resumed from `run.resume_from` when set, with each checkpoint marked complete.

    training_loss is the mean per-step loss over the whole run, the steps before the resume included.
    Raises TrainingInterrupted when a signal stopped training (`stop`; a checkpoint was written first)."""
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
    if resumed and 0 < trainer.args.max_steps <= resumed.step:  # stopped after its last step (e.g. in the final
        # evaluation): the Trainer would take one step more before it checks, so take the checkpoint's weights
        library_internals.load_checkpoint_weights(trainer, str(resumed.path))
        return TrainOutput(resumed.step, resumed.loss_sum / resumed.step, {})
    result = trainer.train(resume_from_checkpoint=str(resumed.path) if resumed else None)
    if stop.requested:
        raise TrainingInterrupted(result.global_step)
    if resumed and result.global_step:
        session_sum = result.training_loss * (result.global_step - resumed.step)
        result = result._replace(training_loss=(resumed.loss_sum + session_sum) / result.global_step)
    return result


def keep_best(trainer: Trainer, recipe: Recipe) -> dict[str, Any]:
    """With train.keep_best, load the checkpoint with the lowest eval loss into the model (as a resume does: a
    frozen factor stays frozen) so that it is what the run saves; its step and eval loss for metrics.json."""
    state = trainer.state
    if not recipe.train.keep_best or state.best_model_checkpoint is None:
        return {}
    library_internals.load_checkpoint_weights(trainer, state.best_model_checkpoint)
    step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    console.print(f"keep_best: the run keeps checkpoint-{step} (eval loss {state.best_metric:.4f}, the lowest) "
                  f"of {state.global_step} steps")
    return {"best_step": step, "best_eval_loss": state.best_metric}


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
        groups = shared_input.group_count(adapted)
        siblings = f"; {groups} groups of siblings read their input once" if groups else ""
        console.print(f"fused frozen-A path on {layers} LoRA layers{over}{siblings}")
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
    library_internals.forget_evaluation_prepare(trainer)
    return metrics


def save_trained(
    trainer: Trainer, model: nn.Module, processor: Any, recipe: Recipe, run: RunDir, labels: dict | None = None
) -> None:
    """The adapter with a classifier's `labels` beside it (or, for full/linear_probe, the model with its
    tokenizer or image processor, so the folder reloads on its own) into the run folder; rank 0 writes.

    Under FSDP each rank holds a shard: every rank first takes part in gathering the full state dict."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if trainer.is_fsdp_enabled else None
    if run.writes:
        methods.save(model, recipe, run.adapter_dir, run.model_dir, state_dict, processor, labels)


def training_metrics(result, first_step: TimeToFirstStepCallback, train_rows: int) -> dict[str, Any]:
    """What every task reports about the training itself (its own metrics come after)."""
    return {
        "train_loss": result.training_loss,
        "train_steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "time_to_first_step_s": first_step.seconds,
        "train_rows": train_rows,
    }
