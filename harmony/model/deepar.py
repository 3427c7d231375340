"""A DeepAR-style recurrent Gaussian forecaster (after Salinas et al., "DeepAR: probabilistic forecasting
with autoregressive recurrent networks").

An LSTM runs over the time steps of a window. The input at step t is every (instance-normalised) indicator
at step t-1 plus the calendar features of step t; the output is a Gaussian (mean, softplus scale) for each
target at step t. Time steps are indexed as in the calendar tensor: 0 .. L-1 is the lookback (L-1 the last
observed step), then the lead steps L .. L+lead-1, then the horizon L+lead .. L+lead+H-1.

After the lookback only the targets are forecast, so the step-t input beyond it is built as:
- targets: their true values at t-1 in training where a window holds them (the horizon: teacher forcing),
  their predicted mean across the lead steps in training (a window does not carry the lead steps' values),
  and sampled values in ancestral sampling (the lead steps and the horizon alike);
- indicators that are not targets: their last observed value, held constant, since nothing forecasts them.

The loss is the Gaussian negative log-likelihood of the horizon steps only, averaged per target dimension.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harmony.model.base import N_CALENDAR, ForecastSpec
from harmony.model.neural import NeuralForecaster, ProbabilisticNetwork

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class DeepARNetwork(ProbabilisticNetwork):
    def __init__(
        self,
        spec: ForecastSpec,
        *,
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.1,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.n_targets = len(spec.targets)
        self.target_index = spec.target_index
        self.min_scale = float(min_scale)
        self.lstm = nn.LSTM(
            len(spec.indicators) + N_CALENDAR,
            hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
            batch_first=True,
        )
        self.head = nn.Linear(hidden, 2 * self.n_targets)

    def gaussian(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM outputs [..., hidden] -> (mean, scale) [..., T]; the floor keeps the likelihood finite."""
        mean, raw = self.head(out).chunk(2, dim=-1)
        return mean, F.softplus(raw) + self.min_scale

    def _inputs(self, last: torch.Tensor, targets: torch.Tensor, cal: torch.Tensor) -> torch.Tensor:
        """Step inputs beyond the lookback: last observed indicators [B, N] with the targets replaced by
        `targets` [B, k, T], next to the calendar [B, k, C]."""
        x = last.unsqueeze(1).expand(-1, targets.shape[1], -1).clone()
        x[..., self.target_index] = targets
        return torch.cat([x, cal], dim=-1)

    def _lookback(
        self, past: torch.Tensor, cal: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Steps 1 .. L (every input observed): the LSTM output of step L and the state after it."""
        lb = self.spec.lookback
        out, state = self.lstm(torch.cat([past, cal[:, 1 : lb + 1]], dim=-1))
        return out[:, -1], state

    def teacher_forced(
        self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) [B, H, T] of the horizon steps, each conditioned on the true targets before it."""
        lb, lead, h = self.spec.lookback, self.spec.lead_time, self.spec.horizon
        out, state = self._lookback(past, cal)
        mean, scale = self.gaussian(out.unsqueeze(1))  # step L
        last = past[:, -1]
        for t in range(lb + 1, lb + lead + 1):  # lead steps: fed their own predicted mean
            out_t, state = self.lstm(self._inputs(last, mean, cal[:, t : t + 1]), state)
            mean, scale = self.gaussian(out_t)
        if h == 1:
            return mean, scale
        start = lb + lead + 1
        rest, _ = self.lstm(self._inputs(last, future[:, :-1], cal[:, start : start + h - 1]), state)
        mean_rest, scale_rest = self.gaussian(rest)
        return torch.cat([mean, mean_rest], dim=1), torch.cat([scale, scale_rest], dim=1)

    def loss(self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        mean, scale = self.teacher_forced(past, cal, future)
        nll = 0.5 * ((future - mean) / scale) ** 2 + torch.log(scale) + HALF_LOG_TWO_PI
        return nll.mean()

    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        lb, lead, h = self.spec.lookback, self.spec.lead_time, self.spec.horizon
        b = past.shape[0]
        out, (hx, cx) = self._lookback(past, cal)
        mean, scale = self.gaussian(out)  # step L, [B, T]
        # n paths per series: row i*n + j is path j of series i.
        mean, scale = mean.repeat_interleave(n, 0), scale.repeat_interleave(n, 0)
        state = (hx.repeat_interleave(n, 1), cx.repeat_interleave(n, 1))
        last = past[:, -1].repeat_interleave(n, 0)
        cal = cal.repeat_interleave(n, 0)
        # One noise draw of the same size per series, in batch order: a series' paths do not depend on
        # the rest of the batch (one draw over the whole batch would not keep that under torch's RNG).
        steps = lead + h
        noise = torch.stack([torch.randn(n, steps, self.n_targets) for _ in range(b)]).to(past)
        noise = noise.view(b * n, steps, self.n_targets)
        draws = []
        for k in range(steps):
            y = mean + scale * noise[:, k]
            if k >= lead:
                draws.append(y)
            if k + 1 == steps:
                break
            t = lb + k + 1
            out_t, state = self.lstm(self._inputs(last, y.unsqueeze(1), cal[:, t : t + 1]), state)
            mean, scale = self.gaussian(out_t[:, 0])
        return torch.stack(draws, dim=1).view(b, n, h, self.n_targets)


class DeepARForecaster(NeuralForecaster):
    """DeepAR-style autoregressive LSTM with a Gaussian per target and step."""

    name = "deepar"

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {"hidden": 64, "layers": 2, "dropout": 0.1}

    def build_network(self) -> ProbabilisticNetwork:
        hp = self.hparams
        return DeepARNetwork(
            self.spec, hidden=int(hp["hidden"]), layers=int(hp["layers"]), dropout=float(hp["dropout"])
        )
