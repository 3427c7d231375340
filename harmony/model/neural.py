"""Shared machinery of the neural forecasters: window tensors, instance normalisation, the Lightning
module (loss, optimisation, logging) and the Forecaster that owns preprocessing, training and saving.

Networks are plain `nn.Module`s with two methods, both in normalised units:
    loss(past [B, L, N], calendar [B, L+lead+H, C], future [B, H, T]) -> scalar (mean NLL per dimension)
    sample(past, calendar, n) -> [B, n, H, T]
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from harmony.data.trace import Trace
from harmony.data.windows import Part, Split, WindowDataset, WindowSpec
from harmony.model.base import FitReport, Forecaster, ForecastSpec, as_batch, calendar_features

NEURAL_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-5,
    "batch_size": 128,
    "max_epochs": 30,
    "patience": 5,
    "grad_clip": 1.0,
    "seed": 0,
    "train_stride": 1,
    "max_train_windows": 20_000,
    "max_val_windows": 4_000,
    "norm_floor": 0.05,
    "norm_floor_window": 0.0,
    "target_noise": 0.0,
}


# Hyper-parameters where null means "no limit" (every window) rather than "use the default".
UNLIMITED_HPARAMS = ("max_train_windows", "max_val_windows")


def _limit(value: Any) -> int | None:
    return None if value is None else int(value)


class WindowTensors(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Windows as tensors: past [L, N], calendar [L+lead+H, C], future targets [H, T].

    `keep` subsamples the windows evenly (deterministic) to bound an epoch's cost.
    """

    def __init__(self, windows: WindowDataset, spec: ForecastSpec, keep: int | None = None) -> None:
        self.windows = windows
        self.spec = spec
        self.target_index = spec.target_index
        n = len(windows)
        self.order = (
            np.arange(n) if keep is None or n <= keep else np.linspace(0, n - 1, keep).astype(np.int64)
        )
        self.times = [pd.DatetimeIndex(windows.trace[s].index).asi8 for s in windows.series_ids]
        step = int(spec.frequency.value)
        self.offsets = np.arange(-spec.lookback + 1, spec.lead_time + spec.horizon + 1, dtype=np.int64) * step

    def __len__(self) -> int:
        return int(self.order.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j = int(self.order[k])
        past, future = self.windows[j]
        s, t = (int(x) for x in self.windows.index[j])
        cal = calendar_features(self.times[s][t] + self.offsets)
        return (
            torch.from_numpy(past.copy()),
            torch.from_numpy(cal),
            torch.from_numpy(future[:, self.target_index].copy()),
        )


class ProbabilisticNetwork(nn.Module, ABC):
    """A plain network in normalised units: what a NeuralForecaster trains and samples."""

    @abstractmethod
    def loss(self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Mean training loss per target dimension (negative log-likelihood for the probabilistic models)."""

    @abstractmethod
    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        """[B, n, H, T] draws."""


class InstanceNorm(nn.Module):
    """Per-window normalisation (RevIN without affine terms): each indicator of a window is centred on its
    lookback mean and divided by its lookback standard deviation, floored by a fraction of the indicator's
    training spread so that a flat lookback cannot blow a later change up. The same statistics map the
    target draws back to original units.

    `window_cap` > 0 caps that floor at this fraction of the window's largest absolute value (windows of
    zeros keep the full floor). The training spread is the whole trace's: a series running at a thousandth
    of the others' scale would otherwise be normalised by a floor far above its own variation, and every
    draw's error would be multiplied by that ratio when mapped back."""

    def __init__(self, n_indicators: int, target_index: list[int], window_cap: float = 0.0) -> None:
        super().__init__()
        if window_cap < 0:
            raise ValueError(f"norm_floor_window must be >= 0, got {window_cap}")
        self.register_buffer("floor", torch.ones(n_indicators))
        self.target_index = list(target_index)
        self.window_cap = float(window_cap)

    def stats(self, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = past.mean(dim=1, keepdim=True)
        sd = past.std(dim=1, keepdim=True, unbiased=False)
        floor: torch.Tensor = self.floor.view(1, 1, -1)  # type: ignore[operator]
        if self.window_cap > 0:
            peak = past.abs().amax(dim=1, keepdim=True)
            floor = torch.where(peak > 0, torch.minimum(floor, self.window_cap * peak), floor)
        return mu, torch.maximum(sd, floor)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.target_index]


class NormalizedNet(nn.Module):
    """A network wrapped by instance normalisation: works in original units at its boundary."""

    def __init__(self, net: ProbabilisticNetwork, norm: InstanceNorm, target_noise: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.norm = norm
        # Std of Gaussian noise added to the normalised targets while training (dequantisation): traces are
        # rounded or sit on a few levels, and a likelihood model otherwise learns spikes on those values.
        self.target_noise = float(target_noise)
        # Lower bound of each target's support: 0 for indicators never negative in training (rates,
        # utilisations, bytes), -inf otherwise. Draws are projected onto it.
        self.register_buffer("lower", torch.full((len(norm.target_index),), float("-inf")))

    def loss(self, past: torch.Tensor, cal: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        mu, sd = self.norm.stats(past)
        fut_n = (future - self.norm.targets(mu)) / self.norm.targets(sd)
        if self.training and self.target_noise > 0:
            fut_n = fut_n + self.target_noise * torch.randn_like(fut_n)
        return self.net.loss((past - mu) / sd, cal, fut_n)

    def sample(self, past: torch.Tensor, cal: torch.Tensor, n: int) -> torch.Tensor:
        mu, sd = self.norm.stats(past)
        draws = self.net.sample((past - mu) / sd, cal, n)  # [B, n, H, T]
        out = draws * self.norm.targets(sd).unsqueeze(1) + self.norm.targets(mu).unsqueeze(1)
        lower: torch.Tensor = self.lower  # type: ignore[assignment]
        return torch.maximum(out, lower)


class ForecastModule(pl.LightningModule):
    """Loss, optimisation and logging around a NormalizedNet."""

    def __init__(self, model: NormalizedNet, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay

    def _logged_loss(self, batch: tuple[torch.Tensor, ...], name: str) -> torch.Tensor:
        past, cal, fut = batch
        loss = self.model.loss(past, cal, fut)
        # sync_dist: under DDP every process sees its own shard; the epoch's loss is their mean, so early
        # stopping and the best checkpoint judge the same number in every process (a no-op in one process).
        self.log(
            name, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=past.shape[0], sync_dist=True
        )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._logged_loss(batch, "train_loss")

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._logged_loss(batch, "val_loss")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class EpochSeededSampler(Sampler[int]):
    """Shuffles with seed + epoch: a run resumed from a checkpoint sees the same batches as one that never
    stopped (Lightning calls set_epoch on the sampler at every epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class _EpochSeed(pl.Callback):
    """Re-seeds torch at each epoch start so dropout draws do not depend on what ran before a resume."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        torch.manual_seed(self.seed * 100_003 + trainer.current_epoch)


class _History(pl.Callback):
    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        if "train_loss" in m:
            self.train.append(float(m["train_loss"]))

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        if "val_loss" in m and not trainer.sanity_checking:
            self.val.append(float(m["val_loss"]))


class NeuralForecaster(Forecaster):
    """Owns preprocessing, training (Lightning), sampling and saving for a network."""

    def __init__(self, spec: ForecastSpec, **hparams: Any) -> None:
        merged = {**NEURAL_DEFAULTS, **self.default_hparams(), **hparams, **self.fixed_hparams()}
        super().__init__(spec, **merged)
        torch.manual_seed(int(self.hparams["seed"]))
        self.model = NormalizedNet(
            self.build_network(),
            InstanceNorm(len(spec.indicators), spec.target_index, float(self.hparams["norm_floor_window"])),
            target_noise=float(self.hparams["target_noise"]),
        )

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def fixed_hparams(cls) -> dict[str, Any]:
        """Settings that define the model (e.g. an ablation's): they win over anything passed in."""
        return {}

    @abstractmethod
    def build_network(self) -> ProbabilisticNetwork:
        """The plain nn.Module with loss() and sample() in normalised units."""

    # --- data ------------------------------------------------------------------------------------------
    def window_spec(self, stride: int = 1) -> WindowSpec:
        s = self.spec
        return WindowSpec(lookback=s.lookback, horizon=s.horizon, lead_time=s.lead_time, stride=stride)

    def windows(
        self, trace: Trace, split: Split, part: Part, keep: int | None, stride: int = 1
    ) -> WindowTensors:
        ds = WindowDataset(
            trace, split, part, self.window_spec(stride), indicators=list(self.spec.indicators)
        )
        return WindowTensors(ds, self.spec, keep)

    def _set_floor(self, trace: Trace, split: Split) -> None:
        parts = []
        for sid in trace.series_ids:
            a, _, _ = split.boundaries[sid]
            parts.append(trace[sid][list(self.spec.indicators)].to_numpy(np.float64)[:a])
        train = np.concatenate(parts)
        spread = np.nanstd(train, axis=0)
        floor = np.maximum(float(self.hparams["norm_floor"]) * np.nan_to_num(spread), 1e-6)
        self.model.norm.floor.copy_(torch.as_tensor(floor, dtype=torch.float32))  # type: ignore[operator]
        lowest = np.nanmin(train[:, self.spec.target_index], axis=0)
        lower = np.where(lowest >= 0, 0.0, -np.inf)
        self.model.lower.copy_(torch.as_tensor(lower, dtype=torch.float32))  # type: ignore[operator]

    # --- training --------------------------------------------------------------------------------------
    def fit(self, trace: Trace, split: Split, **options: Any) -> FitReport:
        """Options: logger, callbacks (extra), checkpoint_dir, resume_from (a .ckpt), accelerator, devices,
        num_nodes, strategy, progress (bool), max_epochs (overrides the hyper-parameter)."""
        hp = self.hparams
        pl.seed_everything(int(hp["seed"]), workers=True, verbose=False)
        self._set_floor(trace, split)
        train = self.windows(trace, split, "train", _limit(hp["max_train_windows"]), int(hp["train_stride"]))
        val = self.windows(trace, split, "val", _limit(hp["max_val_windows"]))
        if len(train) == 0:
            raise ValueError(
                f"no training windows: each series needs {self.window_spec().span} points without gaps "
                "in its training part"
            )
        seed = int(hp["seed"])
        train_dl = DataLoader(
            train,
            batch_size=int(hp["batch_size"]),
            sampler=EpochSeededSampler(len(train), seed),
            num_workers=0,
            # Its own generator: creating the iterator must not draw from the global RNG (dropout's),
            # which a resumed run would otherwise see in a different order.
            generator=torch.Generator().manual_seed(seed),
        )
        val_dl = (
            DataLoader(val, batch_size=int(hp["batch_size"]) * 2, shuffle=False, num_workers=0)
            if len(val)
            else None
        )
        module = ForecastModule(self.model, float(hp["lr"]), float(hp["weight_decay"]))
        history = _History()
        callbacks: list[pl.Callback] = [history, _EpochSeed(seed), *options.get("callbacks", [])]
        ckpt_dir = options.get("checkpoint_dir")
        checkpoint = None
        monitor = "val_loss" if val_dl is not None else "train_loss"
        if ckpt_dir is not None:
            checkpoint = pl.callbacks.ModelCheckpoint(
                dirpath=str(ckpt_dir), monitor=monitor, save_last=True, save_top_k=1, filename="best"
            )
            callbacks.append(checkpoint)
        callbacks.append(
            pl.callbacks.EarlyStopping(monitor=monitor, patience=int(hp["patience"]), mode="min")
        )
        trainer = pl.Trainer(
            max_epochs=int(options.get("max_epochs", hp["max_epochs"])),
            accelerator=options.get("accelerator", "cpu"),
            devices=options.get("devices", 1),
            num_nodes=int(options.get("num_nodes", 1)),
            strategy=options.get("strategy", "auto"),
            logger=options.get("logger", False),
            callbacks=callbacks,
            enable_progress_bar=bool(options.get("progress", False)),
            enable_model_summary=False,
            enable_checkpointing=checkpoint is not None,
            gradient_clip_val=float(hp["grad_clip"]),
            deterministic=True,
            num_sanity_val_steps=0,
            log_every_n_steps=10,
        )
        t0 = time.perf_counter()
        trainer.fit(module, train_dl, val_dl, ckpt_path=options.get("resume_from"))
        report = FitReport(
            train_loss=history.train,
            val_loss=history.val,
            epochs=trainer.current_epoch,
            seconds=time.perf_counter() - t0,
        )
        if checkpoint is not None and checkpoint.best_model_path:
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)[
                "state_dict"
            ]
            module.load_state_dict(state)
            report.best_val_loss = (
                float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
            )
        if report.val_loss:
            report.best_epoch = int(np.argmin(report.val_loss))
            report.best_val_loss = report.best_val_loss or float(min(report.val_loss))
        self.model.eval()
        return report

    # --- inference -------------------------------------------------------------------------------------
    def sample(
        self,
        history: np.ndarray,
        n: int,
        last_time: np.ndarray | pd.Timestamp | None = None,
        *,
        seed: int | None = None,
    ) -> np.ndarray:
        past, cal, single = self.inputs(history, last_time)
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.sample(past, cal, n).numpy()
        return out[0] if single else out

    def inputs(
        self, history: np.ndarray, last_time: np.ndarray | pd.Timestamp | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The network's inputs for histories: lookback [B, L, N], calendar over lookback, lead and
        horizon [B, L + lead + H, C], and whether a single history (no batch axis) was given."""
        h, t, single = as_batch(history, last_time, self.spec)
        s = self.spec
        offsets = np.arange(-s.lookback + 1, s.lead_time + s.horizon + 1, dtype=np.int64) * int(
            s.frequency.value
        )
        cal = calendar_features(t[:, None] + offsets[None, :])
        return torch.from_numpy(h), torch.from_numpy(cal), single

    # --- persistence -----------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)
        self.model.eval()


def checkpoint_path(directory: str | Path) -> Path | None:
    """The `last.ckpt` of an interrupted run, if any."""
    p = Path(directory) / "last.ckpt"
    return p if p.exists() else None
