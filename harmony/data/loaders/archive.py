"""Read a CSV member straight out of a .tar.gz archive: nothing is extracted to disk, so nothing is
left half-written when an archive is truncated."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import pandas as pd

from harmony.data.errors import DataError


def read_tar_csv(archive: Path, member: str | None = None) -> pd.DataFrame:
    """The CSV inside `archive` (`member`, default `<archive stem>.csv`); macOS `._*` files are skipped."""
    if not archive.exists():
        raise DataError("archive not found; fetch the dataset first", path=archive)
    name = member or archive.name.removesuffix(".tar.gz") + ".csv"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            found = None
            for info in tar:
                base = info.name.rsplit("/", 1)[-1]
                if info.isfile() and base == name:
                    found = info
                    break
            if found is None:
                raise DataError(f"archive has no member {name!r}", path=archive)
            fh = tar.extractfile(found)
            if fh is None:
                raise DataError(f"member {name!r} is not a regular file", path=archive)
            return pd.read_csv(fh, low_memory=False)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"not a readable .tar.gz archive (truncated or corrupt?): {exc}", path=archive
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"member {name!r} is not valid CSV: {exc}", path=archive) from None


def require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(frame.columns)}", path=where)
