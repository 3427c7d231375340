"""Chronological train/validation/test splits and sliding windows, with no leakage across a boundary.

A window is anchored at a decision step t (the last observed point). Its input is the `lookback` points
t-lookback+1 .. t; its target is the `horizon` points t+lead_time+1 .. t+lead_time+horizon (lead_time = 0 is
the next step; a lead time covers e.g. a replica's cold start). A window belongs to a split part only when
its whole target lies inside that part; its input may reach back into earlier parts, because at decision
time that history is known. No window of a part ever sees a target point of a later part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from harmony.data.trace import Trace

Part = Literal["train", "val", "test"]
PARTS: tuple[Part, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Per series, the point indices where validation and test begin: train = [0, a), val = [a, b),
    test = [b, n)."""

    boundaries: dict[str, tuple[int, int, int]]  # series -> (a, b, n)
    fractions: tuple[float, float, float]
    by: Literal["time", "rows"]

    def part_range(self, series: str, part: Part) -> tuple[int, int]:
        a, b, n = self.boundaries[series]
        return {"train": (0, a), "val": (a, b), "test": (b, n)}[part]

    def describe(self, trace: Trace) -> pd.DataFrame:
        rows = []
        for sid, (a, b, n) in self.boundaries.items():
            idx = trace[sid].index
            rows.append(
                {
                    "series": sid,
                    "train": f"{a} points until {idx[a - 1] if a else '-'}",
                    "val": f"{b - a} points from {idx[a] if b > a else '-'}",
                    "test": f"{n - b} points from {idx[b] if n > b else '-'}",
                }
            )
        return pd.DataFrame(rows).set_index("series")


def chronological_split(
    trace: Trace,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    *,
    by: Literal["time", "rows"] = "time",
) -> Split:
    """Split every series at the same instants (`by="time"`, over the trace's whole span: no series' future
    informs another's past) or at the same fractions of each series' own points (`by="rows"`, the
    HARMONY example code's protocol)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if by not in ("time", "rows"):
        raise ValueError(f"by must be 'time' or 'rows', got {by!r}")
    out: dict[str, tuple[int, int, int]] = {}
    if by == "time":
        total = int((trace.end - trace.start) / trace.frequency) + 1
        t_a = trace.start + round(total * fractions[0]) * trace.frequency
        t_b = trace.start + round(total * (fractions[0] + fractions[1])) * trace.frequency
        for sid, frame in trace.series.items():
            idx = frame.index
            out[sid] = (int(idx.searchsorted(t_a)), int(idx.searchsorted(t_b)), len(idx))
    else:
        for sid, frame in trace.series.items():
            n = len(frame)
            a = round(n * fractions[0])
            b = round(n * (fractions[0] + fractions[1]))
            out[sid] = (a, b, n)
    return Split(out, (float(fractions[0]), float(fractions[1]), float(fractions[2])), by)


@dataclass(frozen=True)
class WindowSpec:
    lookback: int
    horizon: int
    lead_time: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.horizon < 1 or self.lead_time < 0 or self.stride < 1:
            raise ValueError(
                "need lookback >= 1, horizon >= 1, lead_time >= 0, stride >= 1; got "
                f"{self.lookback}, {self.horizon}, {self.lead_time}, {self.stride}"
            )

    @property
    def span(self) -> int:
        return self.lookback + self.lead_time + self.horizon


def window_anchors(values: np.ndarray, spec: WindowSpec, part: tuple[int, int]) -> np.ndarray:
    """Decision steps t whose target lies in [lo, hi) and whose input and target hold no NaN."""
    lo, hi = part
    n = values.shape[0]
    first = max(spec.lookback - 1, lo - spec.lead_time - 1)
    last = min(hi, n) - spec.lead_time - spec.horizon - 1
    if last < first:
        return np.zeros(0, dtype=np.int64)
    t = np.arange(first, last + 1, spec.stride, dtype=np.int64)
    bad = np.isnan(values).any(axis=1).astype(np.int64)
    csum = np.concatenate(([0], np.cumsum(bad)))
    # Input [t-lookback+1, t] and target [t+lead+1, t+lead+horizon]; the lead gap itself may be missing.
    in_bad = csum[t + 1] - csum[t + 1 - spec.lookback]
    out_bad = csum[t + spec.lead_time + spec.horizon + 1] - csum[t + spec.lead_time + 1]
    keep: np.ndarray = t[(in_bad == 0) & (out_bad == 0)]
    return keep


class WindowDataset:
    """Sliding windows of one split part over every series of a trace.

    `ds[k]` -> (past [lookback, N], future [horizon, N]) float32 arrays; `ds.anchor(k)` -> (series, time of
    the decision step).
    """

    def __init__(
        self,
        trace: Trace,
        split: Split,
        part: Part,
        spec: WindowSpec,
        *,
        indicators: list[str] | None = None,
    ) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        self.trace = trace
        self.spec = spec
        self.part = part
        self.indicators = indicators or trace.indicator_names
        self.series_ids: list[str] = []
        self._values: list[np.ndarray] = []
        index_parts = []
        for k, sid in enumerate(trace.series_ids):
            vals = trace[sid][self.indicators].to_numpy(dtype=np.float32)
            t = window_anchors(vals, spec, split.part_range(sid, part))
            self.series_ids.append(sid)
            self._values.append(vals)
            index_parts.append(np.column_stack([np.full(t.size, k, dtype=np.int64), t]))
        self.index = np.concatenate(index_parts) if index_parts else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, t = (int(x) for x in self.index[k])
        vals = self._values[s]
        lb, lead, h = self.spec.lookback, self.spec.lead_time, self.spec.horizon
        return vals[t - lb + 1 : t + 1], vals[t + lead + 1 : t + lead + h + 1]

    def anchor(self, k: int) -> tuple[str, pd.Timestamp]:
        s, t = (int(x) for x in self.index[k])
        sid = self.series_ids[s]
        return sid, self.trace[sid].index[t]


# When a lookback with gaps can still be forecast from, in the backtest and (as its defaults) in the operator:
# each indicator may miss up to a fifth of the steps, filled by linear interpolation (held flat beyond its
# first/last known value), and its newest known value must be at most 3 steps old.
MAX_MISSING_FRACTION = 0.2
STALE_STEPS = 3


def usable_lookback(window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32] | None:
    """`window` [steps, indicators] with its gaps filled, or None when it is not fit to forecast from (too
    many gaps, stale, or an indicator without any value)."""
    ok = np.isfinite(window)
    if ok.all():
        return window
    steps = window.shape[0]
    out = window.copy()
    grid = np.arange(steps, dtype=np.float64)
    for k in range(window.shape[1]):
        known = np.flatnonzero(ok[:, k])
        if known.size == 0 or steps - known.size > MAX_MISSING_FRACTION * steps:
            return None
        if steps - 1 - known[-1] > STALE_STEPS:
            return None
        if known.size < steps:
            out[:, k] = np.interp(grid, known.astype(np.float64), window[known, k].astype(np.float64))
    return out
