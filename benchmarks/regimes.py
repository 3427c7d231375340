"""Where each policy's replicas go on the test part: the steps after an idle one (the floor served its
demand) against the steps after a busy one, at the knobs chosen on validation.

    python -m benchmarks.regimes [--config alibaba_gentd26] [--seed 0] [--set key=value ...]

Runs configs/backtest/NAME.yaml with HARMONY, the point forecast and the oracle (the forecaster of
`benchmarks.decision`'s folder for that seed, trained there if missing), every series with a test part
replayed: `policies.static` is off, since a static baseline leaves out the series without history before a
part. A step's regime is read a lead time plus one step before it, where the decision that serves it was
made. For each policy, criterion and regime: the steps, the mean count held and needed, the violated share,
and the regime's share of the replica-steps held above the need. Then how often an idle step is followed,
a lead time plus one step later, by one the floor does not serve: what a causal policy hedges against.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from benchmarks.decision import seed_config

POLICIES = ("harmony", "point", "oracle")


def regimes(name: str, seed: int, sets: list[str]) -> None:
    from harmony.backtest import CRITERIA, needed_replicas, run_config
    from harmony.data.summary import render_table

    off = [f"policies.{p}=null" for p in ("quantile", "ehpa", "arima", "ets", "hpa", "static")]
    result = run_config(seed_config(name, seed, [*off, *sets])).result
    settings = result.settings
    floor = settings.scaling.min_replicas
    ahead = settings.lead_time + 1
    needs = {sid: needed_replicas(d, settings) for sid, d in result.demand.items()}
    rows = []
    for criterion in CRITERIA:
        for policy in POLICIES:
            knobs = result.tuned[policy][criterion].knobs.text()
            held: dict[str, list[float]] = {"idle": [], "busy": []}
            need_of: dict[str, list[float]] = {"idle": [], "busy": []}
            for sid, need in needs.items():
                count = np.asarray(result.capacity[(policy, knobs, sid)], dtype=np.float64)
                before, now, served = need[:-ahead], need[ahead:], count[ahead:]
                keep = np.isfinite(before) & np.isfinite(now)
                idle = before[keep] <= floor
                for regime, mask in (("idle", idle), ("busy", ~idle)):
                    held[regime].extend(served[keep][mask])
                    need_of[regime].extend(np.maximum(now[keep][mask], floor))
            excess = {r: float(np.sum(np.subtract(held[r], need_of[r]))) for r in held}
            above = sum(excess.values())
            for regime in ("idle", "busy"):
                h, n = np.asarray(held[regime]), np.asarray(need_of[regime])
                rows.append(
                    {
                        "criterion": criterion,
                        "policy": policy,
                        "regime": regime,
                        "steps": h.size,
                        "held": float(h.mean()) if h.size else np.nan,
                        "needed": float(n.mean()) if n.size else np.nan,
                        "violated_%": 100 * float((n > h).mean()) if h.size else np.nan,
                        "excess_share": excess[regime] / above if above else np.nan,
                    }
                )
    print(f"\n=== {name}, seed {seed}: counts held by regime on the test part, knobs chosen on validation")
    print(render_table(pd.DataFrame(rows).set_index(["criterion", "policy", "regime"])))
    onsets = [(need[:-ahead] <= floor) & (need[ahead:] > floor) for need in needs.values()]
    idles = [(need[:-ahead] <= floor) & np.isfinite(need[ahead:]) for need in needs.values()]
    share = sum(int(o.sum()) for o in onsets) / max(1, sum(int(i.sum()) for i in idles))
    print(
        f"idle steps followed {ahead} steps later by one the floor ({floor}) does not serve: "
        f"{100 * share:.2f}% (the violation target is {100 * settings.target_violation_rate:g}%)"
    )


def main() -> None:
    from harmony.output import quiet_third_party

    quiet_third_party()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="alibaba_gentd26", help="a config name in configs/backtest")
    p.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    regimes(args.config, args.seed, args.set)


if __name__ == "__main__":
    main()
