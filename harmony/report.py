"""What a backtest shows: the terminal tables, two PNG charts, one self-contained HTML page, and MLflow.

* `format_tables(result)`: first the validated tables (every policy's knobs chosen on the validation part,
  frozen, replayed on the test part: in total, then with every service within the target rate) with the
  headline (the share of the gap between the best tuned baseline and the lower bound that HARMONY
  captures), the per-service realised rates, then the hindsight frontier (each policy's test points read at
  the target rate on their lower convex hull: second, and labelled so) and every setting replayed on test.
* the two charts of `harmony.backtest_charts` (capacity in place, cost against violation rate);
* `html_report`: one HTML file with the PNGs inlined as base64, the tables, the configuration and a short
  "how to read" paragraph: it can be mailed or attached as it is.
* `log_to_mlflow`: params (the configuration and the chosen knobs), the metrics, the files as artifacts.
* `publish(run)`: all of the above for a `harmony.backtest.ConfigRun` (what `harmony backtest` calls).
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harmony.backtest import (
    CAUSE_COLUMNS,
    CRITERIA,
    BacktestResult,
    ConfigRun,
    Knobs,
    format_knob,
    knob_space,
    short_knobs,
)
from harmony.backtest.held import chosen_eps, held_to_eps
from harmony.backtest_charts import capacity_chart, curves_chart
from harmony.decision import FALLBACK_CAUSES
from harmony.plots import FILE_MODE

__all__ = [
    "Published",
    "ReportFiles",
    "bound_text",
    "fixed_knobs_text",
    "format_tables",
    "headline_text",
    "html_report",
    "log_to_mlflow",
    "metric_key",
    "publish",
    "run_metrics",
    "write_report",
]

VALIDATED_METRICS = (
    "cost",
    "violation_rate",
    "worst_violation_rate",
    "services_within_sla",
    "val_cost",
    "val_violation_rate",
    "val_worst_violation_rate",
    "cost_rel_hpa",
    "cost_rel_oracle",
    "cost_rel_best",
    "gap_captured",
    "fallbacks",
    *CAUSE_COLUMNS.values(),
)
HINDSIGHT_METRICS = (
    "cost",
    "violation_rate",
    "cost_rel_hpa",
    "cost_rel_oracle",
    "cost_rel_best",
    "gap_captured",
)
SWEEP_METRICS = (
    "violation_rate",
    "worst_violation_rate",
    "cost",
    "replica_hours",
    "actions",
    "fallbacks",
    *CAUSE_COLUMNS.values(),
)
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a parameter value


HOW_TO_READ = (
    "Every policy replayed the trace with the same protocol: at each decision step it saw only the history "
    "up to that step, and its replica count took effect after the lead time. A step is a <b>violation</b> "
    "when the realised demand of any demand indicator exceeded the capacity of the replicas in place; the "
    "<b>violation rate</b> is the fraction of such steps, the <b>cost</b> is price &times; replica-hours + "
    "penalty &times; violated steps. <b>Every knob of every policy was chosen on the validation part</b> "
    "(HARMONY: the SLA &epsilon;, its adaptation's forgetting and its scale-down window; the HPA and "
    "crane's EHPA: target utilisation, tolerance, both stabilisation windows and the rate rules; point, "
    "ARIMA and ETS forecasts: margin and window; static: headroom), as the cheapest setting that met the "
    "target rate there in total, and separately with every series (a service with its own SLA) within it; "
    "then frozen and replayed on the test part. The <b>validated tables</b> are those test figures: the "
    "cost, the realised violation rate in total and of the worst series (<b>worst_%</b>), relative to the "
    "best tuned baseline (<b>vs_best</b>: the cheapest of the baselines whose knobs met the target on the "
    "validation part), the HPA and the oracle (perfect foresight). <b>gap</b> is the share of the gap "
    "between the best baseline's cost and the <b>lower bound</b> (the least cost any policy can have at the"
    " target rate) that the policy captures: 1 reaches the bound, 0 ties the baseline, below 0 costs more. "
    "The <b>hindsight</b> table reads each policy's test points at the target rate on their lower convex "
    "hull: what it could at best have reached had its primary knob been tuned on the test part itself. It "
    "is shown second because it is not a result anyone could have had in advance. The capacity chart shows,"
    " for one series, demand (in replicas: demand / capacity per replica, the largest over the demand "
    "indicators) against the replicas in place at the validated knobs, with violations in red."
)


# --- the terminal tables ------------------------------------------------------------------------------------


def _num(x: Any, digits: int = 4) -> str:
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
    return "-" if math.isnan(float(rate)) else _num(100.0 * float(rate))


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
        f"HARMONY captures {_num(h['gap_captured'], 3)} of the gap between the best tuned baseline "
        f"({h['best_baseline']}, cost {_num(h['best_baseline_cost'])}, "
        f"{_pct(h['best_baseline_violation_rate'])}% violated) and the lower bound ({_num(h['bound'])}): "
        f"cost {_num(h['harmony_cost'])} at {_pct(h['harmony_violation_rate'])}% violated (worst series "
        f"{_pct(h['harmony_worst_violation_rate'])}%), {_num(h['vs_best'], 3)}x the best baseline, "
        f"{_num(h['vs_hpa'], 3)}x the HPA, {_num(h['vs_oracle'], 3)}x the oracle"
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
            _num(r["cost"]),
            _num(r["cost_rel_best"]),
            _num(r["cost_rel_hpa"]),
            _num(r["cost_rel_oracle"]),
            _num(r["gap_captured"], 3),
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
    """Per criterion and risk policy: the series below / inside / above the binomial 95% interval of eps."""
    held = held_to_eps(result.per_service, chosen_eps(result.tuned))
    rows = [
        [
            r["criterion"],
            r["policy"],
            format_knob(r["eps"]),
            *(str(r[k]) for k in ("series", "below", "inside", "above")),
        ]
        for r in held.to_dict("records")
    ]
    return _render(["criterion", "policy", "eps", "series", "below", "inside", "above"], rows, left=2)


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
                _num(r["cost"]),
                _num(r["cost_rel_best"]),
                _num(r["cost_rel_hpa"]),
                _num(r["cost_rel_oracle"]),
                _num(r["gap_captured"], 3),
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
                _num(r["cost"]),
                _num(r["replica_hours"]),
                _num(r["actions"]),
                _num(r["fallbacks"]),
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


# --- the HTML page ------------------------------------------------------------------------------------------


def _frame_html(frame: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return _num(float(v))
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_RATES = ("val_violation_rate", "val_worst_violation_rate", "violation_rate", "worst_violation_rate")


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Rates as percentages (`..._%` columns), knob names short, relative columns named as printed."""
    out = frame.copy()
    for rate in _RATES:
        if rate in out:
            out[rate] = 100.0 * out[rate]
    if "knobs" in out:
        out["knobs"] = out["knobs"].map(lambda t: short_knobs(str(t)))
    names = {r: r.replace("violation_rate", "%") for r in _RATES}
    names.update({"cost_rel_hpa": "vs HPA", "cost_rel_oracle": "vs oracle", "cost_rel_best": "vs best"})
    return out.rename(columns=names)


