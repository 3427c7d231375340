"""Hierarchical attention over indicator tokens.

Each token has a level (1 = demand and calendar, 2 = compute and memory, 3 = IO and network). In every
layer the levels are refined top-down: level 1 attends to itself; level l attends to itself and to the
*refined* output of level l-1 from the same layer. Each level has its own projections and feed-forward
network. The mask is additive with true -inf where attention is forbidden, so a forbidden token gets
exactly zero weight: a change in a level-3 input cannot reach a level-1 output.
"""

from __future__ import annotations

import torch
from torch import nn


def level_mask(levels: list[int]) -> torch.Tensor:
    """[T, T] additive mask: 0 where token i may attend to token j (its level or the one above), else -inf."""
    lv = torch.as_tensor(levels)
    allowed = (lv[None, :] == lv[:, None]) | (lv[None, :] == lv[:, None] - 1)
    mask = torch.zeros(len(levels), len(levels))
    mask[~allowed] = float("-inf")
    return mask


class LevelBlock(nn.Module):
    """Pre-norm attention + feed-forward for the queries of one level."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kvn = self.norm_kv(kv)
        att, _ = self.attn(self.norm_q(q), kvn, kvn, attn_mask=mask, need_weights=False)
        x = q + self.drop(att)
        out: torch.Tensor = x + self.drop(self.ff(self.norm_ff(x)))
        return out


class HierarchicalLayer(nn.Module):
    """One top-down cascade over all levels."""

    def __init__(self, levels: list[int], d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.levels = sorted(set(levels))
        self.token_levels = list(levels)
        self.blocks = nn.ModuleDict(
            {str(lv): LevelBlock(d_model, n_heads, d_ff, dropout) for lv in self.levels}
        )
        self.register_buffer("mask", level_mask(levels), persistent=False)
        for lv in self.levels:
            self.register_buffer(
                f"idx_{lv}", torch.tensor([i for i, x in enumerate(levels) if x == lv]), persistent=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        mask: torch.Tensor = self.mask  # type: ignore[assignment]
        for lv in self.levels:  # top-down: level l sees level l-1 already refined in this layer
            idx: torch.Tensor = getattr(self, f"idx_{lv}")
            refined = self.blocks[str(lv)](out[:, idx], out, mask[idx])
            out = out.index_copy(1, idx, refined)
        return out


class HierarchicalEncoder(nn.Module):
    def __init__(
        self, levels: list[int], d_model: int, n_heads: int, d_ff: int, n_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            HierarchicalLayer(levels, d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.norm(x)
        return out
