"""Classical point forecasters fitted online on the past only: statsforecast's AutoARIMA and AutoETS, as
NVIDIA Dynamo's planner forecasts load with ARIMA before it scales.

For each decision step tau the forecast uses `values[:tau]` only (the last known step is tau - 1) and covers
steps tau + first_step .. tau + first_step + window - 1 (statsforecast horizon `first_step + window`). The
model is re-estimated every `refit_every` steps on the last `history` known values; between refits the
fitted model is applied to the newer values without re-estimating its parameters (statsforecast's
`forward`), which is what a planner that refits periodically does and costs a filter pass instead of a
search. Rules, none silent:

* Gaps: interior missing values of the history are filled by linear interpolation; leading ones dropped.
  A history whose newest value is missing for more than `max_stale` steps, or with fewer than
  `min_history` known values, gets no forecast (NaN): the caller falls back to a reactive rule.
* Demand cannot be negative: forecasts are clipped at 0.
* A fit or forward the library rejects (e.g. a constant history can make AutoARIMA raise) is forecast by
  persistence (the last known value repeated) and counted in `ForecastStats.failures`.

statsforecast is an optional dependency (`pip install 'harmony-autoscaler[baselines]'`), imported when a
forecast is first asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_ETS_SEASON", "ClassicalConfig", "ForecastStats", "online_point_forecasts", "point_forecasts"]

FloatArray = NDArray[np.float64]
MAX_ETS_SEASON = 24  # statsforecast's ETS fits no seasonal component beyond this period


@dataclass(frozen=True)
class ClassicalConfig:
    """A classical model and how it is fitted online (see the module doc)."""

    model: Literal["arima", "ets"]
    season_length: int = 1
    history: int = 1008
    refit_every: int = 144
    min_history: int = 16
    max_stale: int = 3

    def __post_init__(self) -> None:
        if self.model not in ("arima", "ets"):
            raise ValueError(f"ClassicalConfig.model must be 'arima' or 'ets', got {self.model!r}")
        if not (isinstance(self.season_length, int) and self.season_length >= 1):
            raise ValueError(
                f"ClassicalConfig.season_length must be an integer >= 1, got {self.season_length}"
            )
        if self.model == "ets" and self.season_length > MAX_ETS_SEASON:
            raise ValueError(
                f"ClassicalConfig.season_length: statsforecast's ETS takes seasons of at most "
                f"{MAX_ETS_SEASON} steps, got {self.season_length}"
            )
        if self.min_history < 4:
            raise ValueError(f"ClassicalConfig.min_history must be >= 4 steps, got {self.min_history}")
        if self.history < self.min_history:
            raise ValueError(
                f"ClassicalConfig.history ({self.history}) must be >= min_history ({self.min_history})"
            )
        if self.refit_every < 1 or self.max_stale < 0:
            raise ValueError("ClassicalConfig: need refit_every >= 1 and max_stale >= 0")


@dataclass
class ForecastStats:
    """What one series' online forecasts took: fits, forwards, failures (persistence) and no-forecasts."""

    fits: int = 0
    forwards: int = 0
    failures: int = 0
    missing: int = 0

    def add(self, other: ForecastStats) -> None:
        self.fits += other.fits
        self.forwards += other.forwards
        self.failures += other.failures
        self.missing += other.missing


def _model(config: ClassicalConfig) -> Any:
    try:
        from statsforecast.models import AutoARIMA, AutoETS
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError(
            "the ARIMA and ETS baselines need statsforecast: pip install 'harmony-autoscaler[baselines]'"
        ) from exc
    if config.model == "arima":
        return AutoARIMA(season_length=config.season_length)
    return AutoETS(season_length=config.season_length)


def _history(values: FloatArray, tau: int, config: ClassicalConfig) -> FloatArray | None:
    """The last `history` values before tau, interior gaps interpolated; None when unusable."""
    window = values[max(0, tau - config.history) : tau]
    known = np.isfinite(window)
    if int(known.sum()) < config.min_history:
        return None
    last = int(np.flatnonzero(known)[-1])
    if window.size - 1 - last > config.max_stale:
        return None
    first = int(np.flatnonzero(known)[0])
    y = window[first : last + 1]
    if not np.isfinite(y).all():
        idx = np.arange(y.size)
        ok = np.isfinite(y)
        y = np.interp(idx, idx[ok], y[ok])
    return np.asarray(y, dtype=np.float64)


# statsforecast reports a history no model fits with a bare Exception ("no model able to be fitted") or a
# ValueError ("No suitable ARIMA model found"): those are the library's answers, counted as failures. Errors
# that can only be bugs (a wrong type or attribute, a missing package) propagate.
_BUGS = (TypeError, AttributeError, ImportError, NameError)


def online_point_forecasts(
    values: Sequence[float] | FloatArray,
    decisions: Sequence[int] | NDArray[np.int64],
    first_step: int,
    window: int,
    config: ClassicalConfig,
) -> tuple[FloatArray, ForecastStats]:
    """[len(decisions), window] point forecasts of one indicator of one series (NaN: no forecast).

    `decisions` are increasing step indices; the forecast for tau reads `values[:tau]` only and covers
    steps tau + first_step .. tau + first_step + window - 1.
    """
    y_all = np.asarray(values, dtype=np.float64)
    taus = np.asarray(decisions, dtype=np.int64)
    if first_step < 0 or window < 1:
        raise ValueError(f"need first_step >= 0 and window >= 1, got {first_step}, {window}")
    if taus.size and ((np.diff(taus) <= 0).any() or taus[0] < 0 or taus[-1] > y_all.size):
        raise ValueError("decisions must be increasing step indices within the series")
    h = first_step + window
    out = np.full((taus.size, window), np.nan)
    stats = ForecastStats()
    fitted: Any = None
    fitted_at = -math.inf
    for k, tau in enumerate(taus):
        t = int(tau)
        y = _history(y_all, t, config)
        if y is None:
            stats.missing += 1
            continue
        path: FloatArray | None = None
        try:
            if fitted is None or t - fitted_at >= config.refit_every:
                fitted_at = t
                fitted = None
                stats.fits += 1
                fitted = _model(config).fit(y)
                path = np.asarray(fitted.predict(h=h)["mean"], dtype=np.float64)
            else:
                stats.forwards += 1
                path = np.asarray(fitted.forward(y=y, h=h)["mean"], dtype=np.float64)
        except _BUGS:
            raise
        except Exception:
            path = None
        if path is None or path.shape != (h,) or not np.isfinite(path).all():
            stats.failures += 1
            path = np.full(h, y[-1])
        out[k] = np.maximum(path[first_step:], 0.0)
    return out, stats


def point_forecasts(
    values: FloatArray,
    decisions: Sequence[int] | NDArray[np.int64],
    first_step: int,
    window: int,
    config: ClassicalConfig,
) -> tuple[FloatArray, ForecastStats]:
    """`online_point_forecasts` of every column of `values` [n, D]: [len(decisions), window, D]."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [steps, indicators], got shape {v.shape}")
    stats = ForecastStats()
    cols = []
    for j in range(v.shape[1]):
        path, st = online_point_forecasts(v[:, j], decisions, first_step, window, config)
        cols.append(path)
        stats.add(st)
    return np.stack(cols, axis=-1), stats
