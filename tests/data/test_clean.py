"""The cleaning rule against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harmony.data.clean import bin_events, regularize
from harmony.data.errors import DataError
from harmony.data.loaders.alibaba import _busy
from harmony.data.spec import CleaningRules, IndicatorSpec, Kind, Measure, OutlierAction

S = 1_000_000_000
GAUGE = IndicatorSpec("g", "u", 1, Kind.DEMAND, capacity_per_replica=1.0)
COUNTER = IndicatorSpec("c", "u/s", 2, Kind.RESOURCE, measure=Measure.COUNTER)
T0 = 1_700_000_000  # a multiple of 10 s and of 60 s


def ts(*seconds: float) -> np.ndarray:
    return (np.array(seconds, dtype=np.float64) * S).astype(np.int64)


def test_counter_to_rate_by_hand() -> None:
    # counter 100, 160, 280 at 60 s steps -> rates NaN (first), 1.0, 2.0 per second
    frame, rep = regularize(
        ts(T0, T0 + 60, T0 + 120),
        np.array([[100.0], [160.0], [280.0]]),
        [COUNTER],
        pd.Timedelta("60s"),
        CleaningRules(),
    )
    assert np.isnan(frame["c"].iloc[0])
    assert frame["c"].iloc[1:].tolist() == [1.0, 2.0]
    assert rep.counter_resets == 0


def test_counter_reset_is_a_missing_step_then_interpolated() -> None:
    # 0, 60, 120, 30 (reset), 90: rates -, 1, 1, ?, 1 -> the reset step is filled between 1 and 1
    frame, rep = regularize(
        ts(*(T0 + 60 * k for k in range(5))),
        np.array([[0.0], [60.0], [120.0], [30.0], [90.0]]),
        [COUNTER],
        pd.Timedelta("60s"),
        CleaningRules(max_fill_steps=1),
    )
    assert rep.counter_resets == 1
    assert rep.filled_points == 1
    assert frame["c"].iloc[1:].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_counter_rate_over_a_gap_uses_the_elapsed_time() -> None:
    # samples at 0 and 180 s on a 60 s grid: 360 units in 180 s = 2/s; two grid points between are a gap
    frame, rep = regularize(
        ts(T0, T0 + 60, T0 + 240),
        np.array([[0.0], [60.0], [420.0]]),
        [COUNTER],
        pd.Timedelta("60s"),
        CleaningRules(max_fill_steps=2),
    )
    assert len(frame) == 5
    assert rep.gap_points == 2
    assert frame["c"].iloc[4] == pytest.approx(360.0 / 180.0)
    # the gap between the rate 1.0 (t=60) and 2.0 (t=240) is interpolated linearly
    assert frame["c"].iloc[1:].tolist() == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])


def test_snap_duplicates_and_order() -> None:
    # 10 s grid. 12 s -> 10, 9 s -> 10 (duplicate: mean), 31 s -> 30, 20 s given last (out of order)
    frame, rep = regularize(
        ts(T0 + 12, T0 + 9, T0 + 31, T0 + 20),
        np.array([[1.0], [3.0], [7.0], [5.0]]),
        [GAUGE],
        pd.Timedelta("10s"),
        CleaningRules(),
    )
    assert frame.index[0] == pd.Timestamp((T0 + 10) * S, tz="UTC")
    assert frame["g"].tolist() == [2.0, 5.0, 7.0]
    assert rep.out_of_order == 2  # 9 after 12, 20 after 31
    assert rep.off_grid == 3
    assert rep.duplicates_merged == 1
    assert str(frame.index.tz) == "UTC" and frame.index.freq == pd.Timedelta("10s")


def test_short_gaps_filled_long_gaps_kept() -> None:
    t = [0, 10, 30, 40, 100, 110]  # gap of 1 point (20) and of 5 points (50..90)
    frame, rep = regularize(
        ts(*(T0 + x for x in t)),
        np.array([[0.0], [1.0], [3.0], [4.0], [10.0], [11.0]]),
        [GAUGE],
        pd.Timedelta("10s"),
        CleaningRules(max_fill_steps=3),
    )
    assert frame["g"].iloc[2] == 2.0
    assert frame["g"].iloc[5:10].isna().all()
    assert (rep.gap_points, rep.filled_points, rep.unfilled_points) == (6, 1, 5)


def test_outliers_counted_or_clipped() -> None:
    base = [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 10.0, 11.0, 9.0, 10.0]
    vals = np.array([[v] for v in [*base, 1000.0]])
    t = ts(*(T0 + 10 * k for k in range(len(vals))))
    kept, rep = regularize(t, vals, [GAUGE], pd.Timedelta("10s"), CleaningRules(outlier_mads=10))
    assert rep.outliers == 1 and rep.outliers_clipped == 0
    assert kept["g"].iloc[-1] == 1000.0
    clipped, rep = regularize(
        t,
        vals,
        [GAUGE],
        pd.Timedelta("10s"),
        CleaningRules(outlier_mads=10, outlier_action=OutlierAction.CLIP),
    )
    med = 10.0
    mad = 1.4826 * np.median(np.abs(np.array([*base, 1000.0]) - med))
    assert rep.outliers_clipped == 1
    assert clipped["g"].iloc[-1] == pytest.approx(med + 10 * mad)


def test_scale_converts_units() -> None:
    ns_counter = IndicatorSpec("cpu", "cores", 2, Kind.RESOURCE, measure=Measure.COUNTER, scale=1e-9)
    frame, _ = regularize(
        ts(T0, T0 + 600), np.array([[0.0], [1.2e12]]), [ns_counter], pd.Timedelta("600s"), CleaningRules()
    )
    assert frame["cpu"].iloc[1] == pytest.approx(2.0)  # 1.2e12 ns over 600 s = 2 cores


def test_negative_counter_and_infinite_values_name_the_row() -> None:
    with pytest.raises(DataError, match=r"f\.csv, row 3, column 'c'.*negative"):
        regularize(
            ts(T0, T0 + 60),
            np.array([[1.0], [-1.0]]),
            [COUNTER],
            pd.Timedelta("60s"),
            CleaningRules(),
            source="f.csv",
        )
    with pytest.raises(DataError, match=r"row 7, column 'g'.*infinite"):
        regularize(
            ts(T0, T0 + 60),
            np.array([[1.0], [np.inf]]),
            [GAUGE],
            pd.Timedelta("60s"),
            CleaningRules(),
            row_numbers=np.array([4, 7]),
        )


def test_bin_events_rates_and_empty_bins() -> None:
    # events at 0.5, 1.5, 1.7 and 4.2 s in 1 s bins: counts 1, 2, 0, 0, 1 per second
    index, out = bin_events(ts(T0 + 0.5, T0 + 1.5, T0 + 1.7, T0 + 4.2), {"n": np.ones(4)}, pd.Timedelta("1s"))
    assert out["n"].tolist() == [1.0, 2.0, 0.0, 0.0, 1.0]
    assert index[0] == pd.Timestamp(T0 * S, tz="UTC") and len(index) == 5
    _, out = bin_events(ts(T0 + 0.5, T0 + 1.5), {"tok": np.array([10.0, 30.0])}, pd.Timedelta("2s"))
    assert out["tok"].tolist() == [20.0]  # 40 tokens in a 2 s bin


def test_busy_spreads_execution_over_bins() -> None:
    # one request from 30 s lasting 90 s over 60 s bins: 0.5 busy in bin 0, 1.0 in bin 1; a second request
    # from 70 s lasting 20 s adds 1/3 to bin 1
    index = pd.DatetimeIndex(pd.to_datetime(np.array([0, 60, 120]) * S + T0 * S, utc=True))
    busy = _busy(ts(T0 + 30, T0 + 70), np.array([90.0, 20.0]), index, pd.Timedelta("60s"))
    assert busy.tolist() == pytest.approx([0.5, 1.0 + 1 / 3, 0.0])


def test_counter_rebase_upwards_is_a_missing_step() -> None:
    # increments of 60 per 60 s (rate 1), then a jump of 60,000 (a re-base), then rate 1 again
    v = [0.0, 60.0, 120.0, 180.0, 60_180.0, 60_240.0, 60_300.0]
    frame, rep = regularize(
        ts(*(T0 + 60 * k for k in range(len(v)))),
        np.array([[x] for x in v]),
        [COUNTER],
        pd.Timedelta("60s"),
        CleaningRules(counter_jump_factor=50),
    )
    assert (rep.counter_resets, rep.counter_jumps, rep.filled_points) == (0, 1, 1)
    assert frame["c"].iloc[1:].tolist() == [1.0] * 6
