"""The operator's Deployment, metrics Service and ServiceMonitor: hardened pod, probes, resources, the
operator's command line and environment."""

from __future__ import annotations

from typing import Any

import pytest
from chart_helpers import (
    NAMESPACE,
    PROMETHEUS_URL,
    VALUE_CASES,
    Helm,
    HelmFailed,
    Manifest,
    find,
    only,
    values_with,
)


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(manifests)["containers"]
    (container,) = containers
    assert container["name"] == "operator"
    return container


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_pod_is_hardened(helm: Helm, case: str) -> None:
    manifests = helm.template(VALUE_CASES[case])
    assert pod_spec(manifests)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert operator_container(manifests)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_probes_ports_resources_and_environment(helm: Helm, case: str) -> None:
    manifests = helm.template(VALUE_CASES[case])
    container = operator_container(manifests)
    assert container["ports"] == [
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert container["resources"]["requests"] == {"cpu": "200m", "memory": "768Mi"}
    assert container["resources"]["limits"] == {"memory": "2Gi"}
    env = container["env"]
    assert env[:2] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    # The only writable place on a read-only root filesystem.
    assert container["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
    assert pod_spec(manifests)["volumes"][0] == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}


def test_default_command_line_and_image(helm: Helm) -> None:
    container = operator_container(helm.template(values_with()))
    assert container["image"] == "harmony-operator:0.1.0"  # the chart's appVersion
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container  # the image's ENTRYPOINT: python -m harmony_operator
    assert container["args"] == [
        f"--prometheus-url={PROMETHEUS_URL}",
        "--all-namespaces",
        "--metrics-port=9090",
        "--health-port=8080",
        "--bind-address=0.0.0.0",
        "--lease-name=harmony-operator",
        f"--lease-namespace={NAMESPACE}",
        "--lease-duration=15",
        "--renew-deadline=10",
        "--retry-period=2",
        "--model-uri-prefix=models:/",
        "--model-uri-prefix=/models/",
        "--model-max-bytes=536870912",
        "--model-load-timeout=120",
        "--inference-timeout=30",
        "--log-format=json",
    ]
    assert "envFrom" not in container
    assert [e["name"] for e in container["env"]] == ["POD_NAMESPACE", "HOME"]


def test_ports_log_format_and_verbosity_are_values(helm: Helm) -> None:
    manifests = helm.template(
        values_with(
            metrics={"port": 9100, "service": {"port": 8443}},
            health={"port": 8081},
            logFormat="plain",
            verbose=True,
        )
    )
    container = operator_container(manifests)
    assert container["args"][2:4] == ["--metrics-port=9100", "--health-port=8081"]
    assert container["args"][-2:] == ["--log-format=plain", "--verbose"]
    assert [p["containerPort"] for p in container["ports"]] == [9100, 8081]
    service = only(manifests, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8443, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_tenancy_leader_timing_and_bind_address_are_values(helm: Helm) -> None:
    from harmony_operator.__main__ import parse_args

    container = operator_container(
        helm.template(
            values_with(
                models={
                    "allowedUriPrefixes": ["models:/team-a-", "/models/team-a/"],
                    "maxBytes": 2147483648,
                    "loadTimeoutSeconds": 30,
                    "inferenceTimeoutSeconds": 2.5,
                },
                leaderElection={
                    "enabled": True,
                    "leaseDurationSeconds": 30,
                    "renewDeadlineSeconds": 20,
                    "retryPeriodSeconds": 4,
                },
                bindAddress="::",
                tenancy={"queryNamespaceLabel": "namespace"},
            )
        )
    )
    args = container["args"]
    assert "--bind-address=::" in args
    assert "--query-namespace-label=namespace" in args
    assert [a for a in args if a.startswith(("--lease-duration", "--renew-deadline", "--retry-period"))] == [
        "--lease-duration=30",
        "--renew-deadline=20",
        "--retry-period=4",
    ]
    assert [a for a in args if a.startswith("--model") or a.startswith("--inference")] == [
        "--model-uri-prefix=models:/team-a-",
        "--model-uri-prefix=/models/team-a/",
        "--model-max-bytes=2147483648",
        "--model-load-timeout=30",
        "--inference-timeout=2.5",
    ]
    # The operator's own command line accepts exactly what the chart renders.
    parsed = parse_args(args)
    assert parsed.model_uri_prefix == ["models:/team-a-", "/models/team-a/"]
    assert (parsed.lease_duration, parsed.renew_deadline, parsed.retry_period) == (30, 20, 4)
    assert (parsed.model_max_bytes, parsed.inference_timeout, parsed.bind_address) == (2147483648, 2.5, "::")
    assert parsed.query_namespace_label == "namespace"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "leaderElection": {
                    "enabled": True,
                    "leaseDurationSeconds": 10,
                    "renewDeadlineSeconds": 10,
                    "retryPeriodSeconds": 2,
                }
            },
            "retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds",
        ),
        (
            {
                "models": {
                    "allowedUriPrefixes": [],
                    "maxBytes": 1,
                    "loadTimeoutSeconds": 1,
                    "inferenceTimeoutSeconds": 1,
                }
            },
            "allowedUriPrefixes",
        ),
        (
            {
                "models": {
                    "allowedUriPrefixes": ["models:/"],
                    "maxBytes": 0,
                    "loadTimeoutSeconds": 1,
                    "inferenceTimeoutSeconds": 1,
                }
            },
            "maxBytes",
        ),
    ],
)
def test_bad_tenancy_and_leader_values_are_refused(helm: Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmFailed) as failure:
        helm.template(values_with(**values))
    assert message in str(failure.value)


