"""The executor seam: groups of series replayed in this process or on Ray actors give the same tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from backtest_helpers import settings

from harmony.backtest import (
    ClassicalSweep,
    HPASweep,
    PoliciesConfig,
    RiskSweep,
    StaticSweep,
    TuningConfig,
    load_backtest_config,
    run_backtest,
)
from harmony.backtest.executor import LocalExecutor, RayExecutor, group_series, make_executor
from harmony.backtest.replay import prepare_series
from harmony.backtest.run import BacktestResult
from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.model.seasonal_naive import SeasonalNaiveForecaster
from harmony.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
Fisher = tuple[Trace, Split, SeasonalNaiveForecaster]
SMALL = PoliciesConfig(
    harmony=RiskSweep([0.05, 0.01]),
    ehpa=HPASweep([0.5, 0.9]),
    arima=ClassicalSweep([0.0, 1.0], history=288, refit_every=144),
    static=StaticSweep([0.0]),
)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _tables(r: BacktestResult) -> dict[str, pd.DataFrame]:
    return {
        "validated": r.validated,
        "summary": r.summary,
        "per_run": r.per_run,
        "val_summary": r.val_summary,
        "per_service": r.per_service,
    }


def test_ray_gives_the_local_tables(fisher: Fisher, ray_cluster: None) -> None:
    trace, split, model = fisher
    # The forecaster's draws (and their medians) and a classical model's forecasts, where the groups live;
    # few knobs: what is checked is where the work runs, not the search.
    s = settings(max_steps=60, policies=SMALL, tuning=TuningConfig(refine=0))
    local = run_backtest(trace, split, model, s, executor=LocalExecutor(series_per_group=1))
    remote = run_backtest(trace, split, model, s, executor=RayExecutor(series_per_group=1, workers=2))
    for name, frame in _tables(local).items():
        pd.testing.assert_frame_equal(frame, _tables(remote)[name], obj=name)
    assert local.headline == remote.headline and local.bounds == remote.bounds
    assert local.capacity.keys() == remote.capacity.keys()
    for key, cap in local.capacity.items():
        np.testing.assert_array_equal(cap, remote.capacity[key])
    for name in ("arima", "ets"):
        assert local.classical[name].fits == remote.classical[name].fits


def test_one_group_is_the_default(fisher: Fisher) -> None:
    """The default executor is one local group: the seeds, hence the tables, of a run without one."""
    trace, split, model = fisher
    s = settings(max_steps=60, policies=PoliciesConfig(harmony=SMALL.harmony))
    plain = run_backtest(trace, split, model, s)
    grouped = run_backtest(trace, split, model, s, executor=LocalExecutor(series_per_group=None))
    pd.testing.assert_frame_equal(plain.per_run, grouped.per_run)


def test_groups_are_consecutive_and_cover_every_series(fisher: Fisher) -> None:
    trace, split, _ = fisher
    datas = []
    for sid in trace.series_ids:
        planned = prepare_series(trace, split, sid, settings(), lookback=24, part="test")
        assert not isinstance(planned, str), planned
        datas.append(planned)
    assert [[d.series for d in g] for g in group_series(datas, 1)] == [["container1"], ["container2"]]
    assert len(group_series(datas, 5)) == 1 and len(group_series(datas, None)) == 1
    with pytest.raises(ValueError, match="per_group must be >= 1"):
        group_series(datas, 0)


def test_the_executor_is_chosen_and_checked_in_the_config(tmp_path: Path) -> None:
    base = str(ROOT / "configs" / "fisher_containers.yaml")
    path = tmp_path / "bt.yaml"
    path.write_text(yaml.safe_dump({"base": base, "backtest": {"executor": "ray"}}))
    with pytest.raises(ConfigError, match=r"backtest\.series_per_group: the ray executor distributes groups"):
        load_backtest_config(path)
    path.write_text(yaml.safe_dump({"base": base, "backtest": {"executor": "dask"}}))
    with pytest.raises(ConfigError, match=r"backtest\.executor: expected one of"):
        load_backtest_config(path)
    cfg = load_backtest_config(path, ["backtest.executor=ray", "backtest.series_per_group=4"])
    executor = make_executor(
        cfg.backtest.executor,
        series_per_group=cfg.backtest.series_per_group,
        address=cfg.backtest.ray_address,
    )
    assert isinstance(executor, RayExecutor) and executor.series_per_group == 4
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        make_executor("dask", series_per_group=None)
