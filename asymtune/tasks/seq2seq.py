"""`task: seq2seq` — summarization with `Seq2SeqTrainer`, evaluated by beam search and ROUGE.

XSum (document -> summary) and CNN/DailyMail 3.0.0 (article -> highlights) are built in; other
data names its `source_field` and `target_field`. Predictions go to RUN/eval/predictions.jsonl.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from rich.progress import track
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PrinterCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from asymtune import atomic
from asymtune.adapters import methods
from asymtune.callbacks import TimeToFirstStepCallback
from asymtune.data.sources import DataError, load_table
from asymtune.data.splits import train_eval_split
from asymtune.evaluation.metrics import rouge
from asymtune.models import load_pretrained
from asymtune.recipe import Recipe
from asymtune.report import console
from asymtune.runs import RunDir
from asymtune.tasks.base import prepare_model, run_callbacks, save_trained, train, trainer_options, training_metrics


@dataclass(frozen=True)
class Summarization:
    hub_id: str
    config: str | None
    source: str
    target: str
    eval_split: str


BUILT_IN = {
    "xsum": Summarization("EdinburghNLP/xsum", None, "document", "summary", "validation"),
    "cnn_dailymail": Summarization("abisee/cnn_dailymail", "3.0.0", "article", "highlights", "validation"),
}


def load_pairs(recipe: Recipe) -> tuple[datasets.Dataset, datasets.Dataset, str, str, str]:
    """(train, eval, source column, target column, metric prefix) after checking the columns exist."""
    spec = recipe.data
    built_in = BUILT_IN.get(spec.summarization) if spec.summarization else None
    source = spec.source_field or built_in.source
    target = spec.target_field or built_in.target
    train_ref = spec.train
    config = spec.config or (built_in.config if built_in and train_ref == built_in.hub_id else None)
    train = load_table(train_ref, spec.split, console.print, config)
    if isinstance(spec.eval, dict):
        raise DataError("data.eval: task seq2seq takes one held-out file or hub id, not a mapping")
    held_out = None
    if spec.eval is not None:
        held_out = load_table(spec.eval, "validation", console.print)
    elif built_in and spec.eval_fraction == 0 and train_ref == built_in.hub_id:
        held_out = load_table(train_ref, built_in.eval_split, console.print, config)
    for table, name in ((train, train_ref), (held_out, spec.eval or train_ref)):
        if table is not None:
            missing = [c for c in (source, target) if c not in table.column_names]
            if missing:
                raise DataError(f"{name}: missing column(s) {', '.join(missing)}; the data has "
                                f"{', '.join(table.column_names)} (set data.source_field / data.target_field)")
    train, held_out = train_eval_split(train, held_out, spec.eval_fraction, recipe.seed,
                                       spec.max_train_samples, spec.max_eval_samples)
    if held_out is None:
        raise DataError("task seq2seq needs evaluation data: data.eval or data.eval_fraction")
    prefix = spec.summarization or "eval"
    return train, held_out, source, target, prefix


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


def run(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """Train a summarizer per `recipe`, write predictions and ROUGE, save the adapter into `run`."""
    started = time.perf_counter()
    set_seed(recipe.seed)
    train_pairs, eval_pairs, source, target, prefix = load_pairs(recipe)
    model, tokenizer = load_pretrained(
        recipe.model, "a seq2seq model", AutoModelForSeq2SeqLM, AutoTokenizer, console.print
    )
    peft_model, counts = prepare_model(model, recipe, "SEQ_2_SEQ_LM", len(train_pairs))

    def tokenize(batch):
        encoded = tokenizer(batch[source], max_length=recipe.data.max_length, truncation=True)
        encoded["labels"] = tokenizer(text_target=batch[target], max_length=recipe.data.max_target_length,
                                      truncation=True)["input_ids"]
        return encoded

    train_set = train_pairs.map(tokenize, batched=True, remove_columns=train_pairs.column_names, desc="tokenizing")
    console.print(f"data: {len(train_set)} train pairs, {len(eval_pairs)} eval pairs")
    args = Seq2SeqTrainingArguments(**trainer_options(recipe, run, model.dtype))
    first_step = TimeToFirstStepCallback(started, run)
    trainer = Seq2SeqTrainer(
        model=peft_model, args=args, train_dataset=train_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        callbacks=[*run_callbacks(run, first_step), *methods.callbacks(peft_model, recipe.adapter)],
        optimizers=(methods.optimizer(peft_model, recipe), None),
    )
    trainer.remove_callback(PrinterCallback)
    result = train(trainer, run)
    save_trained(trainer, peft_model, recipe, run)

    predictions = generate(peft_model, tokenizer, eval_pairs[source], recipe)
    references = eval_pairs[target]
    lines = (json.dumps({"source": s, "reference": r, "prediction": p})
             for s, r, p in zip(eval_pairs[source], references, predictions, strict=True))
    atomic.write_text(run.path / "eval" / "predictions.jsonl", "\n".join(lines) + "\n")
    scores = rouge(predictions, references)
    metrics: dict[str, Any] = {
        **training_metrics(result, first_step, len(train_set)),
        "eval_rows": len(eval_pairs),
        **{f"{prefix}_{name}": value for name, value in scores.items()},
    }
    metrics["parameters"] = counts.as_dict()
    return metrics
