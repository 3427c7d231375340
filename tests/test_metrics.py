"""Forecast metrics against hand-computed answers and against properscoring / scoringrules.

Reference estimators, checked by running them (numpy backend, no numba):
* properscoring.crps_ensemble integrates (F_emp - H)^2, i.e. the plain/biased 1/(2 S^2) form -> fair=False.
* scoringrules.crps_ensemble(estimator="fair") is the unbiased 1/(2 S (S-1)) form -> fair=True
  ("nrg" is the plain form). Its ensemble axis is m_axis=-1 (ours is axis 0).
* scoringrules.es_ensemble (energy_score is its deprecated alias), estimator="fair"/"nrg", with fct [..., M, D] (m_axis=-2, v_axis=-1).
"""

from __future__ import annotations

import math

import numpy as np
import properscoring as ps
import pytest
import scoringrules as sr

from harmony.metrics import (
    crps_gaussian,
    crps_samples,
    energy_score,
    geometric_mean,
    interval_coverage,
    mase,
    pit,
    pit_coverage,
    quantile_loss,
    relative_to,
    summarize,
    weighted_quantile_loss,
)

SHAPES = [(), (7,), (4, 5), (2, 3, 4)]


# --------------------------------------------------------------------------------------------------
# crps_gaussian
# --------------------------------------------------------------------------------------------------


def test_crps_gaussian_hand_values() -> None:
    # y = mu: z = 0, Phi = 1/2, phi = 1/sqrt(2 pi) -> sigma * (2/sqrt(2 pi) - 1/sqrt(pi)) = sigma (sqrt2 - 1)/sqrt(pi)
    assert crps_gaussian(3.0, 2.0, 3.0) == pytest.approx(
        2.0 * (math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-12
    )
    # z = 1: Phi(1) = 0.8413447460685429, phi(1) = 0.24197072451914337 (tables)
    # 1*(2*0.8413447460685429 - 1) + 2*0.24197072451914337 - 0.5641895835477563 = 0.6024413576276...
    assert crps_gaussian(0.0, 1.0, 1.0) == pytest.approx(
        0.6826894921370859 + 0.48394144903828673 - 0.5641895835477563, rel=1e-12
    )
    # Scale and location equivariance: mu=10, sigma=3, y=7 is z = -1 -> 3 * 0.60244...; CRPS is symmetric in z.
    assert crps_gaussian(10.0, 3.0, 7.0) == pytest.approx(3 * 0.6024413576276163, rel=1e-12)
    # sigma = 0 is the point mass: |y - mu|.
    assert crps_gaussian(1.0, 0.0, 4.5) == pytest.approx(3.5)


def test_crps_gaussian_vectorised_matches_properscoring() -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4))
    sigma = rng.uniform(0.1, 3.0, size=(3, 4))
    y = rng.normal(size=(3, 4)) * 2
    got = crps_gaussian(mu, sigma, y)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, ps.crps_gaussian(y, mu, sigma), rtol=1e-10)
    np.testing.assert_allclose(got, sr.crps_normal(y, mu, sigma), rtol=1e-10)


@pytest.mark.parametrize(("mu", "sigma", "y"), [(0.0, 1.0, 0.0), (5.0, 2.0, 6.5), (-1.0, 0.5, -2.25)])
def test_fair_sample_crps_converges_to_gaussian(mu: float, sigma: float, y: float) -> None:
    # The fair estimator is unbiased for the CRPS of N(mu, sigma^2); its standard deviation measured over 400
    # replicates is c * sigma / sqrt(S) with c <= 1.1 for |z| <= 2.5. With S = 200_000 that is <= 0.0025 sigma,
    # so a 0.0125 sigma tolerance is 5 standard errors (and the seed is fixed).
    rng = np.random.default_rng(42)
    samples = rng.normal(mu, sigma, size=(200_000, 1))
    got = crps_samples(samples, np.array([y]))[0]
    assert got == pytest.approx(float(crps_gaussian(mu, sigma, y)), abs=0.0125 * sigma)


def test_crps_gaussian_rejects_negative_sigma() -> None:
    with pytest.raises(ValueError, match="sigma must be non-negative"):
        crps_gaussian(0.0, -1.0, 0.0)


