"""`asymtune generate`: the same prompts answered by several runs and/or a base model, side by side."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from asymtune.data.sources import DataError
from asymtune.errors import UserError
from asymtune.inference import causal, loading
from asymtune.inference.generation import Completions, complete
from asymtune.inference.sampling import Sampling


@dataclass(frozen=True)
class Answers:
    """Each model's completions of `prompts`, in the order the models were named."""

    prompts: list[str]
    by_model: dict[str, Completions]


def read_prompts(path: Path) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped); DataError naming the file when it has none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"--input {path}: cannot be read as UTF-8 text ({type(error).__name__})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"--input {path}: holds no prompt (one per line)")
    return prompts


def answers(refs: list[str], base: str | None, prompts: list[str], root: Path, sampling: Sampling,
            template: str = "auto", merge: bool = True, batch_size: int = 8, trust_remote_code: bool = False,
            device: str | None = None, log: Callable[[str], None] = print, input_path: Path | None = None) -> Answers:
    """Every prompt (given, or the lines of `input_path`: exactly one of the two) answered by each run in `refs`
    (merged unless `merge` is False) and by `base`, one model in memory at a time; prompts that do not fit a
    model's context are refused before any generation."""
    if bool(prompts) == (input_path is not None):
        raise UserError("give --prompt TEXT (repeatable) or --input FILE")
    if not refs and not base:
        raise UserError("name at least one run, or --base MODEL")
    prompts = prompts or read_prompts(input_path)
    if not all(p.strip() for p in prompts):
        raise UserError("--prompt is empty; give a question, or --input FILE")
    by_model: dict[str, Completions] = {}
    for run_ref, base_model in [*((ref, None) for ref in refs), *([(None, base)] if base else [])]:
        with loading.scratch_dir() as scratch:
            model = causal.open_one(run_ref, base_model, root, Path(scratch), template, merge, trust_remote_code,
                                    device, log)
            ids = [model.prompt_ids([{"role": "user", "content": text}], sampling.max_new_tokens, f"prompt {i + 1}")
                   for i, text in enumerate(prompts)]
            complete(model.model, model.tokenizer, ids[:1], replace(sampling, max_new_tokens=1))  # warm-up, untimed
            by_model[model.name] = complete(model.model, model.tokenizer, ids, sampling, batch_size,
                                            f"generating with {model.name}")
        del model
        gc.collect()
    return Answers(prompts, by_model)
