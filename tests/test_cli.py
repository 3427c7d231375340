"""The `harmony` command line, run as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HARMONY = [sys.executable, "-m", "harmony.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HARMONY, *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy())


def test_console_script_is_installed() -> None:
    exe = shutil.which("harmony", path=str(Path(sys.executable).parent))
    assert exe, "the `harmony` console script is not installed next to this Python"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("harmony ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["datasets"],
        ["datasets", "list"],
        ["datasets", "show"],
        ["datasets", "fetch"],
        ["datasets", "check"],
        ["train"],
        ["evaluate"],
        ["backtest"],
    ],
)
def test_help_on_every_command(args: list[str]) -> None:
    out = run(*args, "--help")
    assert out.returncode == 0
    assert "usage: harmony" in out.stdout and len(out.stdout.splitlines()) > 4


def test_list(data_root: Path) -> None:
    out = run("datasets", "list", "--data-dir", str(data_root))
    assert out.returncode == 0
    for name in (
        "fisher_containers",
        "bitbrains_rnd",
        "alibaba_gentd26",
        "azure_llm_inference_2023",
        "datacenter_google2019",
    ):
        assert name in out.stdout
    assert "not fetched" not in out.stdout


def test_show_with_plot(tmp_path: Path, data_root: Path) -> None:
    png = tmp_path / "plots" / "c1.png"
    out = run(
        "datasets",
        "show",
        "fisher_containers",
        "--series",
        "container1",
        "--plot",
        str(png),
        "--data-dir",
        str(data_root),
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "span         2018-07-24T00:00:00+00:00 .. 2018-08-23T23:50:00+00:00" in text
    assert "frequency    0 days 00:10:00  (600 s)" in text
    assert "load (5 load units per replica)" in text
    assert "cpu_cores" in text and "cores" in text and "counter resets" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["c1.png"]  # no temporary file left


def test_show_resampled_events(data_root: Path) -> None:
    out = run("datasets", "show", "azure_llm_inference_2023", "--freq", "1min", "--data-dir", str(data_root))
    assert out.returncode == 0, out.stderr
    assert "(60 s)" in out.stdout and "prompt_tokens_per_s" in out.stdout


def test_show_unknown_names(data_root: Path) -> None:
    out = run("datasets", "show", "fisher", "--data-dir", str(data_root))
    assert out.returncode == 2 and "unknown dataset 'fisher': no card " in out.stderr
    assert "datasets/fisher.yaml; known datasets: " in out.stderr  # where it looked
    out = run("datasets", "show", "nowhere/mine.yaml", "--data-dir", str(data_root))
    assert out.returncode == 2 and "dataset card not found (looked for /" in out.stderr
    out = run("datasets", "show", "fisher_containers", "--series", "c42", "--data-dir", str(data_root))
    assert out.returncode == 2 and "has no series ['c42']" in out.stderr
    assert "Traceback" not in out.stderr


def _cut(data_root: Path, dest: Path, n: int = 50) -> Path:
    with open(data_root / "fisher_containers" / "container2.csv", newline="") as fh:
        rows = list(csv.reader(fh))[: n + 1]
    with open(dest, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return dest


def test_check_good_file(tmp_path: Path, data_root: Path) -> None:
    path = _cut(data_root, tmp_path / "mine.csv")
    out = run(
        "datasets",
        "check",
        str(path),
        "--timestamp-column",
        "date",
        "--indicator",
        "load:req/s:1:demand:capacity=5",
        "--indicator",
        "cpu:cores:2:resource:counter:column=container_cpu_usage_seconds_total",
    )
    assert out.returncode == 0, out.stderr
    assert f"OK: {path} is usable." in out.stdout and "frequency    0 days 00:10:00" in out.stdout


def test_check_with_a_card(tmp_path: Path, data_root: Path) -> None:
    path = _cut(data_root, tmp_path / "mine.csv")
    card = tmp_path / "mine.yaml"
    card.write_text(
        "name: mine\nloader: table\nfrequency: 10min\nlicense: own data\nsource: my cluster\n"
        "options: {timestamp_column: date}\n"
        "indicators:\n  - {name: load, unit: req/s, level: 1, kind: demand, capacity_per_replica: 5}\n"
    )
    out = run("datasets", "check", str(path), "--card", str(card))
    assert out.returncode == 0, out.stderr
    # the same card, naming its file, shows it through the catalog like a public trace
    text = card.read_text().replace("options: {", "options: {path: mine.csv, ")
    card.write_text(text + f"directory: {tmp_path.name}\n")
    out = run("datasets", "show", str(card), "--data-dir", str(tmp_path.parent))
    assert out.returncode == 0, out.stderr
    assert "points       50 per indicator" in out.stdout


def test_check_explains_every_problem(tmp_path: Path, data_root: Path) -> None:
    path = _cut(data_root, tmp_path / "bad.csv")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "oops", 1)
    path.write_text("\n".join(lines) + "\n")
    out = run(
        "datasets",
        "check",
        str(path),
        "--timestamp-column",
        "date",
        "--indicator",
        "load:req/s:1:demand:capacity=5",
        "--indicator",
        "rss:bytes:2:resource:column=rsss",
    )
    assert out.returncode == 2
    assert "column 'rsss' not found" in out.stderr
    out = run(
        "datasets",
        "check",
        str(path),
        "--timestamp-column",
        "date",
        "--indicator",
        "load:req/s:1:demand:capacity=5",
    )
    assert out.returncode == 2 and "column 'load': not a number at row(s) 4 ('oops')" in out.stderr
    out = run("datasets", "check", str(path), "--indicator", "load:req/s")
    assert out.returncode == 2 and "expected NAME:UNIT:LEVEL:KIND" in out.stderr


def test_fetch_from_a_mirror_and_checksum_mismatch(tmp_path: Path, data_root: Path) -> None:
    dest = tmp_path / "data"
    out = run(
        "datasets",
        "fetch",
        "fisher_containers",
        "--mirror",
        str(data_root),
        "--data-dir",
        str(dest),
        "--quiet",
    )
    assert out.returncode == 0, out.stderr
    assert "fisher_containers: 11 downloaded, 0 already present and verified" in out.stdout
    assert (dest / "fisher_containers" / "container7.csv").read_bytes() == (
        data_root / "fisher_containers" / "container7.csv"
    ).read_bytes()
    mirror = tmp_path / "mirror" / "fisher_containers"
    shutil.copytree(data_root / "fisher_containers", mirror)
    (mirror / "container2.csv").chmod(0o644)
    data = bytearray((mirror / "container2.csv").read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("8")  # same size, different bytes
    (mirror / "container2.csv").write_bytes(bytes(data))
    out = run(
        "datasets",
        "fetch",
        "fisher_containers",
        "--mirror",
        str(tmp_path / "mirror"),
        "--data-dir",
        str(tmp_path / "other"),
        "--quiet",
    )
    assert out.returncode == 2 and "container2.csv" in out.stderr and "sha256" in out.stderr.lower()
    assert not (tmp_path / "other" / "fisher_containers" / "container2.csv").exists()
