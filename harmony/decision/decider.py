"""`Decider`: HARMONY's decision for one service. The chance constraint on the draws at the working level of
the Bayesian adaptation, the newsvendor's critical fractile, one stabiliser, and a reactive fallback when
there is no usable forecast. Also `Decision` (what any policy answers) and the helpers the baselines share.

The lead time (cold start) is the caller's business: the draws passed to `decide` must already cover the
steps the decision is for (the forecaster's horizon starts after its lead time), and `observe` must be
called with the demand realised while the replicas of an earlier decision were in place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from harmony.decision.calibration import CalibrationTracker, format_level
from harmony.decision.config import DecisionConfig
from harmony.decision.draws import DemandDraws, NonFiniteDraws, ceil_replicas
from harmony.decision.stabilizer import Stabilizer

__all__ = [
    "FALLBACK_CAUSES",
    "Decider",
    "Decision",
    "fallback_decision",
    "is_violation",
    "reactive_replicas",
]


# Why a decision fell back to the reactive rule (`Decision.fallback_cause`), in words: the backtest counts
# fallbacks by cause, because the remedies differ (fill the data's gaps, or ask for a looser eps).
FALLBACK_CAUSES: dict[str, str] = {
    "no_forecast": "no usable forecast (a lookback with gaps or a stale newest value, too little history, "
    "stale metrics or no model)",
    "bad_draws": "a forecast with NaN or infinite draws",
    "miscalibrated": "forecasts miscalibrated beyond repair at this eps",
}


@dataclass(frozen=True)
class Decision:
    """One decision and why.

    `recommendation` is the raw count the rule asked for (before clipping and stabilisation); `replicas` is
    what to set. `p_violation` is the predicted probability, over the draws, that demand exceeds the capacity
    of `replicas` at some step of the window; `expected_cost` is `price_per_interval * replicas + penalty *
    p_violation` for one interval. `quantile_level` is the working quantile 1 - eps_eff that was used.
    `binding_step` counts steps after the last observation (the lead time included). `fallback_cause` is
    the key of `FALLBACK_CAUSES` that made a fallback decision fall back (None when it did not).
    """

    replicas: int
    recommendation: int
    reason: str
    binding_indicator: str | None = None
    binding_step: int | None = None
    p_violation: float | None = None
    expected_cost: float | None = None
    quantile_level: float | None = None
    fallback: bool = False
    policy: str = "harmony"
    fallback_cause: str | None = None

    def __post_init__(self) -> None:
        if self.fallback_cause is not None and self.fallback_cause not in FALLBACK_CAUSES:
            raise ValueError(
                f"fallback_cause must be one of {sorted(FALLBACK_CAUSES)} or None, "
                f"got {self.fallback_cause!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (for a CR status, a log line, a backtest table)."""
        return asdict(self)


def reactive_replicas(
    demand: Mapping[str, float] | None,
    capacities: Mapping[str, float],
    target_utilization: float,
    margin: float,
) -> tuple[int, str | None, list[str]]:
    """`max_i ceil(d_i / (c_i * u) * (1 + margin))` over the indicators with a finite current demand.

    Returns (replicas, binding indicator, indicators with no usable demand). 0 replicas when none is known.
    """
    best, binding, missing = 0, None, []
    best_ratio = -math.inf
    for name, cap in capacities.items():
        d = None if demand is None else demand.get(name)
        if d is None or not math.isfinite(d):
            missing.append(name)
            continue
        ratio = d / (cap * target_utilization) * (1.0 + margin)
        if ratio > best_ratio:
            best_ratio, binding = ratio, name
    if binding is not None:
        best = ceil_replicas(best_ratio)
    return best, binding, missing


def is_violation(
    realised: Mapping[str, float], capacities: Mapping[str, float], replicas: int
) -> bool | None:
    """Did any demand indicator exceed the capacity of `replicas`? None when no demand is known."""
    known = False
    for name, cap in capacities.items():
        d = realised.get(name)
        if d is None or not math.isfinite(d):
            continue
        known = True
        if d > cap * replicas:
            return True
    return False if known else None


