"""TensorBoard: event files in RUN/logs/tensorboard (`tensorboard --logdir ROOT` shows every run under a root);
the config as an HParams session (filter and compare runs by method, rank, parameters per factor; TensorBoard
infers the experiment from the sessions), grouped by recipe name and ended with the run's status; the
resolved recipe as text."""

from __future__ import annotations

import time

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter
from transformers.integrations import TensorBoardCallback

from asymtune.trackers import Identity, Scalar, Session

STATUS = {"completed": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE,
          "interrupted": api_pb2.STATUS_UNKNOWN}  # TensorBoard has no 'stopped'; a resume may still complete it


def start(identity: Identity, config: dict[str, Scalar], previous: dict | None) -> Session:
    logdir = identity.run.path / "logs" / "tensorboard"
    writer = SummaryWriter(log_dir=str(logdir))
    writer.file_writer.add_summary(session_start(config, identity.group))
    writer.add_text("recipe", "    " + identity.recipe_yaml.replace("\n", "\n    "))  # markdown: a code block
    callback = TensorBoardCallback(tb_writer=writer)
    callback.logging_dir = str(logdir)  # where it reopens a writer for logs after training (the final evaluation)

    def finish(metrics: dict[str, float], outcome: str) -> None:
        final = callback.tb_writer or SummaryWriter(log_dir=str(logdir))
        step = int(metrics.get("train_steps", 0))
        for name, value in metrics.items():
            final.add_scalar(f"final/{name}", value, step)
        final.file_writer.add_summary(_hparams_summary(
            metadata.SESSION_END_INFO_TAG, session_end_info=plugin_data_pb2.SessionEndInfo(
                status=STATUS[outcome], end_time_secs=time.time())))
        final.close()

    where = f"{logdir} (view: tensorboard --logdir {identity.run.path.parent.parent})"
    return Session(callback, {"logdir": str(logdir)}, where, finish)


def session_start(config: dict[str, Scalar], group: str) -> Summary:
    """The HParams plugin's record of a run's hyperparameters (a session, in `group`)."""
    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for key, value in config.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = value
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, session_start_info=info)


def _hparams_summary(tag: str, **data) -> Summary:
    content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(content))])
