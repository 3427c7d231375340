"""The HarmonyAutoscaler spec, read and validated at the edge into typed settings.

The API server applies the CRD's schema and defaults, but an operator must not trust that alone: a CRD
installed without validation, an older schema, or a hand-edited object can still reach us. Every field is
checked again here and a bad one raises `SpecError` naming the field and what was expected; the operator
turns that into the `InvalidSpec` condition and event and leaves the target alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harmony.decision import DecisionConfig
from harmony.decision.rates import MAX_PERIOD_S, RateLimit, RateRule

__all__ = ["AutoscalerSpec", "Indicator", "SpecError", "parse_duration", "parse_spec"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_API_VERSION = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?v[0-9]+(?:(?:alpha|beta)[0-9]+)?$"
)
# Kinds whose resource name is known without asking the API server; any other kind with a /scale
# subresource (Argo Rollouts, LeaderWorkerSet, a custom resource) is found through API discovery.
KNOWN_PLURALS = {("apps/v1", "Deployment"): "deployments", ("apps/v1", "StatefulSet"): "statefulsets"}


class SpecError(ValueError):
    """A field of the resource's spec is missing or wrong; `field` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field


def parse_duration(text: object, field: str) -> float:
    """'90s', '5m', '1m30s', '250ms', '1.5h' -> seconds (Kubernetes/Go duration style, no sign, no spaces)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        # A bare number is read as seconds, as many users write `interval: 60`.
        if not math.isfinite(text) or text < 0:
            raise SpecError(field, f"expected a duration >= 0 like '60s', got {text!r}")
        return float(text)
    if not isinstance(text, str) or not text:
        raise SpecError(field, f"expected a duration like '60s', '5m' or '1m30s', got {text!r}")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise SpecError(field, f"expected a duration like '60s', '5m' or '1m30s', got {text!r}")
    return total


@dataclass(frozen=True)
class Indicator:
    name: str
    query: str
    capacity_per_replica: float | None
    level: int


@dataclass(frozen=True)
class AutoscalerSpec:
    """Everything one HarmonyAutoscaler asks for, in SI units (seconds) and Python names."""

    target_api_version: str
    target_kind: str
    target_name: str
    min_replicas: int
    max_replicas: int
    mode: str  # "Apply" | "Recommend"
    interval_s: float
    lead_time_s: float
    max_violation_probability: float
    replica_hour_price: float
    violation_penalty: float
    indicators: tuple[Indicator, ...]
    model_uri: str | None
    scale_down_stabilization_s: float
    max_scale_up_step: int | None
    max_scale_down_step: int | None
    fallback_target_utilization: float
    fallback_margin: float
    # KEDA's fallback: fixed replicas once the metrics failed this many reconciles in a row (None = hold).
    fallback_replicas: int | None = None
    fallback_failure_threshold: int = 3
    prometheus_url: str | None = None  # this resource's own Prometheus (must be allowed by the operator)
    # The HPA's behavior.scaleUp / scaleDown beyond the step caps: the up window and the rate rules.
    scale_up_stabilization_s: float = 0.0
    scale_up_rate: RateLimit | None = None
    scale_down_rate: RateLimit | None = None
    # The forecast steps a decision covers after the lead time (None: every step of the model's horizon
    # after it, as the backtest's default `window_steps: null`).
    decision_window_s: float | None = None

    @property
    def capacities(self) -> dict[str, float]:
        return {i.name: i.capacity_per_replica for i in self.indicators if i.capacity_per_replica is not None}

    @property
    def apply(self) -> bool:
        return self.mode == "Apply"

    @property
    def target_plural(self) -> str | None:
        """The target's resource name when known without discovery (Deployment, StatefulSet), else None."""
        return KNOWN_PLURALS.get((self.target_api_version, self.target_kind))

    def decision_config(self, lead_steps: int = 0) -> DecisionConfig:
        """The `harmony.decision` settings this spec asks for (the same code the backtest runs)."""
        return DecisionConfig(
            capacities=self.capacities,
            max_replicas=self.max_replicas,
            min_replicas=self.min_replicas,
            max_violation_probability=self.max_violation_probability,
            replica_hour_price=self.replica_hour_price,
            violation_penalty=self.violation_penalty,
            interval_s=self.interval_s,
            scale_down_stabilization_s=self.scale_down_stabilization_s,
            max_scale_up_step=self.max_scale_up_step,
            max_scale_down_step=self.max_scale_down_step,
            scale_up_stabilization_s=self.scale_up_stabilization_s,
            scale_up_rate=self.scale_up_rate,
            scale_down_rate=self.scale_down_rate,
            fallback_target_utilization=self.fallback_target_utilization,
            fallback_margin=self.fallback_margin,
            lead_steps=lead_steps,
        )


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(key, f"expected an object, got {type(value).__name__}")
    return value


