"""The backtest's per-series work in this process against the same work on a local Ray cluster.

    python -m benchmarks.executor [--dataset alibaba_gentd26] [--series 48] [--per-group 4] [--workers 2]
                                  [--max-steps 400]

The first `--series` series of a real trace (the GPU containers by default), a seasonal naive forecaster
fitted on the training part (seconds: what is measured is the replay, not a model), HARMONY, EHPA, ARIMA,
the HPA and static searched on the validation part and replayed on the test part, in groups of
`--per-group` series: once with the local executor, once with `--workers` Ray actors on a local Ray instance
started by the command (its start-up is timed apart). It prints the wall time of each, their ratio, and
whether every table of the two results is identical (the draws' seeds follow the groups, not the
executor). On one machine the ratio is bounded by its cores; a cluster adds workers, not code.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from harmony.backtest import (
    ClassicalSweep,
    HPASweep,
    PoliciesConfig,
    RiskSweep,
    Settings,
    StaticSweep,
    run_backtest,
)
from harmony.backtest.checks import capacities_of
from harmony.backtest.executor import LocalExecutor, RayExecutor
from harmony.backtest.run import BacktestResult
from harmony.data.catalog import load
from harmony.data.summary import render_table
from harmony.data.windows import chronological_split
from harmony.model.base import ForecastSpec
from harmony.model.seasonal_naive import SeasonalNaiveForecaster

POLICIES = PoliciesConfig(
    harmony=RiskSweep([0.2, 0.1, 0.05, 0.02, 0.01, 0.005], scale_down_window_s=[0.0, 342.0]),
    ehpa=HPASweep([0.3, 0.5, 0.7, 0.9], scale_down_window_s=[0.0, 342.0]),
    arima=ClassicalSweep([0.0, 0.5, 1.0, 2.0, 4.0], history=240, refit_every=120),
    hpa=HPASweep([0.3, 0.5, 0.7, 0.9], tolerance=[0.1, 0.0], scale_down_window_s=[0.0, 342.0]),
    static=StaticSweep([0.0, 0.25]),
)


def identical(a: BacktestResult, b: BacktestResult) -> bool:
    frames = ("validated", "summary", "per_run", "val_summary", "per_service")
    try:
        for name in frames:
            pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    except AssertionError:
        return False
    return a.capacity.keys() == b.capacity.keys() and all(
        np.array_equal(v, b.capacity[k]) for k, v in a.capacity.items()
    )


def main() -> None:
    from harmony.output import quiet_third_party

    quiet_third_party()  # the same quiet output as the harmony command
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="alibaba_gentd26")
    p.add_argument("--series", type=int, default=48)
    p.add_argument("--per-group", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=400)
    args = p.parse_args()

    trace = load(args.dataset)
    trace = trace.select(series=list(trace.series_ids)[: args.series])
    split = chronological_split(trace, (0.7, 0.1, 0.2), by="time")
    # The GPU containers as configs/backtest/alibaba_gentd26.yaml replays them (GPU slices); else the card's.
    caps = (
        {"gpu_util": 10.0, "qps": 0.27} if args.dataset == "alibaba_gentd26" else capacities_of(trace, None)
    )
    spec = ForecastSpec.for_trace(trace, lookback=60, horizon=4, lead_time=1, targets=list(caps))
    model = SeasonalNaiveForecaster(spec)
    model.fit(trace, split)
    settings = Settings(
        capacities=caps,
        lead_time=1,
        max_steps=args.max_steps,
        num_samples=50,
        violation_penalty=0.1,
        policies=POLICIES,
    )

    t0 = time.perf_counter()
    local = run_backtest(trace, split, model, settings, executor=LocalExecutor(args.per_group))
    local_s = time.perf_counter() - t0

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    remote = run_backtest(
        trace, split, model, settings, executor=RayExecutor(args.per_group, workers=args.workers)
    )
    ray_s = time.perf_counter() - t0
    ray.shutdown()

    steps = int(local.summary["steps"].iloc[0])
    rows = pd.DataFrame(
        [
            {"executor": "local", "workers": 1, "wall_s": local_s, "vs_local": 1.0},
            {"executor": "ray", "workers": args.workers, "wall_s": ray_s, "vs_local": ray_s / local_s},
        ]
    ).set_index("executor")
    print(
        f"{args.dataset}: {len(local.series)} series in groups of {args.per_group}, {steps} scored test "
        f"steps, {len(local.summary)} test settings and {len(local.val_summary)} validation settings replayed"
    )
    print(render_table(rows))
    print(f"ray start-up (not in wall_s): {start_s:.1f} s")
    print(f"tables identical: {identical(local, remote)}")


if __name__ == "__main__":
    main()
