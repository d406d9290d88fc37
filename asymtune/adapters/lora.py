"""Asymmetric LoRA on top of PEFT: W = W0 + s·B·A with per-factor init and trainability.

`apply` wraps a model with PEFT's LoRA (so adapters stay loadable by
`PeftModel.from_pretrained`), then overwrites A and B with the recipe's initialisers and
freezes the factors the recipe freezes. A frozen factor becomes a *buffer* of its
`nn.Linear` instead of a parameter: it keeps its state-dict key (PEFT format unchanged) but is
invisible to optimizers and to PEFT's `set_adapter`/`requires_grad_`, so the freeze cannot be
undone by accident. `load_adapter` restores the same freeze after `from_pretrained`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from asymtune import atomic
from asymtune.adapters.init import make_factor
from asymtune.errors import UserError
from asymtune.recipe import AdapterSpec

ADAPTER_SPEC_FILE = "asymtune_adapter.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_LABELS_FILE = "labels.json"  # a classifier's id2label / label2id (PEFT's config has no place for them)
PEFT_PREFIX = "base_model.model."


class AdapterError(UserError):
    """The adapter cannot be built on this model (e.g. a target module does not exist)."""


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter bookkeeping of an adapted model; `base` counts the model without adapters."""

    base: int
    trainable_A: int
    trainable_B: int
    frozen_A: int
    frozen_B: int
    trainable_other: int

    @property
    def trainable(self) -> int:
        return self.trainable_A + self.trainable_B + self.trainable_other

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.base

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "trainable": self.trainable, "trainable_percent": self.trainable_percent}


def apply(
    model: nn.Module,
    spec: AdapterSpec,
    task_type: str | None = None,
    adapter_name: str = "default",
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA per `spec`: PEFT layers, then recipe inits, then the recipe's freeze.

    `modules_to_save` are trained in full beside the adapter (a new classification head)."""
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.targets,
        bias="none",
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    try:
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    except ValueError as error:
        if "not found in the base model" not in str(error):
            raise
        raise AdapterError(
            f"adapter.targets {spec.targets!r} match no module of this model; linear layers it has: "
            f"{', '.join(linear_layer_names(model))}"
        ) from None
    for name, layer in lora_layers(peft_model, adapter_name):
        _initialise_layer(layer, name, spec, adapter_name)
    freeze_factors(peft_model, spec, adapter_name)
    return peft_model


def lora_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, LoraLayer]]:
    """(module name in the base model, layer) for every LoRA layer holding `adapter_name`."""
    return [
        (name.removeprefix(PEFT_PREFIX), module)
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last-name components of the model's nn.Linear layers (what `targets` can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def freeze_factors(peft_model: PeftModel, spec: AdapterSpec, adapter_name: str = "default") -> None:
    """Turn every factor the recipe freezes into a buffer (idempotent)."""
    for _, layer in lora_layers(peft_model, adapter_name):
        for factor, container in (("A", layer.lora_A), ("B", layer.lora_B)):
            if not getattr(spec, factor).trainable:
                _weight_to_buffer(container[adapter_name])


def save_adapter(
    peft_model: PeftModel, spec: AdapterSpec, adapter_dir: Path, state_dict: dict | None = None,
    labels: dict | None = None,
) -> None:
    """PEFT's `save_pretrained` (from `state_dict` when given: FSDP's gathered one) plus the factor spec
    (so `load_adapter` can restore the freeze) and a classifier's labels, atomically."""
    with atomic.directory(adapter_dir) as scratch:
        peft_model.save_pretrained(str(scratch), state_dict=state_dict)
        (scratch / ADAPTER_SPEC_FILE).write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        write_labels(scratch, labels)


def write_labels(adapter_dir: Path, labels: dict | None) -> None:
    """A classifier's id2label / label2id as ADAPTER_LABELS_FILE in an adapter folder being written."""
    if labels is not None:
        (adapter_dir / ADAPTER_LABELS_FILE).write_text(json.dumps(labels, indent=2))


def load_adapter(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """`load_peft` (checked complete), then re-freeze the factors the run froze (PEFT re-enables them)."""
    adapter_dir = Path(adapter_dir)
    peft_model = load_peft(model, adapter_dir, is_trainable)
    spec = read_spec(adapter_dir)
    if spec is not None:
        freeze_factors(peft_model, spec)
    return peft_model


def load_peft(model: nn.Module, adapter_dir: Path, is_trainable: bool = False) -> PeftModel:
    """`PeftModel.from_pretrained` on an adapter folder `check_adapter` passes; AdapterError naming the
    weights file when it lacks a tensor the model's adapter has, or a tensor does not fit (PEFT would only
    warn, and the adapter would act as if untrained)."""
    saved = check_adapter(adapter_dir)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as error:  # size mismatches, unknown targets
        raise AdapterError(f"{adapter_dir}: does not fit this model: {str(error).splitlines()[0]}") from None
    missing = sorted(set(get_peft_model_state_dict(peft_model)) - set(saved))
    if missing:
        raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: lacks {len(missing)} tensor(s) of this adapter, "
                           f"e.g. {', '.join(missing[:3])}")
    return peft_model


