"""`DecisionConfig`: everything the decision needs to know about a service, its SLA and its prices, validated
where it is built (the operator from a custom resource, the backtest from its configuration)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from harmony.decision.rates import RateLimit

__all__ = ["DecisionConfig"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"DecisionConfig: {message}")


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class DecisionConfig:
    """Everything the decision needs to know about the service, its SLA and its prices.

    Units: `replica_hour_price` is the price of one replica for one hour; `violation_penalty` is the cost of
    one violation event, i.e. one decision interval during which demand exceeded the capacity of the
    replicas in place (same currency). The newsvendor compares the price of one replica for one interval,
    `replica_hour_price * interval_s / 3600`, with that penalty. `violation_penalty = 0` turns the cost
    term off (the SLA alone decides).

    The fields after `fallback_margin` tune the Bayesian adaptation (see `CalibrationTracker`) and the
    wording of reasons; their defaults suit decision intervals of one to five minutes. The tracker learns only
    from outcomes whose count the quantile set: not clipped to a bound, held by the stabiliser, limited by a
    step limit or the fallback's, and with the draws' exceedance of that count at least
    `informative_fraction` of the level asked (a count far above what the level asked, such as an idle
    service's floor, is the same whatever the level, so its outcome says nothing about the level).
    """

    capacities: dict[str, float]
    max_replicas: int
    max_violation_probability: float = 0.01
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0
    interval_s: float = 60.0
    min_replicas: int = 1
    scale_down_stabilization_s: float = 300.0
    max_scale_up_step: int | None = None
    max_scale_down_step: int | None = None
    # The HPA's `behavior` beyond the two step caps: a scale-up stabilisation window and the rate rules
    # (`policies` with `selectPolicy`) of each direction; None = no rate limit that way.
    scale_up_stabilization_s: float = 0.0
    scale_up_rate: RateLimit | None = None
    scale_down_rate: RateLimit | None = None
    fallback_target_utilization: float = 0.7
    fallback_margin: float = 0.1
    adaptive: bool = True
    forgetting: float = 0.995
    prior_strength: float | None = None
    adaptation_gain: float = 1.0
    min_working_probability: float = 1e-4
    max_working_probability: float = 0.5
    credible_mass: float = 0.9
    informative_fraction: float = 0.05
    fallback_on_miscalibration: bool = True
    lead_steps: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.capacities, Mapping), "capacities must be a mapping indicator -> capacity")
        _require(len(self.capacities) > 0, "capacities is empty: name at least one demand indicator")
        for name, cap in self.capacities.items():
            _require(isinstance(name, str) and bool(name), f"capacity key {name!r} is not an indicator name")
            _require(
                isinstance(cap, int | float) and math.isfinite(cap) and cap > 0,
                f"capacities[{name!r}] = {cap!r}: per-replica capacity must be a finite number > 0",
            )
        # A private copy: the caller mutating its dict must not change a frozen config.
        object.__setattr__(self, "capacities", {k: float(v) for k, v in self.capacities.items()})
        eps = self.max_violation_probability
        _require(0.0 < eps < 1.0, f"max_violation_probability must be in (0, 1), got {eps}")
        _require(
            self.replica_hour_price >= 0, f"replica_hour_price must be >= 0, got {self.replica_hour_price}"
        )
        _require(self.violation_penalty >= 0, f"violation_penalty must be >= 0, got {self.violation_penalty}")
        _require(self.interval_s > 0, f"interval_s must be > 0 seconds, got {self.interval_s}")
        _require(
            _is_int(self.min_replicas) and self.min_replicas >= 0, "min_replicas must be an integer >= 0"
        )
        _require(
            _is_int(self.max_replicas) and self.max_replicas >= max(1, self.min_replicas),
            f"max_replicas must be an integer >= max(1, min_replicas={self.min_replicas}), "
            f"got {self.max_replicas!r}",
        )
        _require(
            self.scale_down_stabilization_s >= 0,
            f"scale_down_stabilization_s must be >= 0, got {self.scale_down_stabilization_s}",
        )
        _require(
            self.scale_up_stabilization_s >= 0,
            f"scale_up_stabilization_s must be >= 0, got {self.scale_up_stabilization_s}",
        )
        for key in ("scale_up_rate", "scale_down_rate"):
            _require(
                getattr(self, key) is None or isinstance(getattr(self, key), RateLimit),
                f"{key} must be None or a RateLimit",
            )
        for key in ("max_scale_up_step", "max_scale_down_step"):
            step = getattr(self, key)
            _require(step is None or (_is_int(step) and step >= 1), f"{key} must be None or an integer >= 1")
        _require(
            0.0 < self.fallback_target_utilization <= 1.0,
            f"fallback_target_utilization must be in (0, 1], got {self.fallback_target_utilization}",
        )
        _require(self.fallback_margin >= 0, f"fallback_margin must be >= 0, got {self.fallback_margin}")
        _require(0.0 < self.forgetting <= 1.0, f"forgetting must be in (0, 1], got {self.forgetting}")
        _require(
            self.prior_strength is None or self.prior_strength > 0,
            f"prior_strength must be None or > 0, got {self.prior_strength}",
        )
        _require(
            0.0 < self.adaptation_gain <= 1.0,
            f"adaptation_gain must be in (0, 1], got {self.adaptation_gain}",
        )
        lo, hi = self.min_working_probability, self.max_working_probability
        _require(
            0.0 < lo < hi < 1.0,
            f"need 0 < min_working_probability ({lo}) < max_working_probability ({hi}) < 1",
        )
        _require(0.0 < self.credible_mass < 1.0, f"credible_mass must be in (0, 1), got {self.credible_mass}")
        _require(
            0.0 <= self.informative_fraction <= 1.0,
            f"informative_fraction must be in [0, 1], got {self.informative_fraction}",
        )
        _require(_is_int(self.lead_steps) and self.lead_steps >= 0, "lead_steps must be an integer >= 0")

    @property
    def price_per_interval(self) -> float:
        """Price of one replica for one decision interval."""
        return self.replica_hour_price * self.interval_s / 3600.0

    @property
    def cost_probability(self) -> float | None:
        """Critical fractile of the newsvendor: the cost-optimal P(violation) = price per interval / penalty.

        None when the penalty does not exceed the price of a replica-interval: then adding a replica never
        pays for itself and only the SLA constrains the count.
        """
        if self.violation_penalty <= self.price_per_interval:
            return None
        return self.price_per_interval / self.violation_penalty

    @property
    def target_probability(self) -> float:
        """The exceedance level the decision aims at: the stricter of the SLA and the critical fractile."""
        cost = self.cost_probability
        return self.max_violation_probability if cost is None else min(self.max_violation_probability, cost)

    @property
    def tracked_probability(self) -> float:
        """`target_probability` kept within [min_working_probability, max_working_probability]."""
        return min(max(self.target_probability, self.min_working_probability), self.max_working_probability)

    @property
    def cost_binds(self) -> bool:
        cost = self.cost_probability
        return cost is not None and cost < self.max_violation_probability
