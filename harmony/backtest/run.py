"""The whole protocol: knobs chosen on the validation part for every policy, frozen, replayed on the test
part; and `run_config`, which gets the data and the forecaster a configuration names and runs it."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from harmony.backtest.checks import capacities_of, card_of
from harmony.backtest.executor import Executor, LocalExecutor, Part, make_executor
from harmony.backtest.frontier import cost_bound, headline, hindsight_table, validated_table
from harmony.backtest.progress import track
from harmony.backtest.replay import (
    BacktestError,
    SeriesData,
    Settings,
    check_forecaster,
    prepare_series,
    scored_demand,
)
from harmony.backtest.search import Tuned, tune
from harmony.backtest.sections import DRAW_POLICIES, BacktestConfig
from harmony.backtest.sweep import CRITERIA, Evaluator, Knobs, knob_space
from harmony.data.spec import DatasetCard
from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split
from harmony.model.base import Forecaster
from harmony.model.classical import ForecastStats
from harmony.training.config import ConfigError, resolve_card_path

__all__ = ["BacktestResult", "ConfigRun", "run_backtest", "run_config", "settings_from_config"]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
# Seeds of the validation part's draws start here, far from the test part's (which start at the seed).
VAL_SEED_OFFSET = 1_000_003
# Draws held in memory for both parts at once: beyond this the run stops and says what to cut.
MAX_DRAW_BYTES = 8 * 2**30


@dataclass
class BacktestResult:
    """What a backtest concludes, test part first.

    validated: one row per (criterion, policy): the knobs chosen on the validation part and what they did
    on the test part (the headline); headline: HARMONY against the best baseline and the bound, per
    criterion; hindsight: each policy's test points read at the target rate on their lower convex hull
    (hindsight, second); summary / per_run: every setting replayed on the test part, summed over series /
    per series; val_summary: every setting replayed on the validation part; per_service: the realised rate
    of every series at the validated knobs. `capacity[(policy, knobs text, series)]` is the count in place
    over the scored test steps, `demand[series]` the demand there [steps, D].
    """

    validated: pd.DataFrame
    headline: dict[str, dict[str, Any]]
    hindsight: pd.DataFrame
    summary: pd.DataFrame
    per_run: pd.DataFrame
    val_summary: pd.DataFrame
    per_service: pd.DataFrame
    tuned: dict[str, dict[str, Tuned]]
    settings: Settings
    dataset: str
    capacity: dict[tuple[str, str, str], IntArray]
    demand: dict[str, FloatArray]
    times: dict[str, pd.DatetimeIndex]
    skipped: dict[str, str]
    seconds: dict[str, float]
    bounds: dict[str, float]
    classical: dict[str, ForecastStats] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def series(self) -> list[str]:
        return list(self.demand)

    @property
    def bound(self) -> float:
        """The lower bound on cost at the target rate in total over the test part."""
        return self.bounds.get("total", math.nan)

    def chosen(self, policy: str, criterion: str = "total") -> Knobs:
        return self.tuned[policy][criterion].knobs

    def capacity_of(self, policy: str, series: str, criterion: str = "total") -> IntArray:
        """The count in place over the scored test steps of `series` at the knobs chosen on validation."""
        return self.capacity[(policy, self.chosen(policy, criterion).text(), series)]


def _plan(
    trace: Trace, split: Split, series: Sequence[str], settings: Settings, lookback: int, part: str
) -> tuple[list[SeriesData], dict[str, str]]:
    datas: list[SeriesData] = []
    skipped: dict[str, str] = {}
    for sid in series:
        planned = prepare_series(trace, split, sid, settings, lookback=lookback, part=part)
        if isinstance(planned, str):
            skipped[sid] = planned
        else:
            datas.append(planned)
    if not datas:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        raise BacktestError(f"no series can be replayed on the {part} part ({reasons})")
    return datas, skipped


def _part(
    executor: Executor,
    forecaster: Forecaster | None,
    trace: Trace,
    datas: Sequence[SeriesData],
    settings: Settings,
    enabled: Sequence[str],
    window: int,
    seed_offset: int,
    say: Callable[[str], None],
    seconds: dict[str, float],
    classical: dict[str, ForecastStats],
) -> Part:
    """The part's groups placed by the executor, their forecasts computed there; what it took logged."""
    t0 = time.perf_counter()
    part = executor.part(datas, settings, forecaster, trace, enabled, window, seed_offset)
    f = part.forecasts
    for k, v in f.seconds.items():
        seconds[k] = seconds.get(k, 0.0) + v
    name = datas[0].part
    if f.decisions:
        say(
            f"{name}: draws for {f.decisions} decisions x {settings.num_samples} in "
            f"{f.seconds.get('draws', 0.0):.1f} s"
        )
    for model, stats in f.classical.items():
        classical.setdefault(model, ForecastStats()).add(stats)
        say(
            f"{name}: {model} forecasts in {f.seconds.get(model + '_fit', 0.0):.1f} s ({stats.fits} fits, "
            f"{stats.forwards} forwards, {stats.failures} failures forecast by persistence, "
            f"{stats.missing} indicator-decisions without history enough for one)"
        )
    if executor.name != "local":
        say(f"{name}: forecasts on the {executor.name} executor in {time.perf_counter() - t0:.1f} s wall")
    return part


