"""A backtest's terminal tables: the validated tables and their headline, the per-service and held-to-eps
tables, the advice when something needs the user's attention, the hindsight frontier and every replayed
setting. `harmony.report` puts the same tables in the HTML page and in MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from harmony.backtest import (
    CAUSE_COLUMNS,
    BacktestResult,
    Knobs,
    format_knob,
    knob_space,
    short_knobs,
)
from harmony.backtest.held import chosen_eps, held_to_eps
from harmony.decision import FALLBACK_CAUSES

__all__ = [
    "advice_text",
    "bound_text",
    "fixed_knobs_text",
    "format_tables",
    "headline_tables",
    "headline_text",
    "held_table",
    "num_text",
]


def num_text(x: Any, digits: int = 4) -> str:
    if isinstance(x, str):
        return x
    v = float(x)
    if math.isnan(v):
        return "-"
    if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-4):
        return f"{v:.{digits}g}"
    return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"


def _render(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if k < left else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _pct(rate: Any) -> str:
    return "-" if math.isnan(float(rate)) else num_text(100.0 * float(rate))


def _searched(result: BacktestResult) -> dict[str, list[str]]:
    """Per policy: its primary knob and the secondary knobs with more than one value to choose from."""
    out: dict[str, list[str]] = {}
    for policy in result.tuned:
        space = knob_space(policy, result.settings)
        out[policy] = [space.primary, *(k for k, v in space.secondary.items() if len(v) > 1)]
    return out


def fixed_knobs_text(result: BacktestResult) -> str:
    """The secondary knobs each policy had one value of (set, not searched), in one line."""
    parts = []
    for policy in result.tuned:
        space = knob_space(policy, result.settings)
        fixed = [f"{k}={format_knob(v[0])}" for k, v in space.secondary.items() if len(v) == 1]
        if fixed:
            parts.append(f"{policy}: {short_knobs(' '.join(fixed))}")
    return "knobs set, not searched: " + ("; ".join(parts) if parts else "none")


def bound_text(result: BacktestResult) -> str:
    """The lower bounds at the target rate in words."""
    rate = f"{100 * result.settings.target_violation_rate:g}%"
    total, service = result.bounds.get("total", math.nan), result.bounds.get("service", math.nan)
    if not math.isfinite(total):
        return f"lower bound at {rate} violations: -"
    return (
        f"lower bound at {rate} violations on the test part: cost {total:.6g} in total, {service:.6g} with "
        "every series within the rate; no policy there is cheaper"
    )


def headline_text(result: BacktestResult, criterion: str = "total") -> str:
    """HARMONY against the best tuned baseline and the bound, in one sentence."""
    h = result.headline.get(criterion)
    if h is None:
        return "headline: HARMONY was not replayed"
    return (
        f"HARMONY captures {num_text(h['gap_captured'], 3)} of the gap between the best tuned baseline "
        f"({h['best_baseline']}, cost {num_text(h['best_baseline_cost'])}, "
        f"{_pct(h['best_baseline_violation_rate'])}% violated) and the lower bound ({num_text(h['bound'])}): "
        f"cost {num_text(h['harmony_cost'])} at {_pct(h['harmony_violation_rate'])}% violated (worst series "
        f"{_pct(h['harmony_worst_violation_rate'])}%), {num_text(h['vs_best'], 3)}x the best baseline, "
        f"{num_text(h['vs_hpa'], 3)}x the HPA, {num_text(h['vs_oracle'], 3)}x the oracle"
    )


# How to widen a policy's sweep when none of its settings met the target on the validation part.
_WIDEN = {
    "harmony": "smaller max_violation_probability values",
    "quantile": "smaller max_violation_probability values",
    "point": "larger margin values",
    "arima": "larger margin values",
    "ets": "larger margin values",
    "ehpa": "lower target_utilization values and longer scale_down_window_s (up to 3600)",
    "hpa": "lower target_utilization values and longer scale_down_window_s (up to 3600)",
    "static": "larger headroom values",
}
PER_SERVICE_TITLE = (
    "realised violation rate (%) of each series on the test part at the knobs chosen for every service"
)
# HARMONY deciding by its reactive fallback on more than this share of its decisions is worth a warning.
FALLBACK_WARNING_SHARE = 0.02


def _by_cause(rows: pd.DataFrame) -> dict[str, int]:
    """Fallback decisions of each cause summed over `rows` (score rows of one setting)."""
    return {cause: int(rows[col].sum()) for cause, col in CAUSE_COLUMNS.items() if col in rows}


def _fallback_advice(result: BacktestResult) -> list[str]:
    """HARMONY deciding by its reactive fallback on more than FALLBACK_WARNING_SHARE of its decisions at its
    validated knobs, by cause; and, separately, whenever its forecasts proved miscalibrated beyond repair
    there (a tighter eps then gives more violations, not fewer)."""
    runs = result.per_run
    if "harmony" not in result.tuned or not {"decisions", "fallbacks"} <= set(runs.columns):
        return []
    lines: list[str] = []
    harmony = runs[runs["policy"] == "harmony"]
    knobs = result.tuned["harmony"]["total"].knobs.text()
    mine = harmony[harmony["knobs"] == knobs]
    decisions, fallbacks = float(mine["decisions"].sum()), float(mine["fallbacks"].sum())
    if decisions > 0 and fallbacks / decisions > FALLBACK_WARNING_SHARE:
        causes = ", ".join(f"{n:,} {FALLBACK_CAUSES[c]}" for c, n in _by_cause(mine).items() if n)
        lines.append(
            f"harmony: the reactive fallback decided {int(fallbacks):,} of its {int(decisions):,} "
            f"decisions ({100 * fallbacks / decisions:.1f}%) on the test part at {short_knobs(knobs)}"
            + (f"; by cause: {causes}" if causes else "")
            + ". Those decisions' replicas follow scaling.fallback_target_utilization and "
            "scaling.fallback_margin (docs/decision.md, the fallback)"
        )
    col = CAUSE_COLUMNS["miscalibrated"]
    if col not in harmony:
        return lines
    # The knobs chosen for each criterion (one line for both when they are the same).
    chosen: dict[Knobs, list[str]] = {}
    for criterion, what in (("total", "in total"), ("service", "for every series")):
        t = result.tuned["harmony"].get(criterion)
        if t is not None:
            chosen.setdefault(t.knobs, []).append(what)
    for knobs_chosen, whats in chosen.items():
        mine = harmony[harmony["knobs"] == knobs_chosen.text()]
        miscalibrated = int(mine[col].sum())
        if miscalibrated == 0:
            continue
        sweep = result.summary[
            (result.summary["policy"] == "harmony")
            & (result.summary["setting"] == knobs_chosen.secondary_text())
            & (result.summary[col] > 0)
        ]
        where = ", ".join(f"{format_knob(float(r['knob']))} ({int(r[col]):,})" for _, r in sweep.iterrows())
        lines.append(
            f"harmony: its forecasts proved miscalibrated beyond repair at the knobs chosen "
            f"{' and '.join(whats)} ({short_knobs(knobs_chosen.text())}): the reactive fallback took over "
            f"for that reason in "
            f"{miscalibrated:,} of its {int(mine['decisions'].sum()):,} decisions on the test part"
            + (f" (at eps = {where} in the test sweep)" if where else "")
            + ". An eps tighter than the forecaster's draws can deliver hands the decisions to the reactive "
            "rule, so violations rise instead of falling: choose a looser eps, or a forecaster with a wider "
            "upper tail (docs/decision.md, miscalibrated beyond repair)"
        )
    return lines


def advice_text(result: BacktestResult) -> str:
    """What in the result needs the user's attention, and what to change: policies whose sweep never met
    the target on the validation part (their ratios then compare with a policy that violates more), and
    HARMONY deciding by its reactive fallback instead of its forecasts. Empty when nothing does."""
    target = f"{100 * result.settings.target_violation_rate:g}%"
    lines: list[str] = []
    for criterion, what in (("total", "in total"), ("service", "for every series")):
        for policy, by in result.tuned.items():
            t = by.get(criterion)
            if t is None or t.met or policy == "oracle":
                continue
            rate = t.val["violation_rate" if criterion == "total" else "worst_violation_rate"]
            consequence = (
                "its cost is that of a higher rate than the target"
                if policy in ("harmony", "quantile")
                else "the ratios against it (vs_hpa for the HPA, vs_best when it is the best baseline) "
                "compare with a policy that violates more"
            )
            lines.append(
                f"{policy}: no setting met {target} {what} on the validation part (the safest reached "
                f"{_pct(rate)}%): {consequence}. Widen its sweep: {_WIDEN.get(policy, 'more values')} in "
                f"policies.{policy}"
            )
    lines.extend(_fallback_advice(result))
    if not lines:
        return ""
    return "ATTENTION\n" + "\n".join(f"  - {line}" for line in lines)


def headline_tables(result: BacktestResult) -> str:
    """What the command line ends with: the validated tables, their headlines, the bound and the advice
    (the rest is in the report and summary.txt)."""
    return format_tables(result).split(f"\n\n{PER_SERVICE_TITLE}")[0]


def _validated(result: BacktestResult, criterion: str) -> str:
    g = result.validated[result.validated["criterion"] == criterion]
    searched = _searched(result)
    rows = [
        [
            str(r["policy"]),
            short_knobs(str(r["knobs"]), searched[str(r["policy"])])
            + ("" if r["met_on_val"] else " (not met on val)"),
            _pct(r["val_violation_rate"]),
            _pct(r["val_worst_violation_rate"]),
            _pct(r["violation_rate"]),
            _pct(r["worst_violation_rate"]),
            num_text(r["cost"]),
            num_text(r["cost_rel_best"]),
            num_text(r["cost_rel_hpa"]),
            num_text(r["cost_rel_oracle"]),
            num_text(r["gap_captured"], 3),
        ]
        for r in g.to_dict("records")
    ]
    header = ["policy", "knobs chosen on validation", "val_%", "val_worst_%", "viol_%", "worst_%", "cost"]
    return _render([*header, "vs_best", "vs_hpa", "vs_oracle", "gap"], rows)


def _per_service(result: BacktestResult, criterion: str = "service", max_series: int = 12) -> str:
    ps = result.per_service[result.per_service["criterion"] == criterion]
    target = result.settings.target_violation_rate
    policies = list(dict.fromkeys(ps["policy"]))
    if len(result.series) <= max_series:
        rate = ps.pivot(index="series", columns="policy", values="violation_rate")
        rows = [[str(sid), *(_pct(rate.loc[sid, p]) for p in policies)] for sid in rate.index]
        return _render(["series", *policies], rows, left=1)
    rows = []
    for p in policies:
        r = ps[(ps["policy"] == p) & (ps["steps"] > 0)]["violation_rate"].to_numpy(np.float64)
        within = int((r <= target + 1e-12).sum())
        rows.append([p, f"{within}/{r.size}", *(_pct(v) for v in np.quantile(r, [0.0, 0.5, 0.9, 1.0]))])
    return _render(["policy", "within", "min_%", "median_%", "p90_%", "max_%"], rows, left=1)


def held_table(result: BacktestResult) -> str:
    """Per criterion and risk policy: the series below / inside / above the binomial 95% interval of eps, and
    how many of those below could not have been inside (`floor_bound`: too few steps above the floor)."""
    held = held_to_eps(result.per_service, chosen_eps(result.tuned))
    rows = [
        [
            r["criterion"],
            r["policy"],
            format_knob(r["eps"]),
            *(str(r[k]) for k in ("series", "below", "inside", "above", "floor_bound")),
        ]
        for r in held.to_dict("records")
    ]
    header = ["criterion", "policy", "eps", "series", "below", "inside", "above", "floor_bound"]
    return _render(header, rows, left=2)


def _causes_text(row: Mapping[Any, Any]) -> str:
    """A summary row's fallback decisions of each cause, the causes with none left out ('-' for none)."""
    return (
        ", ".join(f"{c} {int(row[col])}" for c, col in CAUSE_COLUMNS.items() if float(row.get(col, 0.0)) > 0)
        or "-"
    )


