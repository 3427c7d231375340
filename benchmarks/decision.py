"""Decision latency and the backtest's cost at a matched SLA on the real traces.

    python -m benchmarks.decision [--configs fisher_containers,...] [--set key=value ...] [--latency-only]

Latency: one HARMONY decision (100 draws x 12 steps x 2 demand indicators, with the Bayesian update) against
one HPA decision in the same process. Backtests: configs/backtest/NAME.yaml, the matched table (each policy
at the target violation rate: cost relative to the HPA and to the perfect-foresight oracle), the lower
bound on any policy's cost at that rate, and the per-service table (each policy's cheapest knob keeping
every series within the rate, and each series tuned in hindsight). Targets:
HARMONY <= 0.8x the HPA and <= 1.25x the oracle at 1% violations; one decision under 2 ms.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from harmony.decision import Decider, DecisionConfig
from harmony.policies import HPAPolicy

ROOT = Path(__file__).resolve().parents[1]


def latency() -> None:
    names = ["requests", "gpu_util"]
    config = DecisionConfig(
        capacities={"requests": 20.0, "gpu_util": 0.8},
        max_replicas=1000,
        max_violation_probability=0.01,
        violation_penalty=5.0,
        interval_s=60.0,
    )
    rng = np.random.default_rng(0)
    draws = [rng.gamma(5.0, 20.0, size=(100, 12, 2)) for _ in range(64)]
    rows = []
    for label, policy in (
        ("harmony (decide + observe)", Decider(config)),
        ("hpa (decide + observe)", HPAPolicy(config.capacities, max_replicas=1000, interval_s=60.0)),
    ):
        replicas = 5
        times = []
        for k in range(3000):
            sample = draws[k % 64]
            demand = {n: float(sample[k % 100, 0, j]) for j, n in enumerate(names)}
            t = time.perf_counter()
            d = policy.decide(sample, names, replicas, float(k * 60), current_demand=demand)
            policy.observe(demand, d.replicas)
            times.append(time.perf_counter() - t)
            replicas = d.replicas
        rows.append((label, np.median(times[200:]) * 1e6, np.quantile(times[200:], 0.99) * 1e6))
    print(f"{'policy':<30}{'median us':>10}{'p99 us':>10}")
    for label, med, p99 in rows:
        print(f"{label:<30}{med:>10.1f}{p99:>10.1f}")
    print(f"ratio harmony / hpa (median): {rows[0][1] / rows[1][1]:.1f}x   target: one decision < 2000 us")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="fisher_containers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--latency-only", action="store_true")
    args = p.parse_args()
    latency()
    if args.latency_only:
        return
    from harmony.backtest import load_backtest_config, run_config
    from harmony.data.summary import render_table
    from harmony.report import bound_text

    for name in filter(None, args.configs.split(",")):
        cfg = load_backtest_config(ROOT / "configs" / "backtest" / f"{name}.yaml", args.set)
        t0 = time.perf_counter()
        run = run_config(cfg)
        print(f"\n=== {name} ({time.perf_counter() - t0:.0f} s)")
        print(render_table(run.result.matched.set_index("policy")))
        print(bound_text(run.result))
        print("every series within the target rate:")
        print(render_table(run.result.per_service.set_index("policy")))


if __name__ == "__main__":
    main()
