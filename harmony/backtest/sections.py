"""The backtest configuration's typed sections: the forecaster, the replay, the SLA, the cost, the scaling
bounds, each policy's knob lists, the tuning, the report, and `BacktestConfig` that holds them with the
training sections. `harmony.backtest.config` reads them from YAML and `harmony.backtest.checks` checks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harmony.training.config import TrainConfig

__all__ = [
    "BACKTEST_SECTIONS",
    "BASELINES",
    "CLASSICAL_POLICIES",
    "DRAW_POLICIES",
    "EPS_SWEEP",
    "POLICY_ORDER",
    "SWEEPS",
    "TOP_LEVEL",
    "TRAINING_SECTIONS",
    "BacktestConfig",
    "BacktestSections",
    "ClassicalSweep",
    "CostConfig",
    "ForecasterConfig",
    "HPASweep",
    "PointSweep",
    "PoliciesConfig",
    "ReplayConfig",
    "ReportConfig",
    "RiskSweep",
    "SLAConfig",
    "ScalingConfig",
    "StaticSweep",
    "TuningConfig",
]

# Table order: HARMONY first, then its ablation, the forecast baselines, the reactive and static baselines,
# and the oracle (the lower bound at zero violations).
POLICY_ORDER: tuple[str, ...] = (
    "harmony",
    "quantile",
    "point",
    "ehpa",
    "arima",
    "ets",
    "hpa",
    "static",
    "oracle",
)
DRAW_POLICIES = frozenset({"harmony", "quantile", "point", "ehpa"})  # read the forecaster's draws
CLASSICAL_POLICIES = frozenset({"arima", "ets"})  # read a classical model's point forecast
# What a user would otherwise pick: the headline compares HARMONY with the cheapest of these. The quantile
# policy is HARMONY's own ablation and the oracle a bound, so neither is a baseline.
BASELINES: tuple[str, ...] = ("point", "ehpa", "arima", "ets", "hpa", "static")

EPS_SWEEP = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]


@dataclass(frozen=True)
class ForecasterConfig:
    """Where the forecaster comes from and how many draws each decision gets.

    origin: `train` trains the model of the training sections with harmony.training (a logged MLflow run
    whose model the backtest then uses; reused when the same configuration was trained before in this
    output folder); `path` loads a saved `forecaster/` folder; `mlflow` downloads a model URI (runs:/...,
    models:/...: a pyfunc model or a forecaster folder); `none` runs only the policies that need no draws.
    model_dir: with origin `train`, the folder the trained model is kept in and reused from (default: the
    output folder's `model/`); variants of one config that train the same model (other lead times, say)
    share it by naming the same folder.
    """

    origin: Literal["train", "path", "mlflow", "none"] = "train"
    path: str | None = None
    uri: str | None = None
    model_dir: str | None = None
    num_samples: int = 100
    batch_windows: int = 512
    seed: int = 0
    reuse: bool = True


@dataclass(frozen=True)
class ReplayConfig:
    """The replay protocol (section `backtest`). The knobs are chosen on the validation part and reported on
    the test part; `max_steps` limits the scored steps of both."""

    series: list[str] | None = None
    max_series: int | None = None
    lead_time: int | None = None
    interval: int = 1
    window_steps: int | None = None
    warmup_steps: int = 0
    max_steps: int | None = None
    initial_replicas: int | None = None
    capacities: dict[str, float] | None = None
    # Where the per-series work runs (harmony.backtest.executor): groups of `series_per_group` series (null:
    # one group; the draws' seeds follow the group), in this process or on Ray actors.
    executor: Literal["local", "ray"] = "local"
    series_per_group: int | None = None
    ray_address: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class SLAConfig:
    max_violation_probability: float = 0.01


@dataclass(frozen=True)
class CostConfig:
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0


@dataclass(frozen=True)
class ScalingConfig:
    """Bounds and defaults shared by every policy. `scale_down_stabilization_s` is each policy's window
    when its own section does not list windows to search."""

    min_replicas: int = 1
    max_replicas: int = 100
    scale_down_stabilization_s: float = 0.0
    max_scale_up_step: int | None = None
    max_scale_down_step: int | None = None
    fallback_target_utilization: float = 0.7
    fallback_margin: float = 0.1
    # HARMONY hands its decisions to the reactive rule while its forecasts prove miscalibrated beyond repair
    # (docs/decision.md); false keeps deciding on the draws, which can violate less after a regime change.
    fallback_on_miscalibration: bool = True


@dataclass(frozen=True)
class RiskSweep:
    """HARMONY (`harmony`) or its ablation without adaptation (`quantile`): the SLA eps (primary), the
    adaptation's forgetting factor, the scale-down window and, when listed, the decision window: how many
    forecast steps from the lead time on a decision covers (the operator's `decisionWindow`; unlisted, all
    of `backtest.window_steps`)."""

    max_violation_probability: list[float] = field(default_factory=lambda: list(EPS_SWEEP))
    forgetting: list[float] = field(default_factory=lambda: [0.995])
    scale_down_window_s: list[float] | None = None
    window_steps: list[int] | None = None


@dataclass(frozen=True)
class PointSweep:
    """Point forecast (the median of the forecaster's draws) with a margin (primary)."""

    margin: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    target_utilization: float = 1.0
    point: Literal["median", "mean"] = "median"
    scale_down_window_s: list[float] | None = None


@dataclass(frozen=True)
class ClassicalSweep:
    """A classical model's point forecast with a margin (primary), fitted online on the past only
    (`harmony.model.classical`): `history` steps fitted, refitted every `refit_every` steps."""

    margin: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    target_utilization: float = 1.0
    season_length: int = 1
    history: int = 1008
    refit_every: int = 144
    scale_down_window_s: list[float] | None = None


@dataclass(frozen=True)
class HPASweep:
    """The Kubernetes HPA (`hpa`) or crane's Effective HPA (`ehpa`) with its whole `behavior`: target
    utilisation (primary), tolerance, the two stabilisation windows and the rate rules of each direction
    (`harmony.policies.RateLimit` text, e.g. '100%/15s,4pods/15s', 'min:1pod/600s', 'disabled')."""

    target_utilization: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])
    tolerance: list[float] = field(default_factory=lambda: [0.1])
    scale_down_window_s: list[float] | None = None
    scale_up_window_s: list[float] = field(default_factory=lambda: [0.0])
    scale_up_rate: list[str] = field(default_factory=lambda: ["100%/15s,4pods/15s"])
    scale_down_rate: list[str] = field(default_factory=lambda: ["100%/15s"])


