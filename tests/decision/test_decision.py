"""harmony.decision: quantile rule, newsvendor, clipping, binding, stabilisation, fallback, adaptation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from harmony.decision import (
    CalibrationTracker,
    Decider,
    Decision,
    DecisionConfig,
    DemandDraws,
    Stabilizer,
    beta_cdf,
    beta_quantile,
    ceil_replicas,
    format_level,
    is_violation,
    reactive_replicas,
)


def config(**kw: object) -> DecisionConfig:
    base: dict[str, object] = {
        "capacities": {"req": 1.0},
        "max_replicas": 10_000,
        "min_replicas": 0,
        "scale_down_stabilization_s": 0.0,
    }
    base.update(kw)
    return DecisionConfig(**base)  # type: ignore[arg-type]


def grid_draws(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """[S, 1, 1] draws whose replicas-needed R are exactly `values` (capacity 1), in shuffled order."""
    rng = np.random.default_rng(seed)
    return rng.permutation(values).reshape(-1, 1, 1).astype(np.float64)


def smallest_safe_count(r: np.ndarray, eps: float) -> int:
    """The defining property by brute force: the least integer n with #{R > n} <= floor(eps * S)."""
    allowed = math.floor(eps * r.size + 1e-9)
    n = 0
    while (r > n).sum() > allowed:
        n += 1
    return n


# --- the quantile rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.01, 0.02, 0.05, 0.1, 0.2, 0.37, 0.5])
def test_grid_draws_give_ceil_of_the_known_quantile(eps: float) -> None:
    r = np.arange(100) + 0.5  # R on a grid: Q_{1-eps} is the (100 - 100*eps)-th value, known exactly
    d = Decider(config(max_violation_probability=eps)).decide(grid_draws(r), ["req"], 1, 0.0)
    assert d.recommendation == d.replicas == smallest_safe_count(r, eps)
    # e.g. eps = 0.05: 5 draws may exceed, the 95th value is 94.5 -> 95 replicas.
    expected = math.ceil(r[99 - math.floor(eps * 100 + 1e-9)])
    assert d.replicas == expected
    assert d.p_violation is not None and d.p_violation <= eps
    assert (r > d.replicas - 1).mean() > eps  # one replica fewer breaks the constraint on the draws
    assert d.quantile_level == pytest.approx(1 - eps)
    assert not d.fallback and d.policy == "harmony"


def test_quantile_example_p95_on_grid() -> None:
    r = np.arange(1, 101, dtype=np.float64)  # R = 1..100
    d = Decider(config(max_violation_probability=0.05)).decide(grid_draws(r), ["req"], 1, 0.0)
    assert d.replicas == 95  # P(R > 95) = 5/100 <= 0.05, P(R > 94) = 6/100
    assert d.p_violation == pytest.approx(0.05)
    assert d.reason.startswith("p95 of demand over the next 1 step needs 95 replicas")


def test_replicas_needed_is_max_over_steps_and_indicators_over_capacity() -> None:
    y = np.array([[[10.0, 1.0], [30.0, 2.0]], [[5.0, 9.0], [1.0, 1.0]]])  # [S=2, H=2, N=2]
    draws = DemandDraws(y, ["a", "b"], {"a": 10.0, "b": 2.0})
    # draw 0: max(1, 0.5, 3, 1) = 3 (a at step 1); draw 1: max(0.5, 4.5, 0.1, 0.5) = 4.5 (b at step 0)
    np.testing.assert_allclose(draws.ratios_sorted, [3.0, 4.5])
    assert draws.binding(0) == ("a", 1)
    assert draws.binding(1) == ("b", 0)


def test_indicators_without_capacity_are_ignored_but_demand_ones_are_required() -> None:
    y = np.ones((4, 3, 2))
    DemandDraws(y, ["req", "cpu"], {"req": 1.0})  # cpu is a resource indicator: ignored
    with pytest.raises(ValueError, match=r"do not cover demand indicator\(s\) \['gpu'\]"):
        DemandDraws(y, ["req", "cpu"], {"req": 1.0, "gpu": 1.0})
    with pytest.raises(ValueError, match=r"must be \[S, H, N\]"):
        DemandDraws(np.ones((4, 3)), ["req"], {"req": 1.0})
    with pytest.raises(ValueError, match="2 indicators but 1 names"):
        DemandDraws(y, ["req"], {"req": 1.0})


