"""harmony.model.classical: statsforecast's AutoARIMA and AutoETS fitted online on the past only.

Closed-form cases on short arithmetic arrays (a constant, a straight line, a line with a hole), the
past-only promise and the refit cadence on a real Fisher container, and the documented fallbacks."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from harmony.data.trace import Trace
from harmony.model.classical import ClassicalConfig, online_point_forecasts, point_forecasts


@pytest.mark.parametrize("model", ["arima", "ets"])
def test_a_constant_history_forecasts_that_constant(model: str) -> None:
    values = np.full(120, 7.5)
    config = ClassicalConfig(model=model, history=60, refit_every=10)  # type: ignore[arg-type]
    path, stats = online_point_forecasts(values, [60, 61, 90, 120], 1, 3, config)
    np.testing.assert_allclose(path, 7.5, rtol=1e-6)
    assert stats.failures == 0 and stats.missing == 0


@pytest.mark.parametrize("model", ["arima", "ets"])
def test_a_straight_line_is_continued(model: str) -> None:
    values = 2.0 + 0.5 * np.arange(200)
    config = ClassicalConfig(model=model, history=100, refit_every=50)  # type: ignore[arg-type]
    # Decision at 150 knows steps 0..149; lead 2, window 3: steps 152, 153, 154.
    path, stats = online_point_forecasts(values, [150], 2, 3, config)
    np.testing.assert_allclose(path[0], 2.0 + 0.5 * np.array([152, 153, 154]), rtol=2e-3)
    assert stats.fits == 1


def test_forecasts_read_only_the_past(load_trace: Callable[[str], Trace]) -> None:
    load = load_trace("fisher_containers")["container1"]["load"].to_numpy(np.float64)
    config = ClassicalConfig(model="arima", history=144, refit_every=72)
    taus = np.arange(300, 520, 3)
    before, _ = online_point_forecasts(load, taus, 1, 6, config)
    cut = int(taus[len(taus) // 2])
    future = load.copy()
    future[cut:] = future[cut:] * 10.0 + 5.0
    after, _ = online_point_forecasts(future, taus, 1, 6, config)
    earlier = taus <= cut
    np.testing.assert_array_equal(before[earlier], after[earlier])
    assert not np.array_equal(before[~earlier], after[~earlier])
    assert np.isfinite(before).all() and (before >= 0).all()


def test_the_model_is_refitted_every_refit_every_steps(load_trace: Callable[[str], Trace]) -> None:
    load = load_trace("fisher_containers")["container2"]["load"].to_numpy(np.float64)
    config = ClassicalConfig(model="ets", history=144, refit_every=50)
    taus = np.arange(200, 400)  # 200 decisions: fits at 200, 250, 300, 350
    _, stats = online_point_forecasts(load, taus, 1, 2, config)
    assert (stats.fits, stats.forwards) == (4, 196)
    # Decisions every 7 steps: fits at 200, then the first decision at least 50 steps later (256), 312, 368.
    _, sparse = online_point_forecasts(load, np.arange(200, 400, 7), 1, 2, config)
    assert sparse.fits == 4 and sparse.fits + sparse.forwards == len(range(200, 400, 7))


def test_gaps_are_interpolated_and_too_little_history_gives_no_forecast() -> None:
    line = 1.0 + 0.25 * np.arange(80)
    holed = line.copy()
    holed[60:64] = np.nan  # an interior hole: linear interpolation gives the line back
    config = ClassicalConfig(model="ets", history=40, refit_every=100)
    a, _ = online_point_forecasts(line, [70], 0, 2, config)
    b, stats = online_point_forecasts(holed, [70], 0, 2, config)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    assert stats.missing == 0
    # Fewer than min_history (16) known values, or a newest value more than max_stale (3) steps old: NaN.
    short, st = online_point_forecasts(line, [10], 0, 2, config)
    assert np.isnan(short).all() and st.missing == 1
    stale = line.copy()
    stale[66:70] = np.nan
    out, st = online_point_forecasts(stale, [70], 0, 2, config)
    assert np.isnan(out).all() and st.missing == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("model", ["arima", "ets"])
def test_a_history_no_model_fits_is_forecast_by_persistence_and_counted(model: str) -> None:
    # A step of 1e308 after thirty ones: statsforecast finds no model ("no model able to be fitted" for
    # ETS, "No suitable ARIMA model found"), so the last value is repeated and the failure counted.
    values = np.r_[np.ones(30), 1e308]
    config = ClassicalConfig(model=model, history=31, refit_every=10)  # type: ignore[arg-type]
    path, stats = online_point_forecasts(values, [31], 0, 2, config)
    assert stats.failures == 1 and (path == 1e308).all()


def test_several_indicators_and_bad_arguments() -> None:
    values = np.stack([np.full(60, 3.0), np.full(60, 9.0)], axis=1)
    path, stats = point_forecasts(values, [40, 50], 1, 2, ClassicalConfig(model="ets", history=30))
    assert path.shape == (2, 2, 2)
    np.testing.assert_allclose(path[..., 0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(path[..., 1], 9.0, rtol=1e-6)
    assert stats.fits == 2  # one per indicator: the second decision is within refit_every of the first
    with pytest.raises(ValueError, match="season_length: statsforecast's ETS takes seasons of at most 24"):
        ClassicalConfig(model="ets", season_length=144)
    with pytest.raises(ValueError, match="history"):
        ClassicalConfig(model="arima", history=8)
    with pytest.raises(ValueError, match="increasing"):
        online_point_forecasts(np.ones(50), [30, 20], 0, 1, ClassicalConfig(model="ets", history=20))
    assert math.isfinite(float(path.sum()))
