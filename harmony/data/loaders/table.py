"""Bring your own metrics: a CSV or Parquet table (timestamp column, indicator columns, optional series
column), described by a card with `loader: table` or by command-line indicator declarations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harmony.data.catalog import register_loader
from harmony.data.errors import CardError
from harmony.data.loaders.common import assemble, select_ids
from harmony.data.spec import CleaningRules, DatasetCard, IndicatorSpec, Kind
from harmony.data.table import infer_frequency, read_table
from harmony.data.trace import Trace


def load_table(
    path: str | Path,
    *,
    indicators: Sequence[IndicatorSpec],
    timestamp_column: str = "timestamp",
    series_column: str | None = None,
    frequency: pd.Timedelta | None = None,
    delimiter: str | None = None,
    timezone: str = "UTC",
    cleaning: CleaningRules | None = None,
    name: str | None = None,
    series: Sequence[str] | None = None,
) -> Trace:
    """Load a user's table into a Trace; the sampling step is inferred (median step) when not given."""
    p = Path(path)
    if not any(s.kind is Kind.DEMAND for s in indicators):
        raise CardError("declare at least one demand indicator (kind 'demand' with a capacity per replica)")
    notes: list[str] = []
    meta: dict[str, str] = {}
    raw = read_table(
        p,
        timestamp_column=timestamp_column,
        indicators=indicators,
        series_column=series_column,
        delimiter=delimiter,
        timezone=timezone,
        notes=notes,
        meta=meta,
    )
    ids = select_ids(raw, series, name or p.stem)
    raw = {k: raw[k] for k in ids}
    freq = frequency or infer_frequency(raw, notes)
    card = DatasetCard(
        name=name or p.stem,
        title=f"user table {p.name}",
        directory=str(p.parent),
        loader="table",
        frequency=freq,
        indicators=tuple(indicators),
        license="(user data)",
        citation=(),
        source=str(p),
        cleaning=cleaning or CleaningRules(),
        options={
            "path": str(p),
            "timestamp_column": timestamp_column,
            "series_column": series_column,
            "display_timezone": meta.get("display_timezone", "UTC"),
        },
    )
    return assemble(card, raw, {k: str(p) for k in raw}, notes=notes)


@register_loader("table")
def load_table_card(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    opts = card.options
    if "path" not in opts:
        raise CardError("a `loader: table` card needs options.path (the CSV/Parquet file)", path=card.path)
    path = Path(str(opts["path"]))
    if not path.is_absolute():
        path = root / path
    trace = load_table(
        path,
        indicators=card.indicators,
        timestamp_column=str(opts.get("timestamp_column", "timestamp")),
        series_column=opts.get("series_column"),
        frequency=card.frequency,
        delimiter=opts.get("delimiter"),
        timezone=str(opts.get("timezone", "UTC")),
        cleaning=card.cleaning,
        name=card.name,
        series=series,
    )
    # The card stays the trace's card, with the zone the file was written in (for plots).
    zone = trace.card.options.get("display_timezone", "UTC") if trace.card is not None else "UTC"
    trace.card = dataclasses.replace(card, options={**card.options, "display_timezone": zone})
    return trace
