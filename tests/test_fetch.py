"""`fetch_dataset` against a real local HTTP server that serves the staged traces and can misbehave."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harmony.data import fetch
from harmony.data.catalog import get_card
from harmony.data.errors import ChecksumError, DataError
from harmony.data.fetch import FetchResult, fetch_dataset
from harmony.data.spec import DataFile, DatasetCard

KB = 1024


@pytest.fixture(scope="module")
def staged() -> Path:
    root = os.environ.get("HARMONY_DATA_DIR")
    if not root or not Path(root).is_dir():
        pytest.fail(
            "HARMONY_DATA_DIR must point at the staged traces (make test sets it to ../shared/datasets); "
            f"got {root!r}",
            pytrace=False,
        )
    return Path(root)


class FileServer(ThreadingHTTPServer):
    """Serves files from `roots` (first match wins), honours `Range: bytes=N-`, and logs every request.

    Misbehaviour switches, keyed by URL path ("/fisher_containers/container1.csv"):
    - corrupt: serve the file with one byte flipped;
    - drop[path] = [K, N]: announce the full Content-Length but close after K bytes, on the next N requests;
    - no_range: answer 200 with the whole file even when asked for a range.
    """

    daemon_threads = True

    def __init__(self, roots: list[Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.roots = roots
        self.corrupt: set[str] = set()
        self.drop: dict[str, list[int]] = {}
        self.no_range: set[str] = set()
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def find(self, path: str) -> Path | None:
        rel = path.lstrip("/")
        for root in self.roots:
            candidate = root / rel
            if rel and candidate.is_file():
                return candidate
        return None

    def requests_for(self, path: str) -> list[str | None]:
        """The Range headers of the requests for `path` (None: no Range), in order."""
        with self.lock:
            return [rng for p, rng in self.log if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        rng = self.headers.get("Range")
        with srv.lock:
            srv.log.append((path, rng))
        found = srv.find(path)
        if found is None:
            self.send_error(404)
            return
        data = bytearray(found.read_bytes())
        if path in srv.corrupt:
            data[len(data) // 2] ^= 0x01
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and path not in srv.no_range:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                self.send_error(416)
                return
        body = bytes(data[start:])
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut: int | None = None
        with srv.lock:
            rule = srv.drop.get(path)
            if rule is not None and rule[1] > 0:
                rule[1] -= 1
                cut = rule[0]
        try:
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True  # the client sees a short body, as from a broken link
                return
            self.wfile.write(body)
        except ConnectionError:
            pass  # the client gave up; nothing to serve


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    d = tmp_path / "served"
    d.mkdir()
    return d


@pytest.fixture
def server(staged: Path, wheel_dir: Path) -> Iterator[FileServer]:
    srv = FileServer([wheel_dir, staged])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "_RETRY_DELAY_S", 0.0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_files(card: DatasetCard) -> list[DataFile]:
    return [f for f in card.files if f.sha256 is not None]


def parts_under(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


def assert_complete(card: DatasetCard, dest_root: Path, staged: Path, result: FetchResult) -> None:
    files = verified_files(card)
    assert files, f"card {card.name} lists no file with a sha256"
    assert result.dataset == card.name
    assert result.directory == dest_root / card.directory
    assert result.downloaded == [f.path for f in files]
    assert result.skipped == [] and result.unverified == []
    for f in files:
        got = (dest_root / card.directory / f.path).read_bytes()
        assert got == (staged / card.directory / f.path).read_bytes(), f.path
        assert sha256(got) == f.sha256
    assert result.bytes_downloaded == sum((staged / card.directory / f.path).stat().st_size for f in files)
    assert parts_under(dest_root) == []


# 1 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fisher_containers", "alibaba_gentd26_requests"])
def test_mirror_fetch_writes_every_checksummed_file(
    name: str, server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card(name)
    dest = tmp_path / "data"
    result = fetch_dataset(card, dest, mirror=server.url + "/", progress=False)
    assert_complete(card, dest, staged, result)
    # One plain request per file: nothing was fetched twice or with a Range.
    for f in verified_files(card):
        assert server.requests_for(f"/{card.directory}/{f.path}") == [None]


def test_mirror_may_be_a_local_folder(staged: Path, tmp_path: Path) -> None:
    card = get_card("fisher_containers")
    result = fetch_dataset(card, tmp_path, mirror=str(staged), progress=False)
    assert_complete(card, tmp_path, staged, result)


# 2 -------------------------------------------------------------------------------------------------------


def test_second_run_skips_everything_without_network(
    server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    seen = len(server.log)
    again = fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert again.downloaded == [] and again.unverified == []
    assert again.skipped == [f.path for f in verified_files(card)]
    assert again.bytes_downloaded == 0
    assert len(server.log) == seen, server.log[seen:]


# 3 -------------------------------------------------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing_for_that_file(
    server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    names = [f.path for f in card.files]
    bad = card.files[2]
    assert bad.path == "container3.csv" and bad.sha256 is not None
    server.corrupt.add(f"/{card.directory}/{bad.path}")
    corrupted = bytearray((staged / card.directory / bad.path).read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01

    with pytest.raises(ChecksumError) as err:
        fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    msg = str(err.value)
    assert "container3.csv" in msg
    assert bad.sha256 in msg and sha256(bytes(corrupted)) in msg
    assert f"{server.url}/{card.directory}/{bad.path}" in msg

    folder = tmp_path / card.directory
    assert not (folder / bad.path).exists()
    assert parts_under(tmp_path) == []
    for earlier in names[:2]:
        assert (folder / earlier).read_bytes() == (staged / card.directory / earlier).read_bytes()
    for later in names[3:]:
        assert not (folder / later).exists()


# 4 -------------------------------------------------------------------------------------------------------


def test_broken_connection_resumes_with_range(server: FileServer, staged: Path, tmp_path: Path) -> None:
    card = get_card("fisher_containers")
    path = f"/{card.directory}/container1.csv"
    server.drop[path] = [100 * KB, 1]
    result = fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert server.requests_for(path) == [None, f"bytes={100 * KB}-"]
    assert_complete(card, tmp_path, staged, result)  # also: the resumed bytes were not counted twice


def test_server_that_ignores_range_restarts_from_scratch(
    server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    path = f"/{card.directory}/container1.csv"
    server.drop[path] = [100 * KB, 1]
    server.no_range.add(path)
    result = fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert server.requests_for(path) == [None, f"bytes={100 * KB}-"]
    target = tmp_path / card.directory / "container1.csv"
    assert target.read_bytes() == (staged / path.lstrip("/")).read_bytes()
    full = sum((staged / card.directory / f.path).stat().st_size for f in card.files)
    assert result.bytes_downloaded == full + 100 * KB  # the first 100 KB came twice
    assert parts_under(tmp_path) == []


# 5 -------------------------------------------------------------------------------------------------------


def test_connection_that_always_breaks_gives_up(server: FileServer, tmp_path: Path) -> None:
    card = get_card("fisher_containers")
    path = f"/{card.directory}/container1.csv"
    server.drop[path] = [1000, 1_000_000]
    with pytest.raises(DataError) as err:
        fetch_dataset(card, tmp_path, mirror=server.url, progress=False, retries=2)
    assert not isinstance(err.value, ChecksumError)
    msg = str(err.value)
    assert "container1.csv" in msg and f"{server.url}{path}" in msg and "3 attempt" in msg
    assert "connection closed after" in msg  # the last error is named
    # Every try resumed where the previous one stopped.
    assert server.requests_for(path) == [None, "bytes=1000-", "bytes=2000-"]
    assert not (tmp_path / card.directory / "container1.csv").exists()
    assert parts_under(tmp_path) == []


def test_keyboard_interrupt_removes_the_part(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = get_card("fisher_containers")
    card = dataclasses.replace(card, files=card.files[:1])
    real_sleep = time.sleep
    calls: list[float] = []

    def interrupt(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            real_sleep(seconds)
            return
        calls.append(seconds)
        raise KeyboardInterrupt

    server.drop[f"/{card.directory}/container1.csv"] = [50 * KB, 1]
    # Ctrl-C while waiting to retry, when 50 KB lie in the .part.
    monkeypatch.setattr(time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert len(calls) == 1
    assert parts_under(tmp_path) == []
    assert not (tmp_path / card.directory / "container1.csv").exists()


# 6 -------------------------------------------------------------------------------------------------------


def test_corrupted_final_file_is_downloaded_again_and_force_redownloads(
    server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    names = [f.path for f in verified_files(card)]
    fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    target = tmp_path / card.directory / "container2.csv"
    good = target.read_bytes()
    target.write_bytes(good[:-10] + b"XXXXXXXXXX")

    seen = len(server.log)
    again = fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert again.downloaded == ["container2.csv"]
    assert again.skipped == [n for n in names if n != "container2.csv"]
    assert again.bytes_downloaded == len(good)
    assert target.read_bytes() == good
    assert [p for p, _ in server.log[seen:]] == [f"/{card.directory}/container2.csv"]

    seen = len(server.log)
    forced = fetch_dataset(card, tmp_path, mirror=server.url, progress=False, force=True)
    assert_complete(card, tmp_path, staged, forced)
    assert sorted(p for p, _ in server.log[seen:]) == sorted(f"/{card.directory}/{n}" for n in names)


# 7 -------------------------------------------------------------------------------------------------------


def _fake_wheel(where: Path) -> tuple[Path, dict[str, bytes]]:
    members = {
        "pkg/a/x.csv": b"t,cpu\n" + b"".join(b"%d,%d.5\n" % (i, i % 97) for i in range(5000)),
        "pkg/a/y.csv": b"t,mem\n1,2\n3,4\n",
    }
    wheel = where / "x.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    return wheel, members


def test_member_is_extracted_from_an_archive_downloaded_once(
    server: FileServer, wheel_dir: Path, tmp_path: Path
) -> None:
    wheel, members = _fake_wheel(wheel_dir)
    digest = sha256(wheel.read_bytes())
    url = f"{server.url}/x.whl"
    files = (
        DataFile(path="a/x.csv.gz", url=url, member="pkg/a/x.csv", archive_sha256=digest),
        DataFile(path="a/y.csv", url=url, member="pkg/a/y.csv", archive_sha256=digest),
    )
    card = dataclasses.replace(get_card("datacenter_alibaba2018"), files=files)
    dest = tmp_path / "data"
    result = fetch_dataset(card, dest, progress=False)

    assert result.downloaded == ["a/x.csv.gz", "a/y.csv"]
    assert result.unverified == [] and result.skipped == []
    assert server.requests_for("/x.whl") == [None]  # one download for both members
    assert result.bytes_downloaded == wheel.stat().st_size
    folder = dest / card.directory
    gz = (folder / "a/x.csv.gz").read_bytes()
    assert gzip.decompress(gz) == members["pkg/a/x.csv"]
    assert gz[4:8] == b"\0\0\0\0"  # mtime 0: the output does not depend on when it was made
    assert (folder / "a/y.csv").read_bytes() == members["pkg/a/y.csv"]
    assert parts_under(dest) == [] and not list(folder.glob(".fetch-*"))  # temporary archive removed

    # Deterministic: extracting again gives the same bytes.
    fetch_dataset(card, dest, progress=False, force=True)
    assert (folder / "a/x.csv.gz").read_bytes() == gz


def test_member_output_matches_the_staged_gzip_layout(staged: Path, tmp_path: Path) -> None:
    """Re-compressing a staged .csv.gz's content reproduces its bytes, so a later run can skip by sha256."""
    card = get_card("datacenter_alibaba2018")
    f = next(x for x in card.files if x.path.endswith("300_seconds.csv.gz"))
    src = tmp_path / "m.csv"
    src.write_bytes(gzip.decompress((staged / card.directory / f.path).read_bytes()))
    out = tmp_path / "m.csv.gz"
    with open(src, "rb") as s, open(out, "wb") as d:
        fetch._gzip_copy(s, d)
    assert gzip.decompress(out.read_bytes()) == src.read_bytes()
    assert sha256(out.read_bytes()) == f.sha256