def check_adapter(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter's weights; AdapterError naming the file unless `adapter_dir` is a whole adapter: a PEFT
    config that parses, weights that parse, and, for LoRA, both factors of every module with shapes [r, d_in]
    and [d_out, r] that agree."""
    config_file = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{config_file}: missing") from None
    except (UnicodeDecodeError, ValueError):
        raise AdapterError(f"{config_file}: damaged, not JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise AdapterError(f"{config_file}: damaged, not a PEFT adapter config (no peft_type)")
    weights = read_weights(adapter_dir / ADAPTER_WEIGHTS_FILE)
    if not weights:
        raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: holds no tensors")
    read_spec(adapter_dir)
    if config["peft_type"] != "LORA":
        return weights
    rank, patterned = config.get("r"), bool(config.get("rank_pattern"))
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"{config_file}: 'r' is {rank!r}, not a positive rank")
    modules = {key.rsplit(".lora_", 1)[0] for key in weights if ".lora_A." in key or ".lora_B." in key}
    for module in sorted(modules):
        a, b = weights.get(f"{module}.lora_A.weight"), weights.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: {module} has lora_{'B' if b is None else 'A'} "
                               "missing; the adapter is incomplete")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (not patterned and a.shape[0] != rank):
            raise AdapterError(f"{adapter_dir / ADAPTER_WEIGHTS_FILE}: {module}: lora_A {list(a.shape)} and lora_B "
                               f"{list(b.shape)} are not [r, d_in] and [d_out, r] with r = {rank}")
    return weights


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; AdapterError naming it when it is missing or damaged."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise AdapterError(f"{path}: missing")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error type, or OSError, for every kind of damage
        raise AdapterError(f"{path}: damaged, not a safetensors file ({str(error).splitlines()[0]})") from None


def read_spec(adapter_dir: Path) -> AdapterSpec | None:
    """The factor spec asymtune saved beside a PEFT adapter (None if absent); AdapterError if damaged."""
    spec_file = adapter_dir / ADAPTER_SPEC_FILE
    if not spec_file.is_file():
        return None
    try:
        return AdapterSpec.model_validate_json(spec_file.read_bytes())
    except ValueError:  # pydantic's ValidationError (bad JSON or values) is a ValueError
        raise AdapterError(f"{spec_file}: damaged, not the adapter spec asymtune writes") from None


def count_parameters(peft_model: nn.Module, adapter_name: str = "default") -> ParameterCounts:
    """Count trainable/frozen A and B (parameters or frozen buffers) and the base model's parameters."""
    counts = dict.fromkeys(("trainable_A", "trainable_B", "frozen_A", "frozen_B"), 0)
    for _, layer in lora_layers(peft_model, adapter_name):
        for factor, container in (("A", layer.lora_A), ("B", layer.lora_B)):
            weight = container[adapter_name].weight
            state = "trainable" if weight.requires_grad else "frozen"
            counts[f"{state}_{factor}"] += weight.numel()
    base = trainable_other = 0
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            continue
        if param.requires_grad:
            trainable_other += param.numel()
        if "modules_to_save" not in name:
            base += param.numel()
    return ParameterCounts(base=base, trainable_other=trainable_other, **counts)


def _initialise_layer(layer: LoraLayer, name: str, spec: AdapterSpec, adapter_name: str) -> None:
    base_weight = layer.get_base_layer().weight
    if getattr(layer, "fan_in_fan_out", False):
        base_weight = base_weight.T
    for factor, container in (("A", layer.lora_A), ("B", layer.lora_B)):
        weight = container[adapter_name].weight
        value = make_factor(
            getattr(spec, factor).init,
            factor,
            tuple(weight.shape),
            spec.rank,
            spec.seed,
            name,
            base_weight,
        )
        with torch.no_grad():
            weight.copy_(value.to(dtype=weight.dtype))


def _weight_to_buffer(linear: nn.Module) -> None:
    if "weight" not in linear._parameters:
        return
    weight = linear.weight.detach()
    del linear.weight
    linear.register_buffer("weight", weight)
