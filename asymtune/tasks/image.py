"""`task: image` — image classification with domain generalization (DomainBed protocol).

Trains on `data.train_envs` (80% of their images), then reports accuracy on the training split,
the in-domain test split (the other 20%) and every other environment (out of domain), the OOD
mean, and the train−test gap per environment (the paper's Table 10). Metric keys are prefixed by
the dataset folder's name, e.g. `vlcs_id_acc`, `vlcs_ood_acc`, `vlcs_caltech101_gap`.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
)

from asymtune.assets import cache_dir
from asymtune.data.domainbed import DomainSplit, coloured_digits, rotated_digits, split
from asymtune.data.sources import DataError
from asymtune.evaluation.metrics import accuracy
from asymtune.models import label_maps, load_pretrained
from asymtune.recipe import Recipe
from asymtune.report import console
from asymtune.tasks.base import TaskFamily

FEW_TEST_IMAGES = 5  # per class: fewer make the in-domain accuracy a coin toss
BUILT_IN = {
    "rotated-digits": lambda: rotated_digits(cache_dir() / "datasets" / "rotated-digits", log=console.print),
    "coloured-digits": lambda: coloured_digits(cache_dir() / "datasets" / "coloured-digits", log=console.print),
}


class ImageItems(torch.utils.data.Dataset):
    """(path, label) pairs turned into the model's pixel_values by its own image processor."""

    def __init__(self, items: list[tuple[Path, int]], processor) -> None:
        self.items, self.processor = items, processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "labels": label}


def head_name(model) -> str:
    """The classification head trained in full: timm's pretrained_cfg names it inside the TimmWrapper
    (`timm_model.classifier`, `timm_model.head`); transformers' own image models call it `classifier`."""
    pretrained_cfg = getattr(model.config, "pretrained_cfg", None)
    return f"timm_model.{pretrained_cfg['classifier']}" if pretrained_cfg else "classifier"


def resized_processor(processor, model, size: int):
    """The timm model's own preprocessing (interpolation, crop ratio, normalization) at size×size input."""
    pretrained_cfg = getattr(model.config, "pretrained_cfg", None)
    if not pretrained_cfg:
        raise DataError(
            f"data.image_size: only timm models take another input size; {type(model).__name__} uses its own"
        )
    if pretrained_cfg.get("fixed_input_size"):
        raise DataError(f"data.image_size: {model.config.architecture} has a fixed input size")
    return type(processor)(
        pretrained_cfg={**pretrained_cfg, "input_size": (3, size, size)}, architecture=model.config.architecture
    )


def dataset_root(recipe: Recipe) -> Path:
    builder = BUILT_IN.get(recipe.data.train)
    return builder() if builder else Path(recipe.data.train)


def metric_prefix(root: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_")


def domain_metrics(prefix: str, train_acc: float, id_acc: float, ood: dict[str, float]) -> dict[str, float]:
    """Table 5/8/10's numbers: train, ID and per-environment OOD accuracy, OOD mean, train−test gaps."""
    env_key = {env: re.sub(r"[^a-z0-9]+", "_", env.lower()).strip("_") for env in ood}
    metrics = {f"{prefix}_train_acc": train_acc, f"{prefix}_id_acc": id_acc, f"{prefix}_id_gap": train_acc - id_acc}
    for env, acc in ood.items():
        metrics[f"{prefix}_{env_key[env]}_acc"] = acc
        metrics[f"{prefix}_{env_key[env]}_gap"] = train_acc - acc
    if ood:
        metrics[f"{prefix}_ood_acc"] = statistics.fmean(ood.values())
    return metrics


class ImageClassification(TaskFamily):
    """The HF Trainer on image files through the model's own processor; metrics: train, ID, OOD accuracy, gaps."""

    def load_data(self, recipe: Recipe) -> DomainSplit:
        data = split(dataset_root(recipe), recipe.data.train_envs, recipe.split_seed, recipe.data.eval_fraction,
                     recipe.data.class_map, recipe.data.validation_fraction, recipe.data.test_envs)
        if data.skipped:
            console.print(
                f"[yellow]warning:[/yellow] skipped {len(data.skipped)} unreadable image(s): "
                + ", ".join(str(p) for p in data.skipped[:3])
            )
        per_class = Counter(label for _, label in data.id_test)
        thin = [data.classes[i] for i in range(len(data.classes)) if per_class[i] < FEW_TEST_IMAGES]
        if thin:
            console.print(f"[yellow]warning:[/yellow] the in-domain test split holds fewer than {FEW_TEST_IMAGES} "
                          f"images of class(es) {', '.join(thin[:5])}{' …' if len(thin) > 5 else ''} "
                          f"({len(data.id_test)} in all): its accuracy says little; raise data.eval_fraction or "
                          "add images")
        return data

    def train_rows(self, data: DomainSplit) -> int:
        return len(data.train)

    def describe(self, data: DomainSplit) -> str:
        return (f"data: {len(data.classes)} classes; train {len(data.train)}, in-domain test {len(data.id_test)}"
                + (f", validation {len(data.validation)}" if data.validation else "") + "; "
                + ", ".join(f"{env} {len(items)}" for env, items in data.ood.items()))

    def load_model(self, recipe: Recipe, labels: list[str] | None):
        model, processor = load_pretrained(
            recipe.model, "an image classifier", AutoModelForImageClassification, AutoImageProcessor, console.print,
            num_labels=len(labels), **label_maps(labels), ignore_mismatched_sizes=True,
        )
        if recipe.data.image_size:
            processor = resized_processor(processor, model, recipe.data.image_size)
        return model, processor

    def heads(self, model) -> list[str]:
        return [head_name(model)]

    def labels(self, data: DomainSplit) -> list[str]:
        return data.classes

    def make_trainer(self, recipe, model, processor, data: DomainSplit, options, callbacks, optimizers) -> Trainer:
        return Trainer(
            model=model, args=TrainingArguments(**options, remove_unused_columns=False),
            train_dataset=ImageItems(data.train, processor),
            compute_metrics=lambda p: {"accuracy": accuracy(np.argmax(p.predictions, axis=-1), p.label_ids)},
            callbacks=callbacks, optimizers=optimizers,
        )

    def metrics(self, trainer, model, processor, data: DomainSplit, recipe, run) -> dict[str, Any]:
        def evaluate(items: list[tuple[Path, int]], name: str) -> float:
            scores = trainer.evaluate(eval_dataset=ImageItems(items, processor), metric_key_prefix=name)
            return scores[f"{name}_accuracy"]

        ood = {env: evaluate(items, env) for env, items in data.ood.items()}
        prefix = metric_prefix(dataset_root(recipe))
        validation = {f"{prefix}_validation_acc": evaluate(data.validation, "validation")} if data.validation else {}
        return {
            "skipped_images": len(data.skipped),
            **domain_metrics(prefix, evaluate(data.train, "train"), evaluate(data.id_test, "id"), ood),
            **validation,
        }


FAMILY = ImageClassification()
