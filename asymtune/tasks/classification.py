"""`task: classification` — sequence classification / regression with the HF Trainer.

GLUE tasks are built in (columns, label count, validation splits, metrics); other data names its
input columns (`data.text_fields`) and label column (`data.label_field`). The classifier head is
new, so it is always trained (PEFT's `modules_to_save` for SEQ_CLS) and counted as `other`.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from asymtune.data.glue import GLUE, GLUE_HUB_ID, GlueTask
from asymtune.data.sources import DataError, load_table, require_columns, require_text
from asymtune.data.splits import train_eval_split
from asymtune.evaluation import metrics as m
from asymtune.models import label_maps, load_pretrained, with_pad_token
from asymtune.recipe import DataSpec, Recipe
from asymtune.report import console
from asymtune.tasks.base import TaskFamily

CUSTOM_METRICS = {"accuracy": m.accuracy, "macro_f1": m.macro_f1}


class LabelledData:
    """Train and named eval splits with integer (or float, for regression) labels in column `labels`."""

    def __init__(self, recipe: Recipe) -> None:
        spec = recipe.data
        self.label_field = spec.label_field
        self.glue: GlueTask | None = GLUE.get(spec.glue_task) if spec.glue_task else None
        self.text_fields = input_fields(spec)
        self.regression = bool(self.glue and self.glue.is_regression)
        config = spec.config or (spec.glue_task if spec.train == GLUE_HUB_ID else None)

        def read(ref: str, split: str, hub_config: str | None = None, name: str | None = None) -> datasets.Dataset:
            return self._check(load_table(ref, split, console.print, hub_config, spec.encoding), name or ref)

        train = read(spec.train, spec.split, config)
        held_out: dict[str, datasets.Dataset] = {}
        one_eval = "test" if spec.validation_fraction else "validation"  # the validation split is then train's
        if isinstance(spec.eval, dict):
            held_out = {name: read(ref, "validation") for name, ref in spec.eval.items()}
        elif spec.eval is not None:
            held_out = {one_eval: read(spec.eval, "validation")}
        elif self.glue and spec.eval_fraction == 0 and spec.train == GLUE_HUB_ID:
            held_out = {split: read(spec.train, split, config, f"{spec.train}:{split}")
                        for split in self.glue.eval_splits}
        stratify = spec.label_field if isinstance(train.features[spec.label_field], datasets.ClassLabel) else None
        if held_out:
            held_out = {name: train_eval_split(table, None, 0.0, recipe.split_seed, spec.max_eval_samples)[0]
                        for name, table in held_out.items()}
        else:
            train, split_off = train_eval_split(train, None, spec.eval_fraction, recipe.split_seed, None,
                                                spec.max_eval_samples, stratify)
            held_out = {one_eval: split_off} if split_off is not None else {}
        train, validation = train_eval_split(train, None, spec.validation_fraction, recipe.split_seed,
                                             spec.max_train_samples, spec.max_eval_samples, stratify)
        if validation is not None:
            if "validation" in held_out:
                raise DataError("data.eval names a set 'validation', and data.validation_fraction splits off "
                                "another: rename the data.eval entry")
            held_out["validation"] = validation
        self.label_names = self._label_names(train, spec.label_field)
        if not self.regression and len(self.label_names) < 2:
            raise DataError(f"{spec.train}: label column {spec.label_field!r} holds {len(self.label_names)} class(es) "
                            f"({', '.join(self.label_names)}) in the training split; classification needs at least "
                            "two (is data.label_field the right column?)")
        self.train = self._encode_labels(train, spec.label_field, spec.train)
        self.eval = {name: self._encode_labels(t, spec.label_field, name) for name, t in held_out.items()}

    def _check(self, table: datasets.Dataset, source: str) -> datasets.Dataset:
        require_columns(table, [*self.text_fields, self.label_field], source,
                        hint=" (set data.text_fields / data.label_field)")
        require_text(table, self.text_fields, source)  # before any shuffling or splitting: row N is the file's
        if not isinstance(table.features[self.label_field], datasets.ClassLabel):
            check = self._score if self.regression else self._class_index if self.glue else self._class_name
            for row, value in enumerate(table[self.label_field]):
                check(value, row, source)
        return table

    def _class_name(self, value, row: int, source: str) -> None:
        """Labels of your own data are names or integers; nulls and fractional numbers are not classes."""
        field = self.label_field
        if value is None:
            raise DataError(f"{source}: row {row}: label column {field!r} is empty (null); every row needs a label")
        if isinstance(value, float) and not value.is_integer():
            raise DataError(f"{source}: row {row}: label {value!r} in column {field!r} looks continuous, not a class; "
                            "classification of your own data needs class names or integers")
        if not isinstance(value, (str, int, float)):
            raise DataError(f"{source}: row {row}: label column {field!r} holds a {type(value).__name__}, "
                            "not a class name")

    def _label_names(self, train: datasets.Dataset, field: str) -> list[str]:
        if self.regression:
            return []
        feature = train.features[field]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names)
        if self.glue:
            return [str(index) for index in range(self.glue.num_labels)]
        return sorted({str(value) for value in train[field]})

    def _score(self, value, row: int, source: str) -> float:
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"{source}: row {row}: label {value!r} is not a number (a regression task)") from None

    def _class_index(self, value, row: int, source: str) -> int:
        """GLUE labels are class indices 0 … num_labels-1."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < self.glue.num_labels:
            return value
        raise DataError(f"{source}: row {row}: label {value!r} is not a class index 0-{self.glue.num_labels - 1} "
                        f"of GLUE {self.glue.name}")

    def _encode_labels(self, table: datasets.Dataset, field: str, source: str) -> datasets.Dataset:
        values = table[field]
        if self.regression:
            labels = [float(value) for value in values]  # _check made sure they are numbers
        elif isinstance(table.features[field], datasets.ClassLabel) or self.glue:  # GLUE: checked class indices
            labels = list(values)
        else:
            index = {name: i for i, name in enumerate(self.label_names)}
            labels = []
            for row, value in enumerate(values):
                if str(value) not in index:
                    shown = ", ".join(self.label_names[:5]) + (f", … ({len(self.label_names)} in all)"
                                                               if len(self.label_names) > 5 else "")
                    raise DataError(f"{source}: row {row}: label {value!r} is not one of the training labels {shown}")
                labels.append(index[str(value)])
        return table.remove_columns([c for c in table.column_names if c not in self.text_fields]).add_column(
            "labels", labels
        )


