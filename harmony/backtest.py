"""Replay the test part of a trace through every scaling policy and score them against each other.

Protocol (see docs/backtest.md). Steps are the trace's sampling steps; the value at step u is the demand
during step u. For every series:

* A decision at step tau is taken at the start of step tau and knows the history up to tau - 1 only: the
  forecaster gets the `lookback` points tau - lookback .. tau - 1, the HPA the demand observed at tau - 1,
  and the oracle the realised future by construction. Decisions come every `interval` steps.
* A decision is in place from step tau + lead_time (the cold start) until the next decision takes over,
  `interval` steps later: the capacity in place at step u is the count decided at u - lead_time. Every
  policy gets, as `current_replicas`, the count it set last (what the operator and the HPA controller read
  from the /scale subresource).
* The draws for a decision cover the steps it is for: anchored at tau - 1, a forecaster with lead time
  L_m and horizon H forecasts steps tau + L_m .. tau + L_m + H - 1; the decision gets those from
  tau + lead_time on (`window_steps` of them, by default all that remain).
* After each realised step u whose capacity the policy chose, `observe(demand_u, capacity_u)`, so that
  HARMONY's Bayesian adaptation learns online exactly as it would in the operator.
* Scored steps: the test part (optionally its first `max_steps`) where at least one demand indicator is
  known. The first decision is taken `lead_time + warmup_steps` steps before the test part, so that the
  first scored step is already served by a decided count (the warm-up is observed, never scored).
  `part="val"` replays the validation part the same way, to choose knobs away from the test part.

Scores per (policy, knob, series): SLA-violation rate (steps where the realised demand of any demand
indicator exceeds replicas x capacity per replica), unmet demand (replica-hours of excess), replica-hours,
cost = price x replica-hours + penalty x violated steps, over-provisioning (mean spare replicas), scaling
actions (changes of the count in place) and fallback decisions. Each policy's knob is swept; its
cost-vs-violation curve is interpolated on its Pareto front to compare costs at a matched violation rate.

Model inference is batched across series and decision steps: the draws of every decision (each from its own
history only) are computed in batched `Forecaster.sample` calls before the policies replay, and reused by
every forecast-driven policy and knob, so a sweep costs one inference pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from numpy.typing import NDArray

from harmony.data.errors import DataError
from harmony.data.spec import DatasetCard, Kind
from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split, usable_lookback
from harmony.decision import Decider, DecisionConfig, ceil_replicas
from harmony.model.base import Forecaster
from harmony.policies import (
    HPAPolicy,
    OraclePolicy,
    PointForecastPolicy,
    Policy,
    QuantilePolicy,
    StaticPolicy,
)
from harmony.training.config import (
    RUN_NAME_PATTERN,
    ConfigContext,
    ConfigError,
    TrainConfig,
    apply_overrides,
    build_section,
    config_from_dict,
    load_config,
    read_yaml,
    resolve_card_path,
)

__all__ = [
    "POLICY_ORDER",
    "BacktestConfig",
    "BacktestError",
    "BacktestResult",
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
    "SeriesData",
    "Settings",
    "StaticSweep",
    "cost_at_rate",
    "cost_bound",
    "forecast_draws",
    "knob_key",
    "load_backtest_config",
    "prepare_series",
    "replay",
    "run_backtest",
    "run_config",
    "score",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Table order: HARMONY first, then its ablation, the other forecast baseline, the reactive and static
# baselines, and the lower bound.
# Violation rates are ratios of step counts: a rate "at" the target may differ from it by float rounding.
RATE_TOLERANCE = 1e-12
POLICY_ORDER: tuple[str, ...] = ("harmony", "quantile", "point", "hpa", "static", "oracle")
FORECAST_POLICIES = frozenset({"harmony", "quantile", "point"})
# Which part of the split a backtest replays and scores (the names of `harmony evaluate --part`), in words.
PARTS: dict[str, str] = {"test": "test", "val": "validation"}
KNOB_NAMES: dict[str, str] = {
    "harmony": "eps",
    "quantile": "eps",
    "point": "margin",
    "hpa": "target_utilization",
    "static": "headroom",
    "oracle": "-",
}
# Draws kept in memory at once (bytes): series are replayed in groups whose draws fit.
MAX_DRAW_BYTES = 256 * 2**20


class BacktestError(DataError):
    """A backtest cannot run as configured; the message says why and what to change."""


# --- configuration ------------------------------------------------------------------------------------------

EPS_SWEEP = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]


@dataclass(frozen=True)
class ForecasterConfig:
    """Where the forecaster comes from and how many draws each decision gets.

    origin: `train` trains the model of the training sections with harmony.train (a logged MLflow run
    whose model the backtest then uses; reused when the same configuration was trained before in this
    output folder); `path` loads a saved `forecaster/` folder; `mlflow` downloads a model URI (runs:/...,
    models:/...: a pyfunc model or a forecaster folder); `none` runs only the policies that need no forecast.
    """

    origin: Literal["train", "path", "mlflow", "none"] = "train"
    path: str | None = None
    uri: str | None = None
    num_samples: int = 100
    batch_windows: int = 512
    seed: int = 0
    reuse: bool = True


@dataclass(frozen=True)
class ReplayConfig:
    """The replay protocol (section `backtest`)."""

    series: list[str] | None = None
    max_series: int | None = None
    lead_time: int | None = None
    interval: int = 1
    window_steps: int | None = None
    warmup_steps: int = 0
    max_steps: int | None = None
    initial_replicas: int | None = None
    capacities: dict[str, float] | None = None
    part: str = "test"  # test | val: tune knobs on the validation part, report on the test part


@dataclass(frozen=True)
class SLAConfig:
    max_violation_probability: float = 0.01


@dataclass(frozen=True)
class CostConfig:
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0


@dataclass(frozen=True)
class ScalingConfig:
    min_replicas: int = 1
    max_replicas: int = 100
    scale_down_stabilization_s: float = 300.0
    max_scale_up_step: int | None = None
    max_scale_down_step: int | None = None
    fallback_target_utilization: float = 0.7
    fallback_margin: float = 0.1


@dataclass(frozen=True)
class RiskSweep:
    """HARMONY (`harmony`) or its ablation without adaptation (`quantile`): the SLA eps swept."""

    max_violation_probability: list[float] = field(default_factory=lambda: list(EPS_SWEEP))
    forgetting: float = 0.995


@dataclass(frozen=True)
class HPASweep:
    target_utilization: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9])
    tolerance: float = 0.1


@dataclass(frozen=True)
class PointSweep:
    margin: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    target_utilization: float = 1.0
    point: Literal["median", "mean"] = "median"


@dataclass(frozen=True)
class StaticSweep:
    headroom: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])


@dataclass(frozen=True)
class PoliciesConfig:
    """One entry per policy; `null` leaves a policy out."""

    harmony: RiskSweep | None = field(default_factory=RiskSweep)
    quantile: RiskSweep | None = field(default_factory=RiskSweep)
    point: PointSweep | None = field(default_factory=PointSweep)
    hpa: HPASweep | None = field(default_factory=HPASweep)
    static: StaticSweep | None = field(default_factory=StaticSweep)
    oracle: bool = True

    def enabled(self) -> list[str]:
        return [p for p in POLICY_ORDER if (self.oracle if p == "oracle" else getattr(self, p) is not None)]


@dataclass(frozen=True)
class ReportConfig:
    experiment: str = "harmony-backtest"
    run_name: str | None = None
    output_dir: str | None = None
    plot_series: str | None = None


@dataclass(frozen=True)
class _BacktestSections:
    """The backtest's own sections, typed and checked by harmony.config's machinery."""

    forecaster: ForecasterConfig = field(default_factory=ForecasterConfig)
    backtest: ReplayConfig = field(default_factory=ReplayConfig)
    sla: SLAConfig = field(default_factory=SLAConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


TRAINING_SECTIONS = ("data", "model", "trainer", "tracking", "evaluation")
BACKTEST_SECTIONS = tuple(f.name for f in dataclasses.fields(_BacktestSections))
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


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section and key by key (a value replaces, a mapping merges)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve(name: str, source: Path | None) -> Path:
    p = Path(name)
    if p.is_absolute() or source is None:
        return p
    beside = source.parent / p
    return beside if beside.exists() or not p.exists() else p


def load_backtest_config(path: str | Path, overrides: Sequence[str] = ()) -> BacktestConfig:
    """Read a backtest YAML and apply `--set a.b=value` overrides (any section, training ones included).

    The file may name a training configuration under `base:` (relative to the working directory or to the
    file) whose sections (data, model, trainer, tracking, evaluation) it overrides key by key. Errors name
    the file and the dotted key (the base file's own errors name the base file).
    """
    p = Path(path)
    raw = read_yaml(p)
    for k in raw:
        if k not in TOP_LEVEL:
            close = difflib.get_close_matches(str(k), TOP_LEVEL, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{k}: unknown section; known sections: {', '.join(TOP_LEVEL)}{hint}", path=p)
    base_path: Path | None = None
    merged: dict[str, Any] = {}
    if raw.get("base") is not None:
        if not isinstance(raw["base"], str):
            raise ConfigError(f"base: expected the path of a training config, got {raw['base']!r}", path=p)
        base_path = _resolve(raw["base"], p)
        load_config(base_path)  # the base must be valid on its own; its errors name it
        base_raw = read_yaml(base_path)
        # A card path in the base is relative to the base's folder: pin it before this file's folder counts.
        dataset = base_raw.get("data", {}).get("dataset") if isinstance(base_raw.get("data"), dict) else None
        if isinstance(dataset, str) and dataset.endswith((".yaml", ".yml")):
            base_raw["data"]["dataset"] = str(resolve_card_path(dataset, base_path).resolve())
        merged = {k: v for k, v in base_raw.items() if k in TRAINING_SECTIONS}
    merged = _merge(merged, {k: v for k, v in raw.items() if k != "base"})

    train_sets = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in TRAINING_SECTIONS]
    own_sets = [o for o in overrides if o not in train_sets]
    train = config_from_dict(
        {k: v for k, v in merged.items() if k in TRAINING_SECTIONS}, source=p, overrides=train_sets
    )
    own = {k: v for k, v in merged.items() if k in BACKTEST_SECTIONS}
    applied = apply_overrides(own, own_sets, p)
    bad = [k for k in own if k not in BACKTEST_SECTIONS]
    if bad:
        raise ConfigError(f"--set {bad[0]}: unknown section; known sections: {', '.join(TOP_LEVEL)}", path=p)
    ctx = ConfigContext(p, applied)
    policies = _build_policies(own.pop("policies", None), ctx)
    sections: _BacktestSections = build_section(_BacktestSections, own, "", ctx)
    sections = dataclasses.replace(sections, policies=policies)
    cfg = BacktestConfig(
        train=train,
        base=base_path,
        source=p,
        overrides=tuple(overrides),
        **{f.name: getattr(sections, f.name) for f in dataclasses.fields(sections)},
    )
    _check(cfg, ctx)
    return cfg


_SWEEPS: dict[str, type[Any]] = {
    "harmony": RiskSweep,
    "quantile": RiskSweep,
    "point": PointSweep,
    "hpa": HPASweep,
    "static": StaticSweep,
}


def _build_policies(raw: Any, ctx: ConfigContext) -> PoliciesConfig:
    """`policies:` entry by entry (null or false leaves a policy out), so that errors name the inner key."""
    if raw is None:
        return PoliciesConfig()
    if not isinstance(raw, Mapping):
        raise ctx.error("policies", f"expected a mapping of policy: sweep, got {raw!r}")
    values: dict[str, Any] = {}
    for name, entry in raw.items():
        key = f"policies.{name}"
        if name not in POLICY_ORDER:
            close = difflib.get_close_matches(str(name), POLICY_ORDER, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(key, f"unknown policy; known: {', '.join(POLICY_ORDER)}{hint}")
        if name == "oracle":
            if not isinstance(entry, bool | None):
                raise ctx.error(key, f"expected true or false, got {entry!r}")
            values[name] = bool(entry)
        elif entry is None or entry is False:
            values[name] = None
        elif entry is True:
            values[name] = _SWEEPS[name]()
        elif isinstance(entry, Mapping):
            values[name] = build_section(_SWEEPS[name], entry, key, ctx)
        else:
            raise ctx.error(
                key, f"expected a mapping of knob settings, or null to leave it out, got {entry!r}"
            )
    return PoliciesConfig(**values)


def _card_of(train: TrainConfig) -> DatasetCard:
    from harmony.data.catalog import get_card
    from harmony.data.spec import load_card

    name = train.data.dataset
    if name.endswith((".yaml", ".yml")):
        return load_card(resolve_card_path(name, train.source))
    return get_card(name)


def _check(cfg: BacktestConfig, ctx: ConfigContext) -> None:
    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ctx.error(key, message)

    f, r, s, c, sc, pol, rep = (
        cfg.forecaster,
        cfg.backtest,
        cfg.sla,
        cfg.cost,
        cfg.scaling,
        cfg.policies,
        cfg.report,
    )
    card = _card_of(cfg.train)  # the training sections checked that it exists
    indicators = [i.name for i in card.indicators]
    m = cfg.train.model

    need(f.origin != "path" or bool(f.path), "forecaster.path", "origin 'path' needs the forecaster folder")
    need(f.origin != "mlflow" or bool(f.uri), "forecaster.uri", "origin 'mlflow' needs a model URI")
    need(f.num_samples >= 2, "forecaster.num_samples", f"expected an integer >= 2, got {f.num_samples}")
    need(f.batch_windows >= 1, "forecaster.batch_windows", f"expected an integer >= 1, got {f.batch_windows}")
    need(f.seed >= 0, "forecaster.seed", f"expected an integer >= 0, got {f.seed}")
    if f.origin == "none":
        forecast = [p for p in pol.enabled() if p in FORECAST_POLICIES]
        need(
            not forecast,
            f"policies.{forecast[0]}" if forecast else "policies",
            "needs a forecaster (forecaster.origin is 'none'); set it to null or give a forecaster",
        )

    need(r.series is None or bool(r.series), "backtest.series", "expected a non-empty list, or null for all")
    need(r.max_series is None or r.max_series >= 1, "backtest.max_series", "expected an integer >= 1 or null")
    need(r.lead_time is None or r.lead_time >= 0, "backtest.lead_time", "expected an integer >= 0 or null")
    need(r.interval >= 1, "backtest.interval", f"expected an integer >= 1, got {r.interval}")
    need(r.window_steps is None or r.window_steps >= 1, "backtest.window_steps", "expected an integer >= 1")
    need(r.warmup_steps >= 0, "backtest.warmup_steps", f"expected an integer >= 0, got {r.warmup_steps}")
    need(r.max_steps is None or r.max_steps >= 1, "backtest.max_steps", "expected an integer >= 1 or null")
    need(r.part in PARTS, "backtest.part", f"expected one of {', '.join(PARTS)}, got {r.part!r}")
    need(
        r.initial_replicas is None or r.initial_replicas >= 0,
        "backtest.initial_replicas",
        "expected an integer >= 0 or null",
    )
    if r.capacities is not None:
        need(bool(r.capacities), "backtest.capacities", "expected indicator: capacity pairs, or null")
        for name, cap in r.capacities.items():
            key = f"backtest.capacities.{name}"
            need(name in indicators, key, f"unknown indicator; {card.name} has {', '.join(indicators)}")
            ok = isinstance(cap, int | float) and not isinstance(cap, bool) and math.isfinite(cap) and cap > 0
            need(ok, key, f"expected a capacity per replica > 0, got {cap!r}")
    capacities = _capacities(card, r.capacities)
    if f.origin == "train":
        lead = m.lead_time if r.lead_time is None else r.lead_time
        need(
            lead >= m.lead_time,
            "backtest.lead_time",
            f"{lead} is shorter than the model's lead time ({m.lead_time}): its draws start later",
        )
        window = r.window_steps if r.window_steps is not None else m.horizon - (lead - m.lead_time)
        need(
            window >= 1 and lead - m.lead_time + window <= m.horizon,
            "backtest.window_steps" if r.window_steps is not None else "backtest.lead_time",
            f"steps {lead}+1..{lead}+{window} after the last observation are beyond the model's forecast "
            f"(model.lead_time {m.lead_time}, model.horizon {m.horizon})",
        )
        targets = m.targets or [i.name for i in card.indicators if i.kind is not Kind.CONTEXT]
        missing = [n for n in capacities if n not in targets]
        need(
            not missing,
            "model.targets",
            f"the demand indicators {missing} must be forecast (targets) to decide on them",
        )

    eps = s.max_violation_probability
    need(0.0 < eps <= 0.5, "sla.max_violation_probability", f"expected a rate in (0, 0.5], got {eps}")
    need(c.replica_hour_price >= 0, "cost.replica_hour_price", f"expected >= 0, got {c.replica_hour_price}")
    need(c.violation_penalty >= 0, "cost.violation_penalty", f"expected >= 0, got {c.violation_penalty}")
    need(sc.min_replicas >= 0, "scaling.min_replicas", f"expected an integer >= 0, got {sc.min_replicas}")
    need(
        sc.max_replicas >= max(1, sc.min_replicas),
        "scaling.max_replicas",
        f"expected an integer >= max(1, min_replicas), got {sc.max_replicas}",
    )
    need(sc.scale_down_stabilization_s >= 0, "scaling.scale_down_stabilization_s", "expected seconds >= 0")
    for key in ("max_scale_up_step", "max_scale_down_step"):
        step = getattr(sc, key)
        need(step is None or step >= 1, f"scaling.{key}", f"expected an integer >= 1 or null, got {step}")
    need(
        0.0 < sc.fallback_target_utilization <= 1.0,
        "scaling.fallback_target_utilization",
        f"expected a fraction in (0, 1], got {sc.fallback_target_utilization}",
    )
    need(sc.fallback_margin >= 0, "scaling.fallback_margin", f"expected >= 0, got {sc.fallback_margin}")

    need(bool(pol.enabled()), "policies", "every policy is switched off; enable at least one")

    def sweep(key: str, values: list[float], ok: Callable[[float], bool], expected: str) -> None:
        need(bool(values), key, "expected a non-empty list of knob values")
        for i, v in enumerate(values):
            need(ok(v), f"{key}[{i}]", f"expected {expected}, got {v}")
        dup = sorted({v for v in values if values.count(v) > 1})
        need(not dup, key, f"duplicate values {dup}")

    for name in ("harmony", "quantile"):
        risk: RiskSweep | None = getattr(pol, name)
        if risk is not None:
            sweep(f"policies.{name}.max_violation_probability", risk.max_violation_probability,
                  lambda v: 0.0 < v <= 0.5, "a rate in (0, 0.5]")  # fmt: skip
            need(0.0 < risk.forgetting <= 1.0, f"policies.{name}.forgetting", "expected a factor in (0, 1]")
    if pol.hpa is not None:
        sweep("policies.hpa.target_utilization", pol.hpa.target_utilization, lambda v: 0.0 < v <= 1.0,
              "a utilisation in (0, 1]")  # fmt: skip
        need(pol.hpa.tolerance >= 0, "policies.hpa.tolerance", f"expected >= 0, got {pol.hpa.tolerance}")
    if pol.point is not None:
        sweep("policies.point.margin", pol.point.margin, lambda v: v >= 0.0, "a margin >= 0")
        need(
            0.0 < pol.point.target_utilization <= 1.0,
            "policies.point.target_utilization",
            f"expected a utilisation in (0, 1], got {pol.point.target_utilization}",
        )
    if pol.static is not None:
        sweep("policies.static.headroom", pol.static.headroom, lambda v: v >= 0.0, "a headroom >= 0")

    need(bool(rep.experiment), "report.experiment", "expected a non-empty MLflow experiment name")
    need(
        rep.run_name is None or bool(RUN_NAME_PATTERN.match(rep.run_name)),
        "report.run_name",
        f"expected letters, digits, '_', '.', '-' (it names a folder), got {rep.run_name!r}",
    )


def _capacities(card: DatasetCard | Trace, override: Mapping[str, float] | None) -> dict[str, float]:
    """Capacity per replica of each demand indicator: the override, else the card's demand indicators."""
    if override:
        return {k: float(v) for k, v in override.items()}
    return {
        i.name: float(i.capacity_per_replica)
        for i in card.indicators
        if i.kind is Kind.DEMAND and i.capacity_per_replica is not None
    }


# --- engine settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the replay needs, in the trace's steps. Built from a BacktestConfig by `run_config`, or
    directly (tests, notebooks)."""

    capacities: dict[str, float]
    lead_time: int
    interval: int = 1
    window_steps: int | None = None
    warmup_steps: int = 0
    max_steps: int | None = None
    initial_replicas: int | None = None
    target_violation_rate: float = 0.01
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    num_samples: int = 100
    batch_windows: int = 512
    seed: int = 0
    part: str = "test"

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, got {self.part!r}")
        if not self.capacities or any(not (math.isfinite(v) and v > 0) for v in self.capacities.values()):
            raise ValueError(f"capacities must name demand indicators with capacities > 0: {self.capacities}")
        if self.lead_time < 0 or self.interval < 1 or self.warmup_steps < 0:
            raise ValueError("need lead_time >= 0, interval >= 1, warmup_steps >= 0")
        if not 0.0 < self.target_violation_rate < 1.0:
            raise ValueError(f"target_violation_rate must be in (0, 1), got {self.target_violation_rate}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.capacities)

    def runs(self) -> list[tuple[str, float]]:
        """(policy, knob value) of the sweep, in table order; the oracle's knob is NaN."""
        p = self.policies
        out: list[tuple[str, float]] = []
        for name in p.enabled():
            if name in ("harmony", "quantile"):
                risk: RiskSweep = getattr(p, name)
                out += [(name, float(v)) for v in sorted(risk.max_violation_probability, reverse=True)]
            elif name == "point" and p.point is not None:
                out += [(name, float(v)) for v in sorted(p.point.margin)]
            elif name == "hpa" and p.hpa is not None:
                out += [(name, float(v)) for v in sorted(p.hpa.target_utilization)]
            elif name == "static" and p.static is not None:
                out += [(name, float(v)) for v in sorted(p.static.headroom)]
            elif name == "oracle":
                out.append((name, math.nan))
        return out


# --- one series ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesData:
    """What a replay of one series needs. Step indices are positions in the series' frame.

    Decisions are taken at `decisions` (each sees steps < tau); the capacity is simulated over
    [first_decision, end) and scored over [start, end).
    """

    series: str
    index: pd.DatetimeIndex  # timestamps of the whole series
    demand: FloatArray  # [n, D] demand indicators in `names` order
    step_s: float
    first_decision: int
    start: int
    end: int
    decisions: IntArray
    initial: int
    train_peak: dict[str, float]

    @property
    def scored(self) -> slice:
        return slice(self.start, self.end)


def prepare_series(
    trace: Trace, split: Split, series: str, settings: Settings, *, lookback: int
) -> SeriesData | str:
    """The replay plan of one series, or why it cannot be replayed (a sentence)."""
    frame = trace[series]
    names = list(settings.names)
    demand = frame[names].to_numpy(np.float64)
    n = demand.shape[0]
    a, b, _ = split.boundaries[series]
    part = PARTS[settings.part]
    # The validation part ends where the test part starts; its history is the training part only.
    start, stop = (a, b) if settings.part == "val" else (b, n)
    end = stop if settings.max_steps is None else min(stop, start + settings.max_steps)
    if end <= start:
        return f"no {part} part"
    known = np.isfinite(demand[start:end]).any(axis=1)
    if not known.any():
        return f"no known demand in the {part} part"
    history = demand[:start]
    peak: dict[str, float] = {}
    if settings.policies.static is not None:
        if not np.isfinite(history).any(axis=0).all():
            return f"no known demand before the {part} part (the static policy needs a training peak)"
        peak = {name: float(np.nanmax(history[:, i])) for i, name in enumerate(names)}
    # The first decision takes effect warmup_steps before the scored part; it needs a full lookback before it.
    first = max(lookback, 1, start - settings.lead_time - settings.warmup_steps)
    if first + settings.lead_time >= end:
        return f"the {part} part is shorter than the lookback ({lookback}) plus the lead time"
    taus = np.arange(first, end - settings.lead_time, settings.interval, dtype=np.int64)
    sc = settings.scaling
    if settings.initial_replicas is not None:
        initial = settings.initial_replicas
    else:
        # The count that serves the last observed demand exactly: a neutral start for every policy.
        last = demand[first - 1] / np.array([settings.capacities[x] for x in names])
        initial = ceil_replicas(float(np.nanmax(last))) if np.isfinite(last).any() else sc.min_replicas
    initial = min(max(initial, sc.min_replicas), sc.max_replicas)
    return SeriesData(
        series=series,
        index=pd.DatetimeIndex(frame.index),
        demand=demand,
        step_s=trace.frequency.total_seconds(),
        first_decision=int(first),
        start=int(start),
        end=int(end),
        decisions=taus,
        initial=int(initial),
        train_peak=peak,
    )


# --- draws --------------------------------------------------------------------------------------------------

Draws = list[NDArray[np.float32] | None]  # one per decision: [S, window, D] or None (gap in the lookback)


def check_forecaster(forecaster: Forecaster, trace: Trace, settings: Settings) -> tuple[int, int]:
    """(first horizon step used, number of steps used) of the forecaster's draws; raises on a mismatch."""
    spec = forecaster.spec
    if abs(spec.frequency_s - trace.frequency.total_seconds()) > 1e-9:
        raise BacktestError(
            f"the forecaster works at {spec.frequency_s:g} s steps but the trace at "
            f"{trace.frequency.total_seconds():g} s; resample the trace (data.frequency) or use another model"
        )
    missing = [i for i in spec.indicators if i not in trace.indicator_names]
    if missing:
        raise BacktestError(f"the forecaster reads indicators {missing} that {trace.name} does not have")
    not_forecast = [n for n in settings.names if n not in spec.targets]
    if not_forecast:
        raise BacktestError(
            f"the forecaster does not forecast the demand indicators {not_forecast} (targets: "
            f"{list(spec.targets)}); decisions would ignore their load"
        )
    j0 = settings.lead_time - spec.lead_time
    if j0 < 0:
        raise BacktestError(
            f"backtest.lead_time {settings.lead_time} is shorter than the forecaster's lead time "
            f"{spec.lead_time}: its draws start too late to decide for it"
        )
    window = settings.window_steps if settings.window_steps is not None else spec.horizon - j0
    if window < 1 or j0 + window > spec.horizon:
        raise BacktestError(
            f"the decision window (steps +{settings.lead_time + 1}..+{settings.lead_time + window}) is "
            f"beyond the forecaster's horizon (steps +{spec.lead_time + 1}.."
            f"+{spec.lead_time + spec.horizon}); "
            "shorten backtest.window_steps or backtest.lead_time"
        )
    return j0, window


def forecast_draws(
    forecaster: Forecaster,
    trace: Trace,
    datas: Sequence[SeriesData],
    settings: Settings,
    *,
    seed_offset: int = 0,
) -> dict[str, Draws]:
    """Draws for every decision of every series, in batched `sample` calls across series and steps.

    Each decision's draws come from its own lookback (steps tau - lookback .. tau - 1) only. Gaps in it are
    filled as the operator fills them (`usable_lookback`); a lookback the operator could not use gets None
    (the forecast policies then use their fallback, as the operator does).
    Batch k is drawn with seed `settings.seed + seed_offset + k * batch_windows`; `seed_offset` keeps the
    seeds of successive groups of series apart.
    """
    spec = forecaster.spec
    j0, window = check_forecaster(forecaster, trace, settings)
    cols = [spec.targets.index(n) for n in settings.names]
    lb = spec.lookback
    out: dict[str, Draws] = {}
    jobs: list[tuple[str, int, NDArray[np.float32], int]] = []  # series, decision number, history, time
    for data in datas:
        values = trace[data.series][list(spec.indicators)].to_numpy(np.float32)
        times = data.index.as_unit("ns").asi8
        draws: Draws = [None] * len(data.decisions)
        out[data.series] = draws
        bad = np.concatenate(([0], np.cumsum(~np.isfinite(values).all(axis=1))))
        for k, tau in enumerate(data.decisions):
            t = int(tau)
            if t - lb < 0:
                continue
            history = values[t - lb : t] if bad[t] == bad[t - lb] else usable_lookback(values[t - lb : t])
            if history is not None:
                jobs.append((data.series, k, history, int(times[t - 1])))
    for i in range(0, len(jobs), settings.batch_windows):
        chunk = jobs[i : i + settings.batch_windows]
        history = np.stack([h for _, _, h, _ in chunk])
        last = np.asarray([t for _, _, _, t in chunk], dtype=np.int64)
        # One seed per batch: the draws are reproducible for a given configuration.
        sample = forecaster.sample(history, settings.num_samples, last, seed=settings.seed + seed_offset + i)
        picked = np.asarray(sample[:, :, j0 : j0 + window][..., cols], dtype=np.float32)
        for (sid, k, _, _), d in zip(chunk, picked, strict=True):
            out[sid][k] = d
    return out


# --- replay and score ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """Capacity in place over steps [first, first + len(capacity)), the decisions and how many fell back."""

    first: int
    capacity: IntArray
    decisions: int
    fallbacks: int

    def at(self, steps: slice) -> IntArray:
        lo = steps.start - self.first
        return self.capacity[lo : steps.stop - self.first]


def _demand_map(names: Sequence[str], row: FloatArray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, row, strict=True)}


