"""Forecast-driven baselines beside HARMONY's own rule: a point forecast with a margin (AWS predictive
scaling; NVIDIA Dynamo's planner with a classical model's forecast), the chance constraint without
adaptation (HARMONY's ablation), and crane's Effective HPA (the HPA on the larger of the observed and the
forecast metric)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from harmony.decision import (
    Decider,
    Decision,
    DecisionConfig,
    DemandDraws,
    Stabilizer,
    ceil_replicas,
    fallback_decision,
)
from harmony.policies.base import ObservesViolations
from harmony.policies.hpa import HPAPolicy

__all__ = ["EHPAPolicy", "PointForecastPolicy", "QuantilePolicy"]


def _point(y: NDArray[np.float64], kind: Literal["median", "mean"]) -> NDArray[np.float64]:
    """The point forecast [H, K] of draws [S, H, K]: their median or mean per step (one draw is itself)."""
    out: NDArray[np.float64] = np.median(y, axis=0) if kind == "median" else y.mean(axis=0)
    return out


class PointForecastPolicy(ObservesViolations):
    """AWS predictive-scaling style: a point forecast, no distribution.

    replicas = ceil(max_{h,i} point[h, i] / (c_i * target_utilization) * (1 + margin)), where the point is the
    median (or mean) of the draws per step and indicator; a single draw is taken as a given point forecast.
    Clipping and stabilisation are the same `Stabilizer` as HARMONY's (from the config), so only the rule
    differs; without draws it falls back to the same reactive rule. Knobs: `target_utilization`, `margin`.
    Given one draw per decision from a classical model (`harmony.model.classical`, as NVIDIA Dynamo's planner
    forecasts with ARIMA), it is that model's point-forecast policy; `name` tells them apart in a table.
    """

    def __init__(
        self,
        config: DecisionConfig,
        *,
        target_utilization: float = 0.7,
        margin: float = 0.0,
        point: Literal["median", "mean"] = "median",
        name: str = "point",
    ) -> None:
        if not 0.0 < target_utilization <= 1.0:
            raise ValueError(
                f"PointForecastPolicy: target_utilization must be in (0, 1], got {target_utilization}"
            )
        if margin < 0:
            raise ValueError(f"PointForecastPolicy: margin must be >= 0, got {margin}")
        if point not in ("median", "mean"):
            raise ValueError(f"PointForecastPolicy: point must be 'median' or 'mean', got {point!r}")
        self.name = name
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
            why, fell_back = (
                ("no forecast", "no_forecast")
                if y is None
                else ("forecast has NaN or infinite draws", "bad_draws")
            )
            return fallback_decision(
                self.config,
                self.stabilizer,
                why,
                current_replicas,
                now_s,
                current_demand,
                policy=self.name,
                cause=fell_back,
            )
        draws = DemandDraws(y, names, self.capacities)  # validates shape and names
        cols = [names.index(n) for n in draws.names]
        caps = np.array([self.capacities[n] for n in draws.names])
        point = _point(y[:, :, cols], self.point)
        need = point / (caps * self.target_utilization) * (1.0 + self.margin)  # [H, K]
        step, col = np.unravel_index(int(np.argmax(need)), need.shape)
        recommendation = ceil_replicas(min(float(need[step, col]), 1e15))
        replicas, cause = self.stabilizer.apply(recommendation, current_replicas, now_s)
        p_violation = draws.exceedance(replicas)
        binding_step = self.config.lead_steps + int(step) + 1
        reason = (
            f"{self.name}: point ({self.point}) forecast of {draws.names[col]} at +{binding_step} steps / "
            f"capacity at {self.target_utilization:.0%} + {self.margin:.0%} margin needs {recommendation}"
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


class EHPAPolicy(HPAPolicy):
    """crane's Effective HPA (EHPA): the Kubernetes HPA given, beside each observed metric, its forecast.

    The forecast metric of indicator i is the peak over the decision window of the point forecast (the median
    of the draws per step, as crane's predictor gives a series and EHPA takes its maximum over the prediction
    window); the HPA's metric step proposes a count for the observed and for the forecast value alike and
    takes the largest, so the policy is max(reactive, forecast), then the HPA's whole `behavior`. Without
    usable draws it is the plain HPA. Knobs: the HPA's.
    """

    name: ClassVar[str] = "ehpa"

    def proposals(
        self,
        current_replicas: int,
        current_demand: Mapping[str, float] | None,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
    ) -> tuple[list[tuple[int, str, float]], list[str]]:
        out, missing = super().proposals(current_replicas, current_demand, None, names)
        if samples is None:
            return out, missing
        y = np.asarray(samples, dtype=np.float64)
        missing_names = [n for n in self.capacities if n not in names]
        if y.ndim != 3 or y.shape[2] != len(names) or missing_names:
            # A caller's bug, as for every policy that reads draws: say what does not fit.
            raise ValueError(
                f"draws of shape {y.shape} for indicators {list(names)} do not cover the demand indicators "
                f"{list(self.capacities)}"
            )
        cols = [list(names).index(n) for n in self.capacities]
        if not np.isfinite(y[:, :, cols]).all():
            return out, missing  # a broken forecast: the plain HPA decides
        peak = _point(y[:, :, cols], "median").max(axis=0)  # [K]: the forecast peak of each indicator
        for name, value in zip(self.capacities, peak, strict=True):
            count, ratio = self.metric_proposal(name, float(value), current_replicas)
            out.append((count, f"{name} (forecast)", ratio))
        return out, missing
