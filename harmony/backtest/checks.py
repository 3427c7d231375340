"""Every check of a backtest configuration beyond its types, each error naming the file and the dotted key;
and what the checks and the run read from the dataset card (capacities, the step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harmony.backtest.sections import (
    DRAW_POLICIES,
    BacktestConfig,
    ClassicalSweep,
    HPASweep,
    PointSweep,
    RiskSweep,
)
from harmony.data.spec import DatasetCard, Kind
from harmony.data.trace import Trace
from harmony.model.classical import ARIMA_MAX_SEASON
from harmony.policies import RateLimit
from harmony.training.config import RUN_NAME_PATTERN, ConfigContext, TrainConfig, resolve_card_path

__all__ = ["capacities_of", "card_of", "check_config"]


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


def check_config(cfg: BacktestConfig, ctx: ConfigContext) -> None:
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
        for name, longer in cfg.policies.windows_longer_than(window).items():
            raise ctx.error(
                f"policies.{name}.window_steps",
                f"{longer} longer than the {window} forecast steps a decision's draws have",
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
            if risk.window_steps is not None:
                sweep(f"policies.{name}.window_steps", risk.window_steps,
                      lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                      "a whole number of forecast steps >= 1")  # fmt: skip
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
