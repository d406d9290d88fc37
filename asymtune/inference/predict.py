"""`asymtune predict`: a trained model's answers for an input file, written as jsonl or csv."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune import atomic
from asymtune.errors import UserError
from asymtune.inference import loading, mixed
from asymtune.inference.predictors import PREDICTORS, Options


@dataclass(frozen=True)
class Predictions:
    """The result rows of `source` on `input`, where they were written, and the score when answers were given."""

    source: str
    task: str
    rows: list[dict[str, Any]]
    output: Path
    score: tuple[str, float, int] | None


def default_output(input_path: Path) -> Path:
    """`<input name>.predictions.jsonl` in the working directory."""
    return Path(f"{input_path.stem if input_path.is_file() else input_path.name}.predictions.jsonl")


def predict(refs: list[str], input_path: Path, output: Path | None, root: Path, options: Options, merge: bool = True,
            trust_remote_code: bool = False, device: str | None = None,
            log: Callable[[str], None] = print) -> Predictions:
    """Predictions of the run or export `refs` names for every row (or image) of `input_path`, written to `output`
    (.csv: a table, probabilities as `p_<class>` columns; anything else: jsonl). With several runs (adapters of one
    base model, task sft), each row names in its `adapter` column the run that answers it, and mixed batches are
    answered in one pass (`mixed`)."""
    if not input_path.exists():
        raise UserError(f"--input {input_path}: no such file or folder")
    output = output or default_output(input_path)
    if output.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise UserError(f"--output {output}: write .jsonl or .csv")
    if len(refs) > 1:
        return predict_mixed(refs, input_path, output, root, options, trust_remote_code, device, log)
    with loading.scratch_dir() as scratch:
        ref, = refs
        trained = loading.locate(ref, root, Path(scratch), trust_remote_code)
        predictor = PREDICTORS[trained.task]
        inputs = predictor.read(trained, input_path)  # a bad file is refused before the model loads
        model, processor = loading.load(trained, merge, device, log)
        scored = predictor.answer(trained, model, processor, input_path, inputs, options)
    atomic.write_text(output, to_csv(scored.rows) if output.suffix.lower() == ".csv" else to_jsonl(scored.rows))
    return Predictions(trained.name, trained.task, scored.rows, output, scored.score)


def predict_mixed(refs: list[str], input_path: Path, output: Path, root: Path, options: Options,
                  trust_remote_code: bool = False, device: str | None = None,
                  log: Callable[[str], None] = print) -> Predictions:
    """Each row of `input_path` completed by the run its `adapter` column names, the runs' adapters on one base
    model, batches mixed (`mixed.open_adapters`)."""
    from asymtune.inference.predictors import complete_prompts

    with loading.scratch_dir() as scratch:
        adapters = mixed.open_adapters(refs, root, Path(scratch), True, trust_remote_code, device, log)
        rows, keys = mixed.read_rows(adapters, input_path)
        scored = complete_prompts(adapters.sources[0], adapters.model, adapters.tokenizer, input_path, rows, options,
                                  keys)
    by_key = dict(zip(adapters.keys, refs, strict=True))
    answered = [{mixed.ADAPTER_COLUMN: by_key[key], **row} for key, row in zip(keys, scored.rows, strict=True)]
    atomic.write_text(output, to_csv(answered) if output.suffix.lower() == ".csv" else to_jsonl(answered))
    return Predictions(f"{len(refs)} adapters, {adapters.path}", "sft", answered, output, None)


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One line per row; a `probabilities` mapping becomes one `p_<class>` column per class."""
    flat = [{**{k: v for k, v in row.items() if k != "probabilities"},
             **{f"p_{name}": p for name, p in row.get("probabilities", {}).items()}} for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in flat for key in row)))
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()
