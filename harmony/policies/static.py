"""Peak provisioning: a fixed count from the history before the replayed part."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from harmony.decision import Decision, ceil_replicas
from harmony.policies.base import ObservesViolations, check_bounds, check_capacities, predicted_violation

__all__ = ["StaticPolicy"]


class StaticPolicy(ObservesViolations):
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
        self.capacities = check_capacities(capacities, "StaticPolicy")
        check_bounds(min_replicas, max_replicas, "StaticPolicy")
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
            p_violation=predicted_violation(samples, names, self.capacities, self.replicas),
            policy=self.name,
        )
