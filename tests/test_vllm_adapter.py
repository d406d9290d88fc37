"""A B-only adapter folder as asymtune saves it (and as a compact export regenerates it) passes vLLM's LoRA loader
rules, so `vllm serve BASE --enable-lora --lora-modules NAME=RUN/adapter` serves it.

The rules, as vLLM's loader states them (vllm/lora/peft_helper.py `PEFTHelper.from_dict` / `validate_legal`,
vllm/lora/utils.py `parse_fine_tuned_lora_name`, vllm/lora/lora_model.py `from_local_checkpoint`): adapter_config.json
holds r, lora_alpha and target_modules; no modules_to_save, no DoRA, bias "none"; r at most --max-lora-rank (vLLM's
largest choice is 512); weights in adapter_model.safetensors (or .bin), every tensor named `….lora_A.weight` or
`….lora_B.weight` (embeddings: lora_embedding_A/B) of a module whose last name is a target; scaling is
lora_alpha / r (√r with use_rslora), so the folder's alpha must be the one training used.
"""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from asymtune.adapters import export as forms
from asymtune.adapters import lora
from asymtune.recipe import AdapterSpec

VLLM_LARGEST_RANK = 512


def vllm_refusals(folder) -> list[str]:
    """What vLLM's loader would refuse in an adapter folder (empty: it loads)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    refusals = [f"missing {key}" for key in ("r", "lora_alpha", "target_modules") if key not in config]
    if config.get("modules_to_save"):
        refusals.append("modules_to_save")
    if config.get("use_dora"):
        refusals.append("DoRA")
    if config.get("bias", "none") != "none":
        refusals.append("bias")
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > VLLM_LARGEST_RANK:
        refusals.append(f"rank {max(ranks)}")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return [*refusals, "no adapter_model.safetensors"]
    targets = config["target_modules"]
    with safe_open(str(weights), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
            parts = name.removeprefix("base_model.model.").split(".")
            if parts[-2:] not in (["lora_A", "weight"], ["lora_B", "weight"]):
                refusals.append(f"{name}: not a lora_A/lora_B weight")
            elif isinstance(targets, list) and parts[-3] not in targets:
                refusals.append(f"{name}: module {parts[-3]} is not a target")
            elif handle.get_slice(name).get_shape()[0 if parts[-2] == "lora_A" else 1] != config["r"]:
                refusals.append(f"{name}: rank is not r")
    return refusals


@pytest.fixture
def b_only_folder(tiny_llama_dir, tmp_path):
    spec = AdapterSpec(rank=4, targets=["q_proj", "v_proj", "down_proj"], seed=3,
                       A={"init": "orthogonal", "trainable": False}, B={"init": "zero", "trainable": True})
    model = lora.apply(LlamaForCausalLM.from_pretrained(tiny_llama_dir), spec)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B["default"].weight.normal_()
    lora.save_adapter(model, spec, tmp_path / "adapter")
    return tmp_path / "adapter", spec, model


def test_a_saved_b_only_adapter_passes_vllms_loader_rules(b_only_folder):
    folder, spec, model = b_only_folder
    assert vllm_refusals(folder) == []
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["lora_alpha"] / config["r"] == spec.lora_alpha / spec.rank and not config.get("use_rslora")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        frozen = [name for name in handle.keys() if ".lora_A." in name]  # noqa: SIM118
        assert len(frozen) == 6  # the frozen A is saved beside B, under PEFT's key: vLLM needs both
        layer = dict(lora.lora_layers(model))["model.layers.0.self_attn.q_proj"]
        saved = handle.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        assert torch.equal(saved, layer.lora_A["default"].weight)


def test_a_compact_exports_regenerated_adapter_passes_them_too(b_only_folder, tmp_path):
    folder, _, _ = b_only_folder
    forms.write_compact(folder, tmp_path / "compact")
    forms.write_peft(tmp_path / "compact", tmp_path / "regenerated")
    assert vllm_refusals(tmp_path / "regenerated") == []


def test_the_rules_catch_what_vllm_refuses(b_only_folder):
    folder, _, _ = b_only_folder
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True, "bias": "all",
                                                            "modules_to_save": ["lm_head"]}))
    assert vllm_refusals(folder) == ["modules_to_save", "DoRA", "bias"]
