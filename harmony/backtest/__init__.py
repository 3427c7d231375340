"""The backtest: the product's proof. Every policy's knobs are chosen on the validation part of a real
trace, frozen, and replayed on the test part with the same decision code the operator runs
(docs/backtest.md). One module per step:

* `config`: `BacktestConfig` and its sections, read from YAML and checked (errors name file and key).
* `replay`: the series plan of a part, the forecasts each decision sees (the forecaster's draws, a
  classical model's point forecasts), `replay` of one policy over one series, and `score`.
* `sweep`: each policy's knobs (`knob_space`, `Knobs`), `build_policy`, the cached replay of settings
  (`Evaluator`) and the search on the validation part (`tune`).
* `frontier`: the validated table and its headline (the share of the gap between the best tuned baseline and
  the lower bound), the lower convex hull (`cost_at_rate`), the lower bound (`cost_bound`).
* `run`: `run_backtest` (the whole protocol) and `run_config` (from a configuration).
"""

from harmony.backtest.config import load_backtest_config
from harmony.backtest.frontier import (
    cost_at_rate,
    cost_bound,
    gap_captured,
    hindsight_table,
    lower_hull,
    needed_replicas,
    validated_table,
)
from harmony.backtest.replay import (
    PARTS,
    BacktestError,
    Draws,
    Replay,
    SeriesData,
    Settings,
    check_forecaster,
    classical_forecasts,
    forecast_draws,
    median_draws,
    prepare_series,
    replay,
    score,
)
from harmony.backtest.run import BacktestResult, ConfigRun, run_backtest, run_config, settings_from_config
from harmony.backtest.search import Tuned, tune
from harmony.backtest.sections import (
    BASELINES,
    POLICY_ORDER,
    BacktestConfig,
    ClassicalSweep,
    CostConfig,
    ForecasterConfig,
    HPASweep,
    PointSweep,
    PoliciesConfig,
    ReplayConfig,
    ReportConfig,
    RiskSweep,
    ScalingConfig,
    SLAConfig,
    StaticSweep,
    TuningConfig,
)
from harmony.backtest.sweep import (
    CAUSE_COLUMNS,
    CRITERIA,
    RATE_TOLERANCE,
    Evaluator,
    Knobs,
    KnobSpace,
    build_policy,
    format_knob,
    knob_space,
    short_knobs,
)

__all__ = [
    "BASELINES",
    "CAUSE_COLUMNS",
    "CRITERIA",
    "PARTS",
    "POLICY_ORDER",
    "RATE_TOLERANCE",
    "BacktestConfig",
    "BacktestError",
    "BacktestResult",
    "ClassicalSweep",
    "ConfigRun",
    "CostConfig",
    "Draws",
    "Evaluator",
    "ForecasterConfig",
    "HPASweep",
    "KnobSpace",
    "Knobs",
    "PointSweep",
    "PoliciesConfig",
    "Replay",
    "ReplayConfig",
    "ReportConfig",
    "RiskSweep",
    "SLAConfig",
    "ScalingConfig",
    "SeriesData",
    "Settings",
    "StaticSweep",
    "Tuned",
    "TuningConfig",
    "build_policy",
    "check_forecaster",
    "classical_forecasts",
    "cost_at_rate",
    "cost_bound",
    "forecast_draws",
    "format_knob",
    "gap_captured",
    "hindsight_table",
    "knob_space",
    "load_backtest_config",
    "lower_hull",
    "median_draws",
    "needed_replicas",
    "prepare_series",
    "replay",
    "run_backtest",
    "run_config",
    "score",
    "settings_from_config",
    "short_knobs",
    "tune",
    "validated_table",
]
