"""A reproduction of the model in the HARMONY paper's public example code (github Floating-LY/HARMONY1,
`model/harmony.py` and its layers), mistakes included, so that our model can be compared with it side by side.
Written from a reading of that code, not copied.

What the reference does, and this module reproduces:
- Tokens (iTransformer-style): each indicator's normalised lookback is one token and each time-mark feature
  over the lookback is one more, all embedded by one shared linear map (no identity or position embedding).
- Its "cascading hierarchical attention", reproduced as written (not replaced by plain full attention): for
  each level 1 .. max(level) in turn, queries, keys and values of tokens of other levels are multiplied by
  zero (they are not masked out: they still take softmax weight with a score of 0), from level 2 on the
  previous level's output is added to all three, and each level's output is kept on its own tokens.
  Tokens of level -1 take part in every level. Post-norm encoder layers (attention, then a position-wise
  feed-forward), a final LayerNorm.
- Its level vector is applied to tokens in its loader's column order, which moves the target (`load`) to
  the last column, so the levels are misaligned with the indicators (on Fisher, `load` gets level 3 and
  the first blkio column level 1). `reference_order=True` (the default) reproduces this: tokens are ordered
  with the first target moved last while `spec.levels` stays in the spec's order; calendar tokens are
  level 1 as in its `level.npy`. `reference_order=False` aligns them.
- Head: each indicator token -> mean and softplus std per horizon step; the point is the average of
  `n_draws` (100) reparameterised Gaussian draws; an unconditional RealNVP (pairs of affine couplings with
  a tanh-bounded log-scale, alternating masks; no context input, no log-determinant anywhere) maps that
  point to the output. It forecasts every indicator; our interface outputs the spec's targets. (Its
  unused point projector, which no output depends on, is left out.)
- Training: MSE between that output and the truth, so `loss` returns an MSE, not a likelihood. Defaults
  follow its run.py: d_model 512, 8 heads, 2 layers, d_ff 2048, dropout 0.1, gelu, Adam at lr 1e-4 halved
  after every epoch from the second on (its "type1" schedule), batch 128, 10 epochs, patience 3, no
  weight decay (AdamW with zero decay is Adam) and no gradient clipping.
- Sampling, as its `--NP` path: Gaussian draws pushed through the same RealNVP. That path applies the flow
  to draws already mapped back to its MinMax-scaled space, while the flow was trained on normalised
  values (the flow is applied in the wrong space); `sample_space="reference"` (default) reproduces it,
  with a MinMax scaler fit on the training rows, and maps the result back to original units;
  `sample_space="normalised"` applies the flow where it was trained. Neither is a calibrated density: the
  flow never saw a likelihood, and the draws' spread is that of a Gaussian the MSE never constrained.

Unavoidable differences, imposed by the shared interface:
- Time marks: the reference feeds raw integer month, day, weekday and hour; the calendar tensor here holds
  the project's sin/cos of hour-of-day and day-of-week (month and day of month cannot be recovered), so
  those four are the time-mark tokens.
- Normalisation: the project's instance normalisation (lookback mean, std floored by a fraction of the
  training spread) instead of the reference's sqrt(var + 1e-5) on MinMax-scaled data; the MSE is taken
  in those normalised units, on the spec's targets only (windows carry the targets' future, not every
  indicator's), where the reference averages over all indicators in MinMax units. Its MinMax scaler was
  fit per container; here it is fit on the training rows of every series together.
- Lead time: the reference forecasts the next steps; here the horizon starts after `lead_time` steps and the
  model maps the lookback to it directly. Draws are projected onto 0 for targets never negative in training,
  as for every neural forecaster of the project.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.model.base import N_CALENDAR, FitReport, ForecastSpec
from harmony.model.neural import InstanceNorm, NeuralForecaster, NormalizedNet, ProbabilisticNetwork


def coupling_mask(dim: int) -> torch.Tensor:
    """The reference's mask: alternate 0/1 for an even size, first half (rounded up) kept for an odd one."""
    mask = torch.arange(dim) % 2
    if dim % 2 == 1:
        mask[: dim // 2 + 1] = 1
        mask[dim // 2 + 1 :] = 0
    return mask.float()


def _mlp(dim: int, hidden: int) -> list[nn.Module]:
    return [nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)]


class AffineCoupling(nn.Module):
    """Keeps the masked coordinates, scales (by exp of a tanh-bounded value) and shifts the others."""

    def __init__(self, dim: int, hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        # Not saved: rebuilt from the size, as the reference keeps it outside its state dict.
        self.register_buffer("mask", mask, persistent=False)
        self.log_scale = nn.Sequential(*_mlp(dim, hidden), nn.Tanh())
        self.shift = nn.Sequential(*_mlp(dim, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask: torch.Tensor = self.mask  # type: ignore[assignment]
        kept = mask * x
        free = 1 - mask
        s = self.log_scale(kept) * free
        b = self.shift(kept) * free
        out: torch.Tensor = kept + free * (x * torch.exp(s) + b)
        return out


class UnconditionalRealNVP(nn.Module):
    """`n_flows` pairs of couplings (mask, then its complement). Unconditional: forward takes x alone."""

    def __init__(self, dim: int, hidden: int, n_flows: int) -> None:
        super().__init__()
        self.dim = dim
        mask = coupling_mask(dim)
        layers: list[nn.Module] = []
        for _ in range(n_flows):
            layers += [AffineCoupling(dim, hidden, mask), AffineCoupling(dim, hidden, 1 - mask)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CascadeAttention(nn.Module):
    """The reference's cascading hierarchical attention (see the module docstring)."""

    def __init__(self, d_model: int, n_heads: int, levels: list[int], dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.top = max(levels)
        self.register_buffer("levels", torch.tensor(levels), persistent=False)

    def full(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Unmasked scaled dot-product attention over [B, L, H, E] tensors, dropout on the weights."""
        scores = torch.einsum("blhe,bshe->bhls", q, k) / math.sqrt(q.shape[-1])
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return torch.einsum("bhls,bshd->blhd", weights, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.query(x).view(b, n, self.n_heads, -1)
        k = self.key(x).view(b, n, self.n_heads, -1)
        v = self.value(x).view(b, n, self.n_heads, -1)
        levels: torch.Tensor = self.levels  # type: ignore[assignment]
        combined = torch.zeros_like(q)
        previous = torch.zeros_like(q)
        for level in range(1, self.top + 1):
            m = ((levels == level) | (levels == -1)).to(q.dtype).view(1, n, 1, 1)
            ql, kl, vl = q * m, k * m, v * m
            if level > 1:
                ql, kl, vl = ql + previous, kl + previous, vl + previous
            previous = self.full(ql, kl, vl) * m
            combined = combined + previous
        out: torch.Tensor = self.out(combined.reshape(b, n, -1))
        return out


class EncoderLayer(nn.Module):
    """Post-norm: x + attention, LayerNorm, + position-wise feed-forward, LayerNorm."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, levels: list[int], dropout: float, activation: str
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.attention = CascadeAttention(d_model, n_heads, levels, dropout)
        self.ff_in = nn.Linear(d_model, d_ff)
        self.ff_out = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.act = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        y = self.dropout(self.ff_out(self.dropout(self.act(self.ff_in(x)))))
        out: torch.Tensor = self.norm2(x + y)
        return out


class HarmonyRefNetwork(ProbabilisticNetwork):
    def __init__(
        self,
        spec: ForecastSpec,
        *,
        d_model: int = 512,
        n_heads: int = 8,
        e_layers: int = 2,
        d_ff: int = 2048,
        dropout: float = 0.1,
        activation: str = "gelu",
        n_flows: int = 2,
        n_draws: int = 100,
        reference_order: bool = True,
        sample_space: str = "reference",
    ) -> None:
        super().__init__()
        if sample_space not in ("reference", "normalised"):
            raise ValueError(f"sample_space must be 'reference' or 'normalised', got {sample_space!r}")
        self.spec = spec
        n = len(spec.indicators)
        self.n_indicators = n
        self.n_draws = int(n_draws)
        self.sample_space = sample_space
        order = list(range(n))
        if reference_order and spec.target_index:
            first = spec.target_index[0]
            order = [i for i in order if i != first] + [first]
        self.order = order
        self.target_pos = [order.index(i) for i in spec.target_index]  # targets in token order
        self.token_levels = list(spec.levels) + [1] * N_CALENDAR
        self.embed = nn.Linear(spec.lookback, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, self.token_levels, dropout, activation)
            for _ in range(e_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2 * spec.horizon)
        self.flow = UnconditionalRealNVP(n * spec.horizon, d_model, n_flows)
        # The MinMax scaler of the reference's sampling space (set by fit; identity until then).
        self.register_buffer("mm_low", torch.zeros(n))
        self.register_buffer("mm_range", torch.ones(n))

    def encode(self, past: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        """[B, N + C, d] tokens, indicators in token order, then the lookback's calendar features."""
        lb = self.spec.lookback
        tokens = torch.cat([past[..., self.order], cal[:, :lb]], dim=-1).transpose(1, 2)
        x = self.embed_dropout(self.embed(tokens))
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.norm(x)
        return out

    def gaussian(self, past: torch.Tensor, cal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) [B, H, N] of every indicator, in token order, normalised units."""
        h = self.spec.horizon
        p = self.head(self.encode(past, cal)[:, : self.n_indicators])  # [B, N, 2H]
        return p[..., :h].transpose(1, 2), F.softplus(p[..., h:]).transpose(1, 2)

    def push(self, z: torch.Tensor) -> torch.Tensor:
        """The flow over each [H, N] block (flattened step-major, as the reference does)."""
        out: torch.Tensor = self.flow(z.reshape(*z.shape[:-2], -1))
        return out.view(z.shape)

    def forward(self, past: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        """The trained output [B, H, N]: flow(mean of `n_draws` reparameterised draws)."""
        mean, std = self.gaussian(past, cal)
        eps = torch.randn(self.n_draws, *mean.shape, dtype=mean.dtype, device=mean.device)
        return self.push(mean + std * eps.mean(dim=0))

    def loss(self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Mean squared error (not a likelihood), as the reference trains."""
        return F.mse_loss(self(past, cal)[..., self.target_pos], future)

    def _noise(self, b: int, n: int, like: torch.Tensor) -> torch.Tensor:
        # One draw of the same size per series: a series' draws do not depend on the rest of the batch.
        shape = (n, self.spec.horizon, self.n_indicators)
        return torch.stack([torch.randn(shape) for _ in range(b)]).to(like)

    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        """The flow applied where it was trained (normalised units): [B, n, H, T]."""
        mean, std = self.gaussian(past, cal)
        g = mean.unsqueeze(1) + std.unsqueeze(1) * self._noise(past.shape[0], n, mean)
        return self.push(g)[..., self.target_pos]

    def sample_reference(
        self, past_n: torch.Tensor, cal: torch.Tensor, n: int, mu: torch.Tensor, sd: torch.Tensor
    ) -> torch.Tensor:
        """The reference's --NP path, in original units: Gaussian draws mapped to MinMax units with the
        window's statistics, pushed through the flow there, mapped back with the scaler. [B, n, H, T]."""
        low: torch.Tensor = self.mm_low[self.order]  # type: ignore[index]
        span: torch.Tensor = self.mm_range[self.order]  # type: ignore[index]
        centre = (mu[..., self.order] - low) / span  # [B, 1, N]
        spread = sd[..., self.order] / span
        mean, std = self.gaussian(past_n, cal)
        mean_mm, std_mm = mean * spread + centre, std * spread
        g = mean_mm.unsqueeze(1) + std_mm.unsqueeze(1) * self._noise(past_n.shape[0], n, mean)
        out = self.push(g) * span + low
        return out[..., self.target_pos]


class ReferenceSpaceNet(NormalizedNet):
    """NormalizedNet whose sampling can take the reference's path, which needs the window's statistics."""

    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        net = self.net
        if not isinstance(net, HarmonyRefNetwork) or net.sample_space != "reference":
            return super().sample(past, cal, n)
        mu, sd = self.norm.stats(past)
        out = net.sample_reference((past - mu) / sd, cal, n, mu, sd)
        lower: torch.Tensor = self.lower  # type: ignore[assignment]
        return torch.maximum(out, lower)


class _HalveLearningRate(pl.Callback):
    """The reference's "type1" schedule: epoch k (from 0) runs at lr * 0.5 ** max(k - 1, 0). Set at each
    epoch start from the epoch number, so a resumed run gets the same rate."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        lr = self.lr * 0.5 ** max(trainer.current_epoch - 1, 0)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr


class HarmonyRefForecaster(NeuralForecaster):
    """The HARMONY example code's model (see the module docstring), behind the shared interface."""

    name = "harmony_ref"

    def __init__(self, spec: ForecastSpec, **hparams: Any) -> None:
        super().__init__(spec, **hparams)
        norm: InstanceNorm = self.model.norm
        self.model = ReferenceSpaceNet(self.model.net, norm)

    @classmethod
    def fixed_hparams(cls) -> dict[str, Any]:
        return {"target_noise": 0.0}  # trained as published: no dequantisation noise

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "d_model": 512,
            "n_heads": 8,
            "e_layers": 2,
            "d_ff": 2048,
            "dropout": 0.1,
            "activation": "gelu",
            "n_flows": 2,
            "n_draws": 100,
            "reference_order": True,
            "sample_space": "reference",
            "halve_lr_each_epoch": True,
            "lr": 1e-4,
            "weight_decay": 0.0,
            "grad_clip": 0.0,
            "batch_size": 128,
            "max_epochs": 10,
            "patience": 3,
        }

    @property
    def network(self) -> HarmonyRefNetwork:
        net = self.model.net
        if not isinstance(net, HarmonyRefNetwork):
            raise TypeError(f"expected a HarmonyRefNetwork, got {type(net).__name__}")
        return net

    def build_network(self) -> ProbabilisticNetwork:
        hp = self.hparams
        return HarmonyRefNetwork(
            self.spec,
            d_model=int(hp["d_model"]),
            n_heads=int(hp["n_heads"]),
            e_layers=int(hp["e_layers"]),
            d_ff=int(hp["d_ff"]),
            dropout=float(hp["dropout"]),
            activation=str(hp["activation"]),
            n_flows=int(hp["n_flows"]),
            n_draws=int(hp["n_draws"]),
            reference_order=bool(hp["reference_order"]),
            sample_space=str(hp["sample_space"]),
        )

    def point(
        self, history: np.ndarray, last_time: np.ndarray | pd.Timestamp | None = None, *, seed: int = 0
    ) -> np.ndarray:
        """The output the reference is trained (by MSE) and scored on: flow(mean of its Gaussian draws),
        in original units, [H, T] for one history or [B, H, T] for a batch. Its published MSE is of this,
        not of the `--NP` draws that `sample` reproduces."""
        past, cal, single = self.inputs(history, last_time)
        norm: InstanceNorm = self.model.norm
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mu, sd = norm.stats(past)
            out = self.network((past - mu) / sd, cal)[..., self.network.target_pos]
            out = out * norm.targets(sd) + norm.targets(mu)
        result: np.ndarray = out.numpy()
        return result[0] if single else result

    def _fit_scaler(self, trace: Trace, split: Split) -> None:
        """MinMax scaler on the training rows (a constant column gets range 1, as scikit-learn does)."""
        parts = []
        for sid in trace.series_ids:
            a, _, _ = split.boundaries[sid]
            parts.append(trace[sid][list(self.spec.indicators)].to_numpy(np.float64)[:a])
        train = np.concatenate(parts)
        finite = np.isfinite(train).any(axis=0)
        low = np.where(finite, np.nanmin(np.where(np.isfinite(train), train, np.inf), axis=0), 0.0)
        high = np.where(finite, np.nanmax(np.where(np.isfinite(train), train, -np.inf), axis=0), 1.0)
        span = high - low
        span[span == 0] = 1.0
        net = self.network
        net.mm_low.copy_(torch.as_tensor(low, dtype=torch.float32))  # type: ignore[operator]
        net.mm_range.copy_(torch.as_tensor(span, dtype=torch.float32))  # type: ignore[operator]

    def fit(self, trace: Trace, split: Split, **options: Any) -> FitReport:
        self._fit_scaler(trace, split)
        if self.hparams["halve_lr_each_epoch"]:
            callbacks = [*options.get("callbacks", []), _HalveLearningRate(float(self.hparams["lr"]))]
            options = {**options, "callbacks": callbacks}
        return super().fit(trace, split, **options)
