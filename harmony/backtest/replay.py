"""One part of a trace replayed through one policy: the series plan, the forecasts each decision sees, the
replay itself and its scores.

Protocol (docs/backtest.md). Steps are the trace's sampling steps; the value at step u is the demand during
step u. For every series:

* A decision at step tau is taken at the start of step tau and knows the history up to tau - 1 only: the
  forecaster gets the `lookback` points tau - lookback .. tau - 1, a classical model the history up to
  tau - 1, the HPA the demand observed at tau - 1, and the oracle the realised future by construction.
  Decisions come every `interval` steps.
* A decision is in place from step tau + lead_time (the cold start) until the next decision takes over,
  `interval` steps later: the capacity in place at step u is the count decided at u - lead_time. Every
  policy gets, as `current_replicas`, the count it set last (what the operator and the HPA controller read
  from the /scale subresource).
* The forecasts for a decision cover the steps it is for: anchored at tau - 1, a forecaster with lead time
  L_m and horizon H forecasts steps tau + L_m .. tau + L_m + H - 1; the decision gets those from
  tau + lead_time on (`window_steps` of them, by default all that remain).
* After each realised step u whose capacity the policy chose, `observe(demand_u, capacity_u)`, so that
  HARMONY's Bayesian adaptation learns online exactly as it would in the operator.
* Scored steps: the part replayed (`"val"`, the validation part, where the knobs are chosen, or `"test"`,
  where they are reported), optionally its first `max_steps`, where at least one demand indicator is known.
  The first decision is taken `lead_time + warmup_steps` steps before the part, so that the first scored
  step is already served by a decided count (the warm-up is observed, never scored).

Model inference is batched across series and decision steps: the draws of every decision (each from its own
history only) are computed in batched `Forecaster.sample` calls before the policies replay, and reused by
every policy and knob that reads them, so a sweep costs one inference pass per part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harmony.backtest.sections import (
    CLASSICAL_POLICIES,
    ClassicalSweep,
    PoliciesConfig,
    ScalingConfig,
    TuningConfig,
)
from harmony.data.errors import DataError
from harmony.data.trace import Trace
from harmony.data.windows import Split, usable_lookback
from harmony.decision import FALLBACK_CAUSES, ceil_replicas
from harmony.model.base import Forecaster
from harmony.model.classical import ClassicalConfig, ForecastStats, point_forecasts
from harmony.policies import Policy

__all__ = [
    "PARTS",
    "BacktestError",
    "Draws",
    "Replay",
    "SeriesData",
    "Settings",
    "check_forecaster",
    "classical_forecasts",
    "forecast_draws",
    "median_draws",
    "prepare_series",
    "replay",
    "score",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Which part of the split is replayed and scored (the names of `harmony evaluate --part`), in words.
PARTS: dict[str, str] = {"test": "test", "val": "validation"}


class BacktestError(DataError):
    """A backtest cannot run as configured; the message says why and what to change."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the replay needs, in the trace's steps. Built from a BacktestConfig by `run_config`, or
    directly (tests, notebooks)."""

    capacities: dict[str, float]
    lead_time: int
    interval: int = 1
    window_steps: int | None = None
    warmup_steps: int = 0
    max_steps: int | None = None
    initial_replicas: int | None = None
    target_violation_rate: float = 0.01
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    num_samples: int = 100
    batch_windows: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.capacities or any(not (math.isfinite(v) and v > 0) for v in self.capacities.values()):
            raise ValueError(f"capacities must name demand indicators with capacities > 0: {self.capacities}")
        if self.lead_time < 0 or self.interval < 1 or self.warmup_steps < 0:
            raise ValueError("need lead_time >= 0, interval >= 1, warmup_steps >= 0")
        if not 0.0 < self.target_violation_rate < 1.0:
            raise ValueError(f"target_violation_rate must be in (0, 1), got {self.target_violation_rate}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.capacities)


# --- one series ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesData:
    """What a replay of one series over one part needs. Step indices are positions in the series' frame.

    Decisions are taken at `decisions` (each sees steps < tau); the capacity is simulated over
    [first_decision, end) and scored over [start, end).
    """

    series: str
    part: str
    index: pd.DatetimeIndex  # timestamps of the whole series
    demand: FloatArray  # [n, D] demand indicators in `names` order
    step_s: float
    first_decision: int
    start: int
    end: int
    decisions: IntArray
    initial: int
    train_peak: dict[str, float]
    names: tuple[str, ...]  # the demand indicators, in the order of `demand`'s columns

    @property
    def scored(self) -> slice:
        return slice(self.start, self.end)

    @property
    def begin(self) -> int:
        """The first step whose capacity a replay simulates."""
        return min(self.first_decision, self.start)

    @cached_property
    def demand_rows(self) -> list[dict[str, float]]:
        """The demand of steps begin - 1 .. end - 1 as {indicator: value}, what a replay hands the policies:
        built once per series, not once per setting replayed. A series whose part starts at its first step
        (no history before it) has no step begin - 1: that row is unknown (NaN), never a wrap-around."""
        unknown = [dict.fromkeys(self.names, math.nan)] if self.begin == 0 else []
        return unknown + [
            {n: float(v) for n, v in zip(self.names, row, strict=True)}
            for row in self.demand[max(self.begin - 1, 0) : self.end]
        ]


def prepare_series(
    trace: Trace, split: Split, series: str, settings: Settings, *, lookback: int, part: str = "test"
) -> SeriesData | str:
    """The replay plan of one series over `part` ("test" or "val"), or why it cannot be replayed."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    frame = trace[series]
    names = list(settings.names)
    demand = frame[names].to_numpy(np.float64)
    n = demand.shape[0]
    a, b, _ = split.boundaries[series]
    words = PARTS[part]
    # The validation part ends where the test part starts; its history is the training part only.
    start, stop = (a, b) if part == "val" else (b, n)
    end = stop if settings.max_steps is None else min(stop, start + settings.max_steps)
    if end <= start:
        return f"no {words} part"
    known = np.isfinite(demand[start:end]).any(axis=1)
    if not known.any():
        return f"no known demand in the {words} part"
    history = demand[:start]
    peak: dict[str, float] = {}
    if settings.policies.static is not None:
        if not np.isfinite(history).any(axis=0).all():
            return f"no known demand before the {words} part (the static policy needs a training peak)"
        peak = {name: float(np.nanmax(history[:, i])) for i, name in enumerate(names)}
    # The first decision takes effect warmup_steps before the scored part; it needs a full lookback before it.
    first = max(lookback, 1, start - settings.lead_time - settings.warmup_steps)
    if first + settings.lead_time >= end:
        return f"the {words} part is shorter than the lookback ({lookback}) plus the lead time"
    taus = np.arange(first, end - settings.lead_time, settings.interval, dtype=np.int64)
    sc = settings.scaling
    if settings.initial_replicas is not None:
        initial = settings.initial_replicas
    else:
        # The count that serves the last observed demand exactly: a neutral start for every policy.
        last = demand[first - 1] / np.array([settings.capacities[x] for x in names])
        initial = ceil_replicas(float(np.nanmax(last))) if np.isfinite(last).any() else sc.min_replicas
    initial = min(max(initial, sc.min_replicas), sc.max_replicas)
    return SeriesData(
        series=series,
        part=part,
        index=pd.DatetimeIndex(frame.index),
        demand=demand,
        step_s=trace.frequency.total_seconds(),
        first_decision=int(first),
        start=int(start),
        end=int(end),
        decisions=taus,
        initial=int(initial),
        train_peak=peak,
        names=tuple(names),
    )