def fallback_decision(
    config: DecisionConfig,
    stabilizer: Stabilizer,
    why: str,
    current_replicas: int,
    now_s: float,
    current_demand: Mapping[str, float] | None,
    *,
    policy: str,
    cause: str,
) -> Decision:
    """The reactive rule with a safety margin, never below the safe floor, through `stabilizer`. `why` words
    the reason; `cause` is its key in `FALLBACK_CAUSES`.

    Rule: `max_i ceil(d_i / (c_i * fallback_target_utilization) * (1 + fallback_margin))` on the current
    demand. The safe floor: with every demand indicator known the rule already serves the current demand
    (utilisation target <= 1); with any of them unknown we cannot tell what the replicas in place serve, so
    the count never goes below them.
    """
    reactive, binding, missing = reactive_replicas(
        current_demand, config.capacities, config.fallback_target_utilization, config.fallback_margin
    )
    if missing:
        recommendation = max(reactive, current_replicas)
        if binding is None:
            detail = f"no current demand for {missing}; holding the {current_replicas} replicas in place"
        else:
            detail = (
                f"no current demand for {missing}; the known demand needs {reactive} "
                f"(binding: {binding}), never below the {current_replicas} in place"
            )
    else:
        recommendation = reactive
        detail = (
            f"current demand needs {reactive} replica{'s' if reactive != 1 else ''} at "
            f"{config.fallback_target_utilization:.0%} target utilisation "
            f"+ {config.fallback_margin:.0%} margin (binding: {binding})"
        )
    replicas, held_by = stabilizer.apply(recommendation, current_replicas, now_s)
    reason = f"fallback: {why}; {detail}"
    if held_by is not None:
        reason += f"; stabilised to {replicas} ({held_by})"
    return Decision(
        replicas=replicas,
        recommendation=recommendation,
        reason=reason,
        binding_indicator=binding,
        fallback=True,
        policy=policy,
        fallback_cause=cause,
    )


def _window_words(horizon: int, lead_steps: int) -> str:
    if lead_steps == 0:
        return f"over the next {horizon} step{'s' if horizon != 1 else ''}"
    return f"over steps +{lead_steps + 1}..+{lead_steps + horizon}"


@dataclass
class _Memory:
    """What the decider remembers between calls besides the tracker and the stabiliser.

    `recent` holds the last `lead_steps + 1` decisions as (replicas set, level): the level is the exceedance
    level of a decision whose count the quantile set, None for one the floor, the ceiling, the stabiliser
    or the fallback set. An outcome observed later is credited to the decision whose count was in place.
    """

    recent: deque[tuple[int, float | None]]  # bounded to lead_steps + 1 by the decider
    last_violation: bool | None = None


