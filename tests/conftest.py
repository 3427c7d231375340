"""Shared fixtures. Tests run on the real staged traces: HARMONY_DATA_DIR must point at them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harmony.data.catalog import load
from harmony.data.trace import Trace


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("HARMONY_DATA_DIR")
    if not root or not Path(root).is_dir():
        pytest.fail(
            "HARMONY_DATA_DIR must point at the real traces (make test sets it to ../shared/datasets)",
            pytrace=False,
        )
    return Path(root)


# pytest runs with -n 2 on 2 cores: one torch thread per worker, or the workers' thread pools fight and
# training slows down a hundredfold.
torch.set_num_threads(1)

_CACHE: dict[str, Trace] = {}


@pytest.fixture(scope="session")
def load_trace(data_root: Path):  # type: ignore[no-untyped-def]
    """Load a dataset once per test session."""

    def _load(name: str) -> Trace:
        if name not in _CACHE:
            _CACHE[name] = load(name, root=data_root)
        return _CACHE[name]

    return _load
