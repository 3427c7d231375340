"""Side-by-side evaluation on the test part of a real trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import harmony.model.registry  # noqa: F401
from harmony import metrics
from harmony.data.catalog import load
from harmony.data.windows import chronological_split
from harmony.model.base import Forecaster, ForecastSpec
from harmony.training.config import load_config
from harmony.training.evaluate import compared_hparams, evaluate
from harmony.training.windows import collect_windows

TINY = {
    "max_epochs": 1,
    "max_train_windows": 200,
    "max_val_windows": 50,
    "d_model": 16,
    "d_ff": 32,
    "n_heads": 2,
    "context_dim": 16,
    "flow_hidden": 16,
    "flow_transforms": 2,
}


def test_evaluate_two_models(data_root: Path) -> None:
    trace = load("fisher_containers", root=data_root, series=["container2", "container6"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=24, horizon=3, lead_time=1, targets=["load", "cpu_cores"])
    reg = Forecaster.registered()
    models = {n: reg[n](spec, **TINY) for n in ("gaussian", "harmony")}
    for m in models.values():
        m.fit(trace, split)
    ev = evaluate(trace, split, models, baseline="gaussian", n_samples=40, max_windows=30)
    assert set(ev.per_series.index.get_level_values("model")) == {"gaussian", "harmony"}
    assert len(ev.per_series) == 2 * 2 * 2  # models x series x targets
    assert ev.summary.loc["gaussian", "crps_rel"] == pytest.approx(1.0)
    for col in ("coverage_50", "coverage_90"):
        assert 0.0 <= ev.summary.loc["harmony", col] <= 1.0
    assert ev.summary.loc["harmony", "coverage_50"] <= ev.summary.loc["harmony", "coverage_90"]
    # One entry recomputed by hand from the same draws.
    w = collect_windows(trace, split, spec, 30)
    draws = models["harmony"].sample(w.history["container2"], 40, w.last_time["container2"], seed=0)
    crps = metrics.crps_samples(np.moveaxis(draws[..., 0], 1, 0), w.actual["container2"][..., 0]).mean()
    assert ev.per_series.loc[("harmony", "container2", "load"), "crps"] == pytest.approx(crps)
    # Test windows' targets lie in the test part only.
    b = split.boundaries["container2"][1]
    first_target = trace["container2"].index[b]
    assert (
        w.last_time["container2"] + (spec.lead_time + 1) * int(spec.frequency.value) >= first_target.value
    ).all()


def test_models_must_share_a_spec(data_root: Path) -> None:
    trace = load("fisher_containers", root=data_root, series=["container2"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    reg = Forecaster.registered()
    a = reg["gaussian"](ForecastSpec.for_trace(trace, lookback=24, horizon=3, targets=["load"]), **TINY)
    b = reg["gaussian"](ForecastSpec.for_trace(trace, lookback=12, horizon=3, targets=["load"]), **TINY)
    with pytest.raises(ValueError, match="share one ForecastSpec"):
        evaluate(trace, split, {"a": a, "b": b})


def test_validation_part_scores_only_validation_targets(data_root: Path) -> None:
    trace = load("fisher_containers", root=data_root, series=["container2"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=24, horizon=3, lead_time=1, targets=["load"])
    step = int(spec.frequency.value)
    index = trace["container2"].index
    for part in ("val", "test"):
        lo, hi = split.part_range("container2", part)
        w = collect_windows(trace, split, spec, 1000, part)
        first = w.last_time["container2"] + (spec.lead_time + 1) * step
        last = w.last_time["container2"] + (spec.lead_time + spec.horizon) * step
        assert first.min() == index[lo].value  # the first window's target starts the part
        assert last.max() <= index[hi - 1].value
    naive = Forecaster.registered()["seasonal_naive"](spec)
    naive.fit(trace, split)
    val = evaluate(trace, split, {"seasonal_naive": naive}, n_samples=20, max_windows=1000, part="val")
    test = evaluate(trace, split, {"seasonal_naive": naive}, n_samples=20, max_windows=1000)
    assert val.per_series["crps"].iloc[0] != test.per_series["crps"].iloc[0]


def test_compared_models_share_the_budget_and_normalisation_and_only_ablations_get_the_rest() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "fisher_containers.yaml", ["model.hparams.norm_floor_window=0.02"])
    own = cfg.model.hparams
    deepar = compared_hparams(cfg, "deepar")
    assert deepar["norm_floor_window"] == 0.02
    assert deepar["max_train_windows"] == own["max_train_windows"]
    assert (deepar["seed"], deepar["max_epochs"]) == (cfg.trainer.seed, cfg.trainer.max_epochs)
    assert "d_model" not in deepar and "flow_transforms" not in deepar
    flat = compared_hparams(cfg, "flat")
    assert flat["d_model"] == own["d_model"] and flat["norm_floor_window"] == 0.02
    naive = compared_hparams(cfg, "seasonal_naive")
    assert "seed" not in naive and "d_model" not in naive
    # every model accepts what it is given, and the normalisation reaches the network's input scaling
    reg = Forecaster.registered()
    spec = ForecastSpec(
        indicators=("load", "cpu_cores"),
        targets=("load",),
        levels=(1, 2),
        lookback=24,
        horizon=3,
        lead_time=1,
        frequency_s=600.0,
    )
    for name in ("deepar", "flat", "harmony_ref", "seasonal_naive"):
        model = reg[name](spec, **compared_hparams(cfg, name))
        if name != "seasonal_naive":
            assert model.model.norm.window_cap == 0.02


def test_a_seasonal_naive_shorter_than_its_season_is_called_persistence(load_trace) -> None:  # type: ignore[no-untyped-def]
    from harmony.model.base import ForecastSpec
    from harmony.model.seasonal_naive import SeasonalNaiveForecaster
    from harmony.training.evaluate import notes

    trace = load_trace("fisher_containers").select(series=["container1"])
    short = SeasonalNaiveForecaster(ForecastSpec.for_trace(trace, lookback=72, horizon=3, targets=["load"]))
    day = SeasonalNaiveForecaster(ForecastSpec.for_trace(trace, lookback=144, horizon=3, targets=["load"]))
    (note,) = notes([short, day])
    assert note.startswith(
        "seasonal_naive is last-value persistence here: its lookback (72 steps) is shorter than its season "
        "(144 steps"
    )
