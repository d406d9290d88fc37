"""`asymtune merge`: several trained adapters on one base model as one weighted adapter, written as a run.

Adapters of one family (a shared frozen A) merge exactly at their rank (`adapters.merge`); others merge through
PEFT's `add_weighted_adapter`, which is said, with the rank it gave and the measured error. The result is a run
directory like a trained one (recipe.yaml, adapter/, status completed) plus merge.json (sources, weights, how,
error), so `eval`, `compare`, `predict`, `export` and the rest take it as they take any run. For sft, its recipe's
data lists every source's data, so `asymtune eval MERGED` reports the eval loss on each source's own eval set.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from asymtune import atomic
from asymtune import recipe as recipes
from asymtune.adapters import export as forms
from asymtune.adapters import merge as merges
from asymtune.adapters.lora import ADAPTER_SPEC_FILE, ADAPTER_WEIGHTS_FILE
from asymtune.errors import UserError
from asymtune.inference import loading
from asymtune.runs import RunDir

MERGE_FILE = "merge.json"
COMPACT_DIR = "compact"
COMBINATIONS = ("auto", "exact", *merges.PEFT_COMBINATIONS)
EXACT = ("shared-A", "cat")  # the combinations whose ΔW is Σ wᵢ·ΔWᵢ up to rounding


class MergeError(UserError):
    """The adapters cannot be merged as asked; the message names the source, flag or key."""


@dataclass(frozen=True)
class Merged:
    """A finished merge: its run, how it merged (shared-A, svd, cat), the rank, whether exact, and the error."""

    run: RunDir
    combination: str
    rank: int
    exact: bool
    error: merges.DeltaError
    not_shared: str | None  # why the sources do not share A (None: one family)


def parse_weights(text: str | None, count: int) -> list[float]:
    """--weights as floats, one per source (default: equal, summing to 1)."""
    if text is None:
        return [1.0 / count] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise MergeError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.5,0.5") from None
    if len(weights) != count:
        raise MergeError(f"--weights {text!r}: {len(weights)} weight(s) for {count} adapters; give one per RUN")
    if not all(math.isfinite(w) for w in weights) or not any(weights):
        raise MergeError(f"--weights {text!r}: weights must be finite and not all zero")
    return weights


def merge(refs: list[str], weights_text: str | None, combination: str, name: str | None, output: Path | None,
          root: Path, argv: list[str], log: Callable[[str], None], trust_remote_code: bool = False) -> Merged:
    """Merge the adapters `refs` name (runs or exports) with --weights into a new run (`output`, else a run named
    `name` under `root`)."""
    if len(refs) < 2:
        raise MergeError("give at least two runs to merge")
    if combination not in COMBINATIONS:
        raise MergeError(f"--combination {combination!r}: one of {', '.join(COMBINATIONS)}")
    weights = parse_weights(weights_text, len(refs))
    if name is not None and not recipes.NAME_PATTERN.match(name):
        raise MergeError(f"--name {name!r}: letters a-z, digits and . _ - only")
    if output is not None:
        check_output(output)
    with tempfile.TemporaryDirectory(prefix="asymtune-merge-") as scratch:
        trained = [loading.locate(ref, root, Path(scratch) / str(i), trust_remote_code) for i, ref in enumerate(refs)]
        loading.check_one_base(refs, trained, "merge")
        saved = [merges.read(ref, t.adapter_dir) for ref, t in zip(refs, trained, strict=True)]
        not_shared = merges.shared_a_reason(saved)
        how = chosen(combination, not_shared)
        exact = how in EXACT
        if how == "shared-A":
            tensors, config, spec = merges.merge_shared_a(saved, weights), saved[0].config, saved[0].spec
        else:
            log(f"merging through PEFT's add_weighted_adapter ({how}): "
                f"{not_shared or 'asked for'}; the merge is {'exact' if exact else 'not exact'}")
            tensors, config = merges.merge_with_peft(base_model(trained[0].recipe), saved, weights, how)
            spec = None
        result = merges.Saved("merged", Path(), config, tensors, spec)
        error = merges.delta_error(saved, weights, result)
        recipe = merged_recipe([t.recipe for t in trained], name or default_name(trained), config, how == "shared-A")
        run = write_run(output, root, recipe, argv)
        write_adapter(run, tensors, config, spec)
        record = {"combination": how, "exact": exact, "rank": config["r"],
                  "not_shared": not_shared, "weights": weights,
                  "sources": [{"ref": ref, "name": t.name, "adapter": str(t.adapter_dir.resolve()), "weight": w}
                              for ref, t, w in zip(refs, trained, weights, strict=True)],
                  "delta_error": {"max_abs": error.max_abs, "relative": error.relative}}
        atomic.write_json(run.path / MERGE_FILE, record)
    if how == "shared-A" and forms.seeded_factors(spec):
        forms.write_compact(run.adapter_dir, run.path / COMPACT_DIR, run.recipe_file)
    run.write_metrics({"merge_delta_max_abs_error": error.max_abs, "merge_delta_relative_error": error.relative})
    run.set_status("completed")
    return Merged(run, how, config["r"], exact, error, not_shared)


def check_output(output: Path) -> None:
    """MergeError unless `output` can become a new folder (it does not exist, and no file stands in its way)."""
    if output.exists():
        raise MergeError(f"--output {output}: exists; choose a new folder (a merge never overwrites)")
    blocking = atomic.blocking_file(output)
    if blocking is not None:
        raise MergeError(f"--output {output}: {blocking} is a file, so no folder can be made under it")


def chosen(combination: str, not_shared: str | None) -> str:
    """How to merge: "shared-A" (exact, rank r) when asked for auto or exact and the adapters share A, else PEFT's
    svd (for auto) or the combination asked for; MergeError for exact without a shared A."""
    if combination == "exact" and not_shared:
        raise MergeError(f"--combination exact needs adapters that share A, and these do not: {not_shared}")
    if combination in ("auto", "exact"):
        return "svd" if not_shared else "shared-A"
    return combination


def default_name(trained: list[loading.Trained]) -> str:
    """merge-<first recipe name>-<second>..., cut to a folder-friendly length."""
    names = dict.fromkeys(t.recipe.name for t in trained)
    return ("merge-" + "-".join(names))[:100].rstrip("-.")


def merged_recipe(sources: list[recipes.Recipe], name: str, config: dict, shared_a: bool) -> recipes.Recipe:
    """The first source's recipe renamed, with the merged adapter's rank and alpha (and, unless it kept the shared A,
    both factors as trained LoRA factors); for sft, its data the list of every source's data (each evaluated on its
    own eval split, as its run was)."""
    document = sources[0].model_dump(mode="json")
    document["name"] = name
    document["adapter"].update({"rank": config["r"], "alpha": config["lora_alpha"]})
    if not shared_a:  # PEFT's merged factors: neither is a seeded draw any more
        document["adapter"].update({"A": {"init": "kaiming_uniform", "trainable": True},
                                    "B": {"init": "zero", "trainable": True}})
    if sources[0].task == "sft":
        mix = list({json.dumps(s, sort_keys=True): s for r in sources for s in data_sources(r.data)}.values())
        if len(mix) > 1:
            document["data"].update({"train": mix, "eval": None})
    try:
        return recipes.Recipe.model_validate(document)
    except ValueError as error:
        raise MergeError(f"the merged recipe does not validate: {str(error).splitlines()[0]}") from None


def data_sources(data: recipes.DataSpec) -> list[dict[str, Any]]:
    """A recipe's sft data as entries of a data.train list."""
    if isinstance(data.train, list):
        return [source.model_dump(mode="json") for source in data.train]
    return [{"train": data.train, "format": data.format, "config": data.config, "split": data.split,
             "eval": data.eval}]


def base_model(recipe: recipes.Recipe):
    """The recipe's base model, without an adapter, for PEFT's merge."""
    from asymtune.tasks.base import family

    model, _ = family(recipe.task).load_model(recipe, None)
    return model


def write_run(output: Path | None, root: Path, recipe: recipes.Recipe, argv: list[str]) -> RunDir:
    """A new run folder (`output`, else under `root`) holding the merged recipe and the environment."""
    if output is None:
        run = RunDir.create(root, recipe.name)
    else:
        output.mkdir(parents=True)
        run = RunDir(output)
    run.write_recipe(recipe)
    run.write_env(recipe, argv)
    return run


def write_adapter(run: RunDir, tensors: dict, config: dict, spec: recipes.AdapterSpec | None) -> None:
    """The merged adapter in PEFT's format in RUN/adapter (with asymtune's factor spec for a shared-A merge)."""
    with atomic.directory(run.adapter_dir) as scratch:
        save_file(tensors, scratch / ADAPTER_WEIGHTS_FILE)
        (scratch / "adapter_config.json").write_text(json.dumps(config, indent=2))
        if spec is not None:
            (scratch / ADAPTER_SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
