"""Text generation from a causal LM: greedy by default, sampling when asked; batched or streamed.

Batches are left-padded (a decoder continues from the last position), so every prompt ends where its answer
starts, and each answer is decoded from the new tokens only, special tokens left out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from rich.progress import track
from transformers import TextIteratorStreamer, set_seed

from asymtune.inference.sampling import Sampling
from asymtune.report import console


@dataclass(frozen=True)
class Completions:
    """Answers in prompt order, the token ids generated for each (up to and including its end token) and the
    seconds taken."""

    texts: list[str]
    token_ids: list[list[int]]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(map(len, self.token_ids))

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def complete(model, tokenizer, prompts: list[list[int]], sampling: Sampling, batch_size: int = 8,
             description: str = "generating", adapter_names: list[str] | None = None) -> Completions:
    """The answer to each tokenized prompt, in order, `batch_size` prompts per `generate` call; with
    `adapter_names` (one per prompt, a PEFT model holding them), each prompt answered by its own adapter."""
    set_seed(sampling.seed)
    config = sampling.config(model, tokenizer.pad_token_id)
    ends = end_tokens(config)
    answers: list[str] = []
    generated: list[list[int]] = []
    started = time.perf_counter()
    starts = range(0, len(prompts), batch_size)
    for start in track(starts, description=description, console=console, disable=len(starts) < 2):
        batch = left_padded(prompts[start:start + batch_size], tokenizer.pad_token_id, model.device)
        routed = {"adapter_names": adapter_names[start:start + batch_size]} if adapter_names else {}
        with torch.no_grad():
            output = model.generate(**batch, generation_config=config, **routed)
        new = output[:, batch["input_ids"].shape[1]:]
        generated += [_up_to_end(row.tolist(), ends) for row in new]
        answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    return Completions(answers, generated, time.perf_counter() - started)


def end_tokens(config) -> set[int]:
    """The token ids that end an answer under generation `config` (its eos_token_id: one id or a list)."""
    ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    return {token for token in ids if token is not None}


def _up_to_end(ids: list[int], ends: set[int]) -> list[int]:
    """The tokens generated for one answer: up to and including its first end token (the rest is padding)."""
    return ids[:next((i + 1 for i, token in enumerate(ids) if token in ends), len(ids))]


def stream(model, tokenizer, prompt: list[int], sampling: Sampling) -> Iterator[str]:
    """The answer to one tokenized prompt, piece by piece as it is generated (a background thread generates)."""
    set_seed(sampling.seed)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = left_padded([prompt], tokenizer.pad_token_id, model.device)
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(**inputs, generation_config=sampling.config(model, tokenizer.pad_token_id),
                               streamer=streamer)
        except BaseException as error:  # re-raised in the caller's thread, after the streamer is closed
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    yield from (piece for piece in streamer if piece)
    worker.join()
    if failure:
        raise failure[0]


def left_padded(prompts: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
