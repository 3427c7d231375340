"""Data layer: dataset cards, loaders for the public traces and for your own tables, cleaning, splits."""

from harmony.data.catalog import data_dir, get_card, list_cards, load
from harmony.data.clean import SeriesReport, regularize
from harmony.data.errors import CardError, ChecksumError, DataError
from harmony.data.spec import CleaningRules, DatasetCard, IndicatorSpec, Kind, Measure, load_card
from harmony.data.trace import Trace
from harmony.data.windows import Split, WindowDataset, WindowSpec, chronological_split

__all__ = [
    "CardError",
    "ChecksumError",
    "CleaningRules",
    "DataError",
    "DatasetCard",
    "IndicatorSpec",
    "Kind",
    "Measure",
    "SeriesReport",
    "Split",
    "Trace",
    "WindowDataset",
    "WindowSpec",
    "chronological_split",
    "data_dir",
    "get_card",
    "list_cards",
    "load",
    "load_card",
    "regularize",
]
