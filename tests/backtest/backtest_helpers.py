"""What the backtest tests share: a slice of the real Fisher trace (two containers), a seasonal naive
forecaster fitted on it (seconds, not minutes), replay settings and a small set of policies to tune."""

from __future__ import annotations

from typing import Any

from harmony.backtest import (
    ClassicalSweep,
    HPASweep,
    PointSweep,
    PoliciesConfig,
    RiskSweep,
    Settings,
    StaticSweep,
)

SERIES = ["container1", "container2"]
CAPACITIES = {"load": 1.0}  # as configs/backtest/fisher_containers.yaml: a few replicas per container
STEP_S = 600.0  # Fisher's 10-minute steps

# Every policy, each with a few knobs: the HPA and EHPA search windows, tolerance and a scale-down rule.
POLICIES = PoliciesConfig(
    harmony=RiskSweep([0.1, 0.05, 0.02, 0.01, 0.005], scale_down_window_s=[0.0, 1800.0]),
    quantile=RiskSweep([0.1, 0.05, 0.02, 0.01, 0.005]),
    point=PointSweep([0.0, 0.5, 1.0, 2.0]),
    ehpa=HPASweep([0.3, 0.5, 0.7, 0.9], scale_down_window_s=[0.0, 1800.0]),
    arima=ClassicalSweep([0.0, 0.5, 1.0, 2.0], history=288, refit_every=144),
    ets=ClassicalSweep([0.0, 0.5, 1.0, 2.0], history=288, refit_every=144),
    hpa=HPASweep(
        [0.2, 0.3, 0.5, 0.7, 0.9],
        tolerance=[0.1, 0.0],
        scale_down_window_s=[0.0, 600.0, 1800.0],
        scale_down_rate=["100%/15s", "1pod/600s"],
    ),
    static=StaticSweep([0.0, 0.25]),
)


def settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "capacities": CAPACITIES,
        "lead_time": 1,
        "max_steps": 150,
        "violation_penalty": 1.0,
        "num_samples": 50,
        "policies": POLICIES,
    }
    base.update(changes)
    return Settings(**base)
