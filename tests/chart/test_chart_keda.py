"""The chart's KEDA external scaler (values keda.*), rendered and linted with helm 3 and helm 4; the example
ScaledObject; the CRD's status fields the scaler writes."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, NAMESPACE, Helm, HelmFailed, Manifest, find, only, values_with
from test_chart_crd import admission_errors, served_schema, to_json_schema

KEDA_CASES: dict[str, dict[str, Any]] = {
    "keda": values_with(keda={"enabled": True}),
    "keda-tls": values_with(keda={"enabled": True, "tls": {"secretName": "harmony-scaler-tls"}}),
    "keda-mtls-cross-namespace": values_with(
        keda={
            "enabled": True,
            "port": 7000,
            "service": {"type": "ClusterIP", "port": 443, "annotations": {"example.com/team": "platform"}},
            "allowCrossNamespace": True,
            "staleAfterIntervals": 5,
            "tls": {"secretName": "harmony-scaler-tls", "requireClientCert": True},
        },
        verbose=True,
    ),
}
EXAMPLE = CHART / "examples" / "keda-scaledobject.yaml"


def containers(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


@pytest.mark.parametrize("case", sorted(KEDA_CASES))
def test_lint_strict(helm: Helm, case: str) -> None:
    result = helm.lint(KEDA_CASES[case])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_disabled_by_default(helm: Helm) -> None:
    manifests = helm.template(values_with())
    assert list(containers(manifests)) == ["operator"]
    assert [s["metadata"]["name"] for s in find(manifests, "Service")] == ["harmony-operator-metrics"]


def test_scaler_container_and_service(helm: Helm) -> None:
    manifests = helm.template(KEDA_CASES["keda"])
    scaler = containers(manifests)["keda-scaler"]
    operator = containers(manifests)["operator"]
    assert scaler["image"] == operator["image"]  # the same image, another entry point
    assert scaler["command"] == ["harmony-scaler"]
    assert scaler["args"] == ["--port=6000", "--stale-after-intervals=3", "--log-format=json"]
    assert scaler["ports"] == [{"name": "keda-grpc", "containerPort": 6000, "protocol": "TCP"}]
    assert scaler["readinessProbe"]["tcpSocket"] == {"port": "keda-grpc"}
    assert scaler["securityContext"] == operator["securityContext"]  # non-root, read-only root filesystem
    assert "volumeMounts" not in scaler
    service = only(manifests, "Service", "harmony-operator-keda")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["selector"] == only(manifests, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "grpc", "port": 6000, "targetPort": "keda-grpc", "protocol": "TCP", "appProtocol": "grpc"}
    ]


def test_tls_mounts_the_secret_and_requires_client_certificates(helm: Helm) -> None:
    manifests = helm.template(KEDA_CASES["keda-mtls-cross-namespace"])
    scaler = containers(manifests)["keda-scaler"]
    assert scaler["args"] == [
        "--port=7000",
        "--stale-after-intervals=5",
        "--log-format=json",
        "--allow-cross-namespace",
        "--tls-cert=/etc/harmony/keda-tls/tls.crt",
        "--tls-key=/etc/harmony/keda-tls/tls.key",
        "--tls-client-ca=/etc/harmony/keda-tls/ca.crt",
        "--verbose",
    ]
    assert scaler["volumeMounts"] == [
        {"name": "keda-tls", "mountPath": "/etc/harmony/keda-tls", "readOnly": True}
    ]
    volumes = only(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "keda-tls", "secret": {"secretName": "harmony-scaler-tls"}} in volumes
    service = only(manifests, "Service", "harmony-operator-keda")
    assert (
        service["spec"]["ports"][0]["port"] == 443
        and service["spec"]["ports"][0]["targetPort"] == "keda-grpc"
    )
    assert service["metadata"]["annotations"] == {"example.com/team": "platform"}
    plain_tls = containers(helm.template(KEDA_CASES["keda-tls"]))["keda-scaler"]
    assert "--tls-cert=/etc/harmony/keda-tls/tls.crt" in plain_tls["args"]
    assert not any(a.startswith("--tls-client-ca") for a in plain_tls["args"])


def test_client_certificates_without_tls_fail_clearly(helm: Helm) -> None:
    with pytest.raises(HelmFailed) as failure:
        helm.template(
            values_with(keda={"enabled": True, "tls": {"secretName": "", "requireClientCert": True}})
        )
    assert "keda.tls.requireClientCert needs keda.tls.secretName" in str(failure.value)


@pytest.mark.parametrize(
    ("keda", "offender"),
    [
        pytest.param({"enabled": "yes"}, "enabled", id="enabled-not-boolean"),
        pytest.param({"port": 0}, "port", id="port-zero"),
        pytest.param({"staleAfterIntervals": 0.5}, "staleAfterIntervals", id="stale-below-one"),
        pytest.param({"tls": {"secretName": "Bad_Name"}}, "secretName", id="secret-not-a-name"),
        pytest.param({"tsl": {}}, "tsl", id="unknown-key"),
    ],
)
def test_invalid_keda_values_fail_schema_validation(helm: Helm, keda: dict[str, Any], offender: str) -> None:
    values = values_with(keda={"enabled": True, **keda})
    result = helm.run(*helm.template_args(values))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert offender in result.stderr, result.stderr


@pytest.mark.parametrize("case", sorted(KEDA_CASES))
def test_manifests_are_valid_kubernetes_objects(helm: Helm, case: str) -> None:
    manifests = helm.template(KEDA_CASES[case])
    for manifest in manifests:  # every kind here is Kubernetes' own
        for kube_version in ("1.27.0", "1.37.0"):
            kubernetes_validate.validate(manifest, kube_version, strict=True)


def _example() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc}


def test_example_autoscaler_is_accepted_in_recommend_mode() -> None:
    hma = _example()["HarmonyAutoscaler"]
    assert admission_errors(json.loads(json.dumps(hma))) == []
    assert hma["spec"]["mode"] == "Recommend"


def test_example_scaled_object_reads_it_through_the_scaler_service() -> None:
    docs = _example()
    hma, scaled = docs["HarmonyAutoscaler"], docs["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == hma["metadata"]["namespace"]
    assert scaled["spec"]["scaleTargetRef"] == hma["spec"]["scaleTargetRef"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hma["spec"]["minReplicas"],
        hma["spec"]["maxReplicas"],
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "external" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["autoscaler"] == hma["metadata"]["name"]
    # The default release's Service, its namespace and port.
    assert trigger["metadata"]["scalerAddress"] == "harmony-operator-keda.harmony-system.svc:6000"
    auth = docs["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {p["parameter"] for p in auth["spec"]["secretTargetRef"]} == {
        "caCert",
        "tlsClientCert",
        "tlsClientKey",
    }
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):
        assert behavior[direction]["stabilizationWindowSeconds"] == 0
        assert behavior[direction]["tolerance"] == 0


def test_example_scaler_address_matches_the_rendered_service(helm: Helm) -> None:
    service = only(helm.template(KEDA_CASES["keda"]), "Service", "harmony-operator-keda")
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    (trigger,) = _example()["ScaledObject"]["spec"]["triggers"]
    assert trigger["metadata"]["scalerAddress"] == address


def test_crd_status_holds_what_the_scaler_writes() -> None:
    status_schema = to_json_schema(served_schema()["properties"]["status"])
    written = {
        "actuator": "KEDA",
        "keda": {
            "scaledObject": "inference/llm-server",
            "metricName": "harmony-inference-llm-server",
            "answer": "Serving",
            "replicas": 7,
            "active": True,
            "message": "7 replicas: ...",
            "lastRequestTime": "2026-12-07T18:00:00Z",
        },
    }
    jsonschema.validate(written, status_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"keda": {"replica": 7}}, status_schema)  # a structural schema prunes unknowns


def test_notes_give_the_scaler_address(helm4: Helm) -> None:
    values = helm4.values_file(KEDA_CASES["keda-tls"])
    result = helm4.run(
        "install",
        "--dry-run=client",
        "harmony-operator",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--values",
        str(values),
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "KEDA external scaler (harmony-scaler, TLS)" in notes
    assert f"scalerAddress: harmony-operator-keda.{NAMESPACE}.svc:6000" in notes
