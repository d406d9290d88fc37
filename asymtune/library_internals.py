"""Every private attribute of another library that asymtune touches, in one place, for want of a public equivalent.

Each use is an `Internal`: the library, the attribute, the releases it was written and tested against, and why no
public API does the job. `require` raises LibraryChanged naming them when an upgrade has removed one, so a break
reads as "transformers 6.0 has no Trainer._tr_loss", not as an AttributeError deep in training; `tests/
test_library_internals.py` checks every one against the installed releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any


class LibraryChanged(RuntimeError):
    """An installed library no longer has a private attribute asymtune relies on (a bug to report, not user error)."""


@dataclass(frozen=True)
class Internal:
    library: str
    owner: str  # the class (or object) the attribute belongs to
    attribute: str
    tested: str  # the releases it was written and tested against
    why: str  # why no public API does it

    def require(self, holder: Any) -> Any:
        """`holder`'s attribute; LibraryChanged naming the library, the attribute and the tested releases if the
        installed release lacks it."""
        try:
            return getattr(holder, self.attribute)
        except AttributeError:
            raise LibraryChanged(
                f"{self.library} {metadata.version(self.library)} has no {self.owner}.{self.attribute}, which asymtune "
                f"uses ({self.why}); it was written for {self.library} {self.tested}: install that, or report this"
            ) from None


LOAD_FROM_CHECKPOINT = Internal(
    "transformers", "Trainer", "_load_from_checkpoint", "5.0–5.25",
    "loading a checkpoint's weights into the model being trained, PEFT adapters and FSDP shards alike, without "
    "resuming its optimizer: keep_best and a resume that stopped after its last step")
PENDING_LOSS = Internal(
    "transformers", "Trainer", "_tr_loss", "5.0–5.25",
    "the training loss summed since the last log, which a checkpoint's loss sum includes")
LOGGED_LOSS = Internal(
    "transformers", "Trainer", "_total_loss_scalar", "5.0–5.25",
    "the training loss summed up to the last log; train() reports only the mean at the end")
PREPARED_MARK = Internal(
    "accelerate", "Module", "_is_accelerate_prepared", "1.4–1.16",
    "an evaluation before training marks the model prepared, and prepare() then skips the DDP wrapper")

INTERNALS = (LOAD_FROM_CHECKPOINT, PENDING_LOSS, LOGGED_LOSS, PREPARED_MARK)


def load_checkpoint_weights(trainer: Any, folder: str) -> None:
    """Load the weights saved in checkpoint `folder` into `trainer`'s model, as a resume does."""
    LOAD_FROM_CHECKPOINT.require(trainer)(folder)


def loss_sum(trainer: Any) -> float:
    """Σ per-step training loss of this `train()` call so far: the logged part plus the part not yet logged."""
    pending = PENDING_LOSS.require(trainer)
    return LOGGED_LOSS.require(trainer) + (float(pending.item()) if pending is not None else 0.0)


def forget_evaluation_prepare(trainer: Any) -> None:
    """Undo what an evaluation before training did to the model, so that train() wraps it for DDP: drop accelerate's
    references (public `free_memory`) and its "prepared" mark (private)."""
    model = trainer.model
    if getattr(model, PREPARED_MARK.attribute, False):
        setattr(model, PREPARED_MARK.attribute, False)
        trainer.accelerator.free_memory()
