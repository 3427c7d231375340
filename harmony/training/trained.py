"""A trained forecaster named by the user: a folder, an MLflow run or a registered/logged model, and the
training configuration it was trained with (for the data it is scored on).

Accepted:
    runs/NAME or runs/NAME/forecaster       a training's output folder or its forecaster/ folder
    runs:/<run id>  or  <run id>            a training run (its forecaster/ artifact)
    models:/<name>/<version>, models:/<name>@<alias>, models:/m-...   a registered or logged pyfunc model
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harmony.model.base import Forecaster
from harmony.training.train import STATE_FILE, RunState, TrainError, tracking_uri

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FOLDERS = (".", "forecaster", "artifacts/forecaster")


@dataclass(frozen=True)
class TrainedModel:
    forecaster: Forecaster
    source: str  # what was loaded, in words
    run_id: str | None  # the training run, when known
    config: dict[str, Any] | None  # the training configuration, when known


def _find_folder(root: Path) -> Path | None:
    for sub in _FOLDERS:
        candidate = root / sub
        if (candidate / "forecaster.json").exists():
            return candidate.resolve()
    return None


def _from_folder(path: Path) -> TrainedModel:
    folder = _find_folder(path)
    if folder is None:
        raise TrainError(
            "no saved forecaster here: expected forecaster.json in it, or in its forecaster/ folder (the "
            "output folder of `harmony train`)",
            path=path,
        )
    config = None
    for state_path in (folder.parent / STATE_FILE, path / STATE_FILE):
        if state_path.exists():
            state = RunState.load(state_path)
            return TrainedModel(Forecaster.load(folder), f"folder {folder}", state.run_id, state.config)
    return TrainedModel(Forecaster.load(folder), f"folder {folder}", None, config)


def _run_of(uri: str) -> str | None:
    """The training run behind a runs:/ or models:/ URI (None when MLflow cannot say)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").split("/")[0]
    client = MlflowClient(tracking_uri())
    ref = uri.removeprefix("models:/").rstrip("/")
    try:
        if ref.startswith("m-"):
            return str(client.get_logged_model(ref.split("/")[0]).source_run_id)
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(client.get_model_version_by_alias(name, alias).run_id)
        name, _, version = ref.partition("/")
        if version.isdigit():
            return str(client.get_model_version(name, version).run_id)
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name='{name}'")
            return str(max(versions, key=lambda v: int(v.version)).run_id) if versions else None
    except MlflowException:
        return None
    return None


def _run_config(run_id: str) -> dict[str, Any] | None:
    import mlflow

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config/config.yaml")
    except Exception:  # MLflow raises many types for a missing artifact
        return None
    loaded = yaml.safe_load(text)
    return loaded if isinstance(loaded, dict) else None


def load_trained(uri: str) -> TrainedModel:
    """The forecaster `uri` names and, when it can be found, the configuration it was trained with."""
    path = Path(uri).expanduser()
    if path.exists():
        return _from_folder(path)
    if _RUN_ID.match(uri):
        uri = f"runs:/{uri}"
    if not uri.startswith(("runs:/", "models:/")):
        raise TrainError(
            f"--model {uri!r}: not a folder, and not an MLflow URI; expected a training output folder "
            "(runs/NAME), a forecaster/ folder, a run id, runs:/<run id>, or models:/<name>/<version>"
        )
    import mlflow

    store = tracking_uri()
    # models:/ URIs resolve through MLflow's global store, not an argument: point it at ours.
    mlflow.set_tracking_uri(store)
    target = f"{uri.rstrip('/')}/forecaster" if uri.startswith("runs:/") and uri.count("/") == 1 else uri
    try:
        local = Path(mlflow.artifacts.download_artifacts(target, tracking_uri=store))
    except Exception as exc:  # MLflow raises many types for an unknown run, model or path
        raise TrainError(f"--model {uri!r}: not found in the MLflow store {store}: {exc}") from None
    folder = _find_folder(local)
    if folder is None:
        raise TrainError(
            f"--model {uri!r}: no forecaster.json in what it points at (expected a harmony training run or "
            "pyfunc model)"
        )
    run_id = _run_of(uri)
    config = _run_config(run_id) if run_id else None
    return TrainedModel(Forecaster.load(folder), uri, run_id, config)