def test_levels_beyond_the_draws_extrapolate_an_exponential_tail() -> None:
    r = np.arange(1, 101, dtype=np.float64)
    draws = DemandDraws(grid_draws(r), ["req"], {"req": 1.0})
    assert draws.quantile(0.01) == (99.0, 98)  # 1/S: one draw may lie above
    top_ten_excess = float(np.mean(r[90:] - r[89]))  # mean excess of the top 10% over the 90th value
    assert draws.tail_scale == pytest.approx(top_ten_excess)
    q, rank = draws.quantile(0.001)
    assert rank == 99
    assert q == pytest.approx(100.0 + top_ten_excess * math.log(10.0))
    assert draws.exceedance(q) == pytest.approx(0.001)  # the tail model inverts its own quantile
    assert draws.exceedance(99.5) == pytest.approx(0.01)  # empirical below the largest draw
    d = Decider(config(max_violation_probability=0.001, min_working_probability=1e-4)).decide(
        grid_draws(r), ["req"], 1, 0.0
    )
    assert d.replicas == math.ceil(q) > 100
    assert d.p_violation is not None and d.p_violation <= 0.001


# --- the newsvendor ----------------------------------------------------------------------------------------


def test_critical_fractile_by_hand() -> None:
    r = np.arange(1, 101, dtype=np.float64)
    # price 1 per replica-hour, interval 1 h -> 1 per replica-interval; penalty 20 -> fractile 1/20 = 0.05,
    # stricter than the SLA eps = 0.2: n = max(ceil(Q_0.8), ceil(Q_0.95)) = max(80, 95) = 95.
    cfg = config(
        max_violation_probability=0.2, replica_hour_price=1.0, violation_penalty=20.0, interval_s=3600.0
    )
    assert cfg.price_per_interval == 1.0
    assert cfg.cost_probability == pytest.approx(0.05)
    assert cfg.cost_binds
    d = Decider(cfg).decide(grid_draws(r), ["req"], 1, 0.0)
    assert d.replicas == 95
    assert d.p_violation == pytest.approx(0.05)
    assert d.expected_cost == pytest.approx(1.0 * 95 + 20.0 * 0.05)
    assert d.reason.startswith("cost-optimal p95 of demand")
    # The SLA binds when it is the stricter one.
    d = Decider(dataclasses.replace(cfg, max_violation_probability=0.01)).decide(
        grid_draws(r), ["req"], 1, 0.0
    )
    assert d.replicas == 99


def test_no_cost_term_when_the_penalty_does_not_exceed_the_price() -> None:
    cfg = config(
        max_violation_probability=0.2, replica_hour_price=60.0, violation_penalty=1.0, interval_s=60.0
    )
    assert cfg.cost_probability is None and not cfg.cost_binds
    d = Decider(cfg).decide(grid_draws(np.arange(1, 101, dtype=np.float64)), ["req"], 1, 0.0)
    assert d.replicas == 80


def test_monotone_in_eps_and_in_price_over_penalty() -> None:
    rng = np.random.default_rng(3)
    y = rng.gamma(4.0, 25.0, size=(200, 12, 2))
    names = ["req", "gpu"]
    caps = {"req": 10.0, "gpu": 7.0}

    def count(**kw: object) -> int:
        return Decider(config(capacities=caps, **kw)).decide(y, names, 1, 0.0).replicas

    by_eps = [count(max_violation_probability=e) for e in (0.5, 0.3, 0.1, 0.05, 0.02, 0.005, 0.001)]
    assert by_eps == sorted(by_eps) and by_eps[0] < by_eps[-1]
    by_penalty = [
        count(max_violation_probability=0.5, violation_penalty=k, replica_hour_price=60.0, interval_s=60.0)
        for k in (1.0, 2.5, 5.0, 20.0, 100.0, 1000.0)
    ]
    assert by_penalty == sorted(by_penalty) and by_penalty[0] < by_penalty[-1]
    by_price = [
        count(max_violation_probability=0.5, violation_penalty=100.0, replica_hour_price=p, interval_s=3600.0)
        for p in (0.5, 2.0, 10.0, 40.0, 99.0)
    ]
    assert by_price == sorted(by_price, reverse=True) and by_price[0] > by_price[-1]