# --- forecasts ----------------------------------------------------------------------------------------------

# One per decision: [S, window, D] or None (no usable forecast).
Draws = list[NDArray[np.floating[Any]] | None]


def check_forecaster(forecaster: Forecaster, trace: Trace, settings: Settings) -> tuple[int, int]:
    """(first horizon step used, number of steps used) of the forecaster's draws; raises on a mismatch."""
    spec = forecaster.spec
    if abs(spec.frequency_s - trace.frequency.total_seconds()) > 1e-9:
        raise BacktestError(
            f"the forecaster works at {spec.frequency_s:g} s steps but the trace at "
            f"{trace.frequency.total_seconds():g} s; resample the trace (data.frequency) or use another model"
        )
    missing = [i for i in spec.indicators if i not in trace.indicator_names]
    if missing:
        raise BacktestError(f"the forecaster reads indicators {missing} that {trace.name} does not have")
    not_forecast = [n for n in settings.names if n not in spec.targets]
    if not_forecast:
        raise BacktestError(
            f"the forecaster does not forecast the demand indicators {not_forecast} (targets: "
            f"{list(spec.targets)}); decisions would ignore their load"
        )
    j0 = settings.lead_time - spec.lead_time
    if j0 < 0:
        raise BacktestError(
            f"backtest.lead_time {settings.lead_time} is shorter than the forecaster's lead time "
            f"{spec.lead_time}: its draws start too late to decide for it"
        )
    window = settings.window_steps if settings.window_steps is not None else spec.horizon - j0
    if window < 1 or j0 + window > spec.horizon:
        raise BacktestError(
            f"the decision window (steps +{settings.lead_time + 1}..+{settings.lead_time + window}) is "
            f"beyond the forecaster's horizon (steps +{spec.lead_time + 1}.."
            f"+{spec.lead_time + spec.horizon}); "
            "shorten backtest.window_steps or backtest.lead_time"
        )
    return j0, window


