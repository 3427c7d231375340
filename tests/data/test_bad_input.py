"""Bad input: every case gives an error naming the file, row or column and what was expected, or is
repaired by the documented rule and reported. Fixtures are cut from the real traces at test time."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony.data.catalog import load
from harmony.data.errors import CardError, DataError
from harmony.data.loaders.table import load_table
from harmony.data.spec import Binning, CleaningRules, card_from_dict, parse_indicator_arg

LOAD = parse_indicator_arg("load:load units:1:demand:capacity=5")
CPU = parse_indicator_arg("cpu:ns/s:2:resource:counter:column=container_cpu_usage_seconds_total")
MEM = parse_indicator_arg("mem:bytes:2:resource:column=container_memory_rss")


@pytest.fixture()
def rows(data_root: Path) -> list[list[str]]:
    """Header + first 60 rows of the real Fisher container1.csv."""
    with open(data_root / "fisher_containers" / "container1.csv", newline="") as fh:
        return list(csv.reader(fh))[:61]


def write(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def col(rows: list[list[str]], name: str) -> int:
    return rows[0].index(name)


def check(path: Path, *inds, **kw):  # type: ignore[no-untyped-def]
    return load_table(path, indicators=list(inds) or [LOAD], timestamp_column="date", **kw)


def test_a_clean_cut_loads(tmp_path: Path, rows: list[list[str]]) -> None:
    trace = check(write(tmp_path / "ok.csv", rows), LOAD, CPU, MEM)
    frame = trace["ok"]
    assert len(frame) == 60 and trace.frequency == pd.Timedelta("10min")  # inferred
    assert frame["load"].iloc[0] == float(rows[1][col(rows, "load")])


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e\.csv: file is empty; expected a header row"):
        check(tmp_path / "e.csv")


def test_header_only(tmp_path: Path, rows: list[list[str]]) -> None:
    with pytest.raises(DataError, match=r"h\.csv: file has a header but no data rows"):
        check(write(tmp_path / "h.csv", rows[:1]))


def test_wrong_delimiter(tmp_path: Path, rows: list[list[str]]) -> None:
    path = write(tmp_path / "semi.csv", rows, delimiter=";")
    with pytest.raises(
        DataError, match=r"semi\.csv, row 1: wrong delimiter: the header has no ',' but .* ';'"
    ):
        check(path, delimiter=",")
    assert len(check(path)["semi"]) == 60  # detected when not forced


@pytest.mark.parametrize(("asked", "hint"), [("lod", "did you mean 'load'"), ("latency", "")])
def test_missing_or_misspelled_column(tmp_path: Path, rows: list[list[str]], asked: str, hint: str) -> None:
    spec = parse_indicator_arg(f"{asked}:u:1:demand:capacity=1")
    with pytest.raises(DataError) as err:
        check(write(tmp_path / "m.csv", rows), spec)
    msg = str(err.value)
    assert f"column '{asked}' not found" in msg and hint in msg and "'load'" in msg  # lists real columns


def test_non_numeric_cells_are_all_listed(tmp_path: Path, rows: list[list[str]]) -> None:
    rows[5][col(rows, "load")] = "abc"
    rows[9][col(rows, "load")] = "1,5"
    rows[7][col(rows, "container_memory_rss")] = "12GB"
    with pytest.raises(DataError) as err:
        check(write(tmp_path / "n.csv", rows), LOAD, MEM)
    msg = str(err.value)
    assert "n.csv: 2 problem(s) found" in msg
    assert "column 'load': not a number at row(s) 6 ('abc'), 10 ('1,5')" in msg
    assert "column 'container_memory_rss': not a number at row(s) 8 ('12GB')" in msg


def test_nan_is_missing_and_filled_inf_is_an_error(tmp_path: Path, rows: list[list[str]]) -> None:
    rows[4][col(rows, "load")] = ""
    rows[6][col(rows, "load")] = "NaN"
    trace = check(write(tmp_path / "nan.csv", rows))
    rep = trace.reports["nan"]
    assert rep.missing_cells == 2 and rep.filled_points == 2
    prev, nxt = float(rows[3][1]), float(rows[5][1])
    assert trace["nan"]["load"].iloc[3] == pytest.approx((prev + nxt) / 2)
    rows[8][col(rows, "load")] = "inf"
    with pytest.raises(
        DataError, match=r"column 'load': infinite value at row\(s\) 9; expected a finite number"
    ):
        check(write(tmp_path / "inf.csv", rows))


def test_unsorted_and_duplicated_timestamps_are_repaired_and_reported(
    tmp_path: Path, rows: list[list[str]]
) -> None:
    body = rows[1:]
    shuffled = [rows[0], *body[10:20], *body[:10], *body[20:], body[30]]  # one block moved, one duplicate
    trace = check(write(tmp_path / "u.csv", shuffled))
    rep = trace.reports["u"]
    assert rep.out_of_order == 2 and rep.duplicates_merged == 1
    assert len(trace["u"]) == 60
    assert trace["u"]["load"].tolist() == [float(r[1]) for r in body]


def test_mixed_time_zones(tmp_path: Path, rows: list[list[str]]) -> None:
    rows[3][0] = rows[3][0].replace(" ", "T") + "+02:00"
    with pytest.raises(
        DataError, match=r"mixed time zones: row\(s\) 4 carry a UTC offset but row\(s\) 2, 3, 5"
    ):
        check(write(tmp_path / "tz.csv", rows))


def test_offsets_and_local_zone_become_utc(tmp_path: Path, rows: list[list[str]]) -> None:
    trace = check(write(tmp_path / "local.csv", rows), timezone="Europe/Amsterdam")
    assert trace["local"].index[0] == pd.Timestamp("2018-07-23 22:00", tz="UTC")  # CEST = UTC+2


def test_bad_timestamp_cell(tmp_path: Path, rows: list[list[str]]) -> None:
    rows[2][0] = "yesterday"
    with pytest.raises(
        DataError, match=r"timestamp not understood at row\(s\) 3 \('yesterday'\); expected ISO 8601"
    ):
        check(write(tmp_path / "ts.csv", rows))


def test_negative_counter_and_reset(tmp_path: Path, rows: list[list[str]]) -> None:
    c = col(rows, "container_cpu_usage_seconds_total")
    rows[10][c] = "-5"
    with pytest.raises(
        DataError, match=r"column 'container_cpu_usage_seconds_total': counter is negative at row\(s\) 11"
    ):
        check(write(tmp_path / "neg.csv", rows), LOAD, CPU)
    rows[10][c] = "1000"  # a drop: the counter was reset
    trace = check(write(tmp_path / "reset.csv", rows), LOAD, CPU)
    assert trace.reports["reset"].counter_resets == 1


def test_series_column_and_empty_series_id(tmp_path: Path, rows: list[list[str]]) -> None:
    rows = [[*r, "pod-a" if k % 2 else "pod-b"] for k, r in enumerate(rows)]
    rows[0][-1] = "pod"
    trace = check(write(tmp_path / "s.csv", rows), series_column="pod")
    assert trace.series_ids == ["pod-a", "pod-b"] and trace.frequency == pd.Timedelta("20min")
    rows[7][-1] = ""
    with pytest.raises(DataError, match=r"column 'pod': series id is empty at row\(s\) 8"):
        check(write(tmp_path / "s2.csv", rows), series_column="pod")


def test_truncated_parquet(tmp_path: Path, data_root: Path) -> None:
    folder = tmp_path / "bitbrains_rnd"
    folder.mkdir()
    for m in ("07", "08", "09"):
        src = data_root / "bitbrains_rnd" / f"bitbrains_rnd_2013-{m}.parquet"
        with open(src, "rb") as fh:
            (folder / src.name).write_bytes(fh.read(200_000))
    with pytest.raises(DataError, match=r"bitbrains_rnd_2013-07\.parquet: not a readable Parquet file"):
        load("bitbrains_rnd", root=tmp_path, series=["1"])
    frame = pd.DataFrame({"date": ["2024-01-01T00:00Z"], "load": [1.0]})
    frame.to_parquet(tmp_path / "user.parquet")
    data = (tmp_path / "user.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.parquet: not a readable Parquet file"):
        check(tmp_path / "cut.parquet")


def test_truncated_tar_gz(tmp_path: Path, data_root: Path) -> None:
    raw = tmp_path / "alibaba_gentd26" / "raw"
    raw.mkdir(parents=True)
    for src in (data_root / "alibaba_gentd26" / "raw").iterdir():
        shutil.copy(src, raw / src.name)
    data = (raw / "pod_gpu_duty_cycle_anon.tar.gz").read_bytes()
    (raw / "pod_gpu_duty_cycle_anon.tar.gz").write_bytes(data[: len(data) // 3])
    with pytest.raises(
        DataError, match=r"pod_gpu_duty_cycle_anon\.tar\.gz: not a readable \.tar\.gz archive"
    ):
        load("alibaba_gentd26", root=tmp_path)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"dataset folder not found; run `harmony datasets fetch fisher_containers`"
    ):
        load("fisher_containers", root=tmp_path)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"colour": 1}, r"card: unknown field\(s\) \['colour'\]"),
        ({"frequency": "often"}, r"frequency: expected a duration such as '300s'"),
        (
            {"indicators": [{"name": "x", "unit": "u", "level": 1, "kind": "demand"}]},
            r"indicators\[0\]: demand indicator 'x' needs capacity_per_replica > 0",
        ),
        (
            {"indicators": [{"name": "x", "unit": "u", "level": "two", "kind": "demand"}]},
            r"indicators\[0\]\.level: expected an integer >= 1, got 'two'",
        ),
        (
            {"indicators": [{"name": "x", "unit": "u", "level": 1, "kind": "supply"}]},
            r"indicators\[0\]\.kind: expected one of 'demand', 'resource', 'context', got 'supply'",
        ),
        ({"files": [{"path": "a.csv", "sha256": "abc"}]}, r"files\[0\]\.sha256: expected 64 lowercase hex"),
        (
            {"indicators": [{"name": "x", "unit": "u", "level": 1, "kind": "resource"}]},
            r"at least one demand indicator",
        ),
        (
            {"cleaning": {"binning": "centre"}},
            r"cleaning\.binning: expected one of 'nearest', 'left', got 'centre'",
        ),
    ],
)
def test_bad_card(patch: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "name": "mine",
        "loader": "table",
        "frequency": "1min",
        "license": "mine",
        "source": "me",
        "indicators": [
            {"name": "rps", "unit": "req/s", "level": 1, "kind": "demand", "capacity_per_replica": 5}
        ],
    }
    card_from_dict(base, Path("mine.yaml"))  # the base is valid
    with pytest.raises(CardError, match=message) as err:
        card_from_dict({**base, **patch}, Path("mine.yaml"))
    assert str(err.value).startswith("mine.yaml: ")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.integers(min_value=1, max_value=60),
    junk=st.text(alphabet="abcxyz%#@!", min_size=1, max_size=6),
)
def test_any_junk_cell_is_named(tmp_path: Path, rows: list[list[str]], row: int, junk: str) -> None:
    bad = [list(r) for r in rows]
    bad[row][col(bad, "container_memory_rss")] = junk
    if junk.strip().lower() in ("nan", "na"):
        return
    with pytest.raises(DataError) as err:
        check(write(tmp_path / "junk.csv", bad), LOAD, MEM)
    assert f"column 'container_memory_rss': not a number at row(s) {row + 1} ({junk.strip()!r})" in str(
        err.value
    )


# --- frictions met on unseen traces (issue 20) ---------------------------------------------------------------


def _two_containers(data_root: Path, label: bool) -> list[list[str]]:
    """The first 30 rows of the real container1.csv and container2.csv in one file (the same timestamps),
    with a `container` column naming each row's container when `label`."""
    out: list[list[str]] = []
    for name in ("container1", "container2"):
        with open(data_root / "fisher_containers" / f"{name}.csv", newline="") as fh:
            got = list(csv.reader(fh))[:31]
        if not out:
            out.append([*got[0], "container"] if label else got[0])
        out.extend([*r, name] if label else r for r in got[1:])
    return out


