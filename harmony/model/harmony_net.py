"""The harmony forecaster: indicator tokens, hierarchical attention and a conditional flow head.

Tokens are indicators (iTransformer-style): each indicator's normalised lookback is embedded as one
token, plus one token per calendar feature (its values over lookback, lead and horizon). Tokens carry a
learned identity and level embedding and are refined by the hierarchical encoder. The flow head is
conditioned on the target tokens and a pooled summary of all tokens, and models all targets over the
whole horizon jointly.

Ablations behind the same interface: `gaussian` (no flow transforms: the conditional diagonal Gaussian
alone) and `flat` (every token on one level: plain full attention).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from harmony.model.base import N_CALENDAR, ForecastSpec
from harmony.model.flow import FlowHead
from harmony.model.hierarchy import HierarchicalEncoder
from harmony.model.neural import NeuralForecaster, ProbabilisticNetwork


class HarmonyNetwork(ProbabilisticNetwork):
    def __init__(
        self,
        spec: ForecastSpec,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        d_ff: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        context_dim: int = 64,
        flow_transforms: int = 4,
        flow_kind: str = "spline",
        flow_hidden: int = 64,
        hierarchical: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        n = len(spec.indicators)
        self.n_targets = len(spec.targets)
        self.target_index = spec.target_index
        span = spec.lookback + spec.lead_time + spec.horizon
        self.embed_values = nn.Linear(spec.lookback, d_model)
        self.embed_calendar = nn.Linear(span, d_model)
        self.token_id = nn.Parameter(torch.randn(n + N_CALENDAR, d_model) * 0.02)
        levels = list(spec.levels) + [1] * N_CALENDAR  # calendar is context: level 1
        if not hierarchical:
            levels = [1] * len(levels)
        self.levels = levels
        self.encoder = HierarchicalEncoder(levels, d_model, n_heads, d_ff, n_layers, dropout)
        self.to_context = nn.Sequential(
            nn.Linear(d_model * (self.n_targets + 1), context_dim),
            nn.GELU(),
            nn.Linear(context_dim, context_dim),
        )
        self.head = FlowHead(
            spec.horizon * self.n_targets,
            context_dim,
            n_transforms=flow_transforms,
            kind=flow_kind,
            hidden=flow_hidden,
            seed=seed,
        )

    def tokens(self, past: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        """[B, N + C, d] encoded tokens (exposed for tests of the hierarchy)."""
        vals = self.embed_values(past.transpose(1, 2))  # [B, N, d]
        cals = self.embed_calendar(cal.transpose(1, 2))  # [B, C, d]
        x = torch.cat([vals, cals], dim=1) + self.token_id
        out: torch.Tensor = self.encoder(x)
        return out

    def context(self, past: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        tok = self.tokens(past, cal)
        targets = tok[:, self.target_index].flatten(1)
        out: torch.Tensor = self.to_context(torch.cat([targets, tok.mean(dim=1)], dim=1))
        return out

    def loss(self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        ctx = self.context(past, cal)
        lp = self.head.log_prob(future.flatten(1), ctx)
        return -(lp.mean() / future[0].numel())

    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        ctx = self.context(past, cal)
        draws = self.head.sample(n, ctx)  # [B, n, H*T]
        return draws.view(past.shape[0], n, self.spec.horizon, self.n_targets)


class HarmonyForecaster(NeuralForecaster):
    """Hierarchical attention + conditional spline flow (the product's model)."""

    name = "harmony"
    network_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "d_model": 64,
            "n_heads": 4,
            "d_ff": 128,
            "n_layers": 2,
            "dropout": 0.1,
            "context_dim": 64,
            "flow_transforms": 4,
            "flow_kind": "spline",
            "flow_hidden": 64,
        }

    @classmethod
    def fixed_hparams(cls) -> dict[str, Any]:
        return dict(cls.network_options)

    def build_network(self) -> ProbabilisticNetwork:
        hp = self.hparams
        keys = [
            "d_model",
            "n_heads",
            "d_ff",
            "n_layers",
            "dropout",
            "context_dim",
            "flow_transforms",
            "flow_kind",
            "flow_hidden",
        ]
        return HarmonyNetwork(
            self.spec, hierarchical=self.hierarchical, seed=int(hp["seed"]), **{k: hp[k] for k in keys}
        )

    hierarchical = True


class GaussianForecaster(HarmonyForecaster):
    """Ablation: the same encoder with the conditional Gaussian alone (no flow transforms)."""

    name = "gaussian"
    network_options: ClassVar[dict[str, Any]] = {"flow_transforms": 0}


class FlatForecaster(HarmonyForecaster):
    """Ablation: the same model with every token on one level (full attention, no hierarchy)."""

    name = "flat"
    hierarchical = False
