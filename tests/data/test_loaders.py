"""Every loader on the real staged traces: shapes, spans, frequencies, units, and values checked by hand
against the raw files (read here independently with the csv module)."""

from __future__ import annotations

import csv
import gzip
import io
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmony.data.catalog import get_card, list_cards, load
from harmony.data.trace import Trace

Loader = Callable[[str], Trace]


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def raw_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def tar_rows(archive: Path) -> list[dict[str, str]]:
    with tarfile.open(archive) as tar:
        member = next(
            m for m in tar if m.name.endswith(".csv") and not m.name.split("/")[-1].startswith("._")
        )
        fh = tar.extractfile(member)
        assert fh is not None
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))


def test_every_card_is_valid_and_every_level_is_declared() -> None:
    cards = {c.name: c for c in list_cards()}
    assert set(cards) == {
        "fisher_containers",
        "bitbrains_rnd",
        "alibaba_gentd26",
        "alibaba_gentd26_requests",
        "azure_llm_inference_2023",
        "datacenter_alibaba2018",
        "datacenter_google2019",
        "datacenter_azure_v2",
    }
    for card in cards.values():
        assert card.license and card.source and card.citation and card.capacity_reasoning
        assert card.demand and all(d.capacity_per_replica and d.capacity_per_replica > 0 for d in card.demand)
        assert all(i.level >= 1 for i in card.indicators)


def test_fisher(load_trace: Loader, data_root: Path) -> None:
    trace = load_trace("fisher_containers")
    assert trace.series_ids == [f"container{k}" for k in range(1, 11)]
    assert trace.frequency == pd.Timedelta("10min")
    assert len(trace.indicators) == 11
    c1 = trace["container1"]
    assert (c1.index[0], c1.index[-1], len(c1)) == (utc("2018-07-24 00:00"), utc("2018-08-23 23:50"), 4464)
    assert (
        len(trace["container3"]) == 3941 and trace["container3"].index[0].date().isoformat() == "2018-07-27"
    )
    assert trace.indicator("cpu_cores").unit == "cores" and trace.indicator("load").kind.value == "demand"
    # Levels follow level.npy in the CSV's column order.
    levels = np.load(data_root / "fisher_containers" / "level.npy")[:11].tolist()
    assert [s.level for s in trace.indicators] == levels
    rows = raw_rows(data_root / "fisher_containers" / "container1.csv")
    assert c1["load"].iloc[:3].tolist() == [float(r["load"]) for r in rows[:3]]
    assert c1["tcp_time_wait"].iloc[1] == float(rows[1]["container_network_tcp_TimeWait"])
    # CPU counter in ns -> cores: (v1 - v0) / 600 s / 1e9
    v0, v1 = (float(rows[k]["container_cpu_usage_seconds_total"]) for k in (0, 1))
    assert c1["cpu_cores"].iloc[1] == pytest.approx((v1 - v0) / 600 / 1e9)
    assert np.isnan(c1["cpu_cores"].iloc[0])
    assert trace.reports["container1"].counter_resets == 31


def test_alibaba_containers(load_trace: Loader, data_root: Path) -> None:
    trace = load_trace("alibaba_gentd26")
    assert len(trace) == 143
    assert trace.frequency == pd.Timedelta("57s")
    assert trace.start == utc("2022-09-11 01:12:00") and trace.end == utc("2022-09-12 00:00:00")
    assert [i.name for i in trace.indicators] == ["qps", "gpu_util", "gpu_memory_bytes", "memory_util"]
    cid = "23b8eba99c14e73d454503a55ae96989"
    gpu = tar_rows(data_root / "alibaba_gentd26" / "raw" / "pod_gpu_memory_used_bytes_anon.tar.gz")
    first = next(r for r in gpu if r["container_ip"] == cid and r["timestamp_anon"] == "1662858720.0")
    at = pd.Timestamp(1662858720, unit="s", tz="UTC")
    assert trace[cid].loc[at, "gpu_memory_bytes"] == float(first["value"])
    qps = tar_rows(data_root / "alibaba_gentd26" / "raw" / "qps.tar.gz")
    busy = next(r for r in qps if r["container_ip"] in trace.series)
    t = pd.Timestamp(float(busy["timestamp_anon"]), unit="s", tz="UTC")
    assert trace[busy["container_ip"]].loc[t, "qps"] == pytest.approx(float(busy["value"]))
    # Every raw QPS row of these containers is a non-zero point; absent rows became 0 (only short gaps
    # filled by interpolation can add more non-zero points).
    raw_n = sum(1 for r in qps if r["container_ip"] in trace.series)
    nonzero = sum(int((f["qps"] > 0).sum()) for f in trace.series.values())
    filled = sum(r.per_indicator["qps"]["filled"] for r in trace.reports.values())
    assert raw_n <= nonzero <= raw_n + filled
    assert max(float(f["qps"].max()) for f in trace.series.values()) == pytest.approx(0.27)
    assert any("read as 0" in n for n in trace.notes)