def forecast_draws(
    forecaster: Forecaster,
    trace: Trace,
    datas: Sequence[SeriesData],
    settings: Settings,
    *,
    seed_offset: int = 0,
) -> dict[str, Draws]:
    """Draws for every decision of every series, in batched `sample` calls across series and steps.

    Each decision's draws come from its own lookback (steps tau - lookback .. tau - 1) only. Gaps in it are
    filled as the operator fills them (`usable_lookback`); a lookback the operator could not use gets None
    (the forecast policies then use their fallback, as the operator does).
    Batch k is drawn with seed `settings.seed + seed_offset + k * batch_windows`; `seed_offset` keeps the
    seeds of successive groups of series (and of the two parts) apart.
    """
    spec = forecaster.spec
    j0, window = check_forecaster(forecaster, trace, settings)
    cols = [spec.targets.index(n) for n in settings.names]
    lb = spec.lookback
    out: dict[str, Draws] = {}
    jobs: list[tuple[str, int, NDArray[np.float32], int]] = []  # series, decision number, history, time
    for data in datas:
        values = trace[data.series][list(spec.indicators)].to_numpy(np.float32)
        times = data.index.as_unit("ns").asi8
        draws: Draws = [None] * len(data.decisions)
        out[data.series] = draws
        bad = np.concatenate(([0], np.cumsum(~np.isfinite(values).all(axis=1))))
        for k, tau in enumerate(data.decisions):
            t = int(tau)
            if t - lb < 0:
                continue
            history = values[t - lb : t] if bad[t] == bad[t - lb] else usable_lookback(values[t - lb : t])
            if history is not None:
                jobs.append((data.series, k, history, int(times[t - 1])))
    for i in range(0, len(jobs), settings.batch_windows):
        chunk = jobs[i : i + settings.batch_windows]
        history = np.stack([h for _, _, h, _ in chunk])
        last = np.asarray([t for _, _, _, t in chunk], dtype=np.int64)
        # One seed per batch: the draws are reproducible for a given configuration.
        sample = forecaster.sample(history, settings.num_samples, last, seed=settings.seed + seed_offset + i)
        picked = np.asarray(sample[:, :, j0 : j0 + window][..., cols], dtype=np.float32)
        for (sid, k, _, _), d in zip(chunk, picked, strict=True):
            out[sid][k] = d
    return out


def median_draws(draws: Draws) -> Draws:
    """Each decision's per-step median of its draws, as one draw [1, window, D] in float64 (exactly what a
    policy taking the median of the draws computes from them)."""
    return [
        None if d is None else np.median(np.asarray(d, dtype=np.float64), axis=0, keepdims=True)
        for d in draws
    ]


def classical_forecasts(
    model: str, sweep: ClassicalSweep, datas: Sequence[SeriesData], settings: Settings, window: int
) -> tuple[dict[str, Draws], ForecastStats]:
    """A classical model's point forecast for every decision of every series, as one-draw `Draws`.

    `model` is "arima" or "ets" (`harmony.model.classical`, on statsforecast), fitted on the series' own
    demand up to tau - 1 and forecasting the steps the decision is for: tau + lead_time .. + window - 1.
    """
    if model not in ("arima", "ets"):
        raise ValueError(f"unknown classical model {model!r}; known: {', '.join(sorted(CLASSICAL_POLICIES))}")
    config = ClassicalConfig(
        model="arima" if model == "arima" else "ets",
        season_length=sweep.season_length,
        history=sweep.history,
        refit_every=sweep.refit_every,
    )
    out: dict[str, Draws] = {}
    stats = ForecastStats()
    for data in datas:
        path, st = point_forecasts(data.demand, data.decisions, settings.lead_time, window, config)
        stats.add(st)
        # A decision missing the forecast of any demand indicator gets none: its policy's fallback decides.
        out[data.series] = [
            np.asarray(row[None, :, :], dtype=np.float32) if np.isfinite(row).all() else None for row in path
        ]
    return out, stats


