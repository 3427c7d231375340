"""HarmonyAutoscaler resources against the CRD's openAPIV3Schema, the way the API server would judge them.

The API server is not available here, so the test reproduces its steps in Python: defaulting, the schema
(OpenAPI v3.0 converted to JSON Schema), the x-kubernetes-validations CEL rules (each by a named Python
equivalent) and list-map key uniqueness. Unknown fields fail as they do under kubectl's default strict field
validation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml
from chart_helpers import CHART

CRD_PATH = CHART / "crds" / "harmonyautoscalers.harmony.dev.yaml"
EXAMPLE_PATH = CHART / "examples" / "gpu-inference.yaml"
Schema = dict[str, Any]


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def served_schema() -> Schema:
    (version,) = load_crd()["spec"]["versions"]
    schema: Schema = version["schema"]["openAPIV3Schema"]
    return schema


def to_json_schema(node: Schema) -> Schema:
    """OpenAPI v3.0 (Kubernetes structural schema) -> JSON Schema 2020-12.

    - boolean exclusiveMinimum/exclusiveMaximum beside minimum/maximum become the numeric bound;
    - x-kubernetes-* extensions go (evaluated separately, see `kubernetes_checks`);
    - an object with declared properties accepts no others, unless it preserves unknown fields.
    """
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Fill absent fields with their schema defaults, depth first, as the API server does on admission."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


# Python equivalents of the CRD's CEL rules, keyed by the rule text. A rule without one fails the tests.
def min_not_above_max(spec: dict[str, Any]) -> bool:
    return bool(spec["minReplicas"] <= spec["maxReplicas"])


def some_demand_indicator(spec: dict[str, Any]) -> bool:
    return any("capacityPerReplica" in indicator for indicator in spec["indicators"])


def fallback_replicas_within_bounds(spec: dict[str, Any]) -> bool:
    replicas = (spec.get("fallback") or {}).get("replicas")
    return replicas is None or spec["minReplicas"] <= replicas <= spec["maxReplicas"]


def interval_at_least_1s(interval: str) -> bool:
    # The same Go-duration grammar as the CRD's pattern; the operator's own parser reads it.
    from harmony_operator.spec import parse_duration

    return parse_duration(interval, "interval") >= 1.0


CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "self.minReplicas <= self.maxReplicas": min_not_above_max,
    "self.indicators.exists(i, has(i.capacityPerReplica))": some_demand_indicator,
    "duration(self) >= duration('1s')": interval_at_least_1s,
    "!has(self.fallback) || !has(self.fallback.replicas) || (self.fallback.replicas >= self.minReplicas && "
    "self.fallback.replicas <= self.maxReplicas)": fallback_replicas_within_bounds,
}


def kubernetes_checks(schema: Schema, value: Any, path: str) -> list[tuple[str, str]]:
    """(path, failure) for the x-kubernetes-validations rules and list-map keys, walking schema and value."""
    failures: list[tuple[str, str]] = []
    for validation in schema.get("x-kubernetes-validations", []):
        if not CEL_RULES[validation["rule"]](value):
            failures.append((path, f"cel: {validation['message']}"))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                failures += kubernetes_checks(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in value]
            if len(keys) != len(set(keys)):
                failures.append((path, "list-map-keys: duplicate entries"))
        for index, item in enumerate(value):
            failures += kubernetes_checks(schema.get("items", {}), item, f"{path}.{index}")
    return failures


def admission_errors(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, failure) of every reason the API server would reject `resource`; [] when it is accepted."""
    schema = served_schema()
    resource = apply_defaults(schema, copy.deepcopy(resource))
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [
        (".".join(["$", *map(str, error.absolute_path)]), str(error.validator))
        for error in sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
    ]
    # CEL rules run on objects that passed the schema (their fields then exist with the declared types).
    return errors or kubernetes_checks(schema, resource, "$")


def example() -> dict[str, Any]:
    resource: dict[str, Any] = yaml.safe_load(EXAMPLE_PATH.read_text())
    return resource