def format_tables(result: BacktestResult) -> str:
    """The validated tables and headline first, then the per-service rates, the hindsight frontier and every
    setting replayed on the test part (violation rates in percent, costs in the config's currency)."""
    s = result.settings
    target = 100 * s.target_violation_rate
    steps = int(result.summary["steps"].iloc[0]) if len(result.summary) else 0
    head = (
        f"{result.dataset}: {len(result.series)} series, {steps} scored steps of the test part, lead time "
        f"{s.lead_time} step(s), a decision every {s.interval} step(s); price {s.replica_hour_price:g} per "
        f"replica-hour, penalty {s.violation_penalty:g} per violated step; target {target:g}% violated steps"
    )
    hs = result.hindsight
    searched = _searched(result)
    hindsight = _render(
        [
            "policy",
            "knobs (read on the test part)",
            "viol_%",
            "cost",
            "vs_best",
            "vs_hpa",
            "vs_oracle",
            "gap",
        ],
        [
            [
                str(r["policy"]),
                short_knobs(str(r["knobs"]), searched[str(r["policy"])]),
                _pct(r["violation_rate"]),
                num_text(r["cost"]),
                num_text(r["cost_rel_best"]),
                num_text(r["cost_rel_hpa"]),
                num_text(r["cost_rel_oracle"]),
                num_text(r["gap_captured"], 3),
            ]
            for r in hs.to_dict("records")
        ],
    )
    sm = result.summary
    sweep = _render(
        ["policy", "knobs", "viol_%", "worst_%", "cost", "replica_h", "actions", "fallbacks", "by cause"],
        [
            [
                str(r["policy"]),
                short_knobs(str(r["knobs"]), searched[str(r["policy"])]),
                _pct(r["violation_rate"]),
                _pct(r["worst_violation_rate"]),
                num_text(r["cost"]),
                num_text(r["replica_hours"]),
                num_text(r["actions"]),
                num_text(r["fallbacks"]),
                _causes_text(r),
            ]
            for r in sm.to_dict("records")
        ],
    )
    parts = [
        head,
        "",
        "VALIDATED: every knob chosen on the validation part as the cheapest setting with at most "
        f"{target:g}% violated steps in total there, frozen, and replayed on the test part (val_%: on "
        "validation; viol_%, worst_%: on test, in total and of the worst series; vs_best: cost over the "
        "best baseline's (the cheapest that met the target on validation); gap: share of the gap "
        "between the best baseline and the lower bound captured)",
        _validated(result, "total"),
        headline_text(result, "total"),
        "",
        f"VALIDATED, every service within its SLA: the cheapest setting keeping every series at most "
        f"{target:g}% on the validation part, replayed on the test part",
        _validated(result, "service"),
        headline_text(result, "service"),
        bound_text(result),
        fixed_knobs_text(result),
        *(["", advice] if (advice := advice_text(result)) else []),
        "",
        PER_SERVICE_TITLE,
        _per_service(result),
        "",
        "each service held to its eps: series whose violated steps on the test part lie below, inside and "
        "above the binomial 95% interval at the eps chosen for the policy (a calibrated policy: 95% inside)",
        held_table(result),
        "",
        f"HINDSIGHT (not a result: knobs read on the test part itself): each policy's test points at "
        f"{target:g}% on their lower convex hull (primary knob swept at the validated secondary knobs)",
        hindsight,
        "",
        "every setting replayed on the test part (summed over series; worst_% = the worst series' rate)",
        sweep,
    ]
    return "\n".join(parts)
