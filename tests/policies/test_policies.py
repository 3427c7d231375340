"""harmony.policies: the HPA as documented by Kubernetes, static, point-forecast, quantile-only and oracle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from harmony.decision import Decider, DecisionConfig
from harmony.policies import (
    EHPAPolicy,
    HPAPolicy,
    OraclePolicy,
    PointForecastPolicy,
    Policy,
    QuantilePolicy,
    RateLimit,
    RateRule,
    StaticPolicy,
)

CPU = {"cpu": 1.0}  # one core requested per pod: utilisation = usage per pod / 1 core


def hpa(**kw: object) -> HPAPolicy:
    base: dict[str, object] = {"target_utilization": 0.1, "min_replicas": 1, "max_replicas": 100}
    base.update(kw)
    caps = base.pop("capacities", CPU)
    return HPAPolicy(caps, **base)  # type: ignore[arg-type]


def per_pod(milli: float, replicas: int) -> dict[str, float]:
    """Total demand for `replicas` pods each using `milli` millicores."""
    return {"cpu": milli / 1000.0 * replicas}


# --- the HPA, on the examples of kubernetes.io "Horizontal Pod Autoscaling" -------------------------------


def test_hpa_200m_current_vs_100m_target_doubles() -> None:
    # "if the current metric value is 200m, and the desired value is 100m, the number of replicas will be
    # doubled, since 200.0 / 100.0 == 2.0"
    d = hpa().decide(None, [], 4, 0.0, current_demand=per_pod(200, 4))
    assert (d.recommendation, d.replicas) == (8, 8)
    assert d.reason.startswith("hpa: cpu at 2.00x its 10% utilisation target proposes 8")


def test_hpa_50m_current_vs_100m_target_halves() -> None:
    # "If the current value is instead 50m, you'll halve the number of replicas, since 50.0 / 100.0 == 0.5"
    d = hpa().decide(None, [], 8, 0.0, current_demand=per_pod(50, 8))
    assert d.replicas == 4


@pytest.mark.parametrize(
    ("milli", "expected"), [(105, 10), (95, 10), (109, 10), (91, 10), (111, 12), (89, 9)]
)
def test_hpa_skips_scaling_within_the_tolerance(milli: float, expected: int) -> None:
    # "The control plane skips any scaling action if the ratio is sufficiently close to 1.0 (within a
    # configurable tolerance, 0.1 by default)": 1.05 would otherwise give ceil(10.5) = 11.
    d = hpa().decide(None, [], 10, 0.0, current_demand=per_pod(milli, 10))
    assert d.replicas == expected


def test_hpa_scale_down_window_takes_the_highest_recommendation_of_the_last_5_minutes() -> None:
    policy = hpa()
    cur = 10
    history: list[tuple[float, int]] = []
    # One decision a minute; proposals 10, 6, 7, 5, 8, 4, 4, 4, 4, 3, 3, 3 replicas (demand = proposal x 100m).
    for k, proposal in enumerate([10, 6, 7, 5, 8, 4, 4, 4, 4, 3, 3, 3]):
        now = 60.0 * k
        d = policy.decide(None, [], cur, now, current_demand=per_pod(100.0 * proposal / cur, cur))
        assert d.recommendation == proposal
        history.append((now, proposal))
        # At most 300 s old: a decision a minute stands for the HPA's syncs within that minute, the last of
        # which is strictly younger than 300 s when the decision is exactly 300 s old.
        in_window = [r for t, r in history if t >= now - 300.0]
        expected = min(cur, max(in_window)) if proposal < cur else proposal
        assert d.replicas == expected
        cur = d.replicas
    assert [r for _, r in history][-5:] == [4, 4, 3, 3, 3]
    assert cur == 4  # 4s proposed within the last 5 minutes hold the count above the latest 3


def test_hpa_stabilisation_example_of_the_behaviour_proposal() -> None:
    # KEP-853 example: scaleDown window 600 s, current 10; the recommendations 10, 9, 8, 9, 9, 8, 9, 8, 9, 8
    # a minute apart keep 10; then 7 arrives, the first 10 leaves the window: 10 -> 9. (The example ignores
    # the tolerance, under which 9/10 would propose no change.) The KEP syncs once a minute; here a decision
    # a minute stands for the HPA's 15-s syncs within that minute, whose last one re-made the first 10 at
    # 0:45, so the window at 10:00 still holds it and the 10 leaves at the next minute's decision.
    policy = hpa(scale_down_stabilization_s=600.0, tolerance=0.0, interval_s=60.0)
    cur = 10
    for k, proposal in enumerate([10, 9, 8, 9, 9, 8, 9, 8, 9, 8, 8]):
        cur = policy.decide(
            None, [], cur, 60.0 * k, current_demand=per_pod(100.0 * proposal / cur, cur)
        ).replicas
        assert cur == 10
    d = policy.decide(None, [], cur, 660.0, current_demand=per_pod(100.0 * 7 / cur, cur))
    assert d.replicas == 9
    assert d.reason.endswith("stabilised to 9 (scale-down window)")


def test_hpa_multiple_metrics_take_the_largest_proposal() -> None:
    caps = {"cpu": 1.0, "mem": 2.0}
    policy = hpa(capacities=caps, target_utilization={"cpu": 0.5, "mem": 0.8})
    # cpu: 2.4 / (4 * 1) / 0.5 = 1.2 -> ceil(4.8) = 5; mem: 12 / (4 * 2) / 0.8 = 1.875 -> ceil(7.5) = 8
    d = policy.decide(None, [], 4, 0.0, current_demand={"cpu": 2.4, "mem": 12.0})
    assert (d.replicas, d.binding_indicator) == (8, "mem")
    # A missing metric blocks a scale-down the others propose, but not a scale-up.
    d = hpa(capacities=caps).decide(None, [], 10, 0.0, current_demand={"cpu": 0.2})
    assert d.replicas == 10 and "missing: no scale-down" in d.reason
    d = hpa(capacities=caps).decide(None, [], 10, 0.0, current_demand={"cpu": 2.0})
    assert d.replicas == 20


def test_hpa_min_max_zero_and_rate_limits() -> None:
    assert hpa(max_replicas=6).decide(None, [], 4, 0.0, current_demand=per_pod(200, 4)).replicas == 6
    assert hpa(min_replicas=3).decide(None, [], 4, 0.0, current_demand=per_pod(10, 4)).replicas == 3
    d = hpa().decide(None, [], 0, 0.0, current_demand={"cpu": 5.0})
    assert d.replicas == 0 and "autoscaling is disabled" in d.reason
    # Default scale-up policies: max(+100%, +4 pods) per 15 s. 1 -> 20 wanted:
    assert hpa(interval_s=15.0).decide(None, [], 1, 0.0, current_demand={"cpu": 2.0}).replicas == 5
    assert hpa(interval_s=30.0).decide(None, [], 1, 0.0, current_demand={"cpu": 2.0}).replicas == 10
    assert hpa(interval_s=60.0).decide(None, [], 1, 0.0, current_demand={"cpu": 2.0}).replicas == 20
    no_limit = hpa(interval_s=15.0, scale_up="1000pods/15s")
    assert no_limit.decide(None, [], 1, 0.0, current_demand={"cpu": 2.0}).replicas == 20
    # No metric at all: hold.
    assert hpa().decide(None, [], 7, 0.0).replicas == 7


def test_hpa_reports_predicted_violation_on_draws() -> None:
    y = np.linspace(0.1, 1.0, 10).reshape(10, 1, 1)  # cpu draws 0.1 .. 1.0 cores
    d = hpa().decide(y, ["cpu"], 4, 0.0, current_demand=per_pod(100, 4))
    assert d.replicas == 4
    assert d.p_violation == pytest.approx(0.0)  # 4 cores serve every draw


# --- the HPA's whole behaviour ------------------------------------------------------------------------------


def test_rate_rule_text_round_trips_and_bad_text_is_named() -> None:
    limit = RateLimit.parse("100%/15s,4pods/15s")
    assert limit.rules == (RateRule("Percent", 100.0, 15.0), RateRule("Pods", 4.0, 15.0))
    assert limit.select == "Max" and limit.text() == "100%/15s,4pods/15s"
    assert RateLimit.parse("min:1pod/600s, 10%/600s").text() == "min:1pod/600s,10%/600s"
    assert RateLimit.parse("Disabled").select == "Disabled"
    for bad, message in (
        ("10 per minute", "expected VALUE%/PERIODs"),
        ("1.5pods/60s", "whole number of pods"),
        ("10%/3600s", r"period must be in \(0, 1800\]"),
    ):
        with pytest.raises(ValueError, match=message):
            RateLimit.parse(bad)


def test_rate_rules_count_the_changes_within_their_period() -> None:
    # The Kubernetes docs' scale-down example: at most 4 pods or 10% per minute, the larger change (Max).
    limit = RateLimit.parse("4pods/60s,10%/60s")
    # 80 pods, nothing removed within the minute: Pods allows 76, Percent floor(72) = 72: Max takes 72.
    assert limit.limit(80, [0.0, 0.0], [0.0, 0.0], up=False) == 72
    # 8 already removed within the minute: the period started at 80 again, so still 72 from 80.
    assert limit.limit(72, [0.0, 0.0], [8.0, 8.0], up=False) == 72
    # Min takes the smaller change: 76.
    assert RateLimit.parse("min:4pods/60s,10%/60s").limit(80, [0.0, 0.0], [0.0, 0.0], up=False) == 76
    # Scaling up: ceil(start x (1 + p)) and start + pods, the larger (Max).
    assert RateLimit.parse("100%/15s,4pods/15s").limit(1, [0.0, 0.0], [0.0, 0.0], up=True) == 5
    assert RateLimit.parse("100%/15s,4pods/15s").limit(10, [0.0, 0.0], [0.0, 0.0], up=True) == 20
    assert RateLimit.parse("disabled").limit(10, [], [], up=True) == 10


def test_a_slow_scale_down_rule_spans_decisions_at_10_minute_steps() -> None:
    # 1 pod per 600 s down, decisions every 600 s (40 syncs of 15 s each): the demand drops from 10 pods'
    # worth to 1 pod's; each decision may remove one pod, counted over the last 600 s of syncs.
    policy = hpa(target_utilization=1.0, tolerance=0.0, scale_down_stabilization_s=0.0,
                 scale_down="1pod/600s", interval_s=600.0)  # fmt: skip
    cur = policy.decide(None, [], 10, 0.0, current_demand={"cpu": 10.0}).replicas
    assert cur == 10
    counts = []
    for k in range(1, 6):
        d = policy.decide(None, [], cur, 600.0 * k, current_demand={"cpu": 1.0})
        assert d.recommendation == 1
        cur = d.replicas
        counts.append(cur)
    assert counts == [9, 8, 7, 6, 5]
    assert d.reason.endswith("stabilised to 5 (scaling policy rate limit)")
    # The default rule (100% per 15 s) drops to the need at once.
    fast = hpa(target_utilization=1.0, tolerance=0.0, scale_down_stabilization_s=0.0, interval_s=600.0)
    assert fast.decide(None, [], 10, 0.0, current_demand={"cpu": 1.0}).replicas == 1


def test_tolerance_per_direction() -> None:
    # Ratio 1.15 (115m per pod at a 100m target): beyond the default 0.1, within an up-tolerance of 0.2.
    assert hpa().decide(None, [], 10, 0.0, current_demand=per_pod(115, 10)).replicas == 12
    assert hpa(up_tolerance=0.2).decide(None, [], 10, 0.0, current_demand=per_pod(115, 10)).replicas == 10
    # Ratio 0.95: within the default, beyond a down-tolerance of 0.
    assert hpa().decide(None, [], 10, 0.0, current_demand=per_pod(95, 10)).replicas == 10
    assert hpa(down_tolerance=0.0).decide(None, [], 10, 0.0, current_demand=per_pod(95, 10)).replicas == 10
    assert hpa(down_tolerance=0.0).decide(None, [], 20, 0.0, current_demand=per_pod(95, 20)).replicas == 19
    with pytest.raises(ValueError, match="tolerances must be >= 0"):
        hpa(tolerance=-0.1)


def test_the_scale_up_window_holds_the_lowest_recommendation() -> None:
    policy = hpa(scale_up_stabilization_s=120.0, interval_s=60.0)
    cur = 4
    for k, proposal in enumerate([4, 8, 8, 8]):
        cur = policy.decide(
            None, [], cur, 60.0 * k, current_demand=per_pod(100.0 * proposal / cur, cur)
        ).replicas
    # 8 is proposed at 60, 120, 180 s; the 4 of 0 s is in the window until 120 s: up at 180 s.
    assert cur == 8
    policy.reset()
    cur = 4
    seen = []
    for k, proposal in enumerate([4, 8, 8, 8]):
        cur = policy.decide(
            None, [], cur, 60.0 * k, current_demand=per_pod(100.0 * proposal / cur, cur)
        ).replicas
        seen.append(cur)
    assert seen == [4, 4, 4, 8]


# --- crane's Effective HPA ---------------------------------------------------------------------------------


def test_ehpa_takes_the_larger_of_the_observed_and_the_forecast_metric() -> None:
    policy = EHPAPolicy(CPU, target_utilization=0.5, max_replicas=100, tolerance=0.1, interval_s=60.0)
    # Observed 2 cores on 4 pods: ratio 2 / (4 x 0.5) = 1.0, within the tolerance: 4. Forecast median per
    # step [2.0, 3.0, 2.5] (draws 1..3 x that): peak 3.0, ratio 3 / 2 = 1.5 -> ceil(4 x 1.5) = 6.
    y = np.array([[2.0, 3.0, 2.5]]).T[None, :, :] * np.array([0.5, 1.0, 1.5])[:, None, None]
    d = policy.decide(y, ["cpu"], 4, 0.0, current_demand={"cpu": 2.0})
    assert (d.recommendation, d.replicas, d.binding_indicator) == (6, 6, "cpu")
    assert d.reason.startswith("ehpa: cpu (forecast) at 1.50x its 50% utilisation target proposes 6")
    assert d.policy == "ehpa"
    # The observed metric wins when it is higher: 4 cores now -> ceil(4 x 2.0) = 8.
    policy.reset()
    assert policy.decide(y, ["cpu"], 4, 0.0, current_demand={"cpu": 4.0}).replicas == 8
    # Without draws it is the HPA.
    policy.reset()
    plain = HPAPolicy(CPU, target_utilization=0.5, max_replicas=100, interval_s=60.0)
    assert (
        policy.decide(None, ["cpu"], 4, 0.0, current_demand={"cpu": 3.0}).replicas
        == plain.decide(None, ["cpu"], 4, 0.0, current_demand={"cpu": 3.0}).replicas
        == 6
    )
    # Broken draws are ignored, not fatal.
    policy.reset()
    bad = np.full((5, 3, 1), np.nan)
    assert policy.decide(bad, ["cpu"], 4, 0.0, current_demand={"cpu": 2.0}).replicas == 4
    # Draws that do not cover the demand indicators are the caller's bug.
    with pytest.raises(ValueError, match="do not cover the demand indicators"):
        policy.decide(y, ["mem"], 4, 0.0, current_demand={"cpu": 2.0})


# --- static ------------------------------------------------------------------------------------------------


def test_static_peak_provisioning_by_hand() -> None:
    caps = {"req": 10.0, "gpu": 2.0}
    # req: 95 / 10 * 1.2 = 11.4 -> 12; gpu: 12 / 2 * 1.2 = 7.2 -> 8
    policy = StaticPolicy(caps, {"req": 95.0, "gpu": 12.0}, headroom=0.2)
    d = policy.decide(None, [], 3, 0.0)
    assert (d.replicas, d.binding_indicator) == (12, "req")
    assert policy.decide(None, [], 50, 1e6).replicas == 12
    hist = {"req": np.array([10.0, np.nan, 95.0, 40.0]), "gpu": [1.0, 12.0, 3.0, np.nan]}
    assert StaticPolicy.from_history(caps, hist, headroom=0.2).replicas == 12
    assert (
        StaticPolicy(caps, {"req": 95.0, "gpu": 12.0}, max_replicas=10).decide(None, [], 3, 0.0).replicas
        == 10
    )
    with pytest.raises(ValueError, match=r"no finite training peak for \['gpu'\]"):
        StaticPolicy(caps, {"req": 95.0})


# --- point forecast ----------------------------------------------------------------------------------------


def decision_config(**kw: object) -> DecisionConfig:
    base: dict[str, object] = {
        "capacities": {"req": 5.0},
        "max_replicas": 1000,
        "min_replicas": 0,
        "scale_down_stabilization_s": 0.0,
    }
    base.update(kw)
    return DecisionConfig(**base)  # type: ignore[arg-type]


def test_point_forecast_by_hand() -> None:
    # Draws [S=3, H=2, N=1]; per-step median [12, 25], mean [12, 30].
    y = np.array([[10.0, 20.0], [12.0, 45.0], [14.0, 25.0]])[:, :, None]
    policy = PointForecastPolicy(decision_config(), target_utilization=0.5, margin=0.1)
    d = policy.decide(y, ["req"], 1, 0.0)
    # 25 / (5 * 0.5) * 1.1 = 11 (exactly, up to float noise)
    assert (d.recommendation, d.replicas, d.binding_indicator, d.binding_step) == (11, 11, "req", 2)
    # R per draw = [4, 9, 5]; 11 is past the largest draw (9): exponential tail, scale = 9 - 5, mass 1/3.
    assert d.p_violation == pytest.approx(math.exp(-(11 - 9) / 4) / 3)
    mean = PointForecastPolicy(decision_config(), target_utilization=0.5, margin=0.1, point="mean")
    assert mean.decide(y, ["req"], 1, 0.0).replicas == 14  # 30 / 2.5 * 1.1 = 13.2
    # A single draw is the given point forecast.
    single = PointForecastPolicy(decision_config(), target_utilization=1.0)
    assert single.decide(np.array([[[7.0], [26.0]]]), ["req"], 1, 0.0).replicas == 6


def test_point_forecast_without_draws_uses_the_reactive_fallback() -> None:
    policy = PointForecastPolicy(decision_config())
    d = policy.decide(None, ["req"], 2, 0.0, current_demand={"req": 7.0})
    # 7 / (5 * 0.7) * 1.1 = 2.2 -> 3
    assert d.fallback and d.replicas == 3 and d.policy == "point"
    assert d.reason.startswith("fallback: no forecast") and d.fallback_cause == "no_forecast"
    broken = policy.decide(np.full((4, 1, 1), np.inf), ["req"], 2, 60.0, current_demand={"req": 7.0})
    assert broken.fallback_cause == "bad_draws" and broken.replicas == 3


# --- quantile only -----------------------------------------------------------------------------------------


def test_quantile_policy_is_the_chance_constraint_without_adaptation() -> None:
    cfg = decision_config(capacities={"req": 1.0}, max_violation_probability=0.05)
    y = np.arange(1, 101, dtype=np.float64).reshape(100, 1, 1)
    quantile = QuantilePolicy(cfg)
    adaptive = Decider(dataclasses.replace(cfg, fallback_on_miscalibration=False))
    assert quantile.decide(y, ["req"], 1, 0.0).replicas == adaptive.decide(y, ["req"], 1, 0.0).replicas == 95
    for t in range(1, 300):  # every interval violated: only the adaptive decider reacts
        for policy in (quantile, adaptive):
            d = policy.decide(y, ["req"], 1, 60.0 * t)
            policy.observe({"req": 1000.0}, d.replicas)
    dq = quantile.decide(y, ["req"], 1, 60.0 * 300)
    assert dq.replicas == 95 and dq.policy == "quantile" and dq.quantile_level == pytest.approx(0.95)
    assert adaptive.decide(y, ["req"], 1, 60.0 * 300).replicas > 95
    assert quantile.tracker.mean > 0.5  # the posterior is still kept, for reporting


# --- oracle ------------------------------------------------------------------------------------------------


def test_oracle_by_hand() -> None:
    times = 60.0 * np.arange(6)
    realised = {"req": [10.0, 42.0, 18.0, 7.0, np.nan, 3.0], "gpu": [0.1, 0.1, 0.9, 0.2, 0.2, 0.2]}
    caps = {"req": 5.0, "gpu": 0.25}
    one = OraclePolicy(caps, realised, times, lead_time_s=60.0, window_s=60.0, min_replicas=1)
    # decision at 0 is in force over [60, 120): req 42 / 5 = 8.4 -> 9, gpu 0.1 / 0.25 = 0.4 -> 1
    d = one.decide(None, [], 1, 0.0)
    assert (d.replicas, d.binding_indicator) == (9, "req")
    # at 60 over [120, 180): req 18 / 5 = 3.6, gpu 0.9 / 0.25 = 3.6 -> 4
    assert one.decide(None, [], 9, 60.0).replicas == 4
    # at 180 over [240, 300): req missing (NaN), gpu 0.8 -> 1
    assert one.decide(None, [], 4, 180.0).replicas == 1
    # past the end of the trace: hold
    d = one.decide(None, [], 4, 300.0)
    assert d.replicas == 4 and "no realised demand" in d.reason
    wide = OraclePolicy(caps, realised, times, lead_time_s=0.0, window_s=180.0)
    assert wide.decide(None, [], 1, 0.0).replicas == 9  # max over [0, 180)
    assert one.observe({"req": 46.0}, 9) is True
    assert one.observe({"req": 45.0}, 9) is False


# --- the shared interface ----------------------------------------------------------------------------------


def test_every_policy_implements_the_interface() -> None:
    cfg = decision_config()
    policies: list[Policy] = [
        Decider(cfg),
        QuantilePolicy(cfg),
        PointForecastPolicy(cfg),
        PointForecastPolicy(cfg, name="arima"),
        EHPAPolicy(cfg.capacities, max_replicas=10),
        HPAPolicy(cfg.capacities, max_replicas=10),
        StaticPolicy(cfg.capacities, {"req": 20.0}),
        OraclePolicy(cfg.capacities, {"req": [1.0, 2.0]}, [0.0, 60.0], lead_time_s=0.0, window_s=60.0),
    ]
    names = {p.name for p in policies}
    assert names == {"harmony", "quantile", "point", "arima", "ehpa", "hpa", "static", "oracle"}
    y = np.full((20, 3, 1), 12.0)
    for policy in policies:
        assert isinstance(policy, Policy)
        d = policy.decide(y, ["req"], 2, 0.0, current_demand={"req": 12.0})
        assert d.policy == policy.name and d.replicas >= 0 and d.reason
        assert policy.observe({"req": 12.0}, d.replicas) is (5.0 * d.replicas < 12.0)
        policy.reset()


# --- ARIMA and ETS forecasts as NVIDIA Dynamo's planner uses them -----------------------------------------


@pytest.mark.parametrize("model", ["arima", "ets"])
def test_a_classical_forecast_with_a_margin_by_hand(model: str) -> None:
    from harmony.model.classical import ClassicalConfig, point_forecasts

    # Demand 2 + 0.5 t: a decision at step 150 knows steps up to 149, and with lead 1 and a 3-step window
    # reads both models' continuation of the line at steps 151..153: 77.5, 78, 78.5.
    line = (2.0 + 0.5 * np.arange(200))[:, None]
    config = ClassicalConfig(model=model, history=100, refit_every=50)  # type: ignore[arg-type]
    path, _ = point_forecasts(line, [150], 1, 3, config)
    np.testing.assert_allclose(path[0, :, 0], [77.5, 78.0, 78.5], rtol=2e-3)
    config_ = decision_config(capacities={"req": 10.0}, lead_steps=1)
    policy = PointForecastPolicy(config_, target_utilization=1.0, margin=0.2, name=model)
    d = policy.decide(path[0][None, :, :], ["req"], 5, 0.0)
    # The peak, 78.5 / 10 x 1.2 = 9.42: 10 replicas, binding at the window's last step (+4 after the lead).
    assert (d.replicas, d.binding_step, d.policy) == (10, 4, model)
    assert d.reason.startswith(f"{model}: point (median) forecast of req at +4 steps")