# --- clipping, binding -------------------------------------------------------------------------------------


def test_min_and_max_clipping() -> None:
    big = grid_draws(np.full(50, 500.0))
    d = Decider(config(max_replicas=40)).decide(big, ["req"], 10, 0.0)
    assert (d.recommendation, d.replicas) == (500, 40)
    assert d.reason.endswith("; stabilised to 40 (max_replicas)")
    assert d.p_violation == 1.0
    small = grid_draws(np.full(50, 0.3))
    d = Decider(config(min_replicas=3)).decide(small, ["req"], 10, 0.0)
    assert (d.recommendation, d.replicas) == (1, 3)
    assert d.reason.endswith("(min_replicas)")
    assert Decider(config()).decide(grid_draws(np.zeros(10)), ["req"], 1, 0.0).replicas == 0


def test_binding_indicator_and_step_on_a_constructed_case() -> None:
    s = 100
    y = np.zeros((s, 12, 2))
    y[:, :, 0] = 50.0  # req needs 5 replicas everywhere (capacity 10)
    y[:, 4, 1] = np.linspace(1.0, 9.0, s)  # gpu needs up to 9 replicas, at horizon step 5 only (capacity 1)
    cfg = config(capacities={"req": 10.0, "gpu": 1.0}, max_violation_probability=0.1)
    d = Decider(cfg).decide(y, ["req", "gpu"], 1, 0.0)
    assert d.binding_indicator == "gpu"
    assert d.binding_step == 5
    assert "(binding: gpu at +5 steps)" in d.reason
    assert d.replicas == math.ceil(np.linspace(1.0, 9.0, s)[89])
    # With the gpu quiet, req binds; its first maximal step is reported.
    y[:, 4, 1] = 1.0
    d = Decider(cfg).decide(y, ["req", "gpu"], 1, 0.0)
    assert (d.binding_indicator, d.binding_step, d.replicas) == ("req", 1, 5)
    # The lead time shifts the reported step and the window words.
    d = Decider(dataclasses.replace(cfg, lead_steps=3)).decide(y, ["req", "gpu"], 1, 0.0)
    assert d.binding_step == 4
    assert "over steps +4..+15" in d.reason


# --- stabilisation -----------------------------------------------------------------------------------------


def test_scale_down_window_keeps_the_max_within_300_s_and_releases_after() -> None:
    # A window holds the recommendations at most 300 s old, the one exactly 300 s old included (it stands
    # for the HPA's sync 15 s after it, which a decision every step cannot see).
    st = Stabilizer(min_replicas=1, max_replicas=100, scale_down_stabilization_s=300.0)
    cur = 1
    trace = [(0.0, 10, 10), (60.0, 5, 10), (120.0, 6, 10), (299.0, 4, 10), (300.0, 4, 10), (301.0, 4, 6)]
    trace += [(360.0, 4, 6)]
    trace += [(421.0, 4, 4), (480.0, 12, 12), (540.0, 3, 12)]
    for now, rec, expected in trace:
        cur, cause = st.apply(rec, cur, now)
        assert cur == expected, (now, rec)
        assert (cause == "scale-down window") == (expected > rec)


def test_decider_reports_the_stabilisation() -> None:
    cfg = dataclasses.replace(config(), scale_down_stabilization_s=300.0)
    dec = Decider(cfg)
    assert dec.decide(grid_draws(np.full(20, 7.5)), ["req"], 1, 0.0).replicas == 8
    d = dec.decide(grid_draws(np.full(20, 6.5)), ["req"], 8, 60.0)
    assert (d.recommendation, d.replicas) == (7, 8)
    assert d.reason == (
        "p99 of demand over the next 1 step needs 7 replicas (binding: req at +1 steps); "
        "stabilised to 8 (scale-down window)"
    )
    assert dec.decide(grid_draws(np.full(20, 6.5)), ["req"], 8, 301.0).replicas == 7