def with_spec(**changes: Any) -> dict[str, Any]:
    """The example with spec fields replaced (None deletes the field)."""
    resource = example()
    for name, value in changes.items():
        if value is None:
            del resource["spec"][name]
        else:
            resource["spec"][name] = value
    return resource


def test_crd_names_are_the_operator_contract() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "harmonyautoscalers.harmony.dev"
    assert crd["spec"]["group"] == "harmony.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "HarmonyAutoscaler"
    assert crd["spec"]["names"]["plural"] == "harmonyautoscalers"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    # The operator patches .status through the status subresource (RBAC grants harmonyautoscalers/status).
    assert version["subresources"] == {"status": {}}


def test_every_cel_rule_has_a_python_equivalent() -> None:
    def rules(node: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            found |= {v["rule"] for v in node.get("x-kubernetes-validations", [])}
            for value in node.values():
                found |= rules(value)
        elif isinstance(node, list):
            for value in node:
                found |= rules(value)
        return found

    assert rules(served_schema()) == set(CEL_RULES)


def test_conversion_turns_boolean_exclusive_bounds_numeric() -> None:
    converted = to_json_schema(served_schema())
    probability = converted["properties"]["spec"]["properties"]["slo"]["properties"][
        "maxViolationProbability"
    ]
    assert (probability["exclusiveMinimum"], probability["exclusiveMaximum"]) == (0, 1)
    assert "minimum" not in probability and "maximum" not in probability
    jsonschema.Draft202012Validator.check_schema(converted)


def test_schema_defaults_are_valid() -> None:
    # The API server rejects a CRD whose defaults (after their own nested defaulting) fail its schema.
    def check(node: Schema) -> int:
        count = 0
        if "default" in node:
            value = apply_defaults(node, copy.deepcopy(node["default"]))
            jsonschema.Draft202012Validator(to_json_schema(node)).validate(value)
            count += 1
        for sub in node.get("properties", {}).values():
            count += check(sub)
        if isinstance(node.get("items"), dict):
            count += check(node["items"])
        return count

    assert check(served_schema()) == 20  # every default in the CRD was checked


def test_example_is_a_gpu_inference_autoscaler() -> None:
    resource = example()
    assert (resource["apiVersion"], resource["kind"]) == ("harmony.dev/v1alpha1", "HarmonyAutoscaler")
    spec = resource["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-server"}
    assert spec["model"] == {"uri": "models:/llm-forecaster/3"}
    demand, gpu = spec["indicators"]
    assert (demand["level"], demand["capacityPerReplica"]) == (1, 4)
    assert (gpu["level"], "capacityPerReplica" in gpu) == (2, False)
    assert "DCGM_FI_DEV_GPU_UTIL" in gpu["query"]
    assert set(spec["behavior"]) == {"scaleDownStabilization", "maxScaleUpStep", "maxScaleDownStep"}
    assert set(spec["fallback"]) == {"targetUtilization", "safetyMargin"}


def test_example_is_accepted() -> None:
    assert admission_errors(example()) == []


def test_defaults_fill_the_optional_fields() -> None:
    resource = example()
    spec = resource["spec"]
    for name in ("minReplicas", "mode", "interval", "leadTime", "slo", "cost", "behavior", "fallback"):
        del spec[name]
    del spec["scaleTargetRef"]["apiVersion"], spec["scaleTargetRef"]["kind"]
    spec["maxReplicas"] = 1  # only valid once minReplicas defaults to 1
    assert admission_errors(resource) == []
    defaulted = apply_defaults(served_schema(), resource)["spec"]
    assert (defaulted["minReplicas"], defaulted["mode"], defaulted["interval"], defaulted["leadTime"]) == (
        1,
        "Apply",
        "60s",
        "0s",
    )
    assert defaulted["slo"] == {"maxViolationProbability": 0.01}
    assert defaulted["cost"] == {"replicaHourPrice": 1, "violationPenalty": 0}
    assert defaulted["fallback"] == {"targetUtilization": 0.7, "safetyMargin": 0.1, "failureThreshold": 3}
    assert defaulted["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "llm-server",
    }


def _indicators_without_query() -> list[dict[str, Any]]:
    return [{"name": "requests_per_second", "capacityPerReplica": 4}]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        pytest.param(with_spec(mode="Auto"), [("$.spec.mode", "enum")], id="mode-Auto"),
        pytest.param(with_spec(minReplicas=0), [("$.spec.minReplicas", "minimum")], id="minReplicas-0"),
        pytest.param(
            with_spec(slo={"maxViolationProbability": 1.5}),
            [("$.spec.slo.maxViolationProbability", "exclusiveMaximum")],
            id="probability-1.5",
        ),
        pytest.param(
            with_spec(slo={"maxViolationProbability": 0}),
            [("$.spec.slo.maxViolationProbability", "exclusiveMinimum")],
            id="probability-0",
        ),
        pytest.param(with_spec(indicators=None), [("$.spec", "required")], id="missing-indicators"),
        pytest.param(with_spec(indicators=[]), [("$.spec.indicators", "minItems")], id="no-indicators"),
        pytest.param(
            with_spec(indicators=_indicators_without_query()),
            [("$.spec.indicators.0", "required")],
            id="indicator-missing-query",
        ),
        pytest.param(
            with_spec(interval="1 minute"), [("$.spec.interval", "pattern")], id="interval-1-minute"
        ),
        pytest.param(
            with_spec(behavior={"scaleUp": {"selectPolicy": "Most"}}),
            [("$.spec.behavior.scaleUp.selectPolicy", "enum")],
            id="behavior-selectPolicy",
        ),
        pytest.param(
            with_spec(
                behavior={"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 3600}]}}
            ),
            [("$.spec.behavior.scaleDown.policies.0.periodSeconds", "maximum")],
            id="behavior-period-too-long",
        ),
        pytest.param(
            with_spec(fallback={"replicas": 99}),
            [("$.spec", "cel: fallback.replicas must lie within minReplicas..maxReplicas")],
            id="fallback-replicas-above-max",
        ),
        pytest.param(
            with_spec(interval="0s"),
            [("$.spec.interval", "cel: interval must be at least 1s")],
            id="interval-0s",
        ),
        pytest.param(
            with_spec(interval="500ms"),
            [("$.spec.interval", "cel: interval must be at least 1s")],
            id="interval-500ms",
        ),
        pytest.param(
            with_spec(scaleTargetRef={"kind": "daemon set", "name": "x"}),
            [("$.spec.scaleTargetRef.kind", "pattern")],
            id="target-kind-not-a-kind",
        ),
        pytest.param(
            with_spec(scaleTargetRef={"apiVersion": "apps", "kind": "Deployment", "name": "x"}),
            [("$.spec.scaleTargetRef.apiVersion", "pattern")],
            id="target-apiVersion-without-version",
        ),
        pytest.param(with_spec(maxReplica=3), [("$.spec", "additionalProperties")], id="misspelt-field"),
        pytest.param(
            with_spec(minReplicas=20),
            [("$.spec", "cel: minReplicas must not exceed maxReplicas")],
            id="cel-min-above-max",
        ),
        pytest.param(
            with_spec(
                indicators=[{"name": "gpu_utilization", "query": "avg(DCGM_FI_DEV_GPU_UTIL)", "level": 2}]
            ),
            [("$.spec", "cel: at least one indicator needs capacityPerReplica (a demand indicator)")],
            id="cel-no-demand-indicator",
        ),
        pytest.param(
            with_spec(
                indicators=[
                    {"name": "rps", "query": "a", "capacityPerReplica": 1},
                    {"name": "rps", "query": "b"},
                ]
            ),
            [("$.spec.indicators", "list-map-keys: duplicate entries")],
            id="duplicate-indicator-names",
        ),
    ],
)
def test_invalid_resources_are_rejected(resource: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert admission_errors(resource) == expected
