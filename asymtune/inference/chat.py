"""`asymtune chat`: a conversation with a causal LM, answers streamed as they are generated.

Reads one user turn per line (a terminal or a pipe); `/reset` forgets the conversation, `/exit` (or end of
input) ends it. Each answer is followed by its length, speed and the time to its first token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from asymtune.inference import causal, loading
from asymtune.inference.causal import CausalLM
from asymtune.inference.generation import stream
from asymtune.inference.prompts import PromptError
from asymtune.inference.sampling import Sampling

COMMANDS = {"/reset": "forget the conversation", "/exit": "end the chat"}
COMMANDS_HELP = ", ".join(f"{command}: {what}" for command, what in COMMANDS.items())


@dataclass(frozen=True)
class Turn:
    """One answer: its text, its length in tokens, the seconds to its first streamed piece and in all."""

    text: str
    tokens: int
    first_piece_s: float
    seconds: float


def run(ref: str | None, base: str | None, root: Path, sampling: Sampling, lines: Iterable[str],
        write: Callable[[str], None], note: Callable[[str], None], template: str = "auto", merge: bool = True,
        trust_remote_code: bool = False, device: str | None = None) -> list[Turn]:
    """`converse` with the run or export `ref`, or the base model `base` (exactly one)."""
    with loading.scratch_dir() as scratch:
        model = causal.open_one(ref, base, root, Path(scratch), template, merge, trust_remote_code, device, note)
        note(f"chatting with {model.name} ({model.style} prompts); {COMMANDS_HELP}")
        return converse(model, sampling, lines, write, note)


def converse(model: CausalLM, sampling: Sampling, lines: Iterable[str], write: Callable[[str], None],
             note: Callable[[str], None]) -> list[Turn]:
    """Answer each line of `lines` in turn, keeping the history; `write` receives the answer as it streams,
    `note` one-line remarks (commands, timings, prompts that no longer fit). Returns the answers given."""
    history: list[dict[str, str]] = []
    turns: list[Turn] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history.clear()
            note("conversation forgotten")
            continue
        if text.startswith("/"):
            note(f"unknown command {text.split()[0]}; {COMMANDS_HELP}")
            continue
        history.append({"role": "user", "content": text})
        try:
            ids = model.prompt_ids(history, sampling.max_new_tokens, "this conversation")
        except PromptError as error:
            history.pop()
            note(f"{error}; /reset to start over")
            continue
        turn = _answer(model, ids, sampling, write)
        history.append({"role": "assistant", "content": turn.text})
        turns.append(turn)
        note(f"{turn.tokens} tokens in {turn.seconds:.1f} s ({turn.tokens / max(turn.seconds, 1e-9):.1f} tokens/s), "
             f"first text after {turn.first_piece_s:.2f} s")
    return turns


def _answer(model: CausalLM, ids: list[int], sampling: Sampling, write: Callable[[str], None]) -> Turn:
    started = time.perf_counter()
    first, pieces = None, []
    for piece in stream(model.model, model.tokenizer, ids, sampling):
        first = first if first is not None else time.perf_counter() - started
        pieces.append(piece)
        write(piece)
    write("\n")
    seconds, text = time.perf_counter() - started, "".join(pieces).strip()
    tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    return Turn(text, tokens, first or 0.0, seconds)
