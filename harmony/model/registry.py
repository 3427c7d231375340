"""Importing this module registers every forecaster by name (Forecaster.registered())."""

from harmony.model import harmony_net

__all__ = ["harmony_net"]
