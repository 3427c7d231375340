"""Training on several processes: torchrun starts two CPU workers (gloo) on a real slice; the run is
recorded once and its model loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_train import TINY

from harmony.model.base import Forecaster
from harmony.training.train import STATE_FILE, RunState, TrainError, _primary_state

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_trains_on_two_processes_and_records_one_run(tmp_path: Path, data_root: Path) -> None:
    env = {
        **os.environ,
        "HARMONY_DATA_DIR": str(data_root),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    harmony = Path(sys.executable).parent / "harmony"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(harmony),
        "train",
        "--config",
        str(ROOT / "configs" / "fisher_containers.yaml"),
        "--set",
        *TINY,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"tracking.output_dir={tmp_path / 'out'}",
        "tracking.experiment=ddp",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr  # the second process joined the group

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("ddp")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["epochs_trained"] == 2 and runs[0].data.metrics["test/crps"] > 0
    state = RunState.load(tmp_path / "out" / STATE_FILE)
    assert state.run_id == runs[0].info.run_id and state.status == "finished" and state.launch is not None
    model = Forecaster.load(tmp_path / "out" / "forecaster")
    assert model.spec.targets == ("load", "cpu_cores")


def test_the_other_processes_wait_for_the_primarys_run_of_their_launch(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    RunState("r1", "e1", "sqlite://", {}, launch="old").save(path)  # a previous launch's run
    with pytest.raises(TrainError, match="recorded no run for launch new within 0 s"):
        _primary_state(path, "new", timeout_s=0.3)
    RunState("r2", "e1", "sqlite://", {}, launch="new").save(path)
    assert _primary_state(path, "new", timeout_s=0.3).run_id == "r2"
    assert _primary_state(path, None).run_id == "r2"  # Lightning's own launcher: no wait


def test_a_run_recorded_before_num_nodes_is_still_comparable() -> None:
    from harmony.training.config import load_config
    from harmony.training.train import comparable_config

    config = load_config(ROOT / "configs" / "fisher_containers.yaml").to_dict()
    older = {**config, "trainer": {k: v for k, v in config["trainer"].items() if k != "num_nodes"}}
    assert config["trainer"]["num_nodes"] == 1
    assert comparable_config(older) == comparable_config(config)
    two = {**config, "trainer": {**config["trainer"], "num_nodes": 2}}
    assert comparable_config(two) != comparable_config(config)
