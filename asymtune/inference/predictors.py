"""One predictor per task family: an input file (or image folder) in, one result row per input row out, through
the preprocessing training used (the task module's own tokenization, image items, beam search, TRL prompts).

A predictor is a pair: `read(trained, path)` checks the input and returns what `answer(trained, model, processor,
path, inputs, options)` needs — read first, so a bad file is refused before any model is loaded. `answer` returns
`Scored(rows, score)`: `score` is (metric name, value, rows counted) when the input carries the answers (a label
column, a target column, class folders), else None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from rich.progress import track

from asymtune.data.formats import PromptRow
from asymtune.data.sources import DataError, load_table, require_columns, require_text
from asymtune.inference.loading import Trained
from asymtune.inference.sampling import Sampling
from asymtune.report import console


@dataclass(frozen=True)
class Scored:
    rows: list[dict[str, Any]]
    score: tuple[str, float, int] | None


@dataclass(frozen=True)
class Options:
    """Batch size for every task; for causal LMs, how answers are drawn (`generation.Sampling`)."""

    batch_size: int = 8
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Predictor:
    read: Callable[[Trained, Path], Any]
    answer: Callable[[Trained, Any, Any, Path, Any, Options], Scored]


def read_table(trained: Trained, path: Path, columns: list[str]) -> datasets.Dataset:
    """The input file as training reads data files; DataError naming it when it is empty or lacks `columns`."""
    table = load_table(str(path), "train", console.print, encoding=trained.recipe.data.encoding)
    require_columns(table, columns, str(path), f"this {trained.task} run reads")
    if len(table) == 0:
        raise DataError(f"{path}: holds no rows")
    require_text(table, columns, str(path))
    return table


def read_texts(trained: Trained, path: Path) -> datasets.Dataset:
    from asymtune.tasks.classification import input_fields

    return read_table(trained, path, input_fields(trained.recipe.data))


def classify_texts(trained: Trained, model, tokenizer, path: Path, table: datasets.Dataset,
                   options: Options) -> Scored:
    """Each row's class name and the probability of every class (a regressor: its score)."""
    from transformers import DataCollatorWithPadding

    from asymtune.tasks.classification import input_fields, tokenized

    fields = input_fields(trained.recipe.data)
    encoded = tokenized(table.select_columns(fields), tokenizer, fields, trained.recipe.data.max_length, "input")
    collate = DataCollatorWithPadding(tokenizer)
    outputs = []
    for start in track(range(0, len(encoded), options.batch_size), "classifying", console=console):
        batch = collate([encoded[i] for i in range(start, min(start + options.batch_size, len(encoded)))])
        with torch.no_grad():
            outputs.append(model(**batch.to(model.device)).logits.float().cpu())
    logits = torch.cat(outputs)
    inputs = table.select_columns(fields).to_list()
    if not trained.labels:
        return Scored([{**row, "score": float(value)} for row, value in zip(inputs, logits[:, 0], strict=True)], None)
    rows = _labelled(inputs, logits, trained.labels)
    label_field = trained.recipe.data.label_field
    truth = _class_names(table, label_field) if label_field in table.column_names else None
    return Scored(rows, _accuracy(rows, truth))


def read_images(trained: Trained, path: Path) -> list[Path]:
    """`path` itself, or the image files under the folder `path` (recursively, sorted)."""
    from asymtune.data.domainbed import IMAGE_SUFFIXES

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def classify_images(trained: Trained, model, processor, path: Path, files: list[Path], options: Options) -> Scored:
    """Each image's class name and class probabilities; an image in a folder named after a class counts towards
    the accuracy. Unreadable images are skipped and named."""
    from asymtune.tasks.image import ImageItems

    items = ImageItems([(file, -1) for file in files], processor)
    kept, pixels, skipped = [], [], []
    for index in track(range(len(files)), "reading images", console=console):
        try:
            pixels.append(items[index]["pixel_values"])
            kept.append(files[index])
        except OSError:  # PIL's UnidentifiedImageError and truncated files
            skipped.append(files[index])
    if skipped:
        console.print(f"[yellow]warning:[/yellow] skipped {len(skipped)} unreadable image(s): "
                      + ", ".join(str(p) for p in skipped[:3]))
    if not kept:
        raise DataError(f"{path}: none of its {len(files)} image file(s) could be read")
    outputs = []
    for start in track(range(0, len(kept), options.batch_size), "classifying", console=console):
        batch = torch.stack(pixels[start:start + options.batch_size]).to(model.device, model.dtype)
        with torch.no_grad():
            outputs.append(model(pixel_values=batch).logits.float().cpu())
    rows = _labelled([{"image": str(file)} for file in kept], torch.cat(outputs), trained.labels)
    truth = [file.parent.name if file.parent.name in trained.labels else None for file in kept]
    return Scored(rows, _accuracy(rows, truth))


