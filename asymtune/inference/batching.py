"""Concurrent generation requests answered together: one worker thread runs `generate` over every waiting request
that can share a call, and a bounded queue refuses work beyond its size.

Requests share a call when they run on the same model and draw tokens the same way (greedy, or the same
temperature, top_p and seed); the rows of a mixed-adapter model share one call across adapters (`adapter_names`).
Each row stops on its own — its end token, a stop string, its own max_tokens, or its client leaving — through a
per-row stopping criterion, so a long request costs the others nothing after they end. Requests that arrive while
a call runs wait for the next one (static batching: the queue is drained into each new call).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, set_seed
from transformers.generation.streamers import BaseStreamer

from asymtune.inference.generation import end_tokens, left_padded
from asymtune.inference.sampling import Sampling

# After the first request of a call arrives, how long to wait for others to join it: on a 2-core CPU, 20 ms split 8
# concurrent chat requests into two calls in one of two runs, 50 ms kept them in one in three of three
GATHER_S = 0.05


class QueueFull(Exception):
    """The server holds as many rows as it may: the request is refused (HTTP 503), not queued."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Event:
    """What a request's sink receives, from the worker thread: `text` appended to choice `index`; then, once per
    choice, `finish` ("stop" or "length") with its completion's token count; or `error` for the whole request."""

    index: int
    text: str = ""
    finish: str | None = None
    tokens: int = 0
    error: BaseException | None = None


@dataclass
class Request:
    """`n` answers to one tokenized prompt. `model` generates (`adapter`: the PEFT adapter of a mixed-adapter model
    that answers, None for a plain model); `sink` receives its Events from the worker thread."""

    model: Any
    tokenizer: Any
    prompt: list[int]
    sampling: Sampling
    sink: Callable[[Event], None]
    n: int = 1
    adapter: str | None = None
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Its client left: its rows stop at the next token."""
        self.cancelled.set()

    @property
    def call_key(self) -> tuple:
        """Requests with equal keys can share one `generate` call."""
        s = self.sampling
        return (id(self.model), (s.temperature, s.top_p, s.seed) if s.temperature > 0 else "greedy")


@dataclass
class Row:
    """One answer being generated: its tokens so far, the text already sent, and why it ended (None: running)."""

    request: Request
    index: int
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finish: str | None = None

    def take(self, token: int, ends: set[int], decode: Callable[[list[int]], str]) -> None:
        """Append `token` (an end token ends the row), send the text that became final, end at max_tokens."""
        request = self.request
        if request.cancelled.is_set():
            self.finish = "cancelled"
            return
        if token in ends:
            self.end("stop", decode(self.tokens))
            return
        self.tokens.append(token)
        text = decode(self.tokens)
        cut = min((text.find(stop) for stop in request.stop if stop in text), default=-1)
        if cut >= 0:
            self.end("stop", text[:cut])
        elif len(self.tokens) >= request.sampling.max_new_tokens:
            self.end("length", text)
        else:
            held = max((len(stop) - 1 for stop in request.stop), default=0)  # could be the start of a stop string
            ready = text[:len(text) - held] if held else text
            if not ready.endswith("\ufffd"):  # not half of a multi-byte character
                self._send(ready)

    def _send(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.request.sink(Event(self.index, text[len(self.sent):]))
            self.sent = text

    def end(self, reason: str, text: str) -> None:
        """Send what of `text` is not sent yet, then the finish event for `reason`."""
        self._send(text)
        self.finish = reason
        self.request.sink(Event(self.index, finish=reason, tokens=len(self.tokens)))


class _RowsDone(StoppingCriteria):
    """transformers' per-row stopping criterion: a row is done once it has finished."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)


