"""The demo's committed forecaster (models/fisher_demo): it loads, it is the model configs/fisher_demo.yaml
trains (`make demo-model` regenerates it), and it still gives the committed backtest figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harmony.backtest import load_backtest_config, run_config
from harmony.model.base import Forecaster
from harmony.training.config import load_config
from harmony.training.train import build_forecaster, load_data

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fisher_demo"
DEMO = ROOT / "configs" / "backtest" / "demo.yaml"


def test_the_committed_forecaster_is_small_and_is_what_its_config_trains(data_root: Path) -> None:
    sizes = sorted(p.stat().st_size for p in MODEL.iterdir())
    assert [p.name for p in sorted(MODEL.iterdir())] == ["forecaster.json", "weights.safetensors"]
    assert sum(sizes) < 4 * 2**20
    forecaster = Forecaster.load(MODEL)
    config = load_config(ROOT / "configs" / "fisher_demo.yaml")
    _, _, _, spec = load_data(config)
    assert forecaster.spec == spec
    built = build_forecaster(config, spec)
    assert json.loads(json.dumps(forecaster.hparams)) == json.loads(json.dumps(built.hparams))
    # The demo's backtest loads this folder and the base it trains from is this config.
    demo = load_backtest_config(DEMO)
    assert (
        demo.forecaster.origin == "path"
        and demo.base is not None
        and demo.base.resolve() == ROOT / "configs" / "fisher_demo.yaml"
    )


def test_the_committed_forecaster_gives_the_committed_figures(data_root: Path) -> None:
    """Two containers, 144 test steps, HARMONY against two HPA settings: the validated costs (known answers
    recorded when the model was committed; they change only with the model or the decision code)."""
    sets = [
        "data.series=[container1, container2]",
        "backtest.max_steps=144",
        *(f"policies.{p}=null" for p in ("quantile", "point", "ehpa", "arima", "ets", "static")),
        "policies.harmony.max_violation_probability=[0.05, 0.01]",
        "policies.harmony.scale_down_window_s=[0]",
        "policies.hpa.target_utilization=[0.5, 0.7]",
        "policies.hpa.scale_down_window_s=[3600]",
        "policies.hpa.scale_down_rate=[100%/15s]",
        "tuning.refine=0",
    ]
    run = run_config(load_backtest_config(DEMO, sets))
    assert run.forecaster_source.startswith("harmony from ") and run.forecaster_source.endswith(
        "models/fisher_demo"
    )
    got = run.result.validated.set_index(["criterion", "policy"])
    assert got.loc[("total", "harmony"), "knobs"] == "eps=0.01 forgetting=0.99 scale_down_window_s=0"
    assert got.loc[("total", "harmony"), "cost"] == pytest.approx(238.16666666666666, rel=1e-9)
    assert got.loc[("total", "hpa"), "cost"] == pytest.approx(306.5, rel=1e-9)
    assert got.loc[("total", "oracle"), "cost"] == pytest.approx(133.33333333333331, rel=1e-9)