def test_max_step_limits_and_bounds() -> None:
    st = Stabilizer(min_replicas=2, max_replicas=30, scale_down_stabilization_s=0.0, max_scale_up_step=3)
    assert st.apply(20, 5, 0.0) == (8, "max step up")
    assert st.apply(1, 8, 1.0) == (2, "min_replicas")
    st = Stabilizer(min_replicas=2, max_replicas=30, scale_down_stabilization_s=0.0, max_scale_down_step=2)
    assert st.apply(3, 10, 0.0) == (8, "max step down")
    assert st.apply(50, 8, 1.0) == (30, "max_replicas")
    # A count above max comes back within bounds even past the step limit: the bounds win.
    assert st.apply(30, 40, 2.0) == (30, None)
    with pytest.raises(ValueError, match="time went backwards"):
        st.apply(30, 30, 1.5)


def test_step_limits_through_the_config() -> None:
    dec = Decider(config(max_scale_up_step=2))
    d = dec.decide(grid_draws(np.full(10, 9.5)), ["req"], 4, 0.0)
    assert (d.recommendation, d.replicas) == (10, 6)
    assert d.reason.endswith("stabilised to 6 (max step up)")


def test_hpa_rate_rules_limit_changes_within_their_periods() -> None:
    """HPA `behavior` policies, by hand: 'Pods 2 per 60 s' from 1 replica allows 3, then nothing more until
    the change leaves the period; 'Percent 50 per 60 s' down from 10 allows 5; Disabled forbids a direction;
    selectPolicy Min takes the rule allowing the smaller change."""
    from harmony.decision.rates import RateLimit

    up = RateLimit.parse("2pods/60s")
    st = Stabilizer(min_replicas=1, max_replicas=100, scale_down_stabilization_s=0.0, scale_up_rate=up)
    assert st.apply(10, 1, 0.0) == (3, "scale-up rate 2pods/60s")
    assert st.apply(10, 3, 30.0) == (3, "scale-up rate 2pods/60s")  # +2 already made within 60 s
    assert st.apply(10, 3, 60.0) == (5, "scale-up rate 2pods/60s")  # the first change has left the period
    assert st.apply(6, 5, 121.0) == (6, None)  # within the limit: untouched
    # Kept across a restart through the Decider's state.
    again = Stabilizer(min_replicas=1, max_replicas=100, scale_down_stabilization_s=0.0, scale_up_rate=up)
    again.load_rate_state(st.rate_state())
    assert again.apply(20, 6, 130.0) == (7, "scale-up rate 2pods/60s")  # +1 at 121 s is still in the period

    down = RateLimit.parse("50%/60s")
    st = Stabilizer(min_replicas=1, max_replicas=100, scale_down_stabilization_s=0.0, scale_down_rate=down)
    assert st.apply(1, 10, 0.0) == (5, "scale-down rate 50%/60s")
    assert st.apply(1, 5, 10.0) == (5, "scale-down rate 50%/60s")  # the period started at 10 replicas
    assert st.apply(20, 5, 20.0) == (20, None)  # no rule upwards: no limit
    disabled = Stabilizer(
        min_replicas=1,
        max_replicas=100,
        scale_down_stabilization_s=0.0,
        scale_down_rate=RateLimit.parse("disabled"),
    )
    assert disabled.apply(1, 10, 0.0) == (10, "scale-down rate disabled")
    both = RateLimit.parse("min:4pods/60s,100%/60s")  # from 10: +4 or +10; Min takes +4
    st = Stabilizer(min_replicas=1, max_replicas=100, scale_down_stabilization_s=0.0, scale_up_rate=both)
    assert st.apply(50, 10, 0.0) == (14, "scale-up rate min:4pods/60s,100%/60s")


