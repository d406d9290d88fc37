"""Instruction formats turned into TRL's prompt/completion columns (loss on the completion only).

- `alpaca`: instruction, optional input, output -> the Stanford Alpaca prompt and the output.
- `prompt_completion`: prompt, completion (strings, or lists of chat messages).
- `messages`: a chat; everything before the last (assistant) turn is the prompt, that turn the completion.
"""

from __future__ import annotations

from typing import Any

import datasets

from asymtune.data.sources import DataError

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
    missing = [column for column in REQUIRED_COLUMNS[fmt] if column not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: format '{fmt}' needs column(s) {', '.join(missing)}; "
            f"the data has {', '.join(table.column_names)}"
        )
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
