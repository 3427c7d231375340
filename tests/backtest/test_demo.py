"""The demo's committed forecaster (configs/models/fisher_demo): it loads, it is the model configs/fisher_demo.yaml
trains (`make demo-model` regenerates it), and it still gives the committed backtest figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harmony.backtest import POLICY_ORDER, ConfigRun, load_backtest_config, run_config
from harmony.model.base import Forecaster
from harmony.report_tables import advice_text, headline_tables
from harmony.training.config import load_config
from harmony.training.train import build_forecaster, load_data

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "configs" / "models" / "fisher_demo"
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


@pytest.fixture(scope="module")
def small_run(data_root: Path) -> ConfigRun:
    """Two containers, 144 test steps, HARMONY against two HPA settings and an EHPA that cannot meet 1%."""
    sets = [
        "data.series=[container1, container2]",
        "backtest.max_steps=144",
        *(f"policies.{p}=null" for p in ("quantile", "point", "arima", "ets", "static")),
        "policies.ehpa.target_utilization=[0.95]",
        "policies.ehpa.scale_down_window_s=[0]",
        "policies.ehpa.scale_down_rate=[100%/15s]",
        "policies.harmony.max_violation_probability=[0.05, 0.01]",
        "policies.harmony.scale_down_window_s=[0]",
        "policies.hpa.target_utilization=[0.5, 0.7]",
        "policies.hpa.scale_down_window_s=[3600]",
        "policies.hpa.scale_down_rate=[100%/15s]",
        "tuning.refine=0",
    ]
    return run_config(load_backtest_config(DEMO, sets))


def test_the_committed_forecaster_gives_the_committed_figures(small_run: ConfigRun) -> None:
    """The validated costs: known answers recorded when the model was committed; they change only with the
    model or the decision code."""
    run = small_run
    assert run.forecaster_source.startswith("harmony from ")
    assert Path(run.forecaster_source.removeprefix("harmony from ")).resolve() == MODEL.resolve()
    got = run.result.validated.set_index(["criterion", "policy"])
    assert got.loc[("total", "harmony"), "knobs"] == "eps=0.01 forgetting=0.99 scale_down_window_s=0"
    assert got.loc[("total", "harmony"), "cost"] == pytest.approx(238.16666666666666, rel=1e-9)
    assert got.loc[("total", "hpa"), "cost"] == pytest.approx(306.5, rel=1e-9)
    assert got.loc[("total", "oracle"), "cost"] == pytest.approx(133.33333333333331, rel=1e-9)


def test_the_output_flags_a_sweep_that_never_met_the_target(small_run: ConfigRun) -> None:
    result = small_run.result
    advice = advice_text(result)
    assert advice.startswith("ATTENTION\n")
    assert (
        "  - harmony: no setting met 1% in total on the validation part (the safest reached 1.389%): its cost "
        "is that of a higher rate than the target. Widen its sweep: smaller max_violation_probability values "
        "in policies.harmony\n"
    ) in advice
    assert (
        "harmony: no setting met 1% for every series on the validation part (the safest reached 2.083%)"
        in advice
    )
    assert "hpa: no setting met" not in advice and "harmony: the reactive fallback" not in advice
    printed = headline_tables(result)
    assert printed.index("VALIDATED:") < printed.index("ATTENTION") and "HINDSIGHT" not in printed


def test_the_output_flags_harmony_deciding_by_its_fallback(small_run: ConfigRun) -> None:
    """HARMONY's fallback share of its decisions (not of scored steps, which it can exceed) is flagged."""
    result = small_run.result
    runs = result.per_run.copy()
    chosen = result.tuned["harmony"]["total"].knobs.text()
    mine = (runs["policy"] == "harmony") & (runs["knobs"] == chosen)
    runs.loc[mine, "fallbacks"] = runs.loc[mine, "decisions"] * 0.25
    runs.loc[mine, "fallbacks_no_forecast"] = runs.loc[mine, "fallbacks"]
    advice = advice_text(dataclasses.replace(result, per_run=runs))
    decisions = int(runs.loc[mine, "decisions"].sum())
    assert (
        f"harmony: the reactive fallback decided {decisions // 4:,} of its {decisions:,} decisions (25.0%)"
        in advice
    )
    assert f"; by cause: {decisions // 4:,} no usable forecast (a lookback with gaps" in advice
    assert "scaling.fallback_target_utilization and scaling.fallback_margin" in advice
    assert "miscalibrated beyond repair" not in advice


def test_the_output_flags_a_baseline_whose_sweep_never_met_the_target(small_run: ConfigRun) -> None:
    result = small_run.result
    tuned = {
        **result.tuned,
        "hpa": {c: dataclasses.replace(t, met=False) for c, t in result.tuned["hpa"].items()},
    }
    advice = advice_text(dataclasses.replace(result, tuned=tuned))
    assert "hpa: no setting met 1% in total on the validation part" in advice
    assert "the ratios against it (vs_hpa for the HPA" in advice
    assert (
        "Widen its sweep: lower target_utilization values and longer scale_down_window_s (up to 3600)"
        in advice
    )


def test_the_demo_replays_every_policy_and_searches_the_baselines_as_hard_as_harmony() -> None:
    cfg = load_backtest_config(DEMO)
    assert cfg.run_name == "demo" and set(cfg.policies.enabled()) == set(POLICY_ORDER)
    assert cfg.sla.max_violation_probability == 0.01
    harmony, hpa, ehpa = cfg.policies.harmony, cfg.policies.hpa, cfg.policies.ehpa
    assert harmony is not None and hpa is not None and ehpa is not None
    settings = len(harmony.max_violation_probability) * len(harmony.scale_down_window_s or [0])
    for sweep in (hpa, ehpa):
        windows = sweep.scale_down_window_s or [0]
        rates = sweep.scale_down_rate or [None]
        assert len(sweep.target_utilization) * len(windows) * len(rates) * len(sweep.tolerance) >= settings
        assert max(windows) == 3600  # up to the HPA's limit


def test_the_capacity_chart_is_drawn_in_the_datas_zone(small_run: ConfigRun, tmp_path: Path) -> None:
    from harmony.backtest_charts import capacity_chart

    result = small_run.result
    assert result.info["display_timezone"] == "UTC"  # the Fisher card's timestamps carry no zone
    shifted = dataclasses.replace(result, info={**result.info, "display_timezone": "+02:00"})
    png = capacity_chart(shifted, tmp_path / "capacity.png", "container1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
