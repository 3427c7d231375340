"""What the backtest concludes: the validated table (knobs chosen on validation, reported on test), the
headline share of the gap to the lower bound, the hindsight frontier on the lower convex hull, and the bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harmony.backtest.replay import Settings
from harmony.backtest.search import Tuned
from harmony.backtest.sections import BASELINES
from harmony.backtest.sweep import CAUSE_COLUMNS, RATE_TOLERANCE
from harmony.decision import ceil_replicas

__all__ = [
    "cost_at_rate",
    "cost_bound",
    "gap_captured",
    "headline",
    "hindsight_table",
    "lower_hull",
    "needed_replicas",
    "validated_table",
]

FloatArray = NDArray[np.float64]


def lower_hull(rates: Sequence[float], costs: Sequence[float]) -> list[int]:
    """Indices of the points on the lower-left convex frontier of (violation rate, cost), by rising rate.

    Alternating two settings over time reaches any point on the segment between them, so what a policy can
    reach at rate r is the lower convex hull of its points, taken where it does not rise: past its cheapest
    point, a looser rate costs no more (the cheapest point itself is reachable at any looser rate).
    Non-finite points are ignored.
    """
    pts = sorted(
        (float(r), float(c), i)
        for i, (r, c) in enumerate(zip(rates, costs, strict=True))
        if math.isfinite(float(r)) and math.isfinite(float(c))
    )
    hull: list[tuple[float, float, int]] = []
    for r, c, i in pts:
        if hull and hull[-1][0] == r:
            if c >= hull[-1][1]:
                continue
            hull.pop()
        while len(hull) >= 2:
            (r1, c1, _), (r2, c2, _) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or above the segment from hull[-2] to the new point.
            if (c2 - c1) * (r - r1) >= (c - c1) * (r2 - r1):
                hull.pop()
            else:
                break
        hull.append((r, c, i))
    # Keep the falling part: the hull up to its cheapest point.
    cheapest = min(range(len(hull)), key=lambda k: (hull[k][1], hull[k][0])) if hull else -1
    return [i for _, _, i in hull[: cheapest + 1]]


def cost_at_rate(rates: Sequence[float], costs: Sequence[float], target: float) -> tuple[float, list[int]]:
    """The least cost a policy reaches at violation rate `target`, on the lower convex hull of its points.

    Between two hull points the cost is linear in the rate (alternating the two settings over time); below
    the lowest rate reached: NaN (the policy cannot get there); at or above the cheapest point's rate: that
    point's cost. Adding a point never raises the result. Returns (cost, indices of the points used).
    """
    idx = lower_hull(rates, costs)
    if not idx:
        return math.nan, []
    r = [float(rates[i]) for i in idx]
    c = [float(costs[i]) for i in idx]
    below = [k for k in range(len(idx)) if r[k] <= target + RATE_TOLERANCE]
    if not below:
        return math.nan, []
    k = below[-1]  # the hull falls: the last point at or below the target rate is the cheapest of them
    if k == len(idx) - 1 or abs(r[k] - target) <= RATE_TOLERANCE:
        return c[k], [idx[k]]
    w = (target - r[k]) / (r[k + 1] - r[k])
    return c[k] + w * (c[k + 1] - c[k]), [idx[k], idx[k + 1]]


def cost_bound(
    demand: Mapping[str, FloatArray],
    settings: Settings,
    rate: float,
    step_s: float,
    *,
    per_series: bool = False,
) -> float:
    """The least cost any policy can reach with at most `rate` of the scored steps violated.

    Each scored step (any demand known) needs `n = max_i ceil(d_i / c_i)` replicas, clipped to
    [min_replicas, max_replicas]; a step whose need is above max_replicas is violated by every policy. A
    policy that violates a step pays at least min_replicas there plus the penalty, so the cheapest way to
    spend the budget of `floor(rate x steps)` violations is on the steps that save the most, as long as the
    saving beats the penalty. Lead time, decision interval and stabilisation only add to the cost, so no
    policy at that violation rate is cheaper. With `per_series`, every series has its own budget (every
    service within the rate), which can only cost more. `demand[series]` is [steps, D] over the scored steps
    in `settings.names` order, NaN where unknown; `step_s` the length of a step in seconds.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    needs = [n[np.isfinite(n)] for n in (needed_replicas(d, settings) for d in demand.values())]
    if not any(n.size for n in needs):
        return math.nan
    groups = needs if per_series else [np.concatenate(needs)]
    return float(sum(_bound(n, settings, rate, step_s) for n in groups if n.size))


