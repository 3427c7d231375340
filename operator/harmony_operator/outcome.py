"""What a reconcile writes: the status conditions (each keeping its transition time while unchanged), the
decision memory a reconcile that ends early must carry over, the events, and `Outcome`, which holds them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harmony.decision import Decision

__all__ = [
    "CONDITIONS",
    "MEMORY_KEYS",
    "STATUS_QUANTILES",
    "Conditions",
    "Event",
    "Outcome",
    "carry_memory",
    "iso_time",
]

CONDITIONS = ("Ready", "MetricsAvailable", "ModelLoaded", "ForecastCalibrated", "ScalingActive")
# What a reconcile that ends early (or fails) must not erase from status: the decision module's memory.
MEMORY_KEYS = ("state", "calibration", "lastScaleTime", "health")


def carry_memory(status: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """`status` with every memory key it does not set taken from the previous status."""
    for key in MEMORY_KEYS:
        if status.get(key) is None and old.get(key) is not None:
            status[key] = old[key]
    return status


STATUS_QUANTILES = (0.5, 0.9, 0.99)


def iso_time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconcile produced: the status to write, the events to post, when to come back."""

    status: dict[str, Any]
    events: list[Event]
    next_in_s: float
    decision: Decision | None = None


class Conditions:
    """The five conditions of a status: those set this time, the others as they were."""

    def __init__(self, existing: Sequence[Mapping[str, Any]] | None, now: float, generation: int | None):
        self._old = {c.get("type"): dict(c) for c in existing or [] if isinstance(c, Mapping)}
        self._new: dict[str, dict[str, Any]] = {}
        self._now = now
        self._generation = generation

    def set(self, type_: str, status: bool | None, reason: str, message: str) -> None:
        s = "Unknown" if status is None else ("True" if status else "False")
        old = self._old.get(type_)
        changed = old is None or old.get("status") != s
        cond: dict[str, Any] = {
            "type": type_,
            "status": s,
            "reason": reason,
            "message": message,
            "lastTransitionTime": iso_time(self._now)
            if changed or old is None
            else old.get("lastTransitionTime", iso_time(self._now)),
        }
        if self._generation is not None:
            cond["observedGeneration"] = self._generation
        self._new[type_] = cond

    def render(self) -> list[dict[str, Any]]:
        out = []
        for t in CONDITIONS:
            c = self._new.get(t) or self._old.get(t)
            if c is None:
                c = {
                    "type": t,
                    "status": "Unknown",
                    "reason": "Pending",
                    "message": "not evaluated yet",
                    "lastTransitionTime": iso_time(self._now),
                }
            out.append(c)
        return out
