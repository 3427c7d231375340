"""The MLflow pyfunc face of a trained forecaster, logged with MLflow's "models from code".

MLflow stores this file itself (not a pickled object) and runs it to rebuild the model; the learned state is
the `forecaster` artifact: the folder written by `Forecaster.save` (forecaster.json + weights.safetensors),
read back with `Forecaster.load`. Nothing is unpickled. Serving needs the `harmony-autoscaler` package.

Input contract (`model.predict(frame, params=...)`), one DataFrame of history rows:

    timestamp   the time of each row, in UTC without a zone (MLflow's datetime type is timezone-naive;
                convert with `ts.dt.tz_convert("UTC").dt.tz_localize(None)`). `forecast_frame`, used
                directly, also takes timezone-aware times.
    <indicator> one numeric column per input indicator of the model (`forecaster.json` spec.indicators)
    series      optional: which series a row belongs to; without it all rows are one series

Rows may come in any order and extra columns are ignored. For each series the last `lookback` rows (by
timestamp) are used; they must be consecutive steps of the model's frequency and hold no missing value.

Params (all optional): `output` = "quantiles" (default) or "samples"; `num_samples` (draws, default 200);
`quantiles` (levels in (0, 1), default 0.05 0.1 0.25 0.5 0.75 0.9 0.95); `seed` (default 0; the same seed
and input give the same output).

Output, long format, one row per (series, target, step) for "quantiles":

    series, target, step, timestamp, mean, q0.05, q0.1, ..., q0.95

and one row per (series, sample, target, step) with a `value` column for "samples". `step` k = 1..horizon
is the k-th forecast step; its `timestamp` (UTC, timezone-naive like the input) is the last history time +
(lead_time + k) x frequency. Values are in the indicator's unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, set_model
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from harmony.model.base import Forecaster

FORECASTER_ARTIFACT = "forecaster"
DEFAULT_QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
DEFAULT_NUM_SAMPLES = 200
DEFAULT_SERIES = "0"


def _quantile_column(level: float) -> str:
    return f"q{level:g}"


def _histories(forecaster: Forecaster, frame: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Series ids, histories [B, L, N] and last observed times [B] (ns) from the input rows."""
    spec = forecaster.spec
    missing = [c for c in ("timestamp", *spec.indicators) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"input is missing columns {missing}; expected 'timestamp', optional 'series' and the model's "
            f"indicators {list(spec.indicators)}"
        )
    times = pd.to_datetime(frame["timestamp"], utc=True)
    series = (
        frame["series"].astype(str)
        if "series" in frame.columns
        else pd.Series(DEFAULT_SERIES, index=frame.index)
    )
    values = frame[list(spec.indicators)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    step = int(spec.frequency.value)
    ids: list[str] = []
    hist: list[np.ndarray] = []
    last: list[int] = []
    order = pd.DataFrame({"series": series.to_numpy(), "t": pd.DatetimeIndex(times).as_unit("ns").asi8})
    # Series in sorted order whatever the row order: the output, and the draws (one random stream for the
    # batch), depend only on the rows given.
    for sid, rows in order.groupby("series", sort=True):
        rows = rows.sort_values("t", kind="stable").iloc[-spec.lookback :]
        if len(rows) < spec.lookback:
            raise ValueError(f"series {sid!r}: {len(rows)} rows, the model needs the last {spec.lookback}")
        t = rows["t"].to_numpy()
        gaps = np.flatnonzero(np.diff(t) != step)
        if gaps.size:
            at = pd.Timestamp(int(t[gaps[0] + 1]), tz="UTC")
            raise ValueError(
                f"series {sid!r}: the last {spec.lookback} rows must be consecutive steps of "
                f"{spec.frequency}; the step before {at} is {pd.Timedelta(int(t[gaps[0] + 1] - t[gaps[0]]))}"
            )
        v = values[rows.index.to_numpy()]
        if not np.isfinite(v).all():
            bad = sorted({spec.indicators[j] for j in np.flatnonzero(~np.isfinite(v).all(axis=0))})
            raise ValueError(f"series {sid!r}: missing or non-numeric values in {bad} within the lookback")
        ids.append(str(sid))
        hist.append(v)
        last.append(int(t[-1]))
    if not ids:
        raise ValueError("input has no rows")
    return ids, np.stack(hist), np.asarray(last, dtype=np.int64)


def forecast_frame(
    forecaster: Forecaster,
    frame: pd.DataFrame,
    *,
    output: str = "quantiles",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    seed: int = 0,
) -> pd.DataFrame:
    """Forecast every series of `frame` (the input contract above) into the long output frame."""
    if output not in ("quantiles", "samples"):
        raise ValueError(f"output must be 'quantiles' or 'samples', got {output!r}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    levels = [float(q) for q in quantiles]
    if output == "quantiles" and (not levels or any(not 0.0 < q < 1.0 for q in levels)):
        raise ValueError(f"quantiles must be levels strictly between 0 and 1, got {levels}")
    spec = forecaster.spec
    ids, hist, last = _histories(forecaster, frame)
    draws = forecaster.sample(hist, int(num_samples), last, seed=int(seed))  # [B, n, H, T]
    b, n, h, k = draws.shape
    step = np.arange(1, h + 1)
    when = last[:, None] + (spec.lead_time + step)[None, :] * int(spec.frequency.value)  # [B, H]
    if output == "samples":
        # Axis order of the rows: series, sample, target, step.
        cols = {
            "series": np.repeat(np.asarray(ids, dtype=object), n * k * h),
            "sample": np.tile(np.repeat(np.arange(n), k * h), b),
            "target": np.tile(np.repeat(np.asarray(spec.targets, dtype=object), h), b * n),
            "step": np.tile(step, b * n * k),
            "timestamp": pd.to_datetime(
                np.repeat(when[:, None, None, :], n, 1).repeat(k, 2).ravel(), utc=True
            ),
            "value": draws.transpose(0, 1, 3, 2).astype(np.float64).ravel(),
        }
        return pd.DataFrame(cols)
    qs = np.quantile(draws.astype(np.float64), levels, axis=1)  # [Q, B, H, T]
    mean = draws.astype(np.float64).mean(axis=1)  # [B, H, T]
    out: dict[str, Any] = {
        "series": np.repeat(np.asarray(ids, dtype=object), k * h),
        "target": np.tile(np.repeat(np.asarray(spec.targets, dtype=object), h), b),
        "step": np.tile(step, b * k),
        "timestamp": pd.to_datetime(np.repeat(when[:, None, :], k, 1).ravel()),
        "mean": mean.transpose(0, 2, 1).ravel(),
    }
    for i, q in enumerate(levels):
        out[_quantile_column(q)] = qs[i].transpose(0, 2, 1).ravel()
    return pd.DataFrame(out)


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    p = dict(params or {})
    quantiles = p.get("quantiles")
    return {
        "output": str(p.get("output") or "quantiles"),
        "num_samples": int(p.get("num_samples") or DEFAULT_NUM_SAMPLES),
        "quantiles": [float(q) for q in quantiles] if quantiles is not None else list(DEFAULT_QUANTILES),
        "seed": int(p.get("seed") or 0),
    }


def model_signature(forecaster: Forecaster) -> ModelSignature:
    """Input columns, output columns (quantiles form) and the params above, for MLflow."""
    spec = forecaster.spec
    inputs = Schema(
        [
            ColSpec("string", "series", required=False),
            ColSpec("datetime", "timestamp"),
            *[ColSpec("double", name) for name in spec.indicators],
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "series"),
            ColSpec("string", "target"),
            ColSpec("long", "step"),
            ColSpec("datetime", "timestamp"),
            ColSpec("double", "mean"),
            *[ColSpec("double", _quantile_column(q)) for q in DEFAULT_QUANTILES],
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("output", "string", "quantiles"),
            ParamSpec("num_samples", "long", DEFAULT_NUM_SAMPLES),
            ParamSpec("quantiles", "double", list(DEFAULT_QUANTILES), shape=(-1,)),
            ParamSpec("seed", "long", 0),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """What serving needs: harmony itself (it declares its own dependencies) and the torch release the
    model was trained with (without a local build tag such as +cpu, which package indexes do not serve)."""
    from importlib.metadata import PackageNotFoundError, version

    from harmony import __version__

    reqs = [f"harmony-autoscaler=={__version__}"]
    try:
        reqs.append(f"torch=={version('torch').split('+')[0]}")
    except PackageNotFoundError:
        reqs.append("torch")
    return reqs


class HarmonyForecastModel(PythonModel):
    """Loads the `forecaster` artifact with Forecaster.load; predict follows the module's contract."""

    def __init__(self) -> None:
        self.forecaster: Forecaster | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.forecaster = Forecaster.load(context.artifacts[FORECASTER_ARTIFACT])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self.forecaster is None:
            self.load_context(context)
        assert self.forecaster is not None
        return forecast_frame(self.forecaster, pd.DataFrame(model_input), **_params(params))


# MLflow runs this file under a generated module name when it logs or loads the model, and takes the model
# from set_model. An ordinary import (by harmony.training.train, for the helpers above) must not register
# it: the registration is process-global and would be picked up by an unrelated models-from-code file.
if __name__ != "harmony.model.mlflow_model":
    set_model(HarmonyForecastModel())