def test_rate_rules_and_up_window_through_the_config() -> None:
    from harmony.decision.rates import RateLimit

    dec = Decider(config(scale_up_rate=RateLimit.parse("1pod/600s"), scale_down_stabilization_s=0.0))
    d = dec.decide(grid_draws(np.full(10, 9.5)), ["req"], 4, 0.0)
    assert (d.recommendation, d.replicas) == (10, 5)
    assert d.reason.endswith("stabilised to 5 (scale-up rate 1pod/600s)")
    assert dec.state_dict()["rate_changes"] == [(0.0, 1)]
    restored = Decider(config(scale_up_rate=RateLimit.parse("1pod/600s"), scale_down_stabilization_s=0.0))
    restored.load_state_dict(dec.state_dict())
    assert restored.decide(grid_draws(np.full(10, 9.5)), ["req"], 5, 60.0).replicas == 5  # 1 pod per 600 s
    with pytest.raises(ValueError, match="scale_up_rate must be None or a RateLimit"):
        config(scale_up_rate="1pod/60s")
    # The HPA's scale-up window: the lowest recommendation of the window.
    windowed = Decider(config(scale_up_stabilization_s=120.0, scale_down_stabilization_s=0.0))
    assert windowed.decide(grid_draws(np.full(10, 2.5)), ["req"], 3, 0.0).replicas == 3
    assert windowed.decide(grid_draws(np.full(10, 9.5)), ["req"], 3, 60.0).replicas == 3  # 3 is in the window


# --- fallback ----------------------------------------------------------------------------------------------


def test_fallback_rule_by_hand() -> None:
    caps = {"req": 10.0, "gpu": 0.5}
    cfg = config(capacities=caps, fallback_target_utilization=0.7, fallback_margin=0.1)
    # req: 130 / (10 * 0.7) * 1.1 = 20.43 -> 21; gpu: 2 / (0.5 * 0.7) * 1.1 = 6.29 -> 7
    d = Decider(cfg).decide(None, ["req", "gpu"], 30, 0.0, current_demand={"req": 130.0, "gpu": 2.0})
    assert (d.replicas, d.recommendation, d.binding_indicator, d.fallback) == (21, 21, "req", True)
    assert d.fallback_cause == "no_forecast"
    assert d.reason == (
        "fallback: no forecast; current demand needs 21 replicas at 70% target utilisation + 10% margin "
        "(binding: req)"
    )
    assert d.p_violation is None and d.quantile_level is None
    assert reactive_replicas({"req": 130.0, "gpu": 2.0}, caps, 0.7, 0.1) == (21, "req", [])


def test_fallback_never_below_the_safe_floor() -> None:
    caps = {"req": 10.0, "gpu": 0.5}
    cfg = config(capacities=caps)
    # Part of the demand unknown: never below the replicas in place.
    d = Decider(cfg).decide(None, ["req", "gpu"], 25, 0.0, current_demand={"req": 130.0})
    assert d.replicas == 25
    assert "no current demand for ['gpu']" in d.reason
    d = Decider(cfg).decide(
        None, ["req", "gpu"], 5, 0.0, current_demand={"req": 130.0}, fallback_reason="stale"
    )
    assert d.replicas == 21 and d.reason.startswith("fallback: stale;")
    # No demand at all: hold.
    d = Decider(cfg).decide(None, ["req", "gpu"], 9, 0.0, fallback_reason="model missing")
    assert d.replicas == 9
    assert (
        d.reason
        == "fallback: model missing; no current demand for ['req', 'gpu']; holding the 9 replicas in place"
    )
    # Whole demand known: the count serves it at 100% utilisation, whatever the demand.
    rng = np.random.default_rng(0)
    for _ in range(200):
        demand = {"req": float(rng.uniform(0, 500)), "gpu": float(rng.uniform(0, 20))}
        d = Decider(cfg).decide(None, ["req", "gpu"], int(rng.integers(0, 50)), 0.0, current_demand=demand)
        assert d.replicas >= max(ceil_replicas(demand[n] / c) for n, c in caps.items())


