"""What the operator keeps per resource between reconciles: the decider (rebuilt from the status it saved,
and kept through a settings change), its calibration as status and condition, and the forecast whose
realised value scores the model's error once it arrives.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from harmony.decision import Decider, DecisionConfig
from harmony_operator.metrics import OperatorMetrics
from harmony_operator.models import LoadedModel
from harmony_operator.outcome import Conditions
from harmony_operator.prometheus import History

__all__ = [
    "Memory",
    "calibration_condition",
    "calibration_status",
    "decider_for",
    "remember_forecast",
    "score_pending",
]

log = logging.getLogger(__name__)


@dataclass
class Memory:
    """What the operator keeps per resource between reconciles (the decider's part also goes to status)."""

    decider: Decider | None = None
    decision_config: DecisionConfig | None = None
    last_observed: float = -math.inf  # time of the newest sample already fed to the tracker
    pending: tuple[float, dict[str, float]] | None = None  # (time, median forecast) to score later
    failures: int = 0
    last_warning: dict[str, str] = field(default_factory=dict)
    last_desired: int | None = None  # what shadow mode would have set: its outcomes are judged against it


def decider_for(mem: Memory, config: DecisionConfig, saved: Any) -> Decider:
    if mem.decider is not None and mem.decision_config == config:
        return mem.decider
    decider = Decider(config)
    if mem.decider is not None:
        # Settings changed: keep what was learnt about calibration and the stabilisation window.
        with contextlib.suppress(KeyError, TypeError, ValueError):
            decider.load_state_dict(mem.decider.state_dict())
    elif isinstance(saved, Mapping):
        try:
            decider.load_state_dict(saved)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring unreadable saved decision state: %s", exc)
    mem.decider, mem.decision_config = decider, config
    return decider


def calibration_status(decider: Decider) -> dict[str, Any]:
    s = decider.tracker.summary()
    return {
        "alpha": round(s["alpha"], 6),
        "beta": round(s["beta"], 6),
        "mean": round(s["mean"], 6),
        "lower": round(s["credible_low"], 6),
        "upper": round(s["credible_high"], 6),
        "workingQuantile": round(s["working_quantile"], 6),
        "observations": round(s["effective_observations"], 3),
        "miscalibrated": bool(decider.tracker.miscalibrated),
    }


def calibration_condition(conds: Conditions, decider: Decider) -> None:
    t = decider.tracker
    s = t.summary()
    if t.n_updates == 0:
        conds.set("ForecastCalibrated", None, "Collecting", "no realised outcome of a forecast decision yet")
    elif t.miscalibrated:
        conds.set(
            "ForecastCalibrated",
            False,
            "Miscalibrated",
            f"realised violation rate ~{s['mean']:.2%} is credibly above the target {t.target:.2%}",
        )
    else:
        conds.set(
            "ForecastCalibrated",
            True,
            "Calibrated",
            f"violation rate ~{s['mean']:.2%} (90% credible {s['credible_low']:.2%}"
            f"-{s['credible_high']:.2%}); working quantile {s['working_quantile']:.4f}",
        )


def remember_forecast(
    mem: Memory,
    model: LoadedModel,
    draws: NDArray[np.float64],
    window: list[int],
    history: History | None,
) -> None:
    if history is None:
        return
    fspec = model.forecaster.spec
    t = float(history.times[-1]) + (fspec.lead_time + window[0] + 1) * fspec.frequency_s
    med = np.median(draws[:, 0, :], axis=0)
    mem.pending = (t, {n: float(med[k]) for k, n in enumerate(fspec.targets)})


def score_pending(mem: Memory, history: History, metrics: OperatorMetrics, labels: tuple[str, str]) -> None:
    if mem.pending is None:
        return
    t, med = mem.pending
    hits = np.flatnonzero(np.isclose(history.times, t))
    if hits.size == 0:
        return
    row = history.values[hits[0]]
    for n, m in med.items():
        if n in history.names:
            realised = float(row[history.names.index(n)])
            if realised > 0:
                metrics.forecast_error.labels(*labels).observe(abs(realised - m) / realised)
    mem.pending = None
