"""Classical point forecasters fitted online on the past only: statsforecast's AutoARIMA and AutoETS, as
NVIDIA Dynamo's planner forecasts load with ARIMA before it scales.

The point-forecast baselines of the backtest. Nothing here re-implements ARIMA or ETS: the models are
statsforecast's, an optional dependency (`pip install 'harmony-autoscaler[baselines]'`) imported inside the
functions that need it, so that importing this module works without it.

The rule, for a decision at step tau (`online_point_forecasts`), none of it silent:

1. **Past only.** Only `values[:tau]` is read: the last known step is at most tau - 1. The forecast covers
   steps tau + first_step .. tau + first_step + window - 1 (statsforecast horizon first_step + window).
2. **Forecastable?** In the last `history` steps, `values[max(0, tau - history):tau]`:
   - fewer than `min_history` known (non-NaN) values: no forecast (NaN row, counted in `missing`);
   - else, if the last known value is more than `max_stale` steps old (the newest max_stale + 1 steps all
     NaN): no forecast (NaN row, counted in `missing` and `stale`).
   The caller falls back to its reactive rule on NaN rows.
3. **Cleaning** (`prepare_history`): leading NaNs are dropped; interior NaNs are filled by linear
   interpolation between the known values on either side; trailing NaNs (at most `max_stale`, by rule 2)
   are not filled: the series ends at its last known value, `lag` steps before tau - 1, and the horizon is
   lengthened by `lag`, so that the kept forecast still covers tau + first_step onwards.
4. **Refit cadence.** A fit is attempted at the first forecastable decision, then at the first forecastable
   decision at least `refit_every` steps (of decision time) after the previous attempt. Decisions every
   `stride` steps, all forecastable: one attempt every ceil(refit_every / stride) decisions
   (`refit_attempts`). A fit sees the cleaned last `history` steps up to tau - 1 and forecasts with
   `predict`.
5. **Between refits** the fitted model's `forward` (statsforecast: the estimated parameters applied to a
   series, nothing re-estimated) runs on the cleaned values *from the first step of that model's fit
   window* to tau - 1 (at most history + refit_every - 1 steps while refits succeed). Starting where the fit
   started matters: an ETS model's estimated initial states (level, trend, seasonal phase) belong to that
   step; filtering a window that starts elsewhere mis-aligns them, and a seasonal pattern forecast from a
   window shifted by a few steps is off by up to the pattern's amplitude.
6. **Failures.** A statsforecast call that raises one of the errors it answers data it cannot model with
   (ValueError, ArithmeticError, RuntimeError (NotImplementedError), LookupError, or the bare `Exception`
   of "no model able to be fitted"), or that returns a non-finite forecast, is a failure: counted in
   `failures` (`fit_failures` for fits), its first messages kept in `errors`. A failed refit keeps the
   previous model, which forwards as in rule 5; with no model, or when `forward` fails, the forecast is
   **persistence**: the last known value repeated (counted in `persistence`). The next fit is attempted
   at the next refit time (rule 4), not at every step. Any other exception (TypeError, AttributeError,
   ...: a bug, not the data) propagates.
7. **Demand is not negative**: forecasts are clipped at 0.

Seasons. `season_length` goes to statsforecast as is. AutoETS fits seasons longer than 24 steps since
statsforecast 1.5 (Nixtla/statsforecast#384; checked on 2.1.1: a period-30 pattern is continued exactly).
A seasonal AutoARIMA does not scale with the season (one fit on 1008 ten-minute steps of Fisher container1:
0.7 s non-seasonal, 43 s at 24, over 6 minutes at 48), so model="arima" takes `season_length` <=
`ARIMA_MAX_SEASON`. A seasonal model is fitted on two seasons at least (statsforecast silently fits a
non-seasonal one on less): `min_history` >= 2 x season_length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ARIMA_MAX_SEASON",
    "DEFAULT_MIN_HISTORY",
    "ClassicalConfig",
    "ForecastStats",
    "PreparedHistory",
    "online_point_forecasts",
    "point_forecasts",
    "prepare_history",
    "refit_attempts",
]

FloatArray = NDArray[np.float64]
#: The longest season model="arima" takes: a seasonal AutoARIMA fit slows down steeply with the season.
ARIMA_MAX_SEASON = 24
#: min_history when left at 0: this many known values, or two seasons if more.
DEFAULT_MIN_HISTORY = 16
#: How many distinct failure messages ForecastStats keeps.
MAX_ERRORS_KEPT = 5
_INSTALL_HINT = "pip install 'harmony-autoscaler[baselines]'"


@dataclass(frozen=True)
class ClassicalConfig:
    """A classical model and how it is fitted online (the rule is in the module doc).

    model: "arima" (statsforecast AutoARIMA) or "ets" (AutoETS, components chosen automatically, "ZZZ").
    season_length: steps per season; 1 = non-seasonal, as Dynamo's planner uses them; <= ARIMA_MAX_SEASON
        for "arima".
    history: at most this many most recent steps (up to tau - 1) are fitted on.
    refit_every: steps of decision time between fit attempts; in between, `forward`.
    min_history: fewer known values than this in the last `history` steps: no forecast (NaN). 0 (the
        default) means max(DEFAULT_MIN_HISTORY, 2 x season_length); it reads as that after construction.
    max_stale: the newest value may be missing for at most this many steps; more: no forecast (NaN).
    """

    model: Literal["arima", "ets"]
    season_length: int = 1
    history: int = 1008
    refit_every: int = 144
    min_history: int = 0
    max_stale: int = 3

    def __post_init__(self) -> None:
        if self.model not in ("arima", "ets"):
            raise ValueError(f"ClassicalConfig.model must be 'arima' or 'ets', got {self.model!r}")
        for name in ("season_length", "history", "refit_every", "min_history", "max_stale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"ClassicalConfig.{name} must be an integer, got {value!r}")
        if self.season_length < 1:
            raise ValueError(
                f"ClassicalConfig.season_length must be >= 1 (1 = non-seasonal), got {self.season_length}"
            )
        if self.model == "arima" and self.season_length > ARIMA_MAX_SEASON:
            raise ValueError(
                f"ClassicalConfig.season_length must be <= {ARIMA_MAX_SEASON} for model='arima', got "
                f"{self.season_length}: a seasonal AutoARIMA fit slows down steeply with the season (on 1008 "
                "steps: 43 s at 24, over 6 minutes at 48); use model='ets', which fits long seasons, or "
                "season_length=1"
            )
        two_seasons = 2 * self.season_length if self.season_length > 1 else 1
        if self.min_history == 0:
            object.__setattr__(self, "min_history", max(DEFAULT_MIN_HISTORY, two_seasons))
        elif self.min_history < 1:
            raise ValueError(
                f"ClassicalConfig.min_history must be >= 1 known value (0: the default), "
                f"got {self.min_history}"
            )
        elif self.min_history < two_seasons:
            raise ValueError(
                f"ClassicalConfig.min_history must be >= 2 x season_length = {two_seasons} for a seasonal "
                f"model, got {self.min_history}: statsforecast silently fits a non-seasonal model on less"
            )
        if self.history < self.min_history:
            raise ValueError(
                f"ClassicalConfig.history ({self.history}) must be >= min_history ({self.min_history}): "
                "no decision could ever be forecast"
            )
        if self.refit_every < 1:
            raise ValueError(f"ClassicalConfig.refit_every must be >= 1 step, got {self.refit_every}")
        if self.max_stale < 0:
            raise ValueError(f"ClassicalConfig.max_stale must be >= 0 steps, got {self.max_stale}")


@dataclass
class ForecastStats:
    """What online forecasts took (`add` sums them over indicators and series).

    fits / forwards: statsforecast fits / forwards attempted. failures: attempts that failed (rule 6), of
    which fit_failures were fits. persistence: forecasts made by the fallback. missing: decisions left NaN
    (rule 2), of which `stale` for a stale newest value. seconds: wall time. errors: the first distinct
    failure messages.
    """

    fits: int = 0
    forwards: int = 0
    failures: int = 0
    fit_failures: int = 0
    persistence: int = 0
    missing: int = 0
    stale: int = 0
    seconds: float = 0.0
    errors: tuple[str, ...] = field(default_factory=tuple)

    def add(self, other: ForecastStats) -> None:
        """Add `other` into these stats."""
        self.fits += other.fits
        self.forwards += other.forwards
        self.failures += other.failures
        self.fit_failures += other.fit_failures
        self.persistence += other.persistence
        self.missing += other.missing
        self.stale += other.stale
        self.seconds += other.seconds
        for message in other.errors:
            self._note(message)

    def _note(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT and message not in self.errors:
            self.errors = (*self.errors, message)


@dataclass(frozen=True)
class PreparedHistory:
    """The cleaned past of one decision (rules 2 and 3).

    y: the known and interpolated values from the first to the last known step; None when `skip` is set.
    start: the index of y[0] in the array given to `prepare_history`. lag: NaN steps after y's last value.
    skip: why there is no forecast ("too_few_points" or "stale"), or None.
    """

    y: FloatArray | None
    start: int
    lag: int
    skip: Literal["too_few_points", "stale"] | None = None


def prepare_history(past: FloatArray, min_history: int, max_stale: int) -> PreparedHistory:
    """Clean `past` (the steps before a decision, NaN = missing) by rules 2 and 3 of the module doc."""
    known = np.flatnonzero(~np.isnan(past))
    if known.size == 0 or known.size < min_history:
        return PreparedHistory(None, 0, 0, "too_few_points")
    first, last = int(known[0]), int(known[-1])
    lag = past.size - 1 - last
    if lag > max_stale:
        return PreparedHistory(None, first, lag, "stale")
    y = np.array(past[first : last + 1], dtype=np.float64)
    holes = np.isnan(y)
    if holes.any():
        at = np.arange(y.size)
        y[holes] = np.interp(at[holes], at[~holes], y[~holes])
    return PreparedHistory(y, first, lag)


def online_point_forecasts(
    values: Sequence[float] | FloatArray,
    decisions: Sequence[int] | NDArray[np.integer[Any]],
    first_step: int,
    window: int,
    config: ClassicalConfig,
) -> tuple[FloatArray, ForecastStats]:
    """[len(decisions), window] point forecasts of one indicator of one series, and what they took.

    values: [n] the indicator (NaN = missing; +-inf is an error). decisions: strictly increasing steps tau in
    0..n; the forecast for tau reads values[:tau] only and covers steps tau + first_step .. tau + first_step
    + window - 1. Forecasts are clipped at 0; a row is NaN where no forecast could be made (rule 2). The
    rule, fallbacks included, is in the module doc.
    """
    t0 = time.perf_counter()
    series = np.asarray(values, dtype=np.float64)
    if series.ndim != 1:
        raise ValueError(f"values must be 1-D [steps], got shape {series.shape}")
    if np.isinf(series).any():
        raise ValueError("values must be finite or NaN (missing), got +-inf")
    taus = _decision_steps(decisions, series.size)
    if isinstance(first_step, bool) or not isinstance(first_step, int | np.integer) or first_step < 0:
        raise ValueError(f"first_step must be an integer >= 0, got {first_step!r}")
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    first_step, window = int(first_step), int(window)

    out = np.full((len(taus), window), np.nan)
    stats = ForecastStats()
    model: Any = None  # the fitted statsforecast model
    model_start = 0  # the step its fit window started at
    last_attempt: int | None = None
    for row, tau in enumerate(taus):
        lo = max(0, tau - config.history)
        recent = prepare_history(series[lo:tau], config.min_history, config.max_stale)
        if recent.skip is not None:
            stats.missing += 1
            stats.stale += recent.skip == "stale"
            continue
        assert recent.y is not None  # set whenever skip is None
        y_fit = recent.y
        h = first_step + window + recent.lag
        forecast: FloatArray | None = None
        if last_attempt is None or tau - last_attempt >= config.refit_every:
            last_attempt = tau
            stats.fits += 1
            fitted, answer = _library_call(_fit_predict, config, y_fit, h)
            forecast = None if fitted is None else _mean(answer, h)
            if forecast is not None:
                model, model_start = fitted, lo + recent.start
            else:
                stats.failures += 1
                stats.fit_failures += 1
                stats._note(f"fit at step {tau}: {_describe(answer)}")
        if forecast is None and model is not None:
            # From the first step of the model's fit window: its initial states belong there (rule 5).
            since = prepare_history(series[model_start:tau], 1, config.max_stale)
            assert since.y is not None and since.start == 0  # series[model_start] is a known value
            h_since = first_step + window + since.lag
            stats.forwards += 1
            done, answer = _library_call(_forward, model, since.y, h_since)
            forecast = None if done is None else _mean(answer, h_since)
            if forecast is None:
                stats.failures += 1
                stats._note(f"forward at step {tau}: {_describe(answer)}")
        if forecast is None:
            forecast = np.full(h, y_fit[-1])
            stats.persistence += 1
        out[row] = np.maximum(forecast[-window:], 0.0)
    stats.seconds = time.perf_counter() - t0
    return out, stats


def point_forecasts(
    values: FloatArray,
    decisions: Sequence[int] | NDArray[np.integer[Any]],
    first_step: int,
    window: int,
    config: ClassicalConfig,
) -> tuple[FloatArray, ForecastStats]:
    """`online_point_forecasts` of every column of `values` [n, D], one model per indicator:
    [len(decisions), window, D] and the stats summed over the indicators."""
    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"values must be [steps, indicators], got shape {table.shape}")
    stats = ForecastStats()
    columns = []
    for d in range(table.shape[1]):
        path, column_stats = online_point_forecasts(table[:, d], decisions, first_step, window, config)
        columns.append(path)
        stats.add(column_stats)
    if not columns:
        return np.empty((len(decisions), window, 0)), stats
    return np.stack(columns, axis=-1), stats


def refit_attempts(n_decisions: int, stride: int, refit_every: int) -> int:
    """Fit attempts over `n_decisions` forecastable decisions `stride` steps apart (rule 4)."""
    if n_decisions <= 0:
        return 0
    return math.ceil(n_decisions / math.ceil(refit_every / stride))


# --- internals ---------------------------------------------------------------------------------------------
def _decision_steps(decisions: Sequence[int] | NDArray[np.integer[Any]], n: int) -> list[int]:
    taus = np.asarray(decisions)
    if taus.ndim != 1 or (taus.size > 0 and not np.issubdtype(taus.dtype, np.integer)):
        raise ValueError(f"decisions must be a 1-D sequence of integer steps, got {taus.dtype} {taus.shape}")
    if taus.size > 1 and not bool((np.diff(taus) > 0).all()):
        raise ValueError("decisions must be strictly increasing step indices")
    if taus.size > 0 and (taus[0] < 0 or taus[-1] > n):
        raise ValueError(f"decisions must lie in 0..{n} (the length of values), got {taus[0]}..{taus[-1]}")
    return [int(t) for t in taus]


def _new_model(config: ClassicalConfig) -> Any:
    try:
        from statsforecast.models import AutoARIMA, AutoETS
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError(f"the ARIMA and ETS baselines need statsforecast: {_INSTALL_HINT}") from exc
    if config.model == "arima":
        return AutoARIMA(season_length=config.season_length)
    return AutoETS(season_length=config.season_length)


def _fit_predict(config: ClassicalConfig, y: FloatArray, h: int) -> tuple[Any, Any]:
    model = _new_model(config)
    model.fit(y)
    return model, model.predict(h=h)


def _forward(model: Any, y: FloatArray, h: int) -> tuple[Any, Any]:
    return model, model.forward(y=y, h=h)


def _is_library_failure(exc: Exception) -> bool:
    """The errors statsforecast answers data it cannot model with; anything else is a bug and propagates."""
    library_errors = ValueError | ArithmeticError | RuntimeError | LookupError
    return isinstance(exc, library_errors) or type(exc) is Exception


def _library_call(step: Callable[..., tuple[Any, Any]], *args: Any) -> tuple[Any, Any]:
    """step(*args): (model, the library's answer), or (None, the exception the library raised)."""
    try:
        # A degenerate history makes the library divide by zero; its answer is checked instead (_mean).
        with np.errstate(all="ignore"):
            return step(*args)
    except Exception as exc:
        if not _is_library_failure(exc):
            raise
        return None, exc


def _mean(answer: Any, h: int) -> FloatArray | None:
    """The library's h mean forecasts, or None when its answer holds no finite forecast of that length."""
    mean = answer.get("mean") if isinstance(answer, dict) else None
    if mean is None:
        return None
    path = np.asarray(mean, dtype=np.float64)
    return path if path.shape == (h,) and bool(np.isfinite(path).all()) else None


def _describe(answer: Any) -> str:
    if isinstance(answer, BaseException):
        return f"{type(answer).__name__}: {answer}"
    return "no finite forecast of the horizon's length"