def run_backtest(
    trace: Trace,
    split: Split,
    forecaster: Forecaster | None,
    settings: Settings,
    *,
    series: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> BacktestResult:
    """Choose every policy's knobs on the validation part of `split`, then replay them on the test part.

    Every enabled policy is tuned for both criteria (docs/backtest.md); on the test part the chosen knobs
    are replayed (the validated table), and so is each policy's primary sweep at its chosen secondary knobs
    (the hindsight frontier). `executor` runs the per-series work (default: this process, one group).
    """
    say = log or (lambda _: None)
    executor = executor or LocalExecutor()
    enabled = settings.policies.enabled()
    if forecaster is None and any(p in DRAW_POLICIES for p in enabled):
        raise BacktestError(
            f"the policies {sorted(DRAW_POLICIES & set(enabled))} read a forecaster's draws; give one"
        )
    window = settings.window_steps or settings.interval
    if forecaster is not None:
        window = check_forecaster(forecaster, trace, settings)[1]
    for name, longer in settings.policies.windows_longer_than(window).items():
        raise BacktestError(
            f"policies.{name}.window_steps {longer}: a decision can cover at most the {window} forecast "
            "steps the draws have after the lead time (backtest.window_steps and the model's horizon)"
        )
    lookback = forecaster.spec.lookback if forecaster is not None else 1
    ids = list(series) if series is not None else list(trace.series_ids)
    val, skipped_val = _plan(trace, split, ids, settings, lookback, "val")
    test, skipped_test = _plan(trace, split, ids, settings, lookback, "test")
    per_decision = settings.num_samples * window * len(settings.names) * 4
    decisions = sum(len(d.decisions) for d in (*val, *test))
    if forecaster is not None and decisions * per_decision > MAX_DRAW_BYTES:
        raise BacktestError(
            f"the draws of {decisions} decisions x {settings.num_samples} samples would take "
            f"{decisions * per_decision / 2**30:.1f} GiB; lower forecaster.num_samples or replay fewer "
            "series or steps (backtest.max_series, backtest.max_steps)"
        )
    seconds: dict[str, float] = {}
    classical: dict[str, ForecastStats] = {}

    # 1. The validation part: every policy's knobs, for both criteria.
    val_part = _part(
        executor, forecaster, trace, val, settings, enabled, window, VAL_SEED_OFFSET, say, seconds, classical
    )
    ev_val = Evaluator(val, {}, settings, replayer=val_part.replay)
    progress = track(ev_val, "validation", enabled, settings, say)
    t0 = time.perf_counter()
    tuned = {policy: tune(ev_val, policy, log=say) for policy in enabled}
    seconds["tune_val"] = time.perf_counter() - t0
    progress.finish()
    val_part.close()  # the validation forecasts are no longer needed: free them before the test part's

    # 2. The test part: the chosen knobs, then each policy's primary sweep at its chosen secondary knobs.
    test_part = _part(
        executor, forecaster, trace, test, settings, enabled, window, 0, say, seconds, classical
    )
    ev_test = Evaluator(test, {}, settings, keep_capacity=True, replayer=test_part.replay)
    progress = track(ev_test, "test", enabled, settings, say)
    t0 = time.perf_counter()
    at_test: dict[tuple[str, str], dict[str, Any]] = {}
    for policy, by in tuned.items():
        for criterion, t in by.items():
            at_test[(criterion, policy)] = ev_test.summary_of(t.knobs)
    for policy, by in tuned.items():
        space = knob_space(policy, settings)
        for secondary in dict.fromkeys(t.knobs.secondary for t in by.values()):
            for value in space.ordered():
                ev_test.run(Knobs(policy, float(value), secondary))
    seconds["replay_test"] = time.perf_counter() - t0
    progress.finish()
    say(f"test: {len(ev_test.rows)} settings replayed in {seconds['replay_test']:.1f} s")

    target = settings.target_violation_rate
    demand = scored_demand(test)
    bounds = {
        "total": cost_bound(demand, settings, target, test[0].step_s),
        "service": cost_bound(demand, settings, target, test[0].step_s, per_series=True),
    }
    validated = validated_table(tuned, at_test, bounds)
    summary = ev_test.summary()
    per_service = _per_service(ev_test, tuned)
    test_part.close()
    capacity = {(key[0], ev_test.knobs[key].text(), sid): cap for (key, sid), cap in ev_test.capacity.items()}
    skipped = {**{k: f"validation: {v}" for k, v in skipped_val.items()}, **skipped_test}
    seconds.update({f"replay_{p}": s for p, s in ev_test.seconds.items()})
    seconds.update({f"tune_{p}": s for p, s in ev_val.seconds.items()})
    return BacktestResult(
        validated=validated,
        headline=headline(validated, bounds),
        hindsight=hindsight_table(summary, target, bounds["total"]),
        summary=summary,
        per_run=ev_test.per_run(),
        val_summary=ev_val.summary(),
        per_service=per_service,
        tuned=tuned,
        settings=settings,
        dataset=trace.name,
        capacity=capacity,
        demand=dict(demand),
        times={d.series: d.index[d.scored] for d in test},
        skipped=skipped,
        seconds=seconds,
        bounds=bounds,
        classical=classical,
    )


def _per_service(ev: Evaluator, tuned: Mapping[str, Mapping[str, Tuned]]) -> pd.DataFrame:
    """The realised violation rate of every series on the test part at each policy's validated knobs."""
    rows: list[dict[str, Any]] = []
    for criterion in CRITERIA:
        for policy, by in tuned.items():
            for r in ev.run(by[criterion].knobs):
                rows.append(
                    {
                        "criterion": criterion,
                        "policy": policy,
                        "series": r["series"],
                        "steps": r["steps"],
                        "violations": r["violations"],
                        "exposed": r["exposed"],
                        "violation_rate": r["violation_rate"],
                        "cost": r["cost"],
                    }
                )
    return pd.DataFrame(rows)


# --- from a configuration -----------------------------------------------------------------------------------


@dataclass
class ConfigRun:
    """A backtest run from a configuration: its result and where its forecaster came from."""

    config: BacktestConfig
    result: BacktestResult
    forecaster_source: str
    model_run_id: str | None = None
    trace_name: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def _mlflow_forecaster(uri: str) -> Forecaster:
    import mlflow

    from harmony.training.train import tracking_uri

    # models:/ URIs are resolved through MLflow's global store, not the tracking_uri argument: point it at
    # ours (as train() does), or a store set earlier in the process answers "not found".
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, tracking_uri=tracking_uri()))
    except Exception as exc:  # MLflow raises many types for an unknown run, model or path
        raise BacktestError(
            f"forecaster.uri {uri!r}: cannot download it from {tracking_uri()}: {exc}"
        ) from None
    for candidate in (local, local / "artifacts" / "forecaster", local / "forecaster"):
        if (candidate / "forecaster.json").exists():
            return Forecaster.load(candidate)
    raise BacktestError(
        f"forecaster.uri {uri!r}: no forecaster.json in what it points at (expected a forecaster folder or a "
        "harmony pyfunc model)"
    )


