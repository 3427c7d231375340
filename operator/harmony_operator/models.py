"""Trained forecasters by URI: resolved, loaded without unpickling, checked against the indicators, cached.

A model URI is either an MLflow model URI (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN/PATH`,
or any artifact URI MLflow can download) or a local directory (a mounted ConfigMap or volume) holding what
`Forecaster.save` wrote: `forecaster.json` + `weights.safetensors`. In an MLflow model that folder is the
pyfunc model's `artifacts/forecaster/`; it is found by searching the downloaded tree for `forecaster.json`.
Only `Forecaster.load` reads it, so nothing is ever unpickled.

Tenancy (`ModelPolicy`, set by the chart): a URI must start with one of the allowed prefixes (default: the
MLflow registry `models:/` and the mounted directory `/models/`); a local path is resolved first, so `..` and
symbolic links cannot leave an allowed directory. Downloads go to a temporary directory that is removed
whether the load succeeds or not; the model's files are bounded in size and its load in time.

Failures raise `ModelError` with the reason the operator puts in the ModelLoaded condition:

    ModelNotAllowed the URI is outside the allowed prefixes
    ModelNotFound   the URI names nothing (no such directory, model, version or run), or its store cannot be
                    reached (e.g. s3:// without boto3, an unreachable http:// server)
    ModelCorrupt    the files are there but do not load (bad JSON, truncated weights, unknown model, a spec
                    with a non-positive step)
    ModelTooLarge   the model's files exceed the size bound
    ModelLoadTimeout resolving, downloading and loading took longer than the time bound
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
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harmony.model.base import Forecaster
from harmony_operator.redact import redact

__all__ = ["LoadedModel", "ModelCache", "ModelError", "ModelPolicy", "check_indicators"]

# A forecaster directory sits at most this deep in what MLflow downloads (artifacts/forecaster/).
_MAX_SEARCH_DEPTH = 4

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(redact(message))
        self.reason = reason


@dataclass(frozen=True)
class ModelPolicy:
    """Which model URIs resources may name, and the bounds on loading one (validated here, at the edge)."""

    allowed_prefixes: tuple[str, ...] = ("models:/", "/models/")
    max_bytes: int = 512 * 1024**2
    load_timeout_s: float = 120.0
    _dirs: tuple[Path, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.allowed_prefixes or any(not p.strip() for p in self.allowed_prefixes):
            raise ValueError(
                f"allowed model URI prefixes must be non-empty strings, got {self.allowed_prefixes}"
            )
        if self.max_bytes <= 0:
            raise ValueError(f"the model size bound must be positive, got {self.max_bytes}")
        if not (math.isfinite(self.load_timeout_s) and self.load_timeout_s > 0):
            raise ValueError(f"the model load time bound must be positive, got {self.load_timeout_s}")
        local = tuple(Path(os.path.realpath(p)) for p in self.allowed_prefixes if p.startswith("/"))
        object.__setattr__(self, "_dirs", local)

    def check(self, uri: str) -> None:
        """Raise ModelError(ModelNotAllowed) unless `uri` lies under an allowed prefix."""
        if _is_mlflow_uri(uri):
            if ".." in uri.split("/") or not uri.startswith(
                tuple(p for p in self.allowed_prefixes if not p.startswith("/"))
            ):
                raise ModelError(
                    "ModelNotAllowed", f"{uri}: not under an allowed prefix {list(self.allowed_prefixes)}"
                )
            return
        path = Path(os.path.realpath(uri.removeprefix("file:")))
        if not any(path == d or path.is_relative_to(d) for d in self._dirs):
            raise ModelError(
                "ModelNotAllowed", f"{uri}: not under an allowed prefix {list(self.allowed_prefixes)}"
            )


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


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


def _find_forecaster_dir(root: Path, uri: str) -> Path:
    if (root / "forecaster.json").is_file():
        return root
    for depth in range(1, _MAX_SEARCH_DEPTH + 1):
        found = sorted(root.glob("/".join(["*"] * depth) + "/forecaster.json"))
        if found:
            return found[0].parent
    raise ModelError("ModelCorrupt", f"{uri}: no forecaster.json (not a harmony forecaster)")


def _load_dir(path: Path, uri: str, max_bytes: int) -> Forecaster:
    size = _size(path)
    if size > max_bytes:
        raise ModelError(
            "ModelTooLarge", f"{uri}: {size} bytes of model files, more than the bound {max_bytes}"
        )
    try:
        step = json.loads((path / "forecaster.json").read_text())["spec"]["frequency_s"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError("ModelCorrupt", f"{uri}: unreadable forecaster.json: {exc}") from exc
    if not (isinstance(step, int | float) and math.isfinite(step) and step > 0):
        # A zero step would divide by zero in every decision: refuse the model, not the loop.
        raise ModelError("ModelCorrupt", f"{uri}: frequency_s must be > 0, got {step!r}")
    try:
        return Forecaster.load(path)
    except FileNotFoundError as exc:
        raise ModelError("ModelCorrupt", f"{uri}: {exc}") from exc
    except Exception as exc:  # a model's own constructor may raise anything on a bad spec
        raise ModelError(
            "ModelCorrupt", f"{uri}: the model does not load: {type(exc).__name__}: {exc}"
        ) from exc


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


def load_model(uri: str, cache_dir: Path, max_bytes: int = ModelPolicy.max_bytes) -> LoadedModel:
    """Resolve and load one model (blocking: downloads and reads files)."""
    if not _is_mlflow_uri(uri):
        path = Path(uri.removeprefix("file:"))
        if not path.is_dir():
            raise ModelError("ModelNotFound", f"{uri}: no such model directory")
        forecaster = _load_dir(_find_forecaster_dir(path, uri), uri, max_bytes)
        meta = path / "forecaster.json"
        version = f"file:{int(meta.stat().st_mtime)}" if meta.exists() else "file"
        return LoadedModel(uri, version, forecaster, time.time())

    import mlflow
    from mlflow.exceptions import MlflowException

    target = Path(tempfile.mkdtemp(prefix="model-", dir=cache_dir))
    try:
        try:
            version = _mlflow_version(uri)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        except ModelError:
            raise
        except MlflowException as exc:
            raise ModelError("ModelNotFound", f"{uri}: {exc.message}") from exc
        except Exception as exc:
            # Whatever the artifact store raises (ImportError for s3:// without boto3, ValueError for an
            # http:// URI, connection errors): the model cannot be had; say why.
            raise ModelError("ModelNotFound", f"{uri}: cannot download: {type(exc).__name__}: {exc}") from exc
        forecaster = _load_dir(_find_forecaster_dir(local, uri), uri, max_bytes)
    finally:
        # The weights are in memory now (or the load failed): nothing on disk is needed any more.
        shutil.rmtree(target, ignore_errors=True)
    return LoadedModel(uri, version, forecaster, time.time())


class ModelCache:
    """Loaded models by URI, shared by every resource; loads run in a worker thread, one per URI at a time."""

    def __init__(
        self, cache_dir: Path | None = None, *, refresh_s: float = 300.0, policy: ModelPolicy | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="harmony-models-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.refresh_s = refresh_s
        self.policy = policy or ModelPolicy()
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.loads = 0

    def _stale(self, model: LoadedModel) -> bool:
        movable = model.uri.startswith("models:/") and not model.uri.rstrip("/").split("/")[-1].isdigit()
        return movable and time.time() - model.loaded_at > self.refresh_s

    async def get(self, uri: str) -> LoadedModel:
        self.policy.check(uri)
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
                    version = await asyncio.wait_for(
                        asyncio.to_thread(_mlflow_version, uri), timeout=self.policy.load_timeout_s
                    )
                except Exception:  # the registry is away: keep serving the loaded version
                    version = model.version
                if version == model.version:
                    model = LoadedModel(model.uri, model.version, model.forecaster, time.time())
                    self._models[uri] = model
                    return model
            try:
                loaded = await asyncio.wait_for(
                    asyncio.to_thread(load_model, uri, self.cache_dir, self.policy.max_bytes),
                    timeout=self.policy.load_timeout_s,
                )
            except TimeoutError:
                # The worker thread cannot be killed; its temporary directory is removed when it ends.
                raise ModelError(
                    "ModelLoadTimeout", f"{uri}: not loaded within {self.policy.load_timeout_s:g}s"
                ) from None
            self.loads += 1
            log.info("loaded model %s (version %s)", uri, loaded.version)
            self._models[uri] = loaded
            return loaded
