"""The interface every scaling policy implements, HARMONY's `Decider` included, and the checks they share.

    decide(samples, names, current_replicas, now_s, *, current_demand=None) -> Decision
        samples: forecast draws [S, H, N] of the indicators `names` over the decision window (or None; a
        single draw is a point forecast); current_replicas: the count set now; now_s: seconds,
        non-decreasing across calls; current_demand: the latest observed value of each demand indicator (what
        a reactive rule sees).
    observe(realised_demand, replicas_in_place) -> bool | None
        the demand realised during one interval and the replicas that were serving it (after the lead time);
        returns whether it was a violation (None when no demand is known).
    reset()
        forget all state (a new series, a new replay).

Each policy reads what it needs and ignores the rest: the HPA only `current_demand`, the forecast policies
`samples`, the static and oracle policies neither. Where draws are given, every policy reports the
predicted probability of violation of its count on them, so that the policies can be compared on the same
footing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from harmony.decision import Decision, DemandDraws, NonFiniteDraws, is_violation

__all__ = ["ObservesViolations", "Policy", "check_bounds", "check_capacities", "predicted_violation"]


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


def check_capacities(capacities: Mapping[str, float], who: str) -> dict[str, float]:
    """A private copy of the capacities per replica, each a finite number > 0; the error names `who`."""
    if not capacities:
        raise ValueError(f"{who}: capacities is empty: name at least one demand indicator")
    for name, cap in capacities.items():
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"{who}: capacities[{name!r}] = {cap!r} must be a finite number > 0")
    return {k: float(v) for k, v in capacities.items()}


def check_bounds(min_replicas: int, max_replicas: int | None, who: str) -> None:
    if min_replicas < 0:
        raise ValueError(f"{who}: min_replicas must be >= 0, got {min_replicas}")
    if max_replicas is not None and max_replicas < max(1, min_replicas):
        raise ValueError(
            f"{who}: max_replicas ({max_replicas}) must be >= max(1, min_replicas={min_replicas})"
        )


def predicted_violation(
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


class ObservesViolations:
    """observe() for policies whose decisions do not learn from outcomes."""

    capacities: dict[str, float]

    def observe(self, realised_demand: Mapping[str, float], replicas_in_place: int) -> bool | None:
        return is_violation(realised_demand, self.capacities, replicas_in_place)
