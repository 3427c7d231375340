"""Perfect foresight: the lower bound on cost at zero violations."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from harmony.decision import Decision, ceil_replicas
from harmony.policies.base import ObservesViolations, check_bounds, check_capacities, predicted_violation

__all__ = ["OraclePolicy"]


class OraclePolicy(ObservesViolations):
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
        self.capacities = check_capacities(capacities, "OraclePolicy")
        check_bounds(min_replicas, max_replicas, "OraclePolicy")
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
            p_violation=predicted_violation(samples, names, self.capacities, replicas),
            policy=self.name,
        )
