"""Where models run: `auto` is the first of CUDA, Apple's MPS and the CPU that this machine has, each with a dtype
that trains and infers there (bfloat16 on a CUDA GPU that supports it, float32 elsewhere)."""

from __future__ import annotations

import torch


def best_available() -> str:
    """"cuda" when a CUDA GPU is visible, else "mps" on Apple silicon, else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick(requested: str | None) -> str:
    """`requested` (e.g. "cpu", "cuda:1", "mps") unless it is None or "auto", else `best_available()`."""
    return best_available() if requested in (None, "auto") else requested


def auto_dtype(device: str | None = None) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, float32 on MPS, the CPU and older GPUs (float16 training would
    need loss scaling, and MPS's bfloat16 depends on the macOS release)."""
    kind = torch.device(pick(device)).type
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def name(device: str | None = None) -> str:
    """The device for people and env.json: the GPU's name, "mps" or "cpu"."""
    kind = torch.device(pick(device)).type
    return torch.cuda.get_device_name(0) if kind == "cuda" else kind
