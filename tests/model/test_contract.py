"""One contract every forecaster must keep (in the style of neuralforecast's model checks): fit a few
steps on a real-trace slice, sample with the right shapes, finite values, seeded repeatability, and a
save/load round trip that gives identical samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import harmony.model.registry  # noqa: F401  (registers every model)
from harmony.data.catalog import load
from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split
from harmony.model.base import Forecaster, ForecastSpec

SMALL: dict[str, Any] = {"max_epochs": 1, "max_train_windows": 256, "max_val_windows": 64, "batch_size": 64}
SMALL_HARMONY = {
    "d_model": 16,
    "d_ff": 32,
    "n_heads": 2,
    "context_dim": 16,
    "flow_hidden": 16,
    "flow_transforms": 2,
}
MODELS = sorted(Forecaster.registered())


@pytest.fixture(scope="module")
def fisher(data_root: Path) -> tuple[Trace, Split, ForecastSpec]:
    trace = load("fisher_containers", root=data_root, series=["container1", "container5"])
    split = chronological_split(trace, (0.7, 0.1, 0.2))
    spec = ForecastSpec.for_trace(trace, lookback=36, horizon=4, lead_time=1, targets=["load", "cpu_cores"])
    return trace, split, spec


def test_every_documented_model_is_registered() -> None:
    assert {"harmony", "gaussian", "flat"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name: str, fisher: tuple[Trace, Split, ForecastSpec], tmp_path: Path) -> None:
    trace, split, spec = fisher
    cls = Forecaster.registered()[name]
    hp = {**SMALL, **(SMALL_HARMONY if name in ("harmony", "gaussian", "flat") else {})}
    model = cls(spec, **hp)
    model.fit(trace, split)
    frame = trace["container1"][list(spec.indicators)]
    a, b = split.boundaries["container1"][1], split.boundaries["container1"][1] + 10
    hist = np.stack([frame.to_numpy()[t - spec.lookback + 1 : t + 1] for t in (a, b)])
    times = frame.index[[a, b]]
    draws = model.sample(hist, 50, times.asi8, seed=7)
    assert draws.shape == (2, 50, spec.horizon, len(spec.targets))
    assert np.isfinite(draws).all()
    one = model.sample(hist[0], 50, times[0], seed=7)
    assert one.shape == (50, spec.horizon, len(spec.targets))
    np.testing.assert_allclose(one, draws[0], rtol=1e-5, atol=1e-5)  # batching does not change a series
    assert np.array_equal(model.sample(hist, 50, times.asi8, seed=7), draws)  # seeded
    # The draws are on the scale of the data (original units restored).
    load_scale = float(np.nanstd(frame["load"].to_numpy()))
    assert 0.05 * load_scale < float(draws[..., 0].std()) < 20 * load_scale
    saved = model.save(tmp_path / name)
    assert {p.name for p in saved.iterdir()} == {"forecaster.json", "weights.safetensors"}
    back = Forecaster.load(saved)
    assert type(back) is cls and back.spec == spec
    assert np.array_equal(back.sample(hist, 50, times.asi8, seed=7), draws)


def test_load_rejects_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no forecaster\.json"):
        Forecaster.load(tmp_path)
    (tmp_path / "forecaster.json").write_text('{"model": "nope", "format_version": 1}')
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        Forecaster.load(tmp_path)


def test_an_ablation_keeps_its_defining_setting(fisher: tuple[Trace, Split, ForecastSpec]) -> None:
    _, _, spec = fisher
    gaussian = Forecaster.registered()["gaussian"](spec, flow_transforms=4, **SMALL)
    assert gaussian.hparams["flow_transforms"] == 0  # a shared config cannot turn the flow back on
    assert Forecaster.registered()["harmony"](spec, flow_transforms=3, **SMALL).hparams["flow_transforms"] == 3


def test_target_noise_jitters_the_training_loss_only(fisher: tuple[Trace, Split, ForecastSpec]) -> None:
    import torch

    trace, split, spec = fisher
    clean = Forecaster.registered()["harmony"](spec, **SMALL, **SMALL_HARMONY)
    noisy = Forecaster.registered()["harmony"](spec, target_noise=0.3, **SMALL, **SMALL_HARMONY)
    noisy.model.load_state_dict(clean.model.state_dict())  # the same weights: only the noise differs
    windows = clean.windows(trace, split, "val", 16)
    batch = [torch.stack(x) for x in zip(*(windows[k] for k in range(16)), strict=True)]
    clean.model.train()
    noisy.model.train()
    torch.manual_seed(0)
    a = noisy.model.loss(*batch)
    torch.manual_seed(1)
    b = noisy.model.loss(*batch)
    assert not torch.allclose(a, b)  # a fresh jitter of the normalised targets at each call
    # Dropout is seeded alike, so the noise-free model at the same seed differs from the jittered one only.
    torch.manual_seed(0)
    assert not torch.allclose(clean.model.loss(*batch), a)
    noisy.model.eval()
    clean.model.eval()
    assert torch.equal(noisy.model.loss(*batch), clean.model.loss(*batch))  # validation sees the data as is
    # The paper code's reproduction is trained as published, whatever a shared config says.
    ref = Forecaster.registered()["harmony_ref"](spec, target_noise=0.3, **SMALL)
    assert ref.hparams["target_noise"] == 0.0 and ref.model.target_noise == 0.0


def test_null_window_limits_train_on_every_window(fisher: tuple[Trace, Split, ForecastSpec]) -> None:
    from harmony.data.windows import WindowDataset

    trace, split, spec = fisher
    hp = {**SMALL, **SMALL_HARMONY, "max_train_windows": None, "max_val_windows": None, "batch_size": 256}
    model = Forecaster.registered()["harmony"](spec, **hp)
    report = model.fit(trace, split)  # null reaches the data loaders as "no limit", not int(None)
    assert report.epochs >= 1 and np.isfinite(report.train_loss).all()
    every = WindowDataset(trace, split, "train", model.window_spec(), indicators=list(spec.indicators))
    assert len(model.windows(trace, split, "train", None)) == len(every) > 5_000
    assert len(model.windows(trace, split, "train", 256)) == 256  # a number: an evenly spaced subset
