"""Scaling policies behind one interface (`Policy`): the baselines the backtest compares HARMONY with, one
module per family. HARMONY's own policy is `harmony.decision.Decider`.

* `base`: the `Policy` protocol and the checks the policies share.
* `hpa`: the Kubernetes HPA with its whole `behavior` (target, tolerance, stabilisation windows, rate rules).
* `forecast`: point forecast + margin (AWS predictive scaling; Dynamo's planner on a classical model's
  forecast), the chance constraint without adaptation (`QuantilePolicy`), crane's Effective HPA.
* `static`: peak provisioning. `oracle`: perfect foresight, the lower bound at zero violations.
"""

from harmony.policies.base import Policy
from harmony.policies.forecast import EHPAPolicy, PointForecastPolicy, QuantilePolicy
from harmony.policies.hpa import DEFAULT_SCALE_DOWN, DEFAULT_SCALE_UP, HPAPolicy, RateLimit, RateRule
from harmony.policies.oracle import OraclePolicy
from harmony.policies.static import StaticPolicy

__all__ = [
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "EHPAPolicy",
    "HPAPolicy",
    "OraclePolicy",
    "PointForecastPolicy",
    "Policy",
    "QuantilePolicy",
    "RateLimit",
    "RateRule",
    "StaticPolicy",
]
