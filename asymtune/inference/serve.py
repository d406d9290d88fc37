"""`asymtune serve`: trained causal LMs behind an OpenAI-compatible HTTP API (FastAPI on uvicorn).

`/v1/models`, `/v1/chat/completions` and `/v1/completions`, streamed (server-sent events) or not, answered in the
`openai` package's own response types. Chat requests are rendered in each run's prompt style, exactly as its
training prompts were (`causal.CausalLM.prompt_ids`); `/v1/completions` takes the prompt as text. Concurrent
requests are generated together (`batching.Batcher`), several runs of one base model included: one model in memory,
each adapter answering its own rows of a call. Every bad request is answered 4xx in OpenAI's error shape, naming
the field; a full queue is 503. SIGTERM or Ctrl-C stops taking requests, finishes those in flight, then exits.
"""

import asyncio
import contextlib
import importlib.util
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune.errors import UserError
from asymtune.inference import causal, loading, mixed, prompts
from asymtune.inference.batching import Batcher, Event, QueueFull, Request, Stopped
from asymtune.inference.causal import CausalLM
from asymtune.inference.openai_api import ApiError, ChatRequest, CompletionRequest, parse
from asymtune.inference.sampling import Sampling

DEFAULT_MAX_TOKENS = 512  # what a request may ask for at most, and gets when it does not say (context permitting)
DRAIN_S = 60  # how long a stop waits for the requests in flight before it cuts them off

logger = logging.getLogger("asymtune.serve")


