"""task: image — DomainBed splits, ID/OOD/gap metrics, unreadable images, a tiny ViT end to end."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from asymtune.cli import main
from asymtune.data.domainbed import coloured_digits, rotated_digits, split
from asymtune.data.sources import DataError
from asymtune.runs import resolve
from asymtune.tasks.image import domain_metrics

ENVIRONMENTS = ("photo", "sketch", "cartoon")
CLASSES = ("dog", "house")


def write_domainbed(root, per_class=5, classes_of=None):
    """ROOT/<env>/<class>/<n>.png: colour depends on the class, brightness on the environment."""
    for e, env in enumerate(ENVIRONMENTS):
        for c, name in enumerate((classes_of or {}).get(env, CLASSES)):
            folder = root / env / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                colour = (200 * (c == 0) + 10 * i, 40 * e, 200 * (c == 1))
                Image.new("RGB", (12, 12), colour).save(folder / f"{i}.png")
    return root


def test_split_is_seeded_stratified_disjoint_and_keeps_other_environments_out(tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    first, again = split(root, ["cartoon"], seed=3), split(root, ["cartoon"], seed=3)
    assert first.train == again.train and first.id_test == again.id_test
    assert not {p for p, _ in first.train} & {p for p, _ in first.id_test}
    assert sorted(label for _, label in first.id_test) == [0, 1]  # 20% of 5 per class = 1 each
    assert set(first.ood) == {"photo", "sketch"} and all(len(items) == 10 for items in first.ood.values())
    assert all("cartoon" in str(p) for p, _ in first.train + first.id_test)
    assert split(root, ["cartoon"], seed=4).id_test != first.id_test


def test_mismatched_classes_and_unknown_environment_are_errors(tmp_path):
    root = write_domainbed(tmp_path / "vlcs", classes_of={"sketch": ("dog", "car")})
    with pytest.raises(DataError, match=r"class folders differ between environments cartoon and sketch"):
        split(root, ["photo"], seed=0)
    assert split(root, ["photo"], seed=0, class_map={"sketch": {"car": "house"}}).classes == ["dog", "house"]
    with pytest.raises(DataError, match=r"data.train_envs \['art'\]: not environments"):
        split(root, ["art"], seed=0, class_map={"sketch": {"car": "house"}})


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    (root / "sketch" / "dog" / "broken.png").write_bytes(b"not a png")
    data = split(root, ["photo"], seed=0)
    assert [p.name for p in data.skipped] == ["broken.png"] and len(data.ood["sketch"]) == 10


def test_gap_is_train_accuracy_minus_each_test_accuracy():
    metrics = domain_metrics("pacs", 0.9, 0.8, {"Photo": 0.7, "art painting": 0.5})
    assert metrics["pacs_id_gap"] == pytest.approx(0.1)
    assert metrics["pacs_photo_gap"] == pytest.approx(0.2) and metrics["pacs_art_painting_gap"] == pytest.approx(0.4)
    assert metrics["pacs_ood_acc"] == pytest.approx(0.6)


def test_rotated_digits_environments(tmp_path):
    root = rotated_digits(tmp_path / "digits", size=8, log=lambda _: None, per_class=3)
    assert sorted(p.name for p in root.iterdir()) == sorted(f"rot{a}" for a in (0, 15, 30, 45, 60, 75))
    assert sorted(p.name for p in (root / "rot45").iterdir()) == [str(d) for d in range(10)]
    assert len(list((root / "rot0" / "7").glob("*.png"))) == 3


@pytest.mark.slow
def test_image_training_reports_id_ood_and_gaps(tiny_vit_dir, write_recipe, tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    recipe = {
        "name": "tiny-vit",
        "task": "image",
        "model": {"name": str(tiny_vit_dir)},
        "data": {"train": str(root), "train_envs": ["cartoon"], "eval_fraction": 0.2},
        "adapter": {
            "rank": 4,
            "targets": ["q_proj", "v_proj"],
            "A": {"init": "orthogonal", "trainable": False},
            "B": {"init": "zero", "trainable": True},
        },
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 0.01, "logging_steps": 1},
    }
    result = CliRunner().invoke(main, ["train", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [run] = resolve([str(tmp_path / "runs")])
    metrics = run.read_json("metrics.json")
    for key in ("pacs_train_acc", "pacs_id_acc", "pacs_photo_acc", "pacs_sketch_acc", "pacs_ood_acc", "pacs_photo_gap"):
        assert 0 <= abs(metrics[key]) <= 1, key
    assert metrics["pacs_photo_gap"] == pytest.approx(metrics["pacs_train_acc"] - metrics["pacs_photo_acc"])
    params = metrics["parameters"]
    assert params["trainable_A"] == 0 and params["trainable_other"] == 32 * 2 + 2  # the new 2-class head
    labels = json.loads((run.adapter_dir / "labels.json").read_text())
    assert labels == json.loads((run.path / "labels.json").read_text()) and labels["label2id"] == {"dog": 0, "house": 1}


def test_coloured_digits_environments_differ_only_in_colour(tmp_path):
    root = coloured_digits(tmp_path / "digits", size=8, log=lambda _: None, per_class=2)
    assert sorted(p.name for p in root.iterdir()) == sorted(["white", "red", "green", "blue", "yellow", "magenta"])
    red = Image.open(next((root / "red" / "3").glob("*.png"))).convert("RGB")
    green = Image.open(next((root / "green" / "3").glob("*.png"))).convert("RGB")
    brightest = max(range(64), key=lambda i: sum(red.getpixel((i % 8, i // 8))))
    r, g, _ = red.getpixel((brightest % 8, brightest // 8))
    assert (
        r > g
        and green.getpixel((brightest % 8, brightest // 8))[1] > green.getpixel((brightest % 8, brightest // 8))[0]
    )


def test_a_truncated_jpeg_is_skipped_and_counted(tmp_path):
    root = write_domainbed(tmp_path / "pacs")
    whole = root / "photo" / "dog" / "whole.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(whole, quality=95)
    cut = root / "photo" / "dog" / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with Image.open(cut) as image:
        image.verify()  # what passed before: verify() does not decode, load() does
    data = split(root, ["photo"], seed=0)
    assert [p.name for p in data.skipped] == ["cut.jpg"]
    assert any(p.name == "whole.jpg" for p, _ in data.train + data.id_test)


def test_class_map_to_null_drops_a_class_folder(tmp_path):
    # VLCS's labelme has no 'person': drop the class where the others have it
    root = write_domainbed(tmp_path / "vlcs", classes_of={"sketch": ("dog",), "photo": ("dog", "car", "person"),
                                                          "cartoon": ("dog", "car", "person")})
    with pytest.raises(DataError, match="class folders differ"):
        split(root, ["photo"], seed=0)
    dropped = {"photo": {"car": None, "person": None}, "cartoon": {"car": None, "person": None}}
    with pytest.raises(DataError, match="at least two classes"):  # one class left is refused, not "100%"
        split(root, ["photo"], seed=0, class_map=dropped)
    two = write_domainbed(tmp_path / "two", classes_of={"sketch": ("dog", "car"), "photo": ("dog", "car", "person"),
                                                        "cartoon": ("dog", "car")})
    data = split(two, ["cartoon"], seed=0, class_map={"photo": {"person": None}})
    assert data.classes == ["car", "dog"] and len(data.ood["photo"]) == 10
    with pytest.raises(DataError, match=r"data.class_map.photo: no class folder\(s\) persn"):
        split(two, ["cartoon"], seed=0, class_map={"photo": {"persn": None}})
