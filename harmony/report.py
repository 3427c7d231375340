"""What a backtest shows: the terminal tables, two PNG charts, one self-contained HTML page, and MLflow.

* `format_tables(result)`: the matched table (each policy's cost at the target violation rate, relative to
  the HPA and to the oracle), the per-service table (each policy's cheapest knob keeping every series within
  the target rate) and the sweep table (every policy and knob), fixed-width text.
* `capacity_chart`: demand against the capacity in place over time, one panel per policy (at the knob the
  report picks: the cheapest within the target rate), for one series.
* `curves_chart`: cost against violation rate for every policy's sweep, the target rate marked.
* `html_report`: one HTML file with the PNGs inlined as base64, the tables, the configuration and a short
  "how to read" paragraph: it can be mailed or attached as it is.
* `log_to_mlflow`: params (the configuration), metrics per policy and knob, the files as artifacts.
* `publish(run)`: all of the above for a `harmony.backtest.ConfigRun` (what `harmony backtest` calls).

Figures use matplotlib's object API on the Agg canvas and are written atomically (harmony.plots).
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harmony.backtest import PARTS, POLICY_ORDER, BacktestResult, ConfigRun, knob_key
from harmony.plots import FILE_MODE, save_png

__all__ = [
    "METRICS",
    "Published",
    "ReportFiles",
    "capacity_chart",
    "curves_chart",
    "format_tables",
    "html_report",
    "log_to_mlflow",
    "metric_key",
    "publish",
    "write_report",
]

COLORS = {
    "harmony": "tab:blue",
    "quantile": "tab:cyan",
    "point": "tab:purple",
    "hpa": "tab:orange",
    "static": "tab:brown",
    "oracle": "tab:green",
}
# Sweep metrics logged to MLflow per (policy, knob); the matched ones per policy.
METRICS = (
    "violation_rate",
    "cost",
    "replica_hours",
    "unmet_replica_hours",
    "overprovision",
    "actions",
    "fallbacks",
    "cost_rel_hpa",
    "cost_rel_oracle",
)
MATCHED_METRICS = ("violation_rate", "cost", "replica_hours", "cost_rel_hpa", "cost_rel_oracle")
SERVICE_METRICS = (
    *MATCHED_METRICS,
    "worst_violation_rate",
    "tuned_cost",
    "tuned_rel_hpa",
    "tuned_rel_oracle",
)
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a parameter value


HOW_TO_READ = (
    "Every policy replayed the {part} part of the trace: at each decision step it saw only the history up to "
    "that step, and its replica count took effect after the lead time. A step is a <b>violation</b> when "
    "the realised demand of any demand indicator exceeded the capacity of the replicas in place; the "
    "<b>violation rate</b> is the fraction of such steps, the <b>cost</b> is price &times; replica-hours + "
    "penalty &times; violated steps. Each policy's knob was swept (HARMONY and quantile-only: the SLA "
    "&epsilon;; HPA: target utilisation; point forecast: margin; static: headroom above the training peak), "
    "which draws one cost-vs-violation curve per policy. Compare policies at the <b>same violation rate</b>: "
    "the matched table reads each curve at the target rate (interpolating between the two knobs around it, "
    "on the curve's Pareto front) and divides by the HPA's cost there (<b>vs HPA</b> below 1 means cheaper "
    "than the Kubernetes HPA at the same reliability) and by the oracle's (perfect foresight, no violation: "
    "the lower bound, so <b>vs oracle</b> is at least 1 at zero violations). A policy that never gets down "
    "to the target rate says <i>not_reached</i>. Each series is a service with its own SLA: the "
    "<b>every service within its SLA</b> table takes each policy's cheapest knob under which no series "
    "violates more than the target rate (<b>worst_%</b>: the worst series' rate), as an operator enforcing "
    "one SLA per workload must; its <i>tuned</i> columns give each series its own cheapest knob within the "
    "rate, chosen in hindsight (what tuning every service separately could at best reach). The capacity "
    "chart shows, for one series, demand (in "
    "replicas: demand / capacity per replica, the largest over the demand indicators) against the replicas "
    "in place, with violations in red."
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


def _render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _pct(rate: Any) -> str:
    return "-" if math.isnan(float(rate)) else _num(100.0 * float(rate))


def bound_text(result: BacktestResult) -> str:
    """The lower bound at the target rate in words, relative to the oracle and the HPA there."""
    rate = f"{100 * result.settings.target_violation_rate:g}%"
    if not math.isfinite(result.bound):
        return f"lower bound at {rate} violations: -"
    rel = []
    for policy in ("oracle", "hpa"):
        row = result.matched[result.matched["policy"] == policy]
        cost = float(row["cost"].iloc[0]) if len(row) else math.nan
        if math.isfinite(cost) and cost > 0:
            rel.append(f"{result.bound / cost:.3g}x the {policy}")
    extra = f" ({', '.join(rel)})" if rel else ""
    return f"lower bound at {rate} violations: cost {result.bound:.6g}{extra}; no policy there is cheaper"


def _policy_table(frame: pd.DataFrame, columns: Sequence[tuple[str, str, Callable[[Any], str]]]) -> str:
    """One row per policy of a matched or per-service frame: the knob, then (header, column, format)."""
    rows = [
        [
            str(r["policy"]),
            f"{r['knob_name']}={r['knob']}" if r["knob"] not in ("-", "not_reached") else str(r["knob"]),
            *(fmt(r[key]) for _, key, fmt in columns),
        ]
        for r in frame.to_dict("records")
    ]
    return _render(["policy", "knob", *(header for header, _, _ in columns)], rows)


def format_tables(result: BacktestResult) -> str:
    """The matched, per-service and sweep tables (violation rates in percent, costs in the config's
    currency)."""
    s = result.settings
    target = s.target_violation_rate
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("viol_%", "violation_rate", _pct),
        ("cost", "cost", _num),
        ("replica_h", "replica_hours", _num),
        ("vs_hpa", "cost_rel_hpa", _num),
        ("vs_oracle", "cost_rel_oracle", _num),
    ]
    matched = _policy_table(result.matched, columns)
    service = _policy_table(
        result.per_service,
        [
            columns[0],
            ("worst_%", "worst_violation_rate", _pct),
            *columns[1:],
            ("tuned_cost", "tuned_cost", _num),
            ("tuned_vs_hpa", "tuned_rel_hpa", _num),
            ("tuned_vs_oracle", "tuned_rel_oracle", _num),
        ],
    )
    sm = result.summary
    sweep = _render(
        [
            "policy",
            "knob",
            "viol_%",
            "worst_%",
            "cost",
            "replica_h",
            "unmet_h",
            "spare",
            "actions",
            "fallbacks",
            "vs_hpa",
            "vs_oracle",
        ],
        [
            [
                str(r["policy"]),
                "-" if r["policy"] == "oracle" else f"{r['knob_name']}={knob_key(float(r['knob']))}",
                _pct(r["violation_rate"]),
                _pct(r["worst_violation_rate"]),
                *(_num(r[k]) for k in METRICS if k != "violation_rate"),
            ]
            for r in sm.to_dict("records")
        ],
    )
    steps = int(sm["steps"].iloc[0]) if len(sm) else 0
    head = (
        f"{result.dataset}: {len(result.series)} series, {steps} scored steps of the {PARTS[s.part]} part, "
        f"lead time {s.lead_time} step(s), a decision every {s.interval} step(s); "
        f"price {s.replica_hour_price:g} per replica-hour, penalty {s.violation_penalty:g} per violated step"
    )
    return (
        f"{head}\n\nat the target violation rate {100 * target:g}% (vs_hpa, vs_oracle: cost relative to "
        f"the HPA and to the oracle there)\n{matched}\n{bound_text(result)}\n\n"
        f"every service within its SLA (the cheapest knob keeping each series at most {100 * target:g}%; "
        f"worst_% = the worst series' rate; vs_hpa, vs_oracle: cost relative to theirs in this table; "
        f"tuned_*: each series at its own cheapest knob within the rate, chosen in hindsight)\n"
        f"{service}\n\n"
        "every policy and knob (summed over series; worst_% = the worst series' violation rate, spare = mean "
        "spare replicas, unmet_h = replica-hours of unmet demand; vs_hpa at the same violation rate)\n"
        f"{sweep}"
    )


# --- charts -------------------------------------------------------------------------------------------------


def _need(demand: np.ndarray, capacities: Mapping[str, float]) -> np.ndarray:
    caps = np.array(list(capacities.values()), dtype=np.float64)
    ratio = np.where(np.isfinite(demand), demand / caps, -np.inf).max(axis=1)
    out: np.ndarray = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


def capacity_chart(result: BacktestResult, path: str | Path, series: str | None = None) -> Path:
    """Demand (in replicas) and the capacity in place, one panel per policy, for one series."""
    sid = series if series is not None else result.series[0]
    if sid not in result.demand:
        raise ValueError(f"series {sid!r} was not replayed; replayed: {', '.join(result.series[:8])}")
    policies = [p for p in POLICY_ORDER if p in set(result.summary["policy"])]
    times = result.times[sid]
    need = _need(result.demand[sid], result.settings.capacities)
    fig = Figure(figsize=(11, 1.9 * len(policies) + 0.9))
    axes = fig.subplots(len(policies), 1, squeeze=False, sharex=True)[:, 0]
    rows = result.per_run[result.per_run["series"] == sid]
    for ax, policy in zip(axes, policies, strict=True):
        knob = result.chosen_knob(policy)
        cap = result.capacity_of(policy, knob, sid).astype(np.float64)
        ax.fill_between(times, 0, need, step="post", color="0.75", lw=0, label="demand (replicas needed)")
        ax.step(times, cap, where="post", color=COLORS[policy], lw=1.3, label="replicas in place")
        bad = np.isfinite(need) & (need > cap)
        if bad.any():
            ax.plot(times[bad], need[bad], "o", ms=3, color="tab:red", label="violation")
        row = rows[(rows["policy"] == policy) & (rows["knob"].map(knob_key) == knob_key(knob))].iloc[0]
        label = policy if policy == "oracle" else f"{policy} ({row['knob_name']}={knob_key(knob)})"
        ax.set_title(
            f"{label}: {100 * row['violation_rate']:.2f}% violations, {row['replica_hours']:.4g} replica-h, "
            f"{int(row['actions'])} scaling actions",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("replicas", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right", ncol=3)
    part = PARTS[result.settings.part]
    fig.suptitle(f"{result.dataset} / {sid}: demand vs capacity over the {part} part", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def curves_chart(result: BacktestResult, path: str | Path) -> Path:
    """Cost against violation rate for every policy's sweep (knobs annotated), the target rate marked."""
    sm = result.summary
    target = 100.0 * result.settings.target_violation_rate
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for policy in [p for p in POLICY_ORDER if p in set(sm["policy"])]:
        g = sm[sm["policy"] == policy].sort_values("violation_rate")
        x = 100.0 * g["violation_rate"].to_numpy(np.float64)
        y = g["cost"].to_numpy(np.float64)
        if policy == "oracle":
            ax.plot(x, y, "*", ms=14, color=COLORS[policy], label="oracle (perfect foresight)")
            continue
        name = str(g["knob_name"].iloc[0])
        ax.plot(x, y, "o-", ms=4, lw=1.2, color=COLORS[policy], label=f"{policy} (knob: {name})")
        for xi, yi, k in zip(x, y, g["knob"], strict=True):
            ax.annotate(
                f"{k:g}",
                (xi, yi),
                fontsize=6,
                color=COLORS[policy],
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axvline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g}%")
    # Rates span zero (the oracle, static peaks) to tens of percent: linear near zero, logarithmic beyond.
    ax.set_xscale("symlog", linthresh=max(target / 2.0, 1e-3))
    ax.set_xlim(left=0.0)
    # Static peak provisioning can cost ten times the rest: a log scale keeps the close curves apart.
    if (sm["cost"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("SLA-violation rate (% of steps)")
    ax.set_ylabel("cost (price x replica-hours + penalty x violations)")
    ax.set_title(
        f"{result.dataset}: cost vs violation rate, every policy's sweep ({len(result.series)} series)"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


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


def _display_tables(result: BacktestResult) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    names = {
        "cost_rel_hpa": "vs HPA",
        "cost_rel_oracle": "vs oracle",
        "overprovision": "spare",
        "tuned_cost": "tuned per service: cost",
        "tuned_rel_hpa": "tuned: vs HPA",
        "tuned_rel_oracle": "tuned: vs oracle",
    }

    def display(frame: pd.DataFrame) -> pd.DataFrame:
        # Rates as percentages, right after the knob.
        out = frame.copy()
        for k, (rate, label) in enumerate(
            (("violation_rate", "violation_%"), ("worst_violation_rate", "worst_%"))
        ):
            if rate in out:
                out.insert(3 + k, label, 100.0 * out.pop(rate))
        return out.rename(columns=names)

    summary = result.summary.assign(knob=[knob_key(float(k)) for k in result.summary["knob"]])
    return display(result.matched), display(result.per_service), display(summary)


def html_report(
    result: BacktestResult,
    *,
    title: str,
    images: Mapping[str, Path],
    config_yaml: str,
    info: Mapping[str, str] | None = None,
) -> str:
    """One self-contained HTML page: the charts inlined as base64 PNGs, the tables, the configuration."""
    matched, per_service, summary = _display_tables(result)
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
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{fact_rows}</table>"
        f"<h2>How to read this report</h2><p>{HOW_TO_READ.format(part=PARTS[s.part])}</p>"
        f"<h2>At the target violation rate ({100 * s.target_violation_rate:g}%)</h2>{_frame_html(matched)}"
        f"<h2>Every service within its SLA (each series at most {100 * s.target_violation_rate:g}%)</h2>"
        f"{_frame_html(per_service)}"
        f"<h2>Charts</h2>{''.join(figures)}"
        f"<h2>Every policy and knob (summed over series)</h2>{_frame_html(summary)}"
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
        ("matched", result.matched),
        ("per_service", result.per_service),
        ("summary", result.summary),
        ("per_run", result.per_run),
    ):
        tables[name] = _write_text(out / "tables" / f"{name}.csv", frame.to_csv(index=False))
    text = _write_text(out / "summary.txt", format_tables(result) + "\n")
    page = html_report(result, title=title, images=plots, config_yaml=config_yaml, info=info)
    return ReportFiles(_write_text(out / "report.html", page), plots, tables, text)


def metric_key(*parts: str) -> str:
    return "/".join(parts)


def run_metrics(result: BacktestResult) -> dict[str, float]:
    """The metrics logged for a backtest (finite ones): sweep/<policy>/<knob>/<metric>,
    target/<policy>/<metric> and service/<policy>/<metric> (every series within the target rate)."""
    out: dict[str, float] = {}
    for r in result.summary.to_dict("records"):
        for name in (*METRICS, "worst_violation_rate"):
            out[metric_key("sweep", str(r["policy"]), knob_key(float(r["knob"])), name)] = float(r[name])
    for r in result.matched.to_dict("records"):
        for name in MATCHED_METRICS:
            out[metric_key("target", str(r["policy"]), name)] = float(r[name])
    for r in result.per_service.to_dict("records"):
        for name in SERVICE_METRICS:
            out[metric_key("service", str(r["policy"]), name)] = float(r[name])
    out[metric_key("target", "bound", "cost")] = float(result.bound)
    for k, v in result.seconds.items():
        out[metric_key("seconds", k)] = float(v)
    return {k: v for k, v in out.items() if math.isfinite(v)}


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
    """One MLflow run: params, metrics per policy and knob, the report files as artifacts. Returns its id."""
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
        todo = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
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
    if cfg.backtest.part != "test":
        # A validation replay shares the folder's model but must not overwrite the test part's report.
        out, run_name = out / cfg.backtest.part, f"{run_name}-{cfg.backtest.part}"
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
        "harmony.part": cfg.backtest.part,
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