def test_non_finite_draws_fall_back() -> None:
    y = np.full((10, 2, 1), 5.0)
    y[3, 1, 0] = np.nan
    d = Decider(config()).decide(y, ["req"], 4, 0.0, current_demand={"req": 7.0})
    assert d.fallback and d.reason.startswith("fallback: forecast has NaN or infinite draws")
    assert d.fallback_cause == "bad_draws"
    assert d.replicas == 11  # 7 / 0.7 * 1.1 = 11


def test_only_known_fallback_causes() -> None:
    assert Decider(config()).decide(grid_draws(np.full(10, 2.5)), ["req"], 1, 0.0).fallback_cause is None
    with pytest.raises(ValueError, match="fallback_cause must be one of"):
        Decision(replicas=1, recommendation=1, reason="x", fallback=True, fallback_cause="gap")


# --- Bayesian adaptation -----------------------------------------------------------------------------------


def bernoulli_stream(
    factor: float, eps: float, steps: int, *, adaptive: bool, seed: int = 0
) -> tuple[np.ndarray, CalibrationTracker]:
    """A forecaster whose violations happen `factor` times as often as the level it is asked for."""
    tracker = CalibrationTracker(eps, adaptive=adaptive)
    rng = np.random.default_rng(seed)
    outcomes = np.zeros(steps)
    for t in range(steps):
        outcomes[t] = rng.random() < min(1.0, factor * tracker.level)
        tracker.update(bool(outcomes[t]))
    return outcomes, tracker


@pytest.mark.parametrize("factor", [3.0, 0.3])
def test_adaptation_brings_a_miscalibrated_stream_to_eps(factor: float) -> None:
    eps = 0.05
    adapted, tracker = bernoulli_stream(factor, eps, 20_000, adaptive=True)
    fixed, _ = bernoulli_stream(factor, eps, 20_000, adaptive=False)
    # Tolerance: +-20% of eps on the second half (10,000 steps; binomial sd alone is 0.0022).
    assert abs(adapted[10_000:].mean() - eps) < 0.2 * eps
    assert abs(fixed[10_000:].mean() - factor * eps) < 0.2 * factor * eps
    assert tracker.level == pytest.approx(eps / factor, rel=0.5)
    assert tracker.mean == pytest.approx(eps, rel=0.5)


def test_adaptation_recovers_after_a_regime_change() -> None:
    eps = 0.05
    tracker = CalibrationTracker(eps)
    rng = np.random.default_rng(1)
    outcomes = []
    for t in range(25_000):
        factor = 1.0 if t < 10_000 else 3.0  # the forecaster turns too narrow at t = 10,000
        outcomes.append(rng.random() < min(1.0, factor * tracker.level))
        tracker.update(outcomes[-1])
    rates = np.array(outcomes, dtype=np.float64)
    assert abs(rates[:10_000].mean() - eps) < 0.2 * eps
    assert abs(rates[15_000:].mean() - eps) < 0.2 * eps  # back at eps within a few memory lengths
    assert tracker.level < eps / 2


