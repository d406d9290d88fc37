"""`asymtune export`: a run's adapter, or a compact folder, written in another form (adapters/export.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from asymtune.adapters import export as forms
from asymtune.adapters.export import ExportError
from asymtune.adapters.lora import check_adapter
from asymtune.runs import resolve_one

FORMS = ("compact", "peft", "merged")


def export(source: str, form: str, target: Path, root: Path, log: Callable[[str], None],
           trust_remote_code: bool = False) -> int:
    """Write `source` (a run: folder or name under `root`; or a compact folder for --peft) as `form` into the
    new folder `target`; return the bytes written. Nothing is copied through a symlink out of the run."""
    if target.exists():
        raise ExportError(f"{target} exists; choose a new folder (exports never overwrite)")
    blocking = next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)
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
        forms.write_compact(run.adapter_dir, target)
    elif form == "peft":
        shutil.copytree(run.adapter_dir, target)
    else:
        from asymtune.models import load_causal_lm

        model, tokenizer = load_causal_lm(run.trained_recipe(trust_remote_code).model, log)
        forms.write_merged(model, tokenizer, run.adapter_dir, target)
    return forms.folder_size(target)
