"""Scores of a forecaster on one part of a split: CRPS, weighted quantile loss, interval and PIT coverage,
energy score and MASE per window, averaged per series and then over series, with the inputs of the fan and
calibration charts. `harmony train` logs them as test/<metric>; `harmony evaluate` compares models with them.
"""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmony.data.trace import Trace
from harmony.data.windows import Part, Split
from harmony.metrics import (
    coverage_key,
    crps_samples,
    energy_score,
    interval_coverage,
    mase,
    pit,
    pit_coverage,
    summarize,
    weighted_quantile_loss,
)
from harmony.model.base import Forecaster
from harmony.plots import FanPanel
from harmony.training.errors import TrainError
from harmony.training.windows import collect_windows

__all__ = ["COVERAGE_CURVE", "Evaluation", "evaluate"]

COVERAGE_CURVE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass
class Evaluation:
    """Test-split scores (mean over windows per series, then mean over series) and chart inputs."""

    metrics: dict[str, float]
    per_target: dict[str, dict[str, float]]
    per_series: pd.DataFrame
    pit: np.ndarray
    coverage_curve: dict[str, dict[float, float]]
    example: list[FanPanel]
    example_title: str
    n_windows: int


def _summary(samples: np.ndarray, y: np.ndarray, *, energy: bool = True) -> dict[str, float]:
    """summarize(); when one metric is undefined for this series (e.g. wql of an all-zero target), the
    others are still reported and that one is left out."""
    try:
        out = summarize(samples, y)
    except ValueError:
        out = {"crps": float(np.nanmean(crps_samples(samples, y)))}
        with suppress(ValueError):
            out["wql"] = weighted_quantile_loss(samples, y)
        for level, frac in interval_coverage(samples, y).items():
            out[coverage_key(level)] = frac
        for level, frac in pit_coverage(samples, y).items():
            out["pit_" + coverage_key(level)] = frac
        if energy:
            out["energy"] = float(np.nanmean(energy_score(samples, y)))
    if not energy:
        out.pop("energy", None)
    return out


def _mase(draws: np.ndarray, y: np.ndarray, history: np.ndarray, season: int) -> float:
    """Mean over windows of the MASE of the median draw, each window scaled by its own lookback; windows
    whose lookback is flat (MASE undefined) are skipped."""
    values = []
    for w in range(y.shape[0]):
        try:
            values.append(mase(np.median(draws[w], axis=0), y[w], history[w], season))
        except ValueError:
            continue
    return float(np.mean(values)) if values else math.nan


def _mean_over(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r and math.isfinite(r[k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def evaluate(
    forecaster: Forecaster,
    trace: Trace,
    split: Split,
    *,
    num_samples: int,
    max_windows_per_series: int,
    seed: int,
    part: Part = "test",
) -> Evaluation:
    """Score `num_samples` draws per test window, at most `max_windows_per_series` windows per series
    chosen evenly over its test part (a bounded, deterministic cost); `part="val"` scores the validation
    part instead."""
    spec = forecaster.spec
    tidx = spec.target_index
    windows = collect_windows(trace, split, spec, max_windows_per_series, part)
    per_day = max(1, round(86_400 / spec.frequency_s))
    # Seasonal MASE needs a full day inside the lookback; otherwise the one-step naive scale.
    season = per_day if spec.lookback > per_day else 1
    # Targets come in different units (bytes next to percent): the all-target scores take each target
    # divided by its mean absolute value over the training part of all series, so that no unit dominates.
    # One scale per target, not per series: a nearly idle series would otherwise blow its errors up.
    train_parts = [
        trace[sid][list(spec.targets)].to_numpy(np.float64)[: split.boundaries[sid][0]]
        for sid in windows.series
    ]
    scale = np.nanmean(np.abs(np.concatenate(train_parts)), axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    series_rows: list[dict[str, float]] = []
    target_rows: dict[str, list[dict[str, float]]] = {t: [] for t in spec.targets}
    curves: dict[str, list[dict[float, float]]] = {t: [] for t in (*spec.targets, "all")}
    pits: list[np.ndarray] = []
    example: list[FanPanel] = []
    example_title = ""
    n_windows = 0
    for k, sid in enumerate(windows.series):
        past = windows.history[sid]  # [W, L, N]
        y = windows.actual[sid].astype(np.float64)  # [W, H, T]
        anchors = windows.anchors[sid]
        index = trace[sid].index
        last = windows.last_time[sid]
        draws = forecaster.sample(past, num_samples, last, seed=seed + k).astype(np.float64)  # [W, n, H, T]
        if not np.isfinite(draws).all():
            raise TrainError(
                f"the forecaster produced non-finite draws on the test windows of series {sid!r}"
            )
        s = draws.transpose(1, 0, 2, 3)  # [n, W, H, T]: samples first, as harmony.metrics expects
        hist = past[..., tidx].astype(np.float64)
        row = _summary(s / scale, y / scale)
        row["mase"] = _mase(draws, y, hist, season)
        row["windows"] = float(anchors.size)
        series_rows.append({"series": k, **row})
        for j, t in enumerate(spec.targets):
            trow = _summary(s[..., j], y[..., j], energy=False)
            trow["mase"] = _mase(draws[..., j], y[..., j], hist[..., j], season)
            target_rows[t].append(trow)
            curves[t].append(interval_coverage(s[..., j], y[..., j], COVERAGE_CURVE))
        curves["all"].append(interval_coverage(s, y, COVERAGE_CURVE))
        pits.append(pit(s, y, rng=np.random.default_rng(seed + k)).ravel())
        n_windows += int(anchors.size)
        if not example:
            w = anchors.size // 2
            t0 = int(anchors[w])
            hist_times = pd.DatetimeIndex(index[t0 - spec.lookback + 1 : t0 + 1])
            fut_times = pd.DatetimeIndex(
                index[t0 + spec.lead_time + 1 : t0 + spec.lead_time + spec.horizon + 1]
            )
            for j, t in enumerate(spec.targets):
                example.append(
                    FanPanel(
                        name=t,
                        unit=trace.indicator(t).unit,
                        history_times=hist_times,
                        history=hist[w, :, j],
                        future_times=fut_times,
                        actual=y[w, :, j],
                        samples=draws[w, :, :, j],
                    )
                )
            example_title = (
                f"{trace.name} / {sid}: test window ending {index[t0]}, lead {spec.lead_time}, "
                f"{num_samples} draws"
            )
    if not series_rows:
        raise TrainError(f"no {part} windows to evaluate")
    per_series = pd.DataFrame(series_rows)
    per_series["series"] = [windows.series[int(k)] for k in per_series["series"]]
    metrics = _mean_over(
        [{k: v for k, v in r.items() if k not in ("series", "windows")} for r in series_rows]
    )
    per_target = {t: _mean_over(r) for t, r in target_rows.items()}
    curve = {
        name: {lv: float(np.mean([c[lv] for c in cs])) for lv in COVERAGE_CURVE}
        for name, cs in curves.items()
        if cs
    }
    return Evaluation(
        metrics=metrics,
        per_target=per_target,
        per_series=per_series.set_index("series"),
        pit=np.concatenate(pits),
        coverage_curve=curve,
        example=example,
        example_title=example_title,
        n_windows=n_windows,
    )
