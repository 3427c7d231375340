"""The error of a training or evaluation run that cannot start or go on."""

from __future__ import annotations

from harmony.data.errors import DataError

__all__ = ["TrainError"]


class TrainError(DataError):
    """A training run cannot start or go on; the message says why and what to do."""
