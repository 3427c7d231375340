"""PNG plot of one series: one panel per indicator, levels and units in the titles."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd

from harmony.data.trace import Trace


def display_zone(trace: Trace) -> str:
    """The zone a trace's times are shown in: the one its file was written in (a user table's --timezone or
    UTC offset), else UTC."""
    zone = trace.card.options.get("display_timezone") if trace.card is not None else None
    return str(zone) if zone else "UTC"


def tzinfo(zone: str) -> str | dt.tzinfo:
    """A zone name, or a fixed offset such as +02:00."""
    if zone[:1] in "+-" and len(zone) == 6:
        sign = 1 if zone[0] == "+" else -1
        return dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return zone


def plot_series(trace: Trace, series: str, out: str | Path, *, max_points: int = 20_000) -> Path:
    """Write the plot atomically (temporary file + rename): a failed run leaves no partial PNG. Times are
    shown in the zone the data was written in (`display_zone`)."""
    zone = display_zone(trace)
    frame = trace[series]
    frame = frame.set_axis(pd.DatetimeIndex(frame.index).tz_convert(tzinfo(zone)))
    if len(frame) > max_points:  # keep the file small; a line plot cannot show more anyway
        frame = frame.iloc[:: -(-len(frame) // max_points)]
    n = len(trace.indicators)
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.6 * n + 0.8), sharex=True, squeeze=False)
    for ax, spec in zip(axes[:, 0], trace.indicators, strict=True):
        color = (
            "tab:red"
            if spec.kind.value == "demand"
            else "tab:blue"
            if spec.kind.value == "resource"
            else "gray"
        )
        ax.plot(frame.index, frame[spec.name], lw=0.7, color=color)
        ax.set_title(
            f"{spec.name} [{spec.unit}]  level {spec.level}, {spec.kind.value}", fontsize=8, loc="left"
        )
        ax.tick_params(labelsize=7)
        if spec.capacity_per_replica:
            ax.axhline(spec.capacity_per_replica, ls="--", lw=0.6, color="black", label="one replica")
            ax.legend(fontsize=6, loc="upper right")
    label = f"UTC{zone}" if zone[:1] in "+-" else zone
    axes[-1, 0].set_xlabel(f"time ({label})", fontsize=8)
    # matplotlib writes dates in UTC unless the formatter is given the zone.
    formatter = mdates.DateFormatter("%m-%d %H:%M", tz=tzinfo(zone))  # type: ignore[no-untyped-call]
    axes[-1, 0].xaxis.set_major_formatter(formatter)
    fig.suptitle(f"{trace.name} / {series}  (step {trace.frequency})", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
