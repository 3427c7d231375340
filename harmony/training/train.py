"""Train a forecaster from a `TrainConfig` and record the run in MLflow.

`train(config)` loads the trace, splits it chronologically, builds the registered forecaster, fits it with
Lightning (an `MLFlowLogger` bound to the run logs per-epoch train_loss / val_loss), scores the test split,
draws the fan and calibration charts, and logs to one MLflow run:

    params     the configuration as dotted keys (data.*, model.*, trainer.*, ...) and the forecaster's
               full hyper-parameters (forecaster.*)
    metrics    train_loss, val_loss, epoch (per epoch, from Lightning); best_val_loss, best_epoch,
               epochs_trained, fit_seconds; test/<metric> and test/<target>/<metric>
    artifacts  config/config.yaml (resolved), config/source.yaml (the file as written),
               data/card.yaml, data/split.csv, data/split.json, forecaster/ (Forecaster.save: JSON +
               safetensors), plots/fan_chart.png, plots/calibration.png, evaluation/per_series.csv
    model      an MLflow pyfunc model built from code (harmony/model/mlflow_model.py), linked to the run;
               optionally registered as a new version of a registered model

The run's local state lives in `output_dir` (default runs/<run_name>): `state.json` (MLflow run id, status,
the configuration) and Lightning's checkpoints. `train(config, resume=True)` reopens the same MLflow run and
continues from `checkpoints/last.ckpt`; training is seeded per epoch, so the resumed run reaches the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmony import __version__
from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.model.base import FitReport, Forecaster, ForecastSpec
from harmony.plots import calibration_chart, fan_chart
from harmony.training.config import TrainConfig
from harmony.training.dataset import load_data, split_json
from harmony.training.errors import TrainError
from harmony.training.scoring import evaluate
from harmony.training.tracking import active_run, experiment_id, log_metrics, log_params, tracking_uri

__all__ = [
    "FORECASTER_DIR",
    "LAUNCH_WAIT_S",
    "STATE_FILE",
    "RunState",
    "TrainError",
    "TrainResult",
    "build_forecaster",
    "comparable_config",
    "load_data",
    "torch_threads",
    "tracking_uri",
    "train",
]

STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
FORECASTER_DIR = "forecaster"
PLOTS_DIR = "plots"
PYFUNC_NAME = "pyfunc_model"


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """`trainer.num_threads`: torch's thread count inside the block (None: leave it), restored after.

    A fixed count makes CPU results bit-identical from run to run (the count sets the order of floating-point
    sums, so a seed reproduces a training only at one count), and one thread avoids the pathological
    slow-down of OpenMP threads competing with another busy process."""
    threads = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- run state ---------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What `output_dir/state.json` records so that a killed run can be found and continued."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    config: dict[str, Any]
    status: str = "training"  # training -> fitted -> finished
    fit: dict[str, Any] = field(default_factory=dict)
    model_uri: str | None = None
    launch: str | None = None  # the launch of the processes training it together (torchrun), if any

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        tmp.replace(path)  # atomic: a kill never leaves half a state file

    @classmethod
    def load(cls, path: Path) -> RunState:
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise TrainError(f"unreadable run state: {exc}", path=path) from None


@dataclass(frozen=True)
class TrainResult:
    """Where everything went. `primary` is False in the extra processes of a multi-process (DDP) run,
    which only train; the run is recorded by the primary process."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    artifact_uri: str
    output_dir: Path
    forecaster_dir: Path
    model_uri: str | None = None
    registered: tuple[str, str] | None = None  # (name, version)
    plots: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    fit: FitReport = field(default_factory=FitReport)
    resumed: bool = False
    primary: bool = True


def _rank() -> int:
    """This process's global rank: > 0 in the extra processes Lightning launches for DDP, which re-run
    the command and must only train."""
    from pytorch_lightning.utilities import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0))
    return rank if rank else int(os.environ.get("NODE_RANK", "0") != "0")


LAUNCH_WAIT_S = 600.0  # how long the other processes of a torchrun launch wait for the primary's run


