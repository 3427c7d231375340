"""Evaluate forecasters on one part of a split, side by side, with the metrics of harmony.metrics.

Protocol: windows whose whole target lies inside the evaluated part of every series (the test part unless
told otherwise; the validation part is for choosing hyper-parameters without looking at the test part),
evenly subsampled to at most `max_windows` per series; `n_samples` draws per window from every model.
Metrics are computed per (series, target indicator) over all its windows and horizon steps. Because
indicators have different units, models are compared by ratios to the baseline (seasonal naive) per
(series, target), aggregated by the geometric mean; coverage is averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harmony import metrics
from harmony.data.trace import Trace
from harmony.data.windows import Part, Split
from harmony.model.base import Forecaster
from harmony.output import Progress
from harmony.training.windows import collect_windows

RATIO_METRICS = ("crps", "wql", "mase", "energy")
COVERAGE = ("coverage_50", "coverage_80", "coverage_90", "coverage_98", "pit_coverage_90")


@dataclass
class Evaluation:
    per_series: pd.DataFrame  # index (model, series, target); metric columns
    summary: pd.DataFrame  # index model; relative metrics (geometric means) and mean coverage
    baseline: str


# (model name, series, histories [W, L, N], last times [W], actual [W, H, T], training part [steps, T])
Job = tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Common = tuple[Sequence[str], int, int, int]  # targets, draws per window, seed, season


def evaluate(
    trace: Trace,
    split: Split,
    models: dict[str, Forecaster],
    *,
    baseline: str = "seasonal_naive",
    n_samples: int = 100,
    max_windows: int = 200,
    season: int | None = None,
    seed: int = 0,
    part: Part = "test",
    log: Callable[[str], None] | None = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> Evaluation:
    """Score every model on the windows of `part`; `log` takes progress lines (models x series scored).

    `executor` "ray" scores each (model, series) as a Ray task (`ray_address` as in
    harmony.distributed.connect_ray), each model shipped once through the object store; every series draws
    with the same seed wherever it runs, so the tables are those of the local executor."""
    if not models:
        raise ValueError("no models to evaluate")
    specs = {m.spec for m in models.values()}
    if len(specs) != 1:
        raise ValueError("all models must share one ForecastSpec (same indicators, targets and geometry)")
    spec = next(iter(specs))
    windows = collect_windows(trace, split, spec, max_windows, part)
    if not windows.series:
        raise ValueError(
            f"the {part} part has no complete window; use a shorter lookback/horizon or more data"
        )
    if season is None:
        season = max(1, round(86_400 / spec.frequency_s))
    progress = None
    if log is not None:
        total = len(models) * len(windows.series)
        progress = Progress(f"scoring the {part} part", total, log=log, unit="model x series")
    jobs: list[Job] = [
        (name, sid, windows.history[sid], windows.last_time[sid], windows.actual[sid], windows.train[sid])
        for name in models
        for sid in windows.series
    ]
    common: Common = (spec.targets, n_samples, seed, season)
    rows: list[dict[str, Any]] = []
    if executor == "local":
        for job in jobs:
            rows.extend(_score_series(models[job[0]], job, common))
            if progress is not None:
                progress.advance(1, job[0])
    elif executor == "ray":
        rows = _score_on_ray(models, jobs, common, ray_address, progress)
    else:
        raise ValueError(f"unknown executor {executor!r}; expected local or ray")
    per = pd.DataFrame(rows).set_index(["model", "series", "target"]).sort_index()
    return Evaluation(per, summarize_relative(per, baseline), baseline)


def _score_series(model: Forecaster, job: Job, common: Common) -> list[dict[str, Any]]:
    """One model's metrics on one series' windows, per target."""
    name, sid, history, last_time, actual, train = job
    targets, n_samples, seed, season = common
    draws = model.sample(history, n_samples, last_time, seed=seed)
    rows = []
    # [W, S, H, T] -> per target: samples [S, W, H], actual [W, H]
    for j, target in enumerate(targets):
        s = np.moveaxis(draws[..., j], 1, 0)
        y = actual[..., j]
        hist = train[:, j]
        hist = hist[~np.isnan(hist)]
        # MASE scales every horizon step by the series' own in-sample seasonal error.
        scale_hist = np.repeat(hist[:, None], y.shape[1], axis=1) if hist.size > season + 1 else None
        try:
            m = metrics.summarize(s, y, history=scale_hist, season=season)
        except ValueError:  # a constant training history has no MASE scale: leave MASE out
            m = metrics.summarize(s, y, season=season)
        rows.append({"model": name, "series": sid, "target": target, **m})
    return rows


def _score_remote(model: Forecaster, threads: int, job: Job, common: Common) -> list[dict[str, Any]]:
    import torch

    # The driver's thread count: the same arithmetic, hence the same draws, as in one process.
    torch.set_num_threads(threads)
    return _score_series(model, job, common)


def _score_on_ray(
    models: dict[str, Forecaster],
    jobs: list[Job],
    common: Common,
    address: str | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    import torch

    from harmony.distributed import connect_ray

    ray = connect_ray(address)
    refs = {name: ray.put(model) for name, model in models.items()}
    task: Any = ray.remote(num_cpus=1)(_score_remote)
    threads = torch.get_num_threads()
    futures = [task.remote(refs[job[0]], threads, job, common) for job in jobs]
    index = {f: k for k, f in enumerate(futures)}
    done: list[list[dict[str, Any]]] = [[] for _ in futures]
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for f in ready:
            done[index[f]] = ray.get(f)
            if progress is not None:
                progress.advance(1, jobs[index[f]][0])
    return [row for rows in done for row in rows]


def summarize_relative(per: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per model: geometric mean over (series, target) of each metric relative to the baseline, the
    mean absolute metrics, and mean coverage."""
    models = list(dict.fromkeys(per.index.get_level_values("model")))
    out: list[dict[str, Any]] = []
    base = per.xs(baseline, level="model") if baseline in models else None
    for name in models:
        mine = per.xs(name, level="model")
        row: dict[str, Any] = {"model": name}
        for metric in RATIO_METRICS:
            if metric not in mine.columns:
                continue
            if base is not None and metric in base.columns:
                ratio = (mine[metric] / base[metric]).replace([np.inf, -np.inf], np.nan).dropna()
                ratio = ratio[ratio > 0]
                row[f"{metric}_rel"] = metrics.geometric_mean(ratio.to_numpy()) if len(ratio) else np.nan
        for cov in COVERAGE:
            if cov in mine.columns:
                row[cov] = float(mine[cov].mean())
        out.append(row)
    return pd.DataFrame(out).set_index("model")


