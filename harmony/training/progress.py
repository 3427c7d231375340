"""A progress line per training epoch (with the losses and an ETA) for output that is not a terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl

from harmony.output import Progress


class EpochProgress(pl.Callback):
    """One line per epoch: `label: epoch e/max (pct), elapsed, ETA at most ...; train_loss, val_loss`.

    The ETA is an upper bound: early stopping may end the run before `max_epochs`."""

    def __init__(self, label: str, max_epochs: int, log: Callable[[str], None] | None = None) -> None:
        self.progress = Progress(label, max_epochs, log=log, every_s=0.0, unit="epochs", bounded=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run starts at its checkpoint's epoch.
        self.progress.done = int(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics: dict[str, Any] = trainer.callback_metrics
        note = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in ("train_loss", "val_loss") if k in metrics)
        self.progress.advance(1, note)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress.done < self.progress.total:
            self.progress.finish("stopped early")
