"""Where dataset cards and trace files are found, and `load(name)` for any known dataset."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd

from harmony.data.errors import CardError, DataError
from harmony.data.spec import Binning, DatasetCard, load_card, parse_binning, parse_frequency
from harmony.data.trace import Trace

DATA_DIR_ENV = "HARMONY_DATA_DIR"
CARDS_DIR_ENV = "HARMONY_CARDS_DIR"

Loader = Callable[[DatasetCard, Path, "Sequence[str] | None"], Trace]
_LOADERS: dict[str, Loader] = {}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return deco


def cards_dir() -> Path:
    """The folder of dataset cards: $HARMONY_CARDS_DIR, the source tree's datasets/, or the installed copy."""
    env = os.environ.get(CARDS_DIR_ENV)
    if env:
        return Path(env)
    source_tree = Path(__file__).resolve().parents[2] / "datasets"
    if source_tree.is_dir():
        return source_tree
    installed = Path(sys.prefix) / "share" / "harmony" / "datasets"
    if installed.is_dir():
        return installed
    raise CardError(f"no dataset cards found (looked in {source_tree} and {installed}; set {CARDS_DIR_ENV})")


def data_dir(explicit: str | Path | None = None) -> Path:
    """Root of the trace files: the argument, else $HARMONY_DATA_DIR, else ./data."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path("data")


def list_cards() -> list[DatasetCard]:
    return [load_card(p) for p in sorted(cards_dir().glob("*.yaml"))]


def get_card(name: str) -> DatasetCard:
    path = cards_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in cards_dir().glob("*.yaml"))
        raise CardError(
            f"unknown dataset {name!r}: no card {path}; known datasets: {', '.join(known)} (a card of "
            "your own: give its path, e.g. my_service.yaml)"
        )
    card = load_card(path)
    if card.name != name:
        raise CardError(f"card declares name {card.name!r} but its file is named {name!r}", path=path)
    return card


def dataset_root(card: DatasetCard, root: str | Path | None = None) -> Path:
    return data_dir(root) / card.directory


def load(
    name_or_card: str | DatasetCard,
    *,
    root: str | Path | None = None,
    series: Sequence[str] | None = None,
    frequency: str | pd.Timedelta | None = None,
    binning: str | Binning | None = None,
) -> Trace:
    """Load a dataset by card name, card file (a path ending in .yaml) or card from `root` (default
    $HARMONY_DATA_DIR) into a clean Trace.

    `frequency` re-bins (event traces, a user's table: the rows themselves) or re-samples (a trace on its own
    grid: the mean of each left-closed bin of a whole multiple of its step) to another step; `binning`
    ('nearest' or 'left') overrides the card's `cleaning.binning`, the grid point a row's timestamp goes to.
    """
    # Loaders register themselves on import.
    import harmony.data.loaders  # noqa: F401

    if isinstance(name_or_card, str):
        is_file = name_or_card.endswith((".yaml", ".yml"))
        card = load_card(name_or_card) if is_file else get_card(name_or_card)
    else:
        card = name_or_card
    try:
        loader = _LOADERS[card.loader]
    except KeyError:
        raise CardError(
            f"loader {card.loader!r} is not known; known loaders: {sorted(_LOADERS)}", path=card.path
        ) from None
    if binning is not None:
        rule = parse_binning(binning) if isinstance(binning, str) else binning
        card = replace(card, cleaning=replace(card.cleaning, binning=rule))
    folder = dataset_root(card, root)
    if not folder.is_dir():
        raise DataError(
            f"dataset folder not found; run `harmony datasets fetch {card.name}` or set {DATA_DIR_ENV} "
            "to the folder that holds the traces",
            path=folder,
        )
    if frequency is None:
        return loader(card, folder, series)
    freq = parse_frequency(frequency, where="--freq") if isinstance(frequency, str) else frequency
    native = {int(k) for k in (card.options.get("files_by_step") or {})}
    if card.options.get("rebin") or card.loader == "table" or int(freq.total_seconds()) in native:
        # Event traces are binned, multi-resolution traces read, and a user's table's rows put on the grid
        # (by the card's binning, not an already snapped grid averaged again), at the asked step directly.
        return loader(replace(card, frequency=freq), folder, series)
    return loader(card, folder, series).resample(freq)
