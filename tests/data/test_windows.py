"""Chronological splits and sliding windows: boundaries by hand, and no leakage (property-based)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony.data.clean import SeriesReport
from harmony.data.spec import IndicatorSpec, Kind
from harmony.data.trace import Trace
from harmony.data.windows import WindowDataset, WindowSpec, chronological_split, window_anchors

Loader = Callable[[str], Trace]
SPEC = IndicatorSpec("x", "u", 1, Kind.DEMAND, capacity_per_replica=1.0)


def ramp_trace(n: int, nan_at: tuple[int, ...] = ()) -> Trace:
    """A trace whose value is its own index, so a window's content tells where it came from."""
    idx = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC")
    vals = np.arange(n, dtype=np.float64)
    vals[list(nan_at)] = np.nan
    frame = pd.DataFrame({"x": vals}, index=idx)
    return Trace("ramp", pd.Timedelta("1min"), (SPEC,), {"s": frame}, {"s": SeriesReport()})


def test_window_layout_by_hand() -> None:
    trace = ramp_trace(20)
    split = chronological_split(trace, (0.5, 0.25, 0.25), by="rows")
    assert split.boundaries["s"] == (10, 15, 20)
    spec = WindowSpec(lookback=3, horizon=2, lead_time=1)
    train = WindowDataset(trace, split, "train", spec)
    # anchors t: t >= 2 and t + 1 + 2 <= 9 -> t in 2..6
    assert train.index[:, 1].tolist() == [2, 3, 4, 5, 6]
    past, future = train[0]
    assert past[:, 0].tolist() == [0, 1, 2] and future[:, 0].tolist() == [4, 5]
    test = WindowDataset(trace, split, "test", spec)
    # targets inside [15, 20): t + 2 >= 15 and t + 3 <= 19 -> t in 13..16; inputs may reach into val
    assert test.index[:, 1].tolist() == [13, 14, 15, 16]
    assert test.anchor(0) == ("s", trace["s"].index[13])


def test_windows_skip_missing_points() -> None:
    trace = ramp_trace(12, nan_at=(5,))
    vals = trace["s"].to_numpy()
    t = window_anchors(vals, WindowSpec(lookback=2, horizon=1), (0, 12))
    # any window whose input [t-1, t] or target t+1 touches index 5 is dropped: t = 4, 5, 6
    assert t.tolist() == [1, 2, 3, 7, 8, 9, 10]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=30, max_value=200),
    lookback=st.integers(1, 12),
    horizon=st.integers(1, 6),
    lead=st.integers(0, 4),
    stride=st.integers(1, 3),
    f_train=st.floats(0.3, 0.8),
)
def test_no_target_crosses_a_boundary(
    n: int, lookback: int, horizon: int, lead: int, stride: int, f_train: float
) -> None:
    trace = ramp_trace(n)
    f_val = (1 - f_train) / 2
    split = chronological_split(trace, (f_train, f_val, 1 - f_train - f_val), by="rows")
    spec = WindowSpec(lookback, horizon, lead, stride)
    a, b, _ = split.boundaries["s"]
    seen_targets: dict[str, set[int]] = {}
    for part, (lo, hi) in {"train": (0, a), "val": (a, b), "test": (b, n)}.items():
        ds = WindowDataset(trace, split, part, spec)  # type: ignore[arg-type]
        seen_targets[part] = set()
        for k in range(len(ds)):
            past, future = ds[k]
            assert past.shape == (lookback, 1) and future.shape == (horizon, 1)
            assert lo <= future.min() and future.max() < hi  # the ramp value is the point index
            assert past.max() < future.min() - lead  # the input ends lead+1 steps before the target
            if part == "train":
                assert past.max() < a  # training never sees validation or test points at all
            seen_targets[part] |= set(future[:, 0].astype(int).tolist())
    assert not (seen_targets["train"] & seen_targets["val"]) and not (
        seen_targets["val"] & seen_targets["test"]
    )


def test_time_split_is_common_to_all_series(load_trace: Loader) -> None:
    trace = load_trace("fisher_containers")
    split = chronological_split(trace, (0.7, 0.1, 0.2), by="time")
    starts = {trace[s].index[split.boundaries[s][1]] for s in trace.series_ids}
    assert len(starts) == 1  # the test part starts at the same instant in every container
    # containers 3, 4, 9, 10 start three days late, so they have fewer training points
    assert split.boundaries["container3"][0] < split.boundaries["container1"][0]
    rows = chronological_split(trace, by="rows")
    assert rows.boundaries["container1"] == (round(4464 * 0.7), round(4464 * 0.8), 4464)
    desc = split.describe(trace)
    assert list(desc.columns) == ["train", "val", "test"] and len(desc) == 10


def test_bad_split_arguments() -> None:
    trace = ramp_trace(10)
    with pytest.raises(ValueError, match="sum"):
        chronological_split(trace, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="lookback"):
        WindowSpec(lookback=0, horizon=1)
