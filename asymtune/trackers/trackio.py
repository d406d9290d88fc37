"""trackio: its local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio), project train.project, run
<recipe>/<run folder>; `trackio show --project NAME` opens its dashboard. The config joins transformers'
own, and the run ends with asymtune's run (after the final evaluation), not when the training loop does."""

from __future__ import annotations

import trackio
from transformers.integrations import TrackioCallback

from asymtune.trackers import Identity, Scalar, Session


class RunLongCallback(TrackioCallback):
    """transformers' trackio callback with asymtune's config added, left open past the end of training."""

    def __init__(self, config: dict[str, Scalar]) -> None:
        super().__init__()
        self.asymtune_config = config
        self.opened = False  # whether setup ran (training began), so there is a run to finish

    def setup(self, args, state, model, **kwargs):
        super().setup(args, state, model, **kwargs)
        self.opened = True
        if state.is_world_process_zero:
            trackio.config.update(self.asymtune_config)

    def on_train_end(self, args, state, control, **kwargs):
        """The run stays open for the evaluations after training; `finish` closes it."""


def start(identity: Identity, config: dict[str, Scalar], previous: dict | None) -> Session:
    callback = RunLongCallback(config)

    def finish(metrics: dict[str, float], outcome: str) -> None:
        if not callback.opened:  # training never began: nothing was opened
            return
        if metrics:
            trackio.log({f"final/{name}": value for name, value in metrics.items()})
        trackio.finish()

    where = (f"project {identity.project}, run {identity.name} in {trackio.utils.TRACKIO_DIR} "
             f"(view: trackio show --project {identity.project})")
    return Session(callback, {"project": identity.project, "run": identity.name}, where, finish)