def html_report(
    result: BacktestResult,
    *,
    title: str,
    images: Mapping[str, Path],
    config_yaml: str,
    info: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML page: the charts inlined as base64 PNGs, the tables, the configuration."""
    s = result.settings
    facts = {
        "dataset": result.dataset,
        "series replayed": f"{len(result.series)}"
        + (f" ({len(result.skipped)} skipped)" if result.skipped else ""),
        "lead time / interval": f"{s.lead_time} / {s.interval} step(s)",
        "target violation rate": f"{100 * s.target_violation_rate:g}%",
        "price / penalty": (
            f"{s.replica_hour_price:g} per replica-hour / {s.violation_penalty:g} per violated step"
        ),
        "capacities": ", ".join(f"{k} {v:g}" for k, v in s.capacities.items()),
        "lower bound": bound_text(result),
        **{
            f"classical {m}": f"{st.fits} fits, {st.forwards} forwards, {st.failures} failures forecast by "
            f"persistence, {st.missing} indicator-decisions without history enough for a forecast"
            for m, st in result.classical.items()
        },
        **(info or {}),
        **{f"time: {k}": f"{v:.1f} s" for k, v in result.seconds.items() if v},
    }
    fact_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()
    )
    figures = []
    for name, png in images.items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>')
    skipped = ""
    if result.skipped:
        items = "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in list(result.skipped.items())[:50]
        )
        skipped = f"<h2>Series not replayed</h2><ul>{items}</ul>"
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:0.8em}p{line-height:1.45}"
    )
    target = f"{100 * s.target_violation_rate:g}%"
    validated = _display(result.validated.drop(columns=["best_baseline"]))
    sections = []
    for criterion, words in CRITERIA.items():
        g = validated[validated["criterion"] == criterion].drop(columns=["criterion"])
        sections.append(
            f"<h2>Validated: {html.escape(words)} ({target}) on the validation part, replayed on the "
            f"test part</h2><p><b>{html.escape(headline_text(result, criterion))}</b></p>{_frame_html(g)}"
        )
    per_service = result.per_service[result.per_service["criterion"] == "service"]
    per_service = per_service.drop(columns=["criterion"])
    advice = advice_text(result).splitlines()[1:]
    attention = (
        "<h2>Attention</h2><ul>"
        + "".join(f"<li>{html.escape(line.removeprefix('  - '))}</li>" for line in advice)
        + "</ul>"
        if advice
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{fact_rows}</table>"
        f"<h2>How to read this report</h2><p>{HOW_TO_READ}</p>"
        + "".join(sections)
        + attention
        + f"<h2>Charts</h2>{''.join(figures)}"
        f"<h2>Realised violation rate of each series on the test part (knobs for every service)</h2>"
        f"{_frame_html(_display(per_service))}"
        f"<h2>Hindsight (not a result): test points at {target} on their lower convex hull</h2>"
        f"{_frame_html(_display(result.hindsight))}"
        "<h2>Every setting replayed on the test part (summed over series)</h2>"
        f"{_frame_html(_display(result.summary))}"
        f"<h2>Every setting replayed on the validation part</h2>{_frame_html(_display(result.val_summary))}"
        f"{skipped}<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre></body></html>\n"
    )


# --- files and MLflow ---------------------------------------------------------------------------------------


@dataclass
class ReportFiles:
    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    text: Path | None = None


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)  # atomic: a reader never sees half a report
    return path


def write_report(
    result: BacktestResult,
    out_dir: str | Path,
    *,
    title: str,
    config_yaml: str,
    plot_series: str | None = None,
    info: Mapping[str, str] | None = None,
) -> ReportFiles:
    """PNGs under plots/, CSV tables under tables/, the text tables and report.html in `out_dir`."""
    out = Path(out_dir)
    plots = {
        "cost_vs_violation": curves_chart(result, out / "plots" / "cost_vs_violation.png"),
        "capacity": capacity_chart(result, out / "plots" / "capacity.png", plot_series),
    }
    tables = {}
    for name, frame in (
        ("validated", result.validated),
        ("per_service", result.per_service),
        ("hindsight", result.hindsight),
        ("summary", result.summary),
        ("per_run", result.per_run),
        ("validation_summary", result.val_summary),
    ):
        tables[name] = _write_text(out / "tables" / f"{name}.csv", frame.to_csv(index=False))
    text = _write_text(out / "summary.txt", format_tables(result) + "\n")
    page = html_report(result, title=title, images=plots, config_yaml=config_yaml, info=info)
    return ReportFiles(_write_text(out / "report.html", page), plots, tables, text)


def metric_key(*parts: str) -> str:
    """Parts joined by '/', each reduced to the characters MLflow allows in a metric name."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", p) for p in parts)


