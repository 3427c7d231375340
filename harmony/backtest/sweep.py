"""Policies x knobs: the knob space of every policy, the policy built for one setting, and the replay of a
setting over every series (`Evaluator`, which caches every replay by setting). The search that chooses each
policy's knobs on the validation part is `harmony.backtest.search`.

A setting (`Knobs`) is one value of the policy's primary knob (the one that trades cost for violations) and
one value of each secondary knob.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from harmony.backtest.replay import Draws, IntArray, SeriesData, Settings, replay, score
from harmony.backtest.sections import (
    CLASSICAL_POLICIES,
    DRAW_POLICIES,
    POLICY_ORDER,
    ClassicalSweep,
    HPASweep,
    PointSweep,
    RiskSweep,
    StaticSweep,
)
from harmony.decision import FALLBACK_CAUSES, Decider, DecisionConfig
from harmony.policies import (
    EHPAPolicy,
    HPAPolicy,
    OraclePolicy,
    PointForecastPolicy,
    Policy,
    QuantilePolicy,
    StaticPolicy,
)

__all__ = [
    "CAUSE_COLUMNS",
    "CRITERIA",
    "RATE_TOLERANCE",
    "Evaluator",
    "KnobSpace",
    "Knobs",
    "build_policy",
    "format_knob",
    "knob_space",
    "short_knobs",
    "summarize",
]

# Violation rates are ratios of step counts: a rate "at" the target may differ from it by float rounding.
RATE_TOLERANCE = 1e-12
Criterion = Literal["total", "service"]
CRITERIA: dict[Criterion, str] = {
    "total": "violated steps over all series within the target rate",
    "service": "every series within the target rate",
}
# The fallback decisions of each cause (harmony.decision.FALLBACK_CAUSES), a column each in the score rows.
CAUSE_COLUMNS: dict[str, str] = {cause: f"fallbacks_{cause}" for cause in FALLBACK_CAUSES}


@dataclass(frozen=True)
class KnobSpace:
    """A policy's knobs: the primary one (name, values, whether larger values are looser, i.e. cheaper and
    more often violated, and whether it is bisected in log scale) and the secondary ones (name -> values,
    the first value where the search starts)."""

    primary: str
    values: tuple[float, ...]
    looser_up: bool
    log_scale: bool = False
    secondary: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def ordered(self) -> list[float]:
        """The primary values from the safest to the loosest."""
        return sorted(self.values, reverse=not self.looser_up)

    def secondary_grid(self) -> list[tuple[tuple[str, Any], ...]]:
        names = list(self.secondary)
        return [
            tuple(zip(names, combo, strict=True)) for combo in itertools.product(*self.secondary.values())
        ]

    def between(self, safe: float, loose: float) -> float:
        mid = math.sqrt(safe * loose) if self.log_scale and safe > 0 and loose > 0 else 0.5 * (safe + loose)
        return float(f"{mid:.3g}")  # three significant digits: a knob a person can write down


@dataclass(frozen=True)
class Knobs:
    """One setting of a policy: its primary knob value and one value per secondary knob."""

    policy: str
    primary: float
    secondary: tuple[tuple[str, Any], ...] = ()

    @property
    def primary_name(self) -> str:
        return _PRIMARY.get(self.policy, "-")

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.secondary).get(name, default)

    def secondary_text(self) -> str:
        return " ".join(f"{k}={format_knob(v)}" for k, v in self.secondary) or "-"

    def text(self) -> str:
        """Every knob as `name=value`, the primary first ('-' for the oracle)."""
        if self.policy == "oracle":
            return "-"
        head = f"{self.primary_name}={format_knob(self.primary)}"
        return " ".join([head, *(f"{k}={format_knob(v)}" for k, v in self.secondary)])

    def key(self) -> tuple[str, float, tuple[tuple[str, Any], ...]]:
        return (self.policy, self.primary, self.secondary)


def format_knob(v: Any) -> str:
    """A knob value as the tables and MLflow write it: floats in %g, anything else as text."""
    return f"{v:g}" if isinstance(v, float) and not math.isnan(v) else str(v)


# Knob names as the tables print them.
SHORT_NAMES = {
    "target_utilization": "target",
    "tolerance": "tol",
    "scale_down_window_s": "down_window",
    "scale_up_window_s": "up_window",
    "scale_down_rate": "down_rate",
    "scale_up_rate": "up_rate",
    "forgetting": "forget",
    "window_steps": "window",
}


def short_knobs(text: str, searched: Sequence[str] | None = None) -> str:
    """A knobs text with the short names the tables print ('-' stays '-'); with `searched`, only the knobs
    of those names (the ones the search chose among several values)."""
    if searched is not None:
        text = " ".join(t for t in text.split(" ") if t == ".." or t.split("=", 1)[0] in searched) or "-"
    for long, short in SHORT_NAMES.items():
        text = text.replace(f"{long}=", f"{short}=")
    return text


_PRIMARY = {
    "harmony": "eps",
    "quantile": "eps",
    "point": "margin",
    "arima": "margin",
    "ets": "margin",
    "hpa": "target_utilization",
    "ehpa": "target_utilization",
    "static": "headroom",
}


def knob_space(policy: str, settings: Settings) -> KnobSpace:
    """The knobs of `policy` as the settings' policies section lists them."""
    sc, pol = settings.scaling, settings.policies
    default_window = (float(sc.scale_down_stabilization_s),)

    def windows(values: list[float] | None) -> tuple[float, ...]:
        return default_window if values is None else tuple(float(v) for v in values)

    if policy in ("harmony", "quantile"):
        risk: RiskSweep = getattr(pol, policy)
        secondary: dict[str, tuple[Any, ...]] = {
            "forgetting": tuple(risk.forgetting) if policy == "harmony" else (risk.forgetting[0],),
            "scale_down_window_s": windows(risk.scale_down_window_s),
        }
        if risk.window_steps is not None:  # a knob only when listed: settings texts stay as they were
            secondary["window_steps"] = tuple(int(v) for v in risk.window_steps)
        return KnobSpace(
            "eps",
            tuple(risk.max_violation_probability),
            looser_up=True,
            log_scale=True,
            secondary=secondary,
        )
    if policy in ("point", "arima", "ets"):
        point: PointSweep | ClassicalSweep = getattr(pol, policy)
        return KnobSpace(
            "margin",
            tuple(point.margin),
            looser_up=False,
            secondary={"scale_down_window_s": windows(point.scale_down_window_s)},
        )
    if policy in ("hpa", "ehpa"):
        hpa: HPASweep = getattr(pol, policy)
        return KnobSpace(
            "target_utilization",
            tuple(hpa.target_utilization),
            looser_up=True,
            secondary={
                "tolerance": tuple(hpa.tolerance),
                "scale_down_window_s": windows(hpa.scale_down_window_s),
                "scale_up_window_s": tuple(float(v) for v in hpa.scale_up_window_s),
                "scale_down_rate": tuple(hpa.scale_down_rate),
                "scale_up_rate": tuple(hpa.scale_up_rate),
            },
        )
    if policy == "static":
        static: StaticSweep = pol.static  # type: ignore[assignment]
        return KnobSpace("headroom", tuple(static.headroom), looser_up=False)
    if policy == "oracle":
        return KnobSpace("-", (math.nan,), looser_up=True)
    raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICY_ORDER)}")


