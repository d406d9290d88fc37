"""Offline fixtures: a tiny random Llama with a tokenizer trained here, and small data files."""

from __future__ import annotations

import os

# Tests never touch the network: hub lookups fail at once. Set before the HF libraries read it on import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from asymtune.data.formats import ALPACA_PROMPT_NO_INPUT, ALPACA_PROMPT_WITH_INPUT

# Where device-sensitive tests run: always the CPU, and the GPU too when one is present (the device
# machine checks the CUDA and bfloat16 paths this way; CI has no GPU).
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

WORDS = (
    "the a building permit is required for new construction extensions and facade changes "
    "municipality committee grants permission to build under the planning act processing time "
    "weeks simple cases larger projects contractor insurance inspection energy declaration roof "
    "window wall foundation what how long does it take who pays when must why can"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def corpus(n: int, seed: int = 0) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        length = int(torch.randint(4, 14, (1,), generator=generator))
        idx = torch.randint(0, len(WORDS), (length,), generator=generator).tolist()
        lines.append(" ".join(WORDS[i] for i in idx))
    return lines


def alpaca_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    texts = corpus(3 * n, seed)
    return [
        {"instruction": texts[3 * i], "input": texts[3 * i + 1] if i % 3 == 0 else "", "output": texts[3 * i + 2]}
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A 400-token byte-level BPE trained offline on the fixture vocabulary and the Alpaca prompts."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus(400) + [ALPACA_PROMPT_WITH_INPUT, ALPACA_PROMPT_NO_INPUT] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_model(folder: Path, config_class, model_class, **config) -> Path:
    """Save the fixture tokenizer and a seeded random `model_class` built from `config` into `folder`."""
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(folder)
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    model_class(config_class(vocab_size=len(tokenizer), **special, **config)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A saved 2-layer Llama (hidden 32) with the fixture tokenizer."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-llama"), LlamaConfig, LlamaForCausalLM, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    """A saved 2-layer RoBERTa encoder (hidden 32) with the fixture tokenizer."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-roberta"), RobertaConfig, RobertaModel, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=300, type_vocab_size=1,
    )


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory) -> Path:
    """A saved 1+1-layer BART (d_model 32) with the fixture tokenizer; decoding starts and ends at </s>."""
    eos = train_tokenizer().eos_token_id
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-bart"), BartConfig, BartForConditionalGeneration, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, decoder_start_token_id=eos, forced_eos_token_id=eos,
    )


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A saved 2-layer ViT (hidden 32, 16-pixel images, 8-pixel patches) with its image processor."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=1000,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama(tiny_llama_dir) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(tiny_llama_dir)


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(40))


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (or YAML text) to tmp_path/NAME and return the path."""

    def write(content: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def sft_recipe(model_dir: Path, data_file: Path, **adapter) -> dict:
    """A small runnable SFT recipe on the tiny model; `adapter` overrides the B-only defaults."""
    return {
        "name": "tiny-sft",
        "task": "sft",
        "seed": 0,
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "format": "alpaca", "eval_fraction": 0.2, "max_length": 128},
        "adapter": {
            "rank": 4,
            "targets": ["q_proj", "v_proj"],
            "A": {"init": "orthogonal", "trainable": False},
            "B": {"init": "zero", "trainable": True},
            **adapter,
        },
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 0.01, "logging_steps": 1},
    }


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, tmp_path_factory):
    """A B-only run (tiny Llama, alpaca rows) whose adapter changes the model's greedy answers (high learning rate,
    enough steps), trained once per test module through `asymtune train`."""
    from click.testing import CliRunner

    from asymtune.cli import main
    from asymtune.runs import resolve

    folder = tmp_path_factory.mktemp("sft-run")
    recipe = sft_recipe(tiny_llama_dir, write_jsonl(folder / "d.jsonl", alpaca_rows(24)))
    recipe["train"].update(max_steps=8, learning_rate=0.05)
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(folder / "r.yaml"), "--output-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(folder / "runs")])
    return run


@contextlib.contextmanager
def serving(app):
    """`app` behind uvicorn on a free loopback port for the block; yields its /v1 base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
