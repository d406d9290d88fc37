"""Checkpoints a killed run resumes from: the Trainer's own `checkpoint-N` folders (adapter or weights,
optimizer, scheduler, RNG states, step and data position), each marked complete by a last, atomically
written `asymtune_checkpoint.json`. A folder without that marker was cut off mid-write and is skipped."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from transformers import Trainer, TrainerCallback

from asymtune import atomic, library_internals

MARKER = "asymtune_checkpoint.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its folder, optimizer step and the sum of the per-step training losses so far."""

    path: Path
    step: int
    loss_sum: float


def newest_complete(folder: Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """The complete checkpoint with the highest step under `folder`; incomplete newer ones are reported."""
    candidates = sorted(
        ((int(match.group(1)), path) for path in folder.glob("checkpoint-*") if (match := _STEP.match(path.name))),
        reverse=True,
    )
    for step, path in candidates:
        marker = path / MARKER
        if not marker.is_file():
            warn(f"skipping {path}: incomplete (no {MARKER}; the run stopped while writing it)")
            continue
        checkpoint = read(path, step)
        if isinstance(checkpoint, str):
            warn(f"skipping {path}: damaged ({checkpoint}); resuming from the one before it")
            continue
        return checkpoint
    return None


REQUIRED = {"trainer_state.json": "trainer_state.json", "scheduler.pt": "scheduler.pt",
            "rng_state*.pth": "its RNG state", "optimizer*": "its optimizer state"}


def read(path: Path, step: int) -> Checkpoint | str:
    """The checkpoint in `path` (named for `step`), or what is wrong with it: a missing piece a resume needs
    (optimizer, scheduler, RNG or trainer state, weights), a marker or trainer state that does not parse or
    names another step, a torch state file that is not an intact archive (checked by CRC, nothing unpickled),
    or weights whose header does not parse."""
    try:
        record = json.loads((path / MARKER).read_bytes().decode("utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("loss_sum"), (int, float)):
            return f"{MARKER} holds no loss_sum"
        trainer_state = json.loads((path / "trainer_state.json").read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return f"{MARKER} or trainer_state.json is not JSON"
    for pattern, what in REQUIRED.items():
        if not any(path.glob(pattern)):
            return f"{what} is missing"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*model_fsdp*")):
        return "no weights"
    recorded = {record.get("step"), trainer_state.get("global_step") if isinstance(trainer_state, dict) else None}
    if recorded != {step}:
        return f"its folder says step {step}, its marker and trainer state say {sorted(map(str, recorded))}"
    for state in [*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]:
        try:
            with zipfile.ZipFile(state) as archive:
                if archive.testzip() is not None:
                    return f"{state.name} fails its checksum"
        except (zipfile.BadZipFile, OSError):
            return f"{state.name} is not a torch archive"
    for weights in path.glob("*.safetensors"):
        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception:  # safetensors raises its own error types for every kind of damage
            return f"{weights.name} does not parse"
    return Checkpoint(path, step, float(record["loss_sum"]))


class MarkCheckpointComplete(TrainerCallback):
    """After the Trainer has written checkpoint-N, write its marker (step and the loss sum so far) last."""

    def __init__(self, trainer: Trainer, resumed: Checkpoint | None) -> None:
        self.trainer = trainer
        self.prior_loss_sum = resumed.loss_sum if resumed else 0.0

    def loss_sum(self) -> float:
        """Σ per-step training loss over all steps so far (before the resume point included)."""
        return self.prior_loss_sum + library_internals.loss_sum(self.trainer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic.write_json(folder / MARKER, {"step": state.global_step, "loss_sum": self.loss_sum()})
