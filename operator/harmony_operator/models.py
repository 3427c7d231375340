"""Trained forecasters by URI: resolved, loaded without unpickling, checked against the indicators, cached.

A model URI is either an MLflow model URI (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN/PATH`,
or any artifact URI MLflow can download) or a local directory (a mounted ConfigMap or volume) holding what
`Forecaster.save` wrote: `forecaster.json` + `weights.safetensors`. In an MLflow model that folder is the
pyfunc model's `artifacts/forecaster/`; it is found by searching the downloaded tree for `forecaster.json`.
Only `Forecaster.load` reads it, so nothing is ever unpickled.

Failures raise `ModelError` with the reason the operator puts in the ModelLoaded condition:

    ModelNotFound   the URI names nothing (no such directory, model, version or run)
    ModelCorrupt    the files are there but do not load (bad JSON, truncated weights, unknown model)
    ModelMismatch   the model reads indicators the resource does not list, or a demand indicator of the
                    resource is not among the model's forecast targets

The cache keeps one loaded model per URI; `models:/NAME@ALIAS` and `models:/NAME/latest` are re-resolved
every `refresh_s` so a new version behind the alias is picked up, and a resource whose URI changes simply
asks for the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harmony.model.base import Forecaster

__all__ = ["LoadedModel", "ModelCache", "ModelError", "check_indicators"]

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    version: str
    forecaster: Forecaster
    loaded_at: float  # unix seconds


def check_indicators(model: LoadedModel, indicators: Sequence[str], demand: Sequence[str]) -> None:
    """The resource must provide every indicator the model reads; its demand indicators must be forecast."""
    spec = model.forecaster.spec
    missing = [n for n in spec.indicators if n not in indicators]
    if missing:
        raise ModelError(
            "ModelMismatch",
            f"model {model.uri} reads indicators {list(spec.indicators)}; the resource lacks {missing}",
        )
    unforecast = [n for n in demand if n not in spec.targets]
    if unforecast:
        raise ModelError(
            "ModelMismatch",
            f"demand indicators {unforecast} are not forecast by model {model.uri} "
            f"(its targets: {list(spec.targets)})",
        )


def _is_mlflow_uri(uri: str) -> bool:
    return "://" in uri or uri.startswith(("models:/", "runs:/"))


def _find_forecaster_dir(root: Path) -> Path:
    if (root / "forecaster.json").is_file():
        return root
    found = sorted(root.rglob("forecaster.json"))
    if not found:
        raise ModelError("ModelCorrupt", f"{root}: no forecaster.json (not a harmony forecaster)")
    return found[0].parent


def _load_dir(path: Path, uri: str) -> Forecaster:
    try:
        return Forecaster.load(path)
    except FileNotFoundError as exc:
        raise ModelError("ModelCorrupt", f"{uri}: {exc}") from exc
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise ModelError("ModelCorrupt", f"{uri}: the model does not load: {exc}") from exc


def _mlflow_version(uri: str) -> str:
    """The registry version behind `models:/NAME/...` (resolving aliases and 'latest'), else the URI."""
    if not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient

    ref = uri[len("models:/") :].strip("/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    if version.isdigit():
        return version
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ModelError("ModelNotFound", f"{uri}: registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def load_model(uri: str, cache_dir: Path) -> LoadedModel:
    """Resolve and load one model (blocking: downloads and reads files)."""
    if not _is_mlflow_uri(uri):
        path = Path(uri.removeprefix("file:"))
        if not path.exists():
            raise ModelError("ModelNotFound", f"{uri}: no such model directory")
        forecaster = _load_dir(_find_forecaster_dir(path), uri)
        meta = path / "forecaster.json"
        version = f"file:{int(meta.stat().st_mtime)}" if meta.exists() else "file"
        return LoadedModel(uri, version, forecaster, time.time())

    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = _mlflow_version(uri)
        target = Path(tempfile.mkdtemp(prefix="model-", dir=cache_dir))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except MlflowException as exc:
        raise ModelError("ModelNotFound", f"{uri}: {exc.message}") from exc
    except OSError as exc:
        raise ModelError("ModelNotFound", f"{uri}: cannot download: {exc}") from exc
    forecaster = _load_dir(_find_forecaster_dir(local), uri)
    return LoadedModel(uri, version, forecaster, time.time())


class ModelCache:
    """Loaded models by URI, shared by every resource; loads run in a worker thread, one per URI at a time."""

    def __init__(self, cache_dir: Path | None = None, *, refresh_s: float = 300.0) -> None:
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="harmony-models-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.refresh_s = refresh_s
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.loads = 0

    def _stale(self, model: LoadedModel) -> bool:
        movable = model.uri.startswith("models:/") and not model.uri.rstrip("/").split("/")[-1].isdigit()
        return movable and time.time() - model.loaded_at > self.refresh_s

    async def get(self, uri: str) -> LoadedModel:
        model = self._models.get(uri)
        if model is not None and not self._stale(model):
            return model
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            model = self._models.get(uri)
            if model is not None and not self._stale(model):
                return model
            if model is not None and uri.startswith("models:/"):
                # An alias that still points at the same version keeps the loaded model.
                try:
                    version = await asyncio.to_thread(_mlflow_version, uri)
                except Exception:
                    version = model.version
                if version == model.version:
                    model = LoadedModel(model.uri, model.version, model.forecaster, time.time())
                    self._models[uri] = model
                    return model
            loaded = await asyncio.to_thread(load_model, uri, self.cache_dir)
            self.loads += 1
            log.info("loaded model %s (version %s)", uri, loaded.version)
            self._models[uri] = loaded
            return loaded