class _RowStreamer(BaseStreamer):
    """Feeds each generated token to its row (transformers calls `put` with the prompt first, then one token per
    row per step)."""

    def __init__(self, rows: list[Row], ends: set[int], decode: Callable[[list[int]], str]) -> None:
        self.rows, self.ends, self.decode, self.prompt_seen = rows, ends, decode, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row.finish is None:
                row.take(int(token), self.ends, self.decode)

    def end(self) -> None:
        """Rows still open when generation stops (it reached the longest max_tokens) end at their length."""
        for row in self.rows:
            if row.finish is None:
                row.end("length", self.decode(row.tokens))


class Batcher:
    """The worker thread and its bounded queue: `submit` from any thread; `close` answers what is queued and stops.

    `max_rows`: most rows generated in one call; `max_waiting`: most rows held (running and queued) before
    `submit` raises QueueFull."""

    def __init__(self, max_rows: int = 8, max_waiting: int = 64) -> None:
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._held = 0
        self._lock = threading.Lock()
        self._closing = False
        self.calls = 0  # `generate` calls made, and the most rows one of them held
        self.widest = 0
        self._worker = threading.Thread(target=self._work, name="asymtune-generate", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> None:
        with self._lock:
            if self._closing:
                raise Stopped("the server is shutting down")
            if self._held + request.n > self.max_waiting:
                raise QueueFull(f"{self._held} answers are being generated or waiting (the limit is "
                                f"{self.max_waiting}); retry shortly")
            self._held += request.n
        self._queue.put(request)

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, finish every one taken, stop the worker."""
        with self._lock:
            self._closing = True
        self._queue.put(None)
        self._worker.join(timeout)

    @property
    def held(self) -> int:
        """Rows running or waiting."""
        return self._held

    def _work(self) -> None:
        waiting: list[Request] = []
        closing = False
        while waiting or not closing:
            if not waiting:
                first = self._queue.get()
                if first is None:
                    closing = True
                    continue
                waiting.append(first)
                time.sleep(GATHER_S)
            closing = self._drain(waiting) or closing
            call, waiting = self._one_call(waiting)
            try:
                self._generate(call)
            finally:
                with self._lock:
                    self._held -= sum(request.n for request in call)

    def _drain(self, waiting: list[Request]) -> bool:
        """Move every queued request into `waiting`; whether the close marker was among them."""
        closing = False
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return closing
            if request is None:
                closing = True
            else:
                waiting.append(request)

    def _one_call(self, waiting: list[Request]) -> tuple[list[Request], list[Request]]:
        """The oldest request and those after it that can share its call (up to max_rows rows); the rest, in order.
        The oldest goes alone when it is wider than max_rows."""
        key = waiting[0].call_key
        call, rest, rows = [], [], 0
        for request in waiting:
            if request.call_key == key and (not call or rows + request.n <= self.max_rows):
                call.append(request)
                rows += request.n
            else:
                rest.append(request)
        return call, rest

    def _generate(self, call: list[Request]) -> None:
        rows = [Row(request, index) for request in call for index in range(request.n)]
        rows = [row for row in rows if not row.request.cancelled.is_set()]
        if not rows:
            return
        self.calls, self.widest = self.calls + 1, max(self.widest, len(rows))
        first = call[0]
        model, tokenizer = first.model, first.tokenizer
        sampling = Sampling(max(r.request.sampling.max_new_tokens for r in rows), first.sampling.temperature,
                            first.sampling.top_p, first.sampling.seed)
        config = sampling.config(model, tokenizer.pad_token_id)
        ends = end_tokens(config)

        def decode(tokens: list[int]) -> str:
            return tokenizer.decode(tokens, skip_special_tokens=True)

        routed = {"adapter_names": [row.request.adapter for row in rows]} if first.adapter is not None else {}
        try:
            set_seed(sampling.seed)
            inputs = left_padded([row.request.prompt for row in rows], tokenizer.pad_token_id, model.device)
            with torch.no_grad():
                model.generate(**inputs, generation_config=config, streamer=_RowStreamer(rows, ends, decode),
                               stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]), **routed)
        except Exception as error:  # the requests of this call get it; the server stays up
            for request in call:
                request.sink(Event(0, error=error))
