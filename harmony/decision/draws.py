"""The replicas each forecast draw needs over a decision window, and its quantiles and exceedances.

With draws `Y [S, H, N]` of the demand indicators and capacities `c_i` per replica, draw s needs
`R_s = max_{h,i} Y[s,h,i] / c_i` replicas: the chance constraint `P(violation) <= eps` is `n >= Q_{1-eps}(R)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DemandDraws", "NonFiniteDraws", "ceil_replicas"]

FloatArray = NDArray[np.float64]

# A ratio like 7.000000000000001 (a float artefact of demand / capacity) must need 7 replicas, not 8.
_CEIL_RELATIVE_SLACK = 1e-9


def ceil_replicas(x: float) -> int:
    """`ceil(x)` for a replica count, forgiving float noise a billionth above an integer; never below 0."""
    if not math.isfinite(x):
        raise ValueError(f"replica count must be finite, got {x}")
    return max(0, math.ceil(x - _CEIL_RELATIVE_SLACK * max(1.0, abs(x))))


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
