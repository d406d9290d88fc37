"""`task: sft` — instruction tuning of a causal LM with TRL's SFTTrainer on an asymmetric adapter."""

from __future__ import annotations

import math
import time
from typing import Any

import datasets
import torch
from transformers import PrinterCallback, set_seed
from trl import SFTConfig, SFTTrainer

from asymtune.adapters import lora, methods
from asymtune.callbacks import TimeToFirstStepCallback
from asymtune.data.formats import to_prompt_completion
from asymtune.data.sources import DataError, load_table
from asymtune.data.splits import train_eval_split
from asymtune.models import load_causal_lm
from asymtune.recipe import Recipe
from asymtune.report import console
from asymtune.runs import RunDir
from asymtune.tasks.base import (
    evaluate_before_training,
    prepare_model,
    run_callbacks,
    save_trained,
    train,
    trainer_options,
    training_metrics,
)


def build_datasets(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and eval splits of the recipe's data, as prompt/completion columns."""
    spec = recipe.data
    train = to_prompt_completion(load_table(spec.train, spec.split, console.print), spec.format, spec.train)
    held_out = None
    if isinstance(spec.eval, dict):
        raise DataError("data.eval: task sft takes one held-out file or hub id, not a mapping")
    if spec.eval is not None:
        held_out = to_prompt_completion(load_table(spec.eval, "validation", console.print), spec.format, spec.eval)
    return train_eval_split(
        train, held_out, spec.eval_fraction, recipe.seed, spec.max_train_samples, spec.max_eval_samples
    )


def trainer_arguments(recipe: Recipe, run: RunDir, has_eval: bool, dtype: torch.dtype) -> SFTConfig:
    """SFTConfig from the recipe's train/data sections, over the options every task shares."""
    periodic_eval = has_eval and recipe.train.eval_steps is not None
    return SFTConfig(
        **{**trainer_options(recipe, run, dtype), "eval_strategy": "steps" if periodic_eval else "no",
           "average_tokens_across_devices": True},
        eval_steps=recipe.train.eval_steps if periodic_eval else None,
        max_length=recipe.data.max_length,
        completion_only_loss=recipe.data.completion_only_loss,
        dataset_num_proc=None,
    )


def check_truncation(rows: int, kept: int, split: str, max_length: int) -> None:
    """TRL drops rows whose completion is cut off entirely by max_length: say so, and refuse an empty split."""
    if kept == 0:
        raise DataError(
            f"data.max_length {max_length}: every {split} prompt is at least that long, so no completion token "
            "is left to learn from; raise data.max_length"
        )
    if kept < rows:
        console.print(
            f"[yellow]warning:[/yellow] {rows - kept} of {rows} {split} rows dropped: the prompt fills "
            f"data.max_length {max_length}"
        )


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf


def make_trainer(recipe, run, peft_model, tokenizer, train_set, eval_set, callbacks) -> SFTTrainer:
    """TRL's SFTTrainer on our (Peft)Model (no peft_config), after checking truncation kept some rows."""
    trainer = SFTTrainer(
        model=peft_model,
        args=trainer_arguments(recipe, run, eval_set is not None, peft_model.dtype),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=callbacks + methods.callbacks(peft_model, recipe.adapter),
        optimizers=(methods.optimizer(peft_model, recipe), None),
    )
    trainer.remove_callback(PrinterCallback)
    if getattr(peft_model, "is_quantized", False):
        # TRL casts a quantized model's trainable parameters to bfloat16; keep them float32 as PEFT makes them
        # (the optimizer's master copy), matching the frozen factors, which TRL does not see (they are buffers).
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    check_truncation(len(train_set), len(trainer.train_dataset), "train", recipe.data.max_length)
    if eval_set is not None:
        check_truncation(len(eval_set), len(trainer.eval_dataset), "eval", recipe.data.max_length)
    return trainer


def eval_metrics(trainer: SFTTrainer, eval_set: datasets.Dataset) -> dict[str, float]:
    loss = trainer.evaluate()["eval_loss"]
    return {"eval_loss": loss, "eval_perplexity": perplexity(loss), "eval_rows": len(eval_set)}


def run(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """Train per `recipe`, save the adapter into `run`, and return the final metrics."""
    started = time.perf_counter()
    set_seed(recipe.seed)
    train_set, eval_set = build_datasets(recipe)  # data errors first: they come in seconds, the model in minutes
    model, tokenizer = load_causal_lm(recipe.model, console.print)
    peft_model, counts = prepare_model(model, recipe, "CAUSAL_LM", len(train_set))
    console.print(f"data: {len(train_set)} train rows, {len(eval_set) if eval_set is not None else 0} eval rows")

    first_step = TimeToFirstStepCallback(started, run)
    trainer = make_trainer(recipe, run, peft_model, tokenizer, train_set, eval_set, run_callbacks(run, first_step))
    before = None
    if eval_set is not None:
        eval_started = time.perf_counter()
        untrained = evaluate_before_training(trainer)
        before = untrained["eval_loss"] if untrained else None
        first_step.exclude(time.perf_counter() - eval_started)
    result = train(trainer, run)
    save_trained(trainer, peft_model, recipe, run)

    tokens = getattr(trainer, "_total_train_tokens", None)  # TRL's count of non-padding training tokens
    runtime = result.metrics.get("train_runtime")
    metrics: dict[str, Any] = {
        **training_metrics(result, first_step, len(train_set)),
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / runtime if tokens and runtime else None,
    }
    if eval_set is not None:
        metrics.update(eval_loss_before=before, **eval_metrics(trainer, eval_set))
    metrics["parameters"] = counts.as_dict()
    return metrics


def evaluate(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """Re-run the task metrics of a finished run: eval loss and perplexity of its saved adapter."""
    set_seed(recipe.seed)
    if recipe.adapter.method != "lora":
        raise DataError(f"{run.path}: re-evaluating method {recipe.adapter.method} is not built yet")
    model, tokenizer = load_causal_lm(recipe.model, console.print)
    peft_model = lora.load_adapter(model, run.adapter_dir)
    train_set, eval_set = build_datasets(recipe)
    if eval_set is None:
        raise DataError(f"{run.path}: the recipe has no evaluation data (data.eval or data.eval_fraction)")
    trainer = make_trainer(recipe, run, peft_model, tokenizer, train_set, eval_set, [])
    return eval_metrics(trainer, eval_set)
