"""How a causal LM answers: prompt styles and sampling settings (light: the CLI imports it to parse options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GenerationConfig

STYLES = ("alpaca", "chat", "raw")  # how a question becomes a prompt (inference/prompts.py)


@dataclass(frozen=True)
class Sampling:
    """How answers are drawn: greedy when temperature is 0, else sampled (temperature, nucleus top_p), seeded."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def config(self, model, pad_token_id: int) -> GenerationConfig:
        """The model's own generation config (its EOS tokens) with these settings, nothing else left to chance."""
        from transformers import GenerationConfig

        config = GenerationConfig.from_dict(model.generation_config.to_dict())
        sampled = self.temperature > 0
        config.update(max_new_tokens=self.max_new_tokens, do_sample=sampled, num_beams=1, pad_token_id=pad_token_id,
                      temperature=self.temperature if sampled else None, top_p=self.top_p if sampled else None,
                      top_k=None, min_length=None, max_length=None)
        return config
