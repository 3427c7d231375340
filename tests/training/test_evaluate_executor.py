"""harmony evaluate on Ray: every (model, series) scored as a Ray task gives the local tables."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest

from harmony.data.trace import Trace
from harmony.data.windows import chronological_split
from harmony.model.base import ForecastSpec
from harmony.model.seasonal_naive import SeasonalNaiveForecaster
from harmony.training.evaluate import evaluate


def test_ray_scores_give_the_local_table(load_trace: Callable[[str], Trace]) -> None:
    import ray

    trace = load_trace("fisher_containers").select(series=["container1", "container2", "container3"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=144, horizon=3, lead_time=1, targets=["load", "cpu_cores"])
    models = {
        "seasonal_naive": SeasonalNaiveForecaster(spec),
        "persistence": SeasonalNaiveForecaster(spec, season_steps=1),
    }
    for m in models.values():
        m.fit(trace, split)
    kwargs = {"n_samples": 30, "max_windows": 12, "seed": 3}
    lines: list[str] = []
    local = evaluate(trace, split, models, **kwargs)  # type: ignore[arg-type]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = evaluate(trace, split, models, executor="ray", log=lines.append, **kwargs)  # type: ignore[arg-type]
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(local.per_series, remote.per_series)
    pd.testing.assert_frame_equal(local.summary, remote.summary)
    assert len(local.per_series) == 2 * 3 * 2  # models x series x targets
    assert lines and lines[-1].startswith("scoring the test part")


def test_an_unknown_executor_is_named(load_trace: Callable[[str], Trace]) -> None:
    trace = load_trace("fisher_containers").select(series=["container1"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=24, horizon=2, lead_time=1, targets=["load"])
    with pytest.raises(ValueError, match="unknown executor 'dask'; expected local or ray"):
        evaluate(trace, split, {"s": SeasonalNaiveForecaster(spec)}, max_windows=2, executor="dask")