def _source_and_target(trained: Trained) -> tuple[str, str]:
    from asymtune.tasks.seq2seq import BUILT_IN

    spec = trained.recipe.data
    built_in = BUILT_IN.get(spec.summarization) if spec.summarization else None
    return spec.source_field or built_in.source, spec.target_field or built_in.target


def read_sources(trained: Trained, path: Path) -> datasets.Dataset:
    return read_table(trained, path, [_source_and_target(trained)[0]])


def summarize(trained: Trained, model, tokenizer, path: Path, table: datasets.Dataset, options: Options) -> Scored:
    """Each source's generated target, by the recipe's beam search; ROUGE-L against a target column if present."""
    from asymtune.evaluation.metrics import rouge
    from asymtune.tasks.seq2seq import generate

    source, target = _source_and_target(trained)
    recipe = trained.recipe.model_copy(update={"generation": trained.recipe.generation.model_copy(
        update={"batch_size": options.batch_size})})
    sources = list(table[source])
    predictions = generate(model, tokenizer, sources, recipe)
    rows = [{"source": s, "prediction": p} for s, p in zip(sources, predictions, strict=True)]
    references = list(table[target]) if target in table.column_names else []
    if not references or not all(isinstance(t, str) for t in references):
        return Scored(rows, None)
    for row, reference in zip(rows, references, strict=True):
        row["reference"] = reference
    return Scored(rows, ("rougeL", rouge(predictions, references)["rougeL"], len(rows)))


def read_prompts(trained: Trained, path: Path) -> list[PromptRow]:
    """The alpaca, prompt_completion or messages rows of `path`, prompts built as the run trained on them."""
    from asymtune.data.formats import to_prompts

    table = load_table(str(path), "train", console.print, encoding=trained.recipe.data.encoding)
    return to_prompts(table, trained.recipe.data.format, str(path))


def complete_prompts(trained: Trained, model, tokenizer, path: Path, rows: list[PromptRow],
                     options: Options, adapter_names: list[str] | None = None) -> Scored:
    """Each row's completion (by its own adapter of `adapter_names`, when given); a prompt that does not fit the
    context with max_new_tokens is refused first."""
    from asymtune.inference.generation import complete
    from asymtune.inference.prompts import check_fits, token_ids

    ids = [token_ids(tokenizer, row.prompt) for row in rows]
    for index, prompt_ids in enumerate(ids):
        check_fits(prompt_ids, options.sampling.max_new_tokens, model, f"{path}: row {index}")
    answers = complete(model, tokenizer, ids, options.sampling, options.batch_size, adapter_names=adapter_names)
    return Scored([{"prompt": row.question, "completion": answer,
                    **({"reference": row.reference} if row.reference is not None else {})}
                   for row, answer in zip(rows, answers.texts, strict=True)], None)


PREDICTORS = {"classification": Predictor(read_texts, classify_texts), "image": Predictor(read_images, classify_images),
              "seq2seq": Predictor(read_sources, summarize), "sft": Predictor(read_prompts, complete_prompts)}


def _labelled(inputs: list[dict[str, Any]], logits: torch.Tensor, labels: list[str]) -> list[dict[str, Any]]:
    probabilities = logits.softmax(-1)
    return [{**row, "label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p), strict=True))}
            for row, p in zip(inputs, probabilities, strict=True)]


def _class_names(table: datasets.Dataset, field: str) -> list[str | None]:
    feature = table.features[field]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(value) for value in table[field]]
    return [None if value is None else str(value) for value in table[field]]


def _accuracy(rows: list[dict[str, Any]], truth: list[str | None] | None) -> tuple[str, float, int] | None:
    """Accuracy over the rows whose true class is known (None when no row's is)."""
    if truth is None:
        return None
    pairs = [(row["label"], true) for row, true in zip(rows, truth, strict=True) if true is not None]
    for row, true in zip(rows, truth, strict=True):
        if true is not None:
            row["true_label"] = true
    if not pairs:
        return None
    return "accuracy", sum(predicted == true for predicted, true in pairs) / len(pairs), len(pairs)
