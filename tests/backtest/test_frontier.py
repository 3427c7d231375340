"""harmony.backtest.frontier: the lower convex hull (hand-computed cases and the property that adding a point
never raises it), the lower bound by hand, the share of the gap captured, and the validated table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony.backtest import (
    CAUSE_COLUMNS,
    Knobs,
    ScalingConfig,
    Settings,
    Tuned,
    cost_at_rate,
    cost_bound,
    gap_captured,
    lower_hull,
    needed_replicas,
    validated_table,
)
from harmony.backtest.frontier import headline, hindsight_table

# --- the lower convex hull ----------------------------------------------------------------------------------


def test_cost_at_a_rate_reads_the_lower_convex_hull() -> None:
    rates = [0.0, 0.02, 0.05, 0.01, 0.03]
    costs = [10.0, 6.0, 4.0, 8.0, 7.0]
    # By rate: (0, 10), (0.01, 8), (0.02, 6), (0.03, 7), (0.05, 4). (0.01, 8) lies on the segment from
    # (0, 10) to (0.02, 6) and (0.03, 7) above the one from (0.02, 6) to (0.05, 4): the hull is
    # (0, 10), (0.02, 6), (0.05, 4).
    assert lower_hull(rates, costs) == [0, 1, 2]
    value, used = cost_at_rate(rates, costs, 0.01)
    assert value == pytest.approx(8.0) and used == [0, 1]
    assert cost_at_rate(rates, costs, 0.02) == (6.0, [1])
    assert cost_at_rate(rates, costs, 0.05) == (4.0, [2])
    assert cost_at_rate(rates, costs, 0.5) == (4.0, [2])  # looser than the cheapest point: its cost
    assert math.isnan(cost_at_rate([0.02, 0.03], [1.0, 2.0], 0.01)[0])  # never gets down to 1%
    # 4% is read on 0.02..0.05 (the point at 3% is not on the hull), and a point above the hull moves
    # nothing.
    assert cost_at_rate(rates, costs, 0.04)[0] == pytest.approx(6.0 - 2.0 * 2 / 3)
    assert cost_at_rate([*rates, 0.025], [*costs, 7.0], 0.04)[0] == pytest.approx(6.0 - 2.0 * 2 / 3)
    # The Pareto front alone would keep (0.02, 6) and (0.04, 5.5) and read 5.75 at 3%; alternating the knobs
    # of 0.02 and 0.05 (6 and 4) gives 5.33 there, and so does the hull.
    assert cost_at_rate([0.02, 0.04, 0.05], [6.0, 5.5, 4.0], 0.03)[0] == pytest.approx(6.0 - 2.0 / 3)


def test_a_point_below_the_hull_lowers_it_and_is_used() -> None:
    rates, costs = [0.0, 0.02], [10.0, 6.0]
    assert cost_at_rate(rates, costs, 0.01)[0] == pytest.approx(8.0)
    value, used = cost_at_rate([*rates, 0.01], [*costs, 7.0], 0.01)
    assert value == 7.0 and used == [2]
    # Same rate twice: the cheaper point counts.
    assert cost_at_rate([0.01, 0.01, 0.0], [9.0, 7.0, 12.0], 0.01) == (7.0, [1])
    # Non-finite points are ignored.
    assert cost_at_rate([math.nan, 0.0, 0.02], [1.0, 10.0, math.inf], 0.01) == (10.0, [1])


_points = st.lists(
    st.tuples(st.floats(0.0, 0.2, allow_nan=False), st.floats(1.0, 100.0, allow_nan=False)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(_points, st.tuples(st.floats(0.0, 0.2), st.floats(1.0, 100.0)), st.floats(0.0, 0.25))
def test_adding_a_point_never_raises_the_hull(
    points: list[tuple[float, float]], extra: tuple[float, float], target: float
) -> None:
    rates, costs = [p[0] for p in points], [p[1] for p in points]
    before = cost_at_rate(rates, costs, target)[0]
    after = cost_at_rate([*rates, extra[0]], [*costs, extra[1]], target)[0]
    if not math.isnan(before):
        assert after <= before + 1e-9 * max(1.0, before)
    # And the hull is never above a point it could use: every point at or below the target bounds it.
    for r, c in zip(rates, costs, strict=True):
        if r <= target:
            assert before <= c + 1e-9 * c


# --- the lower bound ------------------------------------------------------------------------------------------


def bound_settings() -> Settings:
    # One replica serves 2 units; 1..4 replicas; 1 per replica-hour, 0.5 per violated one-hour step.
    return Settings(
        capacities={"a": 2.0},
        lead_time=1,
        violation_penalty=0.5,
        scaling=ScalingConfig(min_replicas=1, max_replicas=4),
    )


DEMAND = {
    "s1": np.array([[1.0], [3.0], [8.0], [5.0], [np.nan]]),  # needs 1, 2, 4, 3; the last step unknown
    "s2": np.array([[10.0], [2.0]]),  # needs 5 (> max: violated by every policy), then 1
}


def test_the_cost_bound_by_hand() -> None:
    s = bound_settings()
    # No budget: every need (11) + the forced step at min_replicas (1) and its penalty (0.5).
    assert cost_bound(DEMAND, s, 0.0, 3600.0) == pytest.approx(12.5)
    # 6 known steps x 0.34 = 2 violations, one taken by the forced step: skip the need-4 step (saves 3 - 0.5).
    assert cost_bound(DEMAND, s, 0.34, 3600.0) == pytest.approx(10.0)
    # 3 violations: also the need-3 step (saves 2 - 0.5); a need-1 step saves nothing and is never skipped.
    assert cost_bound(DEMAND, s, 0.5, 3600.0) == pytest.approx(8.5)
    assert cost_bound(DEMAND, s, 0.99, 3600.0) == pytest.approx(12.5 - 2.5 - 1.5 - 0.5)
    # Ten-minute steps: the replica part is a sixth, the penalties are not.
    assert cost_bound(DEMAND, s, 0.0, 600.0) == pytest.approx(12 / 6 + 0.5)
    with pytest.raises(ValueError, match="rate"):
        cost_bound(DEMAND, s, 1.0, 3600.0)


def test_needed_replicas_by_hand() -> None:
    s = bound_settings()
    # Unclipped (the bound clips to min/max replicas): 1, 2, 4, 3, unknown; 5 (above max), 1.
    np.testing.assert_array_equal(needed_replicas(DEMAND["s1"], s), [1.0, 2.0, 4.0, 3.0, np.nan])
    np.testing.assert_array_equal(needed_replicas(DEMAND["s2"], s), [5.0, 1.0])
    # Several indicators: the most demanding known one; 0.2 / 0.1 is 2 up to float noise, not 3.
    two = Settings(capacities={"a": 1.0, "b": 0.1}, lead_time=1)
    demand = np.array([[1.5, 0.2], [np.nan, np.nan], [0.5, np.nan], [0.0, 0.0]])
    np.testing.assert_array_equal(needed_replicas(demand, two), [2.0, np.nan, 1.0, 0.0])


def test_the_per_series_bound_gives_each_series_its_own_budget() -> None:
    s = bound_settings()
    # At 0.5: s1 has 4 known steps -> 2 violations (skip need 4 and need 3: 10 - 2.5 - 1.5 = 6);
    # s2 has 2 steps -> 1 violation, taken by its forced step (1 + 1 + 0.5 = 2.5).
    assert cost_bound(DEMAND, s, 0.5, 3600.0, per_series=True) == pytest.approx(6.0 + 2.5)
    # At 0.34: s1 gets floor(1.36) = 1 (skip need 4: 10 - 2.5), s2 floor(0.68) = 0 (still forced): 7.5 + 2.5.
    assert cost_bound(DEMAND, s, 0.34, 3600.0, per_series=True) == pytest.approx(10.0)
    # A per-series budget is never cheaper than the pooled one.
    for rate in (0.0, 0.1, 0.34, 0.5, 0.9):
        assert cost_bound(DEMAND, s, rate, 3600.0, per_series=True) >= cost_bound(DEMAND, s, rate, 3600.0)


# --- the gap and the validated table --------------------------------------------------------------------------


def test_gap_captured_by_hand() -> None:
    assert gap_captured(80.0, 100.0, 60.0) == pytest.approx(0.5)
    assert gap_captured(60.0, 100.0, 60.0) == 1.0
    assert gap_captured(100.0, 100.0, 60.0) == 0.0
    assert gap_captured(110.0, 100.0, 60.0) == pytest.approx(-0.25)
    assert math.isnan(gap_captured(80.0, 60.0, 60.0))  # no room above the bound
    assert math.isnan(gap_captured(math.nan, 100.0, 60.0))


def _summary(policy: str, cost: float, rate: float, worst: float) -> dict[str, float | str | int]:
    return {
        "policy": policy,
        "cost": cost,
        "violation_rate": rate,
        "worst_violation_rate": worst,
        "services_within_sla": 2,
        "series": 2,
        "replica_hours": cost,
        "decisions": 10.0,
        "fallbacks": 0.0,
        **dict.fromkeys(CAUSE_COLUMNS.values(), 0.0),
    }


def test_the_validated_table_and_headline_by_hand() -> None:
    val = {"harmony": (0.02, 90.0), "hpa": (0.6, 120.0), "point": (0.5, 110.0), "oracle": (math.nan, 60.0)}
    test = {"harmony": 95.0, "hpa": 125.0, "point": 105.0, "oracle": 62.0}
    # Every policy met the target on validation, but point with every service within it.
    met = {(p, c): not (p == "point" and c == "service") for p in val for c in ("total", "service")}
    tuned = {
        p: {
            c: Tuned(p, c, Knobs(p, k), met[(p, c)], _summary(p, v, 0.009, 0.01), 7)
            for c in ("total", "service")
        }
        for p, (k, v) in val.items()
    }
    at_test = {
        (c, p): _summary(p, cost, 0.011, 0.02) for p, cost in test.items() for c in ("total", "service")
    }
    bounds = {"total": 65.0, "service": 70.0}
    table = validated_table(tuned, at_test, bounds)
    t = table[table["criterion"] == "total"].set_index("policy")
    # The best baseline is point (105), not the HPA; the oracle and quantile are never baselines.
    assert (t["best_baseline"] == "point").all()
    assert t.loc["harmony", "cost_rel_best"] == pytest.approx(95 / 105)
    assert t.loc["harmony", "cost_rel_hpa"] == pytest.approx(95 / 125)
    assert t.loc["harmony", "cost_rel_oracle"] == pytest.approx(95 / 62)
    assert t.loc["harmony", "gap_captured"] == pytest.approx((105 - 95) / (105 - 65))
    assert t.loc["harmony", "knobs"] == "eps=0.02" and t.loc["hpa", "knobs"] == "target_utilization=0.6"
    assert t.loc["harmony", "val_cost"] == 90.0 and t.loc["harmony", "violation_rate"] == 0.011
    # With every service within the target, point's knobs did not meet it on validation: cheaper on test
    # (105) because it violates more, it is not the comparator; the HPA is.
    s = table[table["criterion"] == "service"].set_index("policy")
    assert (s["best_baseline"] == "hpa").all() and not s.loc["point", "met_on_val"]
    assert s.loc["harmony", "gap_captured"] == pytest.approx((125 - 95) / (125 - 70))
    h = headline(table, bounds)
    assert h["total"]["best_baseline"] == "point" and h["total"]["gap_captured"] == pytest.approx(0.25)
    assert h["service"]["bound"] == 70.0 and h["total"]["vs_hpa"] == pytest.approx(95 / 125)
    assert h["service"]["best_baseline"] == "hpa" and h["service"]["vs_best"] == pytest.approx(95 / 125)


def test_the_hindsight_table_reads_each_policys_hull() -> None:
    import pandas as pd

    rows = []
    for policy, points in {
        "harmony": [(0.05, 0.0, 100.0), (0.1, 0.02, 80.0)],
        "hpa": [(0.5, 0.0, 130.0), (0.7, 0.02, 90.0), (0.9, 0.05, 70.0)],
    }.items():
        for knob, rate, cost in points:
            name = "eps" if policy == "harmony" else "target_utilization"
            rows.append(
                {
                    "policy": policy,
                    "knob_name": name,
                    "knob": knob,
                    "setting": "-",
                    "knobs": f"{name}={knob:g}",
                    "violation_rate": rate,
                    "cost": cost,
                }
            )
    table = hindsight_table(pd.DataFrame(rows), 0.01, 50.0).set_index("policy")
    assert table.loc["harmony", "cost"] == pytest.approx(90.0)
    assert table.loc["harmony", "knobs"] == "eps=0.05..0.1"
    assert table.loc["hpa", "cost"] == pytest.approx(110.0)
    assert table.loc["harmony", "gap_captured"] == pytest.approx((110 - 90) / (110 - 50))
