"""Alibaba GenTD26: per-GPU-container telemetry, and the 23-day LoRA request trace binned into rates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.catalog import register_loader
from harmony.data.clean import SeriesReport, bin_events
from harmony.data.errors import DataError
from harmony.data.loaders.archive import read_tar_csv, require_columns
from harmony.data.loaders.common import assemble, select_ids
from harmony.data.spec import DatasetCard
from harmony.data.table import TableSeries
from harmony.data.trace import Trace

# indicator -> archive in raw/
METRIC_ARCHIVES = {
    "gpu_util": "pod_gpu_duty_cycle_anon",
    "gpu_memory_bytes": "pod_gpu_memory_used_bytes_anon",
    "memory_util": "pod_memory_util_anon",
    "qps": "qps",
}
_NS = 1_000_000_000


def _metric(root: Path, indicator: str) -> pd.DataFrame:
    archive = root / "raw" / f"{METRIC_ARCHIVES[indicator]}.tar.gz"
    frame = read_tar_csv(archive)
    require_columns(frame, ["value", "timestamp_anon", "container_ip"], str(archive))
    if indicator == "qps":
        # Cluster-level API QPS has no container: not part of the per-container series.
        frame = frame[frame["container_ip"].notna()]
    out = pd.DataFrame(
        {
            "container": frame["container_ip"].astype(str),
            "t": pd.to_numeric(frame["timestamp_anon"], errors="coerce"),
            "value": pd.to_numeric(frame["value"], errors="coerce"),
        }
    )
    bad = out["t"].isna() | (out["value"].isna() & frame["value"].notna())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise DataError("expected numeric timestamp_anon and value", path=archive, row=row)
    out["metric"] = indicator
    return out


@register_loader("alibaba_gentd26_containers")
def load_containers(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    names = [s.name for s in card.indicators]
    unknown = [n for n in names if n not in METRIC_ARCHIVES]
    if unknown:
        raise DataError(f"card names indicator(s) {unknown} with no GenTD26 file", path=card.path)
    long = pd.concat([_metric(root, n) for n in names], ignore_index=True)
    resource = [n for n in names if n != "qps"]
    # Containers that report every resource indicator (143 of them).
    have = long[long["metric"].isin(resource)].groupby("container")["metric"].nunique()
    containers = sorted(have.index[have == len(resource)])
    ids = select_ids(containers, series, card.name)
    long = long[long["container"].isin(set(ids))]
    n_long = len(long)
    wide = long.pivot_table(index=["container", "t"], columns="metric", values="value", aggfunc="mean")
    dups = n_long - int(wide.notna().sum().sum())
    wide = wide.reindex(columns=names)
    notes = [f"{dups} duplicate (container, time, metric) samples averaged before cleaning"] if dups else []
    if "qps" in names and card.options.get("qps_missing_is_zero", True):
        absent = int(wide["qps"].isna().sum())
        wide["qps"] = wide["qps"].fillna(0.0)
        notes.append(
            f"qps: {absent} samples absent from the gateway log read as 0 (it logs only non-zero QPS)"
        )
    raw: dict[str, TableSeries] = {}
    sources: dict[str, str] = {}
    for sid, frame in wide.groupby(level="container", sort=True):
        t = frame.index.get_level_values("t").to_numpy(dtype=np.float64)
        raw[str(sid)] = TableSeries(
            np.round(t * _NS).astype(np.int64), frame.to_numpy(dtype=np.float64), np.zeros(len(t), np.int64)
        )
        sources[str(sid)] = str(root / "raw")
    raw = {sid: raw[sid] for sid in ids}
    return assemble(card, raw, sources, notes=notes)


@register_loader("alibaba_gentd26_requests")
def load_requests(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    archive = root / "raw" / "lora_request_trace.tar.gz"
    frame = read_tar_csv(archive)
    cols = ["gmt_create", "exec_time_seconds", "num_images_per_prompt", "num_inference_steps"]
    require_columns(frame, cols, str(archive))
    select_ids(["requests"], series, card.name)
    ts = pd.to_datetime(frame["gmt_create"], errors="coerce", utc=True)
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0]) + 2
        raise DataError("gmt_create is not a timestamp (expected YYYY-MM-DD HH:MM:SS)", path=archive, row=row)
    nums = {}
    for c in cols[1:]:
        v = pd.to_numeric(frame[c], errors="coerce")
        # A missing count means one image / the trace's usual step count is unknown: count the request only.
        nums[c] = v.to_numpy(dtype=np.float64)
    t_ns = ts.dt.as_unit("ns").astype("int64").to_numpy()
    images = np.nan_to_num(nums["num_images_per_prompt"], nan=1.0)
    steps = np.nan_to_num(nums["num_inference_steps"], nan=0.0) * images
    weights: dict[str, np.ndarray] = {}
    for spec in card.indicators:
        if spec.name == "requests_per_s":
            weights[spec.name] = np.ones(len(t_ns))
        elif spec.name == "images_per_s":
            weights[spec.name] = images
        elif spec.name == "diffusion_steps_per_s":
            weights[spec.name] = steps
        elif spec.name != "busy_gpus":
            raise DataError(
                f"card names indicator {spec.name!r} with no request-trace column", path=card.path
            )
    index, rates = bin_events(t_ns, weights, card.frequency)
    if any(s.name == "busy_gpus" for s in card.indicators):
        rates["busy_gpus"] = _busy(
            t_ns, np.nan_to_num(nums["exec_time_seconds"], nan=0.0), index, card.frequency
        )
    data = pd.DataFrame({s.name: rates[s.name] * s.scale for s in card.indicators}, index=index)
    report = SeriesReport(rows_in=len(frame), points_out=len(index))
    notes = [
        f"{len(frame)} requests binned into {len(index)} bins of {card.frequency}; empty bins are 0 demand",
        "busy_gpus: execution spread from each request's creation time; work past the last bin is cut",
    ]
    return Trace(
        card.name,
        card.frequency,
        card.indicators,
        {"requests": data},
        {"requests": report},
        card,
        tuple(notes),
    )


def _busy(t_ns: np.ndarray, exec_s: np.ndarray, index: pd.DatetimeIndex, freq: pd.Timedelta) -> np.ndarray:
    """Mean number of requests executing in each bin: overlap of [start, start + exec) with the bin."""
    step = freq.value
    lo = index[0].value
    n = len(index)
    start = (t_ns - lo) / step  # in bins
    end = start + np.maximum(exec_s, 0.0) * _NS / step
    # Integral of the count of active requests = sum of clipped overlaps; done with a cumulative trick:
    # F(x) = sum_i clip(x - start_i, 0, end_i - start_i); busy in bin k = F(k+1) - F(k).
    edges = np.arange(n + 1, dtype=np.float64)
    s = np.sort(start)
    e = np.sort(end)
    cs = np.concatenate(([0.0], np.cumsum(s)))
    ce = np.concatenate(([0.0], np.cumsum(e)))
    ks = np.searchsorted(s, edges, side="right")
    ke = np.searchsorted(e, edges, side="right")
    f = (edges * ks - cs[ks]) - (edges * ke - ce[ke])
    return np.diff(f)
