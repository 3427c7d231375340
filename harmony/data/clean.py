"""Turn raw samples of one series into a regular UTC grid, by the documented cleaning rule.

The rule (also in docs/data.md), applied in this order:
1. rows are sorted by time (stable); out-of-order rows are counted;
2. each timestamp goes to a point of a grid of step `freq` aligned to the Unix epoch: the nearest one
   (`rules.binning` nearest), or the one that starts the step it falls in (left: bins [t, t + step));
3. rows on the same grid point are merged: gauges by their mean, counters keep the last value;
4. counters become per-second rates: (v_k - v_{k-1}) / (t_k - t_{k-1}); when a counter decreases it was
   reset (or re-based), and the rate of that one step is unknown: it is left missing for step 5 to fill.
   (Prometheus' rate() instead counts the new value as the increase, which is right after a restart from 0
   but turns a counter re-based to a large value, as in real exported traces, into a huge false spike).
   Likewise a step that rises more than `counter_jump_factor` times the series' median increase is a
   re-base upwards, not work done: its rate is left missing too;
5. the series is laid on the full grid from its first to its last point; runs of at most `max_fill_steps`
   missing points are filled by linear interpolation, longer runs stay NaN;
6. points further than `outlier_mads` scaled MADs from the median are counted, and clipped if asked;
7. values are multiplied by each indicator's `scale` into its unit.
Every count is kept in a `SeriesReport`, so nothing is changed silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from harmony.data.errors import DataError
from harmony.data.spec import Binning, CleaningRules, IndicatorSpec, OutlierAction

_NS = 1_000_000_000


@dataclass
class SeriesReport:
    """How much cleaning changed one series."""

    rows_in: int = 0
    points_out: int = 0
    out_of_order: int = 0
    off_grid: int = 0
    duplicates_merged: int = 0
    missing_cells: int = 0
    gap_points: int = 0
    filled_points: int = 0
    unfilled_points: int = 0
    counter_resets: int = 0
    counter_jumps: int = 0
    outliers: int = 0
    outliers_clipped: int = 0
    per_indicator: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, other: SeriesReport) -> None:
        for f in fields(self):
            if f.name == "per_indicator":
                for ind, counts in other.per_indicator.items():
                    mine = self.per_indicator.setdefault(ind, {})
                    for k, v in counts.items():
                        mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_indicator"}


def _fill_short_runs(col: np.ndarray, max_fill: int) -> tuple[np.ndarray, int, int]:
    """Linear interpolation over NaN runs of length <= max_fill strictly inside the series."""
    isnan = np.isnan(col)
    n_missing = int(isnan.sum())
    if n_missing == 0:
        return col, 0, 0
    idx = np.flatnonzero(~isnan)
    if idx.size == 0:
        return col, 0, n_missing
    # Run boundaries of NaNs.
    d = np.diff(np.concatenate(([0], isnan.view(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)  # exclusive
    lengths = ends - starts
    fillable = np.zeros_like(isnan)
    for s, e, length in zip(starts, ends, lengths, strict=True):
        if length <= max_fill and s > 0 and e < col.size:
            fillable[s:e] = True
    out = col.copy()
    if fillable.any():
        pos = np.flatnonzero(fillable)
        out[pos] = np.interp(pos, idx, col[idx])
    filled = int(fillable.sum())
    return out, filled, n_missing - filled


def regularize(
    timestamps_ns: np.ndarray,
    values: np.ndarray,
    specs: Sequence[IndicatorSpec],
    freq: pd.Timedelta,
    rules: CleaningRules,
    *,
    source: str = "",
    row_numbers: np.ndarray | None = None,
) -> tuple[pd.DataFrame, SeriesReport]:
    """Clean one series. `timestamps_ns`: int64 UTC nanoseconds; `values`: [rows, indicators] float.

    `row_numbers[k]` is the file row of array row k, shown in errors (default: k + 2, after a header).
    Raises DataError (naming `source`, the row and the column) for non-finite timestamps, infinite values
    and negative counters.
    """
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    vals = np.array(values, dtype=np.float64, copy=True)
    if vals.ndim != 2 or vals.shape[0] != ts.shape[0] or vals.shape[1] != len(specs):
        raise ValueError(f"values must be [rows={ts.shape[0]}, {len(specs)}], got {vals.shape}")
    report = SeriesReport(rows_in=int(ts.size))
    names = [s.name for s in specs]

    def row_of(k: int) -> int:
        return int(row_numbers[k]) if row_numbers is not None else k + 2

    if ts.size == 0:
        empty = pd.DataFrame(columns=names, index=pd.DatetimeIndex([], tz="UTC"), dtype=np.float64)
        return empty, report

    inf_rows, inf_cols = np.nonzero(np.isinf(vals))
    if inf_rows.size:
        r, c = int(inf_rows[0]), int(inf_cols[0])
        raise DataError(
            f"value {vals[r, c]} is infinite; expected a finite number ({inf_rows.size} infinite cell(s) "
            "in all). Export the missing values as empty cells or NaN instead.",
            path=source or None,
            row=row_of(r),
            column=specs[c].source_column,
        )
    for j, spec in enumerate(specs):
        if spec.is_counter:
            neg = np.flatnonzero(vals[:, j] < 0)
            if neg.size:
                r = int(neg[0])
                raise DataError(
                    f"counter value {vals[r, j]} is negative; a counter is a cumulative total >= 0 "
                    f"({neg.size} negative value(s) in all). If it is not cumulative, declare it a gauge.",
                    path=source or None,
                    row=row_of(r),
                    column=spec.source_column,
                )

    # 1. sort
    descents = int(np.count_nonzero(np.diff(ts) < 0)) if ts.size > 1 else 0
    if descents:
        # Counted as rows earlier than the row before them.
        order = np.argsort(ts, kind="stable")
        report.out_of_order = descents
        ts, vals = ts[order], vals[order]

    # 2. onto the epoch-aligned grid: the nearest point, or the start of the step the row falls in
    step = int(freq.value)
    shift = 0 if rules.binning is Binning.LEFT else step // 2
    slots = np.floor_divide(ts + shift, step)
    report.off_grid = int(np.count_nonzero(slots * step != ts))

    # 3. merge rows on the same grid point
    uniq, first, counts = np.unique(slots, return_index=True, return_counts=True)
    report.duplicates_merged = int(ts.size - uniq.size)
    missing_raw = np.isnan(vals)
    report.missing_cells = int(missing_raw.sum())
    if uniq.size != slots.size:
        merged = np.empty((uniq.size, vals.shape[1]))
        last = first + counts - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            sums = np.add.reduceat(np.where(missing_raw, 0.0, vals), first, axis=0)
            n_ok = np.add.reduceat((~missing_raw).astype(np.int64), first, axis=0)
            means = sums / np.where(n_ok == 0, np.nan, n_ok)
        for j, spec in enumerate(specs):
            merged[:, j] = vals[last, j] if spec.is_counter else means[:, j]
        vals = merged
    slots = uniq

    # 4. counters -> per-second rates
    for j, spec in enumerate(specs):
        if not spec.is_counter:
            continue
        col = vals[:, j]
        ok = np.flatnonzero(~np.isnan(col))
        rate = np.full(col.shape, np.nan)
        resets = jumps = 0
        if ok.size > 1:
            v = col[ok]
            dv = np.diff(v)
            dt = np.diff(slots[ok]).astype(np.float64) * (step / _NS)
            per_s: np.ndarray = dv / dt
            reset: np.ndarray = dv < 0
            rising = per_s[per_s > 0]
            limit = rules.counter_jump_factor * float(np.median(rising)) if rising.size else np.inf
            jump: np.ndarray = np.greater(per_s, limit)
            resets, jumps = int(reset.sum()), int(jump.sum())
            rate[ok[1:]] = np.where(reset | jump, np.nan, per_s)
        vals[:, j] = rate
        report.counter_resets += resets
        report.counter_jumps += jumps
        report.per_indicator.setdefault(spec.name, {}).update(counter_resets=resets, counter_jumps=jumps)

    # 5. full grid, fill short gaps
    n_points = int(slots[-1] - slots[0] + 1)
    grid = np.full((n_points, vals.shape[1]), np.nan)
    grid[slots - slots[0]] = vals
    report.gap_points = int(n_points - slots.size)
    for j, spec in enumerate(specs):
        col, filled, unfilled = _fill_short_runs(grid[:, j], rules.max_fill_steps)
        grid[:, j] = col  # a counter's first point has no rate and stays NaN
        report.filled_points += filled
        report.unfilled_points += unfilled
        stats = report.per_indicator.setdefault(spec.name, {})
        stats["filled"] = filled
        stats["missing"] = unfilled

    # 6. outliers
    for j, spec in enumerate(specs):
        col = grid[:, j]
        finite = col[~np.isnan(col)]
        n_out = 0
        if finite.size >= 8:
            med = float(np.median(finite))
            mad = 1.4826 * float(np.median(np.abs(finite - med)))
            if mad > 0:
                lo, hi = med - rules.outlier_mads * mad, med + rules.outlier_mads * mad
                with np.errstate(invalid="ignore"):
                    mask = (col < lo) | (col > hi)
                n_out = int(mask.sum())
                if n_out and rules.outlier_action is OutlierAction.CLIP:
                    grid[:, j] = np.clip(col, lo, hi)
                    report.outliers_clipped += n_out
        report.outliers += n_out
        report.per_indicator.setdefault(spec.name, {})["outliers"] = n_out

    # 7. units
    for j, spec in enumerate(specs):
        if spec.scale != 1.0:
            grid[:, j] *= spec.scale

    index = pd.DatetimeIndex(
        pd.to_datetime((slots[0] + np.arange(n_points)) * step, unit="ns", utc=True), freq=freq  # type: ignore[arg-type]
    )
    report.points_out = n_points
    return pd.DataFrame(grid, index=index, columns=names, copy=False), report


def bin_events(
    timestamps_ns: np.ndarray,
    weights: dict[str, np.ndarray],
    freq: pd.Timedelta,
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Per-second rates of events in epoch-aligned bins of `freq`, from the first to the last event's bin.

    `weights[name]` is summed per bin (use ones to count events); empty bins are 0, not missing: no event
    in a bin is a real observation.
    """
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    step = int(freq.value)
    if ts.size == 0:
        return pd.DatetimeIndex([], tz="UTC"), {k: np.zeros(0) for k in weights}
    slot = np.floor_divide(ts, step)
    lo = int(slot.min())
    n = int(slot.max()) - lo + 1
    seconds = step / _NS
    out = {
        name: np.bincount(slot - lo, weights=np.asarray(w, dtype=np.float64), minlength=n) / seconds
        for name, w in weights.items()
    }
    index = pd.DatetimeIndex(
        pd.to_datetime((lo + np.arange(n)) * step, unit="ns", utc=True),
        freq=freq,  # type: ignore[arg-type]
    )
    return index, out