def test_several_series_without_a_series_column_is_an_error(tmp_path: Path, data_root: Path) -> None:
    path = write(tmp_path / "two.csv", _two_containers(data_root, label=True))
    with pytest.raises(DataError) as err:
        check(path)
    msg = str(err.value)
    assert "60 rows share their timestamp with another row" in msg
    assert "column 'container' tells them apart (2 distinct values; e.g. rows 2 and 32)" in msg
    assert "Pass --series-column container" in msg
    trace = check(path, series_column="container")
    assert trace.series_ids == ["container1", "container2"] and len(trace["container2"]) == 30
    unlabelled = write(tmp_path / "bare.csv", _two_containers(data_root, label=False))
    with pytest.raises(DataError, match=r"60 of 60 rows share their timestamp .* --series-column"):
        check(unlabelled)


def test_an_empty_indicator_is_an_error(tmp_path: Path, rows: list[list[str]]) -> None:
    c = col(rows, "container_memory_rss")
    for r in rows[1:]:
        r[c] = ""
    with pytest.raises(
        DataError, match=r"column 'container_memory_rss': empty in every row; expected numbers"
    ):
        check(write(tmp_path / "empty.csv", rows), LOAD, MEM)


def test_negative_demand_in_a_gauge_is_a_warning(tmp_path: Path, rows: list[list[str]]) -> None:
    busy = parse_indicator_arg("cpu:%:1:demand:capacity=70:column=cpu.busy")
    rows[5][col(rows, "cpu.busy")] = "-5"
    trace = check(write(tmp_path / "neg.csv", rows), busy)
    assert len(trace.notes) == 1
    assert "demand 'cpu' (column 'cpu.busy') is negative in 1 row(s), e.g. row(s) 6 (-5.0)" in trace.notes[0]