def replay(policy: Policy, data: SeriesData, draws: Draws | None, settings: Settings) -> Replay:
    """Replay one series through one policy (see the module doc for the protocol)."""
    lead, interval = settings.lead_time, settings.interval
    names = settings.names
    begin = min(data.first_decision, data.start)
    capacity = np.full(data.end - begin, data.initial, dtype=np.int64)
    policy.reset()
    current = data.initial
    observed = data.first_decision + lead  # the first step whose capacity the policy chose
    fallbacks = 0
    for k, tau in enumerate(data.decisions):
        t = int(tau)
        while observed < t:  # outcomes realised since the last decision, in order
            policy.observe(_demand_map(names, data.demand[observed]), int(capacity[observed - begin]))
            observed += 1
        samples = None if draws is None else draws[k]
        decision = policy.decide(
            samples, names, current, t * data.step_s, current_demand=_demand_map(names, data.demand[t - 1])
        )
        current = decision.replicas
        fallbacks += int(decision.fallback)
        lo = t + lead - begin
        capacity[lo : lo + interval] = current
    return Replay(begin, capacity, len(data.decisions), fallbacks)


def score(data: SeriesData, capacity: IntArray, settings: Settings) -> dict[str, float]:
    """Scores of the capacity in place over the scored steps [start, end) (where any demand is known)."""
    caps = np.array([settings.capacities[n] for n in settings.names])
    demand = data.demand[data.scored]
    n = capacity.astype(np.float64)
    known = np.isfinite(demand).any(axis=1)
    # The same comparison as harmony.decision.is_violation: demand > capacity x replicas, per indicator.
    with np.errstate(invalid="ignore"):
        over = np.where(np.isfinite(demand), (demand - caps * n[:, None]) / caps, -np.inf)
    excess = np.maximum(over.max(axis=1), 0.0)
    violated = known & (excess > 0)
    need = np.where(np.isfinite(demand), demand / caps, -np.inf).max(axis=1)
    spare = np.maximum(n - need, 0.0)
    hours = data.step_s / 3600.0
    steps = int(known.sum())
    replica_hours = float(n[known].sum() * hours)
    violations = int(violated.sum())
    return {
        "steps": float(steps),
        "violations": float(violations),
        "violation_rate": violations / steps if steps else math.nan,
        "unmet_replica_hours": float(excess[known].sum() * hours),
        "replica_hours": replica_hours,
        "cost": settings.replica_hour_price * replica_hours + settings.violation_penalty * violations,
        "overprovision": float(spare[known].mean()) if steps else math.nan,
        "actions": float(np.count_nonzero(np.diff(capacity))),
        "mean_replicas": float(n[known].mean()) if steps else math.nan,
    }


