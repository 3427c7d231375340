"""The paper-protocol benchmark's preprocessing: each container MinMax-scaled by its own training rows."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import minmax_lower_bounds, minmax_trace
from harmony.data.windows import chronological_split


def test_minmax_trace_maps_each_containers_training_rows_onto_0_1(load_trace) -> None:  # type: ignore[no-untyped-def]
    trace = load_trace("fisher_containers").select(series=["container1", "container8"])
    before = {sid: trace[sid].copy() for sid in trace.series_ids}
    split = chronological_split(trace, (0.7, 0.1, 0.2), by="rows")
    scaled = minmax_trace(trace, split)
    for sid in trace.series_ids:
        a = split.boundaries[sid][0]
        raw = trace[sid].to_numpy(np.float64)
        out = scaled[sid].to_numpy(np.float64)
        lo, hi = np.nanmin(raw[:a], axis=0), np.nanmax(raw[:a], axis=0)
        varying = hi > lo
        assert np.allclose(np.nanmin(out[:a], axis=0)[varying], 0.0)
        assert np.allclose(np.nanmax(out[:a], axis=0)[varying], 1.0)
        # A constant column (the memory limit) is shifted to 0, not divided by a zero range.
        assert np.allclose(out[:, ~varying][~np.isnan(raw[:, ~varying])], 0.0)
        # Rows after the training part use the training range: a hand-computed value of the test part.
        j = int(np.flatnonzero(varying)[0])
        r = len(raw) - 1
        assert out[r, j] == (raw[r, j] - lo[j]) / (hi[j] - lo[j])
        assert list(scaled[sid].columns) == list(trace[sid].columns)
        assert scaled[sid].index.equals(trace[sid].index)
        # The original trace is left as it was.
        assert trace[sid].equals(before[sid])


def test_minmax_lower_bounds_are_each_containers_image_of_zero(load_trace) -> None:  # type: ignore[no-untyped-def]
    trace = load_trace("fisher_containers").select(series=["container1", "container9"])
    split = chronological_split(trace, (0.7, 0.1, 0.2), by="rows")
    columns = ["load", "memory_active_file_bytes"]
    idx = [trace.indicator_names.index(c) for c in columns]
    bounds = {sid: b[idx] for sid, b in minmax_lower_bounds(trace, split).items()}
    scaled = minmax_trace(trace, split)
    for sid in trace.series_ids:
        a = split.boundaries[sid][0]
        raw = trace[sid][columns].to_numpy(np.float64)
        lo, hi = np.nanmin(raw[:a], axis=0), np.nanmax(raw[:a], axis=0)
        assert (lo >= 0).all()  # counts and bytes: never negative
        assert np.allclose(bounds[sid], -lo / (hi - lo))
        # No scaled value of the whole series lies below its container's bound, though some fall below 0
        # (container9's memory in its test part): the learned bound 0 would clip them.
        assert (scaled[sid][columns].to_numpy() >= bounds[sid] - 1e-12).all()
    below = scaled["container9"]["memory_active_file_bytes"].to_numpy()
    assert np.nanmin(below) < 0
    assert bounds["container1"][0] != bounds["container9"][0]
