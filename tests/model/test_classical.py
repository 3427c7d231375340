"""harmony.model.classical: statsforecast's AutoARIMA and AutoETS fitted online on the past only.

Closed-form cases on short arithmetic arrays (a constant, a straight line, a repeating pattern, a line with
holes), the past-only promise and the refit cadence on real Fisher containers, and the documented
fallbacks: no forecast, persistence, failures counted."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import harmony.model.classical as classical
from harmony.data.trace import Trace
from harmony.model.classical import (
    ClassicalConfig,
    online_point_forecasts,
    point_forecasts,
    prepare_history,
    refit_attempts,
)

MODELS = ["arima", "ets"]


# --- known answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_a_constant_history_forecasts_that_constant(model: str) -> None:
    values = np.full(120, 7.5)
    config = ClassicalConfig(model=model, history=60, refit_every=10)  # type: ignore[arg-type]
    path, stats = online_point_forecasts(values, [60, 61, 90, 120], 1, 3, config)
    np.testing.assert_allclose(path, 7.5, rtol=1e-6)
    assert (stats.fits, stats.forwards, stats.failures, stats.missing) == (3, 1, 0, 0)


@pytest.mark.parametrize("model", MODELS)
def test_a_straight_line_is_continued_by_a_fit_and_by_forward(model: str) -> None:
    values = 2.0 + 0.5 * np.arange(200)
    config = ClassicalConfig(model=model, history=100, refit_every=50)  # type: ignore[arg-type]
    # A decision at 150 knows steps 0..149; lead 2, window 3: steps 152, 153, 154. The one at 150 fits, the
    # later ones (within refit_every) forward the same model over the newer steps.
    taus = np.array([150, 151, 170, 199])
    path, stats = online_point_forecasts(values, taus, 2, 3, config)
    expected = 2.0 + 0.5 * (taus[:, None] + 2 + np.arange(3))
    np.testing.assert_allclose(path, expected, rtol=1e-6)
    assert (stats.fits, stats.forwards, stats.failures) == (1, 3, 0)


@pytest.mark.parametrize("season", [12, 30])
def test_a_seasonal_ets_is_forwarded_from_its_fit_window_start(season: int) -> None:
    # A noiseless repeating pattern, continued exactly between refits. Forwarding a window that starts
    # elsewhere than the fit window would mis-align the fitted seasonal states (off by up to ~1.7 here).
    # Season 30: statsforecast's ETS fits seasons longer than 24 steps.
    phase = 2 * np.pi * np.arange(season) / season
    values = np.tile(5.0 + np.sin(phase) + 0.5 * np.cos(2 * phase), 10)
    config = ClassicalConfig(model="ets", season_length=season, history=4 * season, refit_every=1000)
    taus = np.arange(4 * season, 4 * season + 25)
    path, stats = online_point_forecasts(values, taus, 1, 4, config)
    np.testing.assert_allclose(path, values[taus[:, None] + 1 + np.arange(4)], atol=1e-6)
    assert (stats.fits, stats.forwards, stats.failures) == (1, len(taus) - 1, 0)


# --- past only, cadence --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_forecasts_read_only_the_past(model: str, load_trace: Callable[[str], Trace]) -> None:
    load = load_trace("fisher_containers")["container1"]["load"].to_numpy(np.float64)
    config = ClassicalConfig(model=model, history=144, refit_every=72)  # type: ignore[arg-type]
    taus = np.arange(300, 520, 3)
    before, stats = online_point_forecasts(load, taus, 1, 6, config)
    cut = int(taus[len(taus) // 2])
    future = load.copy()
    future[cut:] *= 10.0
    after, _ = online_point_forecasts(future, taus, 1, 6, config)
    earlier = taus <= cut
    np.testing.assert_array_equal(before[earlier], after[earlier])
    assert not np.array_equal(before[~earlier], after[~earlier])  # the check can see a difference
    assert np.isfinite(before).all() and (before >= 0).all()
    assert stats.missing == 0 and stats.fits == refit_attempts(len(taus), 3, 72)


def test_the_model_is_refitted_every_refit_every_steps(load_trace: Callable[[str], Trace]) -> None:
    load = load_trace("fisher_containers")["container2"]["load"].to_numpy(np.float64)
    config = ClassicalConfig(model="ets", history=144, refit_every=50)
    taus = np.arange(200, 400)  # 200 decisions: fits at 200, 250, 300, 350 = ceil(200 / 50)
    _, stats = online_point_forecasts(load, taus, 1, 2, config)
    assert (stats.fits, stats.forwards) == (4, 196) == (refit_attempts(200, 1, 50), 200 - 4)
    # Decisions every 7 steps: fits at 200, then the first decision at least 50 steps later (256), 312, 368:
    # one every ceil(50 / 7) = 8 decisions.
    sparse_taus = np.arange(200, 400, 7)
    _, sparse = online_point_forecasts(load, sparse_taus, 1, 2, config)
    assert sparse.fits == 4 == refit_attempts(len(sparse_taus), 7, 50)
    assert sparse.fits + sparse.forwards == len(sparse_taus) and sparse.failures == 0


# --- gaps ----------------------------------------------------------------------------------------------------
def test_prepare_history_drops_leading_gaps_and_interpolates_interior_ones() -> None:
    nan = np.nan
    past = np.array([nan, nan, 1.0, 2.0, nan, nan, 5.0, 6.0, nan])
    got = prepare_history(past, min_history=4, max_stale=1)
    assert got.y is not None and (got.start, got.lag, got.skip) == (2, 1, None)
    np.testing.assert_array_equal(got.y, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert prepare_history(past, min_history=5, max_stale=1).skip == "too_few_points"  # 4 known values
    assert prepare_history(past, min_history=4, max_stale=0).skip == "stale"
    assert prepare_history(np.full(5, nan), min_history=1, max_stale=9).skip == "too_few_points"


def test_gaps_are_interpolated_and_too_little_history_gives_no_forecast() -> None:
    line = 1.0 + 0.25 * np.arange(80)
    holed = line.copy()
    holed[60:64] = np.nan  # an interior hole: linear interpolation gives the line back
    config = ClassicalConfig(model="ets", history=40, refit_every=100)
    a, _ = online_point_forecasts(line, [70], 0, 2, config)
    b, stats = online_point_forecasts(holed, [70], 0, 2, config)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    np.testing.assert_allclose(b[0], line[70:72], rtol=1e-6)
    assert stats.missing == 0
    # Fewer than min_history (16) known values, or a newest value more than max_stale (3) steps old: NaN.
    short, st = online_point_forecasts(line, [10], 0, 2, config)
    assert np.isnan(short).all() and (st.missing, st.stale, st.fits) == (1, 0, 0)
    stale = line.copy()
    stale[66:70] = np.nan
    out, st = online_point_forecasts(stale, [70], 0, 2, config)
    assert np.isnan(out).all() and (st.missing, st.stale, st.fits) == (1, 1, 0)


@pytest.mark.parametrize("model", MODELS)
def test_a_missing_newest_value_lengthens_the_horizon(model: str) -> None:
    # Steps 68 and 69 unknown (<= max_stale): the series ends at 67, and the forecast for the decision at 70
    # (lead 1, window 2) is still of steps 71 and 72, two steps further from the last known one.
    line = 1.0 + 0.25 * np.arange(100)
    holed = line.copy()
    holed[68:70] = np.nan
    config = ClassicalConfig(model=model, history=60, refit_every=5)  # type: ignore[arg-type]
    path, stats = online_point_forecasts(holed, [70, 71], 1, 2, config)
    np.testing.assert_allclose(path, [line[71:73], line[72:74]], rtol=1e-6)
    assert (stats.fits, stats.forwards, stats.missing) == (1, 1, 0)


# --- failures and fallbacks ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("model", MODELS)
def test_a_history_no_model_fits_is_forecast_by_persistence_and_counted(model: str) -> None:
    # A step of 1e308 after thirty ones: statsforecast finds no model ("no model able to be fitted" for
    # ETS, "No suitable ARIMA model found"), so the last value is repeated and the failure counted.
    values = np.r_[np.ones(30), 1e308]
    config = ClassicalConfig(model=model, history=31, refit_every=10)  # type: ignore[arg-type]
    path, stats = online_point_forecasts(values, [31], 0, 2, config)
    assert (path == 1e308).all()
    assert (stats.fits, stats.failures, stats.fit_failures, stats.persistence) == (1, 1, 1, 1)
    assert len(stats.errors) == 1 and stats.errors[0].startswith("fit at step 31: ")


def test_a_short_constant_history_that_ets_rejects_is_forecast_by_persistence() -> None:
    # statsforecast 2.1's AutoETS raises KeyError('fitted') on a constant series of 3 values or fewer.
    # The refit waits refit_every steps: the decisions at 4 and 5 are persistence too, without new attempts;
    # the one at 6 refits on 6 constant values, which the library models.
    values = np.full(10, 4.0)
    config = ClassicalConfig(model="ets", history=10, refit_every=3, min_history=3)
    path, stats = online_point_forecasts(values, [3, 4, 5, 6], 0, 2, config)
    np.testing.assert_allclose(path, 4.0, rtol=1e-9)
    assert (stats.fits, stats.fit_failures, stats.persistence, stats.forwards) == (2, 1, 3, 0)
    assert "KeyError" in stats.errors[0]


def test_a_failed_refit_keeps_the_previous_model(monkeypatch: pytest.MonkeyPatch) -> None:
    real = classical._fit_predict
    calls = {"n": 0}

    def second_fit_fails(config: ClassicalConfig, y: Any, h: int) -> tuple[Any, Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("No suitable ARIMA model found")
        return real(config, y, h)

    monkeypatch.setattr(classical, "_fit_predict", second_fit_fails)
    line = 2.0 + 0.5 * np.arange(120)
    config = ClassicalConfig(model="ets", history=50, refit_every=10)
    taus = np.arange(60, 75)  # attempts at 60 (fits), 70 (fails: the model of 60 forwards)
    path, stats = online_point_forecasts(line, taus, 0, 2, config)
    np.testing.assert_allclose(path, 2.0 + 0.5 * (taus[:, None] + np.arange(2)), rtol=1e-6)
    assert (stats.fits, stats.fit_failures, stats.forwards, stats.persistence) == (2, 1, 14, 0)
    assert stats.errors == ("fit at step 70: ValueError: No suitable ARIMA model found",)


def test_an_error_that_is_a_bug_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(config: ClassicalConfig, y: Any, h: int) -> tuple[Any, Any]:
        raise TypeError("fit() got an unexpected keyword argument")

    monkeypatch.setattr(classical, "_fit_predict", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):
        online_point_forecasts(np.ones(40), [30], 0, 1, ClassicalConfig(model="ets", history=30))


def test_without_statsforecast_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing the module needs no statsforecast ...
    blocked = "import sys; sys.modules['statsforecast'] = None; import harmony.model.classical"
    subprocess.run([sys.executable, "-c", blocked], check=True)
    # ... a forecast says how to get it.
    monkeypatch.setitem(sys.modules, "statsforecast", None)
    monkeypatch.setitem(sys.modules, "statsforecast.models", None)
    with pytest.raises(ImportError, match=r"pip install 'harmony-autoscaler\[baselines\]'"):
        online_point_forecasts(np.ones(40), [30], 0, 1, ClassicalConfig(model="arima", history=30))


# --- several indicators, configuration, arguments ---------------------------------------------------------
def test_several_indicators_are_forecast_one_model_each() -> None:
    values = np.stack([np.full(60, 3.0), np.full(60, 9.0)], axis=1)
    path, stats = point_forecasts(values, [40, 50], 1, 2, ClassicalConfig(model="ets", history=30))
    assert path.shape == (2, 2, 2)
    np.testing.assert_allclose(path[..., 0], 3.0, rtol=1e-6)
    np.testing.assert_allclose(path[..., 1], 9.0, rtol=1e-6)
    assert (stats.fits, stats.forwards) == (2, 2)  # one fit per indicator, then a forward each
    assert math.isfinite(float(path.sum()))


def test_a_negative_forecast_is_clipped_at_zero() -> None:
    falling = 30.0 - 1.0 * np.arange(40)  # the line crosses 0 at step 30
    path, _ = online_point_forecasts(falling[:28], [28], 0, 4, ClassicalConfig(model="ets", history=28))
    np.testing.assert_allclose(path[0], [2.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_the_configuration_is_checked() -> None:
    assert ClassicalConfig(model="ets").min_history == 16
    assert ClassicalConfig(model="ets", season_length=144).min_history == 288  # two seasons
    with pytest.raises(ValueError, match=r"ClassicalConfig.season_length must be <= 24 for model='arima'"):
        ClassicalConfig(model="arima", season_length=144)
    with pytest.raises(ValueError, match=r"ClassicalConfig.season_length must be >= 1"):
        ClassicalConfig(model="ets", season_length=0)
    with pytest.raises(ValueError, match=r"ClassicalConfig.min_history must be >= 2 x season_length = 48"):
        ClassicalConfig(model="ets", season_length=24, min_history=30)
    with pytest.raises(ValueError, match=r"ClassicalConfig.history \(8\) must be >= min_history \(16\)"):
        ClassicalConfig(model="arima", history=8)
    with pytest.raises(ValueError, match=r"ClassicalConfig.model must be 'arima' or 'ets'"):
        ClassicalConfig(model="prophet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ClassicalConfig.refit_every must be >= 1"):
        ClassicalConfig(model="ets", refit_every=0)
    with pytest.raises(ValueError, match=r"ClassicalConfig.max_stale must be an integer"):
        ClassicalConfig(model="ets", max_stale=1.5)  # type: ignore[arg-type]


def test_bad_arguments_are_refused() -> None:
    config = ClassicalConfig(model="ets", history=20)
    with pytest.raises(ValueError, match="strictly increasing"):
        online_point_forecasts(np.ones(50), [30, 20], 0, 1, config)
    with pytest.raises(ValueError, match=r"decisions must lie in 0..50"):
        online_point_forecasts(np.ones(50), [30, 51], 0, 1, config)
    with pytest.raises(ValueError, match=r"\+-inf"):
        online_point_forecasts(np.r_[np.ones(40), np.inf], [30], 0, 1, config)
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        online_point_forecasts(np.ones(50), [30], 0, 0, config)
    with pytest.raises(ValueError, match="first_step must be an integer >= 0"):
        online_point_forecasts(np.ones(50), [30], -1, 1, config)
    with pytest.raises(ValueError, match=r"values must be \[steps, indicators\]"):
        point_forecasts(np.ones(50), [30], 0, 1, config)
