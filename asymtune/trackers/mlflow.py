"""MLflow: a local sqlite store ROOT/mlflow.db beside the runs unless MLFLOW_TRACKING_URI names another; the
experiment is train.project (or MLFLOW_EXPERIMENT_NAME), the run <recipe>/<run folder> with the config as
params, tags asymtune.method / asymtune.task / asymtune.run_dir, and the run's outcome as its MLflow status."""

from __future__ import annotations

import logging
import os

import mlflow
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH
from transformers.integrations import MLflowCallback

from asymtune.trackers import Identity, Scalar, Session

STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's schema migrations, on first use
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def tracking_uri(identity: Identity) -> str:
    default = "sqlite:///" + str((identity.run.path.parent.parent / "mlflow.db").resolve())
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def start(identity: Identity, config: dict[str, Scalar], previous: dict | None) -> Session:
    uri = previous["tracking_uri"] if previous else tracking_uri(identity)
    mlflow.set_tracking_uri(uri)
    if previous:
        active = mlflow.start_run(run_id=previous["run_id"])
    else:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", identity.project))
        method, task = identity.tags
        active = mlflow.start_run(run_name=identity.name, tags={
            "asymtune.method": method, "asymtune.task": task, "asymtune.group": identity.group,
            "asymtune.run_dir": str(identity.run.path.resolve())})
        items = list(config.items())
        for first in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            mlflow.log_params(dict(items[first:first + MAX_PARAMS_TAGS_PER_BATCH]))
    run_id = active.info.run_id

    def finish(metrics: dict[str, float], outcome: str) -> None:
        if metrics:
            mlflow.log_metrics({f"final/{name}": value for name, value in metrics.items()},
                               step=int(metrics.get("train_steps", 0)))
        mlflow.end_run(status=STATUS[outcome])

    where = f"run {run_id} in {uri} (view: mlflow ui --backend-store-uri {uri}; the UI needs the full mlflow)"
    return Session(MLflowCallback(), {"tracking_uri": uri, "run_id": run_id}, where, finish)
