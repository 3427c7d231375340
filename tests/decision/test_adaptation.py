"""Bayesian adaptation on a real regime change (docs/decision.md, "Bayesian adaptation").

The trace: `alibaba_gentd26_requests`, the one service-level series of the GenTD26 LoRA request trace at
5-minute steps, with its two demand indicators (requests_per_s, busy_gpus). Its first four days
(2024-11-15 16:55 to 2024-11-19 16:50, steps 0-1151) are nearly idle; from the fifth day on the service
carries about 13 times the load:

    steps        requests_per_s mean   busy_gpus mean   sd of the 2-step change (req/s, GPUs)   idle steps
    0-1151       0.0011                0.028            0.0046, 0.111                           88%
    1152-2303    0.0148                0.364            0.0155, 0.401                           52%

The forecaster is the seasonal naive (`harmony.model.seasonal_naive`) with a 12-step lookback, so
persistence plus its training residuals (the 2-step changes, lead time 1 and horizon 1), fitted on the idle
days only. On the busy days that follow its spread is 3.4-3.6 times too narrow: a regime change the
forecaster never saw. The later segment, steps 1152-2303 (four days, 1,152 decisions; the ninth day is idle
again, so the segment stops before it), is replayed through `harmony.backtest.replay` (one decision per
step, lead time 1 step) with the same draws twice: the Decider of the `harmony` policy at eps = 0.05, and
the same Decider with `adaptive=False` (the quantile-only rule).

Capacities are a fifth of the card's (0.005 requests/s and 0.2 busy GPUs per replica, in the card's ratio),
as the shipped backtest configs do for single containers: at the card's capacity the busy days need 0-4
GPU workers, and rounding up to whole workers hides most of the miscalibration (without adaptation 7.5%
violated steps over the second half instead of 16.5%), leaving little for the adaptation to show.

Measured (seed 0; seeds 0-4 give 26-29 and 95-104 violations): over the second half (steps 1728-2303, 576
decisions) with adaptation 29 violated steps (5.0%), without 95 (16.5%, 3.3 eps); over the whole segment
5.6% and 15.2%. The working quantile ends at p99.6 (eps_eff 0.0042).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from harmony.backtest import Knobs, Settings, build_policy, forecast_draws, prepare_series, replay
from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.decision import CalibrationTracker, Decider, DecisionConfig
from harmony.model.base import ForecastSpec
from harmony.model.seasonal_naive import SeasonalNaiveForecaster

DATASET = "alibaba_gentd26_requests"
DAY = 288  # 5-minute steps
TRAIN_END = 4 * DAY  # the idle days: steps [0, 1152)
SEGMENT = (4 * DAY, 8 * DAY)  # the busy days replayed: steps [1152, 2304)
CAPACITIES = {"requests_per_s": 0.005, "busy_gpus": 0.2}  # a fifth of the card's, see the module doc
EPS = 0.05
LOOKBACK = 12


def binomial_interval(n: int, p: float, mass: float) -> tuple[int, int]:
    """Counts [lo, hi] that hold a Binomial(n, p) count with probability >= `mass` (equal tails):
    lo is the smallest k with P(X <= k) >= (1 - mass)/2, hi the smallest with P(X <= k) >= (1 + mass)/2
    (scipy's `binom.interval`)."""
    tail = 0.5 * (1.0 - mass)
    cdf, lo = 0.0, None
    for k in range(n + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        cdf += math.exp(log_pmf + k * math.log(p) + (n - k) * math.log1p(-p))
        if lo is None and cdf >= tail:
            lo = k
        if cdf >= 1.0 - tail - 1e-12:
            return (k if lo is None else lo), k
    return (n if lo is None else lo), n


def test_binomial_interval_known_answers() -> None:
    # Binomial(4, 1/2): P(X <= k) = 1/16, 5/16, 11/16, 15/16, 1; tails of 0.1 give [1, 3].
    assert binomial_interval(4, 0.5, 0.8) == (1, 3)
    assert binomial_interval(576, EPS, 0.95) == (19, 39)  # scipy.stats.binom.interval(0.95, 576, 0.05)


def two_step_change(y: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = y[2:] - y[:-2]
    return out


@pytest.fixture(scope="module")
def trace(load_trace: Callable[[str], Trace]) -> Trace:
    return load_trace(DATASET).select(indicators=list(CAPACITIES))


def test_the_segment_is_a_regime_change(trace: Trace) -> None:
    """The premise, on the data: load and step-to-step volatility both jump after the training days."""
    (sid,) = trace.series_ids
    frame = trace[sid]
    for name in CAPACITIES:
        y = frame[name].to_numpy(np.float64)
        train, later = y[:TRAIN_END], y[SEGMENT[0] : SEGMENT[1]]
        assert np.isfinite(train).all() and np.isfinite(later).all()
        assert later.mean() > 10 * train.mean(), name
        # The persistence forecaster's residuals are the 2-step changes (lead time 1, horizon 1).
        assert two_step_change(later).std() > 3 * two_step_change(train).std(), name


@pytest.fixture(scope="module")
def outcomes(trace: Trace) -> dict[bool, tuple[NDArray[np.bool_], Decider, int]]:
    """adaptive -> (violated per scored step, the decider after the replay, fallbacks)."""
    (sid,) = trace.series_ids
    split = Split({sid: (TRAIN_END, SEGMENT[0], SEGMENT[1])}, (0.0, 0.0, 0.0), "time")
    spec = ForecastSpec.for_trace(trace, lookback=LOOKBACK, horizon=1, lead_time=1, targets=list(CAPACITIES))
    model = SeasonalNaiveForecaster(spec)
    model.fit(trace, split)  # train windows only: the idle days
    # max_steps ends the scored part at the segment's end (the replay otherwise runs to the trace's end).
    settings = Settings(
        capacities=CAPACITIES, lead_time=1, max_steps=SEGMENT[1] - SEGMENT[0], num_samples=100, seed=0
    )
    data = prepare_series(trace, split, sid, settings, lookback=LOOKBACK)
    assert not isinstance(data, str), data
    assert (data.start, data.end) == SEGMENT
    draws = forecast_draws(model, trace, [data], settings)[sid]
    harmony = build_policy(Knobs("harmony", EPS), data, settings)  # the backtest's HARMONY at eps
    assert isinstance(harmony, Decider) and harmony.config.adaptive
    caps = np.array(list(CAPACITIES.values()))
    demand = data.demand[data.scored]
    out: dict[bool, tuple[NDArray[np.bool_], Decider, int]] = {}
    for adaptive in (True, False):
        # Same config, same draws: only the adaptation differs.
        decider = Decider(dataclasses.replace(harmony.config, adaptive=adaptive))
        rep = replay(decider, data, draws, settings)
        in_place = rep.at(data.scored).astype(np.float64)
        # The test of harmony.decision.is_violation: some demand indicator above the replicas' capacity.
        violated = np.asarray((demand > caps * in_place[:, None]).any(axis=1), dtype=np.bool_)
        out[adaptive] = (violated, decider, rep.fallbacks)
    return out


def test_adaptation_brings_the_realised_violation_rate_to_eps_on_a_regime_change(
    outcomes: dict[bool, tuple[NDArray[np.bool_], Decider, int]],
) -> None:
    adapted, decider, fallbacks = outcomes[True]
    fixed, nominal, fixed_fallbacks = outcomes[False]
    assert fallbacks == fixed_fallbacks == 0  # every decision is the quantile rule: only the level differs
    n = adapted.size
    assert n == fixed.size == SEGMENT[1] - SEGMENT[0]
    second = slice(n // 2, n)
    n_second = n - n // 2

    # Without adaptation the forecaster's too-narrow spread shows: the realised rate stays far above eps,
    # in the first half and in the second alike (nothing corrects it).
    assert fixed[: n // 2].mean() > 2 * EPS
    assert fixed[second].mean() > 2 * EPS
    # With it, the second half is what a calibrated decision would give: its violation count lies in the
    # 95% interval of Binomial(576, eps), [19, 39], i.e. a rate of 3.3%-6.8%. (Violations cluster, so the
    # real spread is wider than the binomial one: the check is stricter than a correct interval would be.)
    lo, hi = binomial_interval(n_second, EPS, 0.95)
    assert lo <= int(adapted[second].sum()) <= hi, adapted[second].mean()
    assert int(fixed[second].sum()) > hi  # the unadapted count is not something eps would produce
    assert adapted.mean() < 0.5 * fixed.mean()

    # The posterior moved the right way: the working quantile is raised well above 1 - eps (the draws'
    # tail is too thin) ...
    assert decider.tracker.working_quantile > 1.0 - EPS / 5
    assert decider.tracker.miscalibration_log_odds > math.log(3.0)
    # ... while without adaptation the level stays at eps and the posterior, still updated, reports the
    # miscalibration: its 90% credible interval lies above eps.
    assert nominal.tracker.level == pytest.approx(EPS)
    low, _ = nominal.tracker.credible_interval()
    assert low > EPS


# --- no wind-up, and each service held to its eps, with calibrated draws --------------------------------------
#
# "Calibrated by construction": the level of demand is a real series (its value at each step), the draws of a
# decision are S draws of level x LogNormal(0, SIGMA) for the step it serves, and the realised demand is one
# more independent draw of the same. The forecast distribution is then the true one, so a decision rule that
# asks for the 1 - eps quantile should see violations at rate eps, up to integer replicas and the finite
# number of draws; the adaptation is there to take that slack back, and must not wind up elsewhere.

SIGMA = 0.3


def calibrated_replay(
    policy: Decider, level: NDArray[np.float64], name: str, step_s: float, seed: int, draws: int = 100
) -> tuple[NDArray[np.bool_], NDArray[np.int64], list[float]]:
    """The backtest's protocol with lead time 1: the decision at t serves step t + 1 and is observed there.
    Returns the violation and the count in place of every observed step, and the working level before each
    decision."""
    rng = np.random.default_rng(seed)
    realised = level * rng.lognormal(0.0, SIGMA, size=level.shape)
    current, pending = 1, None
    violated, counts, levels = [], [], []
    for t in range(1, level.size - 1):
        if pending is not None:
            violated.append(bool(policy.observe({name: float(realised[t])}, pending)))
            counts.append(pending)
        levels.append(policy.tracker.level)
        y = level[t + 1] * rng.lognormal(0.0, SIGMA, size=(draws, 1, 1))
        current = policy.decide(y, [name], current, t * step_s).replicas
        pending = current
    return np.array(violated), np.array(counts, dtype=np.int64), levels


def calibrated_config(capacity: float, eps: float, name: str, step_s: float) -> DecisionConfig:
    return DecisionConfig(
        capacities={name: capacity},
        max_replicas=200,
        max_violation_probability=eps,
        interval_s=step_s,
        scale_down_stabilization_s=0.0,
        lead_steps=1,
    )


def test_idle_days_do_not_wind_up_the_level(trace: Trace) -> None:
    """The request trace's four idle days, then its busy days, replayed without resetting the tracker."""
    (sid,) = trace.series_ids
    name = "requests_per_s"
    level = trace[sid][name].to_numpy(np.float64)[: SEGMENT[1]]
    eps = 0.01
    decider = Decider(calibrated_config(CAPACITIES[name], eps, name, 300.0))
    violated, counts, levels = calibrated_replay(decider, level, name, 300.0, seed=0)
    busy = TRAIN_END - 2  # observed steps start at step 2
    # The idle days sit at the one-replica floor almost always, where no level changes the count: the
    # tracker learns nothing there, and the level the busy days start with is still eps.
    assert (counts[:busy] == 1).mean() > 0.85
    assert levels[busy] == pytest.approx(eps, rel=0.5)
    # The first busy steps then violate as a calibrated rule at eps would: at most the upper end of the 95%
    # interval of Binomial(100, eps), 3 violations.
    _, hi = binomial_interval(100, eps, 0.95)
    assert int(violated[busy : busy + 100].sum()) <= hi
    # The rule it replaces learnt from every outcome: fed the same idle days, it loosens to its clip (eps_eff
    # 0.5), and the first busy steps would be decided at the median.
    every = CalibrationTracker(eps)
    for v in violated[:busy]:
        every.update(bool(v))
    assert every.level == pytest.approx(0.5)


@pytest.mark.parametrize("series", ["container1", "container2", "container3", "container4", "container8"])
def test_each_service_is_held_to_its_eps_on_a_long_calibrated_replay(
    load_trace: Callable[[str], Trace], series: str
) -> None:
    """Fisher containers that need more than the floor most of the time (one replica per load unit), each a
    whole month of 10-minute steps: the realised rate lies in the 95% interval of Binomial(steps, eps)."""
    frame = load_trace("fisher_containers")[series]
    level = frame["load"].to_numpy(np.float64)
    level = np.where(np.isfinite(level), level, np.nanmedian(level))
    eps = 0.01
    config = calibrated_config(1.0, eps, "load", 600.0)
    violated, _, _ = calibrated_replay(Decider(config), level, "load", 600.0, seed=1)
    lo, hi = binomial_interval(violated.size, eps, 0.95)
    assert lo <= int(violated.sum()) <= hi, (series, violated.mean())
    fixed, _, _ = calibrated_replay(
        Decider(dataclasses.replace(config, adaptive=False)), level, "load", 600.0, 1
    )
    if series == "container4":
        # At the nominal level, whole replicas and a service near its floor leave most of the budget unused
        # (13 violations where eps gives 28 to 52): what the adaptation takes back.
        assert int(fixed.sum()) < lo
