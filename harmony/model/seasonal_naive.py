"""Seasonal naive with empirical residual quantiles: the reference every other forecaster is scored against.

Point forecast: the target offset o = lead_time + h steps after the last observed step takes the value one
season earlier, repeated seasonally when o exceeds the lag (y[T+o] = y[T+o-k*lag], k = ceil(o/lag), so the
source always lies in the last `lag` observed steps). The lag is the season (`season_steps`, by default one
day of steps) when the lookback holds a whole season, otherwise 1: plain persistence of the last value. A
lookback shorter than a season cannot see the value one season earlier, and persistence is the usual fallback.

Uncertainty: on the train windows only, the residuals actual - point are collected per horizon step and
target and summarised by `n_quantiles` evenly spaced quantiles; a draw adds, independently per step and
target, one of those quantiles picked uniformly to the point. Like the neural models, draws are projected
onto 0 for targets never negative in training.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from harmony.data.trace import Trace
from harmony.data.windows import Split, WindowDataset, WindowSpec
from harmony.model.base import FitReport, Forecaster, ForecastSpec, as_batch

SECONDS_PER_DAY = 86_400


class SeasonalNaiveForecaster(Forecaster):
    """Value one season earlier plus resampled training residual quantiles."""

    name = "seasonal_naive"

    def __init__(self, spec: ForecastSpec, **hparams: Any) -> None:
        merged: dict[str, Any] = {"season_steps": None, "n_quantiles": 99, "max_train_windows": None}
        merged.update(hparams)
        super().__init__(spec, **merged)
        if int(self.hparams["n_quantiles"]) < 1:
            raise ValueError(f"n_quantiles must be >= 1, got {self.hparams['n_quantiles']}")
        if self.season < 1:
            raise ValueError(f"season_steps must be >= 1, got {self.season}")
        n_t = len(spec.targets)
        # Zero residuals until fit: an unfitted model is the plain seasonal naive point forecast.
        self.quantiles = np.zeros((int(self.hparams["n_quantiles"]), spec.horizon, n_t), dtype=np.float32)
        self.lower = np.full(n_t, -np.inf, dtype=np.float32)

    # --- the point forecast ----------------------------------------------------------------------------
    @property
    def season(self) -> int:
        raw = self.hparams["season_steps"]
        return int(raw) if raw is not None else max(1, round(SECONDS_PER_DAY / self.spec.frequency_s))

    @property
    def lag(self) -> int:
        return self.season if self.spec.lookback >= self.season else 1

    def source_offsets(self) -> np.ndarray:
        """[H] offsets, relative to the last observed step (0, -1, ...), of each horizon step's source."""
        lag = self.lag
        o = self.spec.lead_time + np.arange(1, self.spec.horizon + 1)
        return np.asarray([int(x) - lag * math.ceil(int(x) / lag) for x in o], dtype=np.int64)

    def point(self, history: np.ndarray) -> np.ndarray:
        """[B, L, N] -> [B, H, T] seasonal naive points."""
        idx = self.spec.lookback - 1 + self.source_offsets()
        out: np.ndarray = history[:, idx][:, :, self.spec.target_index]
        return out

    # --- fitting ---------------------------------------------------------------------------------------
    def fit(self, trace: Trace, split: Split, **options: Any) -> FitReport:
        """Residual quantiles from the train windows (inputs and targets both before validation begins)."""
        del options  # nothing to train: the neural options (epochs, devices, ...) do not apply
        t0 = time.perf_counter()
        s = self.spec
        ds = WindowDataset(
            trace,
            split,
            "train",
            WindowSpec(lookback=s.lookback, horizon=s.horizon, lead_time=s.lead_time),
            indicators=list(s.indicators),
        )
        if len(ds) == 0:
            raise ValueError(f"no training windows of {s.lookback + s.lead_time + s.horizon} points")
        rows = ds.index
        keep = self.hparams["max_train_windows"]
        if keep is not None and len(rows) > int(keep):
            rows = rows[np.linspace(0, len(rows) - 1, int(keep)).astype(np.int64)]
        src = self.source_offsets()
        ahead = s.lead_time + np.arange(1, s.horizon + 1)
        residuals = []
        for k, sid in enumerate(ds.series_ids):
            anchors = rows[rows[:, 0] == k, 1]
            if anchors.size == 0:
                continue
            y = trace[sid][list(s.targets)].to_numpy(np.float64)
            actual = y[anchors[:, None] + ahead[None, :]]  # [W, H, T]
            point = y[anchors[:, None] + src[None, :]]
            residuals.append(actual - point)
        res = np.concatenate(residuals)
        q = int(self.hparams["n_quantiles"])
        levels = np.arange(1, q + 1) / (q + 1)
        self.quantiles = np.quantile(res, levels, axis=0).astype(np.float32)  # [Q, H, T]
        lowest = np.full(len(s.targets), np.inf)
        for sid in trace.series_ids:
            a, _, _ = split.boundaries[sid]
            if a:
                train = trace[sid][list(s.targets)].to_numpy(np.float64)[:a]
                lowest = np.fmin(lowest, np.nanmin(train, axis=0))
        self.lower = np.where(lowest >= 0, 0.0, -np.inf).astype(np.float32)
        return FitReport(epochs=0, seconds=time.perf_counter() - t0)

    # --- inference -------------------------------------------------------------------------------------
    def sample(
        self,
        history: np.ndarray,
        n: int,
        last_time: np.ndarray | pd.Timestamp | None = None,
        *,
        seed: int | None = None,
    ) -> np.ndarray:
        h, _, single = as_batch(history, last_time, self.spec)
        s = self.spec
        point = self.point(h)  # [B, H, T]
        rng = np.random.default_rng(seed)
        # Batch outermost in one sequential stream: a series' draws do not depend on the rest of the batch.
        pick = rng.integers(0, self.quantiles.shape[0], size=(h.shape[0], n, s.horizon, len(s.targets)))
        steps = np.arange(s.horizon)[None, None, :, None]
        targets = np.arange(len(s.targets))[None, None, None, :]
        out = np.maximum(point[:, None] + self.quantiles[pick, steps, targets], self.lower).astype(np.float32)
        return out[0] if single else out

    # --- persistence -----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "residual_quantiles": torch.from_numpy(self.quantiles.copy()),
            "lower": torch.from_numpy(self.lower.copy()),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        q = tensors["residual_quantiles"].detach().cpu().numpy().astype(np.float32)
        lower = tensors["lower"].detach().cpu().numpy().astype(np.float32)
        n_t = len(self.spec.targets)
        if q.ndim != 3 or q.shape[1:] != (self.spec.horizon, n_t) or q.shape[0] < 1:
            raise ValueError(f"residual_quantiles must be [Q, {self.spec.horizon}, {n_t}], got {q.shape}")
        if lower.shape != (n_t,):
            raise ValueError(f"lower must be [{n_t}], got {lower.shape}")
        self.quantiles = q
        self.lower = lower