def check_available() -> None:
    """UserError naming the extra when the server's dependencies are missing."""
    missing = [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: pip install 'asymtune[serve]'")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: `max_tokens` new tokens at most; `max_rows` answers generated in one call;
    `max_waiting` answers held (running and queued) before the server answers 503."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    max_rows: int = 8
    max_waiting: int = 64


@dataclass(frozen=True)
class Served:
    """A model id's causal LM, and what generates its rows: the model itself, or the shared mixed-adapter model
    with the PEFT adapter that answers (`mixed.Routed`)."""

    lm: CausalLM
    generator: Any
    adapter: str | None

    @classmethod
    def of(cls, lm: CausalLM) -> "Served":
        if isinstance(lm.model, mixed.Routed):
            return cls(lm, lm.model.shared, lm.model.key)
        return cls(lm, lm.model, None)


def build_app(models: dict[str, CausalLM], limits: Limits = Limits()):
    """The FastAPI app answering each model of `models` under its model id."""
    from fastapi import FastAPI
    from fastapi import Request as HttpRequest  # a real class, not a string: FastAPI reads the annotations
    from fastapi.responses import JSONResponse, StreamingResponse
    from openai.types import Model

    served = {name: Served.of(lm) for name, lm in models.items()}
    batcher: Batcher | None = None

    async def lifespan(app: FastAPI):
        nonlocal batcher
        batcher = Batcher(limits.max_rows, limits.max_waiting)
        yield
        await asyncio.to_thread(batcher.close, DRAIN_S)

    app = FastAPI(title="asymtune serve", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def internal_error(request: HttpRequest, error: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
        return JSONResponse(ApiError(500, f"the server failed: {type(error).__name__}: {error}",
                                     kind="server_error").body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, and how requests have been batched: `generate` calls so far and the most answers in one."""
        return {"status": "ok", "models": list(served), "answers_held": batcher.held, "batches": batcher.calls,
                "widest_batch": batcher.widest}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(name).model_dump() for name in served]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        lookup(name)
        return _model(name).model_dump()

    def _model(name: str) -> Model:
        return Model(id=name, object="model", created=0, owned_by="asymtune")

    def lookup(name: str) -> Served:
        if name not in served:
            raise ApiError(404, f"model {name!r} is not served here; ask for one of: {', '.join(served)}", "model",
                           "model_not_found")
        return served[name]

    async def body_of(request: HttpRequest) -> Any:
        try:
            return json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ApiError(400, f"the request body is not JSON: {error}") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        asked = parse(ChatRequest, await body_of(request))
        model = lookup(asked.model)
        ids = _prompt_ids(lambda: model.lm.conversation_ids(asked.conversation), "messages")
        [work] = submit_all([prepare(model, ids, asked, "messages")])
        reply = Reply("chatcmpl", asked.model, [len(ids)], asked.n)
        if asked.stream:
            return StreamingResponse(reply.chat_chunks(work, asked.include_usage), media_type="text/event-stream")
        return (await reply.collect(work)).chat_completion()

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        asked = parse(CompletionRequest, await body_of(request))
        model = lookup(asked.model)
        prompt_ids = [_prompt_ids(lambda text=text: prompts.token_ids(model.lm.tokenizer, text), "prompt")
                      for text in asked.prompts]
        works = submit_all([prepare(model, ids, asked, "prompt") for ids in prompt_ids])
        reply = Reply("cmpl", asked.model, [len(ids) for ids in prompt_ids], asked.n)
        if asked.stream:
            return StreamingResponse(reply.completion_chunks(works, asked.include_usage),
                                     media_type="text/event-stream")
        return (await reply.collect(*works)).completion()

    def prepare(model: Served, ids: list[int], asked: ChatRequest | CompletionRequest, prompt_field: str) -> "Work":
        """The Work for one prompt of `asked` (its max_tokens checked), not yet submitted."""
        tokens = _max_tokens(model.lm, len(ids), asked.requested_tokens, asked.tokens_field, limits.max_tokens,
                             prompt_field)
        work = Work(asyncio.get_running_loop())
        work.request = Request(model.generator, model.lm.tokenizer, ids,
                               Sampling(tokens, asked.temperature, asked.top_p, asked.seed or 0), work.sink, asked.n,
                               model.adapter, asked.stops)
        return work

    def submit_all(works: list["Work"]) -> list["Work"]:
        """Hand every prompt's Work to the batcher, or none: those taken are cancelled when one is refused (503)."""
        taken: list[Work] = []
        try:
            for work in works:
                batcher.submit(work.request)
                taken.append(work)
        except QueueFull as full:
            refusal = ApiError(503, f"the server is busy: {full}", code="server_busy", kind="server_error")
        except Stopped as stopped:
            refusal = ApiError(503, str(stopped), code="shutting_down", kind="server_error")
        else:
            return works
        for work in taken:
            work.request.cancel()
        raise refusal

    return app


def _prompt_ids(tokenize: Callable[[], list[int]], field: str) -> list[int]:
    """The prompt's token ids; ApiError 400 naming `field` when it cannot be rendered or is empty."""
    import jinja2

    try:
        ids = tokenize()
    except (jinja2.TemplateError, prompts.PromptError) as error:
        raise ApiError(400, f"{field}: {error}", field) from None
    if not ids:
        raise ApiError(400, f"{field}: the prompt is empty after tokenization", field)
    return ids


def _max_tokens(lm: CausalLM, prompt_tokens: int, requested: int | None, field: str, limit: int,
                prompt_field: str) -> int:
    """The new tokens a request gets: what it asked for in `field` (at most `limit`), else `limit`; within the
    context (ApiError 400 naming `prompt_field` when the prompt alone fills it)."""
    context = prompts.context_length(lm.model)
    room = None if context is None else context - prompt_tokens
    if room is not None and room < 1:
        raise ApiError(400, f"the prompt is {prompt_tokens:,} tokens, the model's context {context:,}: no room to "
                            "answer; shorten it", prompt_field)
    if requested is None:
        return min(limit, room) if room is not None else limit
    if requested > limit:
        raise ApiError(400, f"{field} {requested:,} exceeds this server's limit of {limit:,} (asymtune serve "
                            "--max-tokens)", field)
    if room is not None and requested > room:
        raise ApiError(400, f"{field} {requested:,} plus the prompt's {prompt_tokens:,} tokens exceeds the model's "
                            f"context of {context:,} tokens", field)
    return requested


class Work:
    """A submitted request's events, carried from the worker thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.events = loop, asyncio.Queue()
        self.request: Request | None = None

    def sink(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is gone (server stopped): nobody is listening
            self.request.cancel()

    async def events_until_done(self, n: int) -> AsyncIterator[Event]:
        """Every event of the request's `n` answers, up to the last one's finish; re-raises a generation error."""
        open_answers = n
        try:
            while open_answers:
                event = await self.events.get()
                if event.error is not None:
                    raise event.error
                open_answers -= event.finish is not None
                yield event
        finally:
            if open_answers:  # the client left, or generation failed: stop its rows
                self.request.cancel()


class Reply:
    """The answers to one HTTP request, assembled into the `openai` package's response types."""

    def __init__(self, prefix: str, model: str, prompt_tokens: list[int], n: int) -> None:
        self.id, self.model, self.created = f"{prefix}-{uuid.uuid4().hex}", model, int(time.time())
        self.prompt_tokens, self.n = prompt_tokens, n
        self.texts = [""] * (len(prompt_tokens) * n)
        self.finishes: list[str | None] = [None] * len(self.texts)
        self.tokens = [0] * len(self.texts)

    def _take(self, first: int, event: Event) -> int:
        """Record `event` of the request whose choices start at `first`; the choice index it is about."""
        index = first + event.index
        self.texts[index] += event.text
        if event.finish is not None:
            self.finishes[index], self.tokens[index] = event.finish, event.tokens
        return index

    async def collect(self, *works: "Work") -> "Reply":
        for number, work in enumerate(works):
            async for event in work.events_until_done(self.n):
                self._take(number * self.n, event)
        return self

    def usage(self):
        from openai.types import CompletionUsage

        prompt = sum(self.prompt_tokens) * self.n
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=sum(self.tokens),
                               total_tokens=prompt + sum(self.tokens))

    def chat_completion(self) -> dict[str, Any]:
        from openai.types.chat import ChatCompletion

        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                   for i, (text, finish) in enumerate(zip(self.texts, self.finishes, strict=True))]
        return ChatCompletion(id=self.id, object="chat.completion", created=self.created, model=self.model,
                              choices=choices, usage=self.usage()).model_dump(exclude_none=True)

    def completion(self) -> dict[str, Any]:
        from openai.types import Completion

        choices = [{"index": i, "text": text, "finish_reason": finish}
                   for i, (text, finish) in enumerate(zip(self.texts, self.finishes, strict=True))]
        return Completion(id=self.id, object="text_completion", created=self.created, model=self.model,
                          choices=choices, usage=self.usage()).model_dump(exclude_none=True)

    async def chat_chunks(self, work: Work, include_usage: bool) -> AsyncIterator[str]:
        from openai.types.chat import ChatCompletionChunk

        def chunk(choices: list[dict], **extra: Any) -> str:
            made = ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                       model=self.model, choices=choices, **extra)
            return f"data: {made.model_dump_json(exclude_none=True)}\n\n"

        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(self.n)])
        async for event in _guarded(work.events_until_done(self.n)):
            if isinstance(event, str):
                yield event
                return
            index = self._take(0, event)
            if event.text:
                yield chunk([{"index": index, "delta": {"content": event.text}}])
            if event.finish is not None:
                yield chunk([{"index": index, "delta": {}, "finish_reason": event.finish}])
        if include_usage:
            yield chunk([], usage=self.usage())
        yield "data: [DONE]\n\n"

    async def completion_chunks(self, works: list[Work], include_usage: bool) -> AsyncIterator[str]:
        from openai.types import Completion

        def chunk(choices: list[dict], **extra: Any) -> str:
            made = Completion(id=self.id, object="text_completion", created=self.created, model=self.model,
                              choices=choices, **extra)
            return f"data: {made.model_dump_json(exclude_none=True)}\n\n"

        for number, work in enumerate(works):
            async for event in _guarded(work.events_until_done(self.n)):
                if isinstance(event, str):
                    yield event
                    return
                index = self._take(number * self.n, event)
                if event.text or event.finish is not None:
                    yield chunk([{"index": index, "text": event.text, "finish_reason": event.finish}])
        if include_usage:
            yield chunk([], usage=self.usage())
        yield "data: [DONE]\n\n"


