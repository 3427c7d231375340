"""What every forecaster is asked to do, and how it is saved without pickles.

A forecaster maps the lookback of every indicator to draws of the target indicators over the horizon:
`sample(history [B, L, N], n, last_time [B]) -> [B, n, H, T]` in original units. The horizon covers the
steps lead_time+1 .. lead_time+horizon after the last observed step (see harmony.data.windows).
Saved form: a folder with `forecaster.json` (model name, spec, hyper-parameters, extra state) and
`weights.safetensors`; loading never unpickles anything.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from harmony.data.spec import Kind
from harmony.data.trace import Trace
from harmony.data.windows import Split

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ForecastSpec:
    """Inputs, targets and geometry of a forecast."""

    indicators: tuple[str, ...]
    targets: tuple[str, ...]
    levels: tuple[int, ...]
    lookback: int
    horizon: int
    lead_time: int
    frequency_s: float

    def __post_init__(self) -> None:
        missing = [t for t in self.targets if t not in self.indicators]
        if missing:
            raise ValueError(f"targets {missing} are not among the indicators {list(self.indicators)}")
        if len(self.levels) != len(self.indicators):
            raise ValueError("one level per indicator is needed")
        if self.lookback < 2 or self.horizon < 1 or self.lead_time < 0:
            raise ValueError(f"need lookback >= 2, horizon >= 1, lead_time >= 0; got {self}")

    @property
    def target_index(self) -> list[int]:
        return [self.indicators.index(t) for t in self.targets]

    @property
    def frequency(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.frequency_s)

    @classmethod
    def for_trace(
        cls,
        trace: Trace,
        *,
        lookback: int,
        horizon: int,
        lead_time: int = 0,
        targets: list[str] | None = None,
        indicators: list[str] | None = None,
    ) -> ForecastSpec:
        specs = [trace.indicator(n) for n in indicators] if indicators else list(trace.indicators)
        if targets is None:
            targets = [s.name for s in specs if s.kind is not Kind.CONTEXT]
        return cls(
            indicators=tuple(s.name for s in specs),
            targets=tuple(targets),
            levels=tuple(s.level for s in specs),
            lookback=lookback,
            horizon=horizon,
            lead_time=lead_time,
            frequency_s=trace.frequency.total_seconds(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ForecastSpec:
        return cls(
            indicators=tuple(raw["indicators"]),
            targets=tuple(raw["targets"]),
            levels=tuple(int(x) for x in raw["levels"]),
            lookback=int(raw["lookback"]),
            horizon=int(raw["horizon"]),
            lead_time=int(raw["lead_time"]),
            frequency_s=float(raw["frequency_s"]),
        )


def calendar_features(times_ns: np.ndarray) -> np.ndarray:
    """Hour-of-day and day-of-week as sin/cos pairs: [..., 4], float32."""
    seconds = np.asarray(times_ns, dtype=np.int64) // 1_000_000_000
    day = (seconds % 86_400) / 86_400.0
    week = ((seconds // 86_400 + 3) % 7 + day) / 7.0  # 1970-01-01 was a Thursday: +3 makes Monday 0
    two_pi = 2 * np.pi
    return np.stack(
        [np.sin(two_pi * day), np.cos(two_pi * day), np.sin(two_pi * week), np.cos(two_pi * week)], axis=-1
    ).astype(np.float32)


N_CALENDAR = 4


@dataclass
class FitReport:
    """What training did: per-epoch losses and where the best weights came from."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    epochs: int = 0
    seconds: float = 0.0


class Forecaster(ABC):
    """A probabilistic multi-indicator forecaster behind one interface."""

    name: ClassVar[str]
    _registry: ClassVar[dict[str, type[Forecaster]]] = {}

    def __init__(self, spec: ForecastSpec, **hparams: Any) -> None:
        self.spec = spec
        self.hparams: dict[str, Any] = dict(hparams)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Forecaster._registry[cls.name] = cls

    @classmethod
    def registered(cls) -> dict[str, type[Forecaster]]:
        return dict(Forecaster._registry)

    @abstractmethod
    def fit(self, trace: Trace, split: Split, **options: Any) -> FitReport:
        """Learn from the train part of `split` (validation part for early stopping)."""

    @abstractmethod
    def sample(
        self,
        history: np.ndarray,
        n: int,
        last_time: np.ndarray | pd.Timestamp | None = None,
        *,
        seed: int | None = None,
    ) -> np.ndarray:
        """Draws `[B, n, H, T]` (or `[n, H, T]` for a single `[L, N]` history) in original units."""

    # --- persistence -----------------------------------------------------------------------------------
    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors."""

    @abstractmethod
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of state_tensors."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable state beside the tensors."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "spec": self.spec.to_dict(),
            "hparams": self.hparams,
            "extra": self.extra_state(),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
        # Temporary names then rename: a crash never leaves a half-written model.
        save_file(tensors, str(d / "weights.safetensors.tmp"))
        (d / "forecaster.json.tmp").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (d / "weights.safetensors.tmp").replace(d / "weights.safetensors")
        (d / "forecaster.json.tmp").replace(d / "forecaster.json")
        return d

    @staticmethod
    def load(directory: str | Path) -> Forecaster:
        d = Path(directory)
        try:
            meta = json.loads((d / "forecaster.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{d}: no forecaster.json (not a saved harmony forecaster)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{d / 'forecaster.json'}: corrupt JSON: {exc}") from None
        import harmony.model.registry  # noqa: F401  (registers every model)

        name = meta.get("model")
        if name not in Forecaster._registry:
            raise ValueError(f"{d}: unknown model {name!r}; known: {sorted(Forecaster._registry)}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        model = Forecaster._registry[name](ForecastSpec.from_dict(meta["spec"]), **meta.get("hparams", {}))
        model.load_extra_state(meta.get("extra", {}))
        try:
            tensors = load_file(str(d / "weights.safetensors"))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{d / 'weights.safetensors'}: unreadable weights: {exc}") from None
        model.load_state_tensors(tensors)
        return model


def as_batch(
    history: np.ndarray, last_time: np.ndarray | pd.Timestamp | None, spec: ForecastSpec
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Check and normalise `sample` arguments to ([B, L, N] float32, [B] int64 ns, was_single)."""
    h = np.asarray(history, dtype=np.float32)
    single = h.ndim == 2
    if single:
        h = h[None]
    if h.ndim != 3 or h.shape[1:] != (spec.lookback, len(spec.indicators)):
        raise ValueError(
            f"history must be [{spec.lookback}, {len(spec.indicators)}] (lookback x indicators) per series, "
            f"got shape {h.shape}"
        )
    if last_time is None:
        t = np.zeros(h.shape[0], dtype=np.int64)
    elif isinstance(last_time, pd.Timestamp):
        t = np.full(h.shape[0], last_time.value, dtype=np.int64)
    else:
        t = np.asarray(
            pd.DatetimeIndex(last_time).asi8
            if not np.issubdtype(np.asarray(last_time).dtype, np.integer)
            else last_time,
            dtype=np.int64,
        ).reshape(-1)
    if t.shape[0] != h.shape[0]:
        raise ValueError(f"{h.shape[0]} histories but {t.shape[0]} last times")
    return h, t, single
