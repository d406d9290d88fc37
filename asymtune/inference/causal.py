"""A causal LM ready to answer: a trained run (or export) or a base model, its tokenizer and its prompt style."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune.errors import UserError
from asymtune.inference import loading, prompts
from asymtune.recipe import ModelSpec


@dataclass
class CausalLM:
    """`model` with `tokenizer`, answering in `style` (prompts.STYLES); `name` labels its answers."""

    name: str
    model: Any
    tokenizer: Any
    style: str

    def conversation_ids(self, conversation: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt for the next assistant turn, rendered in this model's style."""
        return prompts.token_ids(self.tokenizer, prompts.render(conversation, self.style, self.tokenizer))

    def prompt_ids(self, conversation: list[dict[str, str]], max_new_tokens: int, what: str) -> list[int]:
        """`conversation_ids`; PromptError naming `what` if they do not fit with `max_new_tokens`."""
        ids = self.conversation_ids(conversation)
        prompts.check_fits(ids, max_new_tokens, self.model, what)
        return ids


def open_run(ref: str, root: Path, scratch: Path, template: str = "auto", merge: bool = True,
             trust_remote_code: bool = False, device: str | None = None,
             log: Callable[[str], None] = print) -> CausalLM:
    """The causal LM a run or export `ref` trained (`loading.locate`); UserError for other tasks."""
    trained = loading.locate(ref, root, scratch, trust_remote_code)
    if trained.task != "sft":
        raise UserError(f"{ref}: a {trained.task} run; generate, chat and serve need a causal LM (task sft) — "
                        "use `asymtune predict` for it")
    model, tokenizer = loading.load(trained, merge, device, log)
    return CausalLM(trained.name, model, tokenizer, prompts.style_for(trained.recipe, tokenizer, template))


def open_base(name: str, template: str = "auto", device: str | None = None, trust_remote_code: bool = False,
              log: Callable[[str], None] = print) -> CausalLM:
    """A base causal LM (hub id, folder, asset) with no adapter."""
    from asymtune.models import load_causal_lm

    model, tokenizer = load_causal_lm(ModelSpec(name=name, trust_remote_code=trust_remote_code), log)
    return CausalLM(f"base {name}", model.to(loading.device_or_default(device)).eval(), tokenizer,
                    prompts.style_for(None, tokenizer, template))


def open_one(ref: str | None, base: str | None, root: Path, scratch: Path, template: str = "auto", merge: bool = True,
             trust_remote_code: bool = False, device: str | None = None,
             log: Callable[[str], None] = print) -> CausalLM:
    """`open_run(ref)` or `open_base(base)`: UserError unless exactly one is named."""
    if (ref is None) == (base is None):
        raise UserError("name one run (or export), or --base MODEL")
    if base is not None:
        return open_base(base, template, device, trust_remote_code, log)
    return open_run(ref, root, scratch, template, merge, trust_remote_code, device, log)
