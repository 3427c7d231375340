"""Bitbrains GWA-T-12 Rnd: 500 VMs x 3 months, from the parquet repack or the original per-VM CSVs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.catalog import register_loader
from harmony.data.errors import DataError
from harmony.data.loaders.common import assemble, select_ids
from harmony.data.spec import DatasetCard
from harmony.data.table import TableSeries
from harmony.data.trace import Trace

# Original CSV header -> repack column name.
RAW_COLUMNS = {
    "Timestamp [ms]": "timestamp",
    "CPU cores": "cpu_cores",
    "CPU capacity provisioned [MHZ]": "cpu_capacity_mhz",
    "CPU usage [MHZ]": "cpu_usage_mhz",
    "CPU usage [%]": "cpu_usage_pct",
    "Memory capacity provisioned [KB]": "mem_capacity_kb",
    "Memory usage [KB]": "mem_usage_kb",
    "Disk read throughput [KB/s]": "disk_read_kbps",
    "Disk write throughput [KB/s]": "disk_write_kbps",
    "Network received throughput [KB/s]": "net_rx_kbps",
    "Network transmitted throughput [KB/s]": "net_tx_kbps",
}
_NS = 1_000_000_000


def read_raw_csv(path: Path) -> pd.DataFrame:
    """One original per-VM file (';' + TAB separated), columns renamed to the repack's names."""
    try:
        frame = pd.read_csv(path, sep=";", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        raise DataError(f"cannot read Bitbrains CSV: {exc}", path=path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"missing Bitbrains column(s) {missing}; found {list(frame.columns)}", path=path)
    return frame.rename(columns=RAW_COLUMNS)


def _from_parquet(
    card: DatasetCard, files: list[Path], wanted: Sequence[str] | None
) -> tuple[dict[str, TableSeries], dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = [s.source_column for s in card.indicators]
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=["vm_id", "timestamp", *cols]))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"not a readable Parquet file (truncated or corrupt?): {exc}", path=f) from None
        except KeyError as exc:
            raise DataError(f"missing column {exc}", path=f) from None
    # Each monthly file is ordered by vm_id, so a VM is one contiguous slice per file.
    bounds = []
    for t in tables:
        vm = t.column("vm_id").to_numpy()
        if np.any(np.diff(vm) < 0):
            order = np.argsort(vm, kind="stable")
            t = t.take(pa.array(order))
            vm = vm[order]
        bounds.append((t, vm))
    all_ids = sorted({int(v) for _, vm in bounds for v in np.unique(vm)})
    ids = select_ids([str(v) for v in all_ids], wanted, card.name)
    raw: dict[str, TableSeries] = {}
    sources: dict[str, str] = {}
    for sid in ids:
        v = int(sid)
        ts_parts, val_parts, row_parts = [], [], []
        for t, vm in bounds:
            # Keys in the column's own dtype: mixed dtypes would copy the whole column on every call.
            lo, hi = np.searchsorted(vm, np.array([v, v + 1], dtype=vm.dtype))
            if hi <= lo:
                continue
            part = t.slice(lo, hi - lo)
            ts_parts.append(part.column("timestamp").to_numpy().astype(np.int64) * _NS)
            val_parts.append(np.column_stack([part.column(c).to_numpy().astype(np.float64) for c in cols]))
            row_parts.append(np.arange(lo, hi, dtype=np.int64) + 1)
        raw[sid] = TableSeries(np.concatenate(ts_parts), np.vstack(val_parts), np.concatenate(row_parts))
        sources[sid] = f"{files[0].parent}/bitbrains_rnd_*.parquet (vm_id {v})"
    return raw, sources


def _from_raw(
    card: DatasetCard, root: Path, wanted: Sequence[str] | None
) -> tuple[dict[str, TableSeries], dict[str, str]]:
    months = [p for p in sorted((root / "raw").iterdir()) if p.is_dir()]
    by_vm: dict[str, list[Path]] = {}
    for m in months:
        for f in m.glob("*.csv"):
            by_vm.setdefault(f.stem, []).append(f)
    ids = select_ids(sorted(by_vm, key=int), wanted, card.name)
    cols = [s.source_column for s in card.indicators]
    raw: dict[str, TableSeries] = {}
    sources: dict[str, str] = {}
    for sid in ids:
        frames = [read_raw_csv(f) for f in sorted(by_vm[sid])]
        frame = pd.concat(frames, ignore_index=True)
        ts = frame["timestamp"].to_numpy(dtype=np.int64) * _NS
        rows = np.concatenate([np.arange(len(f), dtype=np.int64) + 2 for f in frames])
        raw[sid] = TableSeries(ts, frame[cols].to_numpy(dtype=np.float64), rows)
        sources[sid] = ", ".join(str(f) for f in by_vm[sid])
    return raw, sources


@register_loader("bitbrains")
def load_bitbrains(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    months = card.options.get("months", ["2013-07", "2013-08", "2013-09"])
    files = [root / f"bitbrains_rnd_{m}.parquet" for m in months]
    present = [f for f in files if f.exists()]
    if present:
        if len(present) != len(files):
            missing = [f.name for f in files if not f.exists()]
            raise DataError(f"missing monthly file(s) {missing}; fetch the dataset again", path=root)
        raw, sources = _from_parquet(card, files, series)
    elif (root / "raw").is_dir():
        raw, sources = _from_raw(card, root, series)
    else:
        raise DataError(
            "neither bitbrains_rnd_*.parquet nor raw/<month>/<vm>.csv found; run "
            "`harmony datasets fetch bitbrains_rnd`",
            path=root,
        )
    return assemble(card, raw, sources)