@dataclass(frozen=True)
class StaticSweep:
    headroom: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])


@dataclass(frozen=True)
class PoliciesConfig:
    """One entry per policy; `null` leaves a policy out."""

    harmony: RiskSweep | None = field(default_factory=RiskSweep)
    quantile: RiskSweep | None = field(default_factory=RiskSweep)
    point: PointSweep | None = field(default_factory=PointSweep)
    ehpa: HPASweep | None = field(default_factory=HPASweep)
    arima: ClassicalSweep | None = field(default_factory=ClassicalSweep)
    ets: ClassicalSweep | None = field(default_factory=ClassicalSweep)
    hpa: HPASweep | None = field(default_factory=HPASweep)
    static: StaticSweep | None = field(default_factory=StaticSweep)
    oracle: bool = True

    def enabled(self) -> list[str]:
        return [p for p in POLICY_ORDER if (self.oracle if p == "oracle" else getattr(self, p) is not None)]

    def windows_longer_than(self, window: int) -> dict[str, list[int]]:
        """The listed decision windows (`policies.harmony/quantile.window_steps`) longer than `window`, the
        forecast steps a decision's draws have, per policy that lists any."""
        out: dict[str, list[int]] = {}
        for name in ("harmony", "quantile"):
            risk: RiskSweep | None = getattr(self, name)
            longer = [w for w in (risk.window_steps or []) if w > window] if risk is not None else []
            if longer:
                out[name] = longer
        return out


@dataclass(frozen=True)
class TuningConfig:
    """How the knobs are searched on the validation part (docs/backtest.md, "Choosing the knobs").

    Secondary settings (the product of a policy's secondary lists) up to `max_grid` are all tried; beyond,
    a coordinate search changes one secondary knob at a time from the first values, keeping the best, for at
    most `passes` rounds. At each secondary setting the whole primary list is replayed; then `refine`
    bisection steps of the primary knob between the cheapest value that meets the target and the next
    looser one.
    """

    max_grid: int = 24
    passes: int = 2
    refine: int = 3


@dataclass(frozen=True)
class ReportConfig:
    experiment: str = "harmony-backtest"
    run_name: str | None = None
    output_dir: str | None = None
    plot_series: str | None = None


@dataclass(frozen=True)
class BacktestSections:
    """The backtest's own sections, typed and checked by harmony.training.config's machinery."""

    forecaster: ForecasterConfig = field(default_factory=ForecasterConfig)
    backtest: ReplayConfig = field(default_factory=ReplayConfig)
    sla: SLAConfig = field(default_factory=SLAConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


TRAINING_SECTIONS = ("data", "model", "trainer", "tracking", "evaluation")
BACKTEST_SECTIONS = tuple(f.name for f in dataclasses.fields(BacktestSections))
TOP_LEVEL = ("base", *TRAINING_SECTIONS, *BACKTEST_SECTIONS)


@dataclass(frozen=True)
class BacktestConfig:
    """A validated backtest configuration: the training sections (a TrainConfig: data, model, trainer, ...)
    and the backtest's own sections."""

    train: TrainConfig
    forecaster: ForecasterConfig
    backtest: ReplayConfig
    sla: SLAConfig
    cost: CostConfig
    scaling: ScalingConfig
    policies: PoliciesConfig
    tuning: TuningConfig
    report: ReportConfig
    base: Path | None = None
    source: Path | None = field(default=None, compare=False)
    overrides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def run_name(self) -> str:
        if self.report.run_name:
            return self.report.run_name
        return (
            self.source.stem if self.source is not None else f"backtest-{Path(self.train.data.dataset).stem}"
        )

    @property
    def output_dir(self) -> Path:
        out = self.report.output_dir
        return Path(out) if out else Path("runs") / "backtest" / self.run_name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base": None if self.base is None else str(self.base)}
        out.update(self.train.to_dict())
        for name in BACKTEST_SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def flat(self) -> dict[str, str]:
        """Dotted keys to strings (MLflow params)."""
        out: dict[str, str] = {}

        def walk(node: Mapping[str, Any], prefix: str) -> None:
            for k, v in node.items():
                key = f"{prefix}{k}"
                if isinstance(v, Mapping) and v:
                    walk(v, key + ".")
                elif isinstance(v, list | tuple):
                    out[key] = ",".join(str(x) for x in v)
                else:
                    out[key] = "null" if v is None else str(v)

        walk(self.to_dict(), "")
        return out


SWEEPS: dict[str, type[Any]] = {
    "harmony": RiskSweep,
    "quantile": RiskSweep,
    "point": PointSweep,
    "ehpa": HPASweep,
    "arima": ClassicalSweep,
    "ets": ClassicalSweep,
    "hpa": HPASweep,
    "static": StaticSweep,
}
