"""The backtest report's two charts, written as PNGs (matplotlib's object API on the Agg canvas, atomically
through harmony.plots):

* `capacity_chart`: demand against the capacity in place over time, one panel per policy at its validated
  knobs, for one series.
* `curves_chart`: cost against violation rate of every setting replayed on the test part, each policy's
  lower convex hull, its validated setting marked, the target rate marked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from harmony.backtest import POLICY_ORDER, BacktestResult, lower_hull, short_knobs
from harmony.data.plot import tzinfo
from harmony.plots import save_png

__all__ = ["COLORS", "capacity_chart", "curves_chart"]

COLORS = {
    "harmony": "tab:blue",
    "quantile": "tab:cyan",
    "point": "tab:purple",
    "ehpa": "tab:pink",
    "arima": "tab:olive",
    "ets": "tab:gray",
    "hpa": "tab:orange",
    "static": "tab:brown",
    "oracle": "tab:green",
}


def _need(demand: np.ndarray, capacities: Mapping[str, float]) -> np.ndarray:
    caps = np.array(list(capacities.values()), dtype=np.float64)
    ratio = np.where(np.isfinite(demand), demand / caps, -np.inf).max(axis=1)
    out: np.ndarray = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


def capacity_chart(result: BacktestResult, path: str | Path, series: str | None = None) -> Path:
    """Demand (in replicas) and the capacity in place at the validated knobs, one panel per policy."""
    sid = series if series is not None else result.series[0]
    if sid not in result.demand:
        raise ValueError(f"series {sid!r} was not replayed; replayed: {', '.join(result.series[:8])}")
    policies = [p for p in POLICY_ORDER if p in result.tuned]
    # In the zone the data was written in (a user table's), UTC otherwise.
    zone = result.info.get("display_timezone", "UTC")
    times = result.times[sid].tz_convert(tzinfo(zone))
    need = _need(result.demand[sid], result.settings.capacities)
    fig = Figure(figsize=(11, 1.9 * len(policies) + 0.9))
    axes = fig.subplots(len(policies), 1, squeeze=False, sharex=True)[:, 0]
    rows = result.per_run[result.per_run["series"] == sid]
    for ax, policy in zip(axes, policies, strict=True):
        knobs = result.chosen(policy).text()
        cap = result.capacity_of(policy, sid).astype(np.float64)
        ax.fill_between(times, 0, need, step="post", color="0.75", lw=0, label="demand (replicas needed)")
        ax.step(times, cap, where="post", color=COLORS[policy], lw=1.3, label="replicas in place")
        bad = np.isfinite(need) & (need > cap)
        if bad.any():
            ax.plot(times[bad], need[bad], "o", ms=3, color="tab:red", label="violation")
        row = rows[(rows["policy"] == policy) & (rows["knobs"] == knobs)].iloc[0]
        label = policy if policy == "oracle" else f"{policy} ({short_knobs(knobs)})"
        ax.set_title(
            f"{label}: {100 * row['violation_rate']:.2f}% violations, {row['replica_hours']:.4g} replica-h, "
            f"{int(row['actions'])} scaling actions",
            fontsize=8,
            loc="left",
        )
        ax.set_ylabel("replicas", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1].set_xlabel(f"time ({f'UTC{zone}' if zone[:1] in '+-' else zone})", fontsize=8)
    formatter = mdates.DateFormatter("%m-%d %H:%M", tz=tzinfo(zone))  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_formatter(formatter)
    fig.suptitle(
        f"{result.dataset} / {sid}: demand vs capacity over the test part (validated knobs)", fontsize=11
    )
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def curves_chart(result: BacktestResult, path: str | Path) -> Path:
    """Cost against violation rate of every setting replayed on the test part: each policy's points, its
    lower convex hull, and its validated setting (a star); the target rate marked."""
    sm = result.summary
    target = 100.0 * result.settings.target_violation_rate
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    validated = result.validated[result.validated["criterion"] == "total"]
    for policy in [p for p in POLICY_ORDER if p in set(sm["policy"])]:
        g = sm[sm["policy"] == policy].reset_index(drop=True)
        x = 100.0 * g["violation_rate"].to_numpy(np.float64)
        y = g["cost"].to_numpy(np.float64)
        color = COLORS[policy]
        if policy == "oracle":
            ax.plot(x, y, "*", ms=14, color=color, label="oracle (perfect foresight)")
            continue
        ax.plot(x, y, "o", ms=3, alpha=0.5, color=color)
        hull = lower_hull(g["violation_rate"].tolist(), g["cost"].tolist())
        ax.plot(x[hull], y[hull], "-", lw=1.2, color=color, label=f"{policy} (test points, hull)")
        v = validated[validated["policy"] == policy]
        if len(v):
            ax.plot(
                100.0 * v["violation_rate"].to_numpy(np.float64),
                v["cost"].to_numpy(np.float64),
                "*",
                ms=11,
                mec="k",
                mew=0.6,
                color=color,
            )
    ax.plot([], [], "*", ms=11, mec="k", mew=0.6, color="w", label="knobs chosen on validation")
    ax.axvline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g}%")
    # Rates span zero (the oracle, static peaks) to tens of percent: linear near zero, logarithmic beyond.
    ax.set_xscale("symlog", linthresh=max(target / 2.0, 1e-3))
    ax.set_xlim(left=0.0)
    # Static peak provisioning can cost ten times the rest: a log scale keeps the close curves apart.
    if (sm["cost"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("SLA-violation rate on the test part (% of steps)")
    ax.set_ylabel("cost (price x replica-hours + penalty x violations)")
    ax.set_title(f"{result.dataset}: cost vs violation rate on the test part ({len(result.series)} series)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)
