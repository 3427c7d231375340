"""The Kubernetes Horizontal Pod Autoscaler with its whole `behavior`, as documented (kubernetes.io,
"Horizontal Pod Autoscaling") and as its controller computes it (`pkg/controller/podautoscaler`).

Per metric i: utilisation u_i = demand_i / (current * c_i), ratio = u_i / target_i. The metric proposes the
current count while 1 - down_tolerance <= ratio <= 1 + up_tolerance (default 0.1 both ways; per HPA since
Kubernetes 1.33), else ceil(current * ratio). The desired count is the largest proposal; when a metric is
missing and the others propose a scale-down, scaling is skipped. Then `behavior`: the stabilisation
windows (`harmony.decision.Stabilizer`: the highest recommendation of the scale-down window, the lowest of
the scale-up window), the rate rules of each direction (`RateLimit`), and [min, max].

Rate rules: a rule "Pods v per p seconds" allows the count at the start of the period plus (or minus) v;
"Percent v per p seconds" allows ceil(start * (1 + v/100)) up and floor(start * (1 - v/100)) down, where the
start of the period is the current count less the changes made within the last p seconds. `selectPolicy`
Max takes the rule allowing the largest change, Min the smallest, Disabled forbids scaling that way. The
HPA syncs every `sync_period_s` (15 s): a decision every `interval_s` stands for the syncs of one interval,
each applying the rules again with the same metrics, so a rule whose period is shorter than the interval
compounds over it, and one whose period is longer than the interval limits the change across intervals.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from harmony.decision import Decision, Stabilizer, ceil_replicas
from harmony.decision.rates import RateLimit, RateRule
from harmony.policies.base import ObservesViolations, check_bounds, check_capacities, predicted_violation

__all__ = ["DEFAULT_SCALE_DOWN", "DEFAULT_SCALE_UP", "HPAPolicy", "RateLimit", "RateRule"]

DEFAULT_SCALE_UP = RateLimit.parse("100%/15s,4pods/15s")
DEFAULT_SCALE_DOWN = RateLimit.parse("100%/15s")


class HPAPolicy(ObservesViolations):
    """The Kubernetes HPA on the last observed demand (see the module doc). Pods are taken ready at once: the
    lead time is the backtest's business, as for every policy. At zero current replicas autoscaling is off,
    as in the HPA.

    Knobs: `target_utilization` (one for all metrics or one per metric), `tolerance` (or `up_tolerance` /
    `down_tolerance`), `scale_down_stabilization_s`, `scale_up_stabilization_s`, `scale_up` and
    `scale_down` (`RateLimit`s or their text).
    """

    name: ClassVar[str] = "hpa"

    def __init__(
        self,
        capacities: Mapping[str, float],
        *,
        target_utilization: float | Mapping[str, float] = 0.7,
        min_replicas: int = 1,
        max_replicas: int,
        tolerance: float = 0.1,
        up_tolerance: float | None = None,
        down_tolerance: float | None = None,
        scale_down_stabilization_s: float = 300.0,
        scale_up_stabilization_s: float = 0.0,
        scale_up: RateLimit | str = DEFAULT_SCALE_UP,
        scale_down: RateLimit | str = DEFAULT_SCALE_DOWN,
        interval_s: float = 15.0,
        sync_period_s: float = 15.0,
    ) -> None:
        who = type(self).__name__
        self.capacities = check_capacities(capacities, who)
        check_bounds(min_replicas, max_replicas, who)
        if isinstance(target_utilization, Mapping):
            missing = [n for n in self.capacities if n not in target_utilization]
            if missing:
                raise ValueError(f"{who}: no target_utilization for {missing}")
            targets = {n: float(target_utilization[n]) for n in self.capacities}
        else:
            targets = dict.fromkeys(self.capacities, float(target_utilization))
        for n, t in targets.items():
            if not t > 0:
                raise ValueError(f"{who}: target_utilization for {n!r} must be > 0, got {t}")
        self.up_tolerance = tolerance if up_tolerance is None else up_tolerance
        self.down_tolerance = tolerance if down_tolerance is None else down_tolerance
        if self.up_tolerance < 0 or not 0 <= self.down_tolerance < 1:
            raise ValueError(
                f"{who}: tolerances must be >= 0 (and < 1 down), got up {self.up_tolerance}, "
                f"down {self.down_tolerance}"
            )
        if not (interval_s > 0 and sync_period_s > 0):
            raise ValueError(f"{who}: interval_s and sync_period_s must be > 0")
        self.targets = targets
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.scale_up = RateLimit.parse(scale_up) if isinstance(scale_up, str) else scale_up
        self.scale_down = RateLimit.parse(scale_down) if isinstance(scale_down, str) else scale_down
        self.sync_period_s = sync_period_s
        self.syncs_per_interval = max(1, math.floor(interval_s / sync_period_s + 1e-9))
        self.stabilizer = Stabilizer(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            scale_down_stabilization_s=scale_down_stabilization_s,
            scale_up_stabilization_s=scale_up_stabilization_s,
        )
        # (time, change) of every scaling within the longest rule period: what the rate rules count.
        self._events: deque[tuple[float, int]] = deque()
        self._memory_s = max(self.scale_up.longest_period_s, self.scale_down.longest_period_s)

    def reset(self) -> None:
        self.stabilizer.reset()
        self._events.clear()

    # the metric step --------------------------------------------------------------------------------------
    def metric_proposal(self, name: str, demand: float, current: int) -> tuple[int, float]:
        """(count, ratio) one metric proposes for `demand` at `current` replicas, tolerance applied."""
        ratio = demand / (current * self.capacities[name]) / self.targets[name]
        if 1.0 - self.down_tolerance <= ratio <= 1.0 + self.up_tolerance:
            return current, ratio
        return ceil_replicas(current * ratio), ratio

    def proposals(
        self,
        current_replicas: int,
        current_demand: Mapping[str, float] | None,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
    ) -> tuple[list[tuple[int, str, float]], list[str]]:
        """(count, metric, ratio) proposed by each metric with a value, and the metrics without one."""
        del samples, names  # the HPA sees only the metrics' current values
        out: list[tuple[int, str, float]] = []
        missing: list[str] = []
        for name in self.capacities:
            d = None if current_demand is None else current_demand.get(name)
            if d is None or not math.isfinite(d):
                missing.append(name)
                continue
            count, ratio = self.metric_proposal(name, d, current_replicas)
            out.append((count, name, ratio))
        return out, missing

    def proposal(
        self,
        current_replicas: int,
        current_demand: Mapping[str, float] | None,
        samples: NDArray[np.floating[Any]] | None = None,
        names: Sequence[str] = (),
    ) -> tuple[int, str | None, str]:
        """The metric step: (desired replicas before behaviour, binding metric, one-line explanation)."""
        proposals, missing = self.proposals(current_replicas, current_demand, samples, names)
        if not proposals:
            return current_replicas, None, f"no metric for {missing}; holding {current_replicas}"
        desired, binding, ratio = max(proposals, key=lambda p: p[0])
        base = binding.removesuffix(" (forecast)")
        if desired == current_replicas and 1.0 - self.down_tolerance <= ratio <= 1.0 + self.up_tolerance:
            text = f"{binding} at {ratio:.2f}x its target is within the tolerance"
        else:
            target = self.targets[base]
            text = f"{binding} at {ratio:.2f}x its {target:.0%} utilisation target proposes {desired}"
        if missing and desired < current_replicas:
            return current_replicas, binding, f"{text}, but {missing} missing: no scale-down"
        return desired, binding, text

    # behaviour --------------------------------------------------------------------------------------------
    def _changes(self, now_s: float, period_s: float) -> tuple[float, float]:
        """Pods added and deleted by scalings within the last `period_s` seconds (strictly younger)."""
        added = deleted = 0.0
        for t, change in self._events:
            if t > now_s - period_s:
                if change > 0:
                    added += change
                else:
                    deleted -= change
        return added, deleted

    def _limits(self, current: int, now_s: float) -> tuple[int, int]:
        up_changes = [self._changes(now_s, r.period_s) for r in self.scale_up.rules]
        down_changes = [self._changes(now_s, r.period_s) for r in self.scale_down.rules]
        up = self.scale_up.limit(current, [a for a, _ in up_changes], [d for _, d in up_changes], True)
        down = self.scale_down.limit(
            current, [a for a, _ in down_changes], [d for _, d in down_changes], False
        )
        return max(up, current), min(down, current)

    def _rate_limited(self, target: int, current: int, now_s: float) -> tuple[int, bool]:
        """Apply the rate rules over the syncs of one interval, moving towards `target`."""
        hit = False
        while self._events and self._events[0][0] <= now_s - self._memory_s:
            self._events.popleft()
        for k in range(self.syncs_per_interval):
            if current == target:
                break
            t = now_s + k * self.sync_period_s
            up, down = self._limits(current, t)
            step = min(max(target, down), up)
            hit = hit or step != target
            if step != current:
                self._events.append((t, step - current))
                current = step
        return current, hit and current != target

    def decide(
        self,
        samples: NDArray[np.floating[Any]] | None,
        names: Sequence[str],
        current_replicas: int,
        now_s: float,
        *,
        current_demand: Mapping[str, float] | None = None,
    ) -> Decision:
        if current_replicas < 0:
            raise ValueError(f"current_replicas must be >= 0, got {current_replicas}")
        if current_replicas == 0 and self.min_replicas > 0:
            return Decision(
                replicas=0,
                recommendation=0,
                reason=f"{self.name}: the target is scaled to zero; autoscaling is disabled until it is "
                "scaled up",
                p_violation=predicted_violation(samples, names, self.capacities, 0),
                policy=self.name,
            )
        desired, binding, text = self.proposal(current_replicas, current_demand, samples, names)
        stabilised, cause = self.stabilizer.apply(desired, current_replicas, now_s)
        replicas, limited = self._rate_limited(stabilised, current_replicas, now_s)
        if limited:
            cause = "scaling policy rate limit"
        bounded = min(max(replicas, self.min_replicas), self.max_replicas)
        if bounded != replicas:
            replicas, cause = bounded, ("min_replicas" if bounded > replicas else "max_replicas")
        reason = f"{self.name}: {text}"
        if cause is not None and replicas != desired:
            reason += f"; stabilised to {replicas} ({cause})"
        return Decision(
            replicas=replicas,
            recommendation=desired,
            reason=reason,
            binding_indicator=None if binding is None else binding.removesuffix(" (forecast)"),
            p_violation=predicted_violation(samples, names, self.capacities, replicas),
            policy=self.name,
        )
