"""Conditional normalizing-flow head (nflows): the joint distribution of the targets over the horizon.

Base: a conditional diagonal Gaussian whose mean and log-scale are a linear projection of the encoder
context ("Gaussian projection"). On top: coupling transforms (rational-quadratic splines by default, or
affine), each conditioned on the same context, with random permutations between them. Coupling layers
give exact log-likelihood and sampling in one pass each way, which keeps sampling fast. With
`n_transforms=0` the head is the Gaussian-only ablation.
"""

from __future__ import annotations

import torch
from nflows.distributions.normal import ConditionalDiagonalNormal
from nflows.flows.base import Flow
from nflows.nn.nets import ResidualNet
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import AffineCouplingTransform, PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.permutations import Permutation
from torch import nn


class FlowHead(nn.Module):
    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        n_transforms: int = 4,
        kind: str = "spline",
        hidden: int = 64,
        bins: int = 8,
        tail_bound: float = 6.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if kind not in ("spline", "affine"):
            raise ValueError(f"flow kind must be 'spline' or 'affine', got {kind!r}")
        self.dim = dim
        encoder = nn.Linear(context_dim, 2 * dim)
        nn.init.zeros_(encoder.weight)
        nn.init.zeros_(encoder.bias)
        base = ConditionalDiagonalNormal(shape=[dim], context_encoder=encoder)
        transforms: list[nn.Module] = []
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_transforms):
            mask = torch.zeros(dim)
            mask[k % 2 :: 2] = 1  # alternate halves; dim 1 still works with the permutations
            if dim == 1:
                mask = torch.ones(1)

            def make_net(i: int, o: int) -> nn.Module:
                net: nn.Module = ResidualNet(
                    i, o, hidden_features=hidden, context_features=context_dim, num_blocks=2
                )
                return net

            if kind == "spline":
                transforms.append(
                    PiecewiseRationalQuadraticCouplingTransform(
                        mask=mask,
                        transform_net_create_fn=make_net,
                        num_bins=bins,
                        tails="linear",
                        tail_bound=tail_bound,
                    )
                )
            else:
                transforms.append(AffineCouplingTransform(mask=mask, transform_net_create_fn=make_net))
            if dim > 1:
                # Seeded, and saved as a buffer, so a rebuilt model permutes the same way.
                transforms.append(Permutation(torch.randperm(dim, generator=gen)))
        self.flow = Flow(CompositeTransform(transforms), base)

    def log_prob(self, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.flow.log_prob(y, context=context)
        return out

    def sample(self, n: int, context: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.flow.sample(n, context=context)  # [B, n, dim]
        return out
