"""From forecast draws to a replica count: chance constraint, newsvendor, Bayesian adaptation, stabilisation.

The same code runs in the offline backtest and in the Kubernetes operator, so everything here is pure numpy
and deterministic given its inputs and state. See docs/decision.md for the maths; in short:

* `DemandDraws` turns draws `Y [S, H, N]` of the demand indicators into `R_s = max_{h,i} Y[s,h,i] / c_i`,
  the replicas each draw needs over the window, and answers quantiles and exceedance probabilities of R.
* `CalibrationTracker` keeps a discounted Beta posterior on the realised violation rate and moves the
  working exceedance level so that the realised rate stays at the target.
* `Stabilizer` is the one place where a recommendation becomes a replica count: scale-down window (the
  highest recommendation within it, as the HPA), maximum step up/down, clipping to [min, max].
* `Decider` ties them together: `decide(...) -> Decision`, `observe(...)` after the lead time, and a
  reactive fallback when there is no usable forecast.

The lead time (cold start) is the caller's business: the draws passed to `decide` must already cover the
steps the decision is for (the forecaster's horizon starts after its lead time), and `observe` must be
called with the demand realised while the replicas of that decision were in place.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CalibrationTracker",
    "Decider",
    "Decision",
    "DecisionConfig",
    "DemandDraws",
    "NonFiniteDraws",
    "Stabilizer",
    "beta_cdf",
    "beta_quantile",
    "ceil_replicas",
    "fallback_decision",
    "format_level",
    "is_violation",
    "reactive_replicas",
]

FloatArray = NDArray[np.float64]

# A ratio like 7.000000000000001 (a float artefact of demand / capacity) must need 7 replicas, not 8.
_CEIL_RELATIVE_SLACK = 1e-9


def ceil_replicas(x: float) -> int:
    """`ceil(x)` for a replica count, forgiving float noise a billionth above an integer; never below 0."""
    if not math.isfinite(x):
        raise ValueError(f"replica count must be finite, got {x}")
    return max(0, math.ceil(x - _CEIL_RELATIVE_SLACK * max(1.0, abs(x))))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _expit(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def format_level(quantile: float) -> str:
    """0.99 -> 'p99', 0.995 -> 'p99.5', 0.98765 -> 'p98.8': two significant digits of the exceedance."""
    exceed_pct = 100.0 * (1.0 - quantile)
    digits = 0 if exceed_pct <= 0 else max(0, math.ceil(-math.log10(exceed_pct)) + 1)
    text = f"{100.0 * quantile:.{digits}f}"
    return "p" + (text.rstrip("0").rstrip(".") if "." in text else text)


# --- Beta distribution (numpy/math only: the operator image carries no scipy) ---------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction 1/(1+ d1/(1+ d2/(1+ ...))) of I_x(a, b) (DLMF 8.17.22), by modified Lentz."""
    tiny = 1e-300
    f = tiny
    c = f
    d = 0.0
    for j in range(1, 1000):
        if j == 1:
            coef = 1.0
        else:
            k = j - 1  # the index of d_k in DLMF's notation
            m = k // 2
            if k % 2 == 0:
                coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
            else:
                coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + coef * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + coef / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return f


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b): P(X <= x) for X ~ Beta(a, b)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta parameters must be > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    # The fraction converges fast only left of the mode; use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) past it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def beta_quantile(p: float, a: float, b: float) -> float:
    """Inverse of `beta_cdf` in x: Newton steps on the density, kept inside a bisection bracket."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return p
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    lo, hi = 0.0, 1.0
    x = a / (a + b)
    for _ in range(200):
        err = beta_cdf(x, a, b) - p
        if err < 0:
            lo = x
        else:
            hi = x
        density = math.exp((a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_norm)
        step = x - err / density if density > 0 else -1.0
        # Newton converges fast near the root; a step leaving the bracket falls back to bisection.
        x_next = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(x_next - x) <= 1e-14 * max(x, 1e-300) or hi - lo < 1e-16:
            return x_next
        x = x_next
    return x


# --- configuration ---------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"DecisionConfig: {message}")


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class DecisionConfig:
    """Everything the decision needs to know about the service, its SLA and its prices.

    Units: `replica_hour_price` is the price of one replica for one hour; `violation_penalty` is the cost of
    one violation event, i.e. one decision interval during which demand exceeded the capacity of the
    replicas in place (same currency). The newsvendor compares the price of one replica for one interval,
    `replica_hour_price * interval_s / 3600`, with that penalty. `violation_penalty = 0` turns the cost
    term off (the SLA alone decides).

    The fields after `fallback_margin` tune the Bayesian adaptation (see `CalibrationTracker`) and the
    wording of reasons; their defaults suit decision intervals of one to five minutes.
    """

    capacities: dict[str, float]
    max_replicas: int
    max_violation_probability: float = 0.01
    replica_hour_price: float = 1.0
    violation_penalty: float = 0.0
    interval_s: float = 60.0
    min_replicas: int = 1
    scale_down_stabilization_s: float = 300.0
    max_scale_up_step: int | None = None
    max_scale_down_step: int | None = None
    fallback_target_utilization: float = 0.7
    fallback_margin: float = 0.1
    adaptive: bool = True
    forgetting: float = 0.995
    prior_strength: float | None = None
    adaptation_gain: float = 1.0
    min_working_probability: float = 1e-4
    max_working_probability: float = 0.5
    credible_mass: float = 0.9
    fallback_on_miscalibration: bool = True
    lead_steps: int = 0

    def __post_init__(self) -> None:
        _require(isinstance(self.capacities, Mapping), "capacities must be a mapping indicator -> capacity")
        _require(len(self.capacities) > 0, "capacities is empty: name at least one demand indicator")
        for name, cap in self.capacities.items():
            _require(isinstance(name, str) and bool(name), f"capacity key {name!r} is not an indicator name")
            _require(
                isinstance(cap, int | float) and math.isfinite(cap) and cap > 0,
                f"capacities[{name!r}] = {cap!r}: per-replica capacity must be a finite number > 0",
            )
        # A private copy: the caller mutating its dict must not change a frozen config.
        object.__setattr__(self, "capacities", {k: float(v) for k, v in self.capacities.items()})
        eps = self.max_violation_probability
        _require(0.0 < eps < 1.0, f"max_violation_probability must be in (0, 1), got {eps}")
        _require(
            self.replica_hour_price >= 0, f"replica_hour_price must be >= 0, got {self.replica_hour_price}"
        )
        _require(self.violation_penalty >= 0, f"violation_penalty must be >= 0, got {self.violation_penalty}")
        _require(self.interval_s > 0, f"interval_s must be > 0 seconds, got {self.interval_s}")
        _require(
            _is_int(self.min_replicas) and self.min_replicas >= 0, "min_replicas must be an integer >= 0"
        )
        _require(
            _is_int(self.max_replicas) and self.max_replicas >= max(1, self.min_replicas),
            f"max_replicas must be an integer >= max(1, min_replicas={self.min_replicas}), "
            f"got {self.max_replicas!r}",
        )
        _require(
            self.scale_down_stabilization_s >= 0,
            f"scale_down_stabilization_s must be >= 0, got {self.scale_down_stabilization_s}",
        )
        for key in ("max_scale_up_step", "max_scale_down_step"):
            step = getattr(self, key)
            _require(step is None or (_is_int(step) and step >= 1), f"{key} must be None or an integer >= 1")
        _require(
            0.0 < self.fallback_target_utilization <= 1.0,
            f"fallback_target_utilization must be in (0, 1], got {self.fallback_target_utilization}",
        )
        _require(self.fallback_margin >= 0, f"fallback_margin must be >= 0, got {self.fallback_margin}")
        _require(0.0 < self.forgetting <= 1.0, f"forgetting must be in (0, 1], got {self.forgetting}")
        _require(
            self.prior_strength is None or self.prior_strength > 0,
            f"prior_strength must be None or > 0, got {self.prior_strength}",
        )
        _require(
            0.0 < self.adaptation_gain <= 1.0,
            f"adaptation_gain must be in (0, 1], got {self.adaptation_gain}",
        )
        lo, hi = self.min_working_probability, self.max_working_probability
        _require(
            0.0 < lo < hi < 1.0,
            f"need 0 < min_working_probability ({lo}) < max_working_probability ({hi}) < 1",
        )
        _require(0.0 < self.credible_mass < 1.0, f"credible_mass must be in (0, 1), got {self.credible_mass}")
        _require(_is_int(self.lead_steps) and self.lead_steps >= 0, "lead_steps must be an integer >= 0")

    @property
    def price_per_interval(self) -> float:
        """Price of one replica for one decision interval."""
        return self.replica_hour_price * self.interval_s / 3600.0

    @property
    def cost_probability(self) -> float | None:
        """Critical fractile of the newsvendor: the cost-optimal P(violation) = price per interval / penalty.

        None when the penalty does not exceed the price of a replica-interval: then adding a replica never
        pays for itself and only the SLA constrains the count.
        """
        if self.violation_penalty <= self.price_per_interval:
            return None
        return self.price_per_interval / self.violation_penalty

    @property
    def target_probability(self) -> float:
        """The exceedance level the decision aims at: the stricter of the SLA and the critical fractile."""
        cost = self.cost_probability
        return self.max_violation_probability if cost is None else min(self.max_violation_probability, cost)

    @property
    def tracked_probability(self) -> float:
        """`target_probability` kept within [min_working_probability, max_working_probability]."""
        return min(max(self.target_probability, self.min_working_probability), self.max_working_probability)

    @property
    def cost_binds(self) -> bool:
        cost = self.cost_probability
        return cost is not None and cost < self.max_violation_probability


# --- what a decision says --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One decision and why.

    `recommendation` is the raw count the rule asked for (before clipping and stabilisation); `replicas` is
    what to set. `p_violation` is the predicted probability, over the draws, that demand exceeds the capacity
    of `replicas` at some step of the window; `expected_cost` is `price_per_interval * replicas + penalty *
    p_violation` for one interval. `quantile_level` is the working quantile 1 - eps_eff that was used.
    `binding_step` counts steps after the last observation (the lead time included).
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (for a CR status, a log line, a backtest table)."""
        return asdict(self)