@pytest.mark.parametrize("spread", [2.0, 0.5])
def test_decider_with_too_narrow_or_too_wide_draws_converges_to_eps(spread: float) -> None:
    """End to end: draws N(1000, 50), realised demand N(1000, 50 * spread), capacity 1 per replica."""
    eps, steps = 0.05, 8_000

    def run(adaptive: bool) -> float:
        dec = Decider(config(max_violation_probability=eps, adaptive=adaptive))
        rng = np.random.default_rng(7)
        violations = []
        for t in range(steps):
            d = dec.decide(rng.normal(1000.0, 50.0, size=(100, 1, 1)), ["req"], 0, 60.0 * t)
            violations.append(dec.observe({"req": float(rng.normal(1000.0, 50.0 * spread))}, d.replicas))
        return float(np.mean(violations[steps // 2 :]))

    with_adaptation, without = run(True), run(False)
    assert abs(with_adaptation - eps) < 0.3 * eps
    if spread > 1:
        assert without > 0.15  # ~P(Z > 1.645 / 2) = 0.21
    else:
        assert without < 0.005  # ~P(Z > 3.29) = 0.0005


def test_posterior_is_exposed_and_consistent() -> None:
    tracker = CalibrationTracker(0.01, forgetting=0.99)
    # Prior strength min(1/eps, 0.5 * memory) = min(100, 50): Beta(0.5, 49.5), mean eps.
    assert (tracker.alpha, tracker.beta) == pytest.approx((0.5, 49.5))
    for k in range(300):
        tracker.update(k % 10 == 0)
    lo, hi = tracker.credible_interval()
    assert 0 < lo < tracker.mean < hi < 1
    assert tracker.alpha > 1 and tracker.beta > 49
    assert tracker.level < 0.01  # violations 10x too frequent: the working level tightened
    summary = tracker.summary()
    assert summary["eps_eff"] == tracker.level
    assert summary["working_quantile"] == pytest.approx(1 - tracker.level)
    # Forgetting: the effective number of observations saturates at 1 / (1 - lam).
    assert tracker.effective_observations == pytest.approx(100.0, rel=0.06)


def test_quantile_only_keeps_the_nominal_level() -> None:
    _, tracker = bernoulli_stream(3.0, 0.05, 2_000, adaptive=False)
    assert tracker.level == pytest.approx(0.05)
    assert tracker.mean > 0.1  # the posterior still reports the miscalibration


def test_miscalibration_falls_back_then_retries_the_model() -> None:
    cfg = config(max_violation_probability=0.05, min_working_probability=0.01)
    dec = Decider(cfg)
    draws = grid_draws(np.linspace(90.0, 110.0, 100))
    modes = []
    causes: set[str | None] = set()
    steps = 1_000
    for t in range(steps):
        d = dec.decide(draws, ["req"], 1, 60.0 * t, current_demand={"req": 150.0})
        modes.append(d.fallback)
        causes.add(d.fallback_cause)
        dec.observe({"req": 150.0 if not d.fallback else 100.0}, d.replicas)  # the model always falls short
    assert not modes[0]
    assert dec.tracker.level == pytest.approx(0.01)
    first = modes.index(True)
    assert first < 100
    assert causes == {None, "miscalibrated"}  # the draws are finite: miscalibration is the only cause
    d = dec.decide(draws, ["req"], 1, 60.0 * steps, current_demand={"req": 150.0})
    if d.fallback:
        assert d.reason.startswith("fallback: forecast miscalibrated")
    # Under the fallback the evidence ages, so the model is retried now and then.
    assert any(not m for m in modes[first:])


# --- Beta helpers, config, persistence ----------------------------------------------------------------------


def test_beta_cdf_and_quantile_against_closed_forms() -> None:
    for b in (1.0, 3.0, 99.0):
        for q in (0.05, 0.5, 0.95):
            assert beta_quantile(q, 1.0, b) == pytest.approx(1 - (1 - q) ** (1 / b), abs=1e-10)
            assert beta_quantile(q, b, 1.0) == pytest.approx(q ** (1 / b), abs=1e-10)
    assert beta_quantile(0.5, 2.0, 2.0) == pytest.approx(0.5)
    # Integer parameters: I_x(2, 5) = 1 - (1-x)^6 - 6 x (1-x)^5.
    assert beta_cdf(0.3, 2.0, 5.0) == pytest.approx(1 - 0.7**6 - 6 * 0.3 * 0.7**5)


def test_beta_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(1.0, 99.0), (2.5, 300.0), (0.5, 0.5), (50.0, 2.0), (11.4, 208.5)]:
        for p in (0.05, 0.5, 0.95):
            assert beta_quantile(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), abs=1e-9)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_violation_probability": 0.0}, r"max_violation_probability must be in \(0, 1\)"),
        ({"max_violation_probability": 1.5}, r"max_violation_probability must be in \(0, 1\)"),
        ({"capacities": {}}, "capacities is empty"),
        ({"capacities": {"req": -1.0}}, r"capacities\['req'\] = -1.0"),
        ({"max_replicas": 2, "min_replicas": 3}, "max_replicas must be an integer >= max"),
        ({"interval_s": 0.0}, "interval_s must be > 0"),
        ({"max_scale_up_step": 0}, "max_scale_up_step must be None or an integer >= 1"),
        ({"fallback_target_utilization": 1.5}, r"fallback_target_utilization must be in \(0, 1\]"),
        ({"violation_penalty": -1.0}, "violation_penalty must be >= 0"),
        ({"forgetting": 0.0}, r"forgetting must be in \(0, 1\]"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="DecisionConfig: " + message):
        config(**changes)


def test_config_copies_the_capacities() -> None:
    caps = {"req": 2.0}
    cfg = config(capacities=caps)
    caps["req"] = 100.0
    assert cfg.capacities == {"req": 2.0}


def test_state_round_trip_gives_the_same_next_decision() -> None:
    rng = np.random.default_rng(5)
    cfg = dataclasses.replace(config(), scale_down_stabilization_s=300.0)
    a = Decider(cfg)
    cur = 1
    for t in range(200):
        d = a.decide(rng.normal(50, 5, size=(50, 3, 1)), ["req"], cur, 60.0 * t)
        cur = d.replicas
        a.observe({"req": float(rng.normal(50, 10))}, cur)
    b = Decider(cfg)
    b.load_state_dict(a.state_dict())
    y = rng.normal(40, 5, size=(50, 3, 1))
    assert a.decide(y, ["req"], cur, 12_000.0) == b.decide(y, ["req"], cur, 12_000.0)


def test_small_helpers() -> None:
    assert ceil_replicas(7.000000000000001) == 7
    assert ceil_replicas(7.01) == 8
    assert ceil_replicas(-3.0) == 0
    assert [format_level(q) for q in (0.99, 0.995, 0.95, 0.98765, 0.99957)] == [
        "p99",
        "p99.5",
        "p95",
        "p98.8",
        "p99.957",
    ]
    assert is_violation({"req": 10.0}, {"req": 5.0}, 2) is False  # equal to capacity is served
    assert is_violation({"req": 10.1}, {"req": 5.0}, 2) is True
    assert is_violation({}, {"req": 5.0}, 2) is None
    d = Decision(replicas=3, recommendation=2, reason="x")
    assert d.to_dict()["replicas"] == 3


def test_outcomes_the_quantile_did_not_set_do_not_move_the_level() -> None:
    dec = Decider(config(max_replicas=5))
    d = dec.decide(grid_draws(np.full(10, 9.5)), ["req"], 1, 0.0)
    assert d.replicas == 5
    assert dec.observe({"req": 8.0}, 5) is True  # violated, but the cap decided, not the level
    assert dec.tracker.n_updates == 0 and dec.tracker.level == pytest.approx(0.01)
    dec.decide(None, ["req"], 5, 60.0, current_demand={"req": 2.0})
    assert dec.observe({"req": 8.0}, 4) is True  # under the fallback: nothing learnt about the draws
    assert dec.tracker.n_updates == 0
    # 200 draws of R from 1 to 4: the p99 is the third largest, 3.97, so the quantile sets 4 replicas, whose
    # exceedance on the draws (the tail past the largest, 4.0: 1/200) is half the level asked: it learns.
    d = dec.decide(grid_draws(np.linspace(1.0, 4.0, 200)), ["req"], 4, 120.0)
    assert (d.recommendation, d.replicas) == (4, 4) and d.p_violation == pytest.approx(0.005)
    assert dec.observe({"req": 8.0}, 4) is True
    assert dec.tracker.n_updates == 1 and dec.tracker.level < 0.01
    # Draws that all need 3.5 replicas: 4 leaves them no exceedance, a count far above what the level asked
    # (as an idle service's floor is): the outcome teaches nothing.
    dec.decide(grid_draws(np.full(10, 3.5)), ["req"], 4, 180.0)
    assert dec.observe({"req": 8.0}, 4) is True and dec.tracker.n_updates == 1
