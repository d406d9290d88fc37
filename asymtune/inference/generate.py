"""`asymtune generate`: the same prompts answered by several runs and/or a base model, side by side."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from asymtune.data.sources import DataError
from asymtune.errors import UserError
from asymtune.inference import causal, loading, mixed
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
            device: str | None = None, log: Callable[[str], None] = print, input_path: Path | None = None,
            together: bool = False) -> Answers:
    """Every prompt (given, or the lines of `input_path`: exactly one of the two) answered by each run in `refs`
    (merged unless `merge` is False) and by `base`, one model in memory at a time; prompts that do not fit a
    model's context are refused before any generation. `together`: the runs' adapters on one base model, every
    (prompt, run) pair a row of mixed batches (`answers_together`)."""
    if bool(prompts) == (input_path is not None):
        raise UserError("give --prompt TEXT (repeatable) or --input FILE")
    if not refs and not base:
        raise UserError("name at least one run, or --base MODEL")
    prompts = prompts or read_prompts(input_path)
    if not all(p.strip() for p in prompts):
        raise UserError("--prompt is empty; give a question, or --input FILE")
    if together:
        if base:
            raise UserError("--together answers with the runs' adapters on their own base model; drop --base")
        return answers_together(refs, prompts, root, sampling, template, batch_size, trust_remote_code, device, log)
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


def answers_together(refs: list[str], prompts: list[str], root: Path, sampling: Sampling, template: str = "auto",
                     batch_size: int = 8, trust_remote_code: bool = False, device: str | None = None,
                     log: Callable[[str], None] = print) -> Answers:
    """Every prompt answered by each run's adapter, all on one copy of the base model (`mixed.open_adapters`):
    prompt by prompt, a row per run, so each batch mixes adapters. Each run's tokens/s is the whole batch's."""
    with loading.scratch_dir() as scratch:
        adapters = mixed.open_adapters(refs, root, Path(scratch), True, trust_remote_code, device, log)
        models = list(zip(mixed.as_models(adapters, template).items(), adapters.keys, strict=True))
        rows = [(model.prompt_ids([{"role": "user", "content": text}], sampling.max_new_tokens, f"prompt {i + 1}"), key)
                for i, text in enumerate(prompts) for (_, model), key in models]
        ids, keys = [row[0] for row in rows], [row[1] for row in rows]
        complete(adapters.model, adapters.tokenizer, ids[:1], replace(sampling, max_new_tokens=1),
                 adapter_names=keys[:1])  # warm-up, untimed
        done = complete(adapters.model, adapters.tokenizer, ids, sampling, batch_size,
                        f"generating with {len(models)} adapters together", adapter_names=keys)
    by_model = {}
    for position, ((name, _), _) in enumerate(models):
        picked = range(position, len(rows), len(models))
        token_ids = [done.token_ids[i] for i in picked]
        share = sum(map(len, token_ids)) / max(done.tokens, 1)
        by_model[name] = Completions([done.texts[i] for i in picked], token_ids, done.seconds * share)
    return Answers(prompts, by_model)
