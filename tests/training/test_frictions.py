"""Frictions a new user met training on an unseen trace (issue 20), reproduced on a real trace slice: the
Fisher container1 export with a gap of 40 minutes every day."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harmony.training.config import ConfigError, load_config
from harmony.training.train import STATE_FILE, TrainError, load_data, train

ROOT = Path(__file__).resolve().parents[2]
FISHER = ROOT / "configs" / "fisher_containers.yaml"
SMALL = [
    "model.lookback=144",
    "model.horizon=3",
    "model.lead_time=1",
    "model.targets=[load]",
    "model.hparams.d_model=16",
    "model.hparams.d_ff=32",
    "model.hparams.n_heads=2",
    "model.hparams.context_dim=16",
    "model.hparams.flow_hidden=16",
    "model.hparams.flow_transforms=2",
    "model.hparams.max_train_windows=128",
    "model.hparams.max_val_windows=32",
    "model.hparams.batch_size=64",
    "trainer.max_epochs=1",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "evaluation.num_samples=10",
    "evaluation.max_windows_per_series=4",
    "tracking.run_name=gappy",
]


def gappy_card(data_root: Path, folder: Path, max_fill_steps: int | None) -> Path:
    """container1.csv without its rows from 03:00 to 03:30 (4 points at 10 minutes) every day, and a card."""
    with open(data_root / "fisher_containers" / "container1.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    kept = [rows[0]] + [r for r in rows[1:] if not ("03:00:00" <= r[0][11:] <= "03:30:00")]
    assert len(rows) - len(kept) == 4 * 31  # 31 days, the first and last partial
    with open(folder / "c1.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    cleaning = f"cleaning: {{max_fill_steps: {max_fill_steps}}}\n" if max_fill_steps is not None else ""
    card = folder / f"c1_fill{max_fill_steps}.yaml"
    card.write_text(
        f"name: c1\nloader: table\nfrequency: 10min\nlicense: own data\nsource: a cut of Fisher\n"
        f"directory: {folder}\noptions: {{path: c1.csv, timestamp_column: date}}\n"
        "indicators:\n  - {name: load, unit: load units, level: 1, kind: demand, capacity_per_replica: 1}\n"
        + cleaning
    )
    return card


def test_no_train_windows_points_to_max_fill_steps(tmp_path: Path, data_root: Path) -> None:
    config = load_config(FISHER, [*SMALL, f"data.dataset={gappy_card(data_root, tmp_path, None)}"])
    with pytest.raises(TrainError) as err:
        load_data(config)
    msg = str(err.value)
    assert "no train windows: each series needs 148 consecutive points" in msg
    assert "the longest gap-free run is 140 points (c1)" in msg
    assert "gap(s) of 4 to 4 missing points (median 4) that cleaning left unfilled" in msg
    assert "counted in grid steps of 0 days 00:10:00" in msg
    assert "is 3: gaps up to that many steps are filled by interpolation" in msg
    assert "max_fill_steps: 4 would fill them all" in msg
    fixed = load_config(FISHER, [*SMALL, f"data.dataset={gappy_card(data_root, tmp_path, 4)}"])
    _, trace, _, _ = load_data(fixed)
    assert trace.reports["c1"].filled_points == 4 * 31


def test_a_run_that_failed_before_its_first_epoch_does_not_block_the_next(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    broken = load_config(FISHER, [*SMALL, f"data.dataset={gappy_card(data_root, tmp_path, None)}"])
    with pytest.raises(TrainError, match="no train windows"):
        train(broken)
    assert not (broken.output_dir / STATE_FILE).exists()  # nothing to resume: no checkpoint was written
    fixed = load_config(FISHER, [*SMALL, f"data.dataset={gappy_card(data_root, tmp_path, 4)}"])
    result = train(fixed)  # not "this output_dir holds the unfinished run ...: continue it with --resume"
    assert result.fit.epochs == 1 and not result.resumed


def test_train_prints_epoch_progress_and_no_third_party_chatter(tmp_path: Path, data_root: Path) -> None:
    """Output to a pipe (not a terminal): no progress bar, one line per epoch with the losses and an ETA,
    and none of Lightning's tips and accelerator lines, MLflow's INFO lines or its artifact progress bars."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "HARMONY_DATA_DIR": str(data_root),
    }
    sets = [s for s in SMALL if not s.startswith("trainer.max_epochs")]
    sets += ["trainer.max_epochs=2", "trainer.progress=true", "data.series=[container1]"]
    out = subprocess.run(
        [sys.executable, "-m", "harmony", "train", "--config", str(FISHER), "--set", *sets],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert re.fullmatch(
        r"train gappy: 1/2 epochs \(50%\), \d+s elapsed, ETA at most \d+s; train_loss [-\d.]+, val_loss [-\d.]+",
        lines[0],
    ), lines[:3]
    assert re.fullmatch(
        r"train gappy: 2/2 epochs \(100%\), \d+s elapsed; train_loss [-\d.]+, val_loss [-\d.]+", lines[1]
    )
    everything = out.stdout + out.stderr
    for noise in (
        "Tip:",
        "litlogger",
        "GPU available",
        "TPU available",
        "INFO",
        "Downloading artifacts",
        "it/s]",
    ):
        assert noise not in everything, noise
    assert "LeafSpec" not in everything and "deprecated" not in everything


def test_card_not_found_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(FISHER, ["data.dataset=cards/mine.yaml"])
    msg = str(err.value)
    assert f"dataset card not found; looked for {Path.cwd() / 'cards' / 'mine.yaml'} and " in msg
    assert f"{ROOT / 'configs' / 'cards' / 'mine.yaml'}" in msg