def run_metrics(result: BacktestResult) -> dict[str, float]:
    """The metrics logged for a backtest (finite ones): validated/<criterion>/<policy>/<metric>,
    headline/<criterion>/<metric>, hindsight/<policy>/<metric>, bound/<criterion>,
    held/<criterion>/<policy>/{below,inside,above} (series against the binomial interval of eps),
    sweep/<policy>/<knobs>/<metric> (every setting replayed on test) and seconds/<stage>."""
    out: dict[str, float] = {}
    for r in result.validated.to_dict("records"):
        for name in VALIDATED_METRICS:
            out[metric_key("validated", str(r["criterion"]), str(r["policy"]), name)] = float(r[name])
    for criterion, h in result.headline.items():
        for name, value in h.items():
            if not isinstance(value, str):
                out[metric_key("headline", criterion, name)] = float(value)
    for r in result.hindsight.to_dict("records"):
        for name in HINDSIGHT_METRICS:
            out[metric_key("hindsight", str(r["policy"]), name)] = float(r[name])
    for criterion, value in result.bounds.items():
        out[metric_key("bound", criterion)] = float(value)
    for r in held_to_eps(result.per_service, chosen_eps(result.tuned)).to_dict("records"):
        for name in ("below", "inside", "above"):
            out[metric_key("held", str(r["criterion"]), str(r["policy"]), name)] = float(r[name])
    for r in result.summary.to_dict("records"):
        for name in SWEEP_METRICS:
            out[metric_key("sweep", str(r["policy"]), str(r["knobs"]), name)] = float(r[name])
    for k, v in result.seconds.items():
        out[metric_key("seconds", k)] = float(v)
    return {k: v for k, v in out.items() if math.isfinite(v) and len(k) <= 250}


