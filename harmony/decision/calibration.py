"""Bayesian adaptation of the working exceedance level: a discounted Beta posterior on the realised violation
rate of the decisions the quantile set, and the level that brings that rate to the target.

The Beta distribution's CDF and quantile are scipy's regularised incomplete beta function and its inverse
(`scipy.special.betainc` / `betaincinv`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy import special

__all__ = ["CalibrationTracker", "beta_cdf", "beta_quantile", "format_level"]


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


def _check_shape(a: float, b: float) -> None:
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta parameters must be > 0, got a={a}, b={b}")


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X <= x) for X ~ Beta(a, b): the regularised incomplete beta function I_x(a, b)."""
    _check_shape(a, b)
    return float(special.betainc(a, b, min(max(x, 0.0), 1.0)))


def beta_quantile(p: float, a: float, b: float) -> float:
    """The inverse of `beta_cdf` in x."""
    _check_shape(a, b)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return float(special.betaincinv(a, b, p))


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