def test_negative_counter_message_prints_plain_numbers(tmp_path: Path, rows: list[list[str]]) -> None:
    rows[10][col(rows, "container_cpu_usage_seconds_total")] = "-5"
    with pytest.raises(DataError) as err:
        check(write(tmp_path / "neg.csv", rows), LOAD, CPU)
    assert "row(s) 11 (-5.0)" in str(err.value) and "np.float64" not in str(err.value)


def test_decimal_comma(tmp_path: Path, rows: list[list[str]]) -> None:
    c = col(rows, "load")
    unquoted = tmp_path / "comma.csv"
    lines = [",".join(rows[0])] + [
        ",".join(v.replace(".", ",") if k == c else v for k, v in enumerate(r)) for r in rows[1:]
    ]
    unquoted.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        check(unquoted)
    msg = str(err.value)
    assert "row 2 has 13 fields but the header has 12" in msg and "unquoted decimal comma" in msg
    semi = write(
        tmp_path / "semi.csv",
        [[v.replace(".", ",") if k == c else v for k, v in enumerate(r)] for r in rows],
        ";",
    )
    with pytest.raises(
        DataError, match=r"not a number at row\(s\) 2 \('1,88'\).*decimal point \(1\.5, not 1,5\)"
    ):
        check(semi)


def test_jittered_timestamps_keep_the_standard_step(tmp_path: Path, rows: list[list[str]]) -> None:
    """Timestamps of the real 10-min export moved by up to +-40 s (as a scraper's are): the step inferred is
    10 min, not the median's 601 s, it is said in a note, and every row lands on its own grid point."""
    shifts = np.random.default_rng(0).integers(-40, 41, size=len(rows) - 1)
    jittered = [rows[0]]
    for r, shift in zip(rows[1:], shifts, strict=True):
        t = pd.Timestamp(r[0]) + pd.Timedelta(seconds=int(shift))
        jittered.append([t.strftime("%Y-%m-%d %H:%M:%S"), *r[1:]])
    trace = check(write(tmp_path / "jit.csv", jittered))
    assert trace.frequency == pd.Timedelta("10min")
    (note,) = trace.notes
    assert note.startswith("sampling step taken as 10min: the median step between rows is ")
    rep = trace.reports["jit"]
    assert rep.duplicates_merged == 0 and rep.gap_points == 0 and len(trace["jit"]) == 60
    assert trace["jit"]["load"].tolist() == [float(r[1]) for r in rows[1:]]
    clean = check(write(tmp_path / "clean.csv", rows))
    assert clean.notes == ()  # an exact schedule needs no note