def needed_replicas(demand: FloatArray, settings: Settings) -> FloatArray:
    """The replicas each step's demand needs, `max_i ceil(d_i / c_i)` over the indicators known there
    (unclipped; NaN where none is known). `demand` is [steps, D] in `settings.names` order."""
    caps = np.array([settings.capacities[n] for n in settings.names], dtype=np.float64)
    ratio = np.where(np.isfinite(demand), demand / caps, -np.inf).max(axis=1)
    return np.array([ceil_replicas(float(x)) if x > -np.inf else np.nan for x in ratio], dtype=np.float64)


def _bound(need: FloatArray, settings: Settings, rate: float, step_s: float) -> float:
    sc = settings.scaling
    forced = need > sc.max_replicas
    need = np.clip(need, sc.min_replicas, sc.max_replicas)
    hour = step_s / 3600.0
    price, penalty = settings.replica_hour_price, settings.violation_penalty
    budget = math.floor(rate * need.size + 1e-9) - int(forced.sum())
    # Forced violations: the step is lost at any count, so the cheapest count there is min_replicas.
    cost = price * hour * (need[~forced].sum() + sc.min_replicas * forced.sum()) + penalty * forced.sum()
    if budget > 0:
        savings = np.sort(price * hour * (need[~forced] - sc.min_replicas) - penalty)[::-1][:budget]
        cost -= float(savings[savings > 0].sum())
    return float(cost)


def gap_captured(policy_cost: float, baseline_cost: float, bound: float) -> float:
    """(baseline - policy) / (baseline - bound): 1 reaches the bound, 0 ties the baseline, < 0 costs more.
    NaN when the baseline is not above the bound (there is no gap to capture)."""
    room = baseline_cost - bound
    if not (math.isfinite(room) and math.isfinite(policy_cost)) or room <= 0:
        return math.nan
    return (baseline_cost - policy_cost) / room


def validated_table(
    tuned: Mapping[str, Mapping[str, Tuned]],
    test: Mapping[tuple[str, str], Mapping[str, Any]],
    bounds: Mapping[str, float],
) -> pd.DataFrame:
    """One row per (criterion, policy): the knobs chosen on the validation part, what they did there, and
    what the same knobs did on the test part (`test[(criterion, policy)]`: a summary row), with its cost
    relative to the HPA's, the oracle's and the best baseline's, and the share of the gap to the bound.

    The best baseline is the cheapest on the test part of the baselines whose knobs met the criterion on the
    validation part (all baselines when none did): a choice made with the validation part alone."""
    rows: list[dict[str, Any]] = []
    for criterion in ("total", "service"):
        for policy, by in tuned.items():
            t = by[criterion]
            s = test[(criterion, policy)]
            rows.append(
                {
                    "criterion": criterion,
                    "policy": policy,
                    "knobs": t.knobs.text(),
                    "met_on_val": t.met,
                    "val_violation_rate": float(t.val["violation_rate"]),
                    "val_worst_violation_rate": float(t.val["worst_violation_rate"]),
                    "val_cost": float(t.val["cost"]),
                    "violation_rate": float(s["violation_rate"]),
                    "worst_violation_rate": float(s["worst_violation_rate"]),
                    "services_within_sla": int(s["services_within_sla"]),
                    "series": int(s["series"]),
                    "cost": float(s["cost"]),
                    "replica_hours": float(s["replica_hours"]),
                    "decisions": float(s["decisions"]),
                    "fallbacks": float(s["fallbacks"]),
                    **{col: float(s[col]) for col in CAUSE_COLUMNS.values()},
                    "replays_on_val": t.replays,
                }
            )
    table = pd.DataFrame(rows)
    for crit, g in table.groupby("criterion", sort=False):
        cost = dict(zip(g["policy"], g["cost"], strict=True))
        met = dict(zip(g["policy"], g["met_on_val"], strict=True))
        base = [p for p in BASELINES if p in cost and math.isfinite(cost[p])]
        # The comparator is a baseline whose knobs met the target on validation (a cheaper one that could
        # not, and so violates more, is no fair comparison); only when none did, the cheapest of them all.
        tuned_base = [p for p in base if met[p]] or base
        best = min(tuned_base, key=lambda p: cost[p]) if tuned_base else None
        idx = g.index
        table.loc[idx, "cost_rel_hpa"] = g["cost"] / cost.get("hpa", math.nan)
        table.loc[idx, "cost_rel_oracle"] = g["cost"] / cost.get("oracle", math.nan)
        table.loc[idx, "cost_rel_best"] = g["cost"] / (cost[best] if best else math.nan)
        bound = bounds.get(str(crit), math.nan)
        table.loc[idx, "gap_captured"] = [
            gap_captured(c, cost[best], bound) if best else math.nan for c in g["cost"]
        ]
        table.loc[idx, "best_baseline"] = best or "-"
    return table


