"""Probabilistic multi-indicator forecasters behind one interface (see harmony.model.base)."""

from harmony.model.base import FitReport, Forecaster, ForecastSpec, calendar_features

__all__ = ["FitReport", "ForecastSpec", "Forecaster", "calendar_features"]
