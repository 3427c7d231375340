"""Typed, validated training configurations: a YAML file plus `--set a.b=value` overrides.

A configuration has five sections (see docs/training.md for every key):

    data:       which trace, which series, resampling, and the chronological split
    model:      registered forecaster name, window geometry, targets and hyper-parameters
    trainer:    Lightning's epochs, accelerator/devices/strategy, progress bars, seed
    tracking:   MLflow experiment, run name, local folder for checkpoints and run state
    evaluation: how the test split is scored (draws per window, windows per series)

`load_config(path, overrides)` rejects unknown keys and values of the wrong type with a `ConfigError` that
names the file, the dotted key and what was expected (and the `--set` that produced it, if one did).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from harmony.data.errors import DataError

DEFAULT_SPLIT: tuple[float, float, float] = (0.7, 0.1, 0.2)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "hpu", "auto")
# Hyper-parameters that the trainer section owns: one place to set them, so a run cannot say two things.
TRAINER_OWNED_HPARAMS = {"seed": "trainer.seed", "max_epochs": "trainer.max_epochs"}
# What a run name may be: it names a folder and an MLflow run (training and backtest configs share it).
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(DataError):
    """A training configuration is invalid; the message names the file and the dotted key."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    series: list[str] | None = None
    frequency: str | None = None
    binning: str | None = None  # 'nearest' or 'left': overrides the card's cleaning.binning
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_by: Literal["time", "rows"] = "time"
    root: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    lookback: int
    horizon: int
    name: str = "harmony"
    lead_time: int = 0
    targets: list[str] | None = None
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 30
    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    num_nodes: int = 1  # machines of a multi-node DDP run (torchrun); devices is per node
    strategy: str = "auto"
    progress: bool = True
    seed: int = 0
    num_threads: int | None = None


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "harmony"
    run_name: str | None = None
    output_dir: str | None = None


@dataclass(frozen=True)
class EvaluationConfig:
    num_samples: int = 100
    max_windows_per_series: int = 50


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Where the configuration came from: not a key of the file, kept for messages and artifacts.
    source: Path | None = field(default=None, compare=False)
    overrides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def run_name(self) -> str:
        if self.tracking.run_name:
            return self.tracking.run_name
        if self.source is not None:
            return self.source.stem
        return f"{Path(self.data.dataset).stem}-{self.model.name}"

    @property
    def output_dir(self) -> Path:
        return Path(self.tracking.output_dir) if self.tracking.output_dir else Path("runs") / self.run_name

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain YAML-able data (the keys of the file, defaults filled in)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("source", "overrides"):
                continue
            section = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def flat(self) -> dict[str, str]:
        """Dotted keys to strings (MLflow params)."""
        return dict(_flatten(self.to_dict()))


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        elif isinstance(v, list):
            yield key, ",".join(str(x) for x in v)
        else:
            yield key, "null" if v is None else str(v)


# --- YAML ------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a number: PyYAML follows YAML 1.1, where a float needs a dot,
    so a learning rate written the usual way would otherwise arrive as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A `--set` value, typed the way YAML types it (`2` int, `false` bool, `[a, b]` list, `null`)."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


# --- validation --------------------------------------------------------------------------------------------


