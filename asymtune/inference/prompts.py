"""Prompts for causal-LM runs, rendered and tokenized the way TRL's SFTTrainer rendered them in training.

A run's *style* follows its `data.format`: `alpaca` wraps each question in the Stanford Alpaca prompt, `messages`
(and conversational prompt/completion rows) go through the tokenizer's chat template with the generation prompt,
and plain `prompt_completion` text is used as it is (`raw`). A base model uses its chat template when it has one.
Tokenization is what TRL's SFTTrainer does (checked against its tokenized training rows in the tests): the text path
adds the tokenizer's special tokens, and the chat path tokenizes the rendered template with the generation prompt.
"""

from __future__ import annotations

from typing import Any

from asymtune.data.formats import ALPACA_PROMPT_NO_INPUT
from asymtune.errors import UserError
from asymtune.recipe import Recipe

Prompt = str | list[dict[str, str]]  # text, or chat messages (TRL's conversational prompt)

_HEAD, _TURN = ALPACA_PROMPT_NO_INPUT.split("### Instruction:", 1)
_BEFORE, _AFTER = ("### Instruction:" + _TURN).split("{instruction}")


class PromptError(UserError):
    """A prompt that cannot be given to this model (no chat template, longer than its context)."""


def alpaca_chat_template() -> str:
    """A Jinja chat template that renders a conversation as consecutive Alpaca instruction/response blocks under
    the Alpaca header: one user turn renders exactly as `formats.alpaca_prompt(turn)` (what alpaca runs trained
    on). System turns are left out."""
    return (_HEAD
            + "{% for message in messages %}{% if message['role'] == 'user' %}" + _BEFORE
            + "{{ message['content'] }}" + _AFTER + "{% elif message['role'] == 'assistant' %}"
            + "{{ message['content'] }}\n\n{% endif %}{% endfor %}")


def raw_chat_template() -> str:
    """A Jinja chat template that joins the turns' text by newlines, system turns left out (raw-text runs)."""
    return ("{% for message in messages if message['role'] != 'system' %}{% if not loop.first %}\n{% endif %}"
            + "{{ message['content'] }}{% endfor %}")


def style_for(recipe: Recipe | None, tokenizer, requested: str = "auto") -> str:
    """The style prompts take: `requested` unless 'auto'; auto is the run's training format (`recipe`), or for
    a base model (None) its chat template if it has one, else raw text."""
    if requested != "auto":
        style = requested
    elif recipe is not None:
        style = {"alpaca": "alpaca", "messages": "chat"}.get(recipe.data.format, "raw")
    else:
        style = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptError("the tokenizer has no chat template, so chat-style prompts cannot be rendered; "
                          "use --template raw or --template alpaca")
    return style


def render(conversation: list[dict[str, str]], style: str, tokenizer) -> Prompt:
    """The prompt for the next assistant turn of `conversation` ({role, content} messages ending with a user
    turn) in `style`: alpaca text, the messages themselves (chat), or the turns' text joined by newlines (raw)."""
    if style == "chat":
        return conversation
    template = alpaca_chat_template() if style == "alpaca" else raw_chat_template()
    return tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)


def token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The prompt's token ids exactly as SFTTrainer tokenized training prompts (chat: with the generation prompt)."""
    if isinstance(prompt, list):
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def context_length(model: Any) -> int | None:
    """The model's positions (max_position_embeddings or n_positions), None when its config does not say."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(ids: list[int], max_new_tokens: int, model: Any, what: str) -> None:
    """PromptError naming `what` when the prompt plus `max_new_tokens` exceed the model's context."""
    if not ids:
        raise PromptError(f"{what}: the prompt is empty after tokenization")
    limit = context_length(model)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise PromptError(f"{what}: the prompt is {len(ids):,} tokens; with --max-new-tokens {max_new_tokens} that "
                          f"exceeds the model's context of {limit:,} tokens (shorten it or lower --max-new-tokens)")
