"""Azure LLM inference trace 2023: per-request arrivals with token counts, binned into per-second rates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from harmony.data.catalog import register_loader
from harmony.data.clean import SeriesReport, bin_events
from harmony.data.errors import DataError
from harmony.data.loaders.common import require, select_ids
from harmony.data.spec import DatasetCard, IndicatorSpec, Kind
from harmony.data.table import read_table
from harmony.data.trace import Trace

FILES = {"code": "AzureLLMInferenceTrace_code.csv", "conv": "AzureLLMInferenceTrace_conv.csv"}
_TOKENS = (
    IndicatorSpec("ContextTokens", "tokens", 1, Kind.RESOURCE),
    IndicatorSpec("GeneratedTokens", "tokens", 1, Kind.RESOURCE),
)


@register_loader("azure_llm")
def load_azure_llm(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    ids = select_ids(FILES, series, card.name)
    frames: dict[str, pd.DataFrame] = {}
    reports: dict[str, SeriesReport] = {}
    notes = []
    for sid in ids:
        path = require(root / FILES[sid], card.name)
        (table,) = read_table(path, timestamp_column="TIMESTAMP", indicators=_TOKENS).values()
        tokens = table.values
        missing = np.isnan(tokens).any(axis=1)
        if missing.any():
            raise DataError(
                "token count is empty; expected a whole number of tokens",
                path=path,
                row=int(table.rows[missing][0]),
            )
        weights: dict[str, np.ndarray] = {}
        for spec in card.indicators:
            if spec.name == "requests_per_s":
                weights[spec.name] = np.ones(len(tokens))
            elif spec.name == "prompt_tokens_per_s":
                weights[spec.name] = tokens[:, 0]
            elif spec.name == "generated_tokens_per_s":
                weights[spec.name] = tokens[:, 1]
            else:
                raise DataError(
                    f"card names indicator {spec.name!r} with no column in the trace", path=card.path
                )
        index, rates = bin_events(table.timestamps_ns, weights, card.frequency)
        frames[sid] = pd.DataFrame({s.name: rates[s.name] * s.scale for s in card.indicators}, index=index)
        out_of_order = int(np.count_nonzero(np.diff(table.timestamps_ns) < 0))
        reports[sid] = SeriesReport(rows_in=len(tokens), points_out=len(index), out_of_order=out_of_order)
        notes.append(
            f"{sid}: {len(tokens)} requests in {len(index)} bins of {card.frequency}; empty bins are 0"
        )
    return Trace(card.name, card.frequency, card.indicators, frames, reports, card, tuple(notes))