# --------------------------------------------------------------------------------------------------
# crps_samples
# --------------------------------------------------------------------------------------------------


def test_crps_samples_hand_cases() -> None:
    # samples [0, 1], y = 0: mean|X - y| = 1/2, sum_{i,j}|X_i - X_j| = 2.
    # fair: 1/2 - 2 / (2*2*1) = 0;  plain: 1/2 - 2 / (2*4) = 1/4 (= integral of (1/2)^2 over [0, 1)).
    s = np.array([0.0, 1.0])
    assert crps_samples(s, 0.0) == pytest.approx(0.0, abs=1e-15)
    assert crps_samples(s, 0.0, fair=False) == pytest.approx(0.25)
    # samples [1, 2, 4], y = 3: mean|X - y| = 4/3, sum_{i<j} = 1 + 3 + 2 = 6 (sum_{i,j} = 12).
    # fair: 4/3 - 12/12 = 1/3;  plain: 4/3 - 12/18 = 2/3.
    s = np.array([4.0, 1.0, 2.0])
    assert crps_samples(s, 3.0) == pytest.approx(1 / 3)
    assert crps_samples(s, 3.0, fair=False) == pytest.approx(2 / 3)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_samples", [2, 5, 64])
def test_crps_samples_matches_references(shape: tuple[int, ...], n_samples: int) -> None:
    rng = np.random.default_rng(n_samples + len(shape))
    samples = rng.normal(size=(n_samples, *shape)) * 3 + 1
    y = rng.normal(size=shape) * 3
    fair = crps_samples(samples, y)
    plain = crps_samples(samples, y, fair=False)
    assert fair.shape == shape
    np.testing.assert_allclose(plain, ps.crps_ensemble(y, samples, axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        fair, sr.crps_ensemble(y, np.moveaxis(samples, 0, -1), estimator="fair"), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        plain, sr.crps_ensemble(y, np.moveaxis(samples, 0, -1), estimator="nrg"), rtol=1e-10, atol=1e-12
    )


def test_crps_samples_stable_at_large_level() -> None:
    # A spread of 1 on a level of 1e9 must still give the hand answer (no variance-style cancellation).
    s = np.array([0.0, 1.0]) + 1e9
    assert crps_samples(s, 1e9, fair=False) == pytest.approx(0.25, abs=1e-6)


def test_crps_samples_nan_observation_gives_nan_only_there() -> None:
    samples = np.arange(6.0).reshape(3, 2)
    out = crps_samples(samples, np.array([np.nan, 1.0]))
    assert np.isnan(out[0]) and np.isfinite(out[1])


def test_crps_samples_errors() -> None:
    with pytest.raises(
        ValueError, match=r"shape mismatch: samples.shape\[1:\] = \(3,\) must equal y.shape = \(4,\)"
    ):
        crps_samples(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"at least 2 samples \(S >= 2\), got S = 1"):
        crps_samples(np.zeros((1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="samples contains NaN or inf"):
        crps_samples(np.array([[0.0], [np.inf]]), np.zeros(1))
    with pytest.raises(ValueError, match="leading sample axis"):
        crps_samples(1.0, 1.0)
    # The plain form is defined for a single sample (it is then the absolute error).
    assert crps_samples(np.array([[2.0]]), np.array([5.0]), fair=False)[0] == pytest.approx(3.0)


# --------------------------------------------------------------------------------------------------
# energy_score
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (5, 3), (2, 4, 6)])
def test_energy_score_matches_scoringrules(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    samples = rng.normal(size=(17, *shape))
    y = rng.normal(size=shape)
    fct = np.moveaxis(samples, 0, -2)  # scoringrules: [..., M, D]
    got = energy_score(samples, y)
    assert got.shape == shape[:-1]
    np.testing.assert_allclose(got, sr.es_ensemble(y, fct, estimator="fair"), rtol=1e-10)
    np.testing.assert_allclose(
        energy_score(samples, y, fair=False), sr.es_ensemble(y, fct, estimator="nrg"), rtol=1e-10
    )


def test_energy_score_in_one_dimension_is_crps() -> None:
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(25, 4, 6))
    y = rng.normal(size=(4, 6))
    np.testing.assert_allclose(
        energy_score(samples[..., None], y[..., None]), crps_samples(samples, y), rtol=1e-12
    )
    np.testing.assert_allclose(
        energy_score(samples[..., None], y[..., None], fair=False),
        crps_samples(samples, y, fair=False),
        rtol=1e-12,
    )


def test_energy_score_hand_case() -> None:
    # Two samples (0,0) and (3,4), y = (0,0): mean ||X - y|| = 5/2; the single pair is 5 apart.
    # fair: 5/2 - 2*5 / (2*2*1) = 0.
    s = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert energy_score(s, np.zeros(2)) == pytest.approx(0.0, abs=1e-15)
    assert energy_score(s, np.array([3.0, 4.0]), fair=False) == pytest.approx(2.5 - 10 / 8)


def test_energy_score_errors() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        energy_score(np.zeros((4, 2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"S >= 2"):
        energy_score(np.zeros((1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="joint dimension"):
        energy_score(np.zeros(4), np.float64(0.0))


# --------------------------------------------------------------------------------------------------
# quantile losses
# --------------------------------------------------------------------------------------------------


def test_quantile_loss_hand_example() -> None:
    levels = (0.1, 0.5, 0.9)
    quantiles = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    y = np.array([2.5, 3.0])
    # rho_q(e) = e (q - 1{e < 0}) with e = y - Q:
    # q=0.1: e=(1.5, 1) -> (0.15, 0.10); q=0.5: e=(0.5, -1) -> (0.25, 0.5); q=0.9: e=(-0.5, -3) -> (0.05, 0.3)
    expected = np.array([[0.15, 0.10], [0.25, 0.5], [0.05, 0.3]])
    np.testing.assert_allclose(quantile_loss(quantiles, y, levels, kind="quantiles"), expected, rtol=1e-12)


def test_quantile_loss_from_samples_uses_linear_quantiles() -> None:
    rng = np.random.default_rng(5)
    samples = rng.normal(size=(10, 3))
    y = rng.normal(size=3)
    levels = (0.25, 0.5, 0.75)
    q = np.quantile(samples, levels, axis=0, method="linear")
    np.testing.assert_allclose(
        quantile_loss(samples, y, levels), quantile_loss(q, y, levels, kind="quantiles"), rtol=1e-12
    )
    with pytest.raises(
        ValueError, match="quantile forecasts have 10 levels on axis 0 but 3 levels were given"
    ):
        quantile_loss(samples, y, levels, kind="quantiles")


def test_weighted_quantile_loss_hand_example() -> None:
    # Column 0 samples 0..10 -> Q_q = 10 q; column 1 samples 0,2,..,20 -> Q_q = 20 q (linear quantiles).
    samples = np.stack([np.arange(11.0), 2 * np.arange(11.0)], axis=1)
    y = np.array([3.0, 8.0])
    # q=0.1: Q=(1, 2):   pinball (0.2, 0.6) ; q=0.5: Q=(5, 10): (1.0, 1.0) ; q=0.9: Q=(9, 18): (0.6, 1.0)
    # sum|y| = 11 -> per level 2*0.8/11, 2*2.0/11, 2*1.6/11 -> mean 8.8/33 = 4/15.
    assert weighted_quantile_loss(samples, y, levels=(0.1, 0.5, 0.9)) == pytest.approx(4 / 15, rel=1e-12)
    # A NaN observation is excluded from both sums.
    samples_nan = np.concatenate([samples, np.full((11, 1), 100.0)], axis=1)
    y_nan = np.array([3.0, 8.0, np.nan])
    assert weighted_quantile_loss(samples_nan, y_nan, levels=(0.1, 0.5, 0.9)) == pytest.approx(
        4 / 15, rel=1e-12
    )


def test_weighted_quantile_loss_default_levels() -> None:
    # Point-mass forecast at 0 with y = 1: every Q_q = 0 and the pinball loss is q; sum |y| = 1.
    # mean over q = 0.1..0.9 of 2 q = 2 * 0.5 = 1.
    assert weighted_quantile_loss(np.zeros((3, 1)), np.ones(1)) == pytest.approx(1.0)


def test_weighted_quantile_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"sum \|y\| over observed elements is 0"):
        weighted_quantile_loss(np.ones((4, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        weighted_quantile_loss(np.ones((4, 3)), np.ones(3), levels=(0.0, 0.5))
    with pytest.raises(ValueError, match="no observed"):
        weighted_quantile_loss(np.ones((4, 2)), np.full(2, np.nan))


# --------------------------------------------------------------------------------------------------
# mase
# --------------------------------------------------------------------------------------------------


def test_mase_hand_values() -> None:
    history = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    forecast = np.array([5.0, 5.0])
    y = np.array([6.0, 3.0])  # MAE = (1 + 2) / 2 = 1.5
    # lag 1: |2|, |1|, |3|, |1| -> 7/4;  MASE = 1.5 / 1.75 = 6/7
    assert mase(forecast, y, history, season=1) == pytest.approx(6 / 7)
    # lag 2: |2-1|, |5-3|, |4-2| -> 5/3;  MASE = 1.5 / (5/3) = 0.9
    assert mase(forecast, y, history, season=2) == pytest.approx(0.9)
    # season 7 needs 8 points of history: falls back to lag 1.
    assert mase(forecast, y, history, season=7) == pytest.approx(6 / 7)
    # NaN in y excluded from the numerator: only |6 - 5| = 1 counts -> 1 / 1.75.
    assert mase(forecast, np.array([6.0, np.nan]), history) == pytest.approx(4 / 7)


def test_mase_scales_each_trailing_series_separately() -> None:
    history = np.array([[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]])  # lag-1 scales (1, 10)
    forecast = np.zeros((1, 2))
    y = np.array([[2.0, 20.0]])  # scaled errors (2, 2)
    assert mase(forecast, y, history) == pytest.approx(2.0)


def test_mase_errors() -> None:
    with pytest.raises(ValueError, match="MASE scale is zero"):
        mase(np.ones(2), np.ones(2), np.full(10, 3.0), season=1)
    with pytest.raises(ValueError, match="history too short for MASE: need at least 2 points, got 1"):
        mase(np.ones(2), np.ones(2), np.array([1.0]))
    with pytest.raises(ValueError, match=r"point_forecast.shape = \(3,\) must equal y.shape = \(2,\)"):
        mase(np.ones(3), np.ones(2), np.arange(5.0))
    with pytest.raises(ValueError, match=r"history\.shape"):
        mase(np.ones((2, 2)), np.ones((2, 2)), np.arange(5.0))
    with pytest.raises(ValueError, match="season must be a positive integer"):
        mase(np.ones(2), np.ones(2), np.arange(5.0), season=0)


# --------------------------------------------------------------------------------------------------
# interval_coverage and pit
# --------------------------------------------------------------------------------------------------


def test_interval_coverage_known_ranks() -> None:
    # Every column holds samples 0..100, so the linear quantile at p is exactly 100 p:
    # 50% -> [25, 75], 80% -> [10, 90], 90% -> [5, 95], 98% -> [1, 99].
    y = np.array([50.0, 25.0, 75.0, 20.0, 92.0, 97.0, 99.5, -1.0, np.nan])
    samples = np.repeat(np.arange(101.0)[:, None], y.size, axis=1)
    got = interval_coverage(samples, y)
    # Observed y (8): inside [25,75] (inclusive): 50, 25, 75 -> 3/8; [10,90]: + 20 -> 4/8;
    # [5,95]: + 92 -> 5/8; [1,99]: + 97 -> 6/8 (99.5 and -1 are outside every interval).
    assert got == {0.5: 3 / 8, 0.8: 4 / 8, 0.9: 5 / 8, 0.98: 6 / 8}


def test_pit_coverage_by_hand() -> None:
    # Samples 1..9 (S = 9): an outcome between ranks k and k+1 has PIT uniform on [k/10, (k+1)/10].
    samples = np.repeat(np.arange(1.0, 10.0)[:, None], 4, axis=1)
    y = np.array([5.5, 8.5, 7.5, np.nan])
    # 50% band [0.25, 0.75]: 5.5 -> [0.5, 0.6] inside (1); 8.5 -> [0.8, 0.9] outside (0);
    # 7.5 -> [0.7, 0.8], half inside (0.5). Mean over the 3 observed: 0.5.
    assert pit_coverage(samples, y, (0.5,))[0.5] == pytest.approx(0.5)
    # An atom: all 9 draws are 0 and so is the outcome. interval_coverage counts it covered at every
    # level; its PIT is uniform on [0, 1], so it is covered with probability exactly the level.
    atom = np.zeros((9, 1))
    assert interval_coverage(atom, np.zeros(1), (0.9,))[0.9] == 1.0
    assert pit_coverage(atom, np.zeros(1), (0.5, 0.9)) == pytest.approx({0.5: 0.5, 0.9: 0.9})


def test_pit_coverage_is_the_mean_of_randomised_pit_and_nominal_when_calibrated() -> None:
    rng = np.random.default_rng(5)
    n, s = 20000, 30
    # Half the outcomes sit on an atom at 0 that the forecast reproduces; the rest are continuous.
    atom = rng.uniform(size=n) < 0.5
    draws = np.where(rng.uniform(size=(s, n)) < 0.5, 0.0, rng.exponential(size=(s, n)))
    y = np.where(atom, 0.0, rng.exponential(size=n))
    got = pit_coverage(draws, y, (0.5, 0.9))
    u = pit(draws, y, rng=np.random.default_rng(2))
    for level in (0.5, 0.9):
        drawn = float(np.mean((u >= 0.5 - level / 2) & (u <= 0.5 + level / 2)))
        assert got[level] == pytest.approx(drawn, abs=0.01)
        assert got[level] == pytest.approx(level, abs=0.01)
    # The plain central interval over-covers here: its lower end is the atom, which every 0 ties.
    assert interval_coverage(draws, y, (0.5,))[0.5] > 0.7


def _ks_uniform(values: np.ndarray) -> float:
    u = np.sort(values)
    n = u.size
    return float(max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n)))


def test_pit_uniform_for_calibrated_draws() -> None:
    rng = np.random.default_rng(11)
    n, s = 4000, 20
    mu = rng.normal(size=n) * 5
    y = mu + rng.normal(size=n)
    calibrated = mu + rng.normal(size=(s, n))
    values = pit(calibrated, y, rng=np.random.default_rng(1))
    assert values.min() >= 0 and values.max() <= 1
    # Kolmogorov critical value at alpha = 0.001 is 1.95 / sqrt(n) = 0.031.
    assert _ks_uniform(values) < 1.95 / math.sqrt(n)
    # The same check has power: an ensemble twice too narrow is far from uniform.
    narrow = mu + 0.5 * rng.normal(size=(s, n))
    assert _ks_uniform(pit(narrow, y, rng=np.random.default_rng(1))) > 0.1


def test_pit_degenerate_cases() -> None:
    s = 9
    # y below every sample: rank 0 -> U / (S + 1); above every sample: (S + U) / (S + 1).
    low = pit(np.ones((s, 500)), np.zeros(500))
    assert np.all(low <= 1 / (s + 1)) and low.max() > 0.5 / (s + 1)
    high = pit(np.zeros((s, 500)), np.ones(500))
    assert np.all(high >= s / (s + 1)) and np.all(high <= 1)
    # All samples tie with y: the rank is spread over all S + 1 positions, so PIT is uniform on [0, 1].
    ties = pit(np.ones((s, 4000)), np.ones(4000), rng=np.random.default_rng(2))
    assert _ks_uniform(ties) < 1.95 / math.sqrt(4000)
    # NaN observation -> NaN; default rng is seeded, so repeated calls agree.
    out = pit(np.zeros((s, 2)), np.array([np.nan, 0.0]))
    assert np.isnan(out[0]) and 0 <= out[1] <= 1
    np.testing.assert_array_equal(pit(np.zeros((s, 3)), np.zeros(3)), pit(np.zeros((s, 3)), np.zeros(3)))


def test_pit_shape_error() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        pit(np.zeros((5, 2)), np.zeros(3))


# --------------------------------------------------------------------------------------------------
# relative_to, geometric_mean
# --------------------------------------------------------------------------------------------------


def test_relative_to_and_geometric_mean() -> None:
    rel = relative_to({"a": 1.0, "b": 6.0}, {"a": 4.0, "b": 3.0})
    assert rel == {"a": 0.25, "b": 2.0}
    assert geometric_mean(rel) == pytest.approx(math.sqrt(0.5))
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean(x for x in (1.0, 1000.0)) == pytest.approx(math.sqrt(1000.0))


def test_relative_to_errors() -> None:
    with pytest.raises(ValueError, match=r"baseline error is zero or non-finite for series \['b'\]"):
        relative_to({"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 0.0})
    with pytest.raises(ValueError, match=r"missing from model \['c'\]"):
        relative_to({"a": 1.0}, {"a": 2.0, "c": 1.0})


def test_geometric_mean_errors() -> None:
    with pytest.raises(ValueError, match="strictly positive"):
        geometric_mean([1.0, 0.0])
    with pytest.raises(ValueError, match="strictly positive"):
        geometric_mean([1.0, -2.0])
    with pytest.raises(ValueError, match="empty"):
        geometric_mean([])
    with pytest.raises(ValueError, match="finite"):
        geometric_mean([1.0, math.nan])


# --------------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------------


def test_summarize_matches_components() -> None:
    rng = np.random.default_rng(7)
    samples = rng.normal(10, 2, size=(50, 24))
    y = rng.normal(10, 2, size=24)
    y[3] = np.nan
    history = rng.normal(10, 2, size=100)
    out = summarize(samples, y, history=history, season=12)
    assert set(out) == {
        "crps",
        "wql",
        "mase",
        "coverage_50",
        "coverage_80",
        "coverage_90",
        "coverage_98",
        "pit_coverage_50",
        "pit_coverage_80",
        "pit_coverage_90",
        "pit_coverage_98",
        "energy",
    }
    assert all(type(v) is float for v in out.values())
    obs = ~np.isnan(y)
    assert out["crps"] == pytest.approx(float(np.mean(crps_samples(samples, y)[obs])))
    assert out["wql"] == pytest.approx(weighted_quantile_loss(samples, y))
    assert out["mase"] == pytest.approx(mase(np.median(samples, axis=0), y, history, season=12))
    cov = interval_coverage(samples, y)
    assert out["coverage_90"] == cov[0.9] and out["coverage_98"] == cov[0.98]
    assert out["pit_coverage_90"] == pit_coverage(samples, y)[0.9]
    # 1-D y: one joint vector over the horizon; its NaN component is left out (marginal over the rest).
    keep = np.arange(24) != 3
    assert out["energy"] == pytest.approx(float(energy_score(samples[:, keep], y[keep])))
    y[3] = 1.0
    assert summarize(samples, y)["energy"] == pytest.approx(float(energy_score(samples, y)))
    assert "mase" not in summarize(samples, y)


def test_summarize_multivariate_energy_handles_nan_rows() -> None:
    rng = np.random.default_rng(8)
    samples = rng.normal(size=(30, 6, 2))  # [S, T, D]
    y = rng.normal(size=(6, 2))
    y[1, 0] = np.nan  # row 1 scored on component 1 only
    y[4, :] = np.nan  # row 4 has nothing observed: skipped
    es = energy_score(samples, y)
    marginal = float(energy_score(samples[:, 1, 1:], y[1, 1:]))
    out = summarize(samples, y, levels=(0.5, 0.975))
    assert out["energy"] == pytest.approx(float(np.mean([es[0], marginal, es[2], es[3], es[5]])))
    assert set(out) == {
        "crps",
        "wql",
        "coverage_50",
        "coverage_97.5",
        "pit_coverage_50",
        "pit_coverage_97.5",
        "energy",
    }


def test_summarize_errors() -> None:
    with pytest.raises(ValueError, match=r"S >= 2"):
        summarize(np.ones((1, 4)), np.ones(4))
    with pytest.raises(ValueError, match="shape mismatch"):
        summarize(np.ones((5, 4)), np.ones(3))
    with pytest.raises(ValueError, match="no observed"):
        summarize(np.ones((5, 4)), np.full(4, np.nan))


def test_summarize_gives_nan_wql_for_an_all_zero_series() -> None:
    # An idle series (all observations 0) has no wQL scale; the other metrics are still defined.
    s = np.zeros((10, 5))
    s[:, 2] = 1.0
    out = summarize(s, np.zeros(5))
    assert np.isnan(out["wql"])
    assert out["crps"] == pytest.approx(0.2)  # one of five steps forecast at 1 with certainty, observed 0
