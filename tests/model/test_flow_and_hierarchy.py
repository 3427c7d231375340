"""The flow head against closed-form Gaussians, and the hierarchy's masks and information flow."""

from __future__ import annotations

import math

import numpy as np
import torch
from nflows.distributions.normal import ConditionalDiagonalNormal
from nflows.flows.base import Flow
from nflows.transforms.standard import PointwiseAffineTransform

from harmony.model.base import N_CALENDAR, ForecastSpec
from harmony.model.flow import FlowHead
from harmony.model.harmony_net import HarmonyNetwork
from harmony.model.hierarchy import level_mask


def gaussian_logpdf(y: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (-0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)).sum(axis=-1)


def base_head(mu: list[float], log_sd: list[float]) -> FlowHead:
    head = FlowHead(dim=len(mu), context_dim=1, n_transforms=0)
    enc = head.flow._distribution._context_encoder
    with torch.no_grad():
        enc.weight.zero_()
        enc.bias.copy_(torch.tensor(mu + log_sd))
    return head


def test_base_log_prob_is_the_closed_form_gaussian() -> None:
    mu, log_sd = [1.0, -2.0, 0.5], [0.0, math.log(3.0), math.log(0.2)]
    head = base_head(mu, log_sd)
    y = torch.tensor([[0.3, -1.0, 0.9], [5.0, 2.0, 0.0]])
    got = head.log_prob(y, torch.zeros(2, 1)).detach().numpy()
    want = gaussian_logpdf(y.numpy(), np.array(mu), np.exp(log_sd))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_affine_flow_log_prob_includes_the_log_determinant() -> None:
    # y = shift + scale * z with z ~ N(0, 1): y ~ N(shift, scale^2). Without the log-determinant (the
    # HARMONY example code's mistake) this would be off by sum(log scale).
    shift, scale = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 4.0])
    base = ConditionalDiagonalNormal(shape=[2], context_encoder=lambda c: torch.zeros(c.shape[0], 4))
    flow = Flow(PointwiseAffineTransform(shift=shift, scale=scale), base)
    # nflows' transform maps data -> noise: with forward x -> shift + scale x, data y = (x - shift)/scale
    # would be the noise... build the expectation from its own direction instead:
    y = torch.tensor([[1.0, 3.0], [2.5, -7.0]])
    noise, logabsdet = flow._transform(y)
    expected = gaussian_logpdf(noise.numpy(), np.zeros(2), np.ones(2)) + logabsdet.numpy()
    got = flow.log_prob(y, context=torch.zeros(2, 1)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # and in closed form: the transform is z = shift + scale * y, so y ~ N(-shift/scale, 1/scale^2)
    closed = gaussian_logpdf(y.numpy(), (-shift / scale).numpy(), (1 / scale).numpy())
    np.testing.assert_allclose(got, closed, rtol=1e-5)


def test_samples_moments_match() -> None:
    torch.manual_seed(0)
    mu, log_sd = [3.0, -1.0], [math.log(2.0), math.log(0.5)]
    with torch.no_grad():
        draws = base_head(mu, log_sd).sample(40_000, torch.zeros(1, 1))[0].numpy()
    np.testing.assert_allclose(draws.mean(axis=0), mu, atol=0.05)  # 4 standard errors at n = 40k
    np.testing.assert_allclose(draws.std(axis=0), np.exp(log_sd), rtol=0.02)


def test_spline_flow_is_a_proper_density_in_one_dimension() -> None:
    torch.manual_seed(0)
    head = FlowHead(dim=1, context_dim=3, n_transforms=2, kind="spline", hidden=8)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    grid = torch.linspace(-30, 30, 60_001).unsqueeze(1)
    ctx = torch.tensor([[0.2, -0.4, 1.0]]).expand(grid.shape[0], 3)
    dens = head.log_prob(grid, ctx).exp().detach().numpy()
    assert abs(np.trapezoid(dens, grid[:, 0].numpy()) - 1.0) < 1e-3


def test_mask_is_minus_infinity_not_zero() -> None:
    mask = level_mask([1, 1, 2, 3])
    assert mask[0, 3] == float("-inf") and mask[3, 0] == float("-inf")  # level 3 <-> level 1
    assert mask[2, 0] == 0 and mask[3, 2] == 0 and mask[0, 1] == 0  # level above and same level
    assert mask[0, 2] == float("-inf")  # level 1 never looks down
    att = torch.softmax(torch.randn(4, 4) * 50 + mask, dim=-1)
    assert float(att[0, 2]) == 0.0 and float(att[0, 3]) == 0.0  # exactly zero weight


def _network(hierarchical: bool) -> tuple[HarmonyNetwork, ForecastSpec]:
    spec = ForecastSpec(
        indicators=("load", "cpu", "mem", "net", "disk"),
        targets=("load", "cpu"),
        levels=(1, 2, 2, 3, 3),
        lookback=12,
        horizon=2,
        lead_time=1,
        frequency_s=600.0,
    )
    torch.manual_seed(0)
    net = HarmonyNetwork(
        spec,
        d_model=16,
        n_heads=2,
        d_ff=32,
        n_layers=3,
        dropout=0.0,
        context_dim=8,
        flow_hidden=8,
        hierarchical=hierarchical,
    )
    return net.eval(), spec


def test_level3_perturbation_leaves_level1_tokens_unchanged() -> None:
    net, spec = _network(hierarchical=True)
    past = torch.randn(3, spec.lookback, 5)
    cal = torch.randn(3, spec.lookback + spec.lead_time + spec.horizon, N_CALENDAR)
    bumped = past.clone()
    bumped[:, :, 3:] += 5.0  # the level-3 indicators
    with torch.no_grad():
        a, b = net.tokens(past, cal), net.tokens(bumped, cal)
    level1 = [0, 5, 6, 7, 8]  # load and the calendar tokens
    assert torch.equal(a[:, level1], b[:, level1])
    assert torch.equal(a[:, 1:3], b[:, 1:3])  # level 2 attends to levels 1 and 2 only
    assert not torch.allclose(a[:, 3:5], b[:, 3:5])  # level 3 itself changes
    # and a level-1 perturbation reaches every level through the top-down cascade
    top = past.clone()
    top[:, :, 0] += 5.0
    with torch.no_grad():
        c = net.tokens(top, cal)
    assert not torch.allclose(a[:, 1:3], c[:, 1:3]) and not torch.allclose(a[:, 3:5], c[:, 3:5])


def test_flat_ablation_lets_everything_reach_level1() -> None:
    net, spec = _network(hierarchical=False)
    past = torch.randn(2, spec.lookback, 5)
    cal = torch.randn(2, spec.lookback + spec.lead_time + spec.horizon, N_CALENDAR)
    bumped = past.clone()
    bumped[:, :, 4] += 5.0
    with torch.no_grad():
        assert not torch.allclose(net.tokens(past, cal)[:, 0], net.tokens(bumped, cal)[:, 0])