class ConfigContext:
    """The file being read and the `--set` overrides, to name both in every error.

    Shared by every reader of configuration files (training here, the backtest in harmony.backtest), so
    their errors read the same: `ctx.error("a.b", "expected ...")` is a ConfigError naming the file, the
    dotted key and the `--set` that produced it.
    """

    def __init__(self, path: Path | None, overrides: Mapping[str, str]) -> None:
        self.path = path
        self.overrides = dict(overrides)

    def error(self, key: str, message: str) -> ConfigError:
        origin = [
            f"--set {k}={v}"
            for k, v in self.overrides.items()
            if k == key or key.startswith(k + ".") or k.startswith(key + ".")
        ]
        suffix = f" (from {', '.join(origin)})" if origin else ""
        return ConfigError(f"{key}: {message}{suffix}", path=self.path)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is tuple:
        args = get_args(tp)
        return f"a list of {len(args)} numbers"
    if origin is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _got(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"got {value!r} ({kind})"


def _coerce(value: Any, tp: Any, key: str, ctx: ConfigContext) -> Any:
    """The value as type `tp`, or a ConfigError naming `key`."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        container_error: ConfigError | None = None
        for option in get_args(tp):
            try:
                return _coerce(value, option, key, ctx)
            except ConfigError as exc:
                # A list that fits a list option but has a bad item: name the item, not the whole union.
                if isinstance(value, list) and get_origin(option) in (list, tuple):
                    container_error = exc
        if container_error is not None:
            raise container_error
        raise ctx.error(key, f"expected {_describe(tp)}, {_got(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ctx.error(key, f"expected a mapping of {tp.__name__} keys, {_got(value)}")
        return build_section(tp, value, key, ctx)
    ok = True
    out = value
    if tp is type(None):
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        out = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Any:
        ok = True
    elif origin is Literal:
        ok = value in get_args(tp)
    elif origin is list:
        if not isinstance(value, list):
            raise ctx.error(key, f"expected {_describe(tp)}, {_got(value)}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    elif origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ctx.error(key, f"expected {_describe(tp)}, {_got(value)}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]", ctx) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    elif origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ctx.error(key, f"expected a mapping with string keys, {_got(value)}")
        return dict(value)
    else:  # a type this module does not declare: a programming error, not a user error
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    if not ok:
        raise ctx.error(key, f"expected {_describe(tp)}, {_got(value)}")
    return out


def build_section(cls: type[Any], raw: Mapping[str, Any], where: str, ctx: ConfigContext) -> Any:
    """The dataclass `cls` built from the mapping `raw` found at dotted key `where` ("" at the top level).

    Every key must be a field of `cls` (an unknown key is an error that suggests the closest one), every
    value is checked against the field's type (nested dataclasses are built the same way), and fields
    without a default must be there. Errors are ConfigErrors from `ctx`.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source", "overrides")}
    prefix = f"{where}." if where else ""
    for k in raw:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(
                f"{prefix}{k}",
                f"unknown key; known keys{' in ' + repr(where) if where else ''}: {', '.join(fields)}{hint}",
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], key, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(key, f"missing; expected {_describe(hints[name])}")
    return cls(**values)


# --- semantic checks ---------------------------------------------------------------------------------------


def _check(cfg: TrainConfig, ctx: ConfigContext) -> None:
    from harmony.data.spec import parse_binning, parse_frequency

    d, m, t, tr, ev = cfg.data, cfg.model, cfg.trainer, cfg.tracking, cfg.evaluation
    if any(f < 0 for f in d.split) or abs(sum(d.split) - 1.0) > 1e-9:
        raise ctx.error(
            "data.split", f"expected three non-negative fractions summing to 1, got {list(d.split)}"
        )
    if d.split[0] <= 0 or d.split[2] <= 0:
        raise ctx.error(
            "data.split", "the train and test fractions must be > 0 (test metrics need a test part)"
        )
    if d.series is not None and not d.series:
        raise ctx.error("data.series", "expected a non-empty list of series ids, or null for every series")
    for key, value, parse in (
        ("data.frequency", d.frequency, parse_frequency),
        ("data.binning", d.binning, parse_binning),
    ):
        if value is None:
            continue
        try:
            parse(value, where=key)
        except DataError as exc:
            # The parser names the key too: say it once.
            raise ctx.error(key, exc.message.removeprefix(f"{key}: ")) from None
    card_indicators = _card_indicators(cfg, ctx)

    if m.lookback < 2:
        raise ctx.error("model.lookback", f"expected an integer >= 2, got {m.lookback}")
    if m.horizon < 1:
        raise ctx.error("model.horizon", f"expected an integer >= 1, got {m.horizon}")
    if m.lead_time < 0:
        raise ctx.error("model.lead_time", f"expected an integer >= 0, got {m.lead_time}")
    if m.targets is not None:
        if not m.targets:
            raise ctx.error(
                "model.targets", "expected a non-empty list of indicators, or null for the default"
            )
        dup = sorted({x for x in m.targets if m.targets.count(x) > 1})
        if dup:
            raise ctx.error("model.targets", f"duplicate targets {dup}")
        unknown = [x for x in m.targets if x not in card_indicators]
        if unknown:
            raise ctx.error(
                "model.targets", f"unknown indicators {unknown}; {d.dataset} has {', '.join(card_indicators)}"
            )
    _check_model(m, ctx)

    if t.max_epochs < 1:
        raise ctx.error("trainer.max_epochs", f"expected an integer >= 1, got {t.max_epochs}")
    if t.accelerator not in ACCELERATORS:
        raise ctx.error(
            "trainer.accelerator", f"expected one of {', '.join(ACCELERATORS)}, got {t.accelerator!r}"
        )
    if isinstance(t.devices, str) and t.devices != "auto":
        raise ctx.error(
            "trainer.devices", f"expected a count, a list of device indices or 'auto', got {t.devices!r}"
        )
    if isinstance(t.devices, int) and t.devices < 1 and t.devices != -1:
        raise ctx.error("trainer.devices", f"expected a count >= 1 (or -1 for all), got {t.devices}")
    if t.num_nodes < 1:
        raise ctx.error("trainer.num_nodes", f"expected an integer >= 1, got {t.num_nodes}")
    if isinstance(t.devices, list) and (not t.devices or any(i < 0 for i in t.devices)):
        raise ctx.error("trainer.devices", f"expected a non-empty list of device indices, got {t.devices}")
    if t.num_threads is not None and t.num_threads < 1:
        raise ctx.error("trainer.num_threads", f"expected an integer >= 1 or null, got {t.num_threads}")
    if t.seed < 0:
        raise ctx.error("trainer.seed", f"expected an integer >= 0, got {t.seed}")
    if not t.strategy:
        raise ctx.error("trainer.strategy", "expected a Lightning strategy name such as 'auto' or 'ddp'")

    if not tr.experiment:
        raise ctx.error("tracking.experiment", "expected a non-empty experiment name")
    if tr.run_name is not None and not RUN_NAME_PATTERN.match(tr.run_name):
        raise ctx.error(
            "tracking.run_name",
            f"expected letters, digits, '_', '.', '-' (it names a folder), got {tr.run_name!r}",
        )
    if ev.num_samples < 2:
        raise ctx.error("evaluation.num_samples", f"expected an integer >= 2, got {ev.num_samples}")
    if ev.max_windows_per_series < 1:
        raise ctx.error(
            "evaluation.max_windows_per_series", f"expected an integer >= 1, got {ev.max_windows_per_series}"
        )


def _card_indicators(cfg: TrainConfig, ctx: ConfigContext) -> list[str]:
    """The dataset's indicator names; the dataset (a card name or a card file) must exist."""
    from harmony.data.catalog import get_card
    from harmony.data.spec import load_card

    name = cfg.data.dataset
    if name.endswith((".yaml", ".yml")) and not resolve_card_path(name, cfg.source).exists():
        looked = [Path(name).resolve()]
        if cfg.source is not None and not Path(name).is_absolute():
            looked.append((cfg.source.parent / name).resolve())
        raise ctx.error(
            "data.dataset",
            "dataset card not found; looked for "
            + " and ".join(str(p) for p in looked)
            + " (a relative path counts from the working directory, then from the config's folder)",
        )
    try:
        if name.endswith((".yaml", ".yml")):
            card = load_card(resolve_card_path(name, cfg.source))
        else:
            card = get_card(name)
    except FileNotFoundError as exc:
        raise ctx.error("data.dataset", f"card file not found: {exc.filename or name}") from None
    except DataError as exc:
        raise ctx.error("data.dataset", str(exc)) from None
    return [i.name for i in card.indicators]


def resolve_card_path(name: str, source: Path | None) -> Path:
    """A card path as written: relative to the working directory, else to the config file's folder."""
    p = Path(name)
    if p.is_absolute() or p.exists() or source is None:
        return p
    beside = source.parent / p
    return beside if beside.exists() else p


def _check_model(m: ModelConfig, ctx: ConfigContext) -> None:
    import harmony.model.registry  # noqa: F401  (registers every model)
    from harmony.model.base import Forecaster
    from harmony.model.neural import NEURAL_DEFAULTS, UNLIMITED_HPARAMS, NeuralForecaster

    known = Forecaster.registered()
    if m.name not in known:
        raise ctx.error(
            "model.name", f"unknown model {m.name!r}; registered models: {', '.join(sorted(known))}"
        )
    for k, owner in TRAINER_OWNED_HPARAMS.items():
        if k in m.hparams:
            raise ctx.error(f"model.hparams.{k}", f"set it with {owner} instead (one place for each setting)")
    cls = known[m.name]
    if not issubclass(cls, NeuralForecaster):
        return  # other forecasters validate their own hyper-parameters
    defaults = {**NEURAL_DEFAULTS, **cls.default_hparams()}
    for k, v in m.hparams.items():
        key = f"model.hparams.{k}"
        if k not in defaults:
            close = difflib.get_close_matches(k, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(sorted(set(defaults) - set(TRAINER_OWNED_HPARAMS)))
            raise ctx.error(key, f"unknown hyper-parameter of model {m.name!r}; known: {allowed}{hint}")
        default = defaults[k]
        if default is None or (v is None and k in UNLIMITED_HPARAMS):
            continue
        expected: Any = float if isinstance(default, float) else type(default)
        value = _coerce(v, expected, key, ctx)
        # Every numeric hyper-parameter (sizes, rates, noise, floors) is a count or a non-negative amount.
        if expected in (int, float) and not (math.isfinite(value) and value >= 0):
            raise ctx.error(key, f"expected a number >= 0, got {value!r}")


# --- entry point -------------------------------------------------------------------------------------------


def _split_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. model.lookback=144")
    return key, value


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str], path: Path | None = None
) -> dict[str, str]:
    """Set each `a.b=value` in `raw` (in place); returns {dotted key: value text} for error messages."""
    applied: dict[str, str] = {}
    for text in overrides:
        key, value_text = _split_override(text)
        parts = key.split(".")
        node: dict[str, Any] = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {text}: {where} is {child!r}, not a section with keys", path=path)
            node = child
        node[parts[-1]] = parse_value(value_text)
        applied[key] = value_text
    return applied


def config_from_dict(
    raw: Mapping[str, Any],
    *,
    source: Path | None = None,
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """Validate a configuration given as data (the parsed YAML); overrides are applied first."""
    data = _deep_copy(raw)
    applied = apply_overrides(data, overrides, source)
    ctx = ConfigContext(source, applied)
    cfg: TrainConfig = build_section(TrainConfig, data, "", ctx)
    cfg = dataclasses.replace(cfg, source=source, overrides=tuple(overrides))
    _check(cfg, ctx)
    return cfg


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    copy: Callable[[Any], Any] = lambda v: _deep_copy(v) if isinstance(v, Mapping) else v  # noqa: E731
    return {k: copy(v) for k, v in raw.items()}


def read_yaml(path: Path) -> dict[str, Any]:
    """A configuration file's top-level mapping (empty for an empty file); errors name the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("configuration file not found", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror}", path=path) from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=path) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of sections, got {type(raw).__name__}", path=path)
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training configuration and apply `--set a.b=value` overrides (values typed as YAML)."""
    p = Path(path)
    raw = read_yaml(p)
    return config_from_dict(raw, source=p, overrides=overrides)