def build_policy(knobs: Knobs, data: SeriesData, settings: Settings) -> Policy:
    """The policy of `knobs` with its knobs set, for one series."""
    name = knobs.policy
    sc, pol = settings.scaling, settings.policies
    interval_s = data.step_s * settings.interval
    window = float(knobs.get("scale_down_window_s", sc.scale_down_stabilization_s))
    if name in ("harmony", "quantile", "point", "arima", "ets"):
        config = DecisionConfig(
            capacities=dict(settings.capacities),
            max_replicas=sc.max_replicas,
            min_replicas=sc.min_replicas,
            max_violation_probability=knobs.primary
            if name in ("harmony", "quantile")
            else settings.target_violation_rate,
            replica_hour_price=settings.replica_hour_price,
            violation_penalty=settings.violation_penalty,
            interval_s=interval_s,
            scale_down_stabilization_s=window,
            max_scale_up_step=sc.max_scale_up_step,
            max_scale_down_step=sc.max_scale_down_step,
            fallback_target_utilization=sc.fallback_target_utilization,
            fallback_margin=sc.fallback_margin,
            fallback_on_miscalibration=sc.fallback_on_miscalibration,
            forgetting=float(knobs.get("forgetting", 0.995)),
            lead_steps=settings.lead_time,
        )
        if name == "harmony":
            return Decider(config)
        if name == "quantile":
            return QuantilePolicy(config)
        point: PointSweep | ClassicalSweep | None = getattr(pol, name)
        if point is None:
            point = PointSweep() if name == "point" else ClassicalSweep()
        kind = point.point if isinstance(point, PointSweep) else "median"
        return PointForecastPolicy(
            config, target_utilization=point.target_utilization, margin=knobs.primary, point=kind, name=name
        )
    if name in ("hpa", "ehpa"):
        cls = HPAPolicy if name == "hpa" else EHPAPolicy
        return cls(
            settings.capacities,
            target_utilization=knobs.primary,
            min_replicas=sc.min_replicas,
            max_replicas=sc.max_replicas,
            tolerance=float(knobs.get("tolerance", 0.1)),
            scale_down_stabilization_s=window,
            scale_up_stabilization_s=float(knobs.get("scale_up_window_s", 0.0)),
            scale_up=str(knobs.get("scale_up_rate", "100%/15s,4pods/15s")),
            scale_down=str(knobs.get("scale_down_rate", "100%/15s")),
            interval_s=interval_s,
        )
    if name == "static":
        return StaticPolicy(
            settings.capacities,
            data.train_peak,
            headroom=knobs.primary,
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


# --- replaying settings -------------------------------------------------------------------------------------


def source_of(
    policy: str, draws: Mapping[str, Mapping[str, Draws]], settings: Settings
) -> Mapping[str, Draws] | None:
    """The forecasts `policy` reads among `draws[source][series]` (None: it reads none)."""
    # The EHPA (and the median point forecast) read only the per-step median of the draws: given as one
    # draw ("median"), it is computed once per decision instead of once per setting replayed.
    point = settings.policies.point
    reads_median = policy == "ehpa" or (policy == "point" and (point is None or point.point == "median"))
    if reads_median and "median" in draws:
        return draws["median"]
    if policy in DRAW_POLICIES:
        return draws.get("model")
    if policy in CLASSICAL_POLICIES:
        return draws.get(policy)
    return None


# One setting's (score row, count in place or None) per series, in the order of the series.
Replayed = list[tuple[dict[str, Any], IntArray | None]]


def replay_setting(
    knobs: Knobs,
    datas: Sequence[SeriesData],
    draws: Mapping[str, Mapping[str, Draws]],
    settings: Settings,
    keep_capacity: bool,
) -> Replayed:
    """Replay one setting over every series of `datas`: its score row per series (and the count in place
    over the scored steps when `keep_capacity`)."""
    source = source_of(knobs.policy, draws, settings)
    steps = knobs.get("window_steps")
    out: Replayed = []
    for data in datas:
        mine = None if source is None else source.get(data.series)
        if mine is not None and steps is not None:
            # The decision window knob: the first `steps` forecast steps of each decision's draws (views).
            mine = [None if d is None else d[:, : int(steps)] for d in mine]
        rep = replay(build_policy(knobs, data, settings), data, mine, settings)
        cap = rep.at(data.scored)
        row = {
            "policy": knobs.policy,
            "knob_name": knobs.primary_name,
            "knob": knobs.primary,
            "setting": knobs.secondary_text(),
            "knobs": knobs.text(),
            "series": data.series,
            **score(data, cap, settings),
            "decisions": float(rep.decisions),
            "fallbacks": float(rep.fallbacks),
            **{col: float(rep.fallback_causes[cause]) for cause, col in CAUSE_COLUMNS.items()},
        }
        out.append((row, cap if keep_capacity else None))
    return out


class Evaluator:
    """Replays settings over every series of one part, once each (cached), and keeps what it replayed.

    `draws[source][series]` are the forecasts the policies read: source "model" (the forecaster's draws) for
    HARMONY, quantile, point and EHPA, or "median" (their per-step median, one draw) for EHPA and the median
    point forecast when it is given; "arima" / "ets" for those policies. `keep_capacity` keeps the count in
    place of every replay (the report's charts). `replayer`, when given, replays a setting over the series
    instead of this process (`harmony.backtest.executor`: the series' forecasts then live where it runs and
    `draws` may be empty); its rows must come in the order of `datas`.
    """

    def __init__(
        self,
        datas: Sequence[SeriesData],
        draws: Mapping[str, Mapping[str, Draws]],
        settings: Settings,
        *,
        keep_capacity: bool = False,
        replayer: Callable[[Knobs, bool], Replayed] | None = None,
    ) -> None:
        self.datas = list(datas)
        self.draws = draws
        self.settings = settings
        self.keep_capacity = keep_capacity
        self._replayer = replayer
        self.rows: dict[tuple[str, float, tuple[tuple[str, Any], ...]], list[dict[str, Any]]] = {}
        self.capacity: dict[tuple[tuple[str, float, tuple[tuple[str, Any], ...]], str], Any] = {}
        self.seconds: dict[str, float] = {}
        self.knobs: dict[tuple[str, float, tuple[tuple[str, Any], ...]], Knobs] = {}
        self._summaries: dict[tuple[str, float, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}
        # Called after each new replay (harmony.backtest.progress prints progress lines from it).
        self.on_replay: Callable[[Knobs], None] | None = None

    def source(self, policy: str) -> Mapping[str, Draws] | None:
        return source_of(policy, self.draws, self.settings)

    def run(self, knobs: Knobs) -> list[dict[str, Any]]:
        """Per-series score rows of one setting (replayed once, then from the cache)."""
        key = knobs.key()
        if key in self.rows:
            return self.rows[key]
        t0 = time.perf_counter()
        if self._replayer is not None:
            replayed = self._replayer(knobs, self.keep_capacity)
        else:
            replayed = replay_setting(knobs, self.datas, self.draws, self.settings, self.keep_capacity)
        out: list[dict[str, Any]] = []
        for data, (row, cap) in zip(self.datas, replayed, strict=True):
            if row["series"] != data.series:
                raise RuntimeError(
                    f"replayed series out of order: {row['series']} where {data.series} was due"
                )
            out.append(row)
            if self.keep_capacity:
                self.capacity[(key, data.series)] = cap
        self.rows[key] = out
        self.knobs[key] = knobs
        self.seconds[knobs.policy] = self.seconds.get(knobs.policy, 0.0) + time.perf_counter() - t0
        if self.on_replay is not None:
            self.on_replay(knobs)
        return out

    def summary_of(self, knobs: Knobs) -> dict[str, Any]:
        """The setting's rows summed over series (computed once: the search asks for it many times)."""
        key = knobs.key()
        if key not in self._summaries:
            self._summaries[key] = summarize(self.run(knobs), self.settings.target_violation_rate)
        return self._summaries[key]

    def per_run(self) -> pd.DataFrame:
        return pd.DataFrame([row for rows in self.rows.values() for row in rows])

    def summary(self) -> pd.DataFrame:
        """One row per replayed setting, summed over series, in table order."""
        rows = [self.summary_of(self.knobs[key]) for key in self.rows]
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        order = {p: i for i, p in enumerate(POLICY_ORDER)}
        frame = frame.assign(_o=frame["policy"].map(order))
        return (
            frame.sort_values(["_o", "setting", "knob"], kind="stable")
            .drop(columns="_o")
            .reset_index(drop=True)
        )


def summarize(rows: Iterable[Mapping[str, Any]], target: float) -> dict[str, Any]:
    """One setting's per-series rows summed over series (rates and means weighted by steps)."""
    g = pd.DataFrame(list(rows))
    steps = float(g["steps"].sum())
    viol = float(g["violations"].sum())
    # Each series is a service with its own SLA: the worst one says whether every SLA held.
    rates = g["violation_rate"][g["steps"] > 0].to_numpy(np.float64)
    first = g.iloc[0]
    return {
        "policy": str(first["policy"]),
        "knob_name": str(first["knob_name"]),
        "knob": float(first["knob"]),
        "setting": str(first["setting"]),
        "knobs": str(first["knobs"]),
        "series": len(g),
        "steps": steps,
        "violation_rate": viol / steps if steps else math.nan,
        "worst_violation_rate": float(rates.max()) if rates.size else math.nan,
        "services_within_sla": int((rates <= target + RATE_TOLERANCE).sum()),
        "cost": float(g["cost"].sum()),
        "replica_hours": float(g["replica_hours"].sum()),
        "unmet_replica_hours": float(g["unmet_replica_hours"].sum()),
        "overprovision": float((g["overprovision"] * g["steps"]).sum() / steps) if steps else math.nan,
        "actions": float(g["actions"].sum()),
        "decisions": float(g["decisions"].sum()),
        "fallbacks": float(g["fallbacks"].sum()),
        **{col: float(g[col].sum()) for col in CAUSE_COLUMNS.values()},
    }