def _trained_forecaster(cfg: BacktestConfig, say: Callable[[str], None]) -> tuple[Forecaster, str | None]:
    """Train the configured model (a logged harmony.training run), or reuse the one trained for the same
    configuration in this backtest's output folder. Training sees the training part and stops early on the
    validation part: the test part plays no role in the model."""
    from harmony.training.config import TrackingConfig
    from harmony.training.train import STATE_FILE, RunState, comparable_config, train

    shared = cfg.forecaster.model_dir
    folder = (Path(shared) if shared else cfg.output_dir / "model").resolve()
    # A shared folder's run is named after the folder, so every config sharing it trains the same run.
    owner = folder.parent.name if shared else cfg.run_name
    train_cfg = dataclasses.replace(
        cfg.train,
        tracking=TrackingConfig(
            experiment=cfg.train.tracking.experiment, run_name=f"{owner}-model", output_dir=str(folder)
        ),
    )
    state_path = folder / STATE_FILE
    state = RunState.load(state_path) if state_path.exists() else None
    if (
        cfg.forecaster.reuse
        and state is not None
        and state.status == "finished"
        and comparable_config(state.config) == comparable_config(train_cfg.to_dict())
        and (folder / "forecaster" / "forecaster.json").exists()
    ):
        say(f"model: reusing {folder / 'forecaster'} (MLflow run {state.run_id}, same configuration)")
        return Forecaster.load(folder / "forecaster"), state.run_id
    resume = state is not None and state.status != "finished"
    say(f"model: training {train_cfg.model.name} ({'resuming' if resume else 'new run'}) into {folder}")
    result = train(train_cfg, resume=resume)
    return Forecaster.load(result.forecaster_dir), result.run_id


