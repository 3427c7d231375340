"""The backtest's configuration: typed sections read from YAML (with a training config as `base:`), `--set`
overrides, and every check whose error names the file and the dotted key.

Each policy's section lists the values of each of its knobs to search on the validation part: the first
knob is the policy's *primary* knob (the one that trades cost for violations: eps, target utilisation,
margin, headroom), the others are its *secondary* knobs (stabilisation windows, tolerance, rate rules,
forgetting). The first value of a secondary list is where the search starts (docs/backtest.md, "Choosing
the knobs").
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harmony.data.spec import DatasetCard, Kind
from harmony.data.trace import Trace
from harmony.model.classical import ARIMA_MAX_SEASON
from harmony.policies import RateLimit
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
    "BASELINES",
    "CLASSICAL_POLICIES",
    "DRAW_POLICIES",
    "POLICY_ORDER",
    "BacktestConfig",
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
    "capacities_of",
    "card_of",
    "load_backtest_config",
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
    adaptation's forgetting factor and the scale-down window."""

    max_violation_probability: list[float] = field(default_factory=lambda: list(EPS_SWEEP))
    forgetting: list[float] = field(default_factory=lambda: [0.995])
    scale_down_window_s: list[float] | None = None


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
class _BacktestSections:
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

    The file may name under `base:` (relative to the working directory or to the file) a training
    configuration, whose sections (data, model, trainer, tracking, evaluation) it overrides key by key, or
    another backtest configuration, whose every section it overrides the same way except the report's
    run_name and output_dir (a variant writes its own results). Errors name the file and the dotted key (a
    base file's own errors name the base file).
    """
    return _load(Path(path), overrides, ())


def _load(p: Path, overrides: Sequence[str], chain: tuple[Path, ...]) -> BacktestConfig:
    merged, base_path = _raw_sections(p, chain)
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


# A backtest base lends every section but the name and folder of its run: a variant (another lead time, say)
# must not write over the results of the config it starts from.
_NOT_INHERITED = ("run_name", "output_dir")


def _raw_sections(p: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Path | None]:
    """The file's sections on top of its `base:` (a training config, or another backtest config whose own
    base is resolved the same way), unvalidated; and the base's path."""
    raw = read_yaml(p)
    for k in raw:
        if k not in TOP_LEVEL:
            close = difflib.get_close_matches(str(k), TOP_LEVEL, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{k}: unknown section; known sections: {', '.join(TOP_LEVEL)}{hint}", path=p)
    if raw.get("base") is None:
        return {k: v for k, v in raw.items() if k != "base"}, None
    if not isinstance(raw["base"], str):
        raise ConfigError(
            f"base: expected the path of a training or backtest config, got {raw['base']!r}", path=p
        )
    base_path = _resolve(raw["base"], p)
    if base_path.resolve() in chain or base_path.resolve() == p.resolve():
        raise ConfigError(f"base: {raw['base']} leads back to this file (a cycle of bases)", path=p)
    base_raw = read_yaml(base_path)
    if "base" in base_raw or any(k in base_raw for k in BACKTEST_SECTIONS):
        _load(base_path, (), (*chain, p.resolve()))  # the base must be valid on its own; its errors name it
        merged, _ = _raw_sections(base_path, (*chain, p.resolve()))
        report = merged.get("report")
        if isinstance(report, dict):
            merged["report"] = {k: v for k, v in report.items() if k not in _NOT_INHERITED}
    else:
        load_config(base_path)  # the base must be valid on its own; its errors name it
        # A card path in the base is relative to the base's folder: pin it before this file's folder counts.
        data = base_raw.get("data")
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(dataset, str) and dataset.endswith((".yaml", ".yml")):
            data["dataset"] = str(resolve_card_path(dataset, base_path).resolve())
        merged = {k: v for k, v in base_raw.items() if k in TRAINING_SECTIONS}
    return _merge(merged, {k: v for k, v in raw.items() if k != "base"}), base_path


_SWEEPS: dict[str, type[Any]] = {
    "harmony": RiskSweep,
    "quantile": RiskSweep,
    "point": PointSweep,
    "ehpa": HPASweep,
    "arima": ClassicalSweep,
    "ets": ClassicalSweep,
    "hpa": HPASweep,
    "static": StaticSweep,
}


def _build_policies(raw: Any, ctx: ConfigContext) -> PoliciesConfig:
    """`policies:` entry by entry (null or false leaves a policy out), so that errors name the inner key.
    A policy the file does not name keeps its default section."""
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


def card_of(train: TrainConfig) -> DatasetCard:
    from harmony.data.catalog import get_card
    from harmony.data.spec import load_card

    name = train.data.dataset
    if name.endswith((".yaml", ".yml")):
        return load_card(resolve_card_path(name, train.source))
    return get_card(name)


def capacities_of(card: DatasetCard | Trace, override: Mapping[str, float] | None) -> dict[str, float]:
    """Capacity per replica of each demand indicator: the override, else the card's demand indicators."""
    if override:
        return {k: float(v) for k, v in override.items()}
    return {
        i.name: float(i.capacity_per_replica)
        for i in card.indicators
        if i.kind is Kind.DEMAND and i.capacity_per_replica is not None
    }


def _step_seconds(cfg: BacktestConfig, card: DatasetCard) -> float:
    from harmony.data.spec import parse_frequency

    freq = cfg.train.data.frequency
    return (parse_frequency(freq) if freq is not None else card.frequency).total_seconds()


def _check(cfg: BacktestConfig, ctx: ConfigContext) -> None:
    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ctx.error(key, message)

    f, r, s, c, sc, pol, tu, rep = (
        cfg.forecaster,
        cfg.backtest,
        cfg.sla,
        cfg.cost,
        cfg.scaling,
        cfg.policies,
        cfg.tuning,
        cfg.report,
    )
    card = card_of(cfg.train)  # the training sections checked that it exists
    indicators = [i.name for i in card.indicators]
    m = cfg.train.model
    step_s = _step_seconds(cfg, card)

    need(f.origin != "path" or bool(f.path), "forecaster.path", "origin 'path' needs the forecaster folder")
    need(f.origin != "mlflow" or bool(f.uri), "forecaster.uri", "origin 'mlflow' needs a model URI")
    need(
        f.model_dir is None or (f.origin == "train" and bool(f.model_dir.strip())),
        "forecaster.model_dir",
        "expected a folder for the trained model, with origin 'train' (or null for the output folder's)",
    )
    need(f.num_samples >= 2, "forecaster.num_samples", f"expected an integer >= 2, got {f.num_samples}")
    need(f.batch_windows >= 1, "forecaster.batch_windows", f"expected an integer >= 1, got {f.batch_windows}")
    need(f.seed >= 0, "forecaster.seed", f"expected an integer >= 0, got {f.seed}")
    if f.origin == "none":
        drawn = [p for p in pol.enabled() if p in DRAW_POLICIES]
        need(
            not drawn,
            f"policies.{drawn[0]}" if drawn else "policies",
            "needs the forecaster's draws (forecaster.origin is 'none'); set it to null or give a forecaster",
        )

    need(r.series is None or bool(r.series), "backtest.series", "expected a non-empty list, or null for all")
    need(r.max_series is None or r.max_series >= 1, "backtest.max_series", "expected an integer >= 1 or null")
    need(r.lead_time is None or r.lead_time >= 0, "backtest.lead_time", "expected an integer >= 0 or null")
    need(r.interval >= 1, "backtest.interval", f"expected an integer >= 1, got {r.interval}")
    need(r.window_steps is None or r.window_steps >= 1, "backtest.window_steps", "expected an integer >= 1")
    need(r.warmup_steps >= 0, "backtest.warmup_steps", f"expected an integer >= 0, got {r.warmup_steps}")
    need(r.max_steps is None or r.max_steps >= 1, "backtest.max_steps", "expected an integer >= 1 or null")
    need(
        r.series_per_group is None or r.series_per_group >= 1,
        "backtest.series_per_group",
        "expected an integer >= 1 or null",
    )
    need(r.workers is None or r.workers >= 1, "backtest.workers", "expected an integer >= 1 or null")
    need(
        r.executor != "ray" or r.series_per_group is not None,
        "backtest.series_per_group",
        "the ray executor distributes groups of series: give how many series a group holds",
    )
    if r.executor == "ray":
        import importlib.util

        need(
            importlib.util.find_spec("ray") is not None,
            "backtest.executor",
            "ray is not installed: pip install 'harmony-autoscaler[ray]'",
        )
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
    capacities = capacities_of(card, r.capacities)
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
    decision_s = step_s * r.interval

    def window_ok(key: str, seconds: float) -> None:
        need(seconds >= 0, key, f"expected seconds >= 0, got {seconds:g}")
        # Decisions come once per interval: a window shorter than that holds no earlier recommendation.
        need(
            seconds == 0 or seconds >= decision_s - 1e-9,
            key,
            f"{seconds:g} s is shorter than one decision interval ({decision_s:g} s: the trace's "
            f"{step_s:g}-s step x backtest.interval {r.interval}), so it has no effect in the replay; use 0 "
            f"or a multiple of {decision_s:g} s",
        )

    window_ok("scaling.scale_down_stabilization_s", sc.scale_down_stabilization_s)
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

    def sweep(key: str, values: Sequence[Any], ok: Callable[[Any], bool], expected: str) -> None:
        need(bool(values), key, "expected a non-empty list of knob values")
        for i, v in enumerate(values):
            need(ok(v), f"{key}[{i}]", f"expected {expected}, got {v}")
        dup = sorted({v for v in values if list(values).count(v) > 1})
        need(not dup, key, f"duplicate values {dup}")

    def windows(key: str, values: list[float] | None) -> None:
        if values is not None:
            sweep(key, values, lambda v: v >= 0, "seconds >= 0")
            for i, v in enumerate(values):
                window_ok(f"{key}[{i}]", v)

    def rates(key: str, values: list[str]) -> None:
        sweep(key, values, lambda v: isinstance(v, str), "a rate rule text")
        for i, text in enumerate(values):
            try:
                RateLimit.parse(text)
            except ValueError as exc:
                raise ctx.error(f"{key}[{i}]", str(exc)) from None

    for name in ("harmony", "quantile"):
        risk: RiskSweep | None = getattr(pol, name)
        if risk is not None:
            sweep(f"policies.{name}.max_violation_probability", risk.max_violation_probability,
                  lambda v: 0.0 < v <= 0.5, "a rate in (0, 0.5]")  # fmt: skip
            sweep(f"policies.{name}.forgetting", risk.forgetting, lambda v: 0.0 < v <= 1.0,
                  "a factor in (0, 1]")  # fmt: skip
            windows(f"policies.{name}.scale_down_window_s", risk.scale_down_window_s)
    for name in ("hpa", "ehpa"):
        hpa: HPASweep | None = getattr(pol, name)
        if hpa is not None:
            sweep(f"policies.{name}.target_utilization", hpa.target_utilization, lambda v: 0.0 < v <= 1.0,
                  "a utilisation in (0, 1]")  # fmt: skip
            sweep(
                f"policies.{name}.tolerance", hpa.tolerance, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)"
            )
            windows(f"policies.{name}.scale_down_window_s", hpa.scale_down_window_s)
            windows(f"policies.{name}.scale_up_window_s", hpa.scale_up_window_s)
            rates(f"policies.{name}.scale_up_rate", hpa.scale_up_rate)
            rates(f"policies.{name}.scale_down_rate", hpa.scale_down_rate)
    for name in ("point", "arima", "ets"):
        point: PointSweep | ClassicalSweep | None = getattr(pol, name)
        if point is not None:
            sweep(f"policies.{name}.margin", point.margin, lambda v: v >= 0.0, "a margin >= 0")
            need(
                0.0 < point.target_utilization <= 1.0,
                f"policies.{name}.target_utilization",
                f"expected a utilisation in (0, 1], got {point.target_utilization}",
            )
            windows(f"policies.{name}.scale_down_window_s", point.scale_down_window_s)
    for name in ("arima", "ets"):
        classical: ClassicalSweep | None = getattr(pol, name)
        if classical is not None:
            key = f"policies.{name}"
            need(classical.season_length >= 1, f"{key}.season_length", "expected an integer >= 1")
            need(
                name != "arima" or classical.season_length <= ARIMA_MAX_SEASON,
                f"{key}.season_length",
                f"a seasonal AutoARIMA takes minutes per fit beyond {ARIMA_MAX_SEASON} steps, got "
                f"{classical.season_length}; use ets for a long season",
            )
            need(classical.history >= 8, f"{key}.history", f"expected >= 8 steps, got {classical.history}")
            need(classical.refit_every >= 1, f"{key}.refit_every", "expected an integer >= 1 (steps)")
    if pol.static is not None:
        sweep("policies.static.headroom", pol.static.headroom, lambda v: v >= 0.0, "a headroom >= 0")

    need(tu.max_grid >= 1, "tuning.max_grid", f"expected an integer >= 1, got {tu.max_grid}")
    need(tu.passes >= 1, "tuning.passes", f"expected an integer >= 1, got {tu.passes}")
    need(tu.refine >= 0, "tuning.refine", f"expected an integer >= 0, got {tu.refine}")
    need(bool(rep.experiment), "report.experiment", "expected a non-empty MLflow experiment name")
    need(
        rep.run_name is None or bool(RUN_NAME_PATTERN.match(rep.run_name)),
        "report.run_name",
        f"expected letters, digits, '_', '.', '-' (it names a folder), got {rep.run_name!r}",
    )
