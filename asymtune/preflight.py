"""A recipe checked against its model's config before any weights load, so an impossible size is an error
in a second, not an allocation that runs until the machine refuses.

- adapter.rank ≤ min(d_in, d_out) of every targeted linear layer: a rank above it is no longer low rank,
  and an orthogonal factor of that shape does not exist.
- data.max_length ≤ the positions the model has (RoBERTa-style models keep padding_idx + 1 of them back);
  when data.max_length was left at its default, it is lowered to them instead.
"""

from __future__ import annotations

from collections.abc import Callable

from asymtune.errors import UserError
from asymtune.recipe import RANKED_METHODS, Recipe


class RecipeDoesNotFitModel(UserError):
    """A recipe asks for sizes its model does not have."""


def fit_to_model(recipe: Recipe, source: str, log: Callable[[str], None]) -> Recipe:
    """`recipe` (from the file `source`), its default data.max_length lowered to the model's positions;
    RecipeDoesNotFitModel naming the key when a rank or a set max_length does not fit."""
    from transformers import AutoModel, AutoModelForCausalLM

    from asymtune.models import linear_dimensions, model_config

    config = model_config(recipe.model, log)
    adapter = recipe.adapter
    if adapter.method in RANKED_METHODS and adapter.rank is not None and adapter.targets is not None:
        model_class = AutoModelForCausalLM if recipe.task == "sft" else AutoModel
        try:
            dims = linear_dimensions(config, adapter.targets, model_class)
        except Exception:  # a config no Auto class builds on the meta device (some timm, custom code): the
            dims = []  # weights load next and say what is wrong
        if dims:
            widest = min(min(d_out, d_in) for d_out, d_in in dims)
            if adapter.rank > widest:
                raise RecipeDoesNotFitModel(
                    f"{source}: 'adapter.rank' {adapter.rank} exceeds the smallest targeted layer of "
                    f"{recipe.model.name or recipe.model.gguf_file} (min(d_in, d_out) = {widest}); a rank-r "
                    f"factor needs r ≤ {widest}"
                )
    positions = _positions(config)
    if positions is None or recipe.task == "image" or recipe.data.max_length <= positions:
        return recipe
    if "max_length" in recipe.data.model_fields_set:
        raise RecipeDoesNotFitModel(
            f"{source}: 'data.max_length' {recipe.data.max_length} exceeds the {positions} positions of "
            f"{recipe.model.name or recipe.model.gguf_file}; set it to {positions} or less"
        )
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"max_length": positions})})


def _positions(config) -> int | None:
    """Token positions the model can embed, or None when it has no fixed limit (relative positions)."""
    text = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            offset = (getattr(text, "pad_token_id", None) or 0) + 1 if "roberta" in str(text.model_type) else 0
            return value - offset
    return None