# --- replay and score ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """Capacity in place over steps [first, first + len(capacity)), the decisions, how many fell back, and
    how many of those for each cause (`harmony.decision.FALLBACK_CAUSES`: every cause, 0 when none)."""

    first: int
    capacity: IntArray
    decisions: int
    fallbacks: int
    fallback_causes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FALLBACK_CAUSES, 0))

    def at(self, steps: slice) -> IntArray:
        lo = steps.start - self.first
        return self.capacity[lo : steps.stop - self.first]


def replay(policy: Policy, data: SeriesData, draws: Draws | None, settings: Settings) -> Replay:
    """Replay one series through one policy (see the module doc for the protocol)."""
    lead, interval = settings.lead_time, settings.interval
    names = settings.names
    begin = data.begin
    capacity = np.full(data.end - begin, data.initial, dtype=np.int64)
    policy.reset()
    current = data.initial
    observed = data.first_decision + lead  # the first step whose capacity the policy chose
    causes = dict.fromkeys(FALLBACK_CAUSES, 0)
    # The demand of every step from the one before the first decision (what it observes) to the end.
    rows = data.demand_rows
    for k, tau in enumerate(data.decisions):
        t = int(tau)
        while observed < t:  # outcomes realised since the last decision, in order
            policy.observe(rows[observed - begin + 1], int(capacity[observed - begin]))
            observed += 1
        samples = None if draws is None else draws[k]
        decision = policy.decide(samples, names, current, t * data.step_s, current_demand=rows[t - begin])
        current = decision.replicas
        if decision.fallback:
            # A fallback without a cause (a policy of one's own) is counted as having had no forecast.
            causes[decision.fallback_cause or "no_forecast"] += 1
        lo = t + lead - begin
        capacity[lo : lo + interval] = current
    return Replay(begin, capacity, len(data.decisions), sum(causes.values()), causes)


def score(data: SeriesData, capacity: IntArray, settings: Settings) -> dict[str, float]:
    """Scores of the capacity in place over the scored steps [start, end) (where any demand is known)."""
    caps = np.array([settings.capacities[n] for n in settings.names])
    demand = data.demand[data.scored]
    n = capacity.astype(np.float64)
    known = np.isfinite(demand).any(axis=1)
    # The same comparison as harmony.decision.is_violation: demand > capacity x replicas, per indicator.
    with np.errstate(invalid="ignore"):
        over = np.where(np.isfinite(demand), (demand - caps * n[:, None]) / caps, -np.inf)
    excess = np.maximum(over.max(axis=1), 0.0)
    violated = known & (excess > 0)
    need = np.where(np.isfinite(demand), demand / caps, -np.inf).max(axis=1)
    spare = np.maximum(n - need, 0.0)
    hours = data.step_s / 3600.0
    steps = int(known.sum())
    replica_hours = float(n[known].sum() * hours)
    violations = int(violated.sum())
    # The steps any count at or above the floor can violate: demand beyond min_replicas' capacity.
    exposed = int((known & (need > settings.scaling.min_replicas)).sum())
    return {
        "steps": float(steps),
        "violations": float(violations),
        "exposed": float(exposed),
        "violation_rate": violations / steps if steps else math.nan,
        "unmet_replica_hours": float(excess[known].sum() * hours),
        "replica_hours": replica_hours,
        "cost": settings.replica_hour_price * replica_hours + settings.violation_penalty * violations,
        "overprovision": float(spare[known].mean()) if steps else math.nan,
        "actions": float(np.count_nonzero(np.diff(capacity))),
        "mean_replicas": float(n[known].mean()) if steps else math.nan,
    }


def scored_demand(datas: Sequence[SeriesData]) -> Mapping[str, FloatArray]:
    """The demand of every series over its scored steps: what `cost_bound` reads."""
    return {d.series: d.demand[d.scored] for d in datas}
