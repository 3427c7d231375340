"""What a training configuration trains on: the dataset card, the cleaned trace, its chronological split and
the forecast spec, with an error that says how to get windows when a part has none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harmony.data.catalog import get_card, load
from harmony.data.spec import DatasetCard, load_card
from harmony.data.trace import Trace
from harmony.data.windows import Split, WindowDataset, WindowSpec, chronological_split
from harmony.model.base import ForecastSpec
from harmony.training.config import TrainConfig, resolve_card_path
from harmony.training.errors import TrainError

__all__ = ["load_data", "split_json"]


def _card(config: TrainConfig) -> DatasetCard:
    name = config.data.dataset
    if name.endswith((".yaml", ".yml")):
        return load_card(resolve_card_path(name, config.source))
    return get_card(name)


def load_data(config: TrainConfig) -> tuple[DatasetCard, Trace, Split, ForecastSpec]:
    """The trace, its chronological split and the forecast spec a configuration asks for."""
    d, m = config.data, config.model
    card = _card(config)
    trace = load(card, root=d.root, series=d.series, frequency=d.frequency, binning=d.binning)
    split = chronological_split(trace, d.split, by=d.split_by)
    spec = ForecastSpec.for_trace(
        trace, lookback=m.lookback, horizon=m.horizon, lead_time=m.lead_time, targets=m.targets
    )
    window = WindowSpec(lookback=m.lookback, horizon=m.horizon, lead_time=m.lead_time)
    for part in ("train", "test"):
        n = len(WindowDataset(trace, split, part, window, indicators=list(spec.indicators)))
        if n == 0:
            raise TrainError(
                f"no {part} windows: each series needs {window.span} consecutive points without gaps "
                f"(model.lookback + model.lead_time + model.horizon) inside its {part} part"
                + _gap_advice(trace, split, part, list(spec.indicators), window.span),
                path=config.source,
            )
    return card, trace, split, spec


def _gap_advice(trace: Trace, split: Split, part: str, indicators: list[str], span: int) -> str:
    """Why the windows are missing and what fills them: the longest gap-free run of the part, the gaps that
    cleaning left (runs of grid points longer than cleaning.max_fill_steps), and the setting that would
    bridge them."""
    longest, longest_sid, gaps = 0, "", []
    for sid in trace.series_ids:
        a, b, n = split.boundaries[sid]
        lo, hi = {"train": (0, a), "val": (a, b), "test": (b, n)}[part]
        ok = trace[sid][indicators].iloc[lo:hi].notna().all(axis=1).to_numpy()
        edges = np.flatnonzero(np.diff(np.concatenate(([0], ok.astype(np.int8), [0]))))
        runs = edges[1::2] - edges[::2]  # gap-free runs
        if runs.size and int(runs.max()) > longest:
            longest, longest_sid = int(runs.max()), sid
        holes = np.flatnonzero(np.diff(np.concatenate(([1], ok.astype(np.int8), [1]))))
        gaps.extend((holes[1::2] - holes[::2]).tolist())  # missing runs
    rules = trace.card.cleaning if trace.card is not None else None
    step = trace.frequency
    out = f"; the longest gap-free run is {longest} points" + (f" ({longest_sid})" if longest_sid else "")
    if gaps:
        out += (
            f", between {len(gaps)} gap(s) of {min(gaps)} to {max(gaps)} missing points (median "
            f"{int(np.median(gaps))}) that cleaning left unfilled"
        )
        if rules is not None:
            out += (
                f". cleaning.max_fill_steps (the dataset card's cleaning section; counted in grid steps of "
                f"{step}, after any re-binning) is {rules.max_fill_steps}: gaps up to that many steps are "
                f"filled by interpolation, so max_fill_steps: {max(gaps)} would fill them all"
            )
    return out + "; or shorten the window (model.lookback, model.horizon), or change data.split"


def split_json(trace: Trace, split: Split) -> dict[str, Any]:
    out: dict[str, Any] = {"fractions": list(split.fractions), "by": split.by, "series": {}}
    for sid, (a, b, n) in split.boundaries.items():
        idx = trace[sid].index
        out["series"][sid] = {
            part: {"points": hi - lo, "start": str(idx[lo]) if hi > lo else None}
            for part, (lo, hi) in {"train": (0, a), "val": (a, b), "test": (b, n)}.items()
        }
    return out