def test_image_digest_pins_the_image(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    container = operator_container(
        helm.template(
            values_with(image={"repository": "registry.example/harmony", "tag": "0.2.0", "digest": digest})
        )
    )
    assert container["image"] == f"registry.example/harmony@{digest}"


def test_models_mlflow_and_scheduling_values(helm: Helm) -> None:
    manifests = helm.template(VALUE_CASES["models-and-scheduling"])
    container = operator_container(manifests)
    pod = pod_spec(manifests)
    assert container["env"][2:] == [
        {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlops.svc:5000"},
        {"name": "HARMONY_EXTRA", "value": "1"},
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    assert container["volumeMounts"][1:] == [
        {"name": "models", "mountPath": "/models/llm-forecaster", "readOnly": True}
    ]
    assert pod["volumes"][1:] == [{"name": "models", "configMap": {"name": "llm-forecaster-v3"}}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    template = only(manifests, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] == {"example.com/team": "ml-platform"}


@pytest.mark.parametrize(
    ("leader_election", "replicas", "strategy"),
    [(True, 1, None), (True, 2, None), (False, 1, {"type": "Recreate"})],
)
def test_rollout_strategy_never_overlaps_unelected_pods(
    helm: Helm, leader_election: bool, replicas: int, strategy: dict[str, str] | None
) -> None:
    deployment = only(
        helm.template(values_with(replicaCount=replicas, leaderElection={"enabled": leader_election})),
        "Deployment",
    )
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"].get("strategy") == strategy


def test_metrics_service_selects_the_operator_pods(helm: Helm) -> None:
    manifests = helm.template(values_with())
    service = only(manifests, "Service")
    deployment = only(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_service_monitor_only_when_enabled(helm: Helm) -> None:
    assert find(helm.template(values_with()), "ServiceMonitor") == []
    manifests = helm.template(VALUE_CASES["service-monitor"])
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


def test_prometheus_credentials_are_mounted_from_a_secret(helm: Helm) -> None:
    from harmony_operator.__main__ import parse_args

    manifests = helm.template(
        values_with(
            prometheus={
                "url": "https://prometheus.monitoring.svc:9090",
                "auth": {"secretName": "prom-creds", "bearerTokenKey": "token", "caKey": "ca.crt"},
                "allowedUrlPrefixes": ["http://prometheus.team-a.svc:"],
            }
        )
    )
    container = operator_container(manifests)
    assert [a for a in container["args"] if a.startswith("--prometheus-") and "-file=" in a] == [
        "--prometheus-bearer-token-file=/etc/harmony/prometheus/token",
        "--prometheus-ca-file=/etc/harmony/prometheus/ca.crt",
    ]
    assert "--prometheus-url-prefix=http://prometheus.team-a.svc:" in container["args"]
    assert {"name": "prometheus-auth", "mountPath": "/etc/harmony/prometheus", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "prometheus-auth", "secret": {"secretName": "prom-creds"}} in pod_spec(manifests)[
        "volumes"
    ]
    parsed = parse_args(container["args"])
    assert parsed.prometheus_auth.bearer_token_file == "/etc/harmony/prometheus/token"
    assert parsed.prometheus_url_prefix == ["http://prometheus.team-a.svc:"]
    # Basic auth needs both keys, and excludes a token.
    for auth, message in (
        ({"secretName": "s", "usernameKey": "u"}, "needs both usernameKey and passwordKey"),
        ({"secretName": "s", "bearerTokenKey": "t", "usernameKey": "u", "passwordKey": "p"}, "not both"),
    ):
        with pytest.raises(HelmFailed) as failure:
            helm.template(values_with(prometheus={"url": "http://p:9090", "auth": auth}))
        assert message in str(failure.value)
    # No Secret, no mount.
    default = operator_container(helm.template(values_with()))
    assert [m["name"] for m in default["volumeMounts"]] == ["tmp"]