async def _guarded(events: AsyncIterator[Event]) -> AsyncIterator[Event | str]:
    """`events`, ending in an error event of OpenAI's shape (an SSE line) when generation fails mid-stream: the
    status line is already sent, so the error goes in the stream, as OpenAI's own server does."""
    try:
        async for event in events:
            yield event
    except Exception as error:
        logger.error("generation failed mid-stream: %s: %s", type(error).__name__, error)
        body = ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error").body()
        yield f"data: {json.dumps(body)}\n\n"


def run(refs: list[str], base: str | None, root: Path, host: str, port: int, name: str | None = None,
        template: str = "auto", merge: bool = True, trust_remote_code: bool = False, device: str | None = None,
        log: Callable[[str], None] = print, limits: Limits = Limits()) -> str:
    """Serve the run or export `refs` names (or the base model `base`) on host:port until SIGTERM or Ctrl-C;
    returns the model id(s) it was served under (`name`, default the run's name). Several runs (adapters of one
    base model): one model in memory, each adapter under its recipe's name (`mixed`)."""
    import uvicorn

    check_available()
    if len(refs) > 1 and (name or base):
        raise UserError("with several runs, each is served under its recipe's name: drop --name and --base")
    with loading.scratch_dir() as scratch:
        if len(refs) > 1:
            adapters = mixed.open_adapters(refs, root, Path(scratch), True, trust_remote_code, device, log)
            models = mixed.as_models(adapters, template)
            what = f"{', '.join(models)} ({adapters.path})"
        else:
            model = causal.open_one(refs[0] if refs else None, base, root, Path(scratch), template, merge,
                                    trust_remote_code, device, log)
            models = {name or model.name.split("/")[0].removeprefix("base "): model}
            what = f"{model.name} as model {next(iter(models))!r} ({model.style} prompts)"
        log(f"serving {what} on http://{host}:{port}/v1 (up to {limits.max_rows} answers per batch, "
            f"{limits.max_waiting} held; stop with Ctrl-C or SIGTERM)")
        config = uvicorn.Config(build_app(models, limits), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=DRAIN_S)
        with _signals_end_quietly():
            uvicorn.Server(config).run()
    return ", ".join(models)


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler it found: let
    that handler be a no-op, so a stop ends `run` normally (scratch files removed, the stop reported) instead of
    killing the process or raising KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [signal.SIGINT, signal.SIGTERM]
    previous = {stop: signal.signal(stop, lambda *_: None) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
