"""Diagnostic PNGs of a trained forecaster: a fan chart of test windows and a calibration chart.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, so no global figure state and
no display needed) and written atomically: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class FanPanel:
    """One target of one window: its history, the draws over the horizon and what happened."""

    name: str
    unit: str
    history_times: pd.DatetimeIndex
    history: np.ndarray  # [L]
    future_times: pd.DatetimeIndex
    actual: np.ndarray  # [H]
    samples: np.ndarray  # [S, H]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; charts and reports are meant to be shared like any
# other file the user writes.
FILE_MODE = 0o666 & ~_umask()


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save a figure as PNG through a temporary file in the same folder, then rename (atomic)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, dpi=dpi, format="png")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def fan_chart(path: str | Path, panels: Sequence[FanPanel], *, title: str) -> Path:
    """History, median, 50% and 90% central bands and the actual values, one panel per target."""
    if not panels:
        raise ValueError("fan_chart needs at least one panel")
    fig = Figure(figsize=(10, 2.3 * len(panels) + 0.8))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, p in zip(axes, panels, strict=True):
        s = np.asarray(p.samples, dtype=np.float64)
        q05, q25, q50, q75, q95 = np.quantile(s, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.plot(p.history_times, p.history, color="black", lw=0.9, label="history")
        ax.axvline(p.history_times[-1], color="gray", lw=0.6, ls=":")
        ax.fill_between(p.future_times, q05, q95, color="tab:blue", alpha=0.2, lw=0, label="90% interval")
        ax.fill_between(p.future_times, q25, q75, color="tab:blue", alpha=0.4, lw=0, label="50% interval")
        ax.plot(p.future_times, q50, color="tab:blue", lw=1.2, label="median")
        ax.plot(p.future_times, p.actual, color="tab:red", lw=1.0, marker=".", ms=4, label="actual")
        ax.set_title(f"{p.name} [{p.unit}]", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left", ncol=5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def calibration_chart(
    path: str | Path,
    pit: np.ndarray,
    coverage: Mapping[str, Mapping[float, float]],
    *,
    title: str,
    bins: int = 10,
) -> Path:
    """Left: histogram of PIT values (flat when calibrated). Right: empirical against nominal coverage of
    central intervals, one line per entry of `coverage` (e.g. each target and all of them)."""
    values = np.asarray(pit, dtype=np.float64)
    values = values[np.isfinite(values)]
    fig = Figure(figsize=(10, 4.2))
    ax_pit, ax_cov = fig.subplots(1, 2)
    if values.size:
        ax_pit.hist(values, bins=bins, range=(0.0, 1.0), density=True, color="tab:blue", alpha=0.7)
    ax_pit.axhline(1.0, color="black", lw=0.8, ls="--", label="calibrated")
    ax_pit.set_xlim(0.0, 1.0)
    ax_pit.set_xlabel("PIT", fontsize=8)
    ax_pit.set_ylabel("density", fontsize=8)
    ax_pit.set_title(f"PIT histogram ({values.size} values)", fontsize=9, loc="left")
    ax_pit.legend(fontsize=7)
    ax_cov.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="ideal")
    for name, curve in coverage.items():
        levels = sorted(curve)
        lw = 2.0 if name == "all" else 1.0
        ax_cov.plot(levels, [curve[lv] for lv in levels], marker="o", ms=3, lw=lw, label=name)
    ax_cov.set_xlim(0.0, 1.0)
    ax_cov.set_ylim(0.0, 1.0)
    ax_cov.set_xlabel("nominal coverage of the central interval", fontsize=8)
    ax_cov.set_ylabel("empirical coverage", fontsize=8)
    ax_cov.set_title("interval coverage", fontsize=9, loc="left")
    ax_cov.legend(fontsize=7, loc="upper left")
    for ax in (ax_pit, ax_cov):
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