def _launch_id() -> str | None:
    """An id of the processes a launcher started together (torchrun, i.e. torch.distributed.elastic), or
    None under Lightning's own DDP launcher, whose extra processes start once the run is recorded."""
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    if run is None:
        return None
    # The rendezvous id alone repeats across launches (its default is "none"); the rendezvous address and
    # the restart count do not.
    where = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    return f"{run}/{where}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _primary_state(path: Path, launch: str | None, timeout_s: float = LAUNCH_WAIT_S) -> RunState:
    """The run the primary process recorded for this launch. Under torchrun every process starts at once,
    so the others wait for the primary to record (or resume) the run and mark it with the launch."""
    if launch is None:
        return RunState.load(path)
    deadline = time.monotonic() + timeout_s
    while True:
        if path.exists():
            state = RunState.load(path)  # written by an atomic rename: never half a file
            if state.launch == launch:
                return state
        if time.monotonic() > deadline:
            raise TrainError(
                f"rank {_rank()}: the primary process (rank 0) recorded no run for launch {launch} within "
                f"{timeout_s:.0f} s (every process must see the same tracking.output_dir)",
                path=path,
            )
        time.sleep(0.2)


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A training configuration (`TrainConfig.to_dict()`) reduced to what decides the trained model: two
    runs whose comparable configs are equal may resume or reuse each other's model."""
    # Progress bars change nothing that is computed, and the thread count only the last bits of CPU
    # arithmetic (a run may continue on another machine); everything else must match to resume.
    out = json.loads(json.dumps(config))
    trainer = out.get("trainer", {})
    for key in ("progress", "num_threads"):
        trainer.pop(key, None)
    # One node is what a run recorded before trainer.num_nodes existed trained on.
    if trainer.get("num_nodes") == 1:
        trainer.pop("num_nodes")
    # The card's binning is what a run recorded before data.binning existed read its data with.
    data = out.get("data", {})
    if data.get("binning", 0) is None:
        data.pop("binning")
    return dict(out)


def _differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            diffs += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append(f"{prefix}{k}: {va!r} then, {vb!r} now")
    return diffs


# --- training ----------------------------------------------------------------------------------------------


def build_forecaster(config: TrainConfig, spec: ForecastSpec) -> Forecaster:
    import harmony.model.registry  # noqa: F401  (registers every model)
    from harmony.model.neural import NeuralForecaster

    cls = Forecaster.registered()[config.model.name]
    hparams = dict(config.model.hparams)
    if issubclass(cls, NeuralForecaster):
        hparams.update(seed=config.trainer.seed, max_epochs=config.trainer.max_epochs)
    return cls(spec, **hparams)


def _fit(
    forecaster: Forecaster,
    trace: Trace,
    split: Split,
    config: TrainConfig,
    *,
    run_id: str | None,
    uri: str,
    checkpoints: Path,
    resume_from: Path | None,
    log: Callable[[str], None] | None = None,
) -> FitReport:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    from harmony.training.progress import EpochProgress

    t = config.trainer
    # A progress bar only on a terminal (in a log file its redraws are noise); elsewhere, and whenever
    # the bar is off, one line per epoch when the caller takes progress lines.
    bar = t.progress and sys.stderr.isatty()
    callbacks = [] if bar or log is None else [EpochProgress(f"train {config.run_name}", t.max_epochs, log)]
    pl.seed_everything(t.seed, workers=True, verbose=False)
    logger = MLFlowLogger(experiment_name=config.tracking.experiment, run_id=run_id, tracking_uri=uri)
    with warnings.catch_warnings():
        # Windows are built in memory; worker processes would only add start-up cost (see neural.py).
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        # Losses are logged per epoch only, so the per-step logging interval does not matter.
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        return forecaster.fit(
            trace,
            split,
            logger=logger,
            checkpoint_dir=str(checkpoints),
            resume_from=str(resume_from) if resume_from is not None else None,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            progress=bar,
            max_epochs=t.max_epochs,
            callbacks=callbacks,
        )


