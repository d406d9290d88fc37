"""Adapter forms: PEFT (both factors materialized), compact (frozen random factors as their seed),
and merged (W0 + s·B·A written into the base weights).

A frozen factor drawn from (adapter seed, module name, init) is regenerated bit for bit by
`make_factor`, so the compact form stores only the trained factor's weights plus a spec per module.
Frozen `svd` factors depend on the base weights and are stored as weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from asymtune import atomic
from asymtune.adapters.init import checksum, make_factor
from asymtune.adapters.lora import ADAPTER_SPEC_FILE, PEFT_PREFIX, read_spec, read_weights
from asymtune.errors import UserError
from asymtune.recipe import AdapterSpec

COMPACT_FILE = "compact.json"
WEIGHTS = "adapter_model.safetensors"
SEEDED_INITS = {"orthogonal", "kaiming_uniform", "gaussian", "zero"}


class ExportError(UserError):
    """The requested form cannot be written from this source; the message says why."""


def _key(module: str, factor: str) -> str:
    return f"{PEFT_PREFIX}{module}.lora_{factor}.weight"


def _modules(weights: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in weights if ".lora_A." in k})


def _seeded_factors(spec: AdapterSpec) -> list[str]:
    """Factors the compact form stores as a spec: frozen and drawn from the seed alone."""
    return [f for f in ("A", "B") if not getattr(spec, f).trainable and getattr(spec, f).init in SEEDED_INITS]


def write_compact(adapter_dir: Path, target: Path) -> None:
    """The compact form of a PEFT adapter folder written by asymtune."""
    spec = read_spec(adapter_dir)
    if spec is None:
        raise ExportError(f"{adapter_dir}: no {ADAPTER_SPEC_FILE}; only adapters trained by asymtune can be compacted")
    seeded = _seeded_factors(spec)
    if not seeded:
        raise ExportError(f"{adapter_dir}: no frozen seeded factor (A {spec.A.label}, B {spec.B.label}); "
                          "the compact form would equal the PEFT form")
    weights = read_weights(adapter_dir / WEIGHTS)
    if not _modules(weights):
        raise ExportError(f"{adapter_dir / WEIGHTS}: holds no LoRA factors")
    kept = {key: value for key, value in weights.items() if not any(f".lora_{f}." in key for f in seeded)}
    shapes = {m: {f: list(weights[_key(m, f)].shape) for f in seeded} for m in _modules(weights)}
    dtypes = {f: str(weights[_key(_modules(weights)[0], f)].dtype).removeprefix("torch.") for f in seeded}
    checksums = {m: {f: checksum(_regenerate(spec, m, f, shape)) for f, shape in factors.items()}
                 for m, factors in shapes.items()}
    record = {"adapter": spec.model_dump(mode="json"), "regenerated": seeded, "dtypes": dtypes, "shapes": shapes,
              "checksums": checksums}
    with atomic.directory(target) as scratch:
        save_file(kept, scratch / WEIGHTS)
        shutil.copy(adapter_dir / "adapter_config.json", scratch / "adapter_config.json")
        (scratch / COMPACT_FILE).write_text(json.dumps(record, indent=2))


def write_peft(compact_dir: Path, target: Path) -> None:
    """Rebuild the PEFT form (loadable by `PeftModel.from_pretrained`) from a compact folder."""
    try:
        record = json.loads((compact_dir / COMPACT_FILE).read_bytes().decode("utf-8"))
        spec = AdapterSpec.model_validate(record["adapter"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):  # JSON and pydantic errors are ValueErrors
        raise ExportError(f"{compact_dir / COMPACT_FILE}: damaged, not a compact adapter record") from None
    weights = read_weights(compact_dir / WEIGHTS)
    for module, shapes in record["shapes"].items():
        for factor, shape in shapes.items():
            value = _regenerate(spec, module, factor, shape)
            expected = record.get("checksums", {}).get(module, {}).get(factor)
            if expected is not None and checksum(value) != expected:
                raise ExportError(
                    f"{compact_dir}: the frozen {factor} of {module} regenerates differently here than where the "
                    "compact form was written (another torch random number stream?); refusing to write a wrong "
                    "adapter: export the PEFT form where the adapter was trained"
                )
            weights[_key(module, factor)] = value.to(getattr(torch, record["dtypes"][factor])).contiguous()
    with atomic.directory(target) as scratch:
        save_file(weights, scratch / WEIGHTS)
        shutil.copy(compact_dir / "adapter_config.json", scratch / "adapter_config.json")
        (scratch / ADAPTER_SPEC_FILE).write_text(json.dumps(record["adapter"], indent=2))


def _regenerate(spec: AdapterSpec, module: str, factor: str, shape: list[int]) -> torch.Tensor:
    """The frozen seeded factor of `module`, drawn again (float64) from the adapter seed."""
    init = getattr(spec, factor).init
    return make_factor(init, factor, tuple(shape), spec.rank, spec.seed, module, base_weight=None)


def is_compact(folder: Path) -> bool:
    return (folder / COMPACT_FILE).is_file()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_merged(model: torch.nn.Module, tokenizer, adapter_dir: Path, target: Path) -> None:
    """Merge the adapter into `model` (W0 + s·B·A) and save it as a plain safetensors checkpoint."""
    from asymtune.adapters.lora import load_adapter

    merged = load_adapter(model, adapter_dir).merge_and_unload()
    with atomic.directory(target) as scratch:
        merged.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
