"""Read a user's CSV or Parquet table of indicators, explaining every problem it has.

Row numbers in messages are the file's own: for CSV the header is row 1, so the first data row is row 2;
for Parquet the first record is row 1.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.errors import DataError
from harmony.data.spec import IndicatorSpec, Kind

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
        # Plain Python values: numpy scalars' repr would print np.float64(-5.0).
        plain = [v.item() if isinstance(v, np.generic) else v for v in values]
        shown = [f"{r} ({v!r})" for r, v in zip(shown, plain, strict=False)]
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
        with warnings.catch_warnings():
            # More fields in the rows than in the header: pandas would quietly take the first column as the
            # index and shift every name by one (index_col=False turns that into this warning).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                sep=delimiter,
                skipinitialspace=True,
                skip_blank_lines=False,
                low_memory=False,
                index_col=False,
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        raise DataError(_parser_message(exc, path, delimiter, header), path=path) from None
    except (UnicodeDecodeError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot parse as {delimiter!r}-separated text: {exc}", path=path) from None
    except pd.errors.EmptyDataError:
        raise DataError("file has no columns; expected a header row", path=path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame.columns) == 1 and any(d in frame.columns[0] for d in _DELIMITERS if d != delimiter):
        raise DataError(
            f"only one column {frame.columns[0]!r} with delimiter {delimiter!r}: wrong delimiter?", path=path
        )
    return frame, 2


_DECIMAL_COMMA = re.compile(r"\d,\d")


def _ragged_row(path: Path, delimiter: str) -> tuple[int, int, int] | None:
    """(row, its field count, the header's) of the first row whose field count differs from the header's."""
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter, skipinitialspace=True)
        width = None
        for k, fields in enumerate(reader, start=1):
            if width is None:
                width = len(fields)
            elif fields and len(fields) != width:
                return k, len(fields), width
    return None


def _parser_message(exc: Exception, path: Path, delimiter: str, header: str) -> str:
    """pandas' tokenizer error as a row, its field count and the likely cause."""
    found = _ragged_row(path, delimiter)
    if found is None:
        return f"cannot parse as {delimiter!r}-separated text: {exc}"
    line, saw, expected = found
    msg = (
        f"row {line} has {saw} fields but the header has {expected}; expected one value per column, "
        f"separated by {delimiter!r}"
    )
    if delimiter == "," and _DECIMAL_COMMA.search(header) is None:
        msg += (
            " (an unquoted decimal comma such as 1,5 splits a value in two: write decimal points, quote "
            "such values, or separate the columns with ';' and pass --delimiter ';')"
        )
    return msg


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


def _written_offset(raw: pd.Series) -> str:
    """The UTC offset the first timestamp is written with ("+02:00"), or "UTC" (none, Z, or epoch numbers)."""
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_datetime64_any_dtype(raw.dtype):
        return "UTC"
    text = raw.dropna().astype(str).str.strip()
    found = _TZ_SUFFIX.search(text.iloc[0]) if len(text) else None
    if found is None or found.group(0) == "Z":
        return "UTC"
    off = found.group(0).replace(":", "")
    return "UTC" if off in ("+0000", "-0000") else f"{off[:3]}:{off[3:]}"


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
    notes: list[str] | None = None,
    meta: dict[str, str] | None = None,
) -> dict[str, TableSeries]:
    """Read and validate a table; raise one DataError listing every problem found. Findings that do not
    stop the load (negative demand in a gauge, an indicator mostly empty) are appended to `notes`;
    `meta["display_timezone"]` gets the zone the file's times were written in (its --timezone, or the UTC
    offset its timestamps carry), for plots in the data's own local time."""
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
    if meta is not None:
        meta["display_timezone"] = timezone if timezone != "UTC" else _written_offset(frame[timestamp_column])

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
                shown = list(text[bad].iloc[:_MAX_LISTED])
                comma = any(_DECIMAL_COMMA.fullmatch(str(v).lstrip("-")) for v in shown)
                problems.append(
                    f"column {spec.source_column!r}: not a number at row(s) "
                    f"{_listing(rows[bad], shown)}; expected a decimal number"
                    + (" with a decimal point (1.5, not 1,5)" if comma else "")
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
        present = ~np.isnan(col)
        if not present.any():
            problems.append(
                f"column {spec.source_column!r}: empty in every row; expected numbers (is it the right "
                "column? leave the indicator out if the export has no values for it)"
            )
        elif notes is not None and present.mean() < 0.5:
            notes.append(
                f"column {spec.source_column!r} is empty in {int((~present).sum()):,} of "
                f"{present.size:,} rows"
            )
        if spec.kind is Kind.DEMAND and not spec.is_counter and notes is not None:
            neg = col < 0
            if neg.any():
                notes.append(
                    f"demand {spec.name!r} (column {spec.source_column!r}) is negative in {int(neg.sum()):,} "
                    f"row(s), e.g. row(s) {_listing(rows[neg], list(col[neg][:_MAX_LISTED]))}; a demand "
                    "below 0 needs no replica and is scored as 0: check the export"
                )
        values[:, j] = col

    if series_column:
        sid = frame[series_column].astype("string").str.strip()
        empty = np.asarray(sid.isna() | (sid == ""))
        if empty.any():
            problems.append(f"column {series_column!r}: series id is empty at row(s) {_listing(rows[empty])}")
        ids = sid.fillna("").to_numpy(dtype=object)
    else:
        used = [timestamp_column, *(s.source_column for s in indicators)]
        _check_one_series(frame, ts, rows, used, problems)
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


def _check_one_series(
    frame: pd.DataFrame, ts: np.ndarray, rows: np.ndarray, used: Sequence[str], problems: list[str]
) -> None:
    """Without a series column every row belongs to one series, and rows sharing a timestamp are merged
    (averaged). That is right for a repeated sample, and wrong when the rows are several series (pods, VMs)
    in one file: then a text column that differs between rows of the same timestamp names them, or, with no
    such column, many rows repeat their timestamp."""
    dup = pd.Series(ts).duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    shared = int(dup.sum())
    for name in frame.columns:
        if name in used or pd.api.types.is_numeric_dtype(frame[name].dtype):
            continue
        labels = frame[name].astype("string").str.strip()
        per_time = pd.DataFrame({"t": ts[dup], "v": labels[dup].to_numpy()}).dropna()
        varying = per_time.groupby("t")["v"].nunique()
        if (varying > 1).any():
            first = int(varying.index[varying.to_numpy() > 1][0])
            example = rows[dup][ts[dup] == first][:2]
            problems.append(
                f"{shared:,} rows share their timestamp with another row, and column {name!r} tells them "
                f"apart ({labels.nunique()} distinct values; e.g. rows {int(example[0])} and "
                f"{int(example[1])}): it looks like it names the series. Pass --series-column {name} "
                "(or options.series_column in a card); without one every row is taken as the same series "
                "and rows of the same timestamp are averaged"
            )
            return
    if shared > 0.1 * len(ts):
        problems.append(
            f"{shared:,} of {len(ts):,} rows share their timestamp with another row: several series in one "
            "file? Name the column that tells them apart with --series-column; without one, rows of the "
            "same timestamp are averaged"
        )


# Steps a monitoring system samples at: an inferred median step within STEP_SNAP of one of them is taken
# as that step (timestamps jitter around their schedule; a 301 s grid would drift off every 5-min point).
STANDARD_STEPS_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600)
STEP_SNAP = 0.05