def _whole_report(report: FitReport, client: MlflowClient, run_id: str, checkpoints: Path) -> FitReport:
    """The fit report of a resumed run covers the epochs since the resume only; the whole loss curves are
    in the MLflow run (an epoch re-run after a kill logged the same step twice: keep one), and the best
    epoch is the one saved in best.ckpt."""
    curves = {}
    for key in ("train_loss", "val_loss"):
        by_step = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        curves[key] = [by_step[k] for k in sorted(by_step)]
    best_epoch = report.best_epoch
    best = checkpoints / "best.ckpt"
    if best.exists():
        best_epoch = int(torch.load(best, map_location="cpu", weights_only=True)["epoch"])
    return dataclasses.replace(
        report, train_loss=curves["train_loss"], val_loss=curves["val_loss"], best_epoch=best_epoch
    )


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    register: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run (or, with `resume`, continue) the training a configuration describes; see the module doc.

    `log` takes progress lines (one per epoch when no progress bar is drawn); None prints none."""
    if register is not None and not register.strip():
        raise TrainError("the registered model name must not be empty")
    out = config.output_dir.resolve()
    uri = tracking_uri()
    with torch_threads(config.trainer.num_threads):
        return _train(config, out, uri, resume=resume, register=register, log=log)


def _train(
    config: TrainConfig,
    out: Path,
    uri: str,
    *,
    resume: bool,
    register: str | None,
    log: Callable[[str], None] | None,
) -> TrainResult:
    state_path = out / STATE_FILE
    checkpoints = out / CHECKPOINTS
    if _rank() > 0:
        return _train_worker(config, out, uri, resume)

    state = RunState.load(state_path) if state_path.exists() else None
    if resume:
        if state is None:
            raise TrainError(
                f"nothing to resume: no {STATE_FILE} (no run was started with this output_dir)", path=out
            )
        if state.status == "finished":
            raise TrainError(f"run {state.run_id} already finished; nothing to resume", path=out)
        diffs = _differences(comparable_config(state.config), comparable_config(config.to_dict()))
        if diffs:
            raise TrainError(
                "the configuration differs from the run being resumed; resume with the same one",
                path=config.source,
                problems=diffs,
            )
        uri = state.tracking_uri  # the run lives where it was started
        client = MlflowClient(uri)
        try:
            client.get_run(state.run_id)
        except MlflowException:
            raise TrainError(
                f"run {state.run_id} is not in the MLflow store {uri}", path=state_path
            ) from None
    else:
        if state is not None and state.status != "finished":
            raise TrainError(
                f"this output_dir holds the unfinished run {state.run_id}: continue it with --resume, or "
                "start a new run under another tracking.run_name or tracking.output_dir",
                path=out,
            )
        # A fresh run must not see a previous run's checkpoints: Lightning would version the new ones
        # (best-v1.ckpt) and a later --resume would pick up stale weights.
        for stale in (checkpoints, out / FORECASTER_DIR, out / PLOTS_DIR):
            shutil.rmtree(stale, ignore_errors=True)
        client = MlflowClient(uri)
        exp_id = experiment_id(client, config.tracking.experiment)
        run = client.create_run(exp_id, run_name=config.run_name, tags={"harmony.version": __version__})
        state = RunState(run.info.run_id, exp_id, uri, config.to_dict())
        state.save(state_path)

    launch = _launch_id()
    if state.launch != launch:
        # The processes torchrun started beside this one wait for this mark before they train.
        state.launch = launch
        state.save(state_path)
    mlflow.set_tracking_uri(uri)
    try:
        return _run(config, state, client, out, resume=resume, register=register, log=log)
    except BaseException as exc:
        # The checkpoints and state stay: the run can be continued with --resume. A new run that failed
        # before its first checkpoint (bad data, a wrong key) has nothing to continue: its state goes, so
        # that the next `harmony train` starts afresh instead of asking for --resume.
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        with suppress(MlflowException):
            client.set_terminated(state.run_id, status)
        if not resume and state.status == "training" and not (checkpoints / "last.ckpt").exists():
            state_path.unlink(missing_ok=True)
        raise


def _train_worker(config: TrainConfig, out: Path, uri: str, resume: bool) -> TrainResult:
    """A non-primary DDP process: the same data and model, training only (Lightning's MLflow logger and
    checkpoints act on rank 0 alone)."""
    state = _primary_state(out / STATE_FILE, _launch_id())
    _, trace, split, spec = load_data(config)
    forecaster = build_forecaster(config, spec)
    last = out / CHECKPOINTS / "last.ckpt"
    report = _fit(
        forecaster,
        trace,
        split,
        config,
        run_id=state.run_id,
        uri=state.tracking_uri,
        checkpoints=out / CHECKPOINTS,
        resume_from=last if resume and last.exists() else None,
    )
    return TrainResult(
        run_id=state.run_id,
        experiment_id=state.experiment_id,
        tracking_uri=uri,
        artifact_uri="",
        output_dir=out,
        forecaster_dir=out / FORECASTER_DIR,
        fit=report,
        resumed=resume,
        primary=False,
    )


def _run(
    config: TrainConfig,
    state: RunState,
    client: MlflowClient,
    out: Path,
    *,
    resume: bool,
    register: str | None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    run_id = state.run_id
    uri = state.tracking_uri
    card, trace, split, spec = load_data(config)
    forecaster = build_forecaster(config, spec)

    # -- what the run is: params, tags, configuration, dataset card and split ---------------------------
    params = config.flat()
    params.update({f"forecaster.{k}": json.dumps(v) for k, v in sorted(forecaster.hparams.items())})
    params.update(
        {
            "spec.indicators": ",".join(spec.indicators),
            "spec.targets": ",".join(spec.targets),
            "spec.frequency_s": str(spec.frequency_s),
            "data.n_series": str(len(trace.series_ids)),
        }
    )
    log_params(client, run_id, params)
    tags = {
        "harmony.output_dir": str(out),
        "harmony.config_file": str(config.source) if config.source else "",
        "harmony.overrides": " ".join(config.overrides),
        "harmony.dataset": card.name,
        "harmony.model": config.model.name,
    }
    if resume:
        tags["harmony.resumed"] = "true"
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "config").mkdir()
        (d / "config" / "config.yaml").write_text(config.to_yaml())
        if config.source is not None and config.source.is_file():
            shutil.copyfile(config.source, d / "config" / "source.yaml")
        client.log_artifacts(run_id, str(d / "config"), "config")
        (d / "data").mkdir()
        if card.path is not None:
            shutil.copyfile(card.path, d / "data" / "card.yaml")
        split.describe(trace).to_csv(d / "data" / "split.csv")
        (d / "data" / "split.json").write_text(json.dumps(split_json(trace, split), indent=2))
        client.log_artifacts(run_id, str(d / "data"), "data")

    # -- fit (or, after a kill past the fit, take the saved forecaster) ----------------------------------
    forecaster_dir = out / FORECASTER_DIR
    if state.status == "fitted" and (forecaster_dir / "forecaster.json").exists():
        forecaster = Forecaster.load(forecaster_dir)
        report = FitReport(**state.fit)
    else:
        last = out / CHECKPOINTS / "last.ckpt"
        report = _fit(
            forecaster,
            trace,
            split,
            config,
            run_id=run_id,
            uri=uri,
            checkpoints=out / CHECKPOINTS,
            resume_from=last if resume and last.exists() else None,
            log=log,
        )
        if resume:
            report = _whole_report(report, client, run_id, out / CHECKPOINTS)
        forecaster.save(forecaster_dir)
        state.status = "fitted"
        state.fit = dataclasses.asdict(report)
        state.save(out / STATE_FILE)
    client.log_artifacts(run_id, str(forecaster_dir), FORECASTER_DIR)
    fit_metrics = {"epochs_trained": float(report.epochs), "fit_seconds": report.seconds}
    if report.best_val_loss is not None:
        fit_metrics["best_val_loss"] = report.best_val_loss
    if report.best_epoch is not None:
        fit_metrics["best_epoch"] = float(report.best_epoch)
    log_metrics(client, run_id, fit_metrics)

    # -- test metrics and charts -------------------------------------------------------------------------
    ev = evaluate(
        forecaster,
        trace,
        split,
        num_samples=config.evaluation.num_samples,
        max_windows_per_series=config.evaluation.max_windows_per_series,
        seed=config.trainer.seed,
    )
    metrics = {f"test/{k}": v for k, v in ev.metrics.items()}
    for t, m in ev.per_target.items():
        metrics.update({f"test/{t}/{k}": v for k, v in m.items()})
    metrics["test/windows"] = float(ev.n_windows)
    log_metrics(client, run_id, metrics)
    plots_dir = out / PLOTS_DIR
    plots = {
        "fan_chart": fan_chart(plots_dir / "fan_chart.png", ev.example, title=ev.example_title),
        "calibration": calibration_chart(
            plots_dir / "calibration.png",
            ev.pit,
            ev.coverage_curve,
            title=f"{trace.name}: calibration on the test split ({ev.n_windows} windows)",
        ),
    }
    client.log_artifacts(run_id, str(plots_dir), PLOTS_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "per_series.csv"
        ev.per_series.to_csv(path)
        client.log_artifact(run_id, str(path), "evaluation")

    # -- the pyfunc model (from code; its state is the forecaster/ folder) and its registration ---------
    from harmony.model import mlflow_model

    with active_run(run_id), warnings.catch_warnings():
        # The signature is given explicitly; an input example would only repeat it.
        warnings.filterwarnings("ignore", message=r".*input example was not provided.*")
        info = mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=mlflow_model.__file__,
            artifacts={mlflow_model.FORECASTER_ARTIFACT: str(forecaster_dir)},
            signature=mlflow_model.model_signature(forecaster),
            pip_requirements=mlflow_model.pip_requirements(),
        )
        model_uri = str(info.model_uri)
        client.set_tag(run_id, "harmony.pyfunc_model_uri", model_uri)
        registered = None
        if register is not None:
            # MLflow prints "Successfully registered ..." itself; the command says it once, with the URI.
            with redirect_stderr(io.StringIO()):
                version = mlflow.register_model(model_uri, register)
            registered = (register, str(version.version))
            client.set_tag(run_id, "harmony.registered_model", f"{register}/{version.version}")
    client.set_terminated(run_id, "FINISHED")
    state.status = "finished"
    state.model_uri = model_uri
    state.save(out / STATE_FILE)
    return TrainResult(
        run_id=run_id,
        experiment_id=state.experiment_id,
        tracking_uri=uri,
        artifact_uri=str(client.get_run(run_id).info.artifact_uri),
        output_dir=out,
        forecaster_dir=forecaster_dir,
        model_uri=model_uri,
        registered=registered,
        plots=plots,
        metrics=metrics,
        fit=report,
        resumed=resume,
    )
