"""`task: sft` — instruction tuning of a causal LM with TRL's SFTTrainer on an asymmetric adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class SftData:
    """Prompt/completion rows: the (mixed) training set, the eval set (every source's together) and, for a mix of
    sources, each source's eval set by its label."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    by_source: dict[str, datasets.Dataset] = field(default_factory=dict)
    validation: datasets.Dataset | None = None


def build_datasets(recipe: Recipe) -> SftData:
    """Train and eval splits of the recipe's data; several sources are split each on its own (eval rows drawn per
    source), then mixed: each row once when the weights are equal, else drawn in proportion to the weights until
    every source has given every row (datasets' interleave, seeded; lighter sources repeat)."""
    spec = recipe.data

    def read(ref: str, split: str, fmt: str, config: str | None = None) -> datasets.Dataset:
        table = load_table(ref, split, console.print, config=config, encoding=spec.encoding)
        return to_prompt_completion(table, fmt, ref)

    if isinstance(spec.train, str):
        train = read(spec.train, spec.split, spec.format, spec.config)
        held_out = read(spec.eval, "validation", spec.format) if spec.eval is not None else None
        train, held_out = train_eval_split(train, held_out, spec.eval_fraction, recipe.split_seed, None,
                                           spec.max_eval_samples)
        train, validation = train_eval_split(train, None, spec.validation_fraction, recipe.split_seed,
                                             spec.max_train_samples, spec.max_eval_samples)
        return SftData(train, held_out, validation=validation)
    trains, evals = {}, {}
    for source in spec.train:
        fmt = source.format or spec.format
        held_out = read(source.eval, "validation", fmt) if source.eval is not None else None
        train, held = train_eval_split(read(source.train, source.split, fmt, source.config), held_out,
                                       spec.eval_fraction, recipe.split_seed, None, spec.max_eval_samples)
        trains[source.label] = train
        if held is not None:
            evals[source.label] = held
    weights = [source.weight for source in spec.train]
    if len(set(weights)) == 1:
        mixed = datasets.concatenate_datasets(list(trains.values())).shuffle(seed=recipe.seed)
    else:
        mixed = datasets.interleave_datasets(list(trains.values()), [w / sum(weights) for w in weights],
                                             seed=recipe.seed, stopping_strategy="all_exhausted")
    if spec.max_train_samples is not None:
        mixed = mixed.select(range(min(spec.max_train_samples, len(mixed))))
    overall = datasets.concatenate_datasets(list(evals.values())) if evals else None
    return SftData(mixed, overall, evals)


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

    @property
    def tokens(self) -> int:
        """Non-padding training tokens this process computed."""
        return self.positions - self.padding


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf where that overflows."""
    return math.exp(loss) if loss < 700 else math.inf


class InstructionTuning(TaskFamily):
    """TRL's SFTTrainer on prompt/completion rows; metrics: eval loss and perplexity, before and after."""

    task_type = "CAUSAL_LM"

    def load_data(self, recipe: Recipe) -> SftData:
        return build_datasets(recipe)

    def train_rows(self, data: SftData) -> int:
        return len(data.train)

    def describe(self, data: SftData) -> str:
        line = f"data: {len(data.train)} train rows, {len(data.eval) if data.eval is not None else 0} eval rows"
        if data.by_source:
            line += " (" + ", ".join(f"{name} {len(rows)}" for name, rows in data.by_source.items()) + ")"
        return line

    def load_model(self, recipe: Recipe, labels):
        return load_causal_lm(recipe.model, console.print)

    def make_trainer(self, recipe, model, processor, data, options, callbacks, optimizers) -> SFTTrainer:
        """SFTTrainer on our (Peft)Model (no peft_config), after checking truncation kept some rows."""
        train_set, eval_set = data.train, data.eval
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

    def before_training(self, trainer, data: SftData) -> dict[str, Any]:
        if data.eval is None:
            return {}
        untrained = evaluate_before_training(trainer)
        return {"eval_loss_before": untrained["eval_loss"] if untrained else None}

    def metrics(self, trainer, model, processor, data, recipe, run) -> dict[str, Any]:
        local = torch.tensor(trainer.padding_count.tokens, device=trainer.accelerator.device)
        tokens = int(trainer.accelerator.reduce(local, reduction="sum").item())  # every process's tokens
        runtime = next((log["train_runtime"] for log in reversed(trainer.state.log_history) if "train_runtime" in log),
                       None)
        metrics: dict[str, Any] = {}
        if tokens:  # only a trainer that trained has counted tokens
            metrics = {"train_tokens": tokens, "train_tokens_per_s": tokens / runtime if runtime else None}
        if trainer.padding_count.percent is not None:
            metrics["train_padding_percent"] = trainer.padding_count.percent
        if data.eval is not None:
            loss = trainer.evaluate()["eval_loss"]
            metrics.update(eval_loss=loss, eval_perplexity=perplexity(loss), eval_rows=len(data.eval))
        if data.validation is not None:
            metrics["validation_loss"] = trainer.evaluate(eval_dataset=data.validation,
                                                          metric_key_prefix="validation")["validation_loss"]
        for name, rows in data.by_source.items():  # each source's own eval loss, beside the overall one
            metrics[f"eval_{name}_loss"] = trainer.evaluate(eval_dataset=rows, metric_key_prefix=f"eval_{name}")[
                f"eval_{name}_loss"]
        return metrics


FAMILY = InstructionTuning()
