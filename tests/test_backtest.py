"""`harmony backtest`: the replay protocol (lead time, history only up to each decision), the policies in the
replay against the same policies stepped by hand, the oracle as the lower bound, the command line end to end
with its HTML report and MLflow run (real SQLite store), and configuration errors that name file and key.

Everything runs on a slice of the real Fisher trace (two containers, a few hundred test steps) with a seasonal
naive forecaster, so each test takes seconds."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from harmony.backtest import (
    BacktestResult,
    PoliciesConfig,
    ScalingConfig,
    Settings,
    build_policy,
    cost_at_rate,
    cost_bound,
    forecast_draws,
    knob_key,
    load_backtest_config,
    per_service_table,
    prepare_series,
    replay,
    run_backtest,
    run_config,
)
from harmony.cli import main
from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split
from harmony.model.base import ForecastSpec
from harmony.model.seasonal_naive import SeasonalNaiveForecaster
from harmony.policies import HPAPolicy, OraclePolicy, StaticPolicy
from harmony.report import bound_text
from harmony.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SERIES = ["container1", "container2"]
CAPACITIES = {"load": 1.0}  # as configs/backtest/fisher_containers.yaml: a few replicas per container


@pytest.fixture(scope="module")
def fisher(load_trace: Callable[[str], Trace]) -> tuple[Trace, Split, SeasonalNaiveForecaster]:
    trace = load_trace("fisher_containers").select(series=SERIES)
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=24, horizon=4, lead_time=1, targets=["load"])
    model = SeasonalNaiveForecaster(spec)
    model.fit(trace, split)
    return trace, split, model


def settings(**changes: object) -> Settings:
    base: dict[str, object] = {
        "capacities": CAPACITIES,
        "lead_time": 1,
        "max_steps": 150,
        "violation_penalty": 1.0,
        "num_samples": 50,
    }
    base.update(changes)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def swept(fisher: tuple[Trace, Split, SeasonalNaiveForecaster]) -> BacktestResult:
    trace, split, model = fisher
    return run_backtest(trace, split, model, settings())


# --- the protocol -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lead", [2, 5])
def test_a_decision_changes_capacity_only_after_the_lead_time(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster], lead: int
) -> None:
    trace, split, _ = fisher
    sid = SERIES[0]
    # An oracle that looks at the decision step itself (no lead of its own): whatever the backtest's lead
    # time, the count it decides at tau is the one step tau needed, so the capacity series must be the
    # zero-lead series shifted by exactly `lead` steps.
    caps = {}
    for lt in (0, lead):
        s = settings(lead_time=lt, warmup_steps=10)
        data = prepare_series(trace, split, sid, s, lookback=24)
        assert not isinstance(data, str)
        times = (np.arange(data.demand.shape[0]) + 0.5) * data.step_s
        oracle = OraclePolicy(
            CAPACITIES, {"load": data.demand[:, 0]}, times, lead_time_s=0.0, window_s=data.step_s
        )
        rep = replay(oracle, data, None, s)
        caps[lt] = {rep.first + k: int(c) for k, c in enumerate(rep.capacity)}
        first_effect = data.first_decision + lt
        assert all(caps[lt][u] == data.initial for u in range(rep.first, first_effect))
    shifted = [u for u in caps[lead] if u - lead in caps[0] and u >= min(caps[lead]) + lead]
    assert len(shifted) > 100
    assert [caps[lead][u] for u in shifted] == [caps[0][u - lead] for u in shifted]
    assert len({caps[lead][u] for u in shifted}) > 1  # the demand moves: the comparison is not vacuous

    # A static count: the initial count until exactly first decision + lead, the static count from then on.
    s = settings(lead_time=lead, initial_replicas=1)
    data = prepare_series(trace, split, sid, s, lookback=24)
    assert not isinstance(data, str)
    static = StaticPolicy(CAPACITIES, data.train_peak, max_replicas=100)
    assert static.replicas > 1
    rep = replay(static, data, None, s)
    k = data.first_decision + lead - rep.first
    assert (rep.capacity[:k] == 1).all() and (rep.capacity[k:] == static.replicas).all()


def test_draws_use_only_the_history_before_each_decision(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, model = fisher
    s = settings()
    data = prepare_series(trace, split, SERIES[0], s, lookback=24)
    assert not isinstance(data, str)
    before = forecast_draws(model, trace, [data], s)[SERIES[0]]
    k = len(data.decisions) // 2
    tau = int(data.decisions[k])
    # Rewrite the future from tau on: the draws of decision k (and of every earlier one) must not move.
    frame = trace[SERIES[0]].copy()
    frame.iloc[tau:] = frame.iloc[tau:] * 7.0 + 3.0
    future = Trace(trace.name, trace.frequency, trace.indicators, {SERIES[0]: frame}, card=trace.card)
    after = forecast_draws(model, future, [data], s)[SERIES[0]]
    for j in range(k + 1):
        np.testing.assert_array_equal(before[j], after[j])
    assert not np.array_equal(before[k + 1], after[k + 1])
    assert before[0] is not None and before[0].shape == (50, 4, 1)  # draws x window x demand indicators


def test_the_validation_part_is_replayed_on_its_own_steps(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, model = fisher
    sid = SERIES[0]
    a, b, n = split.boundaries[sid]
    test = prepare_series(trace, split, sid, settings(max_steps=None), lookback=24)
    val = prepare_series(trace, split, sid, settings(max_steps=None, part="val"), lookback=24)
    assert not isinstance(test, str) and not isinstance(val, str)
    assert (test.start, test.end) == (b, n) and (val.start, val.end) == (a, b)
    # The first decision serves the first scored step; the static policy's peak is the history before it.
    assert val.first_decision + 1 == a and test.first_decision + 1 == b
    load = trace[sid]["load"].to_numpy()
    assert val.train_peak["load"] == np.nanmax(load[:a]) and test.train_peak["load"] == np.nanmax(load[:b])
    short = prepare_series(trace, split, sid, settings(max_steps=7, part="val"), lookback=24)
    assert not isinstance(short, str) and (short.start, short.end) == (a, a + 7)
    result = run_backtest(trace, split, model, settings(max_steps=None, part="val"))
    steps = result.summary.loc[result.summary["policy"] == "oracle", "steps"].iloc[0]
    assert steps == sum(
        np.isfinite(trace[s]["load"].to_numpy()[split.boundaries[s][0] : split.boundaries[s][1]]).sum()
        for s in SERIES
    )
    with pytest.raises(ValueError, match="part must be one of test, val"):
        settings(part="train")


def test_hpa_in_the_backtest_is_the_hpa_stepped_by_hand(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster], swept: BacktestResult
) -> None:
    trace, split, _ = fisher
    s = swept.settings
    for sid in SERIES:
        data = prepare_series(trace, split, sid, s, lookback=24)
        assert not isinstance(data, str)
        hpa = HPAPolicy(
            CAPACITIES, target_utilization=0.6, max_replicas=s.scaling.max_replicas, interval_s=600.0
        )
        # The first decision serves the first scored step.
        assert data.first_decision + s.lead_time == data.start
        current, expected = data.initial, []
        for tau in range(data.first_decision, data.first_decision + 40):
            if expected:  # the step just realised, served by the count decided lead_time earlier
                assert hpa.observe({"load": float(data.demand[tau - 1, 0])}, expected[-1]) is not None
            seen = {"load": float(data.demand[tau - 1, 0])}  # the demand observed before deciding
            current = hpa.decide(None, ["load"], current, tau * data.step_s, current_demand=seen).replicas
            expected.append(current)
        got = swept.capacity_of("hpa", 0.6, sid)[:40]
        assert got.tolist() == expected
        assert len(set(expected)) > 2  # it scales


def test_the_oracle_is_never_beaten_at_zero_violations(swept: BacktestResult) -> None:
    per = swept.per_run
    oracle = per[per["policy"] == "oracle"].set_index("series")
    assert (oracle["violations"] == 0).all()
    clean = per[(per["violations"] == 0) & (per["policy"] != "oracle")]
    assert len(clean) >= 5  # conservative knobs of several policies reach zero violations
    for row in clean.itertuples():
        assert row.cost >= oracle.loc[row.series, "cost"] - 1e-9, row
    # Not beaten on any step either: a clean run has at least the oracle's count everywhere.
    for row in clean.itertuples():
        cap = swept.capacity_of(str(row.policy), float(row.knob), str(row.series))
        assert (cap >= swept.capacity_of("oracle", math.nan, str(row.series))).all()
    summary = swept.summary.set_index("policy")
    assert summary.loc["oracle", "cost_rel_oracle"] == 1.0
    assert (swept.summary["cost_rel_oracle"] >= 1.0 - 1e-12).all()
    assert set(swept.summary["policy"]) == {"harmony", "quantile", "point", "hpa", "static", "oracle"}


def test_scores_add_up(swept: BacktestResult) -> None:
    s = swept.settings
    for row in swept.per_run.itertuples():
        cap = swept.capacity_of(str(row.policy), float(row.knob), str(row.series)).astype(float)
        need = swept.demand[str(row.series)][:, 0] / CAPACITIES["load"]
        assert row.steps == len(need) == 150
        assert row.violations == int((need > cap).sum())
        assert row.replica_hours == pytest.approx(cap.sum() * 600 / 3600)
        assert row.cost == pytest.approx(s.replica_hour_price * row.replica_hours + row.violations)
        assert row.unmet_replica_hours == pytest.approx(np.maximum(need - cap, 0).sum() / 6)
        assert row.actions == np.count_nonzero(np.diff(cap))


def test_cost_at_a_matched_rate_reads_the_pareto_front() -> None:
    rates = [0.0, 0.02, 0.05, 0.01, 0.03]
    costs = [10.0, 6.0, 4.0, 8.0, 7.0]  # (0.03, 7) is dominated by (0.02, 6)
    assert cost_at_rate(rates, costs, 0.01) == (8.0, [3])
    value, used = cost_at_rate(rates, costs, 0.015)
    assert value == pytest.approx(7.0) and used == [3, 1]
    assert cost_at_rate(rates, costs, 0.04)[0] == pytest.approx(6.0 - 2.0 * 2 / 3)  # on 0.02..0.05, not 0.03
    assert cost_at_rate(rates, costs, 0.5) == (4.0, [2])
    assert math.isnan(cost_at_rate([0.02, 0.03], [1.0, 2.0], 0.01)[0])  # never gets down to 1%


def test_per_service_takes_the_cheapest_knob_keeping_every_series_within_the_rate() -> None:
    # Two policies, rates per knob summed over series (total) and the worst series' rate, by hand.
    summary = pd.DataFrame(
        [
            # harmony: eps 0.05 is cheapest but one series is at 3%; eps 0.02 keeps all <= 1%
            ("harmony", 0.05, 0.015, 0.03, 80.0, 79.0),
            ("harmony", 0.02, 0.008, 0.01, 90.0, 89.5),
            ("harmony", 0.01, 0.004, 0.006, 95.0, 94.8),
            # hpa: every knob leaves some series above 1% (2% at the safest)
            ("hpa", 0.5, 0.009, 0.02, 100.0, 99.0),
            ("hpa", 0.7, 0.02, 0.05, 85.0, 83.0),
            ("oracle", 0.0, 0.0, 0.0, 60.0, 60.0),
        ],
        columns=["policy", "knob", "violation_rate", "worst_violation_rate", "cost", "replica_hours"],
    )
    table = per_service_table(summary, 0.01).set_index("policy")
    h, hpa, oracle = table.loc["harmony"], table.loc["hpa"], table.loc["oracle"]
    assert h["knob"] == "0.02" and h["cost"] == 90.0 and h["worst_violation_rate"] == 0.01  # at the rate: ok
    assert h["violation_rate"] == 0.008 and h["cost_rel_oracle"] == pytest.approx(1.5)
    assert hpa["knob"] == "not_reached" and math.isnan(hpa["cost"]) and hpa["worst_violation_rate"] == 0.02
    assert math.isnan(h["cost_rel_hpa"])  # nothing to divide by when the HPA never keeps every series
    assert oracle["knob"] == "-" and oracle["cost_rel_oracle"] == 1.0
    # A looser target lets the HPA in: its cheapest knob with every series <= 2% is 0.5.
    loose = per_service_table(summary, 0.02).set_index("policy")
    assert loose.loc["hpa", "knob"] == "0.5" and loose.loc["harmony", "cost_rel_hpa"] == pytest.approx(0.9)


def test_tuned_per_service_gives_each_series_its_own_cheapest_knob() -> None:
    # (policy, knob, series, steps, violation_rate, cost): s1 is calm, s2 bursty.
    runs = pd.DataFrame(
        [
            ("hpa", 0.5, "s1", 100, 0.00, 10.0),
            ("hpa", 0.5, "s2", 100, 0.03, 20.0),
            ("hpa", 0.3, "s1", 100, 0.00, 15.0),
            ("hpa", 0.3, "s2", 100, 0.01, 30.0),
            ("harmony", 0.02, "s1", 100, 0.01, 9.0),
            ("harmony", 0.02, "s2", 100, 0.02, 21.0),
            ("harmony", 0.01, "s1", 100, 0.00, 11.0),
            ("harmony", 0.01, "s2", 100, 0.01, 24.0),
            ("point", 0.0, "s1", 100, 0.00, 8.0),
            ("point", 0.0, "s2", 100, 0.05, 18.0),  # s2 within 1% at no margin: no tuned figure
            ("oracle", math.nan, "s1", 100, 0.0, 7.0),
            ("oracle", math.nan, "s2", 100, 0.0, 14.0),
        ],
        columns=["policy", "knob", "series", "steps", "violation_rate", "cost"],
    )
    summary = runs.groupby(["policy", "knob"], dropna=False, sort=False).agg(
        cost=("cost", "sum"),
        worst_violation_rate=("violation_rate", "max"),
        violation_rate=("violation_rate", "mean"),
    )
    summary = summary.reset_index().assign(replica_hours=lambda f: f["cost"])
    table = per_service_table(summary, 0.01, runs).set_index("policy")
    # one knob for both: hpa 0.3 (45), harmony 0.01 (35); tuned: hpa 10 + 30, harmony 9 + 24
    assert table.loc["hpa", "cost"] == 45.0 and table.loc["harmony", "cost"] == 35.0
    assert table.loc["hpa", "tuned_cost"] == 40.0 and table.loc["harmony", "tuned_cost"] == 33.0
    assert table.loc["harmony", "tuned_rel_hpa"] == pytest.approx(33 / 40)
    assert table.loc["harmony", "tuned_rel_oracle"] == pytest.approx(33 / 21)
    assert math.isnan(table.loc["point", "tuned_cost"]) and table.loc["point", "knob"] == "not_reached"


def test_the_per_service_table_reads_the_per_run_rows(swept: BacktestResult) -> None:
    target = swept.settings.target_violation_rate
    runs = swept.per_run
    for row in swept.summary.itertuples():
        same = (runs["policy"] == row.policy) & (runs["knob"].map(knob_key) == knob_key(row.knob))
        rates = runs[same]["violation_rate"]
        assert len(rates) == len(swept.series)
        assert row.worst_violation_rate == pytest.approx(rates.max())
        assert row.services_within_sla == int((rates <= target + 1e-12).sum())
    matched = swept.matched.set_index("policy")["cost"]
    reached = 0
    for row in swept.per_service.itertuples():
        if row.knob != "not_reached":
            reached += 1
            assert row.worst_violation_rate <= target + 1e-12
            # every series within the rate puts the total within it too: never below the matched cost
            assert row.cost >= matched[row.policy] - 1e-9
            assert row.tuned_cost <= row.cost + 1e-9  # a knob per series is never dearer than one for all
    assert reached >= 2  # the oracle and at least one policy keep every series within the rate


def test_the_cost_bound_by_hand() -> None:
    # One replica serves 2 units; 1..4 replicas; 1 per replica-hour, 0.5 per violated one-hour step.
    s = Settings(
        capacities={"a": 2.0},
        lead_time=1,
        violation_penalty=0.5,
        scaling=ScalingConfig(min_replicas=1, max_replicas=4),
    )
    demand = {
        "s1": np.array([[1.0], [3.0], [8.0], [5.0], [np.nan]]),  # needs 1, 2, 4, 3; the last step unknown
        "s2": np.array([[10.0], [2.0]]),  # needs 5 (> max: violated by every policy), then 1
    }
    # No budget: every need (11) + the forced step at min_replicas (1) and its penalty (0.5).
    assert cost_bound(demand, s, 0.0, 3600.0) == pytest.approx(12.5)
    # 6 known steps x 0.34 = 2 violations, one taken by the forced step: skip the need-4 step (saves 3 - 0.5).
    assert cost_bound(demand, s, 0.34, 3600.0) == pytest.approx(10.0)
    # 3 violations: also the need-3 step (saves 2 - 0.5); a need-1 step saves nothing and is never skipped.
    assert cost_bound(demand, s, 0.5, 3600.0) == pytest.approx(8.5)
    assert cost_bound(demand, s, 0.99, 3600.0) == pytest.approx(12.5 - 2.5 - 1.5 - 0.5)
    # Ten-minute steps: the replica part is a sixth, the penalties are not.
    assert cost_bound(demand, s, 0.0, 600.0) == pytest.approx(12 / 6 + 0.5)
    with pytest.raises(ValueError, match="rate"):
        cost_bound(demand, s, 1.0, 3600.0)


def test_no_policy_beats_the_cost_bound(swept: BacktestResult) -> None:
    s = swept.settings
    oracle = float(swept.summary.set_index("policy").loc["oracle", "cost"])
    # At rate 0 the bound is the oracle's cost (max_replicas never binds here).
    assert cost_bound(swept.demand, s, 0.0, 600.0) == pytest.approx(oracle)
    assert swept.bound < oracle
    for row in swept.summary.itertuples():
        assert row.cost >= cost_bound(swept.demand, s, float(row.violation_rate), 600.0) - 1e-9, row
    for row in swept.matched.itertuples():
        if math.isfinite(row.cost):
            assert row.cost >= swept.bound - 1e-9, row
    assert bound_text(swept).startswith("lower bound at 1% violations: cost ")


# --- the command line, the report and MLflow -------------------------------------------------------------------


def _number(text: str) -> float:
    return math.nan if text == "-" else float(text)


def test_cli_end_to_end(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(ROOT / "configs" / "fisher_containers.yaml"),
                "data": {"series": SERIES},
                "model": {
                    "name": "seasonal_naive",
                    "lookback": 24,
                    "horizon": 3,
                    "targets": ["load"],
                    "hparams": {},
                },
                "trainer": {"progress": False, "num_threads": 1},
                "evaluation": {"num_samples": 10, "max_windows_per_series": 4},
                "forecaster": {"origin": "train", "num_samples": 50},
                "backtest": {"max_steps": 120, "capacities": CAPACITIES},
                "cost": {"violation_penalty": 1.0},
                "policies": {
                    "harmony": {"max_violation_probability": [0.1, 0.02, 0.005]},
                    "quantile": {"max_violation_probability": [0.05, 0.01]},
                    "point": {"margin": [0.0, 0.5]},
                    "hpa": {"target_utilization": [0.5, 0.7, 0.9]},
                    "static": None,
                },
                "report": {"experiment": "bt-test", "plot_series": "container2"},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HARMONY_DATA_DIR": str(data_root)}

    def backtest(override: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "harmony.cli", "backtest", "--config", str(config), "--set", override]
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)

    out = backtest("sla.max_violation_probability=0.02")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    folder = tmp_path / "runs" / "backtest" / "tiny"
    html = (folder / "report.html").read_text()
    assert f"report     {folder / 'report.html'}" in text
    assert html.count("data:image/png;base64,") == 2
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    assert "How to read this report" in html and "max_violation_probability: 0.02" in html
    for png in ("cost_vs_violation.png", "capacity.png"):
        assert (folder / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_id = re.search(r"^run\s+([0-9a-f]{32})", text, re.M)
    assert run_id, text
    client = MlflowClient(uri)
    run = client.get_run(run_id.group(1))
    assert (
        run.info.status == "FINISHED" and run.data.params["policies.hpa.target_utilization"] == "0.5,0.7,0.9"
    )
    assert run.data.tags["harmony.kind"] == "backtest" and "harmony.model_run_id" in run.data.tags
    metrics = run.data.metrics
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.txt", "plots", "tables"} <= artifacts

    # The printed tables are the run's metrics.
    matched = text[text.index("at the target violation rate 2%") : text.index("every service within its SLA")]
    *table, bound = [line for line in matched.splitlines()[3:] if line.strip()]
    rows = [line.split() for line in table]
    assert bound.startswith("lower bound at 2% violations: cost ")
    assert metrics["target/bound/cost"] == pytest.approx(float(bound.split()[6]), rel=1e-5)
    assert [r[0] for r in rows] == ["harmony", "quantile", "point", "hpa", "oracle"]
    checked = 0
    for policy, _knob, viol, cost, hours, vs_hpa, vs_oracle in rows:
        for printed, name, scale in (
            (viol, "violation_rate", 100.0),
            (cost, "cost", 1.0),
            (hours, "replica_hours", 1.0),
            (vs_hpa, "cost_rel_hpa", 1.0),
            (vs_oracle, "cost_rel_oracle", 1.0),
        ):
            key = f"target/{policy}/{name}"
            if printed == "-":
                assert key not in metrics
                continue
            assert metrics[key] * scale == pytest.approx(_number(printed), rel=1e-3, abs=1e-4), key
            checked += 1
    assert checked >= 10  # a policy that never gets down to the rate prints "-" (and logs nothing)
    sweep = text[text.index("every policy and knob") :].split("\n\n")[0]
    lines = [line.split() for line in sweep.splitlines()[3:] if line.strip()]
    assert len(lines) == 3 + 2 + 2 + 3 + 1
    for policy, knob, viol, worst, cost, *_ in lines:
        value = knob.split("=")[1] if "=" in knob else "-"
        assert metrics[f"sweep/{policy}/{value}/cost"] == pytest.approx(_number(cost), rel=1e-3), (
            policy,
            knob,
        )
        assert 100 * metrics[f"sweep/{policy}/{value}/violation_rate"] == pytest.approx(
            _number(viol), rel=1e-3, abs=1e-4
        )
        assert 100 * metrics[f"sweep/{policy}/{value}/worst_violation_rate"] == pytest.approx(
            _number(worst), rel=1e-3, abs=1e-4
        )
    # The per-service table is the run's service/ metrics too.
    service = text[text.index("every service within its SLA") : text.index("every policy and knob")]
    service_rows = [line.split() for line in service.splitlines()[3:] if line.strip()]
    assert [r[0] for r in service_rows] == ["harmony", "quantile", "point", "hpa", "oracle"]
    for policy, _knob, viol, worst, cost, *_ in service_rows:
        for printed, name, scale in ((viol, "violation_rate", 100.0), (worst, "worst_violation_rate", 100.0)):
            key = f"service/{policy}/{name}"
            if printed != "-":
                assert metrics[key] * scale == pytest.approx(_number(printed), rel=1e-3, abs=1e-4), key
        if cost == "-":
            assert f"service/{policy}/cost" not in metrics
        else:
            assert metrics[f"service/{policy}/cost"] == pytest.approx(_number(cost), rel=1e-3), policy
    assert (folder / "tables" / "per_service.csv").exists() and "Every service within its SLA" in html

    # The validation part: the same model (reused, not retrained), its own report folder and MLflow run,
    # and the test part's report left as it was.
    before = (folder / "report.html").read_bytes()
    val = backtest("backtest.part=val")
    assert val.returncode == 0, val.stderr[-3000:]
    assert "model: reusing" in val.stdout + val.stderr and "scored steps of the validation part" in val.stdout
    assert (folder / "report.html").read_bytes() == before
    assert "replayed the validation part" in (folder / "val" / "report.html").read_text()
    val_id = re.search(r"^run\s+([0-9a-f]{32})", val.stdout, re.M)
    assert val_id and val_id.group(1) != run.info.run_id
    val_run = client.get_run(val_id.group(1))
    assert val_run.info.run_name == "tiny-val" and val_run.data.tags["harmony.part"] == "val"
    assert val_run.data.params["backtest.part"] == "val" and run.data.tags["harmony.part"] == "test"

    # The model the run trained, loaded back as its MLflow pyfunc model and as the saved folder, replays to
    # the very same numbers (same draws under the same seeds).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pyfunc = client.get_run(run.data.tags["harmony.model_run_id"]).data.tags["harmony.pyfunc_model_uri"]
    for origin in (
        ["forecaster.origin=mlflow", f"forecaster.uri={pyfunc}"],
        ["forecaster.origin=path", f"forecaster.path={folder / 'model' / 'forecaster'}"],
    ):
        again = run_config(load_backtest_config(config, ["sla.max_violation_probability=0.02", *origin]))
        for r in again.result.summary.to_dict("records"):
            key = f"sweep/{r['policy']}/{knob_key(float(r['knob']))}/cost"
            assert r["cost"] == pytest.approx(metrics[key], rel=1e-12), (origin, key)


# --- configuration errors -----------------------------------------------------------------------------------


def _write(tmp_path: Path, body: dict[str, object], name: str = "bt.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "fisher_containers.yaml"), **body}))
    return path


@pytest.mark.parametrize(
    ("body", "sets", "expected"),
    [
        (
            {"policies": {"hpa": {"target_utilization": [0.5, 1.5]}}},
            [],
            r"policies\.hpa\.target_utilization\[1\]: expected a utilisation in \(0, 1\], got 1\.5",
        ),
        ({"backtest": {"lead": 2}}, [], r"backtest\.lead: unknown key; .* did you mean 'lead_time'"),
        ({"polices": {}}, [], r"polices: unknown section; .* did you mean 'policies'"),
        (
            {"sla": {"max_violation_probability": 2}},
            [],
            r"sla\.max_violation_probability: expected a rate in \(0, 0\.5\]",
        ),
        (
            {"cost": {"replica_hour_price": "cheap"}},
            [],
            r"cost\.replica_hour_price: expected a number, got 'cheap' \(str\)",
        ),
        (
            {"policies": {"hpa": {"target_utilisation": [0.5]}}},
            [],
            r"policies\.hpa\.target_utilisation: unknown key; .*did you mean 'target_utilization'",
        ),
        ({"policies": {"autoscaler": {}}}, [], r"policies\.autoscaler: unknown policy"),
        (
            {"forecaster": {"origin": "path"}},
            [],
            r"forecaster\.path: origin 'path' needs the forecaster folder",
        ),
        ({"forecaster": {"origin": "none"}}, [], r"policies\.harmony: needs a forecaster"),
        (
            {"model": {"targets": ["cpu_cores"]}},
            [],
            r"model\.targets: the demand indicators \['load'\] must be forecast",
        ),
        ({"backtest": {"capacities": {"lod": 1.0}}}, [], r"backtest\.capacities\.lod: unknown indicator"),
        (
            {"backtest": {"lead_time": 0}},
            [],
            r"backtest\.lead_time: 0 is shorter than the model's lead time \(1\)",
        ),
        (
            {"backtest": {"part": "validation"}},
            [],
            r"backtest\.part: expected one of test, val, got 'validation'",
        ),
        (
            {},
            ["scaling.max_replicas=0"],
            r"scaling\.max_replicas: expected .* \(from --set scaling\.max_replicas=0\)",
        ),
        (
            {},
            ["model.lookback=1"],
            r"model\.lookback: expected an integer >= 2, got 1 \(from --set model\.lookback=1\)",
        ),
    ],
)
def test_bad_config_names_file_and_key(
    tmp_path: Path, body: dict[str, object], sets: list[str], expected: str
) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_backtest_config(path, sets)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)


def test_a_bad_base_is_named_and_the_cli_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "train.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "fisher_containers.yaml").read_text())
    raw["model"]["lookbak"] = 10
    base.write_text(yaml.safe_dump(raw))
    path = tmp_path / "bt.yaml"
    path.write_text(yaml.safe_dump({"base": "train.yaml"}))  # relative to the backtest file
    assert main(["backtest", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{base}: model.lookbak: unknown key" in err and "did you mean 'lookback'" in err


@pytest.mark.parametrize(
    "config", sorted((ROOT / "configs" / "backtest").glob("*.yaml")), ids=lambda p: p.stem
)
def test_shipped_configs_are_valid(config: Path) -> None:
    cfg = load_backtest_config(config)
    assert cfg.run_name == config.stem and cfg.forecaster.origin == "train"
    assert set(cfg.policies.enabled()) == {"harmony", "quantile", "point", "hpa", "static", "oracle"}
    assert cfg.sla.max_violation_probability == 0.01
    assert isinstance(cfg.policies, PoliciesConfig)


def test_build_policy_covers_every_policy(fisher: tuple[Trace, Split, SeasonalNaiveForecaster]) -> None:
    trace, split, _ = fisher
    s = settings()
    data = prepare_series(trace, split, SERIES[1], s, lookback=24)
    assert not isinstance(data, str)
    for name, knob in s.runs():
        assert build_policy(name, knob, data, s).name == name
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy("vpa", 0.5, data, s)


def test_gaps_in_a_lookback_are_filled_as_the_operator_fills_them() -> None:
    from harmony.data.windows import usable_lookback

    nan = np.nan
    w = np.array(
        [[1.0, 5.0], [nan, 5.0], [3.0, 6.0], [4.0, nan], [5.0, 8.0]] * 2, dtype=np.float32
    )  # 10 steps
    filled = usable_lookback(w)
    assert filled is not None and np.isfinite(filled).all()
    assert filled[1, 0] == 2.0 and filled[3, 1] == 7.0  # linear between the neighbours
    assert np.array_equal(filled[np.isfinite(w)], w[np.isfinite(w)])  # known values untouched
    clean = np.ones((5, 2), dtype=np.float32)
    assert usable_lookback(clean) is clean
    # Up to 20% missing per indicator (2 of 10); a third gap is too many.
    w3 = w.copy()
    w3[7, 0] = nan
    assert usable_lookback(w3) is None
    # The newest value may be up to 3 steps old; a gap at the start is held flat from the first value.
    old = np.arange(20, dtype=np.float32)[:, None].copy()
    old[-3:] = nan
    assert usable_lookback(old) is not None and usable_lookback(old)[-1, 0] == 16.0
    old[-4:] = nan
    assert usable_lookback(old) is None
    head = np.arange(10, dtype=np.float32)[:, None].copy()
    head[0] = nan
    assert usable_lookback(head)[0, 0] == 1.0
    assert usable_lookback(np.full((10, 1), nan, dtype=np.float32)) is None


def test_a_lookback_with_a_short_gap_still_gets_draws(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, model = fisher
    s = settings(max_steps=40)
    frame = trace["container1"].copy()
    data = prepare_series(trace, split, "container1", s, lookback=model.spec.lookback)
    assert not isinstance(data, str)
    tau = int(data.decisions[5])
    frame.iloc[tau - 3, frame.columns.get_loc("load")] = np.nan  # one gap, 3 steps before the decision
    holed = dataclasses.replace(trace, series={**trace.series, "container1": frame})
    draws = forecast_draws(model, holed, [data], s)["container1"]
    assert all(d is not None for d in draws)
    frame.iloc[tau - 12 : tau - 3, frame.columns.get_loc("load")] = np.nan
    holed = dataclasses.replace(trace, series={**trace.series, "container1": frame})
    draws = forecast_draws(model, holed, [data], s)["container1"]
    # The gap is now tau-12..tau-3; the decision at tau + k (k >= 12) sees 22 - k of it: 5 (> 20% of 24)
    # at k = 17, 4 at k = 18.
    assert draws[5] is None and draws[5 + 17] is None and draws[5 + 18] is not None