def _late(rows: list[list[str]]) -> list[list[str]]:
    """The rows with their timestamps moved late by known offsets, as a scraper that samples within each
    step: +40 s for the even rows (0, 2, ...), +340 s for the odd ones; every row stays inside its own
    10-minute step."""
    out = [rows[0]]
    for k, r in enumerate(rows[1:]):
        t = pd.Timestamp(r[0]) + pd.Timedelta(seconds=40 if k % 2 == 0 else 340)
        out.append([t.strftime("%Y-%m-%d %H:%M:%S"), *r[1:]])
    return out


def test_left_binning_keeps_each_late_row_in_its_step(tmp_path: Path, rows: list[list[str]]) -> None:
    """The real 10-min export's first 60 rows moved late by +40 s / +340 s (`_late`). Known answers from the
    original rows: bins [t, t + step) give them back exactly; the nearest grid point (the default) moves
    every odd row onto the next even row's point."""
    load_values = [float(r[col(rows, "load")]) for r in rows[1:]]
    times = pd.DatetimeIndex([pd.Timestamp(r[0], tz="UTC") for r in rows[1:]])
    assert times[0] == pd.Timestamp("2018-07-24 00:00", tz="UTC")  # on the 10- and the 20-minute grid
    path = write(tmp_path / "late.csv", _late(rows))

    left = check(path, frequency=pd.Timedelta("10min"), cleaning=CleaningRules(binning=Binning.LEFT))
    frame, rep = left["late"], left.reports["late"]
    assert frame.index.equals(times) and frame["load"].tolist() == load_values
    assert (rep.off_grid, rep.duplicates_merged, rep.gap_points) == (60, 0, 0)

    nearest = check(path, frequency=pd.Timedelta("10min"))
    frame, rep = nearest["late"], nearest.reports["late"]
    # Point 2j holds rows 2j - 1 and 2j (their mean); the odd points have no row and are interpolated.
    assert (rep.duplicates_merged, rep.gap_points, rep.filled_points) == (29, 30, 30)
    assert (
        len(frame) == 61
        and frame.index[0] == times[0]
        and frame.index[-1] == times[-1] + pd.Timedelta("10min")
    )
    assert frame["load"].iloc[0] == load_values[0]
    for j in range(1, 30):
        assert frame["load"].iloc[2 * j] == pytest.approx((load_values[2 * j - 1] + load_values[2 * j]) / 2)

    # Coarser than the sampling: 20-min bins average the rows they hold. Left-closed: rows 2j and 2j + 1.
    twenty = pd.Timedelta("20min")
    left = check(path, frequency=twenty, cleaning=CleaningRules(binning=Binning.LEFT))["late"]
    assert left.index.equals(times[::2])
    assert left["load"].tolist() == pytest.approx(
        [(load_values[2 * j] + load_values[2 * j + 1]) / 2 for j in range(30)]
    )
    # Nearest (a bin centred on each point): rows 2j - 1 and 2j.
    centred = check(path, frequency=twenty)["late"]
    assert len(centred) == 31 and centred["load"].iloc[0] == load_values[0]
    assert centred["load"].iloc[1:30].tolist() == pytest.approx(
        [(load_values[2 * j - 1] + load_values[2 * j]) / 2 for j in range(1, 30)]
    )


