"""The baselines on real Fisher slices: seasonal naive checked by hand, DeepAR's training and sampling, and the
reproduction of the HARMONY example code's model (MSE loss, unconditional flow, its attention and levels)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import harmony.model.registry  # noqa: F401  (registers every model)
from harmony.data.catalog import load
from harmony.data.trace import Trace
from harmony.data.windows import Split, chronological_split
from harmony.model.base import Forecaster, ForecastSpec
from harmony.model.deepar import DeepARForecaster, DeepARNetwork
from harmony.model.harmony_ref import (
    AffineCoupling,
    CascadeAttention,
    HarmonyRefForecaster,
    UnconditionalRealNVP,
)
from harmony.model.neural import WindowTensors
from harmony.model.seasonal_naive import SeasonalNaiveForecaster

FAST: dict[str, Any] = {"max_epochs": 1, "max_train_windows": 256, "max_val_windows": 64, "batch_size": 64}
SMALL_DEEPAR: dict[str, Any] = {"hidden": 16, "layers": 2}
SMALL_REF: dict[str, Any] = {"d_model": 16, "d_ff": 32, "n_heads": 2, "n_draws": 100}
DAY = 144  # 10-minute steps per day
TARGETS = ["load", "cpu_cores"]


@pytest.fixture(scope="module")
def fisher(data_root: Path) -> tuple[Trace, Split]:
    trace = load("fisher_containers", root=data_root, series=["container1", "container5"])
    return trace, chronological_split(trace, (0.7, 0.1, 0.2))


def spec_for(trace: Trace, lookback: int, horizon: int = 4, lead_time: int = 1, **kw: Any) -> ForecastSpec:
    return ForecastSpec.for_trace(
        trace,
        lookback=lookback,
        horizon=horizon,
        lead_time=lead_time,
        targets=kw.pop("targets", TARGETS),
        **kw,
    )


def histories(trace: Trace, spec: ForecastSpec, anchors: list[int]) -> tuple[np.ndarray, pd.DatetimeIndex]:
    frame = trace["container1"][list(spec.indicators)]
    values = frame.to_numpy()
    hist = np.stack([values[t - spec.lookback + 1 : t + 1] for t in anchors])
    return hist, pd.DatetimeIndex(frame.index[anchors])


def a_batch(trace: Trace, split: Split, spec: ForecastSpec, model: Any) -> tuple[torch.Tensor, ...]:
    """A normalised training batch, as the network sees it."""
    windows: WindowTensors = model.windows(trace, split, "train", keep=32)
    past, cal, fut = (torch.stack(x) for x in zip(*[windows[k] for k in range(len(windows))], strict=True))
    mu, sd = model.model.norm.stats(past)
    return (past - mu) / sd, cal, (fut - model.model.norm.targets(mu)) / model.model.norm.targets(sd)


# --- seasonal naive --------------------------------------------------------------------------------------
def test_seasonal_naive_draws_the_value_one_day_earlier_with_zero_residuals(
    fisher: tuple[Trace, Split],
) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=DAY + 6)
    model = SeasonalNaiveForecaster(spec)
    assert model.lag == DAY
    model.fit(trace, split)
    assert np.abs(model.quantiles).max() > 0  # real residuals before the patch
    state = model.state_tensors()
    model.load_state_tensors({**state, "residual_quantiles": torch.zeros_like(state["residual_quantiles"])})
    b = split.boundaries["container1"][1]
    anchors = [b, b + 7, b + 200]
    hist, times = histories(trace, spec, anchors)
    draws = model.sample(hist, 30, times.asi8, seed=0)
    assert draws.shape == (3, 30, spec.horizon, 2)
    frame = trace["container1"][TARGETS]
    for i, last in enumerate(times):
        for h in range(spec.horizon):
            target_time = last + (spec.lead_time + h + 1) * trace.frequency
            by_hand = frame.loc[target_time - pd.Timedelta(days=1)].to_numpy(np.float32)
            assert np.array_equal(draws[i, :, h], np.broadcast_to(by_hand, (30, 2)))


def test_seasonal_naive_falls_back_to_persistence_on_a_short_lookback(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    model = SeasonalNaiveForecaster(spec)  # unfitted: zero residuals
    assert model.lag == 1
    hist, times = histories(trace, spec, [split.boundaries["container1"][1]])
    draws = model.sample(hist[0], 5, times[0], seed=0)
    last = hist[0, -1, spec.target_index].astype(np.float32)
    assert np.array_equal(draws, np.broadcast_to(last, draws.shape))


def test_seasonal_naive_residual_quantiles_by_hand(fisher: tuple[Trace, Split]) -> None:
    trace, _ = fisher
    one = trace.select(["container1"], ["load"])  # load has no gap: the train windows are contiguous
    one_split = chronological_split(one, (0.7, 0.1, 0.2))
    spec = spec_for(one, lookback=DAY, targets=["load"])
    model = SeasonalNaiveForecaster(spec, n_quantiles=9)
    model.fit(one, one_split)
    y = one["container1"]["load"].to_numpy()
    a = one_split.boundaries["container1"][0]
    levels = np.arange(1, 10) / 10
    for h in range(spec.horizon):
        offset = spec.lead_time + h + 1
        # Targets at i from the first full lookback to the train end; each minus the value a day earlier.
        i = np.arange(DAY - 1 + offset, a - spec.horizon + h + 1)
        want = np.quantile(y[i] - y[i - DAY], levels)
        np.testing.assert_allclose(model.quantiles[:, h, 0], want, rtol=1e-5, atol=1e-5)
    # Draws are the point plus one of those quantiles.
    hist, times = histories(one, spec, [one_split.boundaries["container1"][1]])
    draws = model.sample(hist, 200, times.asi8, seed=3)
    point = model.point(hist.astype(np.float32))
    for h in range(spec.horizon):
        allowed = np.maximum(point[0, h, 0] + model.quantiles[:, h, 0], 0)
        assert np.isin(draws[0, :, h, 0], allowed).all()
    assert np.array_equal(draws, model.sample(hist, 200, times.asi8, seed=3))
    assert not np.array_equal(draws, model.sample(hist, 200, times.asi8, seed=4))


def perturbed(trace: Trace, split: Split, part: str) -> Trace:
    """Every indicator scaled and shifted over a part: `late` = validation and test, `train` = one train row."""
    series = {}
    for sid, frame in trace.series.items():
        a, _, _ = split.boundaries[sid]
        f = frame.copy()
        rows = slice(a, None) if part == "late" else slice(a - 1, a)
        f.iloc[rows] = f.iloc[rows] * 3.0 + 7.0
        series[sid] = f
    return dataclasses.replace(trace, series=series)


def test_seasonal_naive_residuals_come_from_train_windows_only(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=DAY + 6)
    base = SeasonalNaiveForecaster(spec)
    base.fit(trace, split)
    late = SeasonalNaiveForecaster(spec)
    late.fit(perturbed(trace, split, "late"), split)
    assert np.array_equal(base.quantiles, late.quantiles)
    assert np.array_equal(base.lower, late.lower)
    train = SeasonalNaiveForecaster(spec)  # the check is not vacuous: the last train row matters
    train.fit(perturbed(trace, split, "train"), split)
    assert not np.array_equal(base.quantiles, train.quantiles)


# --- DeepAR ----------------------------------------------------------------------------------------------
def test_deepar_samples_shapes_finite_and_seeded(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36, lead_time=2)
    model = DeepARForecaster(spec, **FAST, **SMALL_DEEPAR)
    model.fit(trace, split)
    hist, times = histories(trace, spec, [split.boundaries["container1"][1] + k for k in (0, 5, 9)])
    draws = model.sample(hist, 40, times.asi8, seed=11)
    assert draws.shape == (3, 40, spec.horizon, 2)
    assert np.isfinite(draws).all()
    assert np.array_equal(draws, model.sample(hist, 40, times.asi8, seed=11))
    assert not np.array_equal(draws, model.sample(hist, 40, times.asi8, seed=12))
    assert draws.std(axis=1).min() > 0  # paths differ


def test_deepar_loss_decreases_over_a_few_epochs(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    hp = {**FAST, "max_epochs": 4, "max_train_windows": 512, "lr": 3e-3, "hidden": 32, "layers": 1}
    report = DeepARForecaster(spec, **hp).fit(trace, split)
    assert len(report.train_loss) == 4 and np.isfinite(report.train_loss).all()
    assert report.train_loss[-1] < report.train_loss[0] - 0.2
    assert report.val_loss[-1] < report.val_loss[0]


def test_deepar_teacher_forcing_is_causal(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36, lead_time=2)
    model = DeepARForecaster(spec, **SMALL_DEEPAR)
    net = model.model.net
    assert isinstance(net, DeepARNetwork)
    net.eval()
    past, cal, fut = a_batch(trace, split, spec, model)
    assert cal.shape[1] == spec.lookback + spec.lead_time + spec.horizon
    mean, scale = net.teacher_forced(past, cal, fut)
    assert mean.shape == scale.shape == fut.shape and (scale > 0).all()
    changed = fut.clone()
    changed[:, 1] += 5.0  # the truth at horizon step 2 feeds steps 3.. only
    mean2, _ = net.teacher_forced(past, cal, changed)
    assert torch.equal(mean[:, :2], mean2[:, :2])
    assert not torch.allclose(mean[:, 2], mean2[:, 2])
    # The loss is the mean Gaussian NLL per target dimension.
    nll = F.gaussian_nll_loss(mean, fut, scale**2, full=True)
    torch.testing.assert_close(net.loss(past, cal, fut), nll)


# --- HARMONY reference ------------------------------------------------------------------------------------
def test_harmony_ref_samples_targets_only(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    model = HarmonyRefForecaster(spec, **FAST, **SMALL_REF)
    model.fit(trace, split)
    net = model.network
    assert net.flow.dim == len(spec.indicators) * spec.horizon  # it forecasts every indicator
    hist, times = histories(trace, spec, [split.boundaries["container1"][1] + k for k in (0, 3)])
    for space in ("reference", "normalised"):
        net.sample_space = space
        draws = model.sample(hist, 25, times.asi8, seed=2)
        assert draws.shape == (2, 25, spec.horizon, 2)
        assert np.isfinite(draws).all()
        assert np.array_equal(draws, model.sample(hist, 25, times.asi8, seed=2))
    # The scaler comes from the train rows.
    a = split.boundaries["container1"][0]
    assert float(net.get_buffer("mm_low")[0]) <= float(trace["container1"]["load"].iloc[:a].min())


def test_harmony_ref_loss_is_mse_of_the_flow_output(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    model = HarmonyRefForecaster(spec, **SMALL_REF)
    net = model.network
    net.eval()  # dropout off: the draws are the only randomness
    past, cal, fut = a_batch(trace, split, spec, model)
    torch.manual_seed(5)
    out = net(past, cal)  # [B, H, N]: every indicator, in the reference's column order
    assert out.shape == (past.shape[0], spec.horizon, len(spec.indicators))
    targets = out[..., [net.order.index(i) for i in spec.target_index]]
    manual = ((targets - fut) ** 2).mean()
    torch.manual_seed(5)
    torch.testing.assert_close(net.loss(past, cal, fut), manual)
    # The output is the flow of the averaged Gaussian draws.
    mean, std = net.gaussian(past, cal)
    torch.manual_seed(5)
    eps = torch.randn(net.n_draws, *mean.shape).mean(0)
    torch.testing.assert_close(out, net.push(mean + std * eps))


def test_harmony_ref_point_is_the_output_its_mse_trains(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    model = HarmonyRefForecaster(spec, **SMALL_REF)
    anchors = [split.boundaries["container1"][1] + k for k in (0, 5, 9)]
    hist, times = histories(trace, spec, anchors)
    values = trace["container1"][list(spec.targets)].to_numpy()
    lead = spec.lead_time
    fut = np.stack([values[t + lead + 1 : t + lead + spec.horizon + 1] for t in anchors])
    point = model.point(hist, times.asi8, seed=3)
    assert point.shape == (3, spec.horizon, len(spec.targets))
    assert model.point(hist[1], times[1], seed=3).shape == (spec.horizon, len(spec.targets))
    # Its training loss on these windows (same draws) is the MSE of the point in normalised units.
    past, cal, _ = model.inputs(hist, times.asi8)
    norm = model.model.norm
    mu, sd = norm.stats(past)
    fut_n = (torch.from_numpy(fut).float() - norm.targets(mu)) / norm.targets(sd)
    net = model.network
    net.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        loss = float(net.loss((past - mu) / sd, cal, fut_n))
    point_n = (torch.from_numpy(point) - norm.targets(mu)) / norm.targets(sd)
    assert loss == pytest.approx(float(((point_n - fut_n) ** 2).mean()), rel=1e-5)


def test_harmony_ref_flow_is_unconditional(fisher: tuple[Trace, Split]) -> None:
    trace, _ = fisher
    spec = spec_for(trace, lookback=36)
    net = HarmonyRefForecaster(spec, **SMALL_REF).network
    flow = net.flow
    assert isinstance(flow, UnconditionalRealNVP)
    assert list(inspect.signature(flow.forward).parameters) == ["x"]
    couplings = [c for c in flow.layers if isinstance(c, AffineCoupling)]
    assert len(couplings) == len(flow.layers) == 4
    dim = len(spec.indicators) * spec.horizon
    for c in couplings:  # every sub-network reads the flow's own input only: no context
        for mlp in (c.log_scale, c.shift):
            linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
            assert linears[0].in_features == dim and linears[-1].out_features == dim
        assert isinstance(list(c.log_scale)[-1], torch.nn.Tanh)  # bounded log-scale
    # Couplings keep their masked half unchanged, the mask alternating.
    x = torch.randn(3, dim)
    masks = [c.get_buffer("mask") for c in couplings]
    y = couplings[0](x)
    assert torch.equal(y[:, masks[0].bool()], x[:, masks[0].bool()])
    assert torch.equal(masks[1], 1 - masks[0]) and torch.equal(masks[2], masks[0])


def test_harmony_ref_reproduces_the_misaligned_levels(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    net = HarmonyRefForecaster(spec, **SMALL_REF).network
    names = [spec.indicators[i] for i in net.order]
    assert names[-1] == "load"  # its loader moves the target last...
    level_of = dict(zip(names, net.token_levels, strict=False))
    assert level_of["load"] == 3 and level_of["blkio_async_bytes"] == 1  # ...while the levels stay put
    assert net.token_levels[len(names) :] == [1, 1, 1, 1]  # calendar tokens, as in its level.npy
    aligned = HarmonyRefForecaster(spec, reference_order=False, **SMALL_REF).network
    assert (
        dict(zip([spec.indicators[i] for i in aligned.order], aligned.token_levels, strict=False))["load"]
        == 1
    )
    # Its cascade: a token hears only its own level and the ones above (smaller numbers), so with the
    # misalignment the level-1 blkio token and the level-2 tokens are blind to load's history.
    net.eval()
    past, cal, _ = a_batch(trace, split, spec, HarmonyRefForecaster(spec, **SMALL_REF))
    levels = torch.tensor(net.token_levels)
    before = net.encode(past, cal)
    moved = past.clone()
    moved[..., spec.indicators.index("load")] += 3.0
    after = net.encode(moved, cal)
    assert torch.equal(before[:, levels <= 2], after[:, levels <= 2])
    assert not torch.allclose(before[:, levels == 3], after[:, levels == 3])
    moved = past.clone()
    moved[..., spec.indicators.index("blkio_async_bytes")] += 3.0
    after = net.encode(moved, cal)
    assert not torch.allclose(before[:, -5], after[:, -5])  # load (last indicator token) hears level 1


def test_cascade_attention_with_one_level_is_plain_attention() -> None:
    torch.manual_seed(0)
    att = CascadeAttention(8, 2, [1] * 5, dropout=0.0)
    x = torch.randn(3, 5, 8)
    q, k, v = (p(x).view(3, 5, 2, 4).transpose(1, 2) for p in (att.query, att.key, att.value))
    plain = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 5, 8)
    torch.testing.assert_close(att(x), att.out(plain))


def test_cascade_attention_zeroes_instead_of_masking() -> None:
    # Level-1 tokens attend over all tokens, the others contributing a zero score and a zero value: the
    # reference's multiplicative "mask" dilutes attention instead of excluding tokens.
    torch.manual_seed(0)
    att = CascadeAttention(4, 1, [1, 1, 2], dropout=0.0)
    x = torch.randn(1, 3, 4)
    q, k, v = att.query(x[:, :2]), att.key(x[:, :2]), att.value(x[:, :2])
    scores = torch.cat([q @ k.transpose(1, 2), torch.zeros(1, 2, 1)], dim=-1) / 2.0
    diluted = torch.softmax(scores, dim=-1)[..., :2] @ v
    torch.testing.assert_close(att(x)[:, :2], att.out(diluted))


def test_harmony_ref_identity_flow_makes_both_sample_spaces_agree(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    model = HarmonyRefForecaster(spec, **FAST, **SMALL_REF)
    model.fit(trace, split)
    net = model.network
    hist, times = histories(trace, spec, [split.boundaries["container1"][1]])
    net.sample_space = "normalised"
    sane = model.sample(hist, 50, times.asi8, seed=1)
    net.sample_space = "reference"
    wrong_space = model.sample(hist, 50, times.asi8, seed=1)
    assert not np.allclose(sane, wrong_space)  # the reference's --NP path is not the trained map
    with torch.no_grad():
        for c in net.flow.layers:
            assert isinstance(c, AffineCoupling)
            for last in (c.log_scale[-2], c.shift[-1]):
                assert isinstance(last, torch.nn.Linear)
                last.weight.zero_()
                last.bias.zero_()
    reference = model.sample(hist, 50, times.asi8, seed=1)
    net.sample_space = "normalised"
    np.testing.assert_allclose(reference, model.sample(hist, 50, times.asi8, seed=1), rtol=1e-4, atol=1e-4)


class _LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, i: int
    ) -> None:
        if i == 0:
            self.seen.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


def test_harmony_ref_halves_its_learning_rate_like_the_reference(fisher: tuple[Trace, Split]) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=36)
    lrs = _LearningRates()
    hp = {**FAST, "max_epochs": 4, "max_train_windows": 64, "patience": 10}
    HarmonyRefForecaster(spec, **hp, **SMALL_REF).fit(trace, split, callbacks=[lrs])
    assert lrs.seen == pytest.approx([1e-4, 1e-4, 5e-5, 2.5e-5])


# --- persistence -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "hp", "lookback"),
    [
        (SeasonalNaiveForecaster, {}, DAY + 6),  # the seasonal lag, not persistence
        (DeepARForecaster, {**FAST, **SMALL_DEEPAR}, 36),
        (HarmonyRefForecaster, {**FAST, **SMALL_REF}, 36),
    ],
    ids=["seasonal_naive", "deepar", "harmony_ref"],
)
def test_save_load_round_trip(
    cls: type[Forecaster], hp: dict[str, Any], lookback: int, fisher: tuple[Trace, Split], tmp_path: Path
) -> None:
    trace, split = fisher
    spec = spec_for(trace, lookback=lookback)
    model = cls(spec, **hp)
    model.fit(trace, split)
    hist, times = histories(trace, spec, [split.boundaries["container1"][1] + k for k in (0, 4)])
    draws = model.sample(hist, 30, times.asi8, seed=9)
    back = Forecaster.load(model.save(tmp_path / cls.name))
    assert type(back) is cls and back.spec == spec
    assert np.array_equal(back.sample(hist, 30, times.asi8, seed=9), draws)
