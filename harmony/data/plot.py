"""PNG plot of one series: one panel per indicator, levels and units in the titles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from harmony.data.trace import Trace


def plot_series(trace: Trace, series: str, out: str | Path, *, max_points: int = 20_000) -> Path:
    """Write the plot atomically (temporary file + rename): a failed run leaves no partial PNG."""
    frame = trace[series]
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