def build_policy(name: str, knob: float, data: SeriesData, settings: Settings) -> Policy:
    """The policy `name` with its knob set to `knob`, for one series."""
    sc, pol = settings.scaling, settings.policies
    interval_s = data.step_s * settings.interval
    if name in ("harmony", "quantile", "point"):
        risk = pol.harmony if name == "harmony" else pol.quantile
        config = DecisionConfig(
            capacities=dict(settings.capacities),
            max_replicas=sc.max_replicas,
            min_replicas=sc.min_replicas,
            max_violation_probability=knob if name != "point" else settings.target_violation_rate,
            replica_hour_price=settings.replica_hour_price,
            violation_penalty=settings.violation_penalty,
            interval_s=interval_s,
            scale_down_stabilization_s=sc.scale_down_stabilization_s,
            max_scale_up_step=sc.max_scale_up_step,
            max_scale_down_step=sc.max_scale_down_step,
            fallback_target_utilization=sc.fallback_target_utilization,
            fallback_margin=sc.fallback_margin,
            forgetting=risk.forgetting if risk is not None else 0.995,
            lead_steps=settings.lead_time,
        )
        if name == "harmony":
            return Decider(config)
        if name == "quantile":
            return QuantilePolicy(config)
        point = pol.point if pol.point is not None else PointSweep()
        return PointForecastPolicy(
            config, target_utilization=point.target_utilization, margin=knob, point=point.point
        )
    if name == "hpa":
        hpa = pol.hpa if pol.hpa is not None else HPASweep()
        return HPAPolicy(
            settings.capacities,
            target_utilization=knob,
            min_replicas=sc.min_replicas,
            max_replicas=sc.max_replicas,
            tolerance=hpa.tolerance,
            scale_down_stabilization_s=sc.scale_down_stabilization_s,
            interval_s=interval_s,
        )
    if name == "static":
        return StaticPolicy(
            settings.capacities,
            data.train_peak,
            headroom=knob,
            min_replicas=sc.min_replicas,
            max_replicas=sc.max_replicas,
        )
    if name == "oracle":
        # Step u stands at its midpoint, so the window [now + lead, now + lead + interval) in seconds holds
        # exactly the steps tau + lead .. tau + lead + interval - 1, free of float rounding at the edges.
        times = (np.arange(data.demand.shape[0]) + 0.5) * data.step_s
        return OraclePolicy(
            settings.capacities,
            {n: data.demand[:, i] for i, n in enumerate(settings.names)},
            times,
            lead_time_s=settings.lead_time * data.step_s,
            window_s=interval_s,
            min_replicas=sc.min_replicas,
            max_replicas=sc.max_replicas,
        )
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_ORDER)}")


