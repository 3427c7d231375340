"""`harmony train`: configs, the MLflow run it records (real embedded SQLite store, no mocks), the pyfunc
model, registration, and a killed run resumed to the very weights of an uninterrupted one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from harmony.cli import main
from harmony.data.catalog import load
from harmony.model.base import Forecaster
from harmony.model.mlflow_model import forecast_frame
from harmony.training.config import ConfigError, TrainConfig, load_config
from harmony.training.train import TrainError, TrainResult, torch_threads, train

ROOT = Path(__file__).resolve().parents[2]
FISHER = ROOT / "configs" / "fisher_containers.yaml"

# Two containers, a short window and a very small network: each training takes a second or two.
TINY = [
    "data.series=[container1, container2]",
    "model.lookback=24",
    "model.horizon=3",
    "model.lead_time=1",
    "model.targets=[load, cpu_cores]",
    "model.hparams.d_model=16",
    "model.hparams.d_ff=32",
    "model.hparams.n_heads=2",
    "model.hparams.context_dim=16",
    "model.hparams.flow_hidden=16",
    "model.hparams.flow_transforms=2",
    "model.hparams.max_train_windows=256",
    "model.hparams.max_val_windows=64",
    "model.hparams.batch_size=64",
    "trainer.max_epochs=2",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "evaluation.num_samples=20",
    "evaluation.max_windows_per_series=8",
]


def tiny(*extra: str) -> TrainConfig:
    return load_config(FISHER, [*TINY, *extra])


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own with its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[tuple[TrainResult, Path]]:
    d = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
        yield train(tiny("tracking.run_name=tiny")), d


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _history_frame(trace_rows: dict[str, pd.DataFrame], lookback: int, end: int) -> pd.DataFrame:
    """The input contract: one row per step, a series column, UTC times without a zone."""
    parts = []
    for sid, frame in trace_rows.items():
        f = frame.iloc[end - lookback : end].reset_index(names="timestamp")
        f["timestamp"] = f["timestamp"].dt.tz_localize(None)
        f.insert(0, "series", sid)
        parts.append(f)
    return pd.concat(parts, ignore_index=True)


# --- the MLflow run -------------------------------------------------------------------------------------


def test_run_records_params_losses_metrics_and_artifacts(trained: tuple[TrainResult, Path]) -> None:
    result, _ = trained
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny"
    p = run.data.params
    assert p["model.lookback"] == "24" and p["model.horizon"] == "3" and p["model.name"] == "harmony"
    assert p["data.series"] == "container1,container2" and p["trainer.seed"] == "0"
    assert p["model.hparams.d_model"] == "16" and p["forecaster.d_model"] == "16"
    assert p["spec.targets"] == "load,cpu_cores"

    for key in ("train_loss", "val_loss"):
        hist = client.get_metric_history(result.run_id, key)
        assert len(hist) == 2, key  # one entry per epoch, from Lightning's MLFlowLogger
        assert [h.step for h in hist] == sorted({h.step for h in hist})
        assert all(np.isfinite(h.value) for h in hist)
    m = run.data.metrics
    for key in (
        "test/crps",
        "test/wql",
        "test/coverage_50",
        "test/coverage_90",
        "test/load/crps",
        "test/cpu_cores/crps",
    ):
        assert key in m and np.isfinite(m[key]), key
    assert 0.0 <= m["test/coverage_90"] <= 1.0
    assert m["test/coverage_50"] <= m["test/coverage_90"]
    assert m["test/windows"] == 16  # 8 evenly spaced windows per container
    assert m["best_val_loss"] == pytest.approx(
        min(h.value for h in client.get_metric_history(result.run_id, "val_loss"))
    )

    assert {
        "forecaster/weights.safetensors",
        "forecaster/forecaster.json",
        "plots/fan_chart.png",
        "plots/calibration.png",
        "data/card.yaml",
        "data/split.csv",
        "data/split.json",
        "config/config.yaml",
        "config/source.yaml",
        "evaluation/per_series.csv",
    } <= _artifacts(client, result.run_id)
    logged = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path="config/config.yaml", tracking_uri=result.tracking_uri
        )
    )
    assert load_config(logged).to_dict() == tiny("tracking.run_name=tiny").to_dict()
    for png in result.plots.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The pyfunc model is a LoggedModel of this run (MLflow 3), built from code: no pickle anywhere.
    assert result.model_uri is not None and result.model_uri.startswith("models:/")
    model_id = result.model_uri.removeprefix("models:/")
    assert model_id in {o.model_id for o in run.outputs.model_outputs}
    assert mlflow.get_logged_model(model_id).source_run_id == result.run_id
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, tracking_uri=result.tracking_uri))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert "MLmodel" in files and "mlflow_model.py" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "model_code_path" in (local / "MLmodel").read_text()


def test_pyfunc_and_forecaster_folder_forecast_real_history(
    trained: tuple[TrainResult, Path], data_root: Path
) -> None:
    result, _ = trained
    mlflow.set_tracking_uri(result.tracking_uri)
    trace = load("fisher_containers", root=data_root, series=["container1", "container2"])
    frames = {sid: trace[sid] for sid in trace.series_ids}
    end = 3500  # a point in the test part of both containers
    history = _history_frame(frames, 24, end)

    model = mlflow.pyfunc.load_model(result.model_uri)
    out = model.predict(history, params={"seed": 3})
    assert len(out) == 2 * 2 * 3  # series x targets x steps
    assert set(out["series"]) == {"container1", "container2"} and set(out["target"]) == {"load", "cpu_cores"}
    q = out[["q0.05", "q0.25", "q0.5", "q0.75", "q0.95"]].to_numpy()
    assert np.isfinite(q).all() and (np.diff(q, axis=1) >= 0).all()
    last = trace["container1"].index[end - 1].tz_localize(None)
    first = out[(out["series"] == "container1") & (out["target"] == "load")].sort_values("step")
    assert list(first["timestamp"]) == [last + (1 + k) * pd.Timedelta("10min") for k in (1, 2, 3)]
    again = model.predict(history.sample(frac=1.0, random_state=0), params={"seed": 3})  # row order is free
    pd.testing.assert_frame_equal(out, again)

    # The same numbers from the forecaster/ artifact loaded directly (no MLflow in between) ...
    folder = Path(
        mlflow.artifacts.download_artifacts(
            run_id=result.run_id, artifact_path="forecaster", tracking_uri=result.tracking_uri
        )
    )
    direct = Forecaster.load(folder)
    pd.testing.assert_frame_equal(forecast_frame(direct, history, seed=3), out)
    draws = model.predict(history, params={"output": "samples", "num_samples": 7, "seed": 1})
    assert len(draws) == 2 * 7 * 2 * 3 and set(draws["sample"]) == set(range(7))

    # ... and the artifact is the local folder: identical draws under a fixed seed.
    here = Forecaster.load(result.forecaster_dir)
    spec = here.spec
    past = np.stack([frames[s][list(spec.indicators)].to_numpy()[end - 24 : end] for s in frames])
    times = np.array([frames[s].index[end - 1].value for s in frames], dtype=np.int64)
    a = here.sample(past, 50, times, seed=11)
    b = direct.sample(past, 50, times, seed=11)
    assert a.shape == (2, 50, 3, 2) and np.array_equal(a, b)
    assert (result.forecaster_dir / "weights.safetensors").read_bytes() == (
        folder / "weights.safetensors"
    ).read_bytes()


def test_register_makes_new_versions(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "train",
        "--config",
        str(FISHER),
        "--set",
        *TINY,
        "trainer.max_epochs=1",
        "--register",
        "fisher-tiny",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "registered as models:/fisher-tiny/1" in printed and "fan_chart" in printed
    second = train(tiny("trainer.max_epochs=1", "tracking.run_name=second"), register="fisher-tiny")
    assert second.registered == ("fisher-tiny", "2")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    versions = {str(v.version): v for v in client.search_model_versions("name='fisher-tiny'")}
    assert set(versions) == {"1", "2"}
    assert versions["2"].run_id == second.run_id and versions["1"].run_id != second.run_id
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    assert mlflow.pyfunc.load_model("models:/fisher-tiny/1").metadata.signature is not None


def test_evaluate_prints_and_logs_the_table_of_the_chosen_part(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--config", str(FISHER), "--models", "gaussian,seasonal_naive", "--set", *TINY]
    assert main([*args, "--part", "val"]) == 0
    printed = capsys.readouterr().out
    assert "scored on the validation part" in printed and "pit_coverage_90" in printed
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("harmony-fisher").experiment_id]  # type: ignore[union-attr]
    )
    assert run.data.params["part"] == "val" and run.data.params["models"] == "gaussian,seasonal_naive"
    assert run.data.metrics["seasonal_naive/crps_rel"] == pytest.approx(1.0)
    # The printed table is the logged one: gaussian's relative CRPS appears with the same digits.
    table = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/table.txt")
    assert table in printed
    rel = float(next(line for line in table.splitlines() if line.startswith("gaussian")).split()[1])
    assert run.data.metrics["gaussian/crps_rel"] == pytest.approx(rel, rel=6e-3)  # 3 digits printed


# --- kill and resume ------------------------------------------------------------------------------------


def _ckpt_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # absent or being replaced at this instant
        return None


def test_killed_run_resumes_to_identical_weights(workdir: Path) -> None:
    # Enough windows per epoch that the kill lands mid-training, not after it.
    settings = [*TINY, "trainer.max_epochs=4", "model.hparams.max_train_windows=1024"]
    straight = train(load_config(FISHER, [*settings, "tracking.run_name=straight"]))

    cmd = [
        sys.executable,
        "-m",
        "harmony.cli",
        "train",
        "--config",
        str(FISHER),
        "--set",
        *settings,
        "tracking.run_name=killed",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    last = workdir / "runs" / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        epoch = _ckpt_epoch(last) if last.exists() else None
        if epoch is not None and epoch >= 1:  # the end of epoch 1 (or 2) is checkpointed
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    killed_at = _ckpt_epoch(last)
    assert killed_at is not None and killed_at < 3, "the run ended before it could be killed mid-training"

    fresh = load_config(FISHER, [*settings, "tracking.run_name=killed"])
    with pytest.raises(TrainError, match=r"unfinished run .* --resume"):
        train(fresh)  # a fresh start would overwrite the killed run's checkpoints
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    [killed_run] = client.search_runs([straight.experiment_id], "attributes.run_name = 'killed'")
    assert killed_run.info.status == "RUNNING"  # SIGKILL: nothing could close it

    changed = load_config(FISHER, [*settings, "tracking.run_name=killed", "model.hparams.lr=0.01"])
    with pytest.raises(TrainError, match=r"differs from the run being resumed(.|\n)*model\.hparams\.lr"):
        train(changed, resume=True)

    out = subprocess.run(
        [*cmd, "--resume"], cwd=workdir, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert f"run        {killed_run.info.run_id} (resumed)" in out.stdout

    runs = client.search_runs([straight.experiment_id], "attributes.run_name = 'killed'")
    assert [r.info.run_id for r in runs] == [killed_run.info.run_id]  # the same MLflow run, reopened
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["harmony.resumed"] == "true"

    a = load_file(str(straight.forecaster_dir / "weights.safetensors"))
    b = load_file(str(workdir / "runs" / "killed" / "forecaster" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The loss curve logged across the kill is the uninterrupted one (a re-run epoch logs the same value).
    for key in ("train_loss", "val_loss"):
        want = {m.step: m.value for m in client.get_metric_history(straight.run_id, key)}
        got = {m.step: m.value for m in client.get_metric_history(killed_run.info.run_id, key)}
        assert got == want, key
    resumed = client.get_run(killed_run.info.run_id).data.metrics
    for key in ("test/crps", "best_val_loss", "best_epoch", "epochs_trained"):
        assert resumed[key] == client.get_run(straight.run_id).data.metrics[key], key


def test_resume_needs_a_started_run(workdir: Path) -> None:
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny("tracking.run_name=never"), resume=True)


# --- configuration errors -------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


BASE = """
data: {dataset: fisher_containers, series: [container1]}
model:
  lookback: 24
  horizon: 3
