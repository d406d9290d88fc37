"""`task: seq2seq` — summarization with `Seq2SeqTrainer`, evaluated by beam search and ROUGE.

XSum (document -> summary) and CNN/DailyMail 3.0.0 (article -> highlights) are built in; other
data names its `source_field` and `target_field`. Predictions go to RUN/eval/predictions.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from rich.progress import track
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from asymtune import atomic
from asymtune.data.sources import DataError, load_table, require_columns, require_text
from asymtune.data.splits import train_eval_split
from asymtune.evaluation.metrics import rouge
from asymtune.models import load_pretrained
from asymtune.recipe import Recipe
from asymtune.report import console
from asymtune.tasks.base import TaskFamily


@dataclass(frozen=True)
class BuiltIn:
    hub_id: str
    config: str | None
    source: str
    target: str
    eval_split: str


BUILT_IN = {
    "xsum": BuiltIn("EdinburghNLP/xsum", None, "document", "summary", "validation"),
    "cnn_dailymail": BuiltIn("abisee/cnn_dailymail", "3.0.0", "article", "highlights", "validation"),
}


@dataclass(frozen=True)
class Pairs:
    """Train and eval tables, their source and target columns, and the metric prefix (xsum, cnn_dailymail, eval)."""

    train: datasets.Dataset
    eval: datasets.Dataset
    source: str
    target: str
    prefix: str


def load_pairs(recipe: Recipe) -> Pairs:
    """The recipe's train and eval pairs after checking the columns exist."""
    spec = recipe.data
    built_in = BUILT_IN.get(spec.summarization) if spec.summarization else None
    source = spec.source_field or built_in.source
    target = spec.target_field or built_in.target
    train_ref = spec.train
    config = spec.config or (built_in.config if built_in and train_ref == built_in.hub_id else None)
    train = load_table(train_ref, spec.split, console.print, config, encoding=spec.encoding)
    held_out = None
    if spec.eval is not None:
        held_out = load_table(spec.eval, "validation", console.print, encoding=spec.encoding)
    elif built_in and spec.eval_fraction == 0 and train_ref == built_in.hub_id:
        held_out = load_table(train_ref, built_in.eval_split, console.print, config, encoding=spec.encoding)
    for table, name in ((train, train_ref), (held_out, spec.eval or train_ref)):
        if table is not None:
            require_columns(table, (source, target), name, hint=" (set data.source_field / data.target_field)")
            require_text(table, (source, target), name)  # checked before splitting, so row N is the file's row N
    train, held_out = train_eval_split(train, held_out, spec.eval_fraction, recipe.split_seed,
                                       spec.max_train_samples, spec.max_eval_samples)
    if held_out is None:
        raise DataError("task seq2seq needs evaluation data: data.eval or data.eval_fraction")
    return Pairs(train, held_out, source, target, spec.summarization or "eval")


def generate(model, tokenizer, sources: list[str], recipe: Recipe) -> list[str]:
    """Beam-search outputs for `sources`, batch by batch, with the recipe's generation settings."""
    settings = recipe.generation
    model.eval()
    outputs: list[str] = []
    batches = range(0, len(sources), settings.batch_size)
    for start in track(batches, description="generating", console=console):
        batch = tokenizer(sources[start : start + settings.batch_size], max_length=recipe.data.max_length,
                          truncation=True, padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            tokens = model.generate(
                **batch, num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens,
                length_penalty=settings.length_penalty, no_repeat_ngram_size=settings.no_repeat_ngram_size,
            )
        outputs += tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return outputs


class Summarization(TaskFamily):
    """Seq2SeqTrainer on source/target pairs; metrics: ROUGE of beam-search outputs on the eval pairs."""

    task_type = "SEQ_2_SEQ_LM"

    def load_data(self, recipe: Recipe) -> Pairs:
        return load_pairs(recipe)

    def train_rows(self, data: Pairs) -> int:
        return len(data.train)

    def describe(self, data: Pairs) -> str:
        return f"data: {len(data.train)} train pairs, {len(data.eval)} eval pairs"

    def load_model(self, recipe: Recipe, labels):
        return load_pretrained(recipe.model, "a seq2seq model", AutoModelForSeq2SeqLM, AutoTokenizer, console.print)

    def make_trainer(self, recipe, model, processor, data: Pairs, options, callbacks, optimizers) -> Seq2SeqTrainer:
        def tokenize(batch):
            encoded = processor(batch[data.source], max_length=recipe.data.max_length, truncation=True)
            encoded["labels"] = processor(text_target=batch[data.target], max_length=recipe.data.max_target_length,
                                          truncation=True)["input_ids"]
            return encoded

        train_set = data.train.map(tokenize, batched=True, remove_columns=data.train.column_names, desc="tokenizing")
        return Seq2SeqTrainer(
            model=model, args=Seq2SeqTrainingArguments(**options), train_dataset=train_set,
            data_collator=DataCollatorForSeq2Seq(processor, model=model), callbacks=callbacks, optimizers=optimizers,
        )

    def metrics(self, trainer, model, processor, data: Pairs, recipe, run) -> dict[str, Any]:
        """ROUGE of the eval pairs' summaries; every prediction goes to RUN/eval/predictions.jsonl."""
        sources, references = data.eval[data.source], data.eval[data.target]
        predictions = generate(model, processor, sources, recipe)
        lines = (json.dumps({"source": s, "reference": r, "prediction": p})
                 for s, r, p in zip(sources, references, predictions, strict=True))
        atomic.write_text(run.path / "eval" / "predictions.jsonl", "\n".join(lines) + "\n")
        scores = rouge(predictions, references)
        return {"eval_rows": len(data.eval), **{f"{data.prefix}_{name}": value for name, value in scores.items()}}


FAMILY = Summarization()