# --- results ------------------------------------------------------------------------------------------------


def knob_key(knob: float) -> str:
    """A knob as text ('-' for none): NaN cannot key a dict."""
    return "-" if math.isnan(knob) else f"{knob:g}"


def cost_at_rate(rates: Sequence[float], values: Sequence[float], target: float) -> tuple[float, list[int]]:
    """A policy's value (cost) at the violation rate `target`, on the Pareto front of its sweep.

    The front keeps the points no other point beats on both rate and cost. Between two front points the
    value is interpolated linearly in the rate (alternating the two knobs over time achieves it). Below the
    lowest rate reached: NaN (the policy cannot get there). Above the highest: the cheapest point's value.
    Returns (value, indices of the points used).
    """
    pts = sorted(
        (r, v, i) for i, (r, v) in enumerate(zip(rates, values, strict=True)) if math.isfinite(r + v)
    )
    front: list[tuple[float, float, int]] = []
    for r, v, i in pts:
        if not front or v < front[-1][1]:
            if front and front[-1][0] == r:
                front[-1] = (r, v, i)
            else:
                front.append((r, v, i))
    below = [p for p in front if p[0] <= target + RATE_TOLERANCE]
    if not below:
        return math.nan, []
    lo = below[-1]
    above = [p for p in front if p[0] > target + RATE_TOLERANCE]
    if not above or abs(lo[0] - target) <= RATE_TOLERANCE:
        return lo[1], [lo[2]]
    hi = above[0]
    w = (target - lo[0]) / (hi[0] - lo[0])
    return lo[1] + w * (hi[1] - lo[1]), [lo[2], hi[2]]


