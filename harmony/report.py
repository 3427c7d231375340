"""What a backtest shows: the terminal tables, two PNG charts, one self-contained HTML page, and MLflow.

* `harmony.report_tables.format_tables(result)`: the terminal tables (validated, per service, held to eps,
  hindsight, every replayed setting) and the advice; the same tables go into the page and MLflow;
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
from collections.abc import Callable, Mapping
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
    short_knobs,
)
from harmony.backtest.held import chosen_eps, held_to_eps
from harmony.backtest_charts import capacity_chart, curves_chart
from harmony.plots import FILE_MODE
from harmony.report_tables import (
    advice_text,
    bound_text,
    format_tables,
    headline_text,
    num_text,
)

__all__ = [
    "Published",
    "ReportFiles",
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


# --- the HTML page ------------------------------------------------------------------------------------------


def _frame_html(frame: pd.DataFrame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return num_text(float(v))
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
        for name in ("below", "inside", "above", "floor_bound"):
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
