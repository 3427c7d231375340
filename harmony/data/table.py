"""Read a user's CSV or Parquet table of indicators, explaining every problem it has.

Row numbers in messages are the file's own: for CSV the header is row 1, so the first data row is row 2;
for Parquet the first record is row 1.
"""

from __future__ import annotations

import difflib
import gzip
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.errors import DataError
from harmony.data.spec import IndicatorSpec

_DELIMITERS = [",", ";", "\t", "|"]
_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
_MAX_LISTED = 5


@dataclass
class TableSeries:
    """Raw rows of one series, ready for `regularize`."""

    timestamps_ns: np.ndarray
    values: np.ndarray
    rows: np.ndarray


def _first_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return str(fh.readline())
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file: {exc}", path=path) from None


def sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _listing(rows: np.ndarray, values: Sequence[object] | None = None) -> str:
    shown = [str(int(r)) for r in rows[:_MAX_LISTED]]
    if values is not None:
        shown = [f"{r} ({v!r})" for r, v in zip(shown, values, strict=False)]
    more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def _read_frame(path: Path, delimiter: str | None) -> tuple[pd.DataFrame, int]:
    """The raw table and the row number of its first record."""
    if not path.exists():
        raise DataError("file not found", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty; expected a header row and at least one data row", path=path)
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DataError(
                f"not a readable Parquet file (truncated or corrupt?): {exc}", path=path
            ) from None
        return frame, 1
    header = _first_line(path)
    if not header.strip():
        raise DataError("first line is blank; expected a header row naming the columns", path=path)
    sniffed = sniff_delimiter(header)
    if delimiter is None:
        delimiter = sniffed
    elif header.count(delimiter) == 0 and sniffed != delimiter and header.count(sniffed) > 0:
        raise DataError(
            f"wrong delimiter: the header has no {delimiter!r} but {header.count(sniffed)} {sniffed!r}; "
            f"expected {delimiter!r}-separated columns (pass --delimiter {sniffed!r} if that is intended)",
            path=path,
            row=1,
        )
    try:
        frame = pd.read_csv(
            path,
            sep=delimiter,
            skipinitialspace=True,
            skip_blank_lines=False,
            low_memory=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot parse as {delimiter!r}-separated text: {exc}", path=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("file has no columns; expected a header row", path=path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame.columns) == 1 and any(d in frame.columns[0] for d in _DELIMITERS if d != delimiter):
        raise DataError(
            f"only one column {frame.columns[0]!r} with delimiter {delimiter!r}: wrong delimiter?", path=path
        )
    return frame, 2


def _parse_timestamps(
    raw: pd.Series, path: Path, first_row: int, timezone: str, problems: list[str]
) -> np.ndarray:
    rows = np.arange(len(raw)) + first_row
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        ts = pd.DatetimeIndex(raw)
        ts = ts.tz_localize(timezone) if ts.tz is None else ts
        out = ts.tz_convert("UTC").as_unit("ns").asi8.copy()
        nat = np.asarray(pd.isna(raw))
        if nat.any():
            problems.append(f"timestamp is missing at row(s) {_listing(rows[nat])}")
        return out
    if pd.api.types.is_numeric_dtype(raw.dtype):
        num = raw.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(num)
        if bad.any():
            problems.append(f"timestamp is missing or not finite at row(s) {_listing(rows[bad])}")
        mag = np.nanmedian(np.abs(num)) if (~bad).any() else 0.0
        # Epoch unit from magnitude (documented): < 1e11 s, < 1e14 ms, < 1e17 us, else ns.
        mult = 1e9 if mag < 1e11 else 1e6 if mag < 1e14 else 1e3 if mag < 1e17 else 1.0
        return np.where(bad, 0, np.round(np.nan_to_num(num) * mult)).astype(np.int64)
    text = raw.astype("string").str.strip()
    empty = text.isna() | (text == "")
    if empty.any():
        problems.append(f"timestamp is empty at row(s) {_listing(rows[np.asarray(empty)])}")
    has_tz = text.fillna("").str.contains(_TZ_SUFFIX).to_numpy(dtype=bool) & ~np.asarray(empty)
    if has_tz.any() and (~has_tz & ~np.asarray(empty)).any():
        with_tz = rows[has_tz]
        without = rows[~has_tz & ~np.asarray(empty)]
        problems.append(
            "mixed time zones: row(s) "
            f"{_listing(with_tz)} carry a UTC offset but row(s) {_listing(without)} do not; "
            "expected every timestamp with an offset, or none (then --timezone applies)"
        )
        return np.zeros(len(raw), dtype=np.int64)
    parsed = pd.to_datetime(text.where(~empty, None), errors="coerce", utc=bool(has_tz.any()), format="mixed")
    bad = np.asarray(parsed.isna()) & ~np.asarray(empty)
    if bad.any():
        problems.append(
            "timestamp not understood at row(s) "
            f"{_listing(rows[bad], list(text[bad].iloc[:_MAX_LISTED]))}; "
            "expected ISO 8601 like 2024-05-01T12:00:00Z, or epoch seconds/milliseconds"
        )
    idx = pd.DatetimeIndex(parsed)
    if idx.tz is None:
        try:
            idx = idx.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        except (ValueError, TypeError) as exc:
            raise DataError(f"unknown --timezone {timezone!r}: {exc}", path=path) from None
    idx = idx.tz_convert("UTC").as_unit("ns")
    out = idx.asi8.copy()
    out[np.asarray(idx.isna())] = 0
    return out


def suggest_column(missing: str, available: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest available column name, or '' when none is close."""
    close = difflib.get_close_matches(missing, list(available), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_table(
    path: str | Path,
    *,
    timestamp_column: str,
    indicators: Sequence[IndicatorSpec],
    series_column: str | None = None,
    delimiter: str | None = None,
    timezone: str = "UTC",
) -> dict[str, TableSeries]:
    """Read and validate a table; raise one DataError listing every problem found."""
    p = Path(path)
    frame, first_row = _read_frame(p, delimiter)
    if len(frame) == 0:
        raise DataError("file has a header but no data rows", path=p)
    cols = list(frame.columns)
    problems: list[str] = []
    needed = [timestamp_column] + [s.source_column for s in indicators]
    if series_column:
        needed.append(series_column)
    for name in needed:
        if name not in cols:
            problems.append(f"column {name!r} not found{suggest_column(name, cols)}")
    if problems:
        raise DataError(
            f"{len(problems)} missing column(s); the file has columns {cols}", path=p, problems=problems
        )
    rows = np.arange(len(frame)) + first_row

    ts = _parse_timestamps(frame[timestamp_column], p, first_row, timezone, problems)

    values = np.empty((len(frame), len(indicators)), dtype=np.float64)
    for j, spec in enumerate(indicators):
        raw = frame[spec.source_column]
        col: np.ndarray
        if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
            col = raw.to_numpy(dtype=np.float64)
        else:
            text = raw.astype("string").str.strip()
            col = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = np.isnan(col) & ~np.asarray(
                text.isna() | (text == "") | text.str.lower().isin(["nan", "na"])
            )
            if bad.any():
                problems.append(
                    f"column {spec.source_column!r}: not a number at row(s) "
                    f"{_listing(rows[bad], list(text[bad].iloc[:_MAX_LISTED]))}; expected a decimal number"
                )
        inf = np.isinf(col)
        if inf.any():
            problems.append(
                f"column {spec.source_column!r}: infinite value at row(s) {_listing(rows[inf])}; "
                "expected a finite number (leave the cell empty for a missing value)"
            )
        if spec.is_counter:
            neg = col < 0
            if neg.any():
                problems.append(
                    f"column {spec.source_column!r}: counter is negative at row(s) "
                    f"{_listing(rows[neg], list(col[neg][:_MAX_LISTED]))}; a counter is a cumulative total "
                    ">= 0 (declare it a gauge if it is not cumulative)"
                )
        values[:, j] = col

    if series_column:
        sid = frame[series_column].astype("string").str.strip()
        empty = np.asarray(sid.isna() | (sid == ""))
        if empty.any():
            problems.append(f"column {series_column!r}: series id is empty at row(s) {_listing(rows[empty])}")
        ids = sid.fillna("").to_numpy(dtype=object)
    else:
        ids = np.full(len(frame), p.name.split(".")[0], dtype=object)

    if problems:
        raise DataError(f"{len(problems)} problem(s) found", path=p, problems=problems)

    out: dict[str, TableSeries] = {}
    codes, uniques = pd.factorize(ids, sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    for k, name in enumerate(uniques):
        sel = order[bounds[k] : bounds[k + 1]]
        out[str(name)] = TableSeries(ts[sel], values[sel], rows[sel])
    return out


def infer_frequency(series: dict[str, TableSeries]) -> pd.Timedelta:
    """Median positive step across all series, rounded to the second."""
    steps = []
    for s in series.values():
        d = np.diff(np.sort(s.timestamps_ns))
        steps.append(d[d > 0])
    all_steps = np.concatenate(steps) if steps else np.array([])
    if all_steps.size == 0:
        raise DataError("cannot infer the sampling step from fewer than two distinct timestamps; pass --freq")
    return pd.Timedelta(seconds=max(1, round(float(np.median(all_steps)) / 1e9)))


def open_text(path: Path) -> io.TextIOBase:
    """Text handle for plain or gzip-compressed files."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")
