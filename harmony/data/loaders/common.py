"""Shared steps of the loaders: regularize each raw series and assemble the Trace."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.clean import SeriesReport, regularize
from harmony.data.errors import DataError
from harmony.data.spec import DatasetCard
from harmony.data.table import TableSeries
from harmony.data.trace import Trace


def select_ids(available: Iterable[str], wanted: Sequence[str] | None, dataset: str) -> list[str]:
    ids = list(available)
    if wanted is None:
        return ids
    missing = [w for w in wanted if w not in set(ids)]
    if missing:
        sample = ", ".join(ids[:8])
        raise DataError(f"{dataset} has no series {missing}; it has {len(ids)} (e.g. {sample})")
    return list(wanted)


def assemble(
    card: DatasetCard,
    raw: dict[str, TableSeries],
    sources: dict[str, str],
    *,
    frequency: pd.Timedelta | None = None,
    notes: Sequence[str] = (),
) -> Trace:
    freq = frequency or card.frequency
    series: dict[str, pd.DataFrame] = {}
    reports: dict[str, SeriesReport] = {}
    for sid, rs in raw.items():
        frame, rep = regularize(
            rs.timestamps_ns,
            rs.values,
            card.indicators,
            freq,
            card.cleaning,
            source=sources.get(sid, ""),
            row_numbers=rs.rows,
        )
        series[sid] = frame
        reports[sid] = rep
    return Trace(card.name, freq, card.indicators, series, reports, card, tuple(notes))


def require(path: Path, dataset: str) -> Path:
    if not path.exists():
        raise DataError(f"missing file of {dataset}; run `harmony datasets fetch {dataset}`", path=path)
    return path


def rows_range(n: int, first: int = 2) -> np.ndarray:
    return np.arange(n, dtype=np.int64) + first
