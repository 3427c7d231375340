"""Forecast-evaluation metrics for probabilistic (sample-based) forecasts, numpy only.

Conventions shared by every function:

* ``samples`` has shape ``[S, *shape]``: S draws from the forecast distribution; ``y`` has shape ``shape``.
  Shapes must match exactly (no broadcasting), otherwise ``ValueError`` is raised.
* Forecasts (samples, quantiles, point forecasts) must be finite: a NaN or inf in a forecast is a model
  bug and raises ``ValueError`` rather than being skipped.
* A NaN in ``y`` marks a missing observation. Elementwise functions (``crps_samples``, ``quantile_loss``,
  ``pit``, ``energy_score``) return NaN at that element; every function that reduces to a number
  (``weighted_quantile_loss``, ``mase``, ``interval_coverage``, ``pit_coverage``, ``summarize``)
  excludes that element from its means and sums (``summarize`` scores a partly observed joint vector on
  its observed components). If no observed element is left, ``ValueError`` is raised.
* Sample quantiles always use ``np.quantile(..., method="linear")`` (numpy's default, Hyndman & Fan
  type 7), so quantile-based metrics are reproducible across numpy versions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_COVERAGE_LEVELS",
    "DEFAULT_WQL_LEVELS",
    "coverage_key",
    "crps_gaussian",
    "crps_samples",
    "energy_score",
    "geometric_mean",
    "interval_coverage",
    "mase",
    "pit",
    "pit_coverage",
    "quantile_loss",
    "relative_to",
    "summarize",
    "weighted_quantile_loss",
]

FloatArray = NDArray[np.float64]

DEFAULT_WQL_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.98)

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
# math.erf is exact to double precision and keeps scipy out of the runtime dependencies.
_ERF = np.frompyfunc(math.erf, 1, 1)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _as_float(name: str, values: ArrayLike) -> FloatArray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from exc


def _require_finite(name: str, values: FloatArray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or inf; forecasts must be finite")


def _check_samples(samples: ArrayLike, y: ArrayLike, *, min_samples: int) -> tuple[FloatArray, FloatArray]:
    """Convert and validate ``samples [S, *shape]`` against ``y [*shape]``."""
    s = _as_float("samples", samples)
    obs = _as_float("y", y)
    if s.ndim == 0:
        raise ValueError(
            "samples must have a leading sample axis: expected shape [S, *y.shape], got a scalar"
        )
    if s.shape[1:] != obs.shape:
        raise ValueError(
            f"shape mismatch: samples.shape[1:] = {s.shape[1:]} must equal y.shape = {obs.shape} "
            "(samples is [S, *y.shape])"
        )
    if s.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples (S >= {min_samples}), got S = {s.shape[0]}")
    _require_finite("samples", s)
    return s, obs


def _check_levels(levels: Iterable[float], *, name: str = "levels") -> FloatArray:
    lv = _as_float(name, list(levels))
    if lv.ndim != 1 or lv.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of probabilities")
    if not np.all((lv > 0.0) & (lv < 1.0)):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {lv.tolist()}")
    return lv


def _observed(y: FloatArray, what: str) -> NDArray[np.bool_]:
    """Mask of observed (non-NaN) elements of y; raise if none is left to average over."""
    mask: NDArray[np.bool_] = ~np.isnan(y)
    if not mask.any():
        raise ValueError(f"{what}: y has no observed (non-NaN) element to average over")
    return mask


# --------------------------------------------------------------------------------------------------
# CRPS
# --------------------------------------------------------------------------------------------------


def crps_samples(samples: ArrayLike, y: ArrayLike, *, fair: bool = True) -> FloatArray:
    """Elementwise CRPS of the empirical ensemble ``samples`` against ``y``.

    ``fair=True`` (default) is the unbiased ("fair") estimator of the CRPS of the distribution that the
    samples are drawn from::

        mean_i |X_i - y| - sum_{i,j} |X_i - X_j| / (2 S (S - 1))          (needs S >= 2)

    ``fair=False`` is the CRPS of the empirical distribution itself (biased for the underlying one)::

        mean_i |X_i - y| - sum_{i,j} |X_i - X_j| / (2 S^2)                (S >= 1)

    The pairwise term costs O(S log S) per element: with the samples sorted ascending,
    ``sum_{i<j} |x_(j) - x_(i)| = sum_k (2k - S - 1) x_(k)``, k = 1..S.

    Returns an array of shape ``y.shape``; NaN where ``y`` is NaN.
    """
    s, obs = _check_samples(samples, y, min_samples=2 if fair else 1)
    n = s.shape[0]
    abs_term = np.mean(np.abs(s - obs), axis=0)

    xs = np.sort(s, axis=0)
    weights = 2.0 * np.arange(1, n + 1, dtype=np.float64) - n - 1
    half_pairs = np.tensordot(weights, xs, axes=(0, 0))  # sum_{i<j} |X_i - X_j|, i.e. half of sum_{i,j}
    denom = float(n * (n - 1)) if fair else float(n * n)
    result: FloatArray = np.asarray(abs_term - half_pairs / denom, dtype=np.float64)
    return result


def crps_gaussian(mu: ArrayLike, sigma: ArrayLike, y: ArrayLike) -> FloatArray:
    """Closed-form CRPS of ``N(mu, sigma^2)`` at ``y`` (arguments broadcast).

    ``sigma * [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]`` with ``z = (y - mu) / sigma``.
    ``sigma`` must be >= 0; ``sigma == 0`` is the point-mass limit ``|y - mu|``. NaN in ``y`` gives NaN.
    """
    m = _as_float("mu", mu)
    sd = _as_float("sigma", sigma)
    obs = _as_float("y", y)
    try:
        m, sd, obs = np.broadcast_arrays(m, sd, obs)
    except ValueError as exc:
        raise ValueError(
            f"shape mismatch: mu {m.shape}, sigma {sd.shape} and y {obs.shape} do not broadcast"
        ) from exc
    _require_finite("mu", m)
    _require_finite("sigma", sd)
    if np.any(sd < 0):
        raise ValueError("sigma must be non-negative")

    degenerate = sd == 0
    safe_sd = np.where(degenerate, 1.0, sd)  # keeps the division finite; those entries are replaced below
    z = (obs - m) / safe_sd
    cdf = 0.5 * (1.0 + np.asarray(_ERF(z / _SQRT_2), dtype=np.float64))
    pdf = np.exp(-0.5 * z * z) / _SQRT_2PI
    crps = safe_sd * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / _SQRT_PI)
    result: FloatArray = np.asarray(np.where(degenerate, np.abs(obs - m), crps), dtype=np.float64)
    return result


# --------------------------------------------------------------------------------------------------
# Quantile losses
# --------------------------------------------------------------------------------------------------


def _sample_quantiles(samples: FloatArray, levels: FloatArray) -> FloatArray:
    # Linear interpolation (numpy's default, type 7), named explicitly so a new default cannot move scores.
    q: FloatArray = np.asarray(np.quantile(samples, levels, axis=0, method="linear"), dtype=np.float64)
    return q


def quantile_loss(
    forecast: ArrayLike,
    y: ArrayLike,
    levels: Sequence[float],
    *,
    kind: Literal["samples", "quantiles"] = "samples",
) -> FloatArray:
    """Elementwise pinball (quantile) loss ``rho_q(y - Q_q) = (y - Q_q) (q - 1{y < Q_q})`` for each level.

    ``forecast`` is either samples ``[S, *y.shape]`` (``kind="samples"``, quantiles taken with
    ``np.quantile(..., method="linear")``) or quantile forecasts ``[len(levels), *y.shape]`` in the order of
    ``levels`` (``kind="quantiles"``). The kind is explicit because the two layouts are indistinguishable
    when S == len(levels).

    Returns ``[len(levels), *y.shape]``, without the factor 2 used by ``weighted_quantile_loss``;
    NaN where ``y`` is NaN.
    """
    lv = _check_levels(levels)
    if kind == "samples":
        s, obs = _check_samples(forecast, y, min_samples=1)
        q = _sample_quantiles(s, lv)
    elif kind == "quantiles":
        q, obs = _check_samples(forecast, y, min_samples=1)
        if q.shape[0] != lv.size:
            raise ValueError(
                f"quantile forecasts have {q.shape[0]} levels on axis 0 but {lv.size} levels were given"
            )
    else:
        raise ValueError(f"kind must be 'samples' or 'quantiles', got {kind!r}")
    err = obs - q
    lv_b = lv.reshape((-1,) + (1,) * obs.ndim)
    loss: FloatArray = np.asarray(err * (lv_b - (err < 0)), dtype=np.float64)
    return loss


def weighted_quantile_loss(
    samples: ArrayLike, y: ArrayLike, levels: Sequence[float] = DEFAULT_WQL_LEVELS
) -> float:
    """Weighted quantile loss (GluonTS ``mean_wQuantileLoss`` / M5 convention).

    For each level q: ``2 * sum |(y - Q_q) (1{y <= Q_q} - q)| / sum |y|``, then the mean over levels.
    ``Q_q`` is the sample quantile with ``np.quantile(..., method="linear")``. Sums run over the observed
    (non-NaN) elements of ``y`` only; raises if ``sum |y|`` over them is 0 (the loss is undefined).
    """
    lv = _check_levels(levels)
    losses = quantile_loss(samples, y, lv.tolist(), kind="samples")
    obs = _as_float("y", y)
    mask = _observed(obs, "weighted_quantile_loss")
    scale = float(np.sum(np.abs(obs[mask])))
    if scale == 0.0:
        raise ValueError("weighted_quantile_loss is undefined: sum |y| over observed elements is 0")
    per_level = 2.0 * losses[:, mask].sum(axis=1) / scale
    return float(per_level.mean())


# --------------------------------------------------------------------------------------------------
# Point accuracy
# --------------------------------------------------------------------------------------------------


def mase(point_forecast: ArrayLike, y: ArrayLike, history: ArrayLike, season: int = 1) -> float:
    """Mean absolute scaled error.

    Axis 0 of ``y``/``point_forecast`` and of ``history`` is time; any trailing axes (``y.shape[1:]``, which
    ``history.shape[1:]`` must equal) are separate series, each scaled by its own history::

        MASE = mean_t,c |y[t,c] - f[t,c]| / scale[c],   scale[c] = mean_t |h[t,c] - h[t-m,c]|

    ``m = season``, falling back to lag 1 when the history is shorter than ``season + 1`` (because
    there is then no full seasonal lag to compare against). NaN observations in ``y`` are excluded from the
    numerator mean, and differences involving a NaN in ``history`` are excluded from the scale.
    Raises if the history has fewer than 2 points, or if a scale is 0 or has no observed difference.
    """
    if isinstance(season, bool) or not isinstance(season, int | np.integer) or season < 1:
        raise ValueError(f"season must be a positive integer, got {season!r}")
    f = _as_float("point_forecast", point_forecast)
    obs = _as_float("y", y)
    hist = _as_float("history", history)
    if f.shape != obs.shape:
        raise ValueError(f"shape mismatch: point_forecast.shape = {f.shape} must equal y.shape = {obs.shape}")
    if obs.ndim == 0:
        raise ValueError("y must have a time axis (ndim >= 1)")
    if hist.ndim == 0 or hist.shape[1:] != obs.shape[1:]:
        raise ValueError(
            f"shape mismatch: history.shape = {hist.shape} must be [T, *y.shape[1:]] "
            f"with y.shape = {obs.shape}"
        )
    _require_finite("point_forecast", f)
    if hist.shape[0] < 2:
        raise ValueError(f"history too short for MASE: need at least 2 points, got {hist.shape[0]}")

    lag = int(season) if hist.shape[0] >= season + 1 else 1
    diffs = np.abs(hist[lag:] - hist[:-lag])
    n_diffs = np.sum(~np.isnan(diffs), axis=0)
    if np.any(n_diffs == 0):
        raise ValueError("MASE scale undefined: history has no observed seasonal difference")
    scale = np.nansum(diffs, axis=0) / n_diffs
    if np.any(scale == 0):
        raise ValueError(f"MASE scale is zero: the history is constant at lag {lag}, so MASE is undefined")

    mask = _observed(obs, "mase")
    scaled = np.abs(obs - f) / scale
    return float(np.mean(scaled[mask]))


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def coverage_key(level: float) -> str:
    """The summary key of a coverage level: 0.9 -> ``coverage_90``, 0.975 -> ``coverage_97.5``."""
    return f"coverage_{round(100.0 * level, 6):g}"


def interval_coverage(
    samples: ArrayLike, y: ArrayLike, levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS
) -> dict[float, float]:
    """Fraction of observed ``y`` inside the central interval ``[Q_{(1-l)/2}, Q_{(1+l)/2}]`` (inclusive).

    Quantiles via ``np.quantile(..., method="linear")``; NaN observations are excluded.
    Returns ``{level: fraction}`` keyed by the levels as given.
    """
    lv = _check_levels(levels)
    s, obs = _check_samples(samples, y, min_samples=1)
    mask = _observed(obs, "interval_coverage")
    lower = _sample_quantiles(s, 0.5 - lv / 2.0)
    upper = _sample_quantiles(s, 0.5 + lv / 2.0)
    inside = (obs >= lower) & (obs <= upper)
    return {float(level): float(np.mean(inside[i][mask])) for i, level in enumerate(lv)}


def pit_coverage(
    samples: ArrayLike, y: ArrayLike, levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS
) -> dict[float, float]:
    """Expected fraction of observed ``y`` whose randomised PIT (see ``pit``) falls in the central band
    ``[(1-l)/2, (1+l)/2]``, computed exactly rather than by drawing ``U``.

    ``interval_coverage`` counts an outcome that ties the interval's end as covered. For a forecast with an
    atom (an idle service at exactly 0, a draw clipped to 0) the central interval then holds more than
    ``l`` of the probability, and even a perfect forecast "over-covers". The randomised PIT spreads a tie
    uniformly over the probability mass of the tie, so a calibrated forecast scores ``l`` in expectation,
    atoms included; for a continuous forecast it agrees with ``interval_coverage`` up to sampling noise.
    Per outcome, PIT ~ Uniform[below / (S+1), (below + ties + 1) / (S+1)], and its chance of landing in
    the band is the overlap's length over the range's. NaN observations are excluded.
    """
    lv = _check_levels(levels)
    s, obs = _check_samples(samples, y, min_samples=1)
    mask = _observed(obs, "pit_coverage")
    n = s.shape[0] + 1
    lo = np.sum(s < obs, axis=0) / n
    hi = lo + (np.sum(s == obs, axis=0) + 1) / n
    out: dict[float, float] = {}
    for level in lv:
        a, b = 0.5 - level / 2.0, 0.5 + level / 2.0
        inside = np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None) / (hi - lo)
        out[float(level)] = float(np.mean(inside[mask]))
    return out


def pit(samples: ArrayLike, y: ArrayLike, *, rng: np.random.Generator | None = None) -> FloatArray:
    """Randomised probability integral transform of ``y`` under the ensemble, in [0, 1].

    ``PIT = (#{X_i < y} + U * (#{X_i == y} + 1)) / (S + 1)`` with ``U ~ Uniform(0, 1)``: the rank of ``y``
    among the S samples, spread uniformly over its tie range and the gap it falls in. When ``y`` is
    exchangeable with the samples (a calibrated forecast) this is exactly Uniform(0, 1), ties included.
    ``rng=None`` uses ``np.random.default_rng(0)`` so that evaluations are reproducible.
    Returns ``y.shape``; NaN where ``y`` is NaN.
    """
    s, obs = _check_samples(samples, y, min_samples=1)
    gen = np.random.default_rng(0) if rng is None else rng
    below = np.sum(s < obs, axis=0)
    ties = np.sum(s == obs, axis=0)
    u = gen.uniform(0.0, 1.0, size=obs.shape)
    values = (below + u * (ties + 1)) / (s.shape[0] + 1)
    result: FloatArray = np.asarray(np.where(np.isnan(obs), np.nan, values), dtype=np.float64)
    return result


# --------------------------------------------------------------------------------------------------
# Multivariate
# --------------------------------------------------------------------------------------------------


def energy_score(samples: ArrayLike, y: ArrayLike, *, fair: bool = True) -> FloatArray:
    """Energy score with the last axis as the joint (vector) dimension.

    ``samples [S, ..., D]``, ``y [..., D]``; Euclidean norm over D. ``fair=True`` (default)::

        mean_i ||X_i - y|| - sum_{i != j} ||X_i - X_j|| / (2 S (S - 1))      (needs S >= 2)

    ``fair=False`` divides the pairwise sum by ``2 S^2`` instead. For D = 1 it equals ``crps_samples``.
    Returns ``[...]``; NaN where any component of ``y`` is NaN. Cost O(S^2 D) per element, with memory
    O(S D) per element (one row of pairs at a time).
    """
    s, obs = _check_samples(samples, y, min_samples=2 if fair else 1)
    if obs.ndim == 0:
        raise ValueError("energy_score needs a joint dimension: y must have ndim >= 1 (last axis = D)")
    n = s.shape[0]
    abs_term = np.mean(np.sqrt(np.sum((s - obs) ** 2, axis=-1)), axis=0)
    half_pairs = np.zeros(obs.shape[:-1], dtype=np.float64)  # sum_{i<j} ||X_i - X_j||
    for i in range(n - 1):
        half_pairs += np.sqrt(np.sum((s[i + 1 :] - s[i]) ** 2, axis=-1)).sum(axis=0)
    denom = float(n * (n - 1)) if fair else float(n * n)
    result: FloatArray = np.asarray(abs_term - half_pairs / denom, dtype=np.float64)
    return result


# --------------------------------------------------------------------------------------------------
# Aggregation across series
# --------------------------------------------------------------------------------------------------


def relative_to(metric_model: Mapping[str, float], metric_baseline: Mapping[str, float]) -> dict[str, float]:
    """Per-series ratio ``model / baseline`` (e.g. relative MASE or CRPS skill against seasonal naive).

    Both mappings must have the same series keys. A series whose baseline error is 0 (or non-finite) has no
    defined ratio: rather than excluding it silently, this raises ``ValueError`` naming those series, so the
    caller drops them explicitly (and can report that it did).
    """
    missing = sorted(set(metric_baseline) - set(metric_model))
    extra = sorted(set(metric_model) - set(metric_baseline))
    if missing or extra:
        raise ValueError(
            f"series mismatch between model and baseline: missing from model {missing}, "
            f"missing from baseline {extra}"
        )
    bad = sorted(k for k, v in metric_baseline.items() if not math.isfinite(v) or v == 0.0)
    if bad:
        raise ValueError(f"baseline error is zero or non-finite for series {bad}: ratio undefined; drop them")
    bad_model = sorted(k for k, v in metric_model.items() if not math.isfinite(v))
    if bad_model:
        raise ValueError(f"model error is non-finite for series {bad_model}")
    return {k: float(metric_model[k]) / float(metric_baseline[k]) for k in metric_baseline}


def geometric_mean(values: Mapping[str, float] | Iterable[float] | ArrayLike) -> float:
    """Geometric mean ``exp(mean(log v))``; raises on empty input or any non-positive or non-finite value.

    A mapping (such as the output of ``relative_to``) contributes its values.
    """
    items: ArrayLike
    if isinstance(values, Mapping):
        items = [float(x) for x in values.values()]
    elif isinstance(values, Iterable) and not isinstance(values, np.ndarray | list | tuple):
        # A generator or set would otherwise become a 0-d object array.
        items = np.fromiter(values, dtype=np.float64)
    else:
        items = values
    v = _as_float("values", items).ravel()
    if v.size == 0:
        raise ValueError("geometric_mean of an empty sequence is undefined")
    if not np.all(np.isfinite(v)):
        raise ValueError("geometric_mean needs finite values; got NaN or inf")
    if np.any(v <= 0):
        raise ValueError(
            f"geometric_mean needs strictly positive values; got {int(np.sum(v <= 0))} non-positive"
        )
    return float(np.exp(np.mean(np.log(v))))


def _mean_energy_observed(samples: FloatArray, y: FloatArray) -> float:
    """Mean fair energy score over the joint rows of ``y`` (last axis), scoring each partly observed row on
    its observed components only (the marginal over them) and skipping rows with no observed component."""
    flat_s = samples.reshape(samples.shape[0], -1, y.shape[-1])
    flat_y = y.reshape(-1, y.shape[-1])
    scores = energy_score(flat_s, flat_y)
    kept: list[float] = []
    for row, score in enumerate(scores):
        observed = ~np.isnan(flat_y[row])
        if observed.all():
            kept.append(float(score))
        elif observed.any():
            kept.append(float(energy_score(flat_s[:, row, observed], flat_y[row, observed])))
    if not kept:
        raise ValueError(
            "summarize: no joint row of y (last axis) has an observed element for the energy score"
        )
    return float(np.mean(kept))


def summarize(
    samples: ArrayLike,
    y: ArrayLike,
    *,
    history: ArrayLike | None = None,
    season: int = 1,
    levels: Sequence[float] = DEFAULT_COVERAGE_LEVELS,
) -> dict[str, float]:
    """All metrics for one series as plain floats (the evaluation CLI calls this per series).

    ``samples [S, T, ...]`` and ``y [T, ...]`` (time first; S >= 2). Keys:

    * ``crps``: mean fair ``crps_samples`` over observed elements;
    * ``wql``: ``weighted_quantile_loss`` at levels 0.1..0.9; NaN for a series whose observations are all 0
      (the loss is undefined there; relative summaries skip it, as they skip any non-finite ratio);
    * ``mase``: only when ``history`` is given, of the sample median (``np.median`` over S) as point forecast;
    * ``coverage_<100*l>`` for each level in ``levels`` (e.g. ``coverage_50``, ``coverage_98``);
    * ``pit_coverage_<100*l>``: the same levels by ``pit_coverage`` (fair to forecasts with atoms);
    * ``energy``: mean fair ``energy_score`` with the last axis as the joint dimension (for 1-D ``y`` the
      whole horizon is one vector); a joint row with NaN components is scored on its observed components
      (the marginal energy score over them), and a row with none observed is skipped.

    NaN observations are excluded everywhere; raises if ``y`` has no observed element at all.
    """
    s, obs = _check_samples(samples, y, min_samples=2)
    if obs.ndim == 0:
        raise ValueError("summarize expects a series: y must have ndim >= 1")
    crps = crps_samples(s, obs)
    mask = _observed(obs, "summarize")
    out: dict[str, float] = {
        "crps": float(np.mean(crps[mask])),
        # An idle container (all-zero target over the test split) has no wQL scale.
        "wql": weighted_quantile_loss(s, obs) if np.any(obs[mask] != 0) else float("nan"),
    }
    if history is not None:
        out["mase"] = mase(np.median(s, axis=0), obs, history, season)
    for level, frac in interval_coverage(s, obs, levels).items():
        out[coverage_key(level)] = frac
    for level, frac in pit_coverage(s, obs, levels).items():
        out["pit_" + coverage_key(level)] = frac
    out["energy"] = _mean_energy_observed(s, obs)
    return out
