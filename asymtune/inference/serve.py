"""`asymtune serve`: a trained causal LM behind an OpenAI-compatible HTTP API, through transformers' own server.

transformers' `serve` (FastAPI + uvicorn) brings `/v1/chat/completions`, `/v1/completions`, `/v1/responses` and
`/v1/models`, streaming included. It loads models by hub id; here it is handed the one model asymtune loaded
(the adapter merged in), pinned under the run's name, so it never loads or unloads anything. Chat requests are
rendered in the run's prompt style: an alpaca run's chat template is the Alpaca prompt (`prompts.alpaca_chat_template`),
so one user turn reaches the model exactly as training prompts did; `/v1/completions` takes the prompt as text.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asymtune.errors import UserError
from asymtune.inference import causal, loading
from asymtune.inference.causal import CausalLM
from asymtune.inference.prompts import alpaca_chat_template, raw_chat_template


def check_available() -> None:
    """UserError naming the extra when transformers' server dependencies are missing."""
    missing = [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: pip install 'asymtune[serve]'")


def served_tokenizer(model: CausalLM):
    """The tokenizer with the chat template of the run's prompt style (a chat-style run keeps its own); the
    template starts with BOS when the tokenizer's own encoding adds one, as training's text prompts had."""
    tokenizer = model.tokenizer
    if model.style == "chat":
        return tokenizer
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    template = alpaca_chat_template(bos) if model.style == "alpaca" else raw_chat_template(bos)
    tokenizer.chat_template = template
    return tokenizer


def build_app(model: CausalLM, name: str):
    """The FastAPI app of transformers' server, answering with `model` under the model id `name`."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    class Pinned(ModelManager):
        """transformers' model manager holding one model that is already loaded (never unloaded)."""

        def __init__(self) -> None:
            super().__init__(device=str(model.model.device), force_model=None, model_timeout=-1)
            self.force_model = name
            self.served = (model.model, served_tokenizer(model))

        def load_model_and_processor(self, model_id_and_revision: str, *args: Any, **kwargs: Any):
            return self.served

        def list_models(self, cache_dir: str | None = None) -> list[dict]:
            return [{"id": name, "object": "model", "created": 0, "owned_by": "asymtune",
                     "status": {"value": "loaded"}}]

        def shutdown(self) -> None:
            """Nothing to unload: the model belongs to asymtune."""

    manager = Pinned()
    state = GenerationState(continuous_batching=False)
    return build_server(
        manager, ChatCompletionHandler(manager, state), completion_handler=CompletionHandler(manager, state),
        response_handler=ResponseHandler(manager, state), transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(manager, state), generation_state=state,
    )


def run(ref: str | None, base: str | None, root: Path, host: str, port: int, name: str | None = None,
        template: str = "auto", merge: bool = True, trust_remote_code: bool = False, device: str | None = None,
        log: Callable[[str], None] = print) -> str:
    """Serve the run or export `ref` (or the base model `base`) on host:port until interrupted; returns the model
    id it was served under (`name`, default the run's name)."""
    import uvicorn

    check_available()
    with loading.scratch_dir() as scratch:
        model = causal.open_one(ref, base, root, Path(scratch), template, merge, trust_remote_code, device, log)
        name = name or model.name.split("/")[0].removeprefix("base ")
        app = build_app(model, name)
        log(f"serving {model.name} as model {name!r} ({model.style} prompts) on http://{host}:{port}/v1")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    return name
