"""Per-window normalisation: the floor of the scale, and its cap by the window's own magnitude."""

from __future__ import annotations

import pytest
import torch

from harmony.model.neural import InstanceNorm


def _norm(floor: list[float], cap: float = 0.0) -> InstanceNorm:
    norm = InstanceNorm(len(floor), list(range(len(floor))), window_cap=cap)
    norm.floor.copy_(torch.tensor(floor))  # type: ignore[operator]
    return norm


def _window(*columns: list[float]) -> torch.Tensor:
    return torch.tensor(columns, dtype=torch.float32).T.unsqueeze(0)  # [1, L, N]


def test_scale_is_the_window_std_above_the_floor_and_the_floor_below_it() -> None:
    # column 0: values 1, 3 -> mean 2, population std 1 (> floor 0.5); column 1: flat -> the floor 0.5
    mu, sd = _norm([0.5, 0.5]).stats(_window([1.0, 3.0], [7.0, 7.0]))
    assert mu.flatten().tolist() == [2.0, 7.0]
    assert sd.flatten().tolist() == [1.0, 0.5]


def test_window_cap_lowers_the_floor_to_a_fraction_of_the_windows_peak() -> None:
    # the trace-wide floor 10 dwarfs a series living around 2: the cap 0.05 x max|x| = 0.05 x 2.1 = 0.105
    # replaces it; the window's own std (0.05) is below that, so the scale is 0.105
    window = _window([2.0, 2.1, 2.0, 2.1])
    assert float(window.std(unbiased=False)) == pytest.approx(0.05)
    _, uncapped = _norm([10.0]).stats(window)
    _, capped = _norm([10.0], cap=0.05).stats(window)
    assert float(uncapped) == 10.0
    assert float(capped) == pytest.approx(0.05 * 2.1)


def test_window_cap_never_raises_the_floor_and_keeps_it_for_a_window_of_zeros() -> None:
    norm = _norm([0.01, 3.0], cap=0.05)
    # column 0: peak 100 -> cap 5 > floor 0.01, the floor stays; column 1: all zeros -> the full floor 3
    _, sd = norm.stats(_window([100.0, 100.0], [0.0, 0.0]))
    assert sd.flatten().tolist() == pytest.approx([0.01, 3.0])


def test_window_cap_uses_the_largest_magnitude_negative_values_included() -> None:
    _, sd = _norm([10.0], cap=0.1).stats(_window([-4.0, -4.0, 1.0, -4.0]))
    std = float(torch.tensor([-4.0, -4.0, 1.0, -4.0]).std(unbiased=False))  # 2.165 > cap 0.4
    assert float(sd) == pytest.approx(std)
    _, sd_flat = _norm([10.0], cap=0.1).stats(_window([-4.0, -4.0]))
    assert float(sd_flat) == pytest.approx(0.4)


def test_negative_window_cap_is_rejected() -> None:
    with pytest.raises(ValueError, match="norm_floor_window must be >= 0"):
        InstanceNorm(2, [0], window_cap=-0.1)
