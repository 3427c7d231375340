"""Where runs are recorded, and the MLflow calls training makes: the tracking URI, the experiment, batched
params and metrics, and the run made active for MLflow's fluent API.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from harmony.training.errors import TrainError

__all__ = ["MAX_PARAM_LENGTH", "active_run", "experiment_id", "log_metrics", "log_params", "tracking_uri"]

MAX_PARAM_LENGTH = 6000  # MLflow's limit for a parameter value


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else MLflow's embedded SQLite store `mlflow.db` in the working directory (made
    absolute so that the state file points at the same store from anywhere)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}"


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage != "deleted":
        return str(exp.experiment_id)
    if exp is not None:
        raise TrainError(
            f"MLflow experiment {name!r} is deleted; restore it or choose another tracking.experiment"
        )
    return str(client.create_experiment(name))


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params not yet on the run (a resumed run already has them; MLflow refuses to change one)."""
    have = client.get_run(run_id).data.params
    todo = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in have]
    for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=todo[i : i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


@contextmanager
def active_run(run_id: str) -> Iterator[None]:
    """The fluent API (pyfunc.log_model) logs to the active run; make it ours, nested under a caller's
    active run if there is one."""
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        yield
