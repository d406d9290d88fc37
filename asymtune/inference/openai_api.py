"""The OpenAI API's requests as `serve` checks them, and its error shape.

Responses are the `openai` package's own types (ChatCompletion, ChatCompletionChunk, Completion, Model); the package
has no validating models of requests (its params are TypedDicts), so these are written here: only the fields
`serve` acts on, each checked with a message naming it, every other field ignored as OpenAI's server does with
fields it does not know. A field that asks for something `serve` does not do (tools, logprobs, echo, penalties) is
refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_N = 8  # most answers one request may ask for
MAX_STOPS = 4  # OpenAI's own limit on stop sequences


class ApiError(Exception):
    """An answer in OpenAI's error shape: HTTP `status`, a message, the request field (`param`) it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: Any = None
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOPS or not all(stops)):
            raise ValueError(f"at most {MAX_STOPS} stop sequences, none of them empty")
        return stops

    @model_validator(mode="after")
    def _refused(self) -> _Request:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise _Refused(name, "is not supported by asymtune serve; leave it out or at 0")
        if self.logprobs not in (None, False, 0):
            raise _Refused("logprobs", "is not supported by asymtune serve; leave it out")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def tokens_field(self) -> str:
        """The field that set `requested_tokens`, for error messages."""
        return "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Request):
    """POST /v1/chat/completions."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_refused(self) -> ChatRequest:
        if self.tools:
            raise _Refused("tools", "is not supported by asymtune serve (the model was not trained to call tools)")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise _Refused("response_format", "only {'type': 'text'} is supported by asymtune serve")
        if not any(message.role in ("user", "assistant") for message in self.messages):
            raise _Refused("messages", "holds no user or assistant turn")
        return self

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    @property
    def conversation(self) -> list[dict[str, str]]:
        """The messages as {role, content} text turns (a developer turn is a system turn)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in self.messages]


class CompletionRequest(_Request):
    """POST /v1/completions: one prompt, or several (each answered `n` times)."""

    prompt: str | Annotated[list[str], Field(min_length=1)]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_refused(self) -> CompletionRequest:
        if self.echo:
            raise _Refused("echo", "is not supported by asymtune serve")
        if self.suffix:
            raise _Refused("suffix", "is not supported by asymtune serve")
        if self.best_of not in (None, 1):
            raise _Refused("best_of", "is not supported by asymtune serve; use n")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class _Refused(ValueError):
    """A field naming something `serve` does not do."""

    def __init__(self, field_name: str, why: str) -> None:
        super().__init__(f"{field_name} {why}")
        self.field_name = field_name


def parse(kind: type[_Request], body: Any) -> Any:
    """The request `body` (parsed JSON) as `kind`; ApiError 400 naming the first field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return kind.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        refused = (first.get("ctx") or {}).get("error")
        if isinstance(refused, _Refused):
            raise ApiError(400, str(refused), refused.field_name) from None
        where = ".".join(str(part) for part in first["loc"] if not _is_union_branch(part))
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {message}" if where else message, where or None) from None


def _is_union_branch(part: Any) -> bool:
    """pydantic names the union member it tried ("str", "list[TextPart]") in an error's location: not a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "function-after"})
