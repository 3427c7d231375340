"""Importing this module registers every forecaster by name (Forecaster.registered())."""

from harmony.model import deepar, harmony_net, harmony_ref, seasonal_naive

__all__ = ["deepar", "harmony_net", "harmony_ref", "seasonal_naive"]
