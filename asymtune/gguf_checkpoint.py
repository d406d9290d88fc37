"""A GGUF causal LM dequantized to float32, loaded as a plain transformers model or converted once to an HF folder.

transformers reads GGUF files (with the `gguf` package) and dequantizes them on load; the model keeps a
GGUF quantization marker, which is dropped here so it trains and saves like any unquantized model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from asymtune import atomic


def load_gguf(gguf_file: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF checkpoint dequantized to float32, as a plain (unquantized) transformers model."""
    folder, filename = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain HF folder (safetensors, config, tokenizer)."""
    model, tokenizer = load_gguf(gguf_file)
    with atomic.directory(target) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
