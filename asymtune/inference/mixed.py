"""Several trained adapters on one base model in memory, each row of a batch answered by the adapter it names.

`open_adapters` loads the base model once and every run's adapter on it as a PEFT adapter. When the adapters are one
family (a shared frozen A: `adapters.merge.shared_a_reason`), each layer computes x·Aᵀ once for the whole batch
and applies each row's B (`adapters.shared_a`); otherwise PEFT's mixed batch runs each adapter on its rows. Either
way one batch is one `generate(..., adapter_names=[a name per row])`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymtune.adapters import merge as merges
from asymtune.adapters import shared_a
from asymtune.data.sources import DataError, load_table
from asymtune.errors import UserError
from asymtune.inference import loading
from asymtune.inference.loading import Trained

ADAPTER_COLUMN = "adapter"  # which adapter answers a row of a `predict` input with several runs


@dataclass
class Adapters:
    """The base model with every source's adapter (PEFT adapter `keys[i]` is `sources[i]`), its tokenizer, the
    names rows may use for each, and why they are not served through one shared A (None when they are)."""

    model: Any
    tokenizer: Any
    sources: list[Trained]
    keys: list[str]
    names: dict[str, str]
    not_shared: str | None

    def key(self, name: str, where: str) -> str:
        """The PEFT adapter a row's `name` means; DataError naming `where` when it names none of them."""
        if name not in self.names:
            raise DataError(f"{where}: adapter {name!r} is none of the runs given; one of: "
                            + ", ".join(sorted(self.names)))
        return self.names[name]

    @property
    def path(self) -> str:
        """How a mixed batch is computed, for people: the shared A, or PEFT's mixed batch and why."""
        return "one shared A (x·Aᵀ once per layer)" if self.not_shared is None else (
            f"PEFT's mixed batch ({self.not_shared})")


def open_adapters(refs: list[str], root: Path, scratch: Path, shared: bool = True, trust_remote_code: bool = False,
                  device: str | None = None, log: Callable[[str], None] = print) -> Adapters:
    """The adapters `refs` name (runs or exports of one base model, task sft) on one copy of the base model; through
    the shared A when they are one family and `shared`."""
    from peft import PeftModel

    from asymtune.tasks.base import family

    if len(refs) < 2:
        raise UserError("several adapters at once: name at least two runs")
    sources = [loading.locate(ref, root, scratch / str(i), trust_remote_code) for i, ref in enumerate(refs)]
    loading.check_one_base(refs, sources, "serving several adapters at once")
    if sources[0].task != "sft":
        raise UserError(f"{refs[0]}: a {sources[0].task} run; several adapters at once serve causal LMs (task sft)")
    not_shared = merges.shared_a_reason([merges.read(ref, s.adapter_dir) for ref, s in zip(refs, sources, strict=True)])
    if not shared and not_shared is None:
        not_shared = "asked for"
    base, tokenizer = family("sft").load_model(sources[0].recipe, None)
    keys = [f"adapter{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0].adapter_dir), adapter_name=keys[0])
    for key, source in zip(keys[1:], sources[1:], strict=True):
        model.load_adapter(str(source.adapter_dir), adapter_name=key)
    model = model.to(loading.device_or_default(device)).eval()
    if not_shared is None:
        shared_a.enable(model, keys)
    adapters = Adapters(model, tokenizer, sources, keys, row_names(refs, sources, keys), not_shared)
    log(f"{len(sources)} adapters on one {sources[0].recipe.model.name}: {adapters.path}")
    return adapters


def labels(sources: list[Trained]) -> list[str]:
    """Each source's name for people: its recipe's name, or its run label when another source has that name too."""
    recipe_names = [source.recipe.name for source in sources]
    return [source.recipe.name if recipe_names.count(source.recipe.name) == 1 else source.name for source in sources]


def row_names(refs: list[str], sources: list[Trained], keys: list[str]) -> dict[str, str]:
    """Every name a row may give its adapter: the ref as given, the run's label, its `labels` name."""
    names: dict[str, str] = {}
    for ref, source, label, key in zip(refs, sources, labels(sources), keys, strict=True):
        names.update({ref: key, source.name: key, label: key})
    return names


def read_rows(adapters: Adapters, path: Path) -> tuple[list, list[str]]:
    """(prompt rows, each row's PEFT adapter) of an input file whose ADAPTER_COLUMN names each row's run; each row's
    prompt is built as its run trained (that run's data format)."""
    from asymtune.data.formats import to_prompts

    table = load_table(str(path), "train", lambda message: None, encoding=adapters.sources[0].recipe.data.encoding)
    if ADAPTER_COLUMN not in table.column_names:
        raise DataError(f"{path}: no {ADAPTER_COLUMN!r} column; with several runs, each row names the one that "
                        f"answers it ({', '.join(sorted(adapters.names))})")
    if len(table) == 0:
        raise DataError(f"{path}: holds no rows")
    keys = [adapters.key(str(name), f"{path}: row {i}") for i, name in enumerate(table[ADAPTER_COLUMN])]
    rows: list = [None] * len(keys)
    for key, source in zip(adapters.keys, adapters.sources, strict=True):
        indices = [i for i, k in enumerate(keys) if k == key]
        if indices:
            built = to_prompts(table.select(indices).remove_columns(ADAPTER_COLUMN), source.recipe.data.format,
                               str(path))
            for index, row in zip(indices, built, strict=True):
                rows[index] = row
    return rows, keys


class Routed:
    """The `shared` model seen as one of its adapters: `generate` answers every row with PEFT adapter `key`; every
    other attribute is the model's own (what `prompts.check_fits` reads). `serve` batches rows of several adapters
    into one call on `shared` itself."""

    def __init__(self, model: Any, key: str) -> None:
        self.shared, self.key = model, key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        return self.shared.generate(*args, adapter_names=[self.key] * ids.shape[0], **kwargs)


def as_models(adapters: Adapters, template: str = "auto") -> dict[str, Any]:
    """Each adapter as a `causal.CausalLM` of its own (the shared model `Routed` to it, the shared tokenizer, its
    run's prompt style), by its `labels` name."""
    from asymtune.inference import prompts
    from asymtune.inference.causal import CausalLM

    tokenizer = adapters.tokenizer
    return {name: CausalLM(name, Routed(adapters.model, key), tokenizer, prompts.style_for(source.recipe, tokenizer,
                                                                                              template))
            for name, key, source in zip(labels(adapters.sources), adapters.keys, adapters.sources, strict=True)}
