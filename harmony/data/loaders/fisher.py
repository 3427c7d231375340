"""Fisher containers: one CSV per container (container1.csv ... container10.csv), 10-minute samples."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from harmony.data.catalog import register_loader
from harmony.data.errors import DataError
from harmony.data.loaders.common import assemble, select_ids
from harmony.data.spec import DatasetCard
from harmony.data.table import read_table
from harmony.data.trace import Trace


@register_loader("fisher")
def load_fisher(card: DatasetCard, root: Path, series: Sequence[str] | None) -> Trace:
    files = {p.stem: p for p in root.glob("container*.csv")}
    if not files:
        raise DataError("no container*.csv files; run `harmony datasets fetch fisher_containers`", path=root)
    ids = sorted(files, key=lambda s: int(re.sub(r"\D", "", s) or 0))
    ids = select_ids(ids, series, card.name)
    raw, sources = {}, {}
    for sid in ids:
        # Naive timestamps are UTC (the publisher gives no zone).
        table = read_table(files[sid], timestamp_column="date", indicators=card.indicators)
        (only,) = table.values()
        raw[sid] = only
        sources[sid] = str(files[sid])
    return assemble(card, raw, sources)