def _int(value: object, field: str, *, minimum: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(field, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _number(
    value: object,
    field: str,
    *,
    low: float,
    high: float = math.inf,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    if not ok:
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise SpecError(field, f"expected a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _scaling_rules(behavior: Mapping[str, Any], key: str) -> tuple[float | None, RateLimit | None]:
    """`behavior.scaleUp` / `scaleDown` as the HPA has them (HPAScalingRules): the stabilisation window in
    seconds (None when unset) and the rate rules (None without `policies`, unless selectPolicy Disabled)."""
    rules = _section(behavior, key)
    where = f"behavior.{key}"
    window_raw = rules.get("stabilizationWindowSeconds")
    window = (
        None
        if window_raw is None
        else float(_int(window_raw, f"{where}.stabilizationWindowSeconds", minimum=0) or 0)
    )
    if window is not None and window > 3600:
        raise SpecError(f"{where}.stabilizationWindowSeconds", f"expected at most 3600, got {window_raw!r}")
    select = rules.get("selectPolicy", "Max")
    if select not in ("Max", "Min", "Disabled"):
        raise SpecError(f"{where}.selectPolicy", f"expected 'Max', 'Min' or 'Disabled', got {select!r}")
    raw = rules.get("policies")
    if raw is None:
        return window, (RateLimit((), "Disabled") if select == "Disabled" else None)
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{where}.policies", "expected a non-empty list of {type, value, periodSeconds}")
    parsed: list[RateRule] = []
    for k, item in enumerate(raw):
        at = f"{where}.policies[{k}]"
        if not isinstance(item, Mapping):
            raise SpecError(at, f"expected an object, got {type(item).__name__}")
        kind = item.get("type")
        if kind not in ("Pods", "Percent"):
            raise SpecError(f"{at}.type", f"expected 'Pods' or 'Percent', got {kind!r}")
        value = _int(item.get("value"), f"{at}.value", minimum=1)
        period = _int(item.get("periodSeconds"), f"{at}.periodSeconds", minimum=1)
        assert value is not None and period is not None
        if period > MAX_PERIOD_S:
            raise SpecError(f"{at}.periodSeconds", f"expected at most {MAX_PERIOD_S:g}, got {period}")
        parsed.append(RateRule(kind, float(value), float(period)))
    return window, RateLimit(tuple(parsed), select)


def parse_spec(spec: Mapping[str, Any]) -> AutoscalerSpec:
    """Validate a resource's `.spec` (defaults as in the CRD) into an `AutoscalerSpec`."""
    if not isinstance(spec, Mapping):
        raise SpecError("", f"expected an object, got {type(spec).__name__}")
    ref = spec.get("scaleTargetRef")
    if not isinstance(ref, Mapping):
        raise SpecError(
            "scaleTargetRef", "required: an object with the name of a workload with a scale subresource"
        )
    api_version = ref.get("apiVersion", "apps/v1")
    if not isinstance(api_version, str) or not _API_VERSION.match(api_version):
        raise SpecError(
            "scaleTargetRef.apiVersion", f"expected an API version like 'apps/v1', got {api_version!r}"
        )
    kind = ref.get("kind", "Deployment")
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise SpecError(
            "scaleTargetRef.kind", f"expected a kind like 'Deployment' or 'Rollout', got {kind!r}"
        )
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("scaleTargetRef.name", f"expected the target's name, got {name!r}")

    min_replicas = _int(spec.get("minReplicas", 1), "minReplicas", minimum=1)
    max_replicas = _int(spec.get("maxReplicas"), "maxReplicas", minimum=1)
    assert min_replicas is not None and max_replicas is not None
    if min_replicas > max_replicas:
        raise SpecError("minReplicas", f"minReplicas ({min_replicas}) exceeds maxReplicas ({max_replicas})")
    mode = spec.get("mode", "Apply")
    if mode not in ("Apply", "Recommend"):
        raise SpecError("mode", f"expected 'Apply' or 'Recommend', got {mode!r}")
    interval_s = parse_duration(spec.get("interval", "60s"), "interval")
    if interval_s < 1.0:
        raise SpecError("interval", f"expected at least 1s, got {spec.get('interval')!r}")
    lead_time_s = parse_duration(spec.get("leadTime", "0s"), "leadTime")
    window_raw = spec.get("decisionWindow")
    decision_window_s = None if window_raw is None else parse_duration(window_raw, "decisionWindow")
    if decision_window_s is not None and decision_window_s <= 0:
        raise SpecError(
            "decisionWindow",
            f"expected a duration above 0s (or no decisionWindow: the model's whole horizon after leadTime), "
            f"got {window_raw!r}",
        )

    slo = _section(spec, "slo")
    eps = _number(
        slo.get("maxViolationProbability", 0.01),
        "slo.maxViolationProbability",
        low=0.0,
        high=1.0,
        open_low=True,
        open_high=True,
    )
    cost = _section(spec, "cost")
    price = _number(cost.get("replicaHourPrice", 1.0), "cost.replicaHourPrice", low=0.0)
    penalty = _number(cost.get("violationPenalty", 0.0), "cost.violationPenalty", low=0.0)

    raw_indicators = spec.get("indicators")
    if not isinstance(raw_indicators, list) or not raw_indicators:
        raise SpecError(
            "indicators", "required: a non-empty list of {name, query[, capacityPerReplica, level]}"
        )
    indicators: list[Indicator] = []
    seen: set[str] = set()
    for k, item in enumerate(raw_indicators):
        where = f"indicators[{k}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, f"expected an object, got {type(item).__name__}")
        iname = item.get("name")
        if not isinstance(iname, str) or not _NAME.match(iname):
            raise SpecError(f"{where}.name", f"expected an indicator name like 'requests', got {iname!r}")
        if iname in seen:
            raise SpecError(f"{where}.name", f"duplicate indicator {iname!r}")
        seen.add(iname)
        query = item.get("query")
        if not isinstance(query, str) or not query.strip():
            raise SpecError(f"{where}.query", f"expected a PromQL query, got {query!r}")
        cap_raw = item.get("capacityPerReplica")
        cap = (
            None
            if cap_raw is None
            else _number(cap_raw, f"{where}.capacityPerReplica", low=0.0, open_low=True)
        )
        level = _int(item.get("level", 1), f"{where}.level", minimum=1)
        assert level is not None
        indicators.append(Indicator(iname, query, cap, level))
    if not any(i.capacity_per_replica is not None for i in indicators):
        raise SpecError("indicators", "at least one indicator needs capacityPerReplica (a demand indicator)")

    model = spec.get("model")
    model_uri: str | None = None
    if model is not None:
        if (
            not isinstance(model, Mapping)
            or not isinstance(model.get("uri"), str)
            or not model["uri"].strip()
        ):
            raise SpecError("model.uri", "expected an MLflow model URI or a mounted model directory")
        model_uri = model["uri"].strip()

    behavior = _section(spec, "behavior")
    stabilization = parse_duration(
        behavior.get("scaleDownStabilization", "300s"), "behavior.scaleDownStabilization"
    )
    up = _int(behavior.get("maxScaleUpStep"), "behavior.maxScaleUpStep", minimum=1, optional=True)
    down = _int(behavior.get("maxScaleDownStep"), "behavior.maxScaleDownStep", minimum=1, optional=True)
    up_window, up_rate = _scaling_rules(behavior, "scaleUp")
    down_window, down_rate = _scaling_rules(behavior, "scaleDown")
    if down_window is not None:
        if "scaleDownStabilization" in behavior:
            raise SpecError(
                "behavior.scaleDown.stabilizationWindowSeconds",
                "set either this or behavior.scaleDownStabilization, not both",
            )
        stabilization = down_window
    fallback = _section(spec, "fallback")
    target_util = _number(
        fallback.get("targetUtilization", 0.7), "fallback.targetUtilization", low=0.0, high=1.0, open_low=True
    )
    margin = _number(fallback.get("safetyMargin", 0.1), "fallback.safetyMargin", low=0.0)
    fallback_replicas = _int(fallback.get("replicas"), "fallback.replicas", minimum=1, optional=True)
    threshold = _int(fallback.get("failureThreshold", 3), "fallback.failureThreshold", minimum=1)
    assert threshold is not None
    if fallback_replicas is not None and not min_replicas <= fallback_replicas <= max_replicas:
        raise SpecError(
            "fallback.replicas",
            f"expected a count in [minReplicas, maxReplicas] = [{min_replicas}, {max_replicas}], "
            f"got {fallback_replicas}",
        )

    prometheus = _section(spec, "prometheus")
    prometheus_url = prometheus.get("url")
    if prometheus_url is not None and (
        not isinstance(prometheus_url, str) or not re.match(r"^https?://[^\s/]+", prometheus_url)
    ):
        raise SpecError("prometheus.url", f"expected an http(s) URL of a Prometheus, got {prometheus_url!r}")

    return AutoscalerSpec(
        target_api_version=api_version,
        target_kind=kind,
        target_name=name,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        mode=mode,
        interval_s=interval_s,
        lead_time_s=lead_time_s,
        max_violation_probability=eps,
        replica_hour_price=price,
        violation_penalty=penalty,
        indicators=tuple(indicators),
        model_uri=model_uri,
        scale_down_stabilization_s=stabilization,
        max_scale_up_step=up,
        max_scale_down_step=down,
        fallback_target_utilization=target_util,
        fallback_margin=margin,
        fallback_replicas=fallback_replicas,
        fallback_failure_threshold=threshold,
        prometheus_url=prometheus_url,
        scale_up_stabilization_s=up_window or 0.0,
        scale_up_rate=up_rate,
        scale_down_rate=down_rate,
        decision_window_s=decision_window_s,
    )
