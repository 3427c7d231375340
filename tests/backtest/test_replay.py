"""The replay protocol (harmony.backtest.replay) on a slice of the real Fisher trace: lead time, history only
up to each decision, the two parts, the HPA in the replay against the HPA stepped by hand (its stabilisation
window acting at 10-minute steps), scores, the oracle and the lower bound, gaps in a lookback."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from backtest_helpers import CAPACITIES, SERIES, STEP_S, settings

from harmony.backtest import (
    BacktestResult,
    Evaluator,
    Knobs,
    build_policy,
    cost_bound,
    forecast_draws,
    median_draws,
    prepare_series,
    replay,
    run_backtest,
)
from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.model.seasonal_naive import SeasonalNaiveForecaster
from harmony.policies import HPAPolicy, OraclePolicy, StaticPolicy


@pytest.fixture(scope="module")
def result(fisher: tuple[Trace, Split, SeasonalNaiveForecaster]) -> BacktestResult:
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


def test_the_two_parts_are_replayed_on_their_own_steps(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, _ = fisher
    sid = SERIES[0]
    a, b, n = split.boundaries[sid]
    s = settings(max_steps=None)
    test = prepare_series(trace, split, sid, s, lookback=24)
    val = prepare_series(trace, split, sid, s, lookback=24, part="val")
    assert not isinstance(test, str) and not isinstance(val, str)
    assert (test.start, test.end) == (b, n) and (val.start, val.end) == (a, b)
    assert (test.part, val.part) == ("test", "val")
    # The first decision serves the first scored step; the static policy's peak is the history before it.
    assert val.first_decision + 1 == a and test.first_decision + 1 == b
    load = trace[sid]["load"].to_numpy()
    assert val.train_peak["load"] == np.nanmax(load[:a]) and test.train_peak["load"] == np.nanmax(load[:b])
    # The last validation decision takes effect on the last validation step: nothing reaches the test part.
    assert int(val.decisions[-1]) + 1 == b - 1
    short = prepare_series(trace, split, sid, settings(max_steps=7), lookback=24, part="val")
    assert not isinstance(short, str) and (short.start, short.end) == (a, a + 7)
    with pytest.raises(ValueError, match="part must be one of test, val"):
        prepare_series(trace, split, sid, s, lookback=24, part="train")


def _hpa_by_hand(data: object, hpa: HPAPolicy, steps: int) -> list[int]:
    """The HPA stepped by hand through the protocol: it sees the demand of the step before it decides."""
    from harmony.backtest import SeriesData

    assert isinstance(data, SeriesData)
    current, expected = data.initial, []
    for tau in range(data.first_decision, data.first_decision + steps):
        seen = {"load": float(data.demand[tau - 1, 0])}
        current = hpa.decide(None, ["load"], current, tau * data.step_s, current_demand=seen).replicas
        expected.append(current)
    return expected


def test_the_hpa_in_the_replay_is_the_hpa_stepped_by_hand(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, _ = fisher
    s = settings()
    knobs = Knobs("hpa", 0.6, (("tolerance", 0.1), ("scale_down_window_s", 1800.0)))
    for sid in SERIES:
        data = prepare_series(trace, split, sid, s, lookback=24)
        assert not isinstance(data, str)
        assert data.first_decision + s.lead_time == data.start  # the first decision serves the first step
        policy = build_policy(knobs, data, s)
        assert isinstance(policy, HPAPolicy) and policy.syncs_per_interval == 40  # 15-s syncs in 10 minutes
        got = replay(policy, data, None, s).at(data.scored)[:40]
        hand = HPAPolicy(
            CAPACITIES,
            target_utilization=0.6,
            max_replicas=s.scaling.max_replicas,
            scale_down_stabilization_s=1800.0,
            interval_s=STEP_S,
        )
        expected = _hpa_by_hand(data, hand, 40)
        assert got.tolist() == expected
        assert len(set(expected)) > 2  # it scales


def test_a_series_whose_part_starts_at_its_first_step_is_replayed(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    # A container that appears at the validation cut has no step before the part: the replay's row of the
    # step before the first simulated one must be unknown, not the series' last row read by wrap-around.
    trace, split, _ = fisher
    sid = SERIES[0]
    _, b, n = split.boundaries[sid]
    fresh = Split({sid: (0, b, n)}, split.fractions, split.by)
    s = settings(policies=dataclasses.replace(settings().policies, static=None))  # static needs a history
    data = prepare_series(trace, fresh, sid, s, lookback=24, part="val")
    assert not isinstance(data, str)
    assert (data.start, data.begin, data.first_decision) == (0, 0, 24)
    rows = data.demand_rows
    assert len(rows) == data.end - data.begin + 1 and math.isnan(rows[0]["load"])
    assert rows[1]["load"] == data.demand[0, 0] and rows[-1]["load"] == data.demand[data.end - 1, 0]
    hand = HPAPolicy(
        CAPACITIES, target_utilization=0.6, max_replicas=s.scaling.max_replicas, interval_s=STEP_S
    )
    policy = HPAPolicy(
        CAPACITIES, target_utilization=0.6, max_replicas=s.scaling.max_replicas, interval_s=STEP_S
    )
    capacity = replay(policy, data, None, s).at(data.scored)
    # The steps before the first decision takes effect keep the initial count; then the HPA as by hand.
    lead = s.lead_time
    assert (capacity[: data.first_decision + lead] == data.initial).all()
    assert capacity[data.first_decision + lead :][:40].tolist() == _hpa_by_hand(data, hand, 40)


def test_the_hpa_stabilisation_window_acts_at_10_minute_steps(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    """A window of k steps holds the highest of the last k + 1 recommendations; one under a step (the
    Kubernetes default 300 s at Fisher's 600 s) holds none, which the configuration check reports."""
    trace, split, _ = fisher
    s = settings(max_steps=None)
    data = prepare_series(trace, split, SERIES[0], s, lookback=24)
    assert not isinstance(data, str)
    caps = {}
    for window in (0.0, 300.0, 600.0, 1800.0, 3600.0):
        knobs = Knobs("hpa", 0.5, (("tolerance", 0.0), ("scale_down_window_s", window)))
        caps[window] = replay(build_policy(knobs, data, s), data, None, s).at(data.scored)
    assert np.array_equal(caps[0.0], caps[300.0])
    assert not np.array_equal(caps[0.0], caps[600.0])
    # With tolerance 0 each recommendation is ceil(last demand / (capacity x 0.5)), whatever the count in
    # place: the count decided at tau is the highest of the recommendations of tau - k .. tau (scaling up is
    # immediate, down waits for the window), k = window / step.
    demand = data.demand[:, 0]
    taus = np.arange(data.start - 1, data.end - 1)  # the decisions that serve the scored steps
    rec = np.ceil(demand[taus - 1] / 0.5 - 1e-9).clip(1, s.scaling.max_replicas)
    for window in (600.0, 1800.0, 3600.0):
        k = int(window // STEP_S)
        held = np.array([rec[max(0, i - k) : i + 1].max() for i in range(len(rec))])
        # The first k decisions also hold recommendations made before the scored part: compare after them.
        np.testing.assert_array_equal(caps[window][k:], held[k:])
        assert (caps[window] >= caps[0.0]).all()
        assert caps[window].sum() > caps[0.0].sum()


# --- scores, the oracle and the bound ------------------------------------------------------------------------


def test_scores_add_up(result: BacktestResult) -> None:
    s = result.settings
    for row in result.per_run.itertuples():
        cap = result.capacity[(str(row.policy), str(row.knobs), str(row.series))].astype(float)
        need = result.demand[str(row.series)][:, 0] / CAPACITIES["load"]
        assert row.steps == len(need) == 150
        assert row.violations == int((need > cap).sum())
        # The steps any count at or above the floor could violate; a policy violates at most those.
        assert row.exposed == int((need > s.scaling.min_replicas).sum()) >= row.violations
        assert row.replica_hours == pytest.approx(cap.sum() * STEP_S / 3600)
        assert row.cost == pytest.approx(s.replica_hour_price * row.replica_hours + row.violations)
        assert row.unmet_replica_hours == pytest.approx(np.maximum(need - cap, 0).sum() / 6)
        assert row.actions == np.count_nonzero(np.diff(cap))


def test_the_oracle_is_never_beaten_at_zero_violations(result: BacktestResult) -> None:
    per = result.per_run
    oracle = per[per["policy"] == "oracle"].set_index("series")
    assert (oracle["violations"] == 0).all()
    clean = per[(per["violations"] == 0) & (per["policy"] != "oracle")]
    assert len(clean) >= 5  # conservative knobs of several policies reach zero violations
    for row in clean.itertuples():
        assert row.cost >= oracle.loc[row.series, "cost"] - 1e-9, row
        # Not beaten on any step either: a clean run has at least the oracle's count everywhere.
        cap = result.capacity[(str(row.policy), str(row.knobs), str(row.series))]
        assert (cap >= result.capacity_of("oracle", str(row.series))).all()
    expected = {"harmony", "quantile", "point", "ehpa", "arima", "ets", "hpa", "static", "oracle"}
    assert set(result.summary["policy"]) == expected


def test_no_policy_beats_the_cost_bound(result: BacktestResult) -> None:
    s = result.settings
    oracle = float(result.summary.set_index("policy").loc["oracle", "cost"])
    # At rate 0 the bound is the oracle's cost (max_replicas never binds here).
    assert cost_bound(result.demand, s, 0.0, STEP_S) == pytest.approx(oracle)
    assert result.bound < oracle <= cost_bound(result.demand, s, 0.0, STEP_S, per_series=True) + 1e-9
    for row in result.summary.itertuples():
        assert row.cost >= cost_bound(result.demand, s, float(row.violation_rate), STEP_S) - 1e-9, row
    for row in result.validated.itertuples():
        assert row.cost >= cost_bound(result.demand, s, float(row.violation_rate), STEP_S) - 1e-9, row


def test_the_evaluator_replays_a_setting_once(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    trace, split, _ = fisher
    s = settings()
    datas = [prepare_series(trace, split, sid, s, lookback=24) for sid in SERIES]
    assert all(not isinstance(d, str) for d in datas)
    ev = Evaluator(datas, {}, s)  # type: ignore[arg-type]
    knobs = Knobs("hpa", 0.7)
    first = ev.run(knobs)
    assert ev.run(Knobs("hpa", 0.7)) is first and len(ev.rows) == 1
    assert [r["series"] for r in first] == SERIES
    summary = ev.summary_of(knobs)
    assert summary["steps"] == 300 and summary["cost"] == pytest.approx(sum(r["cost"] for r in first))
    assert summary["worst_violation_rate"] == max(r["violation_rate"] for r in first)


# --- gaps in a lookback --------------------------------------------------------------------------------------


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
    assert math.isfinite(float(np.asarray(draws[5 + 18]).sum()))


def test_policies_reading_the_median_replay_the_same_from_it_as_from_the_draws(
    fisher: tuple[Trace, Split, SeasonalNaiveForecaster],
) -> None:
    """EHPA and the median point forecast read the per-step median of the draws, computed once per decision
    for every setting they replay: the replay must be the one the full draws give."""
    trace, split, model = fisher
    s = settings()
    datas = [prepare_series(trace, split, sid, s, lookback=24) for sid in SERIES]
    assert all(not isinstance(d, str) for d in datas)
    draws = forecast_draws(model, trace, datas, s)  # type: ignore[arg-type]
    medians = {sid: median_draws(d) for sid, d in draws.items()}
    assert medians[SERIES[0]][0] is not None and medians[SERIES[0]][0].shape == (1, 4, 1)
    full = Evaluator(datas, {"model": draws}, s)  # type: ignore[arg-type]
    fast = Evaluator(datas, {"model": draws, "median": medians}, s)  # type: ignore[arg-type]
    assert fast.source("ehpa") is medians and full.source("ehpa") is draws
    for knobs in (
        Knobs("ehpa", 0.5, (("scale_down_window_s", 1800.0),)),
        Knobs("ehpa", 0.8, (("tolerance", 0.0),)),
        Knobs("point", 0.3),
    ):
        a, b = full.run(knobs), fast.run(knobs)
        assert [(r["cost"], r["violations"]) for r in a] == [(r["cost"], r["violations"]) for r in b]
