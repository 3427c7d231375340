"""Baseline scaling policies the backtest compares HARMONY with, behind one small interface.

Every policy (and `harmony.decision.Decider`, the HARMONY policy itself) implements `Policy`:

    decide(samples, names, current_replicas, now_s, *, current_demand=None) -> Decision
        samples: forecast draws [S, H, N] of the indicators `names` over the decision window (or None);
        current_replicas: the count set now; now_s: seconds, non-decreasing across calls;
        current_demand: the latest observed value of each demand indicator (what a reactive rule sees).
    observe(realised_demand, replicas_in_place) -> bool | None
        the demand realised during one interval and the replicas that were serving it (after the lead time);
        returns whether it was a violation (None when no demand is known).
    reset()
        forget all state (a new series, a new replay).

Each policy reads what it needs and ignores the rest: the HPA only `current_demand`, the forecast policies
only `samples`, the static and oracle policies neither. Where draws are given, every policy reports the
predicted probability of violation of its count on them, so that the policies can be compared on the same
footing. Knobs swept by the backtest: `HPAPolicy.target_utilization`, `StaticPolicy.headroom`,
`PointForecastPolicy.target_utilization` / `margin`, `QuantilePolicy` (via `max_violation_probability`);
the oracle has none (it is the lower bound).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from harmony.decision import (
    Decider,
    Decision,
    DecisionConfig,
    DemandDraws,
    NonFiniteDraws,
    Stabilizer,
    ceil_replicas,
    fallback_decision,
    is_violation,
)

__all__ = [
    "HPAPolicy",
    "OraclePolicy",
    "PointForecastPolicy",
    "Policy",
    "QuantilePolicy",
    "StaticPolicy",
]


@runtime_checkable
class Policy(Protocol):
    """What the backtest and the operator call, for HARMONY and every baseline alike."""

    @property
    def name(self) -> str: ...

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision: ...

    def observe(self, realised_demand: Mapping[str, float], replicas_in_place: int) -> bool | None: ...

    def reset(self) -> None: ...


def _check_capacities(capacities: Mapping[str, float], who: str) -> dict[str, float]:
    if not capacities:
        raise ValueError(f"{who}: capacities is empty: name at least one demand indicator")
    for name, cap in capacities.items():
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"{who}: capacities[{name!r}] = {cap!r} must be a finite number > 0")
    return {k: float(v) for k, v in capacities.items()}


def _check_bounds(min_replicas: int, max_replicas: int | None, who: str) -> None:
    if min_replicas < 0:
        raise ValueError(f"{who}: min_replicas must be >= 0, got {min_replicas}")
    if max_replicas is not None and max_replicas < max(1, min_replicas):
        raise ValueError(
            f"{who}: max_replicas ({max_replicas}) must be >= max(1, min_replicas={min_replicas})"
        )


def _predicted_violation(
    samples: NDArray[np.floating[Any]] | None,
    names: Sequence[str],
    capacities: Mapping[str, float],
    replicas: int,
) -> float | None:
    """P(demand > capacity of `replicas` somewhere in the window) on the draws, if usable draws are given."""
    if samples is None:
        return None
    try:
        return DemandDraws(samples, names, capacities).exceedance(replicas)
    except NonFiniteDraws:
        return None


class _ObservesViolations:
    """observe() for policies whose decisions do not learn from outcomes."""

    capacities: dict[str, float]

    def observe(self, realised_demand: Mapping[str, float], replicas_in_place: int) -> bool | None:
        return is_violation(realised_demand, self.capacities, replicas_in_place)


# --- Kubernetes HPA ----------------------------------------------------------------------------------------


class HPAPolicy(_ObservesViolations):
    """The Kubernetes Horizontal Pod Autoscaler, as documented (kubernetes.io, "Horizontal Pod Autoscaling").

    Per metric i: utilisation u_i = demand_i / (current * c_i), ratio = u_i / target_i; the proposal is the
    current count when |ratio - 1| <= tolerance (0.1), else ceil(current * ratio). The desired count is the
    largest proposal; when a metric is missing and the others propose a scale-down, scaling is skipped.
    Then the default `behavior`: scale-down stabilisation window 300 s (the highest recommendation in the
    window), none for scale-up; scale-up rate at most max(+100%, +4 pods) per 15 s period, scale-down rate
    at most 100% per 15 s; clipping to [min, max]. At zero current replicas autoscaling is off (as in the
    HPA).

    The HPA syncs every `sync_period_s` (15 s); a decision every `interval_s` stands for
    max(1, floor(interval_s / sync_period_s)) syncs with the same metrics, so the rate limits compound over
    them (with metrics constant within the interval, each sync re-proposes the same count). Pods are taken
    ready at once: the lead time is the backtest's business, as for every policy.
    Knob: `target_utilization` (one for all metrics or one per metric).
    """

    name: ClassVar[str] = "hpa"

    def __init__(
        self,
        capacities: Mapping[str, float],
        *,
        target_utilization: float | Mapping[str, float] = 0.7,
        min_replicas: int = 1,
        max_replicas: int,
        tolerance: float = 0.1,
        scale_down_stabilization_s: float = 300.0,
        scale_up_stabilization_s: float = 0.0,
        interval_s: float = 15.0,
        sync_period_s: float = 15.0,
        scale_up_percent: float | None = 100.0,
        scale_up_pods: int | None = 4,
        scale_down_percent: float | None = 100.0,
    ) -> None:
        self.capacities = _check_capacities(capacities, "HPAPolicy")
        _check_bounds(min_replicas, max_replicas, "HPAPolicy")
        if isinstance(target_utilization, Mapping):
            missing = [n for n in self.capacities if n not in target_utilization]
            if missing:
                raise ValueError(f"HPAPolicy: no target_utilization for {missing}")
            targets = {n: float(target_utilization[n]) for n in self.capacities}
        else:
            targets = dict.fromkeys(self.capacities, float(target_utilization))
        for n, t in targets.items():
            if not t > 0:
                raise ValueError(f"HPAPolicy: target_utilization for {n!r} must be > 0, got {t}")
        if tolerance < 0:
            raise ValueError(f"HPAPolicy: tolerance must be >= 0, got {tolerance}")
        if not (interval_s > 0 and sync_period_s > 0):
            raise ValueError("HPAPolicy: interval_s and sync_period_s must be > 0")
        if scale_up_percent is None and scale_up_pods is None:
            raise ValueError(
                "HPAPolicy: give at least one scale-up policy (percent or pods), as the HPA requires"
            )
        self.targets = targets
        self.tolerance = tolerance
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.syncs_per_interval = max(1, math.floor(interval_s / sync_period_s + 1e-9))
        self.scale_up_percent = scale_up_percent
        self.scale_up_pods = scale_up_pods
        self.scale_down_percent = scale_down_percent
        self.stabilizer = Stabilizer(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_down_stabilization_s=scale_down_stabilization_s,
            scale_up_stabilization_s=scale_up_stabilization_s,
        )

    def reset(self) -> None:
        self.stabilizer.reset()

    def proposal(
        self, current_replicas: int, current_demand: Mapping[str, float] | None
    ) -> tuple[int, str | None, str]:
        """The metric step: (desired replicas before behaviour, binding metric, one-line explanation)."""
        proposals: list[tuple[int, str, float]] = []
        missing: list[str] = []
        for name, cap in self.capacities.items():
            d = None if current_demand is None else current_demand.get(name)
            if d is None or not math.isfinite(d):
                missing.append(name)
                continue
            ratio = d / (current_replicas * cap) / self.targets[name]
            # The HPA's tolerance: a ratio within 10% of 1.0 proposes no change.
            if abs(1.0 - ratio) <= self.tolerance:
                proposals.append((current_replicas, name, ratio))
            else:
                proposals.append((ceil_replicas(current_replicas * ratio), name, ratio))
        if not proposals:
            return current_replicas, None, f"no metric for {missing}; holding {current_replicas}"
        desired, binding, ratio = max(proposals, key=lambda p: p[0])
        text = (
            f"{binding} at {ratio:.2f}x its {self.targets[binding]:.0%} utilisation target proposes {desired}"
        )
        if abs(1.0 - ratio) <= self.tolerance:
            text = f"{binding} at {ratio:.2f}x its target is within the {self.tolerance:g} tolerance"
        if missing and desired < current_replicas:
            return current_replicas, binding, f"{text}, but {missing} missing: no scale-down"
        return desired, binding, text

    def _rate_limited(self, replicas: int, current: int) -> tuple[int, bool]:
        up_limit = down_limit = current
        for _ in range(self.syncs_per_interval):
            # selectPolicy Max: the policy allowing the largest change wins.
            candidates = []
            if self.scale_up_percent is not None:
                candidates.append(math.ceil(up_limit * (1.0 + self.scale_up_percent / 100.0)))
            if self.scale_up_pods is not None:
                candidates.append(up_limit + self.scale_up_pods)
            up_limit = max(candidates)
            if self.scale_down_percent is not None:
                down_limit = math.ceil(down_limit * (1.0 - self.scale_down_percent / 100.0))
        if self.scale_down_percent is None:
            down_limit = current  # no scale-down policy: scaling down is not allowed by rate
        if replicas > up_limit:
            return up_limit, True
        if replicas < down_limit:
            return down_limit, True
        return replicas, False

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision:
        if current_replicas < 0:
            raise ValueError(f"current_replicas must be >= 0, got {current_replicas}")
        if current_replicas == 0 and self.min_replicas > 0:
            return Decision(
                replicas=0,
                recommendation=0,
                reason="hpa: the target is scaled to zero; autoscaling is disabled until it is scaled up",
                p_violation=_predicted_violation(samples, names, self.capacities, 0),
                policy=self.name,
            )
        desired, binding, text = self.proposal(current_replicas, current_demand)
        replicas, cause = self.stabilizer.apply(desired, current_replicas, now_s)
        limited, hit = self._rate_limited(replicas, current_replicas)
        if hit:
            replicas, cause = limited, "scaling policy rate limit"
        bounded = min(max(replicas, self.min_replicas), self.max_replicas)
        if bounded != replicas:
            replicas, cause = bounded, ("min_replicas" if bounded > replicas else "max_replicas")
        reason = f"hpa: {text}"
        if cause is not None and replicas != desired:
            reason += f"; stabilised to {replicas} ({cause})"
        return Decision(
            replicas=replicas,
            recommendation=desired,
            reason=reason,
            binding_indicator=binding,
            p_violation=_predicted_violation(samples, names, self.capacities, replicas),
            policy=self.name,
        )


# --- static peak provisioning ------------------------------------------------------------------------------


class StaticPolicy(_ObservesViolations):
    """Peak provisioning: a fixed count, `max_i ceil(peak_i / c_i * (1 + headroom))`, from the training data.

    Knob: `headroom` (fraction above the training peak).
    """

    name: ClassVar[str] = "static"

    def __init__(
        self,
        capacities: Mapping[str, float],
        peak_demand: Mapping[str, float],
        *,
        headroom: float = 0.0,
        min_replicas: int = 1,
        max_replicas: int | None = None,
    ) -> None:
        self.capacities = _check_capacities(capacities, "StaticPolicy")
        _check_bounds(min_replicas, max_replicas, "StaticPolicy")
        if headroom < 0:
            raise ValueError(f"StaticPolicy: headroom must be >= 0, got {headroom}")
        missing = [n for n in self.capacities if n not in peak_demand or not math.isfinite(peak_demand[n])]
        if missing:
            raise ValueError(f"StaticPolicy: no finite training peak for {missing}")
        self.peak_demand = {n: float(peak_demand[n]) for n in self.capacities}
        self.headroom = headroom
        per = {n: p / self.capacities[n] * (1.0 + headroom) for n, p in self.peak_demand.items()}
        self.binding = max(per, key=lambda n: per[n])
        self.recommendation = ceil_replicas(per[self.binding])
        hi = self.recommendation if max_replicas is None else min(self.recommendation, max_replicas)
        self.replicas = max(min_replicas, hi)

    @classmethod
    def from_history(
        cls,
        capacities: Mapping[str, float],
        history: Mapping[str, ArrayLike],
        *,
        headroom: float = 0.0,
        min_replicas: int = 1,
        max_replicas: int | None = None,
    ) -> StaticPolicy:
        """Peaks (ignoring NaN gaps) of the training part of each demand indicator."""
        peaks: dict[str, float] = {}
        for name in capacities:
            if name not in history:
                raise ValueError(f"StaticPolicy: no training history for {name!r}")
            values = np.asarray(history[name], dtype=np.float64)
            if not np.isfinite(values).any():
                raise ValueError(f"StaticPolicy: the training history of {name!r} has no finite value")
            peaks[name] = float(np.nanmax(np.where(np.isfinite(values), values, np.nan)))
        return cls(capacities, peaks, headroom=headroom, min_replicas=min_replicas, max_replicas=max_replicas)

    def reset(self) -> None:
        """Nothing to forget: the count is fixed at construction."""

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision:
        del current_replicas, now_s, current_demand  # a static count looks at nothing
        reason = (
            f"static: training peak of {self.binding} ({self.peak_demand[self.binding]:g}) "
            f"/ capacity x (1 + {self.headroom:g}) needs {self.recommendation}"
        )
        if self.replicas != self.recommendation:
            reason += f"; clipped to {self.replicas}"
        return Decision(
            replicas=self.replicas,
            recommendation=self.recommendation,
            reason=reason,
            binding_indicator=self.binding,
            p_violation=_predicted_violation(samples, names, self.capacities, self.replicas),
            policy=self.name,
        )


# --- forecast-driven baselines -----------------------------------------------------------------------------


class PointForecastPolicy(_ObservesViolations):
    """AWS predictive-scaling style: a point forecast, no distribution.

    replicas = ceil(max_{h,i} point[h, i] / (c_i * target_utilization) * (1 + margin)), where the point is the
    median (or mean) of the draws per step and indicator; a single draw is taken as a given point forecast.
    Clipping and stabilisation are the same `Stabilizer` as HARMONY's (from the config), so only the rule
    differs; without draws it falls back to the same reactive rule. Knobs: `target_utilization`, `margin`.
    """

    name: ClassVar[str] = "point"

    def __init__(
        self,
        config: DecisionConfig,
        *,
        target_utilization: float = 0.7,
        margin: float = 0.0,
        point: Literal["median", "mean"] = "median",
    ) -> None:
        if not 0.0 < target_utilization <= 1.0:
            raise ValueError(
                f"PointForecastPolicy: target_utilization must be in (0, 1], got {target_utilization}"
            )
        if margin < 0:
            raise ValueError(f"PointForecastPolicy: margin must be >= 0, got {margin}")
        if point not in ("median", "mean"):
            raise ValueError(f"PointForecastPolicy: point must be 'median' or 'mean', got {point!r}")
        self.config = config
        self.capacities = dict(config.capacities)
        self.target_utilization = target_utilization
        self.margin = margin
        self.point = point
        self.stabilizer = Stabilizer.from_config(config)

    def reset(self) -> None:
        self.stabilizer.reset()

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision:
        y = None if samples is None else np.asarray(samples, dtype=np.float64)
        if y is None or not np.isfinite(y).all():
            # HARMONY's fallback rule and floor, so that only the forecast rule is compared.
            why = "no forecast" if y is None else "forecast has NaN or infinite draws"
            return fallback_decision(
                self.config, self.stabilizer, why, current_replicas, now_s, current_demand, policy=self.name
            )
        draws = DemandDraws(y, names, self.capacities)  # validates shape and names
        cols = [names.index(n) for n in draws.names]
        caps = np.array([self.capacities[n] for n in draws.names])
        point = np.median(y[:, :, cols], axis=0) if self.point == "median" else y[:, :, cols].mean(axis=0)
        need = point / (caps * self.target_utilization) * (1.0 + self.margin)  # [H, K]
        step, col = np.unravel_index(int(np.argmax(need)), need.shape)
        recommendation = ceil_replicas(min(float(need[step, col]), 1e15))
        replicas, cause = self.stabilizer.apply(recommendation, current_replicas, now_s)
        p_violation = draws.exceedance(replicas)
        binding_step = self.config.lead_steps + int(step) + 1
        reason = (
            f"point ({self.point}) forecast of {draws.names[col]} at +{binding_step} steps / capacity at "
            f"{self.target_utilization:.0%} + {self.margin:.0%} margin needs {recommendation}"
        )
        if cause is not None:
            reason += f"; stabilised to {replicas} ({cause})"
        return Decision(
            replicas=replicas,
            recommendation=recommendation,
            reason=reason,
            binding_indicator=draws.names[col],
            binding_step=binding_step,
            p_violation=p_violation,
            expected_cost=self.config.price_per_interval * replicas
            + self.config.violation_penalty * p_violation,
            policy=self.name,
        )


class QuantilePolicy(Decider):
    """HARMONY's chance constraint (and newsvendor) at the nominal level, without Bayesian adaptation.

    The ablation of the adaptation: same quantile rule, same stabiliser, same fallback; the working level
    stays at the target whatever the realised violations. Knob: `max_violation_probability` of the config.
    """

    name: ClassVar[str] = "quantile"

    def __init__(self, config: DecisionConfig) -> None:
        super().__init__(dataclasses.replace(config, adaptive=False, fallback_on_miscalibration=False))


# --- perfect foresight -------------------------------------------------------------------------------------


class OraclePolicy(_ObservesViolations):
    """Perfect foresight: the fewest replicas with no violation over the window the decision is in force.

    A decision at `now_s` is in force over [now_s + lead_time_s, now_s + lead_time_s + window_s) (set
    `window_s` to the decision interval); replicas = max_i ceil(max realised demand_i in that window / c_i),
    clipped to [min, max]. No stabilisation: it is the lower bound on cost at zero violations. A window with
    no realised point (the end of the trace) keeps the current count.
    """

    name: ClassVar[str] = "oracle"

    def __init__(
        self,
        capacities: Mapping[str, float],
        realised: Mapping[str, ArrayLike],
        times_s: ArrayLike,
        *,
        lead_time_s: float,
        window_s: float,
        min_replicas: int = 1,
        max_replicas: int | None = None,
    ) -> None:
        self.capacities = _check_capacities(capacities, "OraclePolicy")
        _check_bounds(min_replicas, max_replicas, "OraclePolicy")
        if lead_time_s < 0 or not window_s > 0:
            raise ValueError(
                f"OraclePolicy: need lead_time_s >= 0 and window_s > 0, got {lead_time_s}, {window_s}"
            )
        self.times_s = np.asarray(times_s, dtype=np.float64)
        if self.times_s.ndim != 1 or (np.diff(self.times_s) < 0).any():
            raise ValueError("OraclePolicy: times_s must be a 1-D increasing array of seconds")
        self.realised: dict[str, NDArray[np.float64]] = {}
        for name in self.capacities:
            if name not in realised:
                raise ValueError(f"OraclePolicy: no realised series for {name!r}")
            values = np.asarray(realised[name], dtype=np.float64)
            if values.shape != self.times_s.shape:
                raise ValueError(
                    f"OraclePolicy: {name!r} has {values.shape} values for {self.times_s.shape} times"
                )
            self.realised[name] = values
        self.lead_time_s = lead_time_s
        self.window_s = window_s
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas

    def reset(self) -> None:
        """Nothing to forget: the future is given at construction."""

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision:
        del current_demand
        start = now_s + self.lead_time_s
        lo = int(np.searchsorted(self.times_s, start, side="left"))
        hi = int(np.searchsorted(self.times_s, start + self.window_s, side="left"))
        best, binding = -math.inf, None
        for name, cap in self.capacities.items():
            window = self.realised[name][lo:hi]
            window = window[np.isfinite(window)]
            if window.size and window.max() / cap > best:
                best, binding = float(window.max()) / cap, name
        if binding is None:
            reason = f"oracle: no realised demand in [{start:g}, {start + self.window_s:g}) s; holding"
            recommendation = current_replicas
        else:
            recommendation = ceil_replicas(best)
            reason = f"oracle: the realised peak of {binding} in the window needs {recommendation}"
        replicas = max(recommendation, self.min_replicas)
        if self.max_replicas is not None:
            replicas = min(replicas, self.max_replicas)
        if replicas != recommendation:
            reason += f"; clipped to {replicas}"
        return Decision(
            replicas=replicas,
            recommendation=recommendation,
            reason=reason,
            binding_indicator=binding,
            p_violation=_predicted_violation(samples, names, self.capacities, replicas),
            policy=self.name,
        )
