"""What `predict`, `generate`, `chat` and `serve` run: a trained model named the way every command names runs,
or an export of one, loaded with its adapter merged into the weights (or kept beside them).

A source is a run (folder, or recipe name: its newest run under the runs root), a compact export (the frozen
factor regenerated from its seed), a merged export, each as a `Trained`. Merging computes
W = W0 + s·B·A once, so inference runs the base model's layers with no adapter overhead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from asymtune import devices
from asymtune import recipe as recipes
from asymtune.adapters import export as forms
from asymtune.adapters.export import RECIPE_FILE
from asymtune.adapters.lora import ADAPTER_LABELS_FILE, check_adapter
from asymtune.errors import UserError
from asymtune.runs import RunDir, RunDirError, read_labels, resolve_one, untrusted_recipe

WHOLE_MODEL_METHODS = ("full", "linear_probe")


class SourceError(UserError):
    """A name given to an inference command names nothing that can be loaded; the message says what it is."""


@dataclass(frozen=True)
class Trained:
    """A trained model as inference needs it: its recipe (model, data format, lengths), the PEFT adapter to put on
    the recipe's model, or the folder holding the whole model instead, and a classifier's class names."""

    name: str
    recipe: recipes.Recipe
    adapter_dir: Path | None
    model_dir: Path | None
    labels: list[str] | None

    @property
    def task(self) -> str:
        return self.recipe.task


def locate(ref: str, root: Path, scratch: Path, trust_remote_code: bool = False) -> Trained:
    """The trained model `ref` names: an export folder (compact, PEFT or merged, each holding RECIPE_FILE), else a
    run (`runs.resolve_one`). A compact export's PEFT form is regenerated into `scratch` (fingerprints checked)."""
    folder = Path(ref)
    exported = folder.is_dir() and (folder / RECIPE_FILE).is_file()
    forms_here = folder.is_dir() and (forms.is_compact(folder) or any(
        (folder / name).is_file() for name in ("adapter_config.json", "config.json")))
    if forms_here and not exported:
        raise SourceError(f"{folder}: a model or adapter folder without {RECIPE_FILE}, so its task and data format "
                          "are unknown; pass a run or an `asymtune export` of one (a base model goes in --base)")
    if not exported:
        return from_run(resolve_one(ref, root, "run"), trust_remote_code)
    trained = untrusted_recipe(folder / RECIPE_FILE, trust_remote_code)
    labels = read_labels(folder / ADAPTER_LABELS_FILE)
    if forms.is_compact(folder):
        forms.write_peft(folder, scratch / "adapter")
        return Trained(folder.name, trained, scratch / "adapter", None, labels)
    if (folder / "adapter_config.json").is_file():
        check_adapter(folder)
        return Trained(folder.name, trained, folder, None, labels)
    if (folder / "config.json").is_file():
        return Trained(folder.name, trained, None, folder, labels)
    raise SourceError(f"{folder}: holds {RECIPE_FILE} but no adapter (adapter_config.json, {forms.COMPACT_FILE}) "
                      "or model (config.json)")


def from_run(run: RunDir, trust_remote_code: bool = False) -> Trained:
    """The trained model of a completed run: its adapter, or its whole model (full fine-tuning, linear probing)."""
    if run.status != "completed":
        raise RunDirError(f"{run.path}: status {run.status}; only a completed run has a trained model to use")
    run.check_links()
    trained = run.trained_recipe(trust_remote_code)
    name = f"{trained.name}/{run.path.name}"
    if trained.adapter.method in WHOLE_MODEL_METHODS:
        if not (run.model_dir / "config.json").is_file():
            raise RunDirError(f"{run.model_dir}: missing; a {trained.adapter.method} run saves its model there")
        return Trained(name, trained, None, run.model_dir, run.labels())
    if not (run.adapter_dir / "adapter_config.json").is_file():
        raise RunDirError(f"{run.path}: no adapter/ (adapter_config.json missing); nothing trained to load")
    check_adapter(run.adapter_dir)
    return Trained(name, trained, run.adapter_dir, None, run.labels())


def check_one_base(refs: list[str], trained: list[Trained], what: str) -> None:
    """SourceError unless every source is an adapter (not a whole model) for the first one's base model and task;
    `what` (e.g. "merge") says what they are for."""
    first = trained[0].recipe
    for ref, source in zip(refs, trained, strict=True):
        if source.adapter_dir is None:
            raise SourceError(f"{ref}: a whole model ({source.recipe.adapter.method}), not an adapter; {what} takes "
                              "adapters")
        model, task = source.recipe.model, source.recipe.task
        if (model.name, model.gguf_file) != (first.model.name, first.model.gguf_file):
            raise SourceError(f"{ref}: trained on {model.name or model.gguf_file}, {refs[0]} on "
                              f"{first.model.name or first.model.gguf_file}; {what} takes adapters of one base model")
        if task != first.task:
            raise SourceError(f"{ref}: a {task} adapter, {refs[0]} a {first.task} one; {what} takes adapters of one "
                              "task")


def load(trained: Trained, merge: bool = True, device: str | None = None,
         log: Callable[[str], None] = print) -> tuple[nn.Module, Any]:
    """(model in eval mode on `device`, tokenizer or image processor) for `trained`; the adapter merged into the
    weights when `merge` (PEFT's merge_and_unload: exact up to rounding), else left as PEFT layers."""
    from asymtune.tasks.base import family, load_adapted

    recipe = trained.recipe
    if trained.model_dir is not None:
        spec = recipe.model.model_copy(update={"name": str(trained.model_dir), "gguf_file": None,
                                               "quantization": None})
        recipe = recipe.model_copy(update={"model": spec})
    model, processor = family(recipe.task).load_model(recipe, trained.labels)
    if trained.adapter_dir is not None:
        model = load_adapted(model, recipe, trained.adapter_dir)
        if merge:
            model = model.merge_and_unload()
    return model.to(device_or_default(device)).eval(), processor


def device_or_default(device: str | None) -> str:
    """`device`, else (None or "auto") CUDA, then MPS, then the CPU: `devices.pick`."""
    return devices.pick(device)


def scratch_dir() -> tempfile.TemporaryDirectory:
    """Where a compact export's regenerated adapter lives while it is in use."""
    return tempfile.TemporaryDirectory(prefix="asymtune-adapter-")

