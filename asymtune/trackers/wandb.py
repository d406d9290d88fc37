"""Weights & Biases: offline in RUN/wandb unless wandb is configured (WANDB_MODE, WANDB_API_KEY, or a login in
~/.netrc), then wherever it is configured to go. The run is named <recipe>/<run folder>, grouped by recipe name
(a sweep's seeds together), tagged with method and task; its id is the run folder's, so a resume continues it."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

import wandb
from transformers.integrations import WandbCallback

from asymtune.trackers import Identity, Scalar, Session

EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}


def configured() -> bool:
    """Whether the user told wandb where to go: WANDB_MODE, an API key, or `wandb login`'s netrc entry."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start(identity: Identity, config: dict[str, Scalar], previous: dict | None) -> Session:
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", identity.project), name=identity.name, group=identity.group,
        tags=list(identity.tags), config=config, dir=str(identity.run.path),
        id=previous["id"] if previous else identity.run.path.name, resume="allow",
        mode=None if configured() else "offline",
        settings=wandb.Settings(console="off", silent=True),  # the terminal is asymtune's progress display's
    )
    offline = run.settings.mode == "offline"
    where = f"offline; `wandb sync {run.settings.sync_dir}` uploads it" if offline else run.url

    def finish(metrics: dict[str, float], outcome: str) -> None:
        run.summary.update({f"final/{name}": value for name, value in metrics.items()})
        run.finish(exit_code=EXIT_CODES[outcome])

    return Session(WandbCallback(), {"id": run.id, "mode": run.settings.mode, "dir": run.settings.sync_dir}, where,
                   finish)
