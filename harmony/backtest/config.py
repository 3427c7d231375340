"""The backtest's configuration read from YAML (with a training config, or another backtest config, as
`base:`) and `--set` overrides, into the typed sections of `harmony.backtest.sections`, checked by
`harmony.backtest.checks` (every error names the file and the dotted key).

Each policy's section lists the values of each of its knobs to search on the validation part: the first
knob is the policy's *primary* knob (the one that trades cost for violations: eps, target utilisation,
margin, headroom), the others are its *secondary* knobs (stabilisation windows, tolerance, rate rules,
forgetting). The first value of a secondary list is where the search starts (docs/backtest.md, "Choosing
the knobs").
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harmony.backtest.checks import check_config
from harmony.backtest.sections import (
    BACKTEST_SECTIONS,
    POLICY_ORDER,
    SWEEPS,
    TOP_LEVEL,
    TRAINING_SECTIONS,
    BacktestConfig,
    BacktestSections,
    PoliciesConfig,
)
from harmony.training.config import (
    ConfigContext,
    ConfigError,
    apply_overrides,
    build_section,
    config_from_dict,
    read_yaml,
    resolve_card_path,
)

__all__ = ["load_backtest_config"]


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section and key by key (a value replaces, a mapping merges)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve(name: str, source: Path | None) -> Path:
    p = Path(name)
    if p.is_absolute() or source is None:
        return p
    beside = source.parent / p
    return beside if beside.exists() or not p.exists() else p


def load_backtest_config(path: str | Path, overrides: Sequence[str] = ()) -> BacktestConfig:
    """Read a backtest YAML and apply `--set a.b=value` overrides (any section, training ones included).

    The file may name under `base:` (relative to the working directory or to the file) a training
    configuration, whose sections (data, model, trainer, tracking, evaluation) it overrides key by key, or
    another backtest configuration, whose every section it overrides the same way except the report's
    run_name and output_dir (a variant writes its own results). Errors name the file and the dotted key (a
    base file's own errors name the base file).
    """
    return _load(Path(path), overrides, ())


def _load(p: Path, overrides: Sequence[str], chain: tuple[Path, ...]) -> BacktestConfig:
    merged, base_path = _raw_sections(p, chain)
    return _build(p, merged, base_path, overrides)


def _build(
    p: Path, merged: dict[str, Any], base_path: Path | None, overrides: Sequence[str]
) -> BacktestConfig:
    """The typed, checked configuration of file `p` from its merged sections."""
    train_sets = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] in TRAINING_SECTIONS]
    own_sets = [o for o in overrides if o not in train_sets]
    train = config_from_dict(
        {k: v for k, v in merged.items() if k in TRAINING_SECTIONS}, source=p, overrides=train_sets
    )
    own = {k: v for k, v in merged.items() if k in BACKTEST_SECTIONS}
    applied = apply_overrides(own, own_sets, p)
    bad = [k for k in own if k not in BACKTEST_SECTIONS]
    if bad:
        raise ConfigError(f"--set {bad[0]}: unknown section; known sections: {', '.join(TOP_LEVEL)}", path=p)
    ctx = ConfigContext(p, applied)
    policies = _build_policies(own.pop("policies", None), ctx)
    sections: BacktestSections = build_section(BacktestSections, own, "", ctx)
    sections = dataclasses.replace(sections, policies=policies)
    cfg = BacktestConfig(
        train=train,
        base=base_path,
        source=p,
        overrides=tuple(overrides),
        **{f.name: getattr(sections, f.name) for f in dataclasses.fields(sections)},
    )
    check_config(cfg, ctx)
    return cfg


# A backtest base lends every section but the name and folder of its run: a variant (another lead time, say)
# must not write over the results of the config it starts from.
_NOT_INHERITED = ("run_name", "output_dir")


def _raw_sections(
    p: Path, chain: tuple[Path, ...], raw: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Path | None]:
    """The file's sections on top of its `base:` (a training config, or another backtest config whose own
    base is resolved the same way), unvalidated; and the base's path. `raw`: the file, when already read."""
    raw = read_yaml(p) if raw is None else raw
    for k in raw:
        if k not in TOP_LEVEL:
            close = difflib.get_close_matches(str(k), TOP_LEVEL, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{k}: unknown section; known sections: {', '.join(TOP_LEVEL)}{hint}", path=p)
    if raw.get("base") is None:
        return {k: v for k, v in raw.items() if k != "base"}, None
    if not isinstance(raw["base"], str):
        raise ConfigError(
            f"base: expected the path of a training or backtest config, got {raw['base']!r}", path=p
        )
    base_path = _resolve(raw["base"], p)
    if base_path.resolve() in chain or base_path.resolve() == p.resolve():
        raise ConfigError(f"base: {raw['base']} leads back to this file (a cycle of bases)", path=p)
    base_raw = read_yaml(base_path)
    if "base" in base_raw or any(k in base_raw for k in BACKTEST_SECTIONS):
        merged, base_base = _raw_sections(base_path, (*chain, p.resolve()), base_raw)
        # The base must be valid on its own (its errors name it), from what was read once.
        _build(base_path, copy.deepcopy(merged), base_base, ())
        report = merged.get("report")
        if isinstance(report, dict):
            merged["report"] = {k: v for k, v in report.items() if k not in _NOT_INHERITED}
    else:
        config_from_dict(base_raw, source=base_path)  # the base must be valid on its own; errors name it
        # A card path in the base is relative to the base's folder: pin it before this file's folder counts.
        data = base_raw.get("data")
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if isinstance(data, dict) and isinstance(dataset, str) and dataset.endswith((".yaml", ".yml")):
            data["dataset"] = str(resolve_card_path(dataset, base_path).resolve())
        merged = {k: v for k, v in base_raw.items() if k in TRAINING_SECTIONS}
    return _merge(merged, {k: v for k, v in raw.items() if k != "base"}), base_path


def _build_policies(raw: Any, ctx: ConfigContext) -> PoliciesConfig:
    """`policies:` entry by entry (null or false leaves a policy out), so that errors name the inner key.
    A policy the file does not name keeps its default section."""
    if raw is None:
        return PoliciesConfig()
    if not isinstance(raw, Mapping):
        raise ctx.error("policies", f"expected a mapping of policy: sweep, got {raw!r}")
    values: dict[str, Any] = {}
    for name, entry in raw.items():
        key = f"policies.{name}"
        if name not in POLICY_ORDER:
            close = difflib.get_close_matches(str(name), POLICY_ORDER, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ctx.error(key, f"unknown policy; known: {', '.join(POLICY_ORDER)}{hint}")
        if name == "oracle":
            if not isinstance(entry, bool | None):
                raise ctx.error(key, f"expected true or false, got {entry!r}")
            values[name] = bool(entry)
        elif entry is None or entry is False:
            values[name] = None
        elif entry is True:
            values[name] = SWEEPS[name]()
        elif isinstance(entry, Mapping):
            values[name] = build_section(SWEEPS[name], entry, key, ctx)
        else:
            raise ctx.error(
                key, f"expected a mapping of knob settings, or null to leave it out, got {entry!r}"
            )
    return PoliciesConfig(**values)