def cost_bound(demand: Mapping[str, FloatArray], settings: Settings, rate: float, step_s: float) -> float:
    """The least cost any policy can reach with at most `rate` of the scored steps violated.

    Each scored step (any demand known) needs `n = max_i ceil(d_i / c_i)` replicas, clipped to
    [min_replicas, max_replicas]; a step whose need is above max_replicas is violated by every policy. A
    policy that violates a step pays at least min_replicas there plus the penalty, so the cheapest way to
    spend the budget of `floor(rate x steps)` violations is on the steps that save the most, as long as the
    saving beats the penalty. Lead time, decision interval and stabilisation only add to the cost, so no
    policy at that violation rate is cheaper: the cost-at-rate tables can be read against it. With rate 0 it
    is the oracle's cost when max_replicas never binds. `demand[series]` is [steps, D] over the scored steps
    in `settings.names` order, NaN where unknown; `step_s` the length of a step in seconds.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    sc = settings.scaling
    caps = np.array([settings.capacities[n] for n in settings.names], dtype=np.float64)
    needs: list[FloatArray] = []
    for d in demand.values():
        known = np.isfinite(d).any(axis=1)
        ratio = np.where(np.isfinite(d), d / caps, -np.inf).max(axis=1)[known]
        needs.append(np.array([ceil_replicas(float(x)) for x in ratio], dtype=np.float64))
    need = np.concatenate(needs) if needs else np.zeros(0)
    if need.size == 0:
        return math.nan
    forced = need > sc.max_replicas
    need = np.clip(need, sc.min_replicas, sc.max_replicas)
    hour = step_s / 3600.0
    price, penalty = settings.replica_hour_price, settings.violation_penalty
    budget = math.floor(rate * need.size + 1e-9) - int(forced.sum())
    # Forced violations: the max_replicas count is in place and the step is violated anyway; the cheapest
    # count there is min_replicas (the step is lost at any count).
    cost = price * hour * (need[~forced].sum() + sc.min_replicas * forced.sum()) + penalty * forced.sum()
    if budget > 0:
        savings = np.sort(price * hour * (need[~forced] - sc.min_replicas) - penalty)[::-1][:budget]
        cost -= float(savings[savings > 0].sum())
    return float(cost)


@dataclass
class BacktestResult:
    """Per-run table, summaries and what the report draws.

    per_run: one row per (policy, knob, series); summary: one row per (policy, knob), over all series;
    matched: one row per policy at the target violation rate; per_service: one row per policy, its cheapest
    knob that keeps every series within the target rate. `capacity[(policy, knob, series)]` is the
    count in place over the scored steps of the series, `demand[series]` the demand there [steps, D].
    """

    per_run: pd.DataFrame
    summary: pd.DataFrame
    matched: pd.DataFrame
    per_service: pd.DataFrame
    settings: Settings
    dataset: str
    capacity: dict[tuple[str, str, str], IntArray]  # (policy, knob_key(knob), series)
    demand: dict[str, FloatArray]
    times: dict[str, pd.DatetimeIndex]
    skipped: dict[str, str]
    seconds: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)
    bound: float = math.nan  # cost_bound at the target violation rate: no policy there costs less

    @property
    def series(self) -> list[str]:
        return list(self.demand)

    def capacity_of(self, policy: str, knob: float, series: str) -> IntArray:
        return self.capacity[(policy, knob_key(knob), series)]

    def chosen_knob(self, policy: str) -> float:
        """The knob of `policy` the report shows: the cheapest one within the target rate, else the safest."""
        rows = self.summary[self.summary["policy"] == policy]
        rates = rows["violation_rate"].to_numpy(np.float64)
        costs = rows["cost"].to_numpy(np.float64)
        ok = rates <= self.settings.target_violation_rate + RATE_TOLERANCE
        pick = int(np.argmin(np.where(ok, costs, np.inf))) if ok.any() else int(np.argmin(rates))
        return float(rows["knob"].iloc[pick])


def _summarize(per_run: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    target = settings.target_violation_rate
    keys = per_run["policy"] + "|" + per_run["knob"].map(knob_key)
    for key in dict.fromkeys(keys):
        g = per_run[keys == key]
        policy, knob = str(g["policy"].iloc[0]), float(g["knob"].iloc[0])
        steps = float(g["steps"].sum())
        viol = float(g["violations"].sum())
        # Each series is a service with its own SLA: the worst one says whether every SLA held.
        rates = g["violation_rate"][g["steps"] > 0].to_numpy(np.float64)
        rows.append(
            {
                "policy": policy,
                "knob_name": KNOB_NAMES[policy],
                "knob": knob,
                "series": len(g),
                "steps": steps,
                "violation_rate": viol / steps if steps else math.nan,
                "worst_violation_rate": float(rates.max()) if rates.size else math.nan,
                "services_within_sla": int((rates <= target + RATE_TOLERANCE).sum()),
                "cost": float(g["cost"].sum()),
                "replica_hours": float(g["replica_hours"].sum()),
                "unmet_replica_hours": float(g["unmet_replica_hours"].sum()),
                "overprovision": float((g["overprovision"] * g["steps"]).sum() / steps)
                if steps
                else math.nan,
                "actions": float(g["actions"].sum()),
                "fallbacks": float(g["fallbacks"].sum()),
            }
        )
    summary = pd.DataFrame(rows)
    order = {p: i for i, p in enumerate(POLICY_ORDER)}
    summary = summary.sort_values("policy", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    oracle = summary[summary["policy"] == "oracle"]
    oracle_cost = float(oracle["cost"].iloc[0]) if len(oracle) else math.nan
    hpa = summary[summary["policy"] == "hpa"]

    def hpa_cost(rate: float) -> float:
        if hpa.empty:
            return math.nan
        return cost_at_rate(hpa["violation_rate"].tolist(), hpa["cost"].tolist(), rate)[0]

    summary["cost_rel_hpa"] = [
        c / hpa_cost(r) for c, r in zip(summary["cost"], summary["violation_rate"], strict=True)
    ]
    summary["cost_rel_oracle"] = summary["cost"] / oracle_cost

    hpa_at = hpa_cost(target)
    matched_rows: list[dict[str, Any]] = []
    for policy in dict.fromkeys(summary["policy"]):
        g = summary[summary["policy"] == policy]
        rates, costs = g["violation_rate"].tolist(), g["cost"].tolist()
        cost, used = cost_at_rate(rates, costs, target)
        knobs = g["knob"].to_numpy()[used] if used else np.array([])
        if len(used) == 2:
            r0, r1 = (float(g["violation_rate"].iloc[i]) for i in used)
            w = (target - r0) / (r1 - r0)
            hours = [float(g["replica_hours"].iloc[i]) for i in used]
            rate, replica_hours = target, hours[0] + w * (hours[1] - hours[0])
            knob_text = f"{knobs[0]:g}..{knobs[1]:g}"
        elif used:
            rate = float(g["violation_rate"].iloc[used[0]])
            replica_hours = float(g["replica_hours"].iloc[used[0]])
            knob_text = "-" if policy == "oracle" else f"{knobs[0]:g}"
        else:
            rate, replica_hours, knob_text = math.nan, math.nan, "not_reached"
        matched_rows.append(
            {
                "policy": policy,
                "knob_name": KNOB_NAMES[str(policy)],
                "knob": knob_text,
                "violation_rate": rate,
                "cost": cost,
                "replica_hours": replica_hours,
                "cost_rel_hpa": cost / hpa_at,
                "cost_rel_oracle": cost / oracle_cost,
            }
        )
    return summary, pd.DataFrame(matched_rows), per_service_table(summary, target, per_run)


def per_service_table(
    summary: pd.DataFrame, target: float, per_run: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per policy: its cheapest swept knob under which *every* series (a service with its own SLA)
    violates at most `target` of its steps; `not_reached` (cost NaN, the smallest worst rate it reached)
    when no knob does. Sweep points only, no interpolation between knobs. `cost_rel_hpa` divides by the
    HPA's cost in this table (NaN when the HPA reaches no such knob).

    With `per_run`, also `tuned_cost`: each series at its own cheapest knob within the rate, chosen in
    hindsight (as if every service's knob had been tuned on its test part; NaN when some series is within
    the rate at no knob), and `tuned_rel_hpa` / `tuned_rel_oracle`: one knob for every service is what
    the policies are configured with, the tuned figure what per-service tuning could at best reach."""
    rows: list[dict[str, Any]] = []
    for policy in dict.fromkeys(summary["policy"]):
        g = summary[summary["policy"] == policy]
        worst = g["worst_violation_rate"].to_numpy(np.float64)
        ok = worst <= target + RATE_TOLERANCE
        if ok.any():
            r = g.iloc[int(np.argmin(np.where(ok, g["cost"].to_numpy(np.float64), np.inf)))]
            knob = "-" if policy == "oracle" else f"{float(r['knob']):g}"
            rate, cost, hours = float(r["violation_rate"]), float(r["cost"]), float(r["replica_hours"])
            worst_rate = float(r["worst_violation_rate"])
        else:
            knob, rate, cost, hours = "not_reached", math.nan, math.nan, math.nan
            worst_rate = float(np.nanmin(worst)) if np.isfinite(worst).any() else math.nan
        rows.append(
            {
                "policy": policy,
                "knob_name": KNOB_NAMES[str(policy)],
                "knob": knob,
                "violation_rate": rate,
                "worst_violation_rate": worst_rate,
                "cost": cost,
                "replica_hours": hours,
            }
        )
    table = pd.DataFrame(rows)
    cost_of = dict(zip(table["policy"], table["cost"], strict=True))
    table["cost_rel_hpa"] = table["cost"] / cost_of.get("hpa", math.nan)
    table["cost_rel_oracle"] = table["cost"] / cost_of.get("oracle", math.nan)
    if per_run is not None:
        tuned = {str(p): _tuned_cost(g, target) for p, g in per_run.groupby("policy", sort=False)}
        table["tuned_cost"] = [tuned.get(str(p), math.nan) for p in table["policy"]]
        table["tuned_rel_hpa"] = table["tuned_cost"] / tuned.get("hpa", math.nan)
        table["tuned_rel_oracle"] = table["tuned_cost"] / tuned.get("oracle", math.nan)
    return table


