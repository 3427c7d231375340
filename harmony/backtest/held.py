"""Is each service held to the violation probability its policy was set to?

A policy run at eps (HARMONY's and quantile-only's risk knob) promises that each step of each service is
violated with probability at most eps. Over `n` scored steps the violated count of a service that keeps
exactly that promise is Binomial(n, eps), so its realised rate falls inside the two-sided 95% interval of
that distribution 95% of the time (or more: the interval of a discrete law covers at least its level). A
rate above the interval says the policy let that service down; below it, that it paid for more safety than
it was asked for, unless the service could not violate that often at all: a step whose demand the floor
(`min_replicas`) already serves is violated by no count a policy may set, so a service with fewer such
`exposed` steps than the interval's lower end is below it whatever the policy does (`floor_bound`). Such a
service keeps its promise (P(violation) <= eps) but cannot be inside the interval; the count proves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from scipy.stats import binom

from harmony.backtest.search import Tuned

# The policies whose primary knob is a per-step violation probability.
RISK_POLICIES = ("harmony", "quantile")


def binomial_interval(steps: int, eps: float, level: float = 0.95) -> tuple[int, int]:
    """The violated counts [lo, hi] of the central `level` interval of Binomial(steps, eps)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0
    return int(binom.ppf(tail, steps, eps)), int(binom.ppf(1.0 - tail, steps, eps))


def held_to_eps(
    per_service: pd.DataFrame, eps: Mapping[tuple[str, str], float], level: float = 0.95
) -> pd.DataFrame:
    """Per (criterion, policy) with a risk knob: how many services' violated counts on the test part lie
    below, inside and above the binomial `level` interval at the eps chosen for it.

    `per_service` has columns criterion, policy, series, steps, violations (BacktestResult.per_service) and,
    when known, `exposed` (the steps the floor's capacity does not serve); `eps[(criterion, policy)]` the eps
    the policy ran at. Series without scored steps are left out. `floor_bound` counts the services below the
    interval that no policy could have brought into it (fewer exposed steps than its lower end).
    """
    rows: list[dict[str, Any]] = []
    for (criterion, policy), e in eps.items():
        mine = per_service[(per_service["criterion"] == criterion) & (per_service["policy"] == policy)]
        mine = mine[mine["steps"] > 0]
        below = inside = above = bound = 0
        exposed = mine["exposed"] if "exposed" in mine else mine["steps"]
        for steps, violations, open_ in zip(mine["steps"], mine["violations"], exposed, strict=True):
            lo, hi = binomial_interval(int(steps), e, level)
            if violations < lo:
                below += 1
                bound += int(open_ < lo)
            elif violations > hi:
                above += 1
            else:
                inside += 1
        rows.append(
            {
                "criterion": criterion,
                "policy": policy,
                "eps": e,
                "series": len(mine),
                "below": below,
                "inside": inside,
                "above": above,
                "floor_bound": bound,
            }
        )
    columns = ["criterion", "policy", "eps", "series", "below", "inside", "above", "floor_bound"]
    return pd.DataFrame(rows, columns=columns)


def chosen_eps(tuned: Mapping[str, Mapping[str, Tuned]]) -> dict[tuple[str, str], float]:
    """(criterion, policy) -> the eps chosen on validation, for the policies with a risk knob.
    `tuned[policy][criterion]` is what `tune` chose (its `knobs.primary` is the eps)."""
    return {
        (criterion, policy): float(t.knobs.primary)
        for policy, by in tuned.items()
        if policy in RISK_POLICIES
        for criterion, t in by.items()
    }
