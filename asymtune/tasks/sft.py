"""`task: sft` — instruction tuning of a causal LM with TRL's SFTTrainer on an asymmetric adapter."""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
from transformers import EarlyStoppingCallback
from trl import SFTConfig, SFTTrainer

from asymtune.data.formats import to_prompt_completion
from asymtune.data.sources import DataError, load_table
from asymtune.data.splits import train_eval_split
from asymtune.models import load_causal_lm
from asymtune.recipe import Recipe
from asymtune.report import console
from asymtune.tasks.base import TaskFamily, evaluate_before_training


def build_datasets(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and eval splits of the recipe's data, as prompt/completion columns."""
    spec = recipe.data

    def read(ref: str, split: str) -> datasets.Dataset:
        return to_prompt_completion(load_table(ref, split, console.print, encoding=spec.encoding), spec.format, ref)

    train = read(spec.train, spec.split)
    held_out = read(spec.eval, "validation") if spec.eval is not None else None
    return train_eval_split(
        train, held_out, spec.eval_fraction, recipe.seed, spec.max_train_samples, spec.max_eval_samples
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


def sequences(dataset: datasets.Dataset) -> int:
    """Rows in a tokenized split: each pack of a packed split counts the rows it holds."""
    if "seq_lengths" in dataset.column_names:
        return sum(len(lengths) for lengths in dataset["seq_lengths"])
    return len(dataset)


class PaddingCount:
    """Token positions the model computed while training and how many of them were padding (a forward pre-hook
    on the model; evaluation passes are not counted)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.positions = self.padding = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if module.training and ids is not None:
            self.positions += ids.numel()
            self.padding += ids.numel() - int(mask.sum()) if mask is not None else 0  # padding-free: none

    @property
    def percent(self) -> float | None:
        return 100.0 * self.padding / self.positions if self.positions else None


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf


class InstructionTuning(TaskFamily):
    """TRL's SFTTrainer on prompt/completion rows; metrics: eval loss and perplexity, before and after."""

    task_type = "CAUSAL_LM"

    def load_data(self, recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        return build_datasets(recipe)

    def train_rows(self, data) -> int:
        return len(data[0])

    def describe(self, data) -> str:
        train_set, eval_set = data
        return f"data: {len(train_set)} train rows, {len(eval_set) if eval_set is not None else 0} eval rows"

    def load_model(self, recipe: Recipe, labels):
        return load_causal_lm(recipe.model, console.print)

    def make_trainer(self, recipe, model, processor, data, options, callbacks, optimizers) -> SFTTrainer:
        """SFTTrainer on our (Peft)Model (no peft_config), after checking truncation kept some rows."""
        train_set, eval_set = data
        periodic_eval = eval_set is not None and recipe.train.eval_steps is not None
        best = recipe.train.early_stopping_patience is not None or recipe.train.keep_best
        if recipe.train.early_stopping_patience is not None:
            callbacks = [*callbacks, EarlyStoppingCallback(recipe.train.early_stopping_patience)]
        args = SFTConfig(
            **{**options, "eval_strategy": "steps" if periodic_eval else "no", "average_tokens_across_devices": True},
            eval_steps=recipe.train.eval_steps if periodic_eval else None,
            max_length=recipe.data.max_length,
            completion_only_loss=recipe.data.completion_only_loss,
            packing=recipe.data.packing,  # best-fit-decreasing packs, padding-free: position ids restart per row
            eval_packing=False,  # eval loss over the same rows, packed or not
            metric_for_best_model="eval_loss" if best else None,
            greater_is_better=False if best else None,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                             processing_class=processor, callbacks=callbacks, optimizers=optimizers)
        trainer.padding_count = PaddingCount(model)
        if getattr(model, "is_quantized", False):
            # TRL casts a quantized model's trainable parameters to bfloat16; keep them float32 as PEFT makes them
            # (the optimizer's master copy), matching the frozen factors, which TRL does not see (they are buffers).
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        check_truncation(len(train_set), sequences(trainer.train_dataset), "train", recipe.data.max_length)
        if eval_set is not None:
            check_truncation(len(eval_set), sequences(trainer.eval_dataset), "eval", recipe.data.max_length)
        if recipe.data.packing:
            console.print(f"packing: {sequences(trainer.train_dataset)} train rows in {len(trainer.train_dataset)} "
                          f"sequences of at most {recipe.data.max_length} tokens")
        return trainer

    def before_training(self, trainer, data) -> dict[str, Any]:
        if data[1] is None:
            return {}
        untrained = evaluate_before_training(trainer)
        return {"eval_loss_before": untrained["eval_loss"] if untrained else None}

    def metrics(self, trainer, model, processor, data, recipe, run) -> dict[str, Any]:
        tokens = getattr(trainer, "_total_train_tokens", None)  # TRL's count of non-padding training tokens
        runtime = next((log["train_runtime"] for log in reversed(trainer.state.log_history) if "train_runtime" in log),
                       None)
        metrics: dict[str, Any] = {}
        if tokens:  # only a trainer that trained has counted tokens
            metrics = {"train_tokens": tokens, "train_tokens_per_s": tokens / runtime if runtime else None}
        if trainer.padding_count.percent is not None:
            metrics["train_padding_percent"] = trainer.padding_count.percent
        eval_set = data[1]
        if eval_set is not None:
            loss = trainer.evaluate()["eval_loss"]
            metrics.update(eval_loss=loss, eval_perplexity=perplexity(loss), eval_rows=len(eval_set))
        return metrics


FAMILY = InstructionTuning()