# --- draws of the replicas needed ------------------------------------------------------------------------


class NonFiniteDraws(ValueError):
    """The draws contain NaN or inf: a broken forecast, which the decider answers with its fallback."""


# Past the largest draw the tail is exponential: scale = mean excess of the top 10% over their threshold.
_TAIL_FRACTION = 0.1


class DemandDraws:
    """The replicas needed in each draw, `R_s = max_{h,i} Y[s,h,i] / c_i`, sorted, with their argmax.

    Quantile rule (documented in docs/decision.md): for an exceedance level e >= 1/S, the smallest draw r
    of R with empirical P(R <= r) >= 1 - e (numpy's `inverted_cdf`), so that at most floor(e*S) draws lie
    above it and P(R > ceil(r)) <= e holds on the draws. For e < 1/S the draws say nothing, so the tail above
    the largest draw is extrapolated as exponential: Q = r_max + beta * ln(1 / (S * e)), beta the mean excess
    of the top 10% of draws over the next one (peaks over threshold).
    """

    __slots__ = ("_arg", "_draws", "_order", "horizon", "names", "ratios_sorted", "tail_scale")

    def __init__(
        self, samples: NDArray[np.floating[Any]], names: Sequence[str], capacities: Mapping[str, float]
    ) -> None:
        y = np.asarray(samples, dtype=np.float64)
        if y.ndim != 3:
            raise ValueError(f"samples must be [S, H, N] draws, got shape {y.shape}")
        if y.shape[2] != len(names):
            raise ValueError(f"samples have {y.shape[2]} indicators but {len(names)} names: {list(names)}")
        if y.shape[0] < 1 or y.shape[1] < 1:
            raise ValueError(f"samples need at least one draw and one step, got shape {y.shape}")
        missing = [n for n in capacities if n not in names]
        if missing:
            raise ValueError(
                f"the draws do not cover demand indicator(s) {missing} (have {list(names)}): deciding "
                "without them would ignore their load"
            )
        cols = [k for k, n in enumerate(names) if n in capacities]
        self.names: tuple[str, ...] = tuple(names[k] for k in cols)
        caps = np.array([capacities[n] for n in self.names], dtype=np.float64)
        s, h = int(y.shape[0]), int(y.shape[1])
        self.horizon: int = h
        flat = (y[:, :, cols] / caps).reshape(s, h * len(cols))
        if not np.isfinite(flat).all():
            raise NonFiniteDraws("the draws contain NaN or infinite values")
        arg = flat.argmax(axis=1)
        ratios = flat[np.arange(s), arg]
        self._order = np.argsort(ratios, kind="stable")
        self.ratios_sorted: FloatArray = ratios[self._order]
        self._arg = arg
        self._draws: int = int(s)
        k = max(1, min(s - 1, round(_TAIL_FRACTION * s)))
        if s >= 2:
            top = self.ratios_sorted[s - k :]
            self.tail_scale: float = float(np.mean(top - self.ratios_sorted[s - k - 1]))
        else:
            self.tail_scale = 0.0

    @property
    def n_draws(self) -> int:
        return self._draws

    def quantile(self, exceedance: float) -> tuple[float, int]:
        """(Q_{1-e}(R), rank of the draw that sets it in sorted order)."""
        if not 0.0 < exceedance < 1.0:
            raise ValueError(f"exceedance level must be in (0, 1), got {exceedance}")
        s = self._draws
        allowed = math.floor(exceedance * s + 1e-9)  # draws allowed above the quantile
        if allowed >= 1:
            rank = max(0, s - 1 - allowed)
            return float(self.ratios_sorted[rank]), rank
        top = float(self.ratios_sorted[-1])
        return top + self.tail_scale * math.log(1.0 / (s * exceedance)), s - 1

    def exceedance(self, replicas: float) -> float:
        """P(R > replicas): the fraction of draws above it, or the exponential tail past the largest draw."""
        top = float(self.ratios_sorted[-1])
        s = self._draws
        if replicas < top:
            above = s - int(np.searchsorted(self.ratios_sorted, replicas, side="right"))
            return above / s
        if self.tail_scale <= 0.0:
            return 0.0
        return math.exp(-(replicas - top) / self.tail_scale) / s

    def binding(self, rank: int) -> tuple[str, int]:
        """(indicator, 0-based horizon step) at which the draw of sorted rank `rank` attains its maximum."""
        flat = int(self._arg[self._order[rank]])
        step, col = divmod(flat, len(self.names))
        return self.names[col], step