def test_alibaba_requests(load_trace: Loader, data_root: Path) -> None:
    trace = load_trace("alibaba_gentd26_requests")
    frame = trace["requests"]
    rows = tar_rows(data_root / "alibaba_gentd26" / "raw" / "lora_request_trace.tar.gz")
    assert len(rows) == 26823
    # Rates x bin seconds sum back to the request count and to the total execution time.
    assert frame["requests_per_s"].sum() * 300 == pytest.approx(26823)
    total_exec = sum(float(r["exec_time_seconds"]) for r in rows)
    last_edge = frame.index[-1] + trace.frequency
    cut = sum(
        max(
            0.0,
            datetime.fromisoformat(r["gmt_create"]).replace(tzinfo=UTC).timestamp()
            + float(r["exec_time_seconds"])
            - last_edge.timestamp(),
        )
        for r in rows
    )
    assert frame["busy_gpus"].sum() * 300 == pytest.approx(total_exec - cut, rel=1e-9)
    # First bin by hand.
    t0 = frame.index[0]
    n0 = sum(1 for r in rows if t0 <= utc(r["gmt_create"]) < t0 + pd.Timedelta("5min"))
    assert frame["requests_per_s"].iloc[0] * 300 == pytest.approx(n0)
    minute = load("alibaba_gentd26_requests", root=data_root, frequency="1min")
    assert minute.frequency == pd.Timedelta("1min")
    assert minute["requests"]["requests_per_s"].sum() * 60 == pytest.approx(26823)


def test_azure_llm(load_trace: Loader, data_root: Path) -> None:
    trace = load_trace("azure_llm_inference_2023")
    assert trace.series_ids == ["code", "conv"]
    rows = raw_rows(data_root / "azure_llm_inference_2023" / "AzureLLMInferenceTrace_code.csv")
    code = trace["code"]
    assert code["requests_per_s"].sum() * 10 == pytest.approx(len(rows)) and len(rows) == 8819
    assert code["prompt_tokens_per_s"].sum() * 10 == pytest.approx(sum(int(r["ContextTokens"]) for r in rows))
    t0 = code.index[0]
    first = [r for r in rows if pd.Timestamp(r["TIMESTAMP"], tz="UTC") < t0 + pd.Timedelta("10s")]
    assert code["generated_tokens_per_s"].iloc[0] * 10 == pytest.approx(
        sum(int(r["GeneratedTokens"]) for r in first)
    )
    assert t0 == utc("2023-11-16 18:17:00")


@pytest.mark.parametrize(
    ("name", "folder", "points", "first_column", "start"),
    [
        (
            "datacenter_alibaba2018",
            "alibaba2018/machine_usage_grouped_300_seconds.csv.gz",
            2243,
            "cpu_util_percent",
            "2018-01-01",
        ),
        (
            "datacenter_google2019",
            "google2019/machine_usage_grouped_300_seconds.csv.gz",
            8064,
            "cpu_util",
            "2019-05-01",
        ),
        (
            "datacenter_azure_v2",
            "azure_v2/machine_usage_grouped_300_seconds.csv.gz",
            8640,
            "cpu_usage",
            "2019-01-01",
        ),
    ],
)
def test_datacenter(
    load_trace: Loader, data_root: Path, name: str, folder: str, points: int, first_column: str, start: str
) -> None:
    trace = load_trace(name)
    (frame,) = trace.series.values()
    assert len(frame) == points and frame.index[0] == utc(start) and trace.frequency == pd.Timedelta("5min")
    with gzip.open(data_root / "datacenter_aggregates" / folder, "rt") as fh:
        rows = list(csv.DictReader(fh))
    assert frame.iloc[:, 0].iloc[[0, 1, -1]].tolist() == [float(rows[k][first_column]) for k in (0, 1, -1)]


def test_datacenter_finer_files(data_root: Path) -> None:
    ten = load("datacenter_alibaba2018", root=data_root, frequency="10s")
    assert ten.frequency == pd.Timedelta("10s") and len(ten["alibaba2018"]) == 67242
    hourly = load("datacenter_alibaba2018", root=data_root, frequency="1h")  # resampled from 5 min
    assert hourly["alibaba2018"]["cpu_util_pct"].iloc[0] == pytest.approx(
        load("datacenter_alibaba2018", root=data_root)["alibaba2018"]["cpu_util_pct"].iloc[:12].mean()
    )


def test_bitbrains_one_vm_against_the_raw_csv(data_root: Path) -> None:
    trace = load(get_card("bitbrains_rnd"), root=data_root, series=["1"])
    vm = trace["1"]
    assert vm.index[0] == utc("2013-06-30 22:05") and trace.frequency == pd.Timedelta("5min")
    with gzip.open(data_root / "bitbrains_rnd" / "raw_sample" / "2013-7_1.csv.gz", "rt") as fh:
        reader = csv.reader(fh, delimiter=";")
        header = [h.strip() for h in next(reader)]
        rows = [dict(zip(header, (c.strip() for c in r), strict=True)) for r in reader]
    # First samples land on distinct grid points; each value equals the raw cell.
    for r in rows[:5]:
        t = pd.Timestamp(round(int(r["Timestamp [ms]"]) / 300) * 300, unit="s", tz="UTC")
        assert vm.loc[t, "cpu_usage_mhz"] == float(r["CPU usage [MHZ]"])
        assert vm.loc[t, "mem_usage_kb"] == float(r["Memory usage [KB]"])
    assert trace.indicator("cpu_usage_mhz").capacity_per_replica == 2926.0


@pytest.mark.slow
def test_bitbrains_whole_trace(load_trace: Loader) -> None:
    trace = load_trace("bitbrains_rnd")
    assert len(trace) == 500
    rep = trace.report()
    assert rep.rows_in == 12_496_728  # every raw row read
    assert trace.start == utc("2013-06-30 22:05") and trace.end == utc("2013-09-29 22:00")
    assert rep.duplicates_merged > 0 and rep.unfilled_points > 0  # duplicates and month holes, reported
    for frame in list(trace.series.values())[:20]:
        assert frame.index.is_monotonic_increasing and frame.index.freq == pd.Timedelta("5min")
