"""`asymtune export`: a run's adapter, or a compact folder, written in another form (adapters/export.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from asymtune import atomic
from asymtune.adapters import export as forms
from asymtune.adapters.export import ExportError
from asymtune.adapters.lora import check_adapter
from asymtune.inference import loading
from asymtune.runs import resolve_one

FORMS = ("compact", "peft", "merged")


def export(source: str, form: str, target: Path, root: Path, log: Callable[[str], None],
           trust_remote_code: bool = False) -> int:
    """Write `source` (a run: folder or name under `root`; or a compact folder for --peft) as `form` into the
    new folder `target`; return the bytes written. Nothing is copied through a symlink out of the run."""
    if target.exists():
        raise ExportError(f"{target} exists; choose a new folder (exports never overwrite)")
    blocking = atomic.blocking_file(target)
    if blocking is not None:
        raise ExportError(f"{target}: {blocking} is a file, so no folder can be made under it")
    if form == "peft" and forms.is_compact(Path(source)):
        forms.write_peft(Path(source), target)
        return forms.folder_size(target)
    run = resolve_one(source, root, "export")
    if run.status != "completed" or not (run.adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"{run.path}: status {run.status}; no saved adapter to export (full fine-tuning and "
                          f"linear probing save the whole model in {run.model_dir.name}/)")
    run.check_links()
    check_adapter(run.adapter_dir)
    if form == "compact":
        forms.write_compact(run.adapter_dir, target, run.recipe_file)
    elif form == "peft":
        with atomic.directory(target) as scratch:
            shutil.copytree(run.adapter_dir, scratch, dirs_exist_ok=True)  # labels.json included
            shutil.copy(run.recipe_file, scratch / forms.RECIPE_FILE)
    else:
        recipe = run.trained_recipe(trust_remote_code)
        full_precision = recipe.model.model_copy(update={"quantization": None})  # merge into unquantized weights
        trained = loading.Trained(run.path.name, recipe.model_copy(update={"model": full_precision}), run.adapter_dir,
                                  None, run.labels())
        merged, processor = loading.load(trained, merge=True, device="cpu", log=log)
        forms.write_merged(merged, processor, run.adapter_dir, target, run.recipe_file)
    return forms.folder_size(target)
