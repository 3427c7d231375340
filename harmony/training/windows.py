"""The evaluation windows of one part of a split: what the test scoring of a training run and the side-by-side
comparison of models both draw their forecasts on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmony.data.trace import Trace
from harmony.data.windows import Part, Split, WindowDataset, WindowSpec
from harmony.model.base import ForecastSpec


@dataclass
class EvalWindows:
    """Per series: histories [W, L, N], last times [W] (ns), targets [W, H, T], training history [n, T],
    and the anchors (position of each window's last observed point in the series)."""

    series: list[str]
    history: dict[str, np.ndarray]
    last_time: dict[str, np.ndarray]
    actual: dict[str, np.ndarray]
    train: dict[str, np.ndarray]
    anchors: dict[str, np.ndarray]


def collect_windows(
    trace: Trace, split: Split, spec: ForecastSpec, max_windows: int, part: Part = "test"
) -> EvalWindows:
    """The evaluation windows of `part` ("test", or "val" to tune on), evenly subsampled per series."""
    ws = WindowSpec(lookback=spec.lookback, horizon=spec.horizon, lead_time=spec.lead_time)
    ds = WindowDataset(trace, split, part, ws, indicators=list(spec.indicators))
    tidx = spec.target_index
    out = EvalWindows([], {}, {}, {}, {}, {})
    for k, sid in enumerate(ds.series_ids):
        rows = np.flatnonzero(ds.index[:, 0] == k)
        if rows.size == 0:
            continue
        if rows.size > max_windows:
            rows = rows[np.linspace(0, rows.size - 1, max_windows).astype(np.int64)]
        pairs = [ds[int(r)] for r in rows]
        times = pd.DatetimeIndex(trace[sid].index).as_unit("ns").asi8
        a = split.boundaries[sid][0]
        out.series.append(sid)
        out.history[sid] = np.stack([p for p, _ in pairs])
        out.actual[sid] = np.stack([f[:, tidx] for _, f in pairs])
        out.anchors[sid] = ds.index[rows, 1]
        out.last_time[sid] = times[out.anchors[sid]]
        out.train[sid] = trace[sid][list(spec.targets)].to_numpy(np.float64)[:a]
    return out