# --- comparison runs from a training config -----------------------------------------------------------------

# Keys of a config's model.hparams that set the training budget or the input normalisation: they apply to
# every compared model, so that all are trained on the same windows, for the same epochs, on inputs scaled
# alike. The rest apply only to the config's model (and its ablations).
BUDGET_KEYS = ("max_train_windows", "max_val_windows", "batch_size", "patience", "train_stride", "lr")
NORMALISATION_KEYS = ("norm_floor", "norm_floor_window")
HARMONY_FAMILY = ("harmony", "gaussian", "flat")


def compared_hparams(config: Any, name: str) -> dict[str, Any]:
    """The hyper-parameters `compare` trains model `name` with under a TrainConfig: all of the config's for
    its own model and its harmony-family ablations, only the budget and normalisation keys for the others;
    the trainer's seed and epochs for every neural model."""
    import harmony.model.registry  # noqa: F401
    from harmony.model.neural import NeuralForecaster

    own = config.model.hparams
    same_family = name in HARMONY_FAMILY and config.model.name in HARMONY_FAMILY
    if name == config.model.name or same_family:
        hp = dict(own)
    else:
        hp = {k: v for k, v in own.items() if k in BUDGET_KEYS + NORMALISATION_KEYS}
    if issubclass(Forecaster.registered()[name], NeuralForecaster):
        hp.update(seed=config.trainer.seed, max_epochs=config.trainer.max_epochs)
    return hp


def compare(
    config: Any,
    model_names: list[str],
    *,
    baseline: str = "seasonal_naive",
    log: Any = print,
    part: Part = "test",
    executor: str = "local",
    ray_address: str | None = None,
) -> Evaluation:
    """Train every named model with a TrainConfig's data and geometry, then evaluate them side by side.

    The config's hyper-parameters go to the config's own model and, for the harmony family, to its
    ablations (so the ablations differ in exactly one thing); every model shares the training budget and
    the input normalisation.
    """
    import harmony.model.registry  # noqa: F401
    from harmony.training.train import load_data

    _, trace, split, spec = load_data(config)
    names = list(dict.fromkeys([*model_names, baseline]))
    known = Forecaster.registered()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {sorted(known)}")
    models: dict[str, Forecaster] = {}
    for name in names:
        models[name] = _fit(known[name](spec, **compared_hparams(config, name)), trace, split, config, log)
    return _evaluate_as_configured(
        trace,
        split,
        models,
        config,
        baseline=baseline,
        part=part,
        log=log,
        executor=executor,
        ray_address=ray_address,
    )