# --- Bayesian adaptation ---------------------------------------------------------------------------------


class CalibrationTracker:
    """Discounted Beta posterior on the realised violation rate, and the working exceedance level.

    Each observation is a Bernoulli outcome v (did realised demand exceed the replicas in place?) of a
    decision taken at working level e. With forgetting factor lam the discounted counts are
    W = sum lam^age, V = sum lam^age * v and X = sum lam^age * logit(e); the posterior on the violation
    rate is Beta(alpha, beta) = Beta(m0 * tau + V, m0 * (1 - tau) + W - V), with tau the target and m0 the
    prior strength (default min(1/tau, 0.5/(1-lam)), i.e. Beta(1, 1/tau - 1) when the memory allows).

    Rule: the forecaster's miscalibration in log-odds is d = logit(posterior mean) - X / W (how much more
    often violations happen than the levels asked for), and the working level moves a fraction `gain` of the
    way to logit(e) = logit(tau) - d, clipped to [min_level, max_level]. With a steady level this is the
    multiplicative update odds(e') = odds(e) * odds(tau) / odds(mean). Its fixed point has posterior mean tau,
    i.e. the realised rate equals tau (the prior is centred on tau, so it shrinks towards "no change").
    """

    def __init__(
        self,
        target: float,
        *,
        forgetting: float = 0.995,
        prior_strength: float | None = None,
        gain: float = 1.0,
        min_level: float = 1e-4,
        max_level: float = 0.5,
        credible_mass: float = 0.9,
        adaptive: bool = True,
    ) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target violation probability must be in (0, 1), got {target}")
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        if not 0.0 < min_level <= target <= max_level < 1.0:
            raise ValueError(
                f"need 0 < min_level ({min_level}) <= target ({target}) <= max_level ({max_level}) < 1"
            )
        if not 0.0 < credible_mass < 1.0:
            raise ValueError(f"credible_mass must be in (0, 1), got {credible_mass}")
        self.target = target
        self.forgetting = forgetting
        memory = math.inf if forgetting == 1.0 else 1.0 / (1.0 - forgetting)
        self.prior_strength = (
            prior_strength if prior_strength is not None else min(1.0 / target, 0.5 * memory)
        )
        if not self.prior_strength > 0:
            raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
        self.gain = gain
        self.min_level = min_level
        self.max_level = max_level
        self.credible_mass = credible_mass
        self.adaptive = adaptive
        self.reset()

    def reset(self) -> None:
        self._w = 0.0  # discounted number of observations
        self._v = 0.0  # discounted number of violations
        self._x = 0.0  # discounted sum of logit(level used)
        self._logit_level = _logit(self.target)
        self._logit_desired = self._logit_level
        self.n_updates = 0

    # posterior ----------------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self.prior_strength * self.target + self._v

    @property
    def beta(self) -> float:
        return self.prior_strength * (1.0 - self.target) + self._w - self._v

    @property
    def mean(self) -> float:
        """Posterior mean of the violation rate at the recent working levels."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def effective_observations(self) -> float:
        return self._w

    def credible_interval(self, mass: float | None = None) -> tuple[float, float]:
        """Equal-tailed credible interval of the violation rate (default mass: `credible_mass`)."""
        m = self.credible_mass if mass is None else mass
        if not 0.0 < m < 1.0:
            raise ValueError(f"credible mass must be in (0, 1), got {m}")
        tail = 0.5 * (1.0 - m)
        return beta_quantile(tail, self.alpha, self.beta), beta_quantile(1.0 - tail, self.alpha, self.beta)

    # working level ------------------------------------------------------------------------------------
    @property
    def level(self) -> float:
        """eps_eff: the exceedance level the next decision asks of the draws."""
        return _expit(self._logit_level)

    @property
    def working_quantile(self) -> float:
        return 1.0 - self.level

    @property
    def miscalibration_log_odds(self) -> float:
        """d = logit(posterior mean) - mean logit(level used); 0 before any observation."""
        if self._w <= 0.0:
            return 0.0
        return _logit(self.mean) - self._x / self._w

    @property
    def miscalibrated(self) -> bool:
        """The draws cannot keep the target: the rule wants a level below `min_level` and the posterior is
        credibly above the target even at the most conservative level allowed."""
        if not self.adaptive or self._logit_desired >= _logit(self.min_level):
            return False
        # Lower credible bound > target  <=>  P(rate <= target) < lower tail mass: one CDF, no inversion.
        return beta_cdf(self.target, self.alpha, self.beta) < 0.5 * (1.0 - self.credible_mass)

    def update(self, violated: bool, level: float | None = None) -> None:
        """One realised outcome of a decision taken at exceedance `level` (default: the current level)."""
        lam = self.forgetting
        used = self._logit_level if level is None else _logit(min(max(level, 1e-12), 1.0 - 1e-12))
        self._w = lam * self._w + 1.0
        self._v = lam * self._v + (1.0 if violated else 0.0)
        self._x = lam * self._x + used
        self.n_updates += 1
        if not self.adaptive:
            return
        self._logit_desired = _logit(self.target) - self.miscalibration_log_odds
        step = self._logit_level + self.gain * (self._logit_desired - self._logit_level)
        self._logit_level = min(max(step, _logit(self.min_level)), _logit(self.max_level))

    def age(self) -> None:
        """An interval without evidence about the draws (e.g. under the fallback): old evidence fades."""
        lam = self.forgetting
        self._w *= lam
        self._v *= lam
        self._x *= lam

    def state_dict(self) -> dict[str, float | int]:
        return {
            "w": self._w,
            "v": self._v,
            "x": self._x,
            "logit_level": self._logit_level,
            "logit_desired": self._logit_desired,
            "n_updates": self.n_updates,
        }

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self._w = float(state["w"])
        self._v = float(state["v"])
        self._x = float(state["x"])
        self._logit_level = float(state["logit_level"])
        self._logit_desired = float(state["logit_desired"])
        self.n_updates = int(state["n_updates"])

    def summary(self) -> dict[str, float]:
        """The posterior and the working level, for a status or a log line."""
        lo, hi = self.credible_interval()
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "mean": self.mean,
            "credible_low": lo,
            "credible_high": hi,
            "eps_eff": self.level,
            "working_quantile": self.working_quantile,
            "target": self.target,
            "effective_observations": self._w,
        }


# --- stabilisation ---------------------------------------------------------------------------------------


class Stabilizer:
    """The one place where a recommendation becomes a replica count.

    Order: clip the recommendation to [min, max] and record it with its time; stabilise like the HPA (the
    result stays at the current count unless the lowest recommendation of the scale-up window is above it or
    the highest of the scale-down window is below it; a window keeps recommendations strictly younger than
    its length); limit the step up/down; clip to [min, max] again (the bounds win over the step limits).
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
        self._history: deque[tuple[float, int]] = deque()

    @classmethod
    def from_config(cls, config: DecisionConfig) -> Stabilizer:
        return cls(
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            scale_down_stabilization_s=config.scale_down_stabilization_s,
            max_scale_up_step=config.max_scale_up_step,
            max_scale_down_step=config.max_scale_down_step,
        )

    def reset(self) -> None:
        self._history.clear()

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
        while self._history and self._history[0][0] <= now_s - horizon:
            self._history.popleft()
        down = up = rec
        for t, r in self._history:
            if t > now_s - self.down_window_s:
                down = max(down, r)
            if t > now_s - self.up_window_s:
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
        bounded = self.clip(result)
        if bounded != result:
            result, cause = bounded, ("min_replicas" if bounded > result else "max_replicas")
        return result, (cause if result != recommendation else None)

    def state_dict(self) -> list[tuple[float, int]]:
        return list(self._history)

    def load_state_dict(self, state: Sequence[tuple[float, int]]) -> None:
        self._history = deque((float(t), int(r)) for t, r in state)