def test_pip_spec_is_fetched_with_pip_download_offline(
    wheel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `pip:` route, run against a local wheel folder (no index, no network)."""
    wheel = wheel_dir / "fakepkg-1.0-py3-none-any.whl"
    data = b"t,v\n1,2\n3,4\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakepkg/a/x.csv", data)
        zf.writestr("fakepkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
        zf.writestr(
            "fakepkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr("fakepkg-1.0.dist-info/RECORD", "")
    for key, value in {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheel_dir),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }.items():
        monkeypatch.setenv(key, value)
    digest = sha256(wheel.read_bytes())
    spec = "pip:fakepkg==1.0"
    files = (
        DataFile(path="x.csv.gz", url=spec, member="fakepkg/a/x.csv", archive_sha256=digest),
        DataFile(path="x.csv", url=spec, member="fakepkg/a/x.csv", archive_sha256=digest),
    )
    card = dataclasses.replace(get_card("datacenter_alibaba2018"), files=files)
    result = fetch_dataset(card, tmp_path, progress=False)
    assert result.downloaded == ["x.csv.gz", "x.csv"] and result.unverified == []
    assert result.bytes_downloaded == wheel.stat().st_size  # pip ran once for both
    folder = tmp_path / card.directory
    assert gzip.decompress((folder / "x.csv.gz").read_bytes()) == data
    assert (folder / "x.csv").read_bytes() == data

    missing = dataclasses.replace(card, files=(dataclasses.replace(files[0], url="pip:fakepkg==9.9"),))
    with pytest.raises(DataError, match=r"pip download fakepkg==9.9"):
        fetch_dataset(missing, tmp_path / "again", progress=False)


def test_wrong_archive_checksum_raises(server: FileServer, wheel_dir: Path, tmp_path: Path) -> None:
    wheel, _ = _fake_wheel(wheel_dir)
    real = sha256(wheel.read_bytes())
    wrong = "0" * 64
    url = f"{server.url}/x.whl"
    files = (DataFile(path="a/x.csv.gz", url=url, member="pkg/a/x.csv", archive_sha256=wrong),)
    card = dataclasses.replace(get_card("datacenter_alibaba2018"), files=files)
    with pytest.raises(ChecksumError) as err:
        fetch_dataset(card, tmp_path, progress=False)
    msg = str(err.value)
    assert "a/x.csv.gz" in msg and url in msg and wrong in msg and real in msg
    assert not (tmp_path / card.directory / "a/x.csv.gz").exists()
    assert parts_under(tmp_path) == []


def test_missing_member_is_a_clear_error(server: FileServer, wheel_dir: Path, tmp_path: Path) -> None:
    _fake_wheel(wheel_dir)
    files = (DataFile(path="a/z.csv", url=f"{server.url}/x.whl", member="pkg/a/z.csv"),)
    card = dataclasses.replace(get_card("datacenter_alibaba2018"), files=files)
    with pytest.raises(DataError, match=r"no member 'pkg/a/z.csv'"):
        fetch_dataset(card, tmp_path, progress=False)
    assert not (tmp_path / card.directory / "a/z.csv").exists()
    assert parts_under(tmp_path) == []


# 8 -------------------------------------------------------------------------------------------------------


def test_file_without_checksum_is_written_and_reported_unverified(
    server: FileServer, staged: Path, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    level = next(f for f in card.files if f.path == "level.npy")
    files = (
        DataFile(path="extra/level.npy", url=f"{server.url}/fisher_containers/level.npy"),  # public only
        dataclasses.replace(level, url=None),  # mirror only
    )
    card = dataclasses.replace(card, files=files)
    staged_bytes = (staged / "fisher_containers/level.npy").read_bytes()

    result = fetch_dataset(card, tmp_path / "public", progress=False)
    assert result.downloaded == ["extra/level.npy"]
    assert result.unverified == ["extra/level.npy"]
    assert result.skipped == []
    folder = tmp_path / "public" / card.directory
    assert (folder / "extra/level.npy").read_bytes() == staged_bytes
    assert not (folder / "level.npy").exists()
    # It cannot be shown to be right, so a second run downloads it again (and says so).
    again = fetch_dataset(card, tmp_path / "public", progress=False)
    assert again.downloaded == again.unverified == ["extra/level.npy"]

    # With a mirror only the checksummed entry counts: the url-only one is left out silently.
    mirrored = fetch_dataset(card, tmp_path / "mirror", mirror=server.url, progress=False)
    assert mirrored.downloaded == ["level.npy"] and mirrored.unverified == []
    assert not (tmp_path / "mirror" / card.directory / "extra").exists()
    assert server.requests_for("/fisher_containers/extra/level.npy") == []


# size, progress -----------------------------------------------------------------------------------------


def test_content_length_disagreeing_with_card_size_fails_before_writing(
    server: FileServer, tmp_path: Path
) -> None:
    card = get_card("fisher_containers")
    f = dataclasses.replace(card.files[0], size=123)
    card = dataclasses.replace(card, files=(f,))
    with pytest.raises(DataError, match=r"Content-Length") as err:
        fetch_dataset(card, tmp_path, mirror=server.url, progress=False)
    assert "container1.csv" in str(err.value) and "123" in str(err.value)
    assert not (tmp_path / card.directory / "container1.csv").exists()
    assert parts_under(tmp_path) == []


def test_progress_goes_to_stderr_only_when_asked(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = get_card("fisher_containers")
    card = dataclasses.replace(card, files=card.files[-1:])  # level.npy, tiny
    fetch_dataset(card, tmp_path / "quiet", mirror=server.url, progress=False)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    fetch_dataset(card, tmp_path / "loud", mirror=server.url, progress=True)
    loud = capsys.readouterr()
    assert loud.out == "" and "level.npy" in loud.err