def log_to_mlflow(
    result: BacktestResult,
    files: ReportFiles,
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    tracking_uri: str,
) -> str:
    """One MLflow run: params, metrics, the report files as artifacts. Returns its id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {experiment!r} is deleted; restore it or set report.experiment")
    exp_id = str(exp.experiment_id) if exp is not None else str(client.create_experiment(experiment))
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    run_id = str(run.info.run_id)
    try:
        chosen = {
            f"chosen.{criterion}.{policy}": t.knobs.text()
            for policy, by in result.tuned.items()
            for criterion, t in by.items()
        }
        todo = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in {**params, **chosen}.items()]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=todo[i : i + 100])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in run_metrics(result).items()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        client.log_artifact(run_id, str(files.html))
        if files.text is not None:
            client.log_artifact(run_id, str(files.text))
        for png in files.plots.values():
            client.log_artifact(run_id, str(png), "plots")
        for csv in files.tables.values():
            client.log_artifact(run_id, str(csv), "tables")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


@dataclass
class Published:
    table: str
    files: ReportFiles
    run_id: str
    tracking_uri: str
    output_dir: Path


def publish(run: ConfigRun, *, log: Callable[[str], None] | None = None) -> Published:
    """Write the report of a configured backtest into its output folder and log it to MLflow."""
    from harmony import __version__
    from harmony.training.train import tracking_uri

    cfg, result = run.config, run.result
    out = cfg.output_dir.resolve()
    run_name = cfg.run_name
    title = f"harmony backtest: {run_name}" + (f" ({result.dataset})" if run_name != result.dataset else "")
    info = dict(result.info)
    if cfg.source is not None:
        info["config"] = str(cfg.source) + (f" --set {' '.join(cfg.overrides)}" if cfg.overrides else "")
    files = write_report(
        result,
        out,
        title=title,
        config_yaml=cfg.to_yaml(),
        plot_series=cfg.report.plot_series,
        info=info,
    )
    uri = tracking_uri()
    params = cfg.flat()
    params.update(
        {"backtest.series_replayed": str(len(result.series)), "backtest.skipped": str(len(result.skipped))}
    )
    tags = {
        "harmony.version": __version__,
        "harmony.kind": "backtest",
        "harmony.dataset": result.dataset,
        "harmony.forecaster": run.forecaster_source,
        "harmony.config_file": str(cfg.source) if cfg.source else "",
        "harmony.overrides": " ".join(cfg.overrides),
        "harmony.output_dir": str(out),
    }
    if run.model_run_id:
        tags["harmony.model_run_id"] = run.model_run_id
    run_id = log_to_mlflow(
        result,
        files,
        experiment=cfg.report.experiment,
        run_name=run_name,
        params=params,
        tags=tags,
        tracking_uri=uri,
    )
    if log is not None:
        log(f"logged to MLflow run {run_id} ({uri})")
    return Published(format_tables(result), files, run_id, uri, out)