class Decider:
    """Stateful decision maker for one service: config + calibration tracker + stabiliser.

    `decide` with draws uses the chance constraint at the working level; with `samples=None` (no model,
    stale metrics, no forecast) or when the tracker reports the draws miscalibrated beyond repair, it
    falls back to the reactive rule. `observe` must be fed, once per interval, the demand realised while the
    replicas decided earlier (after the lead time) were in place.
    """

    name: ClassVar[str] = "harmony"

    def __init__(self, config: DecisionConfig) -> None:
        self.config = config
        self.tracker = CalibrationTracker(
            config.tracked_probability,
            forgetting=config.forgetting,
            prior_strength=config.prior_strength,
            gain=config.adaptation_gain,
            min_level=config.min_working_probability,
            max_level=config.max_working_probability,
            credible_mass=config.credible_mass,
            adaptive=config.adaptive,
        )
        self.stabilizer = Stabilizer.from_config(config)
        self._memory = self._fresh_memory()

    def reset(self) -> None:
        self.tracker.reset()
        self.stabilizer.reset()
        self._memory = self._fresh_memory()

    def _fresh_memory(self) -> _Memory:
        # The decisions that can still be in place when an outcome arrives: the last lead_steps + 1.
        return _Memory(recent=deque(maxlen=self.config.lead_steps + 1))

    @property
    def last_violation(self) -> bool | None:
        return self._memory.last_violation

    # decide -------------------------------------------------------------------------------------------
    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
        fallback_reason: str = "no forecast",
    ) -> Decision:
        """One decision at time `now_s` (seconds, non-decreasing across calls).

        `samples` are draws `[S, H, N]` of the indicators `names` (original units) over the window the
        decision is for; indicators without a capacity are ignored, and every demand indicator must be there.
        `current_demand` (latest observed demand per indicator) is used only by the fallback.
        `fallback_reason` words why `samples` is None ("stale metrics", "model missing", ...).
        """
        if current_replicas < 0:
            raise ValueError(f"current_replicas must be >= 0, got {current_replicas}")
        if samples is None:
            return self._fallback(fallback_reason, "no_forecast", current_replicas, now_s, current_demand)
        try:
            draws = DemandDraws(samples, names, self.config.capacities)
        except NonFiniteDraws:
            # A shape or naming error is the caller's bug and propagates; a broken forecast falls back.
            return self._fallback(
                "forecast has NaN or infinite draws", "bad_draws", current_replicas, now_s, current_demand
            )
        if self.config.fallback_on_miscalibration and self.tracker.miscalibrated:
            why = (
                f"forecast miscalibrated (realised violation rate ~{self.tracker.mean:.1%}, credibly above "
                f"{self.tracker.target:.2%} even at {format_level(self.tracker.working_quantile)})"
            )
            return self._fallback(why, "miscalibrated", current_replicas, now_s, current_demand)
        return self._from_draws(draws, current_replicas, now_s)

    def _from_draws(self, draws: DemandDraws, current_replicas: int, now_s: float) -> Decision:
        cfg = self.config
        level = self.tracker.level
        value, rank = draws.quantile(level)
        recommendation = ceil_replicas(min(value, 1e15))  # an absurd draw must clip, not overflow
        replicas, cause = self.stabilizer.apply(recommendation, current_replicas, now_s)
        p_violation = draws.exceedance(replicas)
        cost = cfg.price_per_interval * replicas + cfg.violation_penalty * p_violation
        indicator, step = draws.binding(rank)
        binding_step = cfg.lead_steps + step + 1
        # Only a count the quantile set says anything about the level: not a bound, a stabiliser hold or a
        # step limit, and not a count far above what the level asked (an idle service at its floor, whose
        # draws all need a fraction of a replica, sits there whatever the level: learning from it winds up).
        quantile_set = replicas == recommendation and p_violation >= cfg.informative_fraction * level
        self._memory.recent.append((replicas, level if quantile_set else None))
        quantile = 1.0 - level
        words = format_level(quantile)
        target_words = format_level(1.0 - self.tracker.target)
        if words != target_words:
            words += f" (adapted from {target_words})"
        if cfg.cost_binds:
            words = "cost-optimal " + words
        reason = (
            f"{words} of demand {_window_words(draws.horizon, cfg.lead_steps)} needs {recommendation} "
            f"replica{'s' if recommendation != 1 else ''} (binding: {indicator} at +{binding_step} steps)"
        )
        if cause is not None:
            reason += f"; stabilised to {replicas} ({cause})"
        return Decision(
            replicas=replicas,
            recommendation=recommendation,
            reason=reason,
            binding_indicator=indicator,
            binding_step=binding_step,
            p_violation=p_violation,
            expected_cost=cost,
            quantile_level=quantile,
            fallback=False,
            policy=self.name,
        )

    def _fallback(
        self,
        why: str,
        cause: str,
        current_replicas: int,
        now_s: float,
        current_demand: Mapping[str, float] | None,
    ) -> Decision:
        decision = fallback_decision(
            self.config,
            self.stabilizer,
            why,
            current_replicas,
            now_s,
            current_demand,
            policy=self.name,
            cause=cause,
        )
        self._memory.recent.append((decision.replicas, None))
        return decision

    def _credited_level(self, replicas_in_place: int) -> float | None:
        """The level of the decision whose count is in place, or None when no level set it.

        With a decision every step, the count in place when an outcome is observed is the oldest of the last
        `lead_steps + 1` decisions; with fewer decisions per step it is one of them. So: the oldest of them
        that set `replicas_in_place`; None when it was not the quantile's (floor, ceiling, stabiliser,
        fallback) or when none of them set that count (scaled by hand, or just restarted).
        """
        for replicas, level in self._memory.recent:
            if replicas == replicas_in_place:
                return level
        return None

    # observe ------------------------------------------------------------------------------------------
    def observe(self, realised_demand: Mapping[str, float], replicas_in_place: int) -> bool | None:
        """Feed the outcome of one interval: did realised demand exceed the capacity of the replicas in place?

        The tracker learns only from outcomes whose count the quantile set (see `_credited_level`), credited
        to the level of that decision. Any other outcome (the count was the floor, the ceiling, a stabiliser
        hold, a step limit or the fallback's) says nothing about the draws: the tracker only ages, so that
        idle days at the floor cannot wind the level up. Returns the violation (None if no demand is known).
        """
        violated = is_violation(realised_demand, self.config.capacities, replicas_in_place)
        self._memory.last_violation = violated
        if violated is None:
            return None
        level = self._credited_level(replicas_in_place)
        if level is None:
            self.tracker.age()
        else:
            self.tracker.update(violated, level)
        return violated

    # persistence (the operator restarts; the backtest checkpoints) --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "stabilizer": self.stabilizer.state_dict(),
            "rate_changes": self.stabilizer.rate_state(),
            "recent": [[replicas, level] for replicas, level in self._memory.recent],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.stabilizer.load_state_dict(state["stabilizer"])
        self.stabilizer.load_rate_state(state.get("rate_changes", []))  # absent in state saved before it
        # State saved before "recent" existed (its "last_level" cannot say which count it set) starts empty.
        self._memory = self._fresh_memory()
        self._memory.recent.extend(
            (int(replicas), None if level is None else float(level))
            for replicas, level in state.get("recent", [])
        )

    def with_config(self, **changes: Any) -> Decider:
        """A fresh decider with some config fields changed (for sweeps)."""
        return type(self)(replace(self.config, **changes))