# --- helpers shared with the baselines -------------------------------------------------------------------


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
) -> Decision:
    """The reactive rule with a safety margin, never below the safe floor, through `stabilizer`.

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
    replicas, cause = stabilizer.apply(recommendation, current_replicas, now_s)
    reason = f"fallback: {why}; {detail}"
    if cause is not None:
        reason += f"; stabilised to {replicas} ({cause})"
    return Decision(
        replicas=replicas,
        recommendation=recommendation,
        reason=reason,
        binding_indicator=binding,
        fallback=True,
        policy=policy,
    )


def _window_words(horizon: int, lead_steps: int) -> str:
    if lead_steps == 0:
        return f"over the next {horizon} step{'s' if horizon != 1 else ''}"
    return f"over steps +{lead_steps + 1}..+{lead_steps + horizon}"


# --- the decider -----------------------------------------------------------------------------------------


@dataclass
class _Memory:
    """What the decider remembers between calls besides the tracker and the stabiliser."""

    last_level: float | None = None  # exceedance level of the last model decision; None after a fallback
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
        self._memory = _Memory()

    def reset(self) -> None:
        self.tracker.reset()
        self.stabilizer.reset()
        self._memory = _Memory()

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
            return self._fallback(fallback_reason, current_replicas, now_s, current_demand)
        try:
            draws = DemandDraws(samples, names, self.config.capacities)
        except NonFiniteDraws:
            # A shape or naming error is the caller's bug and propagates; a broken forecast falls back.
            return self._fallback(
                "forecast has NaN or infinite draws", current_replicas, now_s, current_demand
            )
        if self.config.fallback_on_miscalibration and self.tracker.miscalibrated:
            why = (
                f"forecast miscalibrated (realised violation rate ~{self.tracker.mean:.1%}, credibly above "
                f"{self.tracker.target:.2%} even at {format_level(self.tracker.working_quantile)})"
            )
            return self._fallback(why, current_replicas, now_s, current_demand)
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
        self._memory.last_level = level
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
        self, why: str, current_replicas: int, now_s: float, current_demand: Mapping[str, float] | None
    ) -> Decision:
        self._memory.last_level = None
        return fallback_decision(
            self.config, self.stabilizer, why, current_replicas, now_s, current_demand, policy=self.name
        )

    # observe ------------------------------------------------------------------------------------------
    def observe(self, realised_demand: Mapping[str, float], replicas_in_place: int) -> bool | None:
        """Feed the outcome of one interval: did realised demand exceed the capacity of the replicas in place?

        The outcome is credited to the level of the latest model decision (levels move slowly, so the few
        decisions of the lead time in between do not matter). After a fallback decision, or at max_replicas
        (the cap decided, not the level), the outcome says nothing about the draws: the tracker only ages.
        Returns the violation (None if no demand is known).
        """
        violated = is_violation(realised_demand, self.config.capacities, replicas_in_place)
        self._memory.last_violation = violated
        if violated is None:
            return None
        if self._memory.last_level is None or replicas_in_place >= self.config.max_replicas:
            self.tracker.age()
        else:
            self.tracker.update(violated, self._memory.last_level)
        return violated

    # persistence (the operator restarts; the backtest checkpoints) --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "stabilizer": self.stabilizer.state_dict(),
            "last_level": self._memory.last_level,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.stabilizer.load_state_dict(state["stabilizer"])
        level = state.get("last_level")
        self._memory = _Memory(last_level=None if level is None else float(level))

    def with_config(self, **changes: Any) -> Decider:
        """A fresh decider with some config fields changed (for sweeps)."""
        return type(self)(replace(self.config, **changes))
