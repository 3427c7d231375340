"""The chart lints, renders and refuses bad values with helm 3 and helm 4, and every manifest it renders is
valid for each Kubernetes minor release from 1.27 to 1.37 (kubernetes-validate's strict schemas)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    VALUE_CASES,
    Helm,
    HelmFailed,
    Manifest,
    only,
    values_with,
)

KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(27, 38)]
# Kinds outside Kubernetes' own API: kubernetes-validate has no schema for them (the ServiceMonitor is the
# Prometheus Operator's; the CRD's own resources are checked in test_chart_crd.py).
NOT_IN_KUBERNETES_SCHEMAS = {"ServiceMonitor", "HarmonyAutoscaler"}

CLUSTER = None  # namespace of cluster-scoped objects
BASE_OBJECTS = {
    ("CustomResourceDefinition", CLUSTER, "harmonyautoscalers.harmony.dev"),
    ("ServiceAccount", NAMESPACE, "harmony-operator"),
    ("ClusterRole", CLUSTER, "harmony-operator"),
    ("ClusterRoleBinding", CLUSTER, "harmony-operator"),
    ("Role", NAMESPACE, "harmony-operator-leader-election"),
    ("RoleBinding", NAMESPACE, "harmony-operator-leader-election"),
    ("Service", NAMESPACE, "harmony-operator-metrics"),
    ("Deployment", NAMESPACE, "harmony-operator"),
}
CLUSTER_RBAC = {("ClusterRole", CLUSTER, "harmony-operator"), ("ClusterRoleBinding", CLUSTER, "harmony-operator")}
LEADER_RBAC = {
    ("Role", NAMESPACE, "harmony-operator-leader-election"),
    ("RoleBinding", NAMESPACE, "harmony-operator-leader-election"),
}
EXPECTED_OBJECTS: dict[str, set[tuple[str, str | None, str]]] = {
    "defaults": BASE_OBJECTS,
    "watch-namespaces": (BASE_OBJECTS - CLUSTER_RBAC)
    | {(kind, ns, "harmony-operator") for kind in ("Role", "RoleBinding") for ns in ("team-a", "team-b")},
    "no-leader-election": BASE_OBJECTS - LEADER_RBAC,
    "service-monitor": BASE_OBJECTS | {("ServiceMonitor", NAMESPACE, "harmony-operator")},
    "two-replicas": BASE_OBJECTS,
    "models-and-scheduling": BASE_OBJECTS,
}


def identity(manifest: Manifest) -> tuple[str, str | None, str]:
    return manifest["kind"], manifest["metadata"].get("namespace"), manifest["metadata"]["name"]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["type"]) == ("v2", "harmony-operator", "application")
    assert (chart["appVersion"], chart["kubeVersion"]) == ("0.1.0", ">=1.27.0-0")


def test_values_schema_is_draft_07_and_accepts_the_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(defaults)
    # Every default is declared, so additionalProperties: false at the top cannot reject the chart's own keys.
    assert set(defaults) <= set(schema["properties"])
    assert defaults["prometheus"]["url"] == ""  # no default that pretends: the install must name one
    assert defaults["replicaCount"] == 1 and defaults["leaderElection"]["enabled"] is True
    assert defaults["serviceMonitor"]["enabled"] is False and defaults["watch"]["namespaces"] == []


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()

    def undocumented(values: dict[str, Any], prefix: str) -> list[str]:
        missing = []
        for key, value in values.items():
            path = f"{prefix}{key}"
            if f"| `{path}` |" in readme:
                continue  # documented as a whole (e.g. resources)
            if isinstance(value, dict) and value:
                missing += undocumented(value, f"{path}.")
            else:
                missing.append(path)
        return missing

    assert undocumented(yaml.safe_load((CHART / "values.yaml").read_text()), "") == []


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_lint_strict(helm: Helm, case: str) -> None:
    result = helm.lint(VALUE_CASES[case])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_template_renders_exactly_the_expected_objects(helm: Helm, case: str) -> None:
    identities = [identity(m) for m in helm.template(VALUE_CASES[case])]
    assert len(identities) == len(set(identities)), f"duplicate objects: {identities}"
    assert set(identities) == EXPECTED_OBJECTS[case]


def test_include_crds_renders_the_crd_file_unchanged(helm: Helm) -> None:
    crd_file = yaml.safe_load((CHART / "crds" / "harmonyautoscalers.harmony.dev.yaml").read_text())
    assert only(helm.template(values_with()), "CustomResourceDefinition") == crd_file


def test_missing_prometheus_url_fails_with_a_clear_message(helm: Helm) -> None:
    with pytest.raises(HelmFailed) as failure:
        helm.template({})
    assert "prometheus.url is required: the base URL of the Prometheus HTTP API" in str(failure.value)


def test_several_replicas_without_leader_election_fail(helm: Helm) -> None:
    with pytest.raises(HelmFailed) as failure:
        helm.template(values_with(replicaCount=2, leaderElection={"enabled": False}))
    assert "replicaCount > 1 needs leaderElection.enabled" in str(failure.value)


@pytest.mark.parametrize(
    ("values", "offender"),
    [
        pytest.param(values_with(replicaCount="two"), "replicaCount", id="replicaCount-string"),
        pytest.param(values_with(replicas=2), "replicas", id="unknown-top-level-key"),
        pytest.param(values_with(leaderElection={"enabled": True, "leaseNmae": "x"}), "leaseNmae",
                     id="unknown-nested-key"),
        pytest.param(values_with(logFormat="xml"), "logFormat", id="logFormat-enum"),
        pytest.param(values_with(watch={"namespaces": ["Team_A"]}), "namespaces", id="namespace-not-dns-label"),
        pytest.param({"prometheus": {"url": "prometheus:9090"}}, "url", id="url-without-scheme"),
        pytest.param(values_with(image={"pullPolicy": "Sometimes"}), "pullPolicy", id="pullPolicy-enum"),
    ],
)
def test_invalid_values_fail_schema_validation(helm: Helm, values: dict[str, Any], offender: str) -> None:
    for result in (helm.lint(values), helm.run(*helm.template_args(values))):
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "values don't meet the specifications of the schema" in output, output
        assert offender in output, output


@pytest.mark.parametrize(("kube_version", "accepted"), [("1.26.0", False), ("1.27.0", True), ("1.37.0", True)])
def test_kube_version_constraint(helm: Helm, kube_version: str, accepted: bool) -> None:
    result = helm.run(*helm.template_args(values_with(), kube_version=kube_version))
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert "chart requires kubeVersion: >=1.27.0-0" in result.stderr


def test_rendering_does_not_depend_on_the_kube_version(helm: Helm) -> None:
    # Why validating one render against every release's schemas is enough.
    assert helm.template(values_with(), kube_version="1.27.0") == helm.template(values_with(), kube_version="1.37.0")


# (manifest as JSON, Kubernetes version) pairs already found valid: helm 3 and helm 4 and most value cases
# render the same objects, and each validation re-reads the release's schema files.
_VALID: set[tuple[str, str]] = set()


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_manifests_are_valid_kubernetes_objects(helm: Helm, case: str) -> None:
    manifests = helm.template(VALUE_CASES[case])
    errors = []
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in NOT_IN_KUBERNETES_SCHEMAS:
            continue
        key = json.dumps(manifest, sort_keys=True)
        for kube_version in KUBE_VERSIONS:
            if (key, kube_version) not in _VALID:
                try:
                    # Raises SchemaNotFoundError for a kind it does not know: nothing is skipped silently.
                    used = kubernetes_validate.validate(manifest, kube_version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    path = ".".join(str(p) for p in error.path)
                    errors.append(f"{identity(manifest)} @ {kube_version}: {path}: {error.message}")
                    continue
                assert used == kube_version.rsplit(".", 1)[0]  # that release's own schema, not an older one
                _VALID.add((key, kube_version))
            checked += 1
    assert not errors, "\n".join(errors)
    skipped = [m["kind"] for m in manifests if m["kind"] in NOT_IN_KUBERNETES_SCHEMAS]
    assert skipped == (["ServiceMonitor"] if case == "service-monitor" else [])
    assert checked == (len(manifests) - len(skipped)) * len(KUBE_VERSIONS)


def test_prometheus_url_reaches_the_operator_verbatim(helm: Helm) -> None:
    url = "https://thanos-query.monitoring.svc:10902/prefix?dedup=true&partial_response=false"
    deployment = only(helm.template({"prometheus": {"url": url}}), "Deployment")
    assert f"--prometheus-url={url}" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_notes_describe_the_installation(helm4: Helm) -> None:
    # NOTES.txt is rendered by install only; helm 4 dry-runs an install without a cluster, helm 3 does not.
    values = helm4.values_file(VALUE_CASES["watch-namespaces"])
    result = helm4.run("install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE,
                      "--values", str(values))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "It serves HarmonyAutoscalers in namespaces team-a, team-b," in notes
    assert f"Lease {NAMESPACE}/harmony-operator." in notes
    assert f"kubectl -n {NAMESPACE} port-forward service/harmony-operator-metrics 9090" in notes
    assert "mlflow.trackingUri is not set" in notes