def _evaluate_as_configured(
    trace: Trace,
    split: Split,
    models: dict[str, Forecaster],
    config: Any,
    *,
    baseline: str,
    part: Part,
    log: Callable[[str], None],
    executor: str,
    ray_address: str | None,
) -> Evaluation:
    """`evaluate` with a TrainConfig's evaluation section and seed, after the notes on the models."""
    for line in notes(models.values()):
        log(f"note: {line}")
    ev = config.evaluation
    return evaluate(
        trace,
        split,
        models,
        baseline=baseline,
        n_samples=ev.num_samples,
        max_windows=ev.max_windows_per_series,
        seed=config.trainer.seed,
        part=part,
        log=log,
        executor=executor,
        ray_address=ray_address,
    )


def _fit(
    model: Forecaster, trace: Trace, split: Split, config: Any, log: Callable[[str], None]
) -> Forecaster:
    """Fit one compared model, with a progress line per epoch for the neural ones."""
    import time

    from harmony.model.neural import NeuralForecaster

    options: dict[str, Any] = {}
    if isinstance(model, NeuralForecaster):
        from harmony.training.progress import EpochProgress

        epochs = int(config.trainer.max_epochs)
        options["callbacks"] = [EpochProgress(f"train {model.name}", epochs, log)]
    t0 = time.perf_counter()
    model.fit(trace, split, **options)
    log(f"trained {model.name} in {time.perf_counter() - t0:.1f} s")
    return model


def notes(models: Iterable[Forecaster]) -> list[str]:
    """What a reader of the table must know about the models compared: a seasonal naive model whose lookback
    is shorter than its season forecasts the last value (persistence), not the value a season earlier."""
    from harmony.model.seasonal_naive import SeasonalNaiveForecaster

    out = []
    for model in models:
        if isinstance(model, SeasonalNaiveForecaster) and model.lag == 1 and model.season > 1:
            out.append(
                f"{model.name} is last-value persistence here: its lookback ({model.spec.lookback} steps) "
                f"is shorter than its season ({model.season} steps, one day unless season_steps says "
                "otherwise), so it cannot see the value one season earlier; lengthen model.lookback to a "
                "day for the seasonal baseline"
            )
    return out


@dataclass
class TrainedScore:
    """A trained forecaster scored without training: `metrics` by the training run's own protocol
    (train.evaluate: the same windows, draws and seed, so the same numbers as the run's test scores) and
    `comparison`, the side-by-side table with the baseline."""

    metrics: dict[str, float]
    windows: int
    comparison: Evaluation


def score_trained(
    config: Any,
    forecaster: Forecaster,
    *,
    baseline: str = "seasonal_naive",
    part: Part = "test",
    log: Callable[[str], None] = print,
    executor: str = "local",
    ray_address: str | None = None,
) -> TrainedScore:
    """Score `forecaster` on the data of `config` (its data and evaluation sections) without training it."""
    import harmony.model.registry  # noqa: F401
    from harmony.training.scoring import evaluate as evaluate_run
    from harmony.training.train import TrainError, load_data

    _, trace, split, spec = load_data(config)
    if spec != forecaster.spec:
        diffs = [
            f"{k}: the config's {getattr(spec, k)!r}, the model's {getattr(forecaster.spec, k)!r}"
            for k in ("indicators", "targets", "lookback", "horizon", "lead_time", "frequency_s")
            if getattr(spec, k) != getattr(forecaster.spec, k)
        ]
        raise TrainError(
            "the model does not fit the configuration's data (give the config it was trained with)",
            path=config.source,
            problems=diffs or ["the forecast specs differ"],
        )
    ev = config.evaluation
    log(f"scoring {forecaster.name} on the {part} part ({ev.num_samples} draws per window)")
    run = evaluate_run(
        forecaster,
        trace,
        split,
        num_samples=ev.num_samples,
        max_windows_per_series=ev.max_windows_per_series,
        seed=config.trainer.seed,
        part=part,
    )
    known = Forecaster.registered()
    if baseline not in known:
        raise TrainError(f"unknown baseline {baseline!r}; registered: {sorted(known)}")
    models = {forecaster.name: forecaster}
    if baseline != forecaster.name:
        models[baseline] = _fit(
            known[baseline](spec, **compared_hparams(config, baseline)), trace, split, config, log
        )
    comparison = _evaluate_as_configured(
        trace,
        split,
        models,
        config,
        baseline=baseline,
        part=part,
        log=log,
        executor=executor,
        ray_address=ray_address,
    )
    return TrainedScore(run.metrics, run.n_windows, comparison)


def format_summary(evaluation: Evaluation) -> str:
    from harmony.data.summary import render_table

    table = evaluation.summary.copy()
    per_target = evaluation.per_series.groupby(["model", "target"])["crps"].mean().unstack("target")
    per_target.columns = [f"crps[{c}]" for c in per_target.columns]
    return (
        f"relative to {evaluation.baseline} (geometric mean over series x targets; < 1 is better)\n"
        + render_table(table)
        + "\n\nmean CRPS per target (original units)\n"
        + render_table(per_target)
    )
