"""DomainBed-layout image data: ROOT/<environment>/<class>/<image>, one environment trained on.

The training environments' images are split 80/20 per class (seeded) into train and in-domain
test; every other environment is an out-of-domain test set. Class folder names must agree across
environments, or `class_map` renames them per environment. Unreadable images are skipped and
reported; a class left without images is an error.

`rotated_digits` and `coloured_digits` write synthetic domain-shift datasets from scikit-learn's
`load_digits` (no download): environments rot0 … rot75 rotate the 8×8 digits like DomainBed's
RotatedMNIST; environments white, red, … tint them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asymtune import atomic
from asymtune.data.sources import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
ROTATIONS = (0, 15, 30, 45, 60, 75)
COLOURS = {
    "white": (255, 255, 255),
    "red": (255, 64, 64),
    "green": (64, 255, 64),
    "blue": (64, 96, 255),
    "yellow": (255, 230, 64),
    "magenta": (255, 64, 255),
}


@dataclass
class DomainSplit:
    """Image paths with class indices: train, in-domain test and validation (from train_envs), OOD test per
    environment."""

    classes: list[str]
    train: list[tuple[Path, int]]
    id_test: list[tuple[Path, int]]
    ood: dict[str, list[tuple[Path, int]]]
    skipped: list[Path] = field(default_factory=list)
    validation: list[tuple[Path, int]] = field(default_factory=list)


def _readable(path: Path) -> bool:
    """Whether the image decodes in full (a truncated JPEG passes PIL's `verify` but fails on load)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def scan(
    root: Path, class_map: dict[str, dict[str, str | None]] | None = None
) -> tuple[dict[str, dict[str, list[Path]]], list[Path]]:
    """{environment: {class: [image paths]}} and the unreadable images that were skipped. `class_map` renames
    class folders per environment; a folder mapped to None is left out."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected ROOT/<environment>/<class>/<image>)")
    class_map = class_map or {}
    environments: dict[str, dict[str, list[Path]]] = {}
    skipped: list[Path] = []
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        renames = class_map.get(env_dir.name, {})
        classes: dict[str, list[Path]] = {}
        for class_dir in sorted(p for p in env_dir.iterdir() if p.is_dir()):
            if class_dir.name in renames and renames[class_dir.name] is None:
                continue
            images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            good = [p for p in images if _readable(p)]
            skipped += [p for p in images if p not in set(good)]
            classes.setdefault(renames.get(class_dir.name, class_dir.name), []).extend(good)
        environments[env_dir.name] = classes
    if not environments:
        raise DataError(f"{root}: no environment folders")
    for env, renames in class_map.items():
        folders = {p.name for p in (root / env).iterdir() if p.is_dir()} if (root / env).is_dir() else None
        if folders is None:
            raise DataError(f"data.class_map: {env!r} is not an environment of {root} ({', '.join(environments)})")
        unknown = sorted(set(renames) - folders)
        if unknown:
            raise DataError(f"data.class_map.{env}: no class folder(s) {', '.join(unknown)} in {root / env}")
    names = {env: set(classes) for env, classes in environments.items()}
    reference_env, reference = next(iter(names.items()))
    for env, classes in names.items():
        if classes != reference:
            raise DataError(
                f"{root}: class folders differ between environments {reference_env} and {env} "
                f"(only in {reference_env}: {sorted(reference - classes)}; "
                f"only in {env}: {sorted(classes - reference)}); rename them or give data.class_map"
            )
    for env, classes in environments.items():
        empty = [name for name, paths in classes.items() if not paths]
        if empty:
            raise DataError(f"{root / env}: class(es) {', '.join(empty)} have no readable images")
    if len(reference) < 2:
        raise DataError(f"{root}: {len(reference)} class folder(s) ({', '.join(sorted(reference)) or 'none'}) in each "
                        "environment; classification needs at least two classes")
    return environments, skipped


def split(
    root: Path,
    train_envs: list[str],
    seed: int,
    test_fraction: float = 0.2,
    class_map: dict[str, dict[str, str | None]] | None = None,
    validation_fraction: float = 0.0,
    test_envs: list[str] | None = None,
) -> DomainSplit:
    """Train / in-domain test / in-domain validation (seeded, stratified by class) / out-of-domain test per
    environment (`test_envs`, default: every one not trained on); the fractions are of each class's images."""
    environments, skipped = scan(root, class_map)
    for key, envs in (("train_envs", train_envs), ("test_envs", test_envs or [])):
        unknown = sorted(set(envs) - set(environments))
        if unknown:
            raise DataError(f"data.{key} {unknown}: not environments of {root} ({', '.join(environments)})")
    both = sorted(set(train_envs) & set(test_envs or []))
    if both:
        raise DataError(f"data.test_envs {both}: also trained on (data.train_envs); an out-of-domain test needs "
                        "environments the model has not seen")
    classes = sorted(next(iter(environments.values())))
    index = {name: i for i, name in enumerate(classes)}
    generator = random.Random(seed)
    train, id_test, validation = [], [], []
    for env in train_envs:
        for name in classes:
            paths = list(environments[env][name])
            generator.shuffle(paths)
            cut = max(1, round(len(paths) * test_fraction)) if len(paths) > 1 else 0
            held = cut + (round(len(paths) * validation_fraction) if validation_fraction else 0)
            id_test += [(p, index[name]) for p in paths[:cut]]
            validation += [(p, index[name]) for p in paths[cut:held]]
            train += [(p, index[name]) for p in paths[held:]]
    ood = {
        env: [(p, index[name]) for name in classes for p in environments[env][name]]
        for env in environments
        if env not in train_envs and (test_envs is None or env in test_envs)
    }
    return DomainSplit(classes=classes, train=train, id_test=id_test, ood=ood, skipped=skipped,
                       validation=validation)


def _write_digits(target: Path, size: int, per_class: int | None, environments: dict, log) -> Path:
    """Write scikit-learn's digits once per environment, each transformed by `environments[name]`."""
    if target.is_dir():
        return target
    from PIL import Image
    from sklearn.datasets import load_digits

    log(f"writing the digit domains to {target} (once)")
    digits = load_digits()
    seen = dict.fromkeys(range(10), 0)
    keep = []
    for number, label in enumerate(digits.target):
        if per_class is None or seen[label] < per_class:
            seen[label] += 1
            keep.append(number)
    with atomic.directory(target) as scratch:
        for env, transform in environments.items():
            for number in keep:
                gray = Image.fromarray(np.uint8(digits.images[number] * (255 / 16))).resize(
                    (size, size), Image.BILINEAR
                )
                folder = scratch / env / str(digits.target[number])
                folder.mkdir(parents=True, exist_ok=True)
                transform(gray).save(folder / f"{number:04d}.png")
    return target


def rotated_digits(
    target: Path, size: int = 32, log: Callable[[str], None] = print, per_class: int | None = None
) -> Path:
    """The digits (or `per_class` of each) rotated by 0°…75°, one environment per angle."""
    environments = {
        f"rot{angle}": (lambda image, angle=angle: image.rotate(angle, resample=2).convert("RGB"))
        for angle in ROTATIONS
    }
    return _write_digits(target, size, per_class, environments, log)


def coloured_digits(
    target: Path, size: int = 32, log: Callable[[str], None] = print, per_class: int | None = None
) -> Path:
    """The digits (or `per_class` of each) drawn in one colour per environment on black."""
    from PIL import ImageOps

    environments = {
        name: (lambda image, rgb=rgb: ImageOps.colorize(image, black=(0, 0, 0), white=rgb))
        for name, rgb in COLOURS.items()
    }
    return _write_digits(target, size, per_class, environments, log)