def compute_metrics_for(glue: GlueTask | None, regression: bool):
    metric_functions = glue.metrics if glue else CUSTOM_METRICS

    def compute(prediction) -> dict[str, float]:
        logits, labels = prediction.predictions, prediction.label_ids
        predicted = logits.squeeze(-1) if regression else np.argmax(logits, axis=-1)
        return {name: function(predicted, labels) for name, function in metric_functions.items()}

    return compute


class Classification(TaskFamily):
    """The HF Trainer on tokenized text pairs; metrics per eval set (GLUE's or accuracy and macro-F1)."""

    task_type = "SEQ_CLS"

    def load_data(self, recipe: Recipe) -> LabelledData:
        return LabelledData(recipe)

    def train_rows(self, data: LabelledData) -> int:
        return len(data.train)

    def describe(self, data: LabelledData) -> str:
        return f"data: {len(data.train)} train rows; eval: " + (
            ", ".join(f"{name} {len(table)}" for name, table in data.eval.items()) or "none"
        )

    def load_model(self, recipe: Recipe, labels: list[str] | None):
        """A classifier over `labels`; a regressor (one output) when there are none (STS-B)."""
        model, tokenizer = load_pretrained(
            recipe.model, "a sequence classifier", AutoModelForSequenceClassification, AutoTokenizer,
            console.print, num_labels=len(labels) if labels else 1,
            problem_type="single_label_classification" if labels else "regression",
            **(label_maps(labels) if labels else {}),
        )
        tokenizer = with_pad_token(tokenizer)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    def labels(self, data: LabelledData) -> list[str] | None:
        return data.label_names or None

    def make_trainer(self, recipe, model, processor, data: LabelledData, options, callbacks, optimizers) -> Trainer:
        return Trainer(
            model=model, args=TrainingArguments(**options),
            train_dataset=tokenized(data.train, processor, data.text_fields, recipe.data.max_length),
            data_collator=DataCollatorWithPadding(processor),
            compute_metrics=compute_metrics_for(data.glue, data.regression), callbacks=callbacks, optimizers=optimizers,
        )

    def metrics(self, trainer, model, processor, data: LabelledData, recipe, run) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        headline_hits = headline_total = 0.0
        for name, table in data.eval.items():
            encoded = tokenized(table, processor, data.text_fields, recipe.data.max_length, name)
            scores = trainer.evaluate(eval_dataset=encoded, metric_key_prefix=f"eval_{name}")
            kept = {k: v for k, v in scores.items()
                    if not k.endswith(("_runtime", "_per_second", "epoch", "_preparation_time"))}
            metrics.update(kept)
            if data.glue:
                headline = scores[f"eval_{name}_{data.glue.headline}"]
                headline_hits, headline_total = headline_hits + headline * len(table), headline_total + len(table)
        if data.glue and headline_total:  # MNLI: accuracy over both validation sets together
            metrics[f"glue_{data.glue.name}"] = headline_hits / headline_total
        return metrics


def input_fields(spec: DataSpec) -> list[str]:
    """The text column(s) a classifier reads: `data.text_fields`, else the GLUE task's."""
    glue = GLUE.get(spec.glue_task) if spec.glue_task else None
    return list(glue.text_fields if glue and not spec.text_fields else spec.text_fields)


def tokenized(table: datasets.Dataset, tokenizer, text_fields: list[str], max_length: int,
              name: str = "train") -> datasets.Dataset:
    """`table`'s text columns tokenized (pairs when there are two; truncated to `max_length`), other columns
    (`labels`) kept: what training, evaluation and `predict` feed the model."""
    def tokenize(batch):
        return tokenizer(*[batch[field] for field in text_fields], truncation=True, max_length=max_length)

    return table.map(tokenize, batched=True, remove_columns=text_fields, desc=f"tokenizing {name}")


FAMILY = Classification()
