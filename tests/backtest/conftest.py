"""The backtest tests' shared fixture: the Fisher slice and its seasonal naive forecaster, fitted once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from backtest_helpers import SERIES

from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split
from harmony.model.base import ForecastSpec
from harmony.model.seasonal_naive import SeasonalNaiveForecaster


@pytest.fixture(scope="module")
def fisher(load_trace: Callable[[str], Trace]) -> tuple[Trace, Split, SeasonalNaiveForecaster]:
    """Two real containers, the 70/10/20 split, a seasonal naive forecaster of load (lookback 4 hours)."""
    trace = load_trace("fisher_containers").select(series=SERIES)
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=24, horizon=4, lead_time=1, targets=["load"])
    model = SeasonalNaiveForecaster(spec)
    model.fit(trace, split)
    return trace, split, model
