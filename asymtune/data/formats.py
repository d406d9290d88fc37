"""Instruction formats turned into TRL's prompt/completion columns (loss on the completion only).

- `alpaca`: instruction, optional input, output -> the Stanford Alpaca prompt and the output.
- `prompt_completion`: prompt, completion (strings, or lists of chat messages).
- `messages`: a chat; everything before the last (assistant) turn is the prompt, that turn the completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from asymtune.data.sources import DataError, require_columns

# Stanford Alpaca's prompts (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
REQUIRED_COLUMNS = {
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}


def alpaca_prompt(instruction: str, input_text: str | None = None) -> str:
    """The Stanford Alpaca prompt for one example (the no-input variant when input is empty)."""
    if input_text:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def to_prompt_completion(table: datasets.Dataset, fmt: str, source: str) -> datasets.Dataset:
    """Check `table` against `fmt` (naming the first bad row) and map it to prompt/completion columns."""
    require_columns(table, REQUIRED_COLUMNS[fmt], source, f"format '{fmt}' needs")
    convert = {"alpaca": _alpaca_row, "prompt_completion": _prompt_completion_row, "messages": _messages_row}[fmt]
    for index, row in enumerate(table.select_columns(list(REQUIRED_COLUMNS[fmt]) + _optional(table, fmt))):
        try:
            convert(row)
        except ValueError as error:
            raise DataError(f"{source}: row {index}: {error}") from None
    return table.map(convert, remove_columns=table.column_names, desc=f"formatting {fmt}")


def _optional(table: datasets.Dataset, fmt: str) -> list[str]:
    return ["input"] if fmt == "alpaca" and "input" in table.column_names else []


def _text(row: dict[str, Any], column: str, allow_empty: bool = False) -> str:
    value = row.get(column)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"column '{column}' must be text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"column '{column}' is empty")
    return value


def _alpaca_row(row: dict[str, Any]) -> dict[str, str]:
    prompt = alpaca_prompt(_text(row, "instruction"), _text(row, "input", allow_empty=True).strip())
    return {"prompt": prompt, "completion": _text(row, "output")}


def _prompt_completion_row(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row["prompt"], list) or isinstance(row["completion"], list):
        _check_messages(row["prompt"], "prompt")
        _check_messages(row["completion"], "completion")
        return {"prompt": row["prompt"], "completion": row["completion"]}
    return {"prompt": _text(row, "prompt", allow_empty=True), "completion": _text(row, "completion")}


def _messages_row(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    _check_messages(messages, "messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError("'messages' must end with an assistant turn after at least one other turn")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _check_messages(messages: Any, column: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"column '{column}' must be a non-empty list of {{role, content}} messages")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise ValueError(f"column '{column}', message {turn}: needs text 'role' and 'content'")


@dataclass(frozen=True)
class PromptRow:
    """One row to answer: the prompt as training built it (text, or chat messages), the question as the row
    states it (for showing beside the answer) and the row's own answer, if it has one."""

    prompt: Any
    question: str
    reference: str | None


def to_prompts(table: datasets.Dataset, fmt: str, source: str) -> list[PromptRow]:
    """Each row of `table` in `fmt` as a PromptRow, for generation: `alpaca` rows rendered, chat messages kept as
    messages; the completion column (alpaca `output`, `completion`, a final assistant turn) is optional and, when
    present, the reference. DataError names the row."""
    needed = {"alpaca": ("instruction",), "prompt_completion": ("prompt",), "messages": ("messages",)}[fmt]
    require_columns(table, needed, source, f"format '{fmt}' needs")
    if len(table) == 0:
        raise DataError(f"{source}: holds no rows")
    prompts = []
    for index, row in enumerate(table):
        try:
            prompts.append(_prompt_of(row, fmt))
        except ValueError as error:
            raise DataError(f"{source}: row {index}: {error}") from None
    return prompts


def _prompt_of(row: dict[str, Any], fmt: str) -> PromptRow:
    def text_or_none(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    if fmt == "alpaca":
        instruction, extra = _text(row, "instruction"), _text(row, "input", allow_empty=True).strip()
        question = f"{instruction}\n\n{extra}" if extra else instruction
        return PromptRow(alpaca_prompt(instruction, extra), question, text_or_none(row.get("output")))
    if fmt == "prompt_completion":
        completion = row.get("completion")
        if isinstance(row["prompt"], list):
            _check_messages(row["prompt"], "prompt")
            reference = completion[-1].get("content") if isinstance(completion, list) and completion else None
            return PromptRow(row["prompt"], row["prompt"][-1]["content"], text_or_none(reference))
        prompt = _text(row, "prompt")
        return PromptRow(prompt, prompt, text_or_none(completion))
    messages = row["messages"]
    _check_messages(messages, "messages")
    if messages[-1]["role"] == "assistant":
        if len(messages) < 2:
            raise ValueError("'messages' holds only an assistant turn; nothing to answer")
        return PromptRow(messages[:-1], messages[-2]["content"], messages[-1]["content"])
    return PromptRow(messages, messages[-1]["content"], None)