def _tuned_cost(runs: pd.DataFrame, target: float) -> float:
    """Sum over series of the cheapest run of one policy whose violation rate is within `target`."""
    total = 0.0
    for _, g in runs.groupby("series", sort=False):
        if not (g["steps"] > 0).any():
            continue  # nothing scored: no SLA to keep
        ok = g[(g["steps"] > 0) & (g["violation_rate"] <= target + RATE_TOLERANCE)]
        if ok.empty:
            return math.nan
        total += float(ok["cost"].min())
    return total


def _groups(datas: Sequence[SeriesData], per_window_bytes: int) -> Iterator[list[SeriesData]]:
    """Series in groups whose draws fit in MAX_DRAW_BYTES (one group when they all do)."""
    group: list[SeriesData] = []
    size = 0
    for d in datas:
        need = len(d.decisions) * per_window_bytes
        if group and size + need > MAX_DRAW_BYTES:
            yield group
            group, size = [], 0
        group.append(d)
        size += need
    if group:
        yield group


def run_backtest(
    trace: Trace,
    split: Split,
    forecaster: Forecaster | None,
    settings: Settings,
    *,
    series: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Replay the test (or validation) part of `split` for every series (or `series`) through every policy
    and knob."""
    say = log or (lambda _: None)
    runs = settings.runs()
    needs_model = any(p in FORECAST_POLICIES for p, _ in runs)
    if needs_model and forecaster is None:
        raise BacktestError("the forecast policies (harmony, quantile, point) need a forecaster")
    window = settings.window_steps or 1
    if forecaster is not None:
        window = check_forecaster(forecaster, trace, settings)[1]
    lookback = forecaster.spec.lookback if forecaster is not None else 1
    datas: list[SeriesData] = []
    skipped: dict[str, str] = {}
    for sid in series if series is not None else trace.series_ids:
        planned = prepare_series(trace, split, sid, settings, lookback=lookback)
        if isinstance(planned, str):
            skipped[sid] = planned
        else:
            datas.append(planned)
    if not datas:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        raise BacktestError(f"no series can be replayed ({reasons})")
    seconds = {"draws": 0.0, **{p: 0.0 for p in POLICY_ORDER}}
    rows: list[dict[str, Any]] = []
    capacity: dict[tuple[str, str, str], IntArray] = {}
    per_window = settings.num_samples * window * len(settings.names) * 4
    offset = 0
    for group in _groups(datas, per_window):
        draws: dict[str, Draws] = {}
        if needs_model and forecaster is not None:
            t0 = time.perf_counter()
            draws = forecast_draws(forecaster, trace, group, settings, seed_offset=offset)
            offset += sum(len(d.decisions) for d in group)
            seconds["draws"] += time.perf_counter() - t0
            n_windows = sum(len(v) for v in draws.values())
            say(f"draws: {n_windows} decisions x {settings.num_samples} in {time.perf_counter() - t0:.1f} s")
        for data in group:
            for policy, knob in runs:
                t0 = time.perf_counter()
                rep = replay(
                    build_policy(policy, knob, data, settings),
                    data,
                    draws.get(data.series) if policy in FORECAST_POLICIES else None,
                    settings,
                )
                cap = rep.at(data.scored)
                row = score(data, cap, settings)
                seconds[policy] += time.perf_counter() - t0
                rows.append(
                    {
                        "policy": policy,
                        "knob_name": KNOB_NAMES[policy],
                        "knob": knob,
                        "series": data.series,
                        **row,
                        "decisions": float(rep.decisions),
                        "fallbacks": float(rep.fallbacks),
                    }
                )
                capacity[(policy, knob_key(knob), data.series)] = cap
        say(
            f"replayed {len(group)} series x {len(runs)} policy settings "
            f"({', '.join(f'{p} {seconds[p]:.1f} s' for p in POLICY_ORDER if seconds[p])})"
        )
    per_run = pd.DataFrame(rows)
    summary, matched, per_service = _summarize(per_run, settings)
    return BacktestResult(
        per_run=per_run,
        summary=summary,
        matched=matched,
        per_service=per_service,
        settings=settings,
        dataset=trace.name,
        capacity=capacity,
        demand={d.series: d.demand[d.scored] for d in datas},
        times={d.series: d.index[d.scored] for d in datas},
        skipped=skipped,
        seconds=seconds,
        bound=cost_bound(
            {d.series: d.demand[d.scored] for d in datas},
            settings,
            settings.target_violation_rate,
            datas[0].step_s,
        ),
    )


# --- from a configuration -----------------------------------------------------------------------------------


@dataclass
class ConfigRun:
    """A backtest run from a configuration: its result and where its forecaster came from."""

    config: BacktestConfig
    result: BacktestResult
    forecaster_source: str
    model_run_id: str | None = None
    trace_name: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def _mlflow_forecaster(uri: str) -> Forecaster:
    import mlflow

    from harmony.training.train import tracking_uri

    # models:/ URIs are resolved through MLflow's global store, not the tracking_uri argument: point it at
    # ours (as train() does), or a store set earlier in the process answers "not found".
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=tracking_uri()))
    except Exception as exc:  # MLflow raises many types for an unknown run, model or path
        raise BacktestError(
            f"forecaster.uri {uri!r}: cannot download it from {tracking_uri()}: {exc}"
        ) from None
    for candidate in (local, local / "artifacts" / "forecaster", local / "forecaster"):
        if (candidate / "forecaster.json").exists():
            return Forecaster.load(candidate)
    raise BacktestError(
        f"forecaster.uri {uri!r}: no forecaster.json in what it points at (expected a forecaster folder or a "
        "harmony pyfunc model)"
    )


def _trained_forecaster(cfg: BacktestConfig, say: Callable[[str], None]) -> tuple[Forecaster, str | None]:
    """Train the configured model (a logged harmony.train run), or reuse the one trained for the same
    configuration in this backtest's output folder."""
    from harmony.training.config import TrackingConfig
    from harmony.training.train import STATE_FILE, RunState, comparable_config, train

    folder = (cfg.output_dir / "model").resolve()
    train_cfg = dataclasses.replace(
        cfg.train,
        tracking=TrackingConfig(
            experiment=cfg.train.tracking.experiment, run_name=f"{cfg.run_name}-model", output_dir=str(folder)
        ),
    )
    state_path = folder / STATE_FILE
    state = RunState.load(state_path) if state_path.exists() else None
    if (
        cfg.forecaster.reuse
        and state is not None
        and state.status == "finished"
        and comparable_config(state.config) == comparable_config(train_cfg.to_dict())
        and (folder / "forecaster" / "forecaster.json").exists()
    ):
        say(f"model: reusing {folder / 'forecaster'} (MLflow run {state.run_id}, same configuration)")
        return Forecaster.load(folder / "forecaster"), state.run_id
    resume = state is not None and state.status != "finished"
    say(f"model: training {train_cfg.model.name} ({'resuming' if resume else 'new run'}) into {folder}")
    result = train(train_cfg, resume=resume)
    return Forecaster.load(result.forecaster_dir), result.run_id


def settings_from_config(cfg: BacktestConfig, card: DatasetCard | Trace, lead_time: int) -> Settings:
    r = cfg.backtest
    return Settings(
        capacities=_capacities(card, r.capacities),
        lead_time=lead_time,
        interval=r.interval,
        window_steps=r.window_steps,
        warmup_steps=r.warmup_steps,
        max_steps=r.max_steps,
        initial_replicas=r.initial_replicas,
        part=r.part,
        target_violation_rate=cfg.sla.max_violation_probability,
        replica_hour_price=cfg.cost.replica_hour_price,
        violation_penalty=cfg.cost.violation_penalty,
        scaling=cfg.scaling,
        policies=cfg.policies,
        num_samples=cfg.forecaster.num_samples,
        batch_windows=cfg.forecaster.batch_windows,
        seed=cfg.forecaster.seed,
    )


def run_config(cfg: BacktestConfig, *, log: Callable[[str], None] | None = None) -> ConfigRun:
    """Load the data, get the forecaster (train, folder, MLflow or none) and run the backtest."""
    from harmony.training.train import torch_threads

    with torch_threads(cfg.train.trainer.num_threads):
        return _run_config(cfg, log or (lambda _: None))


def _run_config(cfg: BacktestConfig, say: Callable[[str], None]) -> ConfigRun:
    from harmony.data.catalog import load

    t0 = time.perf_counter()
    d = cfg.train.data
    card = _card_of(cfg.train)
    trace = load(card, root=d.root, series=d.series, frequency=d.frequency)
    split = chronological_split(trace, d.split, by=d.split_by)
    seconds = {"load": time.perf_counter() - t0}
    series = list(trace.series_ids)
    if cfg.backtest.series is not None:
        unknown = [s for s in cfg.backtest.series if s not in trace.series]
        if unknown:
            raise ConfigError(
                f"backtest.series: {unknown} not in the trace ({len(series)} series, e.g. "
                f"{', '.join(series[:5])})",
                path=cfg.source,
            )
        series = list(cfg.backtest.series)
    if cfg.backtest.max_series is not None:
        series = series[: cfg.backtest.max_series]

    t0 = time.perf_counter()
    forecaster: Forecaster | None = None
    model_run: str | None = None
    source = cfg.forecaster.origin
    if source == "train":
        forecaster, model_run = _trained_forecaster(cfg, say)
        where = f"trained {cfg.train.model.name} (MLflow run {model_run})"
    elif source == "path":
        folder = resolve_card_path(str(cfg.forecaster.path), cfg.source)
        forecaster = Forecaster.load(folder)
        where = f"{forecaster.name} from {folder}"
    elif source == "mlflow":
        forecaster = _mlflow_forecaster(str(cfg.forecaster.uri))
        where = f"{forecaster.name} from {cfg.forecaster.uri}"
    else:
        where = "none"
    seconds["forecaster"] = time.perf_counter() - t0
    model_lead = forecaster.spec.lead_time if forecaster is not None else cfg.train.model.lead_time
    lead = cfg.backtest.lead_time if cfg.backtest.lead_time is not None else model_lead
    settings = settings_from_config(cfg, card, lead)
    say(f"backtest: {trace.name}, {len(series)} series, lead {lead} steps, interval {settings.interval}")
    t0 = time.perf_counter()
    result = run_backtest(trace, split, forecaster, settings, series=series, log=say)
    seconds["backtest"] = time.perf_counter() - t0
    result.info.update(
        {
            "dataset": trace.name,
            "forecaster": where,
            "lookback": str(forecaster.spec.lookback) if forecaster is not None else "-",
            "horizon": str(forecaster.spec.horizon) if forecaster is not None else "-",
            "model_lead_time": str(model_lead),
        }
    )
    if model_run:
        result.info["model_run_id"] = model_run
    return ConfigRun(cfg, result, where, model_run, trace.name, seconds)
