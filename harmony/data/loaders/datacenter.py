"""Datacenter-wide aggregates (Alibaba 2018, Google 2019, Azure V2): one series each, no timestamps in the
files; row i is laid at the card's nominal start + i x step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.catalog import register_loader
from harmony.data.errors import DataError
from harmony.data.loaders.common import assemble, select_ids
from harmony.data.spec import DatasetCard
from harmony.data.table import TableSeries, suggest_column
from harmony.data.trace import Trace


def _file_for_step(card: DatasetCard, root: Path) -> Path:
    by_step = {int(k): v for k, v in (card.options.get("files_by_step") or {}).items()}
    step = int(card.frequency.total_seconds())
    if step not in by_step:
        raise DataError(
            f"{card.name} has files for steps {sorted(by_step)} s, not {step} s; "
            f"use --freq with one of them (or a multiple of the finest)",
            path=card.path,
        )
    gz = root / by_step[step]
    plain = gz.with_suffix("") if gz.suffix == ".gz" else gz
    for p in (gz, plain):
        if p.exists():
            return Path(p)
    raise DataError(f"missing file; run `harmony datasets fetch {card.name}`", path=gz)


@register_loader("datacenter")
def load_datacenter(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    sid = str(card.options.get("series", card.name))
    select_ids([sid], series, card.name)
    path = _file_for_step(card, root)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        raise DataError(f"cannot read CSV: {exc}", path=path) from None
    problems = []
    for spec in card.indicators:
        if spec.source_column not in frame.columns:
            hint = suggest_column(spec.source_column, list(frame.columns))
            problems.append(f"column {spec.source_column!r} not found{hint}")
    if problems:
        raise DataError(f"columns {list(frame.columns)}", path=path, problems=problems)
    values = np.column_stack(
        [pd.to_numeric(frame[s.source_column], errors="coerce").to_numpy(np.float64) for s in card.indicators]
    )
    bad = np.isnan(values) & frame[[s.source_column for s in card.indicators]].notna().to_numpy()
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise DataError("not a number", path=path, row=r + 2, column=card.indicators[c].source_column)
    start = pd.Timestamp(card.options.get("nominal_start", "1970-01-01T00:00:00Z"))
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    ts = start.value + np.arange(len(frame), dtype=np.int64) * card.frequency.value
    raw = {sid: TableSeries(ts, values, np.arange(len(frame), dtype=np.int64) + 2)}
    note = f"no timestamps in {path.name}: row i laid at {start.isoformat()} (nominal) + i x {card.frequency}"
    return assemble(card, raw, {sid: str(path)}, notes=[note])
