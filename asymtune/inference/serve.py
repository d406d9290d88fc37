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
from asymtune.inference import causal, loading, mixed
from asymtune.inference.causal import CausalLM
from asymtune.inference.prompts import alpaca_chat_template, raw_chat_template


def check_available() -> None:
    """UserError naming the extra when transformers' server dependencies are missing."""
    missing = [name for name in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: pip install 'asymtune[serve]'")


def served_tokenizer(model: CausalLM):
    """The tokenizer with the chat template of the run's prompt style (a chat-style run keeps its own): a copy, so runs
    served together keep their own styles; the template starts with BOS when the tokenizer's own encoding adds one,
    as training's text prompts had."""
    import copy

    tokenizer = model.tokenizer
    if model.style == "chat":
        return tokenizer
    probe = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    served = copy.deepcopy(tokenizer)
    served.chat_template = alpaca_chat_template(bos) if model.style == "alpaca" else raw_chat_template(bos)
    return served


def build_app(served: dict[str, CausalLM]):
    """The FastAPI app of transformers' server, answering with each model of `served` under its model id (one
    model: the server is pinned to it)."""
    from fastapi import HTTPException
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    loaded = {name: (model.model, served_tokenizer(model)) for name, model in served.items()}

    class Pinned(ModelManager):
        """transformers' model manager holding models that are already loaded (never unloaded)."""

        def __init__(self) -> None:
            super().__init__(device=str(next(iter(served.values())).model.device), force_model=None,
                             model_timeout=-1)
            self.force_model = next(iter(served)) if len(served) == 1 else None

        def load_model_and_processor(self, model_id_and_revision: str, *args: Any, **kwargs: Any):
            name = model_id_and_revision.removesuffix("@main")
            if name not in loaded:
                raise HTTPException(status_code=404, detail=f"model {name!r} is not served here; ask for one of: "
                                                            + ", ".join(loaded))
            return loaded[name]

        def list_models(self, cache_dir: str | None = None) -> list[dict]:
            return [{"id": name, "object": "model", "created": 0, "owned_by": "asymtune",
                     "status": {"value": "loaded"}} for name in loaded]

        def shutdown(self) -> None:
            """Nothing to unload: the models belong to asymtune."""

    manager = Pinned()
    state = GenerationState(continuous_batching=False)
    return build_server(
        manager, ChatCompletionHandler(manager, state), completion_handler=CompletionHandler(manager, state),
        response_handler=ResponseHandler(manager, state), transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(manager, state), generation_state=state,
    )


def run(refs: list[str], base: str | None, root: Path, host: str, port: int, name: str | None = None,
        template: str = "auto", merge: bool = True, trust_remote_code: bool = False, device: str | None = None,
        log: Callable[[str], None] = print) -> str:
    """Serve the run or export `refs` names (or the base model `base`) on host:port until interrupted; returns the
    model id(s) it was served under (`name`, default the run's name). Several runs (adapters of one base model):
    one model in memory, each adapter under its recipe's name (`mixed`)."""
    import uvicorn

    check_available()
    if len(refs) > 1 and (name or base):
        raise UserError("with several runs, each is served under its recipe's name: drop --name and --base")
    with loading.scratch_dir() as scratch:
        if len(refs) > 1:
            adapters = mixed.open_adapters(refs, root, Path(scratch), True, trust_remote_code, device, log)
            served = mixed.as_models(adapters, template)
            log(f"serving {', '.join(served)} ({adapters.path}) on http://{host}:{port}/v1")
        else:
            model = causal.open_one(refs[0] if refs else None, base, root, Path(scratch), template, merge,
                                    trust_remote_code, device, log)
            served = {name or model.name.split("/")[0].removeprefix("base "): model}
            log(f"serving {model.name} as model {next(iter(served))!r} ({model.style} prompts) on "
                f"http://{host}:{port}/v1")
        uvicorn.run(build_app(served), host=host, port=port, log_level="warning")
    return ", ".join(served)