def settings_from_config(cfg: BacktestConfig, card: DatasetCard | Trace, lead_time: int) -> Settings:
    r = cfg.backtest
    return Settings(
        capacities=capacities_of(card, r.capacities),
        lead_time=lead_time,
        interval=r.interval,
        window_steps=r.window_steps,
        warmup_steps=r.warmup_steps,
        max_steps=r.max_steps,
        initial_replicas=r.initial_replicas,
        target_violation_rate=cfg.sla.max_violation_probability,
        replica_hour_price=cfg.cost.replica_hour_price,
        violation_penalty=cfg.cost.violation_penalty,
        scaling=cfg.scaling,
        policies=cfg.policies,
        tuning=cfg.tuning,
        num_samples=cfg.forecaster.num_samples,
        batch_windows=cfg.forecaster.batch_windows,
        seed=cfg.forecaster.seed,
    )


def run_config(cfg: BacktestConfig, *, log: Callable[[str], None] | None = None) -> ConfigRun:
    """Load the data, get the forecaster (train, folder, MLflow or none) and run the backtest."""
    from harmony.training.train import torch_threads

    with torch_threads(cfg.train.trainer.num_threads):
        return _run_config(cfg, log or (lambda _: None))


def _run_config(cfg: BacktestConfig, say: Callable[[str], None]) -> ConfigRun:
    from harmony.data.catalog import load
    from harmony.data.plot import display_zone

    t0 = time.perf_counter()
    d = cfg.train.data
    card = card_of(cfg.train)
    trace = load(card, root=d.root, series=d.series, frequency=d.frequency, binning=d.binning)
    split = chronological_split(trace, d.split, by=d.split_by)
    seconds = {"load": time.perf_counter() - t0}
    series = list(trace.series_ids)
    if cfg.backtest.series is not None:
        unknown = [s for s in cfg.backtest.series if s not in trace.series]
        if unknown:
            raise ConfigError(
                f"backtest.series: {unknown} not in the trace ({len(series)} series, e.g. "
                f"{', '.join(series[:5])})",
                path=cfg.source,
            )
        series = list(cfg.backtest.series)
    if cfg.backtest.max_series is not None:
        series = series[: cfg.backtest.max_series]

    t0 = time.perf_counter()
    forecaster: Forecaster | None = None
    model_run: str | None = None
    source = cfg.forecaster.origin
    if source == "train":
        forecaster, model_run = _trained_forecaster(cfg, say)
        where = f"trained {cfg.train.model.name} (MLflow run {model_run})"
    elif source == "path":
        folder = resolve_card_path(str(cfg.forecaster.path), cfg.source)
        forecaster = Forecaster.load(folder)
        where = f"{forecaster.name} from {folder}"
    elif source == "mlflow":
        forecaster = _mlflow_forecaster(str(cfg.forecaster.uri))
        where = f"{forecaster.name} from {cfg.forecaster.uri}"
    else:
        where = "none"
    seconds["forecaster"] = time.perf_counter() - t0
    model_lead = forecaster.spec.lead_time if forecaster is not None else cfg.train.model.lead_time
    lead = cfg.backtest.lead_time if cfg.backtest.lead_time is not None else model_lead
    settings = settings_from_config(cfg, card, lead)
    say(f"backtest: {trace.name}, {len(series)} series, lead {lead} steps, interval {settings.interval}")
    t0 = time.perf_counter()
    r = cfg.backtest
    executor = make_executor(
        r.executor, series_per_group=r.series_per_group, address=r.ray_address, workers=r.workers
    )
    result = run_backtest(trace, split, forecaster, settings, series=series, log=say, executor=executor)
    seconds["backtest"] = time.perf_counter() - t0
    result.info.update(
        {
            "dataset": trace.name,
            "forecaster": where,
            "lookback": str(forecaster.spec.lookback) if forecaster is not None else "-",
            "horizon": str(forecaster.spec.horizon) if forecaster is not None else "-",
            "model_lead_time": str(model_lead),
            "display_timezone": display_zone(trace),
        }
    )
    if model_run:
        result.info["model_run_id"] = model_run
    return ConfigRun(cfg, result, where, model_run, trace.name, seconds)