def test_binning_from_a_card_the_command_line_and_a_config(tmp_path: Path, rows: list[list[str]]) -> None:
    import subprocess
    import sys

    write(tmp_path / "late.csv", _late(rows))
    load_values = [float(r[col(rows, "load")]) for r in rows[1:]]
    pairs = [(load_values[2 * j] + load_values[2 * j + 1]) / 2 for j in range(30)]
    card = tmp_path / "late.yaml"
    card.write_text(
        f"name: late\nloader: table\nfrequency: 10min\nlicense: own\nsource: a cut of Fisher\n"
        f"directory: {tmp_path}\noptions: {{path: late.csv, timestamp_column: date}}\n"
        "cleaning: {binning: left}\n"
        "indicators:\n  - {name: load, unit: u, level: 1, kind: demand, capacity_per_replica: 5}\n"
    )
    # The card's rule; --freq (data.frequency) re-bins the file's rows at the asked step.
    assert load(str(card))["late"]["load"].tolist() == load_values
    assert load(str(card), frequency="20min")["late"]["load"].tolist() == pytest.approx(pairs)
    # An explicit binning overrides the card's.
    assert load(str(card), binning="nearest")["late"]["load"].iloc[2] == pytest.approx(
        (load_values[1] + load_values[2]) / 2
    )
    with pytest.raises(CardError, match=r"binning: expected one of 'nearest', 'left', got 'Left'"):
        load(str(card), binning="Left")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harmony.cli", *args], capture_output=True, text=True)

    common = ["datasets", "check", str(tmp_path / "late.csv"), "--timestamp-column", "date"]
    common += ["--indicator", "load:u:1:demand:capacity=5", "--freq", "20min"]
    out = cli(*common, "--binning", "left")
    assert out.returncode == 0, out.stderr
    assert "cleaning (rule: docs/data.md; binning: left)" in out.stdout
    assert re.search(r"grid points out +30\n", out.stdout)
    assert re.search(r"rows merged onto a shared grid point +30\n", out.stdout)
    out = cli(*common)  # the default: nearest
    assert "binning: nearest" in out.stdout and re.search(r"grid points out +31\n", out.stdout)
    out = cli(*common, "--binning", "centre")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --binning: expected one of 'nearest', 'left', got 'centre'"
    out = cli("datasets", "show", str(card), "--binning", "nearest", "--freq", "20min")
    assert out.returncode == 0, out.stderr
    assert "binning: nearest" in out.stdout and re.search(r"grid points out +31\n", out.stdout)

    # A training (and backtest) configuration: data.binning beside data.frequency.
    from harmony.training.config import load_config
    from harmony.training.train import load_data

    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {{dataset: {card}, frequency: 20min, binning: left, split: [0.5, 0.2, 0.3]}}\n"
        "model: {name: seasonal_naive, lookback: 2, horizon: 1}\n"
    )
    _, trace, _, _ = load_data(load_config(config))
    assert trace["late"]["load"].tolist() == pytest.approx(pairs)
    _, trace, _, _ = load_data(load_config(config, ["data.binning=nearest"]))
    assert len(trace["late"]) == 31


