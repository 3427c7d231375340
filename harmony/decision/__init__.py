"""From forecast draws to a replica count: chance constraint, newsvendor, Bayesian adaptation, stabilisation.

The same code runs in the offline backtest and in the Kubernetes operator, so everything here is pure numpy
(and scipy's Beta function) and deterministic given its inputs and state. See docs/decision.md for the maths.
One module per concern:

* `config`: `DecisionConfig`, the service's SLA, prices, bounds and adaptation settings, validated.
* `draws`: `DemandDraws` turns draws `Y [S, H, N]` of the demand indicators into `R_s = max_{h,i} Y[s,h,i] /
  c_i`, the replicas each draw needs over the window, and answers quantiles and exceedances of R.
* `calibration`: `CalibrationTracker`, a discounted Beta posterior on the realised violation rate of the
  decisions the quantile set, and the working exceedance level that brings it to the target.
* `stabilizer`: `Stabilizer`, stabilisation windows, step limits and bounds (the HPA policy uses it too).
* `decider`: `Decider` ties them together: `decide(...) -> Decision`, `observe(...)` after the lead time, and
  a reactive fallback when there is no usable forecast.
"""

from harmony.decision.calibration import CalibrationTracker, beta_cdf, beta_quantile, format_level
from harmony.decision.config import DecisionConfig
from harmony.decision.decider import (
    FALLBACK_CAUSES,
    Decider,
    Decision,
    fallback_decision,
    is_violation,
    reactive_replicas,
)
from harmony.decision.draws import DemandDraws, NonFiniteDraws, ceil_replicas
from harmony.decision.stabilizer import Stabilizer

__all__ = [
    "FALLBACK_CAUSES",
    "CalibrationTracker",
    "Decider",
    "Decision",
    "DecisionConfig",
    "DemandDraws",
    "NonFiniteDraws",
    "Stabilizer",
    "beta_cdf",
    "beta_quantile",
    "ceil_replicas",
    "fallback_decision",
    "format_level",
    "is_violation",
    "reactive_replicas",
]
