"""Text summaries of a trace for the terminal: overview, indicators with statistics, cleaning report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harmony.data.trace import Trace


def _fmt(x: object) -> str:
    if isinstance(x, float | np.floating):
        if np.isnan(x):
            return "-"
        ax = abs(float(x))
        if ax != 0 and (ax >= 1e6 or ax < 1e-3):
            return f"{float(x):.3g}"
        return f"{float(x):,.3f}".rstrip("0").rstrip(".")
    return str(x)


def render_table(frame: pd.DataFrame, index_name: str | None = None) -> str:
    """A plain fixed-width table (no extra dependency)."""
    head = [str(index_name or frame.index.name or "")] + [str(c) for c in frame.columns]
    body: list[list[str]] = [
        [str(i)] + [_fmt(v) for v in tuple(row)]
        for i, row in zip(frame.index, frame.itertuples(index=False), strict=True)
    ]
    widths = [max(len(r[k]) for r in [head, *body]) for k in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def overview(trace: Trace, series: str | None = None) -> str:
    card = trace.card
    frames = {series: trace[series]} if series else trace.series
    start = min(f.index[0] for f in frames.values())
    end = max(f.index[-1] for f in frames.values())
    points = sum(len(f) for f in frames.values())
    lines = [
        f"dataset      {trace.name}" + (f"  ({card.title})" if card else ""),
        f"series       {len(trace)}" + (f"  (showing {series})" if series else ""),
        f"span         {start.isoformat()} .. {end.isoformat()}  ({end - start})",
        f"frequency    {trace.frequency}  ({trace.frequency.total_seconds():g} s)",
        f"points       {points:,} per indicator, {len(trace.indicators)} indicators",
        "demand       "
        + ", ".join(f"{d.name} ({d.capacity_per_replica:g} {d.unit} per replica)" for d in trace.demand),
    ]
    if card:
        lines.append(f"license      {card.license}")
    return "\n".join(lines)


def cleaning_report(trace: Trace, series: str | None = None) -> str:
    rep = trace.reports.get(series) if series else trace.report()
    lines = ["cleaning (rule: docs/data.md)"]
    if rep is None:
        return lines[0] + ": no report"
    if trace.card is not None:
        # Event traces count each event in the step it falls in, whatever the card's rule for samples.
        rule = "left (events)" if trace.card.options.get("rebin") else trace.card.cleaning.binning.value
        lines[0] = f"cleaning (rule: docs/data.md; binning: {rule})"
    d = rep.as_dict()
    labels = {
        "rows_in": "raw rows read",
        "points_out": "grid points out",
        "out_of_order": "rows earlier than the row before (sorted)",
        "off_grid": "timestamps snapped to the grid",
        "duplicates_merged": "rows merged onto a shared grid point",
        "missing_cells": "empty/NaN cells in the input",
        "gap_points": "grid points with no row",
        "filled_points": "cells filled by interpolation (short gaps)",
        "unfilled_points": "cells left missing (long gaps)",
        "counter_resets": "counter resets",
        "counter_jumps": "counter re-bases upwards",
        "outliers": "outlier cells (> k MADs; counted)",
        "outliers_clipped": "outlier cells clipped",
    }
    for key, label in labels.items():
        lines.append(f"  {label:<44} {d[key]:>12,}")
    lines.extend(f"  note: {n}" for n in trace.notes)
    return "\n".join(lines)
