"""`Trace`: the one clean form every loader produces."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harmony.data.clean import SeriesReport
from harmony.data.spec import DatasetCard, IndicatorSpec, Kind


@dataclass
class Trace:
    """Regular-frequency series of the same indicators.

    `series[id]` is a DataFrame indexed by a UTC DatetimeIndex of step `frequency`, one float column per
    indicator in `indicators` order, in each indicator's unit. NaN marks points the cleaning rule could not
    fill (long gaps); everything the rule changed is counted in `reports`.
    """

    name: str
    frequency: pd.Timedelta
    indicators: tuple[IndicatorSpec, ...]
    series: dict[str, pd.DataFrame]
    reports: dict[str, SeriesReport] = field(default_factory=dict)
    card: DatasetCard | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [i.name for i in self.indicators]
        for sid, frame in self.series.items():
            if list(frame.columns) != names:
                raise ValueError(f"series {sid!r} has columns {list(frame.columns)}, expected {names}")
            if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
                raise ValueError(f"series {sid!r} must be indexed by a UTC DatetimeIndex")

    # --- lookups ---------------------------------------------------------------------------------------
    @property
    def indicator_names(self) -> list[str]:
        return [i.name for i in self.indicators]

    @property
    def series_ids(self) -> list[str]:
        return list(self.series)

    @property
    def demand(self) -> tuple[IndicatorSpec, ...]:
        return tuple(i for i in self.indicators if i.kind is Kind.DEMAND)

    @property
    def levels(self) -> dict[str, int]:
        return {i.name: i.level for i in self.indicators}

    def indicator(self, name: str) -> IndicatorSpec:
        for spec in self.indicators:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no indicator {name!r}; it has {self.indicator_names}")

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, series_id: str) -> pd.DataFrame:
        try:
            return self.series[series_id]
        except KeyError:
            sample = ", ".join(list(self.series)[:8])
            raise KeyError(
                f"{self.name} has no series {series_id!r}; it has {len(self.series)} (e.g. {sample})"
            ) from None

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(min(f.index[0] for f in self.series.values() if len(f)))

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(max(f.index[-1] for f in self.series.values() if len(f)))

    @property
    def total_points(self) -> int:
        return sum(len(f) for f in self.series.values())

    def report(self) -> SeriesReport:
        total = SeriesReport()
        for r in self.reports.values():
            total.add(r)
        return total

    # --- derived traces --------------------------------------------------------------------------------
    def select(self, series: Iterable[str] | None = None, indicators: Iterable[str] | None = None) -> Trace:
        ids = list(self.series) if series is None else list(series)
        for sid in ids:
            self[sid]  # raises a clear KeyError
        specs = self.indicators if indicators is None else tuple(self.indicator(n) for n in indicators)
        cols = [s.name for s in specs]
        return Trace(
            name=self.name,
            frequency=self.frequency,
            indicators=specs,
            series={sid: self.series[sid][cols] for sid in ids},
            reports={sid: self.reports[sid] for sid in ids if sid in self.reports},
            card=self.card,
            notes=self.notes,
        )

    def resample(self, frequency: pd.Timedelta) -> Trace:
        """Coarser grid by the mean of each bin (all indicators are gauges or rates by now)."""
        if frequency == self.frequency:
            return self
        ratio = frequency / self.frequency
        if frequency < self.frequency or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"can only resample {self.name} to a whole multiple of its step {self.frequency}, "
                f"got {frequency}"
            )
        origin = pd.Timestamp(0, tz="UTC")
        out = {}
        for sid, f in self.series.items():
            # min_count keeps a bin with no data NaN instead of 0.
            r = f.resample(frequency, origin=origin).mean()
            r.index.freq = frequency  # type: ignore[attr-defined]
            out[sid] = r
        return Trace(self.name, frequency, self.indicators, out, self.reports, self.card, self.notes)

    def to_long(self) -> pd.DataFrame:
        """One row per (series, timestamp): columns series, timestamp, then the indicators."""
        parts = []
        for sid, f in self.series.items():
            g = f.reset_index(names="timestamp")
            g.insert(0, "series", sid)
            parts.append(g)
        return pd.concat(parts, ignore_index=True)

    def stats(self, series: str | None = None) -> pd.DataFrame:
        """Per indicator: unit, level, kind, measure, mean, std, min, p50, p95, max, missing %."""
        frames: Mapping[str, pd.DataFrame] = {series: self[series]} if series else self.series
        rows = []
        for spec in self.indicators:
            col = (
                np.concatenate([f[spec.name].to_numpy() for f in frames.values()]) if frames else np.array([])
            )
            finite = col[~np.isnan(col)]
            q = np.quantile(finite, [0.0, 0.5, 0.95, 1.0]) if finite.size else [np.nan] * 4
            rows.append(
                {
                    "indicator": spec.name,
                    "unit": spec.unit,
                    "level": spec.level,
                    "kind": spec.kind.value,
                    "measure": spec.measure.value,
                    "mean": float(finite.mean()) if finite.size else np.nan,
                    "std": float(finite.std()) if finite.size else np.nan,
                    "min": q[0],
                    "p50": q[1],
                    "p95": q[2],
                    "max": q[3],
                    "missing_%": 100.0 * (1 - finite.size / col.size) if col.size else 0.0,
                }
            )
        return pd.DataFrame(rows).set_index("indicator")