"""


def test_config_defaults_and_yaml_typed_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, BASE), ["model.hparams.lr=1e-3", "trainer.devices=2", "model.targets=[load]"]
    )
    assert cfg.model.name == "harmony" and cfg.data.split == (0.7, 0.1, 0.2) and cfg.data.split_by == "time"
    assert cfg.model.hparams == {"lr": 0.001} and cfg.trainer.devices == 2 and cfg.model.targets == ["load"]
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.progress is True
    assert cfg.run_name == "bad" and cfg.output_dir == Path("runs/bad")


def test_a_run_recorded_before_data_binning_is_still_comparable(tmp_path: Path) -> None:
    """A model trained before data.binning existed is reused (and resumed) by the same config now."""
    from harmony.training.train import comparable_config

    config = load_config(_write(tmp_path, BASE)).to_dict()
    assert config["data"]["binning"] is None
    older = {**config, "data": {k: v for k, v in config["data"].items() if k != "binning"}}
    assert comparable_config(older) == comparable_config(config)
    left = load_config(_write(tmp_path, BASE), ["data.binning=left"]).to_dict()
    assert comparable_config(left) != comparable_config(config)


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (BASE.replace("lookback", "lookbak"), [], r"model\.lookbak: unknown key.*did you mean 'lookback'"),
        (
            BASE,
            ["model.lookback=abc"],
            r"model\.lookback: expected an integer, got 'abc' \(str\) \(from --set model\.lookback=abc\)",
        ),
        (
            BASE + "trainer: {progress: maybe}\n",
            [],
            r"trainer\.progress: expected true or false, got 'maybe'",
        ),
        (BASE, ["data.split=[0.5, 0.5]"], r"data\.split: expected a list of 3 numbers"),
        (BASE, ["model.name=prophet"], r"model\.name: unknown model 'prophet'; registered models: .*harmony"),
        (
            BASE,
            ["model.hparams.d_modle=8"],
            r"model\.hparams\.d_modle: unknown hyper-parameter .*did you mean 'd_model'",
        ),
        (BASE, ["model.hparams.d_model=big"], r"model\.hparams\.d_model: expected an integer"),
        (BASE, ["model.hparams.target_noise=-0.1"], r"model\.hparams\.target_noise: expected a number >= 0"),
        (BASE, ["model.hparams.d_model=null"], r"model\.hparams\.d_model: expected an integer"),
        (BASE, ["model.hparams.seed=3"], r"model\.hparams\.seed: set it with trainer\.seed"),
        (BASE, ["model.targets=[load, nope]"], r"model\.targets: unknown indicators \['nope'\]"),
        (BASE, ["data.dataset=nowhere"], r"data\.dataset: .*unknown dataset 'nowhere'"),
        (BASE, ["trainer.accelerator=quantum"], r"trainer\.accelerator: expected one of cpu, gpu"),
        (BASE, ["tracking.run_name=a/b"], r"tracking\.run_name: expected letters"),
        (BASE, ["trainer.max_epochs.x=1"], r"trainer\.max_epochs: expected an integer, got \{'x': 1\}"),
        (BASE.replace("  horizon: 3\n", ""), [], r"model\.horizon: missing; expected an integer"),
        (
            BASE,
            ["data.binning=centre"],
            r"yaml: data\.binning: expected one of 'nearest', 'left', got 'centre'",
        ),
        (BASE, ["data.frequency=often"], r"yaml: data\.frequency: expected a duration such as '300s'"),
    ],
    ids=[
        "unknown-key",
        "bad-type-override",
        "bad-type-file",
        "split-length",
        "unknown-model",
        "unknown-hparam",
        "bad-hparam-type",
        "negative-hparam",
        "null-size",
        "trainer-owned-hparam",
        "unknown-target",
        "unknown-dataset",
        "bad-accelerator",
        "bad-run-name",
        "override-into-scalar",
        "missing-key",
        "unknown-binning",
        "bad-frequency",
    ],
)
def test_config_errors_name_the_file_and_key(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path, overrides)
    assert str(err.value).startswith(f"{path}: ")


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, BASE.replace("lookback", "lookbak"))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: model.lookbak: unknown key")


def test_cli_help_documents_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--register", "--resume", "trainer.accelerator=gpu", "ddp"):
        assert flag in text


def test_torch_threads_sets_the_count_inside_the_block_and_restores_it() -> None:
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(other):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored on an error too
    with torch_threads(None):  # trainer.num_threads: null leaves torch's count as it is
        assert torch.get_num_threads() == before


# --- scoring a trained forecaster without training ------------------------------------------------------


def test_evaluate_a_trained_model_gives_the_training_runs_numbers(
    trained: tuple[TrainResult, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result, d = trained
    monkeypatch.chdir(d)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
    expected = ", ".join(
        f"{k} {result.metrics['test/' + k]:.4g}"
        for k in ("crps", "wql", "mase", "coverage_50", "coverage_90", "pit_coverage_90")
    )
    for uri in (str(result.output_dir), result.run_id, f"runs:/{result.run_id}", str(result.model_uri)):
        assert main(["evaluate", "--model", uri]) == 0, uri
        printed = capsys.readouterr().out
        assert f"test       {expected}  ({int(result.metrics['test/windows'])} windows)" in printed, uri
        assert f"training run {result.run_id}" in printed  # the config came from the run
        assert "trained seasonal_naive in" in printed and "trained harmony" not in printed  # no retraining
        assert re.search(r"^harmony\s+[\d.]+", printed, re.M)  # the side-by-side table against the baseline
    assert main(["evaluate", "--model", "nowhere"]) == 2
    assert "--model 'nowhere': not a folder, and not an MLflow URI" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(result.forecaster_dir), "--config", str(FISHER)]) == 2
    err = capsys.readouterr().err
    assert "the model does not fit the configuration's data" in err and "lookback: the config's 144" in err