def test_plots_show_the_zone_the_data_was_written_in(tmp_path: Path, rows: list[list[str]]) -> None:
    from harmony.data.plot import display_zone, plot_series

    local = check(write(tmp_path / "local.csv", rows), timezone="Europe/Amsterdam")
    assert display_zone(local) == "Europe/Amsterdam"
    offset = [rows[0]] + [[r[0].replace(" ", "T") + "+02:00", *r[1:]] for r in rows[1:]]
    trace = check(write(tmp_path / "offset.csv", offset))
    assert display_zone(trace) == "+02:00" and trace["offset"].index[0] == pd.Timestamp("2018-07-23 22:00Z")
    assert display_zone(check(write(tmp_path / "utc.csv", rows))) == "UTC"
    png = plot_series(trace, "offset", tmp_path / "offset.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_card_keeps_the_zone_its_file_was_written_in(tmp_path: Path, rows: list[list[str]]) -> None:
    from harmony.data.plot import display_zone

    offset = [rows[0]] + [[r[0].replace(" ", "T") + "-05:00", *r[1:]] for r in rows[1:]]
    write(tmp_path / "offset.csv", offset)
    card = tmp_path / "offset.yaml"
    card.write_text(
        f"name: offset\nloader: table\nfrequency: 10min\nlicense: own\nsource: a cut of Fisher\n"
        f"directory: {tmp_path}\noptions: {{path: offset.csv, timestamp_column: date}}\n"
        "indicators:\n  - {name: load, unit: u, level: 1, kind: demand, capacity_per_replica: 5}\n"
    )
    trace = load(str(card))
    assert display_zone(trace) == "-05:00" and trace.card is not None and trace.card.name == "offset"
