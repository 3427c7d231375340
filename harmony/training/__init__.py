"""Training: the typed train config (config), training runs logged to MLflow (train), the evaluation windows
of a part (windows) and side-by-side comparison of models (evaluate; it uses train's API, never the reverse).

The configuration names are imported eagerly: they are cheap (no torch, no MLflow), and the backtest config
builds on the same machinery. The others are imported on first use, so that `import harmony.training` or
`import harmony.training.config` does not load torch and MLflow.

The functions `train` and `evaluate` are not re-exported: their names are those of the submodules
`harmony.training.train` and `harmony.training.evaluate`, which they would shadow. Import them from their
modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harmony.training.config import (
    RUN_NAME_PATTERN,
    ConfigContext,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
    apply_overrides,
    build_section,
    config_from_dict,
    load_config,
    parse_value,
    read_yaml,
    resolve_card_path,
)

if TYPE_CHECKING:
    from harmony.training.errors import TrainError
    from harmony.training.evaluate import compare, compared_hparams, format_summary
    from harmony.training.train import (
        STATE_FILE,
        RunState,
        TrainResult,
        build_forecaster,
        comparable_config,
        load_data,
        torch_threads,
        tracking_uri,
    )
    from harmony.training.windows import EvalWindows, collect_windows

# Name -> submodule that defines it, for the names imported on first use.
_LAZY = {
    "STATE_FILE": "train",
    "RunState": "train",
    "TrainError": "errors",
    "TrainResult": "train",
    "build_forecaster": "train",
    "comparable_config": "train",
    "load_data": "train",
    "torch_threads": "train",
    "tracking_uri": "train",
    "compare": "evaluate",
    "compared_hparams": "evaluate",
    "format_summary": "evaluate",
    "EvalWindows": "windows",
    "collect_windows": "windows",
}

__all__ = [
    "RUN_NAME_PATTERN",
    "STATE_FILE",
    "ConfigContext",
    "ConfigError",
    "DataConfig",
    "EvalWindows",
    "EvaluationConfig",
    "ModelConfig",
    "RunState",
    "TrackingConfig",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainerConfig",
    "apply_overrides",
    "build_forecaster",
    "build_section",
    "collect_windows",
    "comparable_config",
    "compare",
    "compared_hparams",
    "config_from_dict",
    "format_summary",
    "load_config",
    "load_data",
    "parse_value",
    "read_yaml",
    "resolve_card_path",
    "torch_threads",
    "tracking_uri",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
