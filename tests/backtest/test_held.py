"""Each service against the binomial interval of the eps its policy ran at: hand-computed cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harmony.backtest.held import binomial_interval, held_to_eps


def _cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


def test_the_interval_of_100_steps_at_one_percent() -> None:
    # P(X <= 0) = 0.99^100 = 0.366 > 0.025, so lo = 0; P(X <= 2) = 0.921 < 0.975 <= P(X <= 3) = 0.982.
    assert _cdf(2, 100, 0.01) < 0.975 <= _cdf(3, 100, 0.01)
    assert binomial_interval(100, 0.01) == (0, 3)


@pytest.mark.parametrize(("n", "p"), [(280, 0.01), (1000, 0.05), (57, 0.2), (10, 0.5)])
def test_the_interval_is_the_smallest_count_reaching_each_tail(n: int, p: float) -> None:
    lo, hi = binomial_interval(n, p)
    assert _cdf(lo, n, p) >= 0.025 and (lo == 0 or _cdf(lo - 1, n, p) < 0.025)
    assert _cdf(hi, n, p) >= 0.975 and _cdf(hi - 1, n, p) < 0.975


def test_degenerate_and_bad_arguments() -> None:
    assert binomial_interval(0, 0.01) == (0, 0)
    assert binomial_interval(50, 0.0) == (0, 0)
    assert binomial_interval(50, 1.0) == (50, 50)
    with pytest.raises(ValueError, match="eps must be in"):
        binomial_interval(10, 1.5)
    with pytest.raises(ValueError, match="steps must be"):
        binomial_interval(-1, 0.1)


def test_services_are_counted_below_inside_and_above() -> None:
    # 1000 steps at 5%: the interval is [37, 64] (checked against the CDF below).
    assert binomial_interval(1000, 0.05) == (37, 64)
    assert _cdf(36, 1000, 0.05) < 0.025 <= _cdf(37, 1000, 0.05)
    rows = [
        ("total", "harmony", "a", 1000, 36),  # below
        ("total", "harmony", "b", 1000, 37),  # inside (the edge)
        ("total", "harmony", "c", 1000, 64),  # inside (the edge)
        ("total", "harmony", "d", 1000, 65),  # above
        ("total", "harmony", "e", 0, 0),  # no scored step: left out
        ("total", "hpa", "a", 1000, 500),  # not asked for
    ]
    frame = pd.DataFrame(rows, columns=["criterion", "policy", "series", "steps", "violations"])
    out = held_to_eps(frame, {("total", "harmony"): 0.05})
    assert out.to_dict("records") == [
        {
            "criterion": "total",
            "policy": "harmony",
            "eps": 0.05,
            "series": 4,
            "below": 1,
            "inside": 2,
            "above": 1,
            "floor_bound": 0,  # without an `exposed` column every scored step counts as exposed
        }
    ]


def test_a_service_below_with_too_few_exposed_steps_is_floor_bound() -> None:
    # 1000 steps at 5%: the interval's lower end is 37 violated steps.
    rows = [
        ("total", "harmony", "idle", 1000, 3, 36),  # below, and could not violate 37 steps: floor-bound
        ("total", "harmony", "busy", 1000, 3, 37),  # below, but 37 steps were there to violate
        ("total", "harmony", "held", 1000, 40, 400),  # inside
    ]
    frame = pd.DataFrame(rows, columns=["criterion", "policy", "series", "steps", "violations", "exposed"])
    out = held_to_eps(frame, {("total", "harmony"): 0.05}).to_dict("records")[0]
    assert (out["below"], out["inside"], out["above"], out["floor_bound"]) == (2, 1, 0, 1)