def headline(validated: pd.DataFrame, bounds: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per criterion: HARMONY's test cost at its validated knobs against the best baseline's, the HPA's, the
    oracle's and the lower bound, and the share of the gap between the best baseline and the bound that
    HARMONY captures."""
    out: dict[str, dict[str, Any]] = {}
    for criterion, g in validated.groupby("criterion", sort=False):
        rows = {str(r["policy"]): r for r in g.to_dict("records")}
        if "harmony" not in rows:
            continue
        h = rows["harmony"]
        best = str(h["best_baseline"])
        out[str(criterion)] = {
            "harmony_cost": float(h["cost"]),
            "harmony_violation_rate": float(h["violation_rate"]),
            "harmony_worst_violation_rate": float(h["worst_violation_rate"]),
            "best_baseline": best,
            "best_baseline_cost": float(rows[best]["cost"]) if best in rows else math.nan,
            "best_baseline_violation_rate": float(rows[best]["violation_rate"]) if best in rows else math.nan,
            "bound": float(bounds.get(str(criterion), math.nan)),
            "gap_captured": float(h["gap_captured"]),
            "vs_best": float(h["cost_rel_best"]),
            "vs_hpa": float(h["cost_rel_hpa"]),
            "vs_oracle": float(h["cost_rel_oracle"]),
        }
    return out


def _between(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The knobs of two settings alternated over time: 'name=x..y rest' when only the primary differs."""
    if a["setting"] == b["setting"]:
        rest = "" if a["setting"] == "-" else f" {a['setting']}"
        return f"{a['knob_name']}={float(a['knob']):g}..{float(b['knob']):g}{rest}"
    return f"{a['knobs']} .. {b['knobs']}"


def hindsight_table(summary: pd.DataFrame, target: float, bound: float) -> pd.DataFrame:
    """One row per policy: the least cost its replayed test points reach at the target rate on their lower
    convex hull, read on the test part itself (hindsight), relative to the HPA's, the oracle's and the best
    baseline's there, and the share of the gap to the bound."""
    rows: list[dict[str, Any]] = []
    for policy in dict.fromkeys(summary["policy"]):
        g = summary[summary["policy"] == policy].reset_index(drop=True)
        cost, used = cost_at_rate(g["violation_rate"].tolist(), g["cost"].tolist(), target)
        if len(used) == 2:
            rate, knobs = target, _between(g.iloc[used[0]], g.iloc[used[1]])
        elif used:
            rate, knobs = float(g["violation_rate"].iloc[used[0]]), str(g["knobs"].iloc[used[0]])
        else:
            rate, knobs = math.nan, "not_reached"
        rows.append({"policy": policy, "knobs": knobs, "violation_rate": rate, "cost": cost})
    table = pd.DataFrame(rows)
    cost_of = dict(zip(table["policy"], table["cost"], strict=True))
    base = [p for p in BASELINES if p in cost_of and math.isfinite(cost_of[p])]
    best = min(base, key=lambda p: cost_of[p]) if base else None
    table["cost_rel_hpa"] = table["cost"] / cost_of.get("hpa", math.nan)
    table["cost_rel_oracle"] = table["cost"] / cost_of.get("oracle", math.nan)
    table["cost_rel_best"] = table["cost"] / (cost_of[best] if best else math.nan)
    table["gap_captured"] = [
        gap_captured(c, cost_of[best], bound) if best else math.nan for c in table["cost"]
    ]
    table["best_baseline"] = best or "-"
    return table
