"""`Stabilizer`: the one place where a recommendation becomes a replica count, for HARMONY, the forecast
baselines and the HPA policy alike: stabilisation windows, step limits and the [min, max] bounds."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from harmony.decision.config import DecisionConfig
from harmony.decision.rates import RateLimit

__all__ = ["Stabilizer"]

# Decision times are sums of float steps: a recommendation exactly one window old must not drop out by a
# rounding error.
_TIME_SLACK_S = 1e-6


class Stabilizer:
    """The one place where a recommendation becomes a replica count.

    Order: clip the recommendation to [min, max] and record it with its time; stabilise like the HPA (the
    result stays at the current count unless the lowest recommendation of the scale-up window is above it or
    the highest of the scale-down window is below it); limit the step up/down; apply the HPA rate rules of
    the direction (`RateLimit`, against the changes this stabiliser made within each rule's period); clip to
    [min, max] again (the bounds win over the step and rate limits).

    A window of W seconds holds the recommendations made at most W seconds ago, the current one included.
    The HPA controller syncs every 15 s and keeps those strictly younger than W; a caller deciding once per
    step of T seconds stands for the syncs of a whole step, and the syncs of the previous step (the last one
    15 s ago) are inside the window as soon as W >= T. So with decisions every T seconds a window holds the
    recommendations of the last floor(W / T) decisions besides the current one, and a window shorter than one
    decision interval has no effect (the backtest's configuration check says so).
    """

    def __init__(
        self,
        *,
        min_replicas: int,
        max_replicas: int,
        scale_down_stabilization_s: float = 300.0,
        scale_up_stabilization_s: float = 0.0,
        max_scale_up_step: int | None = None,
        max_scale_down_step: int | None = None,
        scale_up_rate: RateLimit | None = None,
        scale_down_rate: RateLimit | None = None,
    ) -> None:
        if min_replicas < 0 or max_replicas < max(1, min_replicas):
            raise ValueError(
                f"need 0 <= min_replicas ({min_replicas}) <= max_replicas ({max_replicas}), max >= 1"
            )
        if scale_down_stabilization_s < 0 or scale_up_stabilization_s < 0:
            raise ValueError("stabilisation windows must be >= 0 seconds")
        for step in (max_scale_up_step, max_scale_down_step):
            if step is not None and step < 1:
                raise ValueError(f"step limits must be None or >= 1, got {step}")
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.down_window_s = scale_down_stabilization_s
        self.up_window_s = scale_up_stabilization_s
        self.max_up = max_scale_up_step
        self.max_down = max_scale_down_step
        self.up_rate = scale_up_rate
        self.down_rate = scale_down_rate
        self._history: deque[tuple[float, int]] = deque()
        # (time, replicas added (> 0) or removed (< 0)) of each change made, for the rate rules.
        self._changes: deque[tuple[float, int]] = deque()

    @classmethod
    def from_config(cls, config: DecisionConfig) -> Stabilizer:
        return cls(
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            scale_down_stabilization_s=config.scale_down_stabilization_s,
            scale_up_stabilization_s=config.scale_up_stabilization_s,
            max_scale_up_step=config.max_scale_up_step,
            max_scale_down_step=config.max_scale_down_step,
            scale_up_rate=config.scale_up_rate,
            scale_down_rate=config.scale_down_rate,
        )

    def reset(self) -> None:
        self._history.clear()
        self._changes.clear()

    def _made_within(self, rate: RateLimit, now_s: float) -> tuple[list[float], list[float]]:
        """Replicas added and removed by the changes made strictly within each rule's period."""
        added, removed = [], []
        for rule in rate.rules:
            recent = [c for t, c in self._changes if t > now_s - rule.period_s + _TIME_SLACK_S]
            added.append(float(sum(c for c in recent if c > 0)))
            removed.append(float(-sum(c for c in recent if c < 0)))
        return added, removed

    def _rate_limited(self, result: int, current: int, now_s: float) -> tuple[int, str | None]:
        longest = max(
            (r.longest_period_s for r in (self.up_rate, self.down_rate) if r is not None), default=0.0
        )
        while self._changes and self._changes[0][0] <= now_s - longest:
            self._changes.popleft()
        if result > current and self.up_rate is not None:
            limit = self.up_rate.limit(current, *self._made_within(self.up_rate, now_s), up=True)
            if result > limit:
                return max(limit, current), f"scale-up rate {self.up_rate.text()}"
        if result < current and self.down_rate is not None:
            limit = self.down_rate.limit(current, *self._made_within(self.down_rate, now_s), up=False)
            if result < limit:
                return min(limit, current), f"scale-down rate {self.down_rate.text()}"
        return result, None

    def clip(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)

    def apply(self, recommendation: int, current_replicas: int, now_s: float) -> tuple[int, str | None]:
        """(replicas to set, why they differ from the recommendation or None)."""
        if self._history and now_s < self._history[-1][0]:
            raise ValueError(
                f"time went backwards ({now_s} < {self._history[-1][0]}): call reset() before replaying"
            )
        rec = self.clip(recommendation)
        cause: str | None = None
        if rec != recommendation:
            cause = "min_replicas" if rec > recommendation else "max_replicas"
        horizon = max(self.down_window_s, self.up_window_s)
        while self._history and self._history[0][0] < now_s - horizon - _TIME_SLACK_S:
            self._history.popleft()
        down = up = rec
        for t, r in self._history:
            age = now_s - t
            if self.down_window_s > 0 and age <= self.down_window_s + _TIME_SLACK_S:
                down = max(down, r)
            if self.up_window_s > 0 and age <= self.up_window_s + _TIME_SLACK_S:
                up = min(up, r)
        self._history.append((now_s, rec))
        result = current_replicas
        if result < up:
            result = up
        if result > down:
            result = down
        if result != rec:
            cause = "scale-down window" if result > rec else "scale-up window"
        if self.max_up is not None and result > current_replicas + self.max_up:
            result, cause = current_replicas + self.max_up, "max step up"
        if self.max_down is not None and result < current_replicas - self.max_down:
            result, cause = current_replicas - self.max_down, "max step down"
        if self.up_rate is not None or self.down_rate is not None:
            limited, why = self._rate_limited(result, current_replicas, now_s)
            if why is not None:
                result, cause = limited, why
        bounded = self.clip(result)
        if bounded != result:
            result, cause = bounded, ("min_replicas" if bounded > result else "max_replicas")
        if result != current_replicas and (self.up_rate is not None or self.down_rate is not None):
            self._changes.append((now_s, result - current_replicas))
        return result, (cause if result != recommendation else None)

    def state_dict(self) -> list[tuple[float, int]]:
        return list(self._history)

    def rate_state(self) -> list[tuple[float, int]]:
        """The changes the rate rules still remember (the Decider saves them beside `state_dict`)."""
        return list(self._changes)

    def load_rate_state(self, state: Sequence[tuple[float, int]]) -> None:
        self._changes = deque((float(t), int(c)) for t, c in state)

    def load_state_dict(self, state: Sequence[tuple[float, int]]) -> None:
        self._history = deque((float(t), int(r)) for t, r in state)