def infer_frequency(series: dict[str, TableSeries], notes: list[str] | None = None) -> pd.Timedelta:
    """The median positive step across all series, rounded to the second, or the standard step it is within
    5% of (said in `notes`, with the spread of the steps, so that the choice is never silent)."""
    steps = []
    for s in series.values():
        d = np.diff(np.sort(s.timestamps_ns))
        steps.append(d[d > 0])
    all_steps = np.concatenate(steps) if steps else np.array([])
    if all_steps.size == 0:
        raise DataError("cannot infer the sampling step from fewer than two distinct timestamps; pass --freq")
    median_s = float(np.median(all_steps)) / 1e9
    near = min(STANDARD_STEPS_S, key=lambda std: abs(std - median_s))
    if abs(near - median_s) <= STEP_SNAP * near:
        step = pd.Timedelta(seconds=near)
        lo, hi = (float(v) / 1e9 for v in np.quantile(all_steps, [0.05, 0.95]))
        if median_s != near and notes is not None:  # jittered: say so; an exact schedule needs no word
            notes.append(
                f"sampling step taken as {_step_text(near)}: the median step between rows is "
                f"{median_s:.4g} s (5-95% of steps {lo:.4g}..{hi:.4g} s); each row goes to its nearest "
                "grid point. Pass --freq (frequency: in a card) for another step"
            )
        return step
    return pd.Timedelta(seconds=max(1, round(median_s)))


def _step_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}min"
    return f"{seconds}s"


def open_text(path: Path) -> io.TextIOBase:
    """Text handle for plain or gzip-compressed files."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")
