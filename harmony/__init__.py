"""harmony: forecast the distribution of a service's indicators and scale it within its SLA."""

__version__ = "0.1.0"
